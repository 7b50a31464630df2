#!/usr/bin/env bats
# lib/core/plot PNGs (written by libpng) decoded by Python's zlib/struct and our own unfiltering:
# chunk CRCs, the zlib stream (Adler-32 included) and every pixel of a known pattern; a chart's text
# anti-aliased in the font file where DejaVu is installed.

setup() {
    unit=""
    for u in ${DS_UNITS:-}; do [[ "$u" == */test_plot ]] && unit="$DS_ROOT/$u"; done
    [ -n "$unit" ] && [ -x "$unit" ] || skip "test_plot not built"
    DS_PLOT_REF_DIR="$BATS_TEST_TMPDIR" "$unit" png_files_for_reference_check >/dev/null
}

@test "a drawn pattern decodes pixel for pixel" {
    run "$DS_PY" "$DS_ROOT/tests/ref/png_check.py" pattern "$BATS_TEST_TMPDIR/pattern.png"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == "321x257, 0 pixels differ" ]]
}

@test "a line chart decodes with its series colour present" {
    run "$DS_PY" "$DS_ROOT/tests/ref/png_check.py" chart "$BATS_TEST_TMPDIR/chart.png" 640 400 d62728 \
        $([ -r /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && echo antialiased)
    echo "$output"
    [ "$status" -eq 0 ]
}
