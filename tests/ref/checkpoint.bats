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

@test "no query compression: config.json says q_lora_rank null; transformers loads every weight and scores like us" {
    # share/configs/tiny-dense.json (q_proj, dense layers) given with "q_lora_rank": 0, trained for 15
    # steps; a config.json saying 0 made transformers build a rank-0 q_a_proj: missing and unexpected
    # weights, other scores
    jq '.q_lora_rank = 0' "$DS_ROOT/share/configs/tiny-dense.json" >"$D/dense.json"
    cat /usr/share/common-licenses/GPL-3 >"$D/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 268 -o "$D/tok.json" "$D/prose.txt"
    "$DS_BIN/ds-tokenize" encode -q -t "$D/tok.json" -o "$D/shards/" "$D/prose.txt"
    "$DS_BIN/ds-pretrain" -q --threads 1 --config "$D/dense.json" --data "$D/shards" \
        --tokenizer "$D/tok.json" -o "$D/ck" --steps 15 --batch 4 --seq-len 32 --log-every 0
    jq -e '.q_lora_rank == null' "$D/ck/config.json"
    run $REF load-ours "$D/ck"
    echo "$output"
    [ "$status" -eq 0 ]
    printf '0 5 9 13 77 100 200 3 4 5 6 7\n1 2 3 4\n' >"$D/ids.txt"
    "$DS_BIN/ds-generate" -m "$D/ck" --score --ids -q <"$D/ids.txt" >"$D/ours.jsonl"
    sed "s|^|$D/ck\t|" "$D/ids.txt" | "$DS_PY" "$DS_ROOT/tests/ref/generate_ref.py" score >"$D/ref.jsonl"
    "$DS_PY" - "$D/ours.jsonl" "$D/ref.jsonl" <<'EOF'
import json, sys
a = [[v for v in json.loads(l)["logprobs"] if v is not None] for l in open(sys.argv[1])]
b = [json.loads(l)["logprobs"] for l in open(sys.argv[2])]
assert len(a) == len(b) == 2 and all(len(x) == len(y) for x, y in zip(a, b)), (a, b)
worst = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))
print("max |diff|", worst)
sys.exit(0 if worst < 2e-4 else 1)
EOF
}
