#!/usr/bin/env bats
# ds-rl: GRPO on share/configs/tiny.json with a tokenizer of the arithmetic task (share/demo/tasks.awk).
# The checkpoint layout and metrics record; a reward program raises the reward within 30 steps; a
# reward program that crashes or prints garbage gives one clean error and leaves the last completed
# step saved and resumable; SIGTERM inside a rollout batch (2 epochs x 2 mini-batches) saves, and
# --resume continues bit for bit; prompt errors name the line; usage errors exit 2.

bats_require_minimum_version 1.5.0
load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    rl_task_data "$T" 2000 12
    # a (barely trained) policy with its tokenizer
    "$DS_BIN/ds-pretrain" -q --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" -o "$T/base" \
        --tokenizer "$T/tok.json" --steps 1 --batch 2 --seq-len 32 --threads 1 --peak-tflops 0.1
    # reward program: how many 7s the completion has (the group-relative advantage ignores the prompt)
    cat >"$T/sevens.sh" <<'EOF'
awk '{ c = ""; if (match($0, /"completion":"[^"]*"/)) c = substr($0, RSTART + 14, RLENGTH - 15); print gsub(/7/, "", c) }'
EOF
}

rl() { "$DS_BIN/ds-rl" --threads 1 --seed 1 "$@"; } # seed 1: runs compare (the default is random)

@test "--help lists the options with defaults and an example" {
    run "$DS_BIN/ds-rl" --help
    [ "$status" -eq 0 ]
    for o in --model --prompts --out --group --steps --reward --reward-cmd --kl --clip --epochs-per-batch --temperature \
             --max-new --lr --metrics --plot --eval-prompts --resume --save-every --loss-avg --mini-batches --answer-mode --fp8; do
        [[ "$output" == *"$o"* ]] || { echo "missing $o"; false; }
    done
    [[ "$output" == *"[default: 0.04]"* ]]
    [[ "$output" == *"Example:"* ]]
}

