#!/usr/bin/env bats
# ds-quantize: FP8 <-> BF16/FP32 checkpoint conversion. Fixtures are tiny safetensors files written byte
# by byte here; the bit-exact comparisons with the numpy/torch references are in tests/ref/fp8.bats.

# mk_st FILE HEADER DATA: a safetensors file with this header JSON (padded to 8 bytes) and printf-escaped data
mk_st() {
    local file=$1 header=$2 data=$3 pad len
    pad=$(( (8 - ${#header} % 8) % 8 ))
    header="$header$(printf '%*s' $pad '')"
    len=${#header}
    printf "$(printf '\\x%02x\\x%02x\\x00\\x00\\x00\\x00\\x00\\x00' $((len & 255)) $((len >> 8)))" >"$file"
    printf '%s' "$header" >>"$file"
    printf "$data" >>"$file"
}

# 2x4 Linear weight [1 -2 0.5 4; 3 0 -0.25 8] (amax 8: x/s = 56x, and 3 -> 168 ties to E4M3 160), a norm [4]
W='\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x00\x3f\x00\x00\x80\x40\x00\x00\x40\x40\x00\x00\x00\x00\x00\x00\x80\xbe\x00\x00\x00\x41'
N='\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f'

setup() {
    ck="$BATS_TEST_TMPDIR/ck"
    mkdir -p "$ck"
    mk_st "$ck/model.safetensors" '{"__metadata__":{"format":"pt"},"model.layers.0.mlp.down_proj.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[32,48]}}' "$W$N"
    printf '{\n  "hidden_size": 4,\n  "torch_dtype": "float32"\n}\n' >"$ck/config.json"
    printf '{"model": {}}\n' >"$ck/tokenizer.json"
}

# the float32 values of tensor NAME in FILE on one line (od's 7 significant digits)
values() {
    local f=$1 name=$2 n off
    n=$(od -A n -t u8 -N 8 "$f" | tr -d ' ')
    off=$(head -c $((8 + n)) "$f" | tail -c "$n" | grep -o "\"$name\":{[^}]*}" | grep -o '"data_offsets":\[[0-9]*,[0-9]*' |
          grep -o '[0-9]*,[0-9]*')
    od -A n -t f4 -j $((8 + n + ${off%,*})) -N $((${off#*,} - ${off%,*})) "$f" | xargs
}

@test "--to fp8 writes F8_E4M3 + weight_scale_inv for the Linear, leaves the norm, adds quantization_config" {
    run "$DS_BIN/ds-quantize" -m "$ck" -o "$BATS_TEST_TMPDIR/q" --to fp8
    [ "$status" -eq 0 ]
    [[ "$output" == *"2 tensors -> 3 (1 quantized, 0 dequantized, 0 cast)"* ]]
    header=$(head -c 400 "$BATS_TEST_TMPDIR/q/model.safetensors" | tr -d '\0')
    [[ "$header" == *'"model.layers.0.mlp.down_proj.weight":{"dtype":"F8_E4M3","shape":[2,4],"data_offsets":[0,8]}'* ]]
    [[ "$header" == *'"model.layers.0.mlp.down_proj.weight_scale_inv":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]}'* ]]
    [[ "$header" == *'"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}'* ]]
    # codes: 56 -> 0x66, -112 -> 0xee, 28 -> 0x5e, 224 -> 0x76, 168 ties down to 160 -> 0x72, 0, -14 -> 0xd6, 448 -> 0x7e
    n=$(od -A n -t u8 -N 8 "$BATS_TEST_TMPDIR/q/model.safetensors" | tr -d ' ')
    codes=$(od -A n -t x1 -j $((8 + n)) -N 8 "$BATS_TEST_TMPDIR/q/model.safetensors" | tr -d ' \n')
    [ "$codes" = "66ee5e767200d67e" ]
    grep -q '"quant_method": "fp8"' "$BATS_TEST_TMPDIR/q/config.json"
    grep -q '"weight_block_size": \[' "$BATS_TEST_TMPDIR/q/config.json"
    cmp "$ck/tokenizer.json" "$BATS_TEST_TMPDIR/q/tokenizer.json"
}

@test "fp8 -> fp32 dequantizes block-wise; the tie shows up as 160/56; config loses quantization_config" {
    "$DS_BIN/ds-quantize" -q -m "$ck" -o "$BATS_TEST_TMPDIR/q" --to fp8
    run "$DS_BIN/ds-quantize" -m "$BATS_TEST_TMPDIR/q" -o "$BATS_TEST_TMPDIR/f" --to fp32
    [ "$status" -eq 0 ]
    [[ "$output" == *"3 tensors -> 2 (0 quantized, 1 dequantized, 0 cast)"* ]]
    run values "$BATS_TEST_TMPDIR/f/model.safetensors" model.layers.0.mlp.down_proj.weight
    [ "$output" = "1 -2 0.5 4 2.857143 0 -0.25 8" ]
    ! grep -q quantization_config "$BATS_TEST_TMPDIR/f/config.json"
    grep -q '"torch_dtype": "float32"' "$BATS_TEST_TMPDIR/f/config.json"
}

@test "pipes: a checkpoint stream in and out, with config and tokenizer carried in the metadata" {
    run bash -c "'$DS_BIN/ds-quantize' -q -m '$ck' -o - --to fp8 | '$DS_BIN/ds-quantize' -q -m - -o - --to bf16 | '$DS_BIN/ds-quantize' -q -m - -o '$BATS_TEST_TMPDIR/p' --to fp32"
    [ "$status" -eq 0 ]
    [ -f "$BATS_TEST_TMPDIR/p/model.safetensors" ]
    cmp "$ck/tokenizer.json" "$BATS_TEST_TMPDIR/p/tokenizer.json"
    grep -q '"hidden_size": 4' "$BATS_TEST_TMPDIR/p/config.json"
    run values "$BATS_TEST_TMPDIR/p/model.safetensors" model.layers.0.mlp.down_proj.weight
    [ "$output" = "1 -2 0.5 4 2.859375 0 -0.25 8" ]  # 2.857... rounded to bf16 on the way
}

@test "--report writes the configuration and one JSON line per tensor with the error" {
    run "$DS_BIN/ds-quantize" -q -m "$ck" -o "$BATS_TEST_TMPDIR/q" --to fp8 --report "$BATS_TEST_TMPDIR/r.jsonl"
    [ "$status" -eq 0 ]
    [ "$(wc -l <"$BATS_TEST_TMPDIR/r.jsonl")" -eq 3 ]
    head -1 "$BATS_TEST_TMPDIR/r.jsonl" | grep -q '"config":"ds-quantize"'
    line=$(grep down_proj "$BATS_TEST_TMPDIR/r.jsonl")
    [[ "$line" == *'"op":"quantize","from":"F32","to":"F8_E4M3","shape":[2,4],"numel":8,"max_abs_err":0.14285707'* ]]
    [[ "$line" == *'"scale_min":0.017857'* ]]
    grep -q '"tensor":"model.norm.weight","op":"copy"' "$BATS_TEST_TMPDIR/r.jsonl"
}

@test "-v prints one line per converted tensor; -q prints nothing" {
    run "$DS_BIN/ds-quantize" -v -m "$ck" -o "$BATS_TEST_TMPDIR/q" --to fp8
    [[ "$output" == *"quantize   model.layers.0.mlp.down_proj.weight"* ]]
    run "$DS_BIN/ds-quantize" -q -m "$ck" -o "$BATS_TEST_TMPDIR/q2" --to fp8
    [ -z "$output" ]
}

@test "usage errors exit 2 with one line" {
    run "$DS_BIN/ds-quantize" -o x --to fp8
    [ "$status" -eq 2 ]
    [ "${lines[0]}" = "ds-quantize: error: -m IN is required" ]
    run "$DS_BIN/ds-quantize" -m "$ck" -o x
    [ "$status" -eq 2 ]
    [ "${lines[0]}" = "ds-quantize: error: --to fp8|bf16|fp32 is required" ]
    run "$DS_BIN/ds-quantize" -m "$ck" -o x --to int4
    [ "$status" -eq 2 ]
    [[ "${lines[0]}" == "ds-quantize: error: "*"int4"* ]]
    run "$DS_BIN/ds-quantize" -m "$ck" -o - --to fp8 --report -
    [ "$status" -eq 2 ]
    [ "${lines[0]}" = "ds-quantize: error: --report - and -o - both want stdout" ]
}

@test "runtime errors exit 1: missing input, a non-checkpoint output directory, FP8 without scale, NaN weight" {
    run "$DS_BIN/ds-quantize" -q -m "$BATS_TEST_TMPDIR/none" -o "$BATS_TEST_TMPDIR/o" --to fp8
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: checkpoint: not found: $BATS_TEST_TMPDIR/none" ]
    mkdir "$BATS_TEST_TMPDIR/exists"
    touch "$BATS_TEST_TMPDIR/exists/notes.txt"
    run "$DS_BIN/ds-quantize" -q -m "$ck" -o "$BATS_TEST_TMPDIR/exists" --to fp8
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: output directory holds files that are not a checkpoint (not replaced, --force or not): $BATS_TEST_TMPDIR/exists" ]
    [ "${lines[1]}" = "hint: choose a new or empty directory for -o" ]
    [ "$(ls "$BATS_TEST_TMPDIR/exists")" = "notes.txt" ]
    bad="$BATS_TEST_TMPDIR/bad"
    mkdir "$bad"
    cp "$ck/config.json" "$bad/"
    mk_st "$bad/noscale.safetensors" '{"model.layers.0.self_attn.o_proj.weight":{"dtype":"F8_E4M3","shape":[1,2],"data_offsets":[0,2]}}' '\x38\x40'
    run "$DS_BIN/ds-quantize" -q -m "$bad/noscale.safetensors" -o "$BATS_TEST_TMPDIR/o" --to bf16
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: tensor model.layers.0.self_attn.o_proj.weight: F8_E4M3 without model.layers.0.self_attn.o_proj.weight_scale_inv" ]
    mk_st "$bad/nan.safetensors" '{"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}' '\x00\x00\x80\x3f\x00\x00\xc0\x7f'
    run "$DS_BIN/ds-quantize" -q -m "$bad/nan.safetensors" -o "$BATS_TEST_TMPDIR/o" --to fp8
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: tensor model.layers.0.mlp.up_proj.weight: non-finite value nan at [0, 1]: refusing to quantize" ]
    [ ! -e "$BATS_TEST_TMPDIR/o" ]
    [ -z "$(ls "$BATS_TEST_TMPDIR" | grep 'o.tmp')" ]
}

@test "an existing checkpoint at -o is replaced with --force; converting in place works with --force" {
    "$DS_BIN/ds-quantize" -q -m "$ck" -o "$BATS_TEST_TMPDIR/q" --to fp8
    run "$DS_BIN/ds-quantize" -q -m "$BATS_TEST_TMPDIR/q" -o "$BATS_TEST_TMPDIR/q" --to fp32
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: -o is the input checkpoint -m (give --force to replace the input): $BATS_TEST_TMPDIR/q" ]
    run "$DS_BIN/ds-quantize" -q -m "$BATS_TEST_TMPDIR/q" -o "$BATS_TEST_TMPDIR/q" --to fp32 --force
    [ "$status" -eq 0 ]
    run values "$BATS_TEST_TMPDIR/q/model.safetensors" model.layers.0.mlp.down_proj.weight
    [ "$output" = "1 -2 0.5 4 2.857143 0 -0.25 8" ]
    ! grep -q quantization_config "$BATS_TEST_TMPDIR/q/config.json"
}

@test "a truncated stream on stdin is a clean error" {
    head -c 100 "$ck/model.safetensors" >"$BATS_TEST_TMPDIR/trunc"
    run bash -c "'$DS_BIN/ds-quantize' -q -m - -o '$BATS_TEST_TMPDIR/o' --to fp8 <'$BATS_TEST_TMPDIR/trunc'"
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: safetensors: header length 200 past the end of the input (92 header bytes): <stdin>" ]
    [ ! -e "$BATS_TEST_TMPDIR/o" ]
}
