#!/usr/bin/env bats
# ds-rl over several ranks (mpirun) against the one-process run: data parallel (every rank draws the
# whole rollout batch, the update's statistics summed over the ranks) and expert parallel (--ep 2 on 2
# ranks, --ep 4 on 4: the policy and the reference hold their experts only, the rollouts decode with a
# whole copy gathered after each step, rl/rlep.h): the same completions token for token, the same
# rewards, losses within 1e-6, evaluations, the checkpoint and its EMA in the one-process layout; a run
# cut inside a rollout batch and resumed under --ep continues the uninterrupted one bit for bit.

bats_require_minimum_version 1.5.0
load mpi_helpers
load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    rl_task_data "$T" 500 6
    # tiny.json with unlimited routing (n_group 1): any --ep on one host
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_group"] = 1; c["topk_group"] = 1
json.dump(c, open(sys.argv[2], "w"))' "$DS_ROOT/share/configs/tiny.json" "$T/free.json"
    "$DS_BIN/ds-pretrain" -q --config "$T/free.json" --data "$T/shards" -o "$T/base" --tokenizer "$T/tok.json" --steps 3 \
        --batch 2 --seq-len 32 --threads 1 --peak-tflops 0.1 --seed 1
    # reward: how many digits a completion has (an untrained policy gets a spread of rewards)
    cat >"$T/digits.sh" <<'EOF'
awk '{ c = ""; if (match($0, /"completion":"[^"]*"/)) c = substr($0, RSTART + 14, RLENGTH - 15); print gsub(/[0-9]/, "", c) }'
EOF
}

# 2 epochs per rollout batch (the second update has ratios != 1 and clips), micro-batches of 2 rows
# (4 per step: on 4 ranks one each), the KL to a reference, an EMA, evaluations
rl() {
    "$@" --threads 1 --seed 1 -m "$T/base" --prompts "$T/prompts.jsonl" --eval-prompts "$T/eval.jsonl" --eval-every 2 \
        --group 4 --batch 2 --max-new 8 --lr 1e-2 --micro-batch 2 --epochs-per-batch 2 --reward cmd \
        --reward-cmd "sh $T/digits.sh" --ema 0.9
}

@test "--help documents --ep" {
    run "$DS_BIN/ds-rl" --help
    [[ "$output" == *"--ep N"*"split the routed experts"* ]]
    [[ "$output" == *"--ranks-per-node K"* ]]
}