@test "a run writes a checkpoint, per-step RL metrics, evaluations and a plot" {
    run --separate-stderr rl -m "$T/base" --prompts "$T/prompts.jsonl" --eval-prompts "$T/eval.jsonl" -o "$BATS_TEST_TMPDIR/ck" \
        --steps 3 --group 4 --batch 2 --max-new 8 --lr 1e-3 --reward answer:1,format:0.5,length:0.1 --format-require "answer is" \
        --eval-samples 2 --metrics "$BATS_TEST_TMPDIR/m.jsonl" --plot "$BATS_TEST_TMPDIR/rl.png"
    echo "$stderr"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    [[ "$stderr" == *"rollout 2 prompts x 4 completions = 8 per batch"* ]]
    [[ "$stderr" == *"eval at step 0: accuracy "*"/12) | reward "*"| sampled (2 each): accuracy "* ]]
    [[ "$stderr" == *"step 1/3 | reward "*"| answer "*"format "*"length "* ]]
    [[ "$stderr" == *"eval at step 3: accuracy"* ]]
    for f in config.json model.safetensors tokenizer.json trainer_state.json optimizer.safetensors; do
        [ -f "$BATS_TEST_TMPDIR/ck/$f" ] || { echo "no $f"; false; }
    done
    cmp "$T/base/tokenizer.json" "$BATS_TEST_TMPDIR/ck/tokenizer.json"
    head -c 8 "$BATS_TEST_TMPDIR/rl.png" | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a"
    run "$DS_PY" - "$BATS_TEST_TMPDIR/m.jsonl" <<'EOF'
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
cfg = recs[0]["config"]
assert cfg["tool"] == "ds-rl" and cfg["group"] == 4 and cfg["rows_per_step"] == 8 and cfg["rewards"] == "answer:1,format:0.5,length:0.1"
evals = [r for r in recs if "eval/reward" in r]
steps = [r for r in recs if "loss" in r]
assert [e["step"] for e in evals] == [0, 3] and all(e["eval/n"] == 12 for e in evals)
assert all(e["eval/samples"] == 2 and 0 <= e["eval/sampled_accuracy"] <= 1 for e in evals)
assert [s["step"] for s in steps] == [1, 2, 3] and [s["rollout_batch"] for s in steps] == [1, 2, 3]
need = ["loss", "loss_pg", "loss_kl", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy",
        "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "completions/mean_length",
        "completions/max_length", "completions/clipped_ratio", "timing/generate_s", "timing/score_s",
        "timing/update_s", "tokens_per_s", "sampling/logp_diff_max"]
for name in ("answer", "format", "length"):
    need += [f"rewards/{name}/mean", f"rewards/{name}/std"]
for s in steps:
    missing = [k for k in need if k not in s]
    assert not missing, missing
    total = s["rewards/answer/mean"] + 0.5 * s["rewards/format/mean"] + 0.1 * s["rewards/length/mean"]
    assert math.isclose(s["reward"], total, rel_tol=1e-12, abs_tol=1e-12), (s["reward"], total)
    assert s["sampling/logp_diff_max"] < 1e-4, "engine and trainer agree before the update"
    assert 0 <= s["completions/clipped_ratio"] <= 1 and s["completions/max_length"] <= 8
print(steps[0]["entropy"], steps[0]["kl"])
assert steps[0]["kl"] < 1e-9, "the policy starts as the reference"
EOF
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "a reward program raises its reward within 30 steps" {
    run --separate-stderr rl -m "$T/base" --prompts "$T/prompts.jsonl" -o "$BATS_TEST_TMPDIR/ck" --steps 30 --group 8 --batch 2 \
        --max-new 6 --lr 2e-2 --reward-cmd "sh $T/sevens.sh" --metrics "$BATS_TEST_TMPDIR/m.jsonl" --log-every 10
    echo "$stderr" | grep step
    [ "$status" -eq 0 ]
    run "$DS_PY" - "$BATS_TEST_TMPDIR/m.jsonl" <<'EOF'
import json, sys
r = [json.loads(l)["reward"] for l in open(sys.argv[1]) if '"loss"' in l]
print("reward (7s per completion of 6 tokens):", " ".join(f"{x:.2f}" for x in r))
assert max(r[:3]) < 1 and sum(r[-5:]) / 5 > 3
EOF
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "a crashing reward program: one clean error, the last completed step saved and resumable" {
    # fails on its 3rd batch
    cat >"$BATS_TEST_TMPDIR/flaky.sh" <<EOF
n=\$(cat "$BATS_TEST_TMPDIR/calls" 2>/dev/null || echo 0); n=\$((n + 1)); echo \$n >"$BATS_TEST_TMPDIR/calls"
if [ \$n -eq 3 ]; then kill -SEGV \$\$; fi
sh "$T/sevens.sh"
EOF
    common=(-m "$T/base" --prompts "$T/prompts.jsonl" -o "$BATS_TEST_TMPDIR/ck" --steps 4 --group 4 --batch 2 --max-new 6 --lr 1e-2)
    run --separate-stderr rl "${common[@]}" --reward-cmd "sh $BATS_TEST_TMPDIR/flaky.sh" --save-every 1
    echo "$stderr"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"ds-rl: error: rollout batch 3: reward program: exited with status 139 (killed by signal 11, Segmentation fault): sh $BATS_TEST_TMPDIR/flaky.sh"* ]]
    [[ "$stderr" == *"hint: step 2 is saved in $BATS_TEST_TMPDIR/ck: continue with --resume $BATS_TEST_TMPDIR/ck"* ]]
    grep -q '"step": *2,' "$BATS_TEST_TMPDIR/ck/trainer_state.json"
    run --separate-stderr rl "${common[@]}" --reward-cmd "sh $BATS_TEST_TMPDIR/flaky.sh" --resume "$BATS_TEST_TMPDIR/ck"
    echo "$stderr"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"resuming at step 2 of 4"* ]]
    [[ "$stderr" == *"step 4/4 | reward"* ]]
    grep -q '"step": *4,' "$BATS_TEST_TMPDIR/ck/trainer_state.json"
}

@test "a reward program that prints garbage or too few lines: clean errors, nothing written" {
    common=(-m "$T/base" --prompts "$T/prompts.jsonl" -o "$BATS_TEST_TMPDIR/ck" --steps 2 --group 4 --batch 2 --max-new 6)
    run --separate-stderr rl "${common[@]}" --reward-cmd 'cat >/dev/null; yes hello | head -8' -q
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-rl: error: rollout batch 1: reward program: line 1: not a number: 'hello'" ]
    [ ! -e "$BATS_TEST_TMPDIR/ck" ]
    run --separate-stderr rl "${common[@]}" --reward-cmd 'cat >/dev/null; echo 1' -q
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"reward program: printed 1 line for 8 completions"* ]]
    run --separate-stderr rl "${common[@]}" --reward-cmd 'sleep 10' --reward-timeout 0.3 -q
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"reward program: timed out after 0.3 s: sleep 10"* ]]
}

