#!/usr/bin/env bats
# ds-sft: fine-tunes a tiny checkpoint on chat JSONL (loss falls; checkpoint, metrics with the data
# statistics, validation loss), reports bad conversations by line and skips or rejects them, reads
# stdin, takes another chat template, resumes bit for bit after SIGTERM, and gives clean usage errors.
# The masked loss itself is checked against transformers in tests/ref/sft.bats.

bats_require_minimum_version 1.5.0
load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_base "$T"
    # a learnable chat task: additions, some with a system prompt
    "$DS_PY" - "$T/chat.jsonl" <<'EOF'
import json, random, sys
rnd = random.Random(1)
with open(sys.argv[1], "w") as f:
    for i in range(80):
        a, b = rnd.randint(1, 30), rnd.randint(1, 30)
        msgs = [{"role": "system", "content": "You add numbers."}] if i % 3 == 0 else []
        msgs += [{"role": "user", "content": f"What is {a} plus {b}?"},
                 {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
        f.write(json.dumps({"messages": msgs}) + "\n")
EOF
}

sft() { "$DS_BIN/ds-sft" --threads 1 --seed 1 "$@"; } # seed 1: runs compare (the default is random)

@test "--help lists the options with defaults and an example" {
    run "$DS_BIN/ds-sft" --help
    [ "$status" -eq 0 ]
    for o in --model --data --out --epochs --lr --lr-min --seq-len --batch --micro-batch --chat-template --on-bad \
             --val-frac --val-every --pack-window --lambda --seed --threads --metrics --plot --save-every --resume --fp8; do
        [[ "$output" == *"$o"* ]] || { echo "missing $o"; false; }
    done
    [[ "$output" == *"[default: 5e-06]"* || "$output" == *"[default: 5.0e-06]"* ]]
    [[ "$output" == *"Example:"* ]]
}

@test "two epochs lower the loss; checkpoint, metrics with the data statistics, validation loss" {
    run --separate-stderr sft -m "$T/base" --data "$T/chat.jsonl" -o "$BATS_TEST_TMPDIR/ck" --seq-len 128 --batch 4 \
        --lr 3e-3 --lr-min 3e-4 --val-frac 0.1 --metrics "$BATS_TEST_TMPDIR/m.jsonl" --plot "$BATS_TEST_TMPDIR/loss.png"
    echo "$stderr" | tail -5
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    [[ "$stderr" == *"80 conversations (0 skipped): 72 training, 8 held out"* ]]
    for f in config.json model.safetensors tokenizer.json trainer_state.json optimizer.safetensors; do
        [ -f "$BATS_TEST_TMPDIR/ck/$f" ] || { echo "no $f"; false; }
    done
    [ -s "$BATS_TEST_TMPDIR/loss.png" ]
    run "$DS_PY" - "$BATS_TEST_TMPDIR/m.jsonl" <<'EOF'
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
c = recs[0]["config"]
steps = [r for r in recs[1:] if "step" in r]
assert c["tool"] == "ds-sft" and c["conversations"] == 80 and c["skipped"] == 0, c
assert c["train_samples"] == 72 and c["val_samples"] == 8 and c["epochs"] == 2, c
assert c["steps"] == math.ceil(c["rows"] / 4) == len(steps), (c["steps"], c["rows"], len(steps))
assert 0.5 < c["packing_fill"] <= 1 and 0 < c["trained_share"] < 1, c
# cosine from 3e-3 to 3e-4 over the run
assert abs(steps[-1]["lr"] - 3e-4) < 1e-9 and steps[0]["lr"] > 2.9e-3, (steps[0]["lr"], steps[-1]["lr"])
vals = [r["val_loss"] for r in steps if "val_loss" in r]
assert len(vals) >= 2 and "val_loss" in steps[-1], vals
assert steps[-1]["loss"] < 0.8 * steps[0]["loss"] and vals[-1] < 0.8 * vals[0], (steps[0]["loss"], steps[-1]["loss"], vals)
print("ok", len(steps), "steps", steps[0]["loss"], "->", steps[-1]["loss"])
EOF
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "--fp8: the session trains the Linear layers in FP8 and says so in the configuration record" {
    run --separate-stderr sft -m "$T/base" --data "$T/chat.jsonl" -o "$BATS_TEST_TMPDIR/ck" --seq-len 128 --batch 4 \
        --steps 6 --lr 3e-3 --val-frac 0 --fp8 --metrics "$BATS_TEST_TMPDIR/m8.jsonl" --log-every 0
    [ "$status" -eq 0 ]
    run --separate-stderr sft -m "$T/base" --data "$T/chat.jsonl" -o "$BATS_TEST_TMPDIR/ck32" --seq-len 128 --batch 4 \
        --steps 6 --lr 3e-3 --val-frac 0 --metrics "$BATS_TEST_TMPDIR/m32.jsonl" --log-every 0
    [ "$status" -eq 0 ]
    run "$DS_PY" - "$BATS_TEST_TMPDIR" <<'EOF'
import json, sys
d = sys.argv[1]
r8 = [json.loads(l) for l in open(f"{d}/m8.jsonl")]
r32 = [json.loads(l) for l in open(f"{d}/m32.jsonl")]
assert r8[0]["config"]["fp8"] is True and r32[0]["config"]["fp8"] is False
l8 = [r["loss"] for r in r8 if "step" in r]
l32 = [r["loss"] for r in r32 if "step" in r]
print(l8, l32)
assert l8 != l32 and abs(l8[0] - l32[0]) / l32[0] < 0.01 and l8[-1] < l8[0]
EOF
    echo "$output"
    [ "$status" -eq 0 ]
}

bad_data() {
    cat "$T/chat.jsonl" >"$1"
    cat >>"$1" <<'EOF'
{"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]}
{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}

{"messages": [{"role": "user", "content": "Tell me everything."}, {"role": "assistant", "content": "It is a very long answer that goes on and on and on, far past the end of any row of sixty-four tokens, because it keeps saying the same thing again and again and again until it cannot fit."}]}
not json
EOF
}

@test "bad conversations are reported by line and skipped" {
    bad_data "$BATS_TEST_TMPDIR/bad.jsonl"
    run --separate-stderr sft -m "$T/base" --data "$BATS_TEST_TMPDIR/bad.jsonl" -o "$BATS_TEST_TMPDIR/ck" --seq-len 64 \
        --batch 4 --steps 2 --lr 1e-3 --log-every 0
    echo "$stderr"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"warning: jsonl: line 81: messages[0].role: must be"*"(skipped)"* ]]
    [[ "$stderr" == *"warning: jsonl: line 82: messages[0].content: empty"*"(skipped)"* ]]
    [[ "$stderr" == *"warning: jsonl: line 84: "*" tokens: longer than a row of 64"*"(skipped)"* ]]
    [[ "$stderr" == *"warning: jsonl: line 85: bad JSON"*"(skipped)"* ]]
    [[ "$stderr" == *"84 conversations (4 skipped)"* ]]
}

@test "--on-bad reject stops at the first bad line with exit 1" {
    bad_data "$BATS_TEST_TMPDIR/bad.jsonl"
    run --separate-stderr sft -m "$T/base" --data "$BATS_TEST_TMPDIR/bad.jsonl" -o "$BATS_TEST_TMPDIR/ck" --seq-len 64 \
        --on-bad reject
    echo "$stderr"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-sft: error: jsonl: line 81: messages[0].role: must be \"system\", \"user\" or \"assistant\": $BATS_TEST_TMPDIR/bad.jsonl"* ]]
    [[ "$stderr" == *"hint: "*"--on-bad skip"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/ck" ]
}

@test "conversations from stdin; nothing usable is an error" {
    run --separate-stderr sft -m "$T/base" --data - -o "$BATS_TEST_TMPDIR/ck" --seq-len 128 --batch 4 --steps 2 \
        --log-every 0 <"$T/chat.jsonl"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"80 conversations"* ]]
    run --separate-stderr sft -m "$T/base" --data - -o "$BATS_TEST_TMPDIR/ck2" <<<'{"messages": [{"role": "user", "content": "q"}]}'
    echo "$stderr"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"no assistant message"*"(skipped)"* ]]
    [[ "$stderr" == *"ds-sft: error: no usable conversations (1 read, 1 skipped): -"* ]]
}

