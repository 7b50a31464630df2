#!/usr/bin/env bats
# lib/train against torch: AdamW (+ global-norm clipping, weight-decay groups, fp32 and bf16
# moments) redone by torch.optim.AdamW and clip_grad_norm_ on the same parameters and gradients.

setup() {
    unit=""
    for u in ${DS_UNITS:-}; do [[ "$u" == */test_train_optim ]] && unit="$DS_ROOT/$u"; done
    [ -n "$unit" ] && [ -x "$unit" ] || skip "test_train_optim not built"
    DS_TRAIN_REF_DIR="$BATS_TEST_TMPDIR" "$unit" adamw_trace_for_reference >/dev/null
}

@test "AdamW with clipping matches torch.optim.AdamW (fp32 moments)" {
    run "$DS_PY" "$DS_ROOT/tests/ref/train_adamw.py" "$BATS_TEST_TMPDIR/adamw.bin"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "AdamW with bf16 moments matches torch with moments rounded to bfloat16" {
    run "$DS_PY" "$DS_ROOT/tests/ref/train_adamw.py" "$BATS_TEST_TMPDIR/adamw_bf16.bin" bf16
    echo "$output"
    [ "$status" -eq 0 ]
}
