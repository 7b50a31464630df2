#!/usr/bin/env bats
# ds-pretrain --print-schedule: the per-rank timeline of a pipeline schedule (text, exact for small cases
# worked out by hand), its PNG (decoded independently), Table 2's accounting beside the measured counts,
# and the refusals (DualPipe's requirements, more stages than layers, PP < 1, a bad schedule name).

bats_require_minimum_version 1.5.0

setup() {
    cd "$BATS_TEST_TMPDIR"
    export DS_FONT=builtin # the PNG's size then does not depend on the fonts installed
}

# DualPipe PP=2, 4 micro-batches at F = B = W = 1 unit, BW = 2, F&B = 3. Rank 0 holds stage 0 of
# chunk 0 (micro-batches 0, 1) and stage 1 of chunk 1 (2, 3); rank 1 the mirror. By hand: both ranks
# start their own direction's micro-batch at 0, pass it on (units 1, 2), take the other's as soon as it
# arrives, run the last stage's full backward (3-5), then a forward paired with the backward whose
# gradient came from the other rank (5-8), the last full backward (8-10), and the final B with its
# deferred W (10-12): no idle unit, as the formula (PP/2-1)(...) = 0 says.
@test "DualPipe PP=2: the timeline and Table 2, exactly" {
    run --separate-stderr "$DS_BIN/ds-pretrain" --pp 2 --micro-batches 4 --schedule dualpipe --print-schedule --plot d.png
    [ "$status" -eq 0 ]
    expected="DualPipe: 2 ranks, 4 micro-batches (0-1 enter at rank 0, 2-3 at rank 1; rank r holds stages r and 1-r), step 12 units
rank 0 |0F |2F |1F |2BW    |3F&0BW     |3BW    |1B |1W |  bubble 0, activations 3
rank 1 |2F |0F |3F |0BW    |1F&2BW     |1BW    |3B |3W |  bubble 0, activations 3
cells: <micro-batch><op>: F forward, B input gradient, W weight gradient, BW full backward, X&Y overlapped pair; 4 columns = 1 unit = F = B = W (BW 2, a pair 3); '.' idle

Table 2 (DeepSeek-V3 report) at PP = 2, 4 micro-batches, F = 1, B = 2, W = 1, F&B = 3:
schedule  bubble              formula simulated  parameters measured  activations measured
1F1B      (PP-1)(F+B)               3         3  1x         1x        PP = 2      2
ZB1P      (PP-1)(F+B-2W)            1         1  1x         1x        PP = 2      2
DualPipe  (PP/2-1)(F&B+B-3W)        0         0  2x         2x        PP+1 = 3    3
(bubble: the largest idle time over the ranks; parameters: stage chunks per rank; activations: micro-batch chunks held at once on the fullest rank; the formulas assume micro-batches >= PP)"
    [ "$output" = "$expected" ]
    [[ "$stderr" == *"wrote d.png"* ]]
    # 343 x 133 with the built-in font; chunk 0's forward orange and an overlapped pair's black frame
    "$DS_PY" "$DS_ROOT/tests/ref/png_check.py" chart d.png 343 133 f28e2b
    "$DS_PY" "$DS_ROOT/tests/ref/png_check.py" chart d.png 343 133 000000
}

# ZB1P PP=2, 3 micro-batches: rank 1 (the last stage) runs F B at once and defers W0 until it holds
# PP = 2 micro-batches; rank 0 waits one unit for the first input gradient (2-3), the only idle unit of
# either rank: (PP-1)(F+B-2W) = 1.
@test "ZB1P PP=2: the timeline, exactly, and DualPipe's row says why it is absent" {
    run --separate-stderr "$DS_BIN/ds-pretrain" --pp 2 --micro-batches 3 --schedule zb1p --print-schedule
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "ZB1P: 2 ranks, 3 micro-batches, step 10 units" ]
    [ "${lines[1]}" = "rank 0 |0F |1F |....0B |0W |2F |1B |1W |2B |2W |  bubble 1, activations 2" ]
    [ "${lines[2]}" = "rank 1 |....0F |0B |1F |1B |0W |2F |2B |1W |2W |  bubble 1, activations 2" ]
    [[ "$output" == *"DualPipe  (PP/2-1)(F&B+B-3W)  not generated: DualPipe needs an even number of micro-batches, at least 2 x PP = 4: --micro-batches 3"* ]]
    [ -s schedule.png ] # the default path
    head -c 8 schedule.png | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a"
}

