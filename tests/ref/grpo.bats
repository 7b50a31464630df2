#!/usr/bin/env bats
# lib/rl's GRPO loss against numpy and torch autograd: advantages, the clipped surrogate with the k3
# KL penalty in both averaging modes, and its gradient with respect to the per-token log-probs.

setup() {
    unit=""
    for u in ${DS_UNITS:-}; do [[ "$u" == */test_grpo ]] && unit="$DS_ROOT/$u"; done
    [ -n "$unit" ] && [ -x "$unit" ] || skip "test_grpo not built"
    DS_GRPO_REF_DIR="$BATS_TEST_TMPDIR" "$unit" grpo_trace_for_reference
}

@test "GRPO loss, KL and gradient match numpy and torch autograd (TRL's formulation)" {
    run "$DS_PY" "$DS_ROOT/tests/ref/grpo_ref.py" "$BATS_TEST_TMPDIR/grpo.json"
    echo "$output"
    [ "$status" -eq 0 ]
}
