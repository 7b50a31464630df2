#!/usr/bin/env bats
# ds-sft's masked loss against transformers: with --lr 0 and one step holding exactly one epoch (every
# conversation once, packed several to a row with sample masking), the step's loss must equal the
# assistant-token cross-entropy that transformers' DeepseekV3ForCausalLM gives on each conversation run
# alone (tests/ref/sft_ref.py renders and tokenizes them itself).

load ../bats/train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    # a few steps so the weights are not at init; gamma 0 keeps the expert biases at 0 (transformers
    # fills masked groups with 0.0 where DeepSeek uses -inf: equal choices only while scores stay positive)
    tiny_base "$T" --steps 5 --lr 1e-2 --gamma 0
    "$DS_PY" - "$T/chat.jsonl" <<'PY'
import json, random, sys
rnd = random.Random(3)
words = "the quick brown fox jumps over a lazy dog while seven wise owls watch from an old oak".split()
with open(sys.argv[1], "w") as f:
    for i in range(40):
        say = lambda n: " ".join(rnd.choice(words) for _ in range(n)).capitalize() + "."
        msgs = [{"role": "system", "content": say(4)}] if i % 4 == 0 else []
        for _ in range(1 + i % 2):  # one or two exchanges
            msgs += [{"role": "user", "content": say(rnd.randint(3, 9))},
                     {"role": "assistant", "content": say(rnd.randint(2, 14))}]
        f.write(json.dumps({"messages": msgs}) + "\n")
PY
}

step1_loss() { "$DS_PY" -c 'import json, sys; print([json.loads(l) for l in open(sys.argv[1])][1]["loss"])' "$1"; }
config_of() { "$DS_PY" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["config"][sys.argv[2]])' "$1" "$2"; }

@test "the packed, masked SFT loss equals transformers' loss on the assistant tokens of each conversation alone" {
    common=(-m "$T/base" --data "$T/chat.jsonl" --seq-len 256 --epochs 1 --lr 0 --lr-min 0 --val-frac 0 --threads 1 --seed 1
            --log-every 0 -q)
    "$DS_BIN/ds-sft" "${common[@]}" -o "$BATS_TEST_TMPDIR/probe" --steps 1 --metrics "$BATS_TEST_TMPDIR/probe.jsonl"
    rows=$(config_of "$BATS_TEST_TMPDIR/probe.jsonl" rows)
    "$DS_BIN/ds-sft" "${common[@]}" -o "$BATS_TEST_TMPDIR/ck" --batch "$rows" --metrics "$BATS_TEST_TMPDIR/m.jsonl"
    [ "$(config_of "$BATS_TEST_TMPDIR/m.jsonl" steps)" -eq 1 ]
    [ "$(config_of "$BATS_TEST_TMPDIR/m.jsonl" skipped)" -eq 0 ]
    ours=$(step1_loss "$BATS_TEST_TMPDIR/m.jsonl")
    run "$DS_PY" "$DS_ROOT/tests/ref/sft_ref.py" "$T/base" "$T/chat.jsonl"
    echo "ours $ours ($rows packed rows); transformers: $output"
    [ "$status" -eq 0 ]
    "$DS_PY" -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2].split()[1]); assert abs(a - b) <= 1e-5 * b, (a, b)' \
        "$ours" "${lines[-1]}"
}