# The issue's command: 8 ranks, 20 micro-batches. Table 2 at these costs: 7(F+B) = 21, 7(F+B-2W) = 7,
# 3(F&B+B-3W) = 6; activations 8, 8, 9; parameters 1x, 1x, 2x.
@test "DualPipe PP=8, 20 micro-batches: Figure 5's shape and Table 2's numbers measured" {
    run --separate-stderr "$DS_BIN/ds-pretrain" --pp 8 --micro-batches 20 --schedule dualpipe --print-schedule --plot f5.png
    [ "$status" -eq 0 ]
    [ "$(grep -c '^rank [0-7] |' <<<"$output")" -eq 8 ]
    # rank 0 first runs its own direction's 0..6 (PP-1 forwards), then meets micro-batch 10 from rank 7
    [[ "${lines[1]}" == "rank 0 |0F |1F |2F |3F |4F |5F |6F |10F|10B|10W|11F|"* ]]
    [[ "${lines[8]}" == "rank 7 |10F|11F|12F|13F|14F|15F|16F|0F |0B |0W |1F |"* ]]
    grep -qE '^1F1B +\(PP-1\)\(F\+B\) +21 +21  1x +1x +PP = 8 +8$' <<<"$output"
    grep -qE '^ZB1P +\(PP-1\)\(F\+B-2W\) +7 +7  1x +1x +PP = 8 +8$' <<<"$output"
    grep -qE '^DualPipe +\(PP/2-1\)\(F&B\+B-3W\) +6 +6  2x +2x +PP\+1 = 9 +9$' <<<"$output"
    # every rank's bubble is the formula's 6 units here, and it holds PP+1 = 9 activations
    [ "$(grep -c 'bubble 6, activations 9$' <<<"$output")" -eq 8 ]
    "$DS_PY" "$DS_ROOT/tests/ref/png_check.py" chart f5.png 1531 301 f28e2b
}

@test "refusals: one line each, exit 2" {
    local cfg="$DS_ROOT/share/configs/tiny.json" # 2 layers
    check() {
        run --separate-stderr "$DS_BIN/ds-pretrain" "$@" --print-schedule
        [ "$status" -eq 2 ]
        [ -z "$output" ]
        echo "$stderr" | head -1
    }
    [ "$(check --pp 3 --micro-batches 12 --schedule dualpipe)" = "ds-pretrain: error: DualPipe needs an even number of stages: --pp 3" ]
    [ "$(check --pp 4 --micro-batches 6 --schedule dualpipe)" = "ds-pretrain: error: DualPipe needs an even number of micro-batches, at least 2 x PP = 8: --micro-batches 6" ]
    [ "$(check --pp 4 --micro-batches 9 --schedule dualpipe)" = "ds-pretrain: error: DualPipe needs an even number of micro-batches, at least 2 x PP = 8: --micro-batches 9" ]
    [ "$(check --pp 2 --schedule dualpipe)" = "ds-pretrain: error: DualPipe needs an even number of micro-batches, at least 2 x PP = 4: --micro-batches 1 (from --batch / --micro-batch; give --micro-batches N)" ]
    [ "$(check --pp 4 --config "$cfg")" = "ds-pretrain: error: --pp 4: more pipeline stages than the model's 2 layers" ]
    [ "$(check --pp 0)" = "ds-pretrain: error: --pp: 0 is out of range [1, 4096]" ]
    [ "$(check --schedule gpipe)" = "ds-pretrain: error: --schedule: 'gpipe' is not one of 1f1b|zb1p|dualpipe" ]
    [ ! -e schedule.png ]
    # the stage bound holds with a model: tiny.json takes 2 stages
    run --separate-stderr "$DS_BIN/ds-pretrain" --pp 2 --micro-batches 2 --config "$cfg" --print-schedule
    [ "$status" -eq 0 ]
    [ "${lines[0]}" = "1F1B: 2 ranks, 2 micro-batches, step 9 units" ]
}

@test "--help lists the pipeline options" {
    run "$DS_BIN/ds-pretrain" --help
    [ "$status" -eq 0 ]
    [[ "$output" == *"--pp N"* && "$output" == *"--schedule S"* && "$output" == *"--micro-batches N"* ]]
    [[ "$output" == *"--print-schedule"* ]]
}
