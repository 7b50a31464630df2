#!/usr/bin/env bats
# io/checkpoint against transformers: it loads our checkpoint directory of the tiny model (every
# weight, the MTP module left as the only unexpected keys, a forward pass), and we read the directory
# it saves (config, tokenizer, every tensor).

setup() {
    for u in $DS_UNITS; do case $u in */test_checkpoint) UNIT=$DS_ROOT/$u ;; esac; done
    [ -x "$UNIT" ] || skip "test_checkpoint not built"
    REF="$DS_PY $DS_ROOT/tests/ref/ckpt_ref.py"
    D=$BATS_TEST_TMPDIR
}

@test "transformers loads our checkpoint directory (F32)" {
    DS_CKPT_MODEL="$D/ck:7:F32" "$UNIT" reference_model_checkpoint >"$D/tap" || { cat "$D/tap"; false; }
    run $REF load-ours "$D/ck"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "transformers loads our checkpoint directory (BF16)" {
    DS_CKPT_MODEL="$D/ck:8:BF16" "$UNIT" reference_model_checkpoint >"$D/tap" || { cat "$D/tap"; false; }
    $REF load-ours "$D/ck"
}

@test "we read a checkpoint directory saved by transformers" {
    $REF save-hf "$D/hf" "$DS_ROOT/share/configs/tiny.json"
    DS_CKPT_DUMP="$D/hf:$D/dump.json" "$UNIT" reference_dump >"$D/tap" || { cat "$D/tap"; false; }
    $REF check-dump "$D/hf" "$D/dump.json"
}