@test "SIGTERM inside a rollout batch saves and exits 143; --resume continues bit for bit" {
    interrupt_and_resume loss 5 "$DS_BIN/ds-rl" --threads 1 -m "$T/base" --prompts "$T/prompts.jsonl" --steps 120 --group 4 --batch 2 \
        --max-new 6 --lr 1e-2 --epochs-per-batch 2 --mini-batches 2 --reward format --format-require 7 --log-every 0 --seed 5
}

@test "--kl 0 needs no reference; --resume with --kl > 0 needs the starting checkpoint" {
    rl -m "$T/base" --prompts "$T/prompts.jsonl" -o "$BATS_TEST_TMPDIR/ck" --steps 1 --group 2 --batch 2 --max-new 4 --kl 0 -q
    run rl --resume "$BATS_TEST_TMPDIR/ck" --prompts "$T/prompts.jsonl" -o "$BATS_TEST_TMPDIR/ck" --steps 2 --group 2 --batch 2 \
        --max-new 4 --kl 0 -q
    [ "$status" -eq 0 ]
    grep -q '"step": *2,' "$BATS_TEST_TMPDIR/ck/trainer_state.json"
    run --separate-stderr rl --resume "$BATS_TEST_TMPDIR/ck" --prompts "$T/prompts.jsonl" -o "$BATS_TEST_TMPDIR/ck" --steps 3 \
        --group 2 --batch 2 --max-new 4 -q
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"--resume with --kl > 0: give the starting checkpoint with -m or --ref (the reference policy)"* ]]
}

@test "prompts from stdin; prompt errors name the line" {
    run --separate-stderr rl -m "$T/base" --prompts - -o "$BATS_TEST_TMPDIR/ck" --steps 1 --group 2 --batch 2 --max-new 4 -q \
        <"$T/prompts.jsonl"
    [ "$status" -eq 0 ]
    printf '{"prompt": "2 + 2 = ?", "answer": "4"}\n{"prompt": "no answer"}\n' >"$BATS_TEST_TMPDIR/p.jsonl"
    run --separate-stderr rl -m "$T/base" --prompts "$BATS_TEST_TMPDIR/p.jsonl" -o "$BATS_TEST_TMPDIR/x" --steps 1 --group 2 -q
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"line 2: needs an \"answer\""* ]]
    printf '{"prompt": "2 + 2 = ?", "answer": "4"}\n{"prompt": 3}\n' >"$BATS_TEST_TMPDIR/p.jsonl"
    run --separate-stderr rl -m "$T/base" --prompts "$BATS_TEST_TMPDIR/p.jsonl" -o "$BATS_TEST_TMPDIR/x" --steps 1 --group 2 -q
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"line 2: \"prompt\" must be a string"* ]]
    # a reward program does not need answers
    printf '{"prompt": "count sevens"}\n' >"$BATS_TEST_TMPDIR/p.jsonl"
    run rl -m "$T/base" --prompts "$BATS_TEST_TMPDIR/p.jsonl" -o "$BATS_TEST_TMPDIR/x" --steps 1 --group 2 --batch 1 --max-new 4 \
        --reward-cmd "sh $T/sevens.sh" -q
    [ "$status" -eq 0 ]
}

@test "usage errors exit 2" {
    run --separate-stderr "$DS_BIN/ds-rl" --prompts x -o y --steps 1
    [ "$status" -eq 2 ] && [[ "$stderr" == *"-m CKPT is required"* ]]
    run --separate-stderr "$DS_BIN/ds-rl" -m "$T/base" -o y --steps 1
    [ "$status" -eq 2 ] && [[ "$stderr" == *"--prompts FILE is required"* ]]
    run --separate-stderr "$DS_BIN/ds-rl" -m "$T/base" --prompts "$T/prompts.jsonl" -o - --steps 1
    [ "$status" -eq 2 ] && [[ "$stderr" == *"checkpoints are directories"* ]]
    run --separate-stderr "$DS_BIN/ds-rl" -m "$T/base" --prompts "$T/prompts.jsonl" -o y --steps 1 --group 1
    [ "$status" -eq 2 ] && [[ "$stderr" == *"--group"* ]]
    run --separate-stderr "$DS_BIN/ds-rl" -m "$T/base" --prompts "$T/prompts.jsonl" -o y --steps 1 --reward speed
    [ "$status" -eq 2 ] && [[ "$stderr" == *"unknown reward 'speed'"* ]]
    run --separate-stderr "$DS_BIN/ds-rl" -m "$T/base" --prompts "$T/prompts.jsonl" -o y --steps 1 --group 3 --batch 1 --mini-batches 2
    [ "$status" -eq 2 ] && [[ "$stderr" == *"--mini-batches 2 does not divide"* ]]
    [ ! -e y ]
}
