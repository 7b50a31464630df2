#!/usr/bin/env bats
# FP8 against independent references: the E4M3/E5M2 codecs bit for bit against ml_dtypes (and torch for
# the saturating E4M3 cast), through the unit test binary test_fp8 fed with expected bytes from Python;
# E5M6 and the o_proj path that keeps it likewise through test_e5m6 (tests/ref/e5m6_ref.py).

unit_path() { # unit: the unit test binary $1 from DS_UNITS (unit_against skips without it)
    unit=""
    for u in $DS_UNITS; do [[ "$u" != */$1 ]] || unit="$DS_ROOT/$u"; done
}

setup() { unit_path test_fp8; }

unit_against() { # $1=$2: the reference file for $unit's test $3, which must pass $4 checks, none skipped
    [ -x "$unit" ] || skip "the unit test binary is not built (DS_UNITS)"
    run env "$1=$2" "$unit" "$3"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* ]]
    [[ "$output" != *"# skip"* ]]
    [ "$(grep -c '^ok' <<<"$output")" -eq "$4" ]
}

@test "E4M3/E5M2 encode and decode are bit-identical to ml_dtypes over 8.4M inputs" {
    "$DS_PY" "$DS_ROOT/tests/ref/fp8_codec.py" "$BATS_TEST_TMPDIR/codec.bin"
    unit_against DS_FP8_REF "$BATS_TEST_TMPDIR/codec.bin" against_ml_dtypes 7
}

@test "1x128 / 128x1 / 128x128 quantization, dequantization, the scaled GEMM and a Linear's Fprop/Dgrad/Wgrad are bit-identical to the numpy reference" {
    "$DS_PY" "$DS_ROOT/tests/ref/fp8_block.py" "$BATS_TEST_TMPDIR/block.bin"
    unit_against DS_FP8_BLOCK_REF "$BATS_TEST_TMPDIR/block.bin" against_numpy_blocks 20
}

@test "Hopper's accumulation model (--fp8-accum hopper) is bit-identical to the exact-rational reference on small K" {
    "$DS_PY" "$DS_ROOT/tests/ref/fp8_accum.py" "$BATS_TEST_TMPDIR/accum.bin"
    unit_against DS_FP8_ACCUM_REF "$BATS_TEST_TMPDIR/accum.bin" against_python_accum 29
}

@test "E5M6 encode (every float16, boundaries, 2M random float32), decode (every code) and the 1x128 power-of-two tiled cache are bit-identical to numpy" {
    unit_path test_e5m6
    "$DS_PY" "$DS_ROOT/tests/ref/e5m6_ref.py" codec "$BATS_TEST_TMPDIR/codec.bin"
    unit_against DS_E5M6_REF "$BATS_TEST_TMPDIR/codec.bin" against_numpy 24
}

@test "--fp8 o_proj with its input kept in E5M6: the kept values, Fprop, Dgrad and Wgrad (re-tiled to 128x1) are bit-identical to numpy" {
    unit_path test_e5m6
    "$DS_PY" "$DS_ROOT/tests/ref/e5m6_ref.py" oproj "$BATS_TEST_TMPDIR/oproj.bin"
    unit_against DS_E5M6_OPROJ_REF "$BATS_TEST_TMPDIR/oproj.bin" oproj_against_numpy 7
}

# ---- ds-quantize against the numpy / torch references (tests/ref/fp8_ckpt.py) ------------------------

ckpt_setup() {
    R="$DS_ROOT/tests/ref/fp8_ckpt.py"
    T=$BATS_TEST_TMPDIR
    "$DS_PY" "$R" make "$T/ck" --dtype "${1:-f32}"
}

same_dirs() { # every file of the reference directory $2 is byte-identical in $1, and nothing else is there
    [ "$(ls "$1")" = "$(ls "$2")" ] || { echo "files: $(ls "$1") vs $(ls "$2")"; return 1; }
    for f in $(ls "$2"); do cmp "$1/$f" "$2/$f" || return 1; done
}

@test "ds-quantize --to fp8: byte-identical to the numpy reference quantizer (config, shards, index, tokenizer files)" {
    ckpt_setup f32
    "$DS_BIN/ds-quantize" -q -m "$T/ck" -o "$T/ours" --to fp8
    "$DS_PY" "$R" quantize "$T/ck" "$T/ref"
    same_dirs "$T/ours" "$T/ref"
    "$DS_PY" "$R" check-fp8 "$T/ck" "$T/ours"
}

@test "ds-quantize --to fp8 from bf16, sharded, and with ue8m0 scales: byte-identical to the reference" {
    ckpt_setup bf16
    "$DS_BIN/ds-quantize" -q -m "$T/ck" -o "$T/ours" --to fp8 --shard-size 300K
    "$DS_PY" "$R" quantize "$T/ck" "$T/ref" --shard-size 307200
    [ -f "$T/ours/model.safetensors.index.json" ]
    same_dirs "$T/ours" "$T/ref"
    "$DS_BIN/ds-quantize" -q -m "$T/ck" -o "$T/ours8" --to fp8 --scale-fmt ue8m0
    "$DS_PY" "$R" quantize "$T/ck" "$T/ref8" --ue8m0 1
    same_dirs "$T/ours8" "$T/ref8"
}

@test "ds-quantize --to bf16 / fp32 from FP8: byte-identical to DeepSeek's weight_dequant (torch transcription)" {
    ckpt_setup f32
    "$DS_BIN/ds-quantize" -q -m "$T/ck" -o "$T/q" --to fp8 --shard-size 500K
    for to in bf16 fp32; do
        "$DS_BIN/ds-quantize" -q -m "$T/q" -o "$T/ours-$to" --to $to
        "$DS_PY" "$R" dequantize "$T/q" "$T/ref-$to" --to $to
        same_dirs "$T/ours-$to" "$T/ref-$to"
    done
}

@test "ds-quantize through pipes gives the same checkpoint as through directories" {
    ckpt_setup bf16
    "$DS_BIN/ds-quantize" -q -m "$T/ck" -o "$T/direct" --to fp8
    "$DS_BIN/ds-quantize" -q -m "$T/ck" -o - --to fp8 | "$DS_BIN/ds-quantize" -q -m - -o "$T/piped" --to fp8
    same_dirs "$T/piped" "$T/direct"
    "$DS_BIN/ds-quantize" -q -m "$T/direct" -o "$T/d16" --to bf16
    "$DS_BIN/ds-quantize" -q -m "$T/direct" -o - --to fp8 | "$DS_BIN/ds-quantize" -q -m - -o "$T/p16" --to bf16
    same_dirs "$T/p16" "$T/d16"
}