@test "a chat template of one's own changes what is trained; a broken one is an error naming it" {
    sed 's/^assistant .*/assistant  = "<｜Assistant｜>Answer: {content}<｜end▁of▁sentence｜>"/' "$DS_ROOT/share/chat_template" \
        >"$BATS_TEST_TMPDIR/tmpl"
    grep -q 'Answer: {content}' "$BATS_TEST_TMPDIR/tmpl"
    common=(-m "$T/base" --data "$T/chat.jsonl" --seq-len 128 --batch 4 --steps 1 --log-every 0 --val-frac 0)
    sft "${common[@]}" -o "$BATS_TEST_TMPDIR/a" --metrics "$BATS_TEST_TMPDIR/a.jsonl" -q
    sft "${common[@]}" -o "$BATS_TEST_TMPDIR/b" --metrics "$BATS_TEST_TMPDIR/b.jsonl" -q --chat-template "$BATS_TEST_TMPDIR/tmpl"
    run "$DS_PY" -c '
import json, sys
a, b = (json.loads(open(f).readline())["config"] for f in sys.argv[1:])
assert a["chat_template"] == "built-in" and b["chat_template"].endswith("tmpl"), (a["chat_template"], b["chat_template"])
# "Answer: " is template text: more tokens per conversation, none of them trained
assert b["packing_fill"] > a["packing_fill"] and b["trained_share"] < a["trained_share"], (a, b)
' "$BATS_TEST_TMPDIR/a.jsonl" "$BATS_TEST_TMPDIR/b.jsonl"
    echo "$output"
    [ "$status" -eq 0 ]
    echo 'assistant = "no content placeholder"' >"$BATS_TEST_TMPDIR/broken"
    run --separate-stderr sft "${common[@]}" -o "$BATS_TEST_TMPDIR/c" --chat-template "$BATS_TEST_TMPDIR/broken"
    echo "$stderr"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-sft: error: chat template: "*"$BATS_TEST_TMPDIR/broken"* ]]
}

