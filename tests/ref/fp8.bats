#!/usr/bin/env bats
# FP8 against independent references: the E4M3/E5M2 codecs bit for bit against ml_dtypes (and torch for
# the saturating E4M3 cast), through the unit test binary test_fp8 fed with expected bytes from Python.

setup() {
    unit=""
    for u in $DS_UNITS; do [[ "$u" == */test_fp8 ]] && unit="$DS_ROOT/$u"; done
    [ -x "$unit" ] || skip "test_fp8 not built (DS_UNITS)"
}

@test "E4M3/E5M2 encode and decode are bit-identical to ml_dtypes over 8.4M inputs" {
    "$DS_PY" "$DS_ROOT/tests/ref/fp8_codec.py" "$BATS_TEST_TMPDIR/codec.bin"
    run env DS_FP8_REF="$BATS_TEST_TMPDIR/codec.bin" "$unit" against_ml_dtypes
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* ]]
    [[ "$output" != *"# skip"* ]]
    [ "$(grep -c '^ok' <<<"$output")" -eq 7 ]
}

@test "1x128 / 128x1 / 128x128 quantization, dequantization, the scaled GEMM and a Linear's Fprop/Dgrad/Wgrad are bit-identical to the numpy reference" {
    "$DS_PY" "$DS_ROOT/tests/ref/fp8_block.py" "$BATS_TEST_TMPDIR/block.bin"
    run env DS_FP8_BLOCK_REF="$BATS_TEST_TMPDIR/block.bin" "$unit" against_numpy_blocks
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* ]]
    [[ "$output" != *"# skip"* ]]
    [ "$(grep -c '^ok' <<<"$output")" -eq 20 ]
}