@test "mpirun -np 2, -np 2 --ep 2, -np 4 --ep 4: the one-process run's rollouts, rewards, losses and checkpoint" {
    local d=$BATS_TEST_TMPDIR
    rl "$DS_BIN/ds-rl" --steps 4 -o "$d/one" --metrics "$d/one.jsonl" --samples "$d/one.samples" -q
    rl mpi -np 2 "$DS_BIN/ds-rl" --steps 4 -o "$d/dp2" --metrics "$d/dp2.jsonl" --samples "$d/dp2.samples" -q
    run rl mpi -np 2 "$DS_BIN/ds-rl" --steps 4 --ep 2 -o "$d/ep2" --metrics "$d/ep2.jsonl" --samples "$d/ep2.samples"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [[ "$output" == *"expert parallel: 2 ranks per group, 1 groups"* ]]
    [[ "$output" == *"memory  rollouts decode with every expert: a whole copy of the weights per rank"* ]]
    [ "$(printf '%s\n' "$output" | grep -c '^step 4/4')" -eq 1 ] # rank 0 talks
    rl mpi -np 4 "$DS_BIN/ds-rl" --steps 4 --ep 4 -o "$d/ep4" --metrics "$d/ep4.jsonl" --samples "$d/ep4.samples" -q
    for r in dp2 ep2 ep4; do
        cmp "$d/one.samples" "$d/$r.samples" # completions, rewards and advantages, written once
    done
    run "$DS_PY" - "$d" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
def recs(r):
    rs = [json.loads(l) for l in open(f"{d}/{r}.jsonl")]
    return [x for x in rs if "loss" in x], [x for x in rs if "eval/reward" in x]
one, one_eval = recs("one")
w1, e1 = load_file(f"{d}/one/model.safetensors"), load_file(f"{d}/one/ema/model.safetensors")
assert len(one) == 4 and [e["step"] for e in one_eval] == [0, 2, 4]
assert len({s["reward"] for s in one}) > 1 and any(s["clip_ratio/region_mean"] > 0 for s in one), "a run that learns"
worst = {}
def rel(a, b, floor):
    return abs(a - b) / max(abs(a), floor)
for r in ("dp2", "ep2", "ep4"):
    got, ev = recs(r)
    assert [s["step"] for s in got] == [1, 2, 3, 4], r
    for a, b in zip(one, got):
        for k in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length"):
            assert a[k] == b[k], (r, k, a[k], b[k])
        # the surrogate is a sum of ratio x advantage terms (advantages normalised to O(1)) that cancels to
        # almost nothing at ratio 1: within 1e-6 relative to that scale (EP's log-probs differ by rounding)
        dl = rel(a["loss"], b["loss"], 1.0)
        assert dl <= 1e-6, (r, a["step"], a["loss"], b["loss"])
        worst[r] = max(worst.get(r, 0), dl)
        # the update's statistics are the whole step's (summed over the ranks), not rank 0's micro-batches
        for k in ("kl", "entropy"):
            assert rel(a[k], b[k], 1e-3) <= 1e-5, (r, k, a[k], b[k])
        for k in ("clip_ratio/low_mean", "clip_ratio/high_mean"): # a token at the clip's edge may fall either way
            assert abs(a[k] - b[k]) <= 1 / 64 + 1e-12, (r, k, a[k], b[k])
        assert rel(a["grad_norm"], b["grad_norm"], 1e-3) <= 1e-5, (r, a["grad_norm"], b["grad_norm"])
        assert b["sampling/logp_diff_max"] < 1e-4 if "sampling/logp_diff_max" in b else True
    assert [(e["step"], e["eval/reward"], e["eval/mean_length"]) for e in ev] == \
           [(e["step"], e["eval/reward"], e["eval/mean_length"]) for e in one_eval], r
    w, e = load_file(f"{d}/{r}/model.safetensors"), load_file(f"{d}/{r}/ema/model.safetensors")
    assert list(w) == list(w1) and list(e) == list(e1), r + ": the one-process layout"
    # AdamW divides by sqrt(v): where a gradient is ~0 its rounding moves a weight by up to ~lr x 1e-3
    dw = max(float(np.abs(w[k] - w1[k]).max() / np.abs(w1[k]).max()) for k in w1)
    de = max(float(np.abs(e[k] - e1[k]).max() / np.abs(e1[k]).max()) for k in e1)
    assert dw <= 1e-3 and de <= dw, (r, dw, de)
    print(f"{r}: losses within {worst[r]:.2g}, weights within {dw:.2g}, EMA within {de:.2g}")
PY
    echo "$output"
    [ "$status" -eq 0 ]
    printf '# %s\n' "${lines[@]}" >&3
}

@test "--ep 2: a run stopped inside a rollout batch and resumed continues the uninterrupted one bit for bit" {
    local d=$BATS_TEST_TMPDIR
    rl mpi -np 2 "$DS_BIN/ds-rl" --steps 4 --ep 2 -o "$d/whole" --metrics "$d/whole.jsonl" --samples "$d/whole.samples" -q
    # step 3 is the first update on batch 2: the checkpoint carries the batch (its sampling weights are gone)
    rl mpi -np 2 "$DS_BIN/ds-rl" --steps 3 --ep 2 -o "$d/part" --metrics "$d/part.jsonl" --samples "$d/part.samples" -q
    grep -q '"rollouts"' "$d/part/trainer_state.json"
    rl mpi -np 2 "$DS_BIN/ds-rl" --steps 4 --ep 2 --resume "$d/part" -o "$d/part" --metrics "$d/part.jsonl" \
        --samples "$d/part.samples" -q
    cmp "$d/whole/model.safetensors" "$d/part/model.safetensors"
    cmp "$d/whole/ema/model.safetensors" "$d/part/ema/model.safetensors"
    cmp "$d/whole.samples" "$d/part.samples"
    # (the cut run evaluated at its last step, 3: that record is its own)
    diff <(numbers "$d/whole.jsonl" | grep '"loss"') <(numbers "$d/part.jsonl" | grep '"loss"')
}
