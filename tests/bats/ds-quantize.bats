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

# The smallest model whose config fits its tensors (ds-quantize checks that): hidden 4, one dense layer
# with intermediate size 2, one head without query compression, vocabulary 4, no MTP.
CFG='{
  "hidden_size": 4, "intermediate_size": 2, "num_hidden_layers": 1, "first_k_dense_replace": 1, "n_routed_experts": 0,
  "num_attention_heads": 1, "num_key_value_heads": 1, "q_lora_rank": null, "kv_lora_rank": 2, "qk_nope_head_dim": 2,
  "qk_rope_head_dim": 2, "v_head_dim": 2, "vocab_size": 4, "num_nextn_predict_layers": 0,
  "torch_dtype": "float32"
}'
MODEL=(model.embed_tokens.weight:4,4 model.layers.0.input_layernorm.weight:4 model.layers.0.self_attn.q_proj.weight:4,4
       model.layers.0.self_attn.kv_a_proj_with_mqa.weight:4,4 model.layers.0.self_attn.kv_a_layernorm.weight:2
       model.layers.0.self_attn.kv_b_proj.weight:4,2 model.layers.0.self_attn.o_proj.weight:4,2
       model.layers.0.post_attention_layernorm.weight:4 model.layers.0.mlp.gate_proj.weight:2,4
       model.layers.0.mlp.up_proj.weight:2,4 model.layers.0.mlp.down_proj.weight:4,2 model.norm.weight:4 lm_head.weight:4,4)

# mk_model FILE ENTRIES DATA BYTES: a safetensors file of the model above: first the tensors of ENTRIES (header
# entries, no braces; their data DATA, BYTES long), then every other tensor of MODEL, F32, all ones.
mk_model() {
    local file=$1 head=$2 data=$3 off=$4 t name shape n
    for t in "${MODEL[@]}"; do
        name=${t%%:*} shape=${t#*:}
        [[ "$head" == *"\"$name\""* ]] && continue
        n=$(( ${shape/,/*} ))
        head="$head,\"$name\":{\"dtype\":\"F32\",\"shape\":[$shape],\"data_offsets\":[$off,$((off + 4 * n))]}"
        data="$data$(printf '\\x00\\x00\\x80\\x3f%.0s' $(seq $n))"
        off=$((off + 4 * n))
    done
    mk_st "$file" "{$head}" "$data"
}

# 2x4 Linear weight [1 -2 0.5 4; 3 0 -0.25 8] (amax 8: x/s = 56x, and 3 -> 168 ties to E4M3 160), a norm [4]
W='\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\x00\x3f\x00\x00\x80\x40\x00\x00\x40\x40\x00\x00\x00\x00\x00\x00\x80\xbe\x00\x00\x00\x41'
N='\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f'

setup() {
    ck="$BATS_TEST_TMPDIR/ck"
    mkdir -p "$ck"
    mk_model "$ck/model.safetensors" '"__metadata__":{"format":"pt"},"model.layers.0.mlp.gate_proj.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[32,48]}' "$W$N" 48
    printf '%s\n' "$CFG" >"$ck/config.json"
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
    [[ "$output" == *"13 tensors -> 20 (7 quantized, 0 dequantized, 0 cast)"* ]]
    header=$(head -c 400 "$BATS_TEST_TMPDIR/q/model.safetensors" | tr -d '\0')
    [[ "$header" == *'"model.layers.0.mlp.gate_proj.weight":{"dtype":"F8_E4M3","shape":[2,4],"data_offsets":[0,8]}'* ]]
    [[ "$header" == *'"model.layers.0.mlp.gate_proj.weight_scale_inv":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]}'* ]]
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
    [[ "$output" == *"20 tensors -> 13 (0 quantized, 7 dequantized, 0 cast)"* ]]
    run values "$BATS_TEST_TMPDIR/f/model.safetensors" model.layers.0.mlp.gate_proj.weight
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
    run values "$BATS_TEST_TMPDIR/p/model.safetensors" model.layers.0.mlp.gate_proj.weight
    [ "$output" = "1 -2 0.5 4 2.859375 0 -0.25 8" ]  # 2.857... rounded to bf16 on the way
}

@test "--report writes the configuration and one JSON line per tensor with the error" {
    run "$DS_BIN/ds-quantize" -q -m "$ck" -o "$BATS_TEST_TMPDIR/q" --to fp8 --report "$BATS_TEST_TMPDIR/r.jsonl"
    [ "$status" -eq 0 ]
    [ "$(wc -l <"$BATS_TEST_TMPDIR/r.jsonl")" -eq 14 ]
    head -1 "$BATS_TEST_TMPDIR/r.jsonl" | grep -q '"config":"ds-quantize"'
    line=$(grep gate_proj "$BATS_TEST_TMPDIR/r.jsonl")
    [[ "$line" == *'"op":"quantize","from":"F32","to":"F8_E4M3","shape":[2,4],"numel":8,"max_abs_err":0.14285707'* ]]
    [[ "$line" == *'"scale_min":0.017857'* ]]
    grep -q '"tensor":"model.norm.weight","op":"copy"' "$BATS_TEST_TMPDIR/r.jsonl"
}

@test "-v prints one line per converted tensor; -q prints nothing" {
    run "$DS_BIN/ds-quantize" -v -m "$ck" -o "$BATS_TEST_TMPDIR/q" --to fp8
    [[ "$output" == *"quantize   model.layers.0.mlp.gate_proj.weight"* ]]
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
    mk_model "$bad/noscale.safetensors" '"model.layers.0.self_attn.o_proj.weight":{"dtype":"F8_E4M3","shape":[4,2],"data_offsets":[0,8]}' '\x38\x40\x38\x40\x38\x40\x38\x40' 8
    run "$DS_BIN/ds-quantize" -q -m "$bad/noscale.safetensors" -o "$BATS_TEST_TMPDIR/o" --to bf16
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: tensor model.layers.0.self_attn.o_proj.weight: F8_E4M3 without model.layers.0.self_attn.o_proj.weight_scale_inv" ]
    mk_model "$bad/nan.safetensors" '"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]}' "\\x00\\x00\\x80\\x3f\\x00\\x00\\xc0\\x7f$N\\x00\\x00\\x80\\x3f\\x00\\x00\\x80\\x3f" 32
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
    run values "$BATS_TEST_TMPDIR/q/model.safetensors" model.layers.0.mlp.gate_proj.weight
    [ "$output" = "1 -2 0.5 4 2.857143 0 -0.25 8" ]
    ! grep -q quantization_config "$BATS_TEST_TMPDIR/q/config.json"
}

@test "a truncated stream on stdin is a clean error" {
    head -c 100 "$ck/model.safetensors" >"$BATS_TEST_TMPDIR/trunc"
    run bash -c "'$DS_BIN/ds-quantize' -q -m - -o '$BATS_TEST_TMPDIR/o' --to fp8 <'$BATS_TEST_TMPDIR/trunc'"
    [ "$status" -eq 1 ]
    [ "${lines[0]}" = "ds-quantize: error: safetensors: header length 1232 past the end of the input (92 header bytes): <stdin>" ]
    [ ! -e "$BATS_TEST_TMPDIR/o" ]
}
