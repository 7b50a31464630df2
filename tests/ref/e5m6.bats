#!/usr/bin/env bats
# E5M6 (lib/fp8/e5m6.h, the --fp8 cache of the attention output) against the independent numpy reference
# tests/ref/e5m6_ref.py, through the unit test binary test_e5m6 fed with the expected bits from Python.

setup() {
    unit=""
    for u in $DS_UNITS; do [[ "$u" == */test_e5m6 ]] && unit="$DS_ROOT/$u"; done
    [ -x "$unit" ] || skip "test_e5m6 not built (DS_UNITS)"
}

unit_against() { # $1=$2: the reference file for test_e5m6's test $3, which must pass $4 checks, none skipped
    run env "$1=$2" "$unit" "$3"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* ]]
    [[ "$output" != *"# skip"* ]]
    [ "$(grep -c '^ok' <<<"$output")" -eq "$4" ]
}

@test "E5M6 encode (every float16, boundaries, 2M random float32), decode (every code) and the 1x128 power-of-two tiled cache are bit-identical to numpy" {
    "$DS_PY" "$DS_ROOT/tests/ref/e5m6_ref.py" codec "$BATS_TEST_TMPDIR/codec.bin"
    unit_against DS_E5M6_REF "$BATS_TEST_TMPDIR/codec.bin" against_numpy 24
}