@test "SIGTERM finishes the step, saves and exits 143; --resume continues bit for bit" {
    interrupt_and_resume step 25 "$DS_BIN/ds-sft" --threads 1 -m "$T/base" --data "$T/chat.jsonl" --seq-len 64 --batch 2 --epochs 3 \
        --lr 1e-3 --lr-min 1e-4 --val-every 10 --log-every 0
}

@test "a checkpoint without a tokenizer is an error with a hint" {
    mkdir -p "$BATS_TEST_TMPDIR/notok"
    cp "$T/base/config.json" "$T/base/model.safetensors" "$BATS_TEST_TMPDIR/notok/"
    run --separate-stderr sft -m "$BATS_TEST_TMPDIR/notok" --data "$T/chat.jsonl" -o "$BATS_TEST_TMPDIR/ck"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"ds-sft: error: no tokenizer: "* ]]
    [[ "$stderr" == *"hint: "*"--tokenizer"* ]]
}

@test "usage errors exit 2" {
    run -2 sft --data "$T/chat.jsonl" -o x
    [[ "$output" == *"-m CKPT is required"* ]]
    run -2 sft -m "$T/base" -o x
    [[ "$output" == *"--data FILE is required"* ]]
    run -2 sft -m "$T/base" --data "$T/chat.jsonl"
    [[ "$output" == *"-o OUT is required"* ]]
    run -2 sft -m "$T/base" --data "$T/chat.jsonl" -o x --lr 1e-6 --lr-min 1e-5
    [[ "$output" == *"--lr-min"* ]]
    run -2 sft -m "$T/base" --data "$T/chat.jsonl" -o x --on-bad ignore
    run -2 sft -m "$T/base" --data "$T/chat.jsonl" -o x --batch 6 --micro-batch 4
    [[ "$output" == *"not a multiple"* ]]
}
