#!/usr/bin/env bats
# The FP8 cache of the MoE SwiGLU inputs (model/moe_fp8.h) against the numpy model tests/ref/moe_fp8.py,
# through the unit test binary test_moe_fp8 fed with its reference arrays.

@test "routed experts' backward with the SwiGLU inputs cached in FP8 = the numpy model of the same quantization" {
    local unit=""
    for u in $DS_UNITS; do [[ "$u" == */test_moe_fp8 ]] && unit="$DS_ROOT/$u"; done
    [ -x "$unit" ] || skip "test_moe_fp8 not built (DS_UNITS)"
    "$DS_PY" "$DS_ROOT/tests/ref/moe_fp8.py" "$BATS_TEST_TMPDIR/moe.bin"
    run env DS_MOE_FP8_REF="$BATS_TEST_TMPDIR/moe.bin" "$unit" cache_against_numpy
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* && "$output" != *"# skip"* ]]
    [ "$(grep -c '^ok' <<<"$output")" -eq 9 ]
}
