#!/usr/bin/env bats
# --ema DECAY (train/ema.h): the training tools keep an EMA of the weights and save it as a model in
# <checkpoint>/ema, which ds-generate loads; its values follow EMA_t = d*EMA_{t-1} + (1-d)*W_t from
# the starting weights (checked in numpy on every step's weights); --resume continues it bit for bit;
# out-of-range decays are usage errors naming the option.

bats_require_minimum_version 1.5.0
load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_setup
}

# from $T/base (W_0), seed 1, constant learning rate
pretrain() {
    "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --seed 1 -m "$T/base" --data "$T/shards" --batch 4 \
        --seq-len 64 --lr 1e-2 --log-every 0 "$@"
}


# A run over several layouts from BASE, saved after steps 1, 2, 3 in D/s1, D/s2, D/run, against the
# one-process run D/one: every step's gathered EMA is the recurrence over the gathered weights bit for
# bit, and it differs from the one-process EMA no more than the weights it averages do.
check_gathered_ema() {
    "$DS_PY" - "$1" "$2" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
base, d = sys.argv[1], sys.argv[2]
W = [load_file(f"{base}/model.safetensors")] + [load_file(f"{d}/{s}/model.safetensors") for s in ("s1", "s2", "run")]
E = [None] + [load_file(f"{d}/{s}/ema/model.safetensors") for s in ("s1", "s2", "run")]
one_w, one_e = load_file(f"{d}/one/model.safetensors"), load_file(f"{d}/one/ema/model.safetensors")
a, b = np.float32(0.9), np.float32(1 - 0.9)
assert list(E[3]) == list(one_e), "the one-process layout"
assert [n for n in W[0] if ".experts." in n]
worst = 0
for name in W[0]:
    if name.endswith("e_score_correction_bias"):
        continue
    ref = W[0][name]
    for k in (1, 2, 3):
        ref = a * ref + b * W[k][name]
        assert np.array_equal(E[k][name], ref), f"{name} step {k}: max diff {np.abs(E[k][name] - ref).max()}"
    dw = float(np.abs(W[3][name] - one_w[name]).max())
    de = float(np.abs(E[3][name] - one_e[name]).max())
    assert de <= dw + 1e-7, (name, de, dw)
    worst = max(worst, de)
print(f"ok: EMA within {worst:.2g} of the one-process run's")
PY
}

# From BASE with the options OPTS, one step on each of three layouts ("NP OPTIONS...": mpirun's -np, then
# the layout's options), each resuming the last, saved in $BATS_TEST_TMPDIR/s1, s2 and run; then
# check_gathered_ema against the one-process run in $BATS_TEST_TMPDIR/one.
ema_over_layouts() {
    local base=$1 opts=$2 D=$BATS_TEST_TMPDIR k=1 layout
    shift 2
    for layout in "$@"; do
        local np=${layout%% *} resume=""
        [ "$k" -gt 1 ] && resume="--resume $D/run"
        run mpi -np "$np" "$DS_BIN/ds-pretrain" $opts -m "$base" $resume -o "$D/run" --steps "$k" ${layout#* }
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        if [ "$k" -eq 1 ]; then # rank 0 reports the hand-over once
            [ "$(printf '%s\n' "$output" | grep -c 'ema .* per step handing the weights over (1 steps)')" -eq 1 ]
        fi
        [ "$k" -lt 3 ] && cp -r "$D/run" "$D/s$k"
        k=$((k + 1))
    done
    check_gathered_ema "$base" "$D"
}

@test "--help documents --ema; out-of-range decays are usage errors naming the option" {
    run "$DS_BIN/ds-pretrain" --help
    [[ "$output" == *"--ema DECAY"*"OUT/ema"* ]]
    for tool in ds-sft ds-extend-ctx ds-rl; do
        run "$DS_BIN/$tool" --help
        [[ "$output" == *"--ema DECAY"* ]] || { echo "$tool lacks --ema"; false; }
    done
    for bad in 0 1 1.5; do
        run --separate-stderr pretrain -o "$BATS_TEST_TMPDIR/x" --steps 1 --ema "$bad"
        [ "$status" -eq 2 ]
        [[ "$stderr" == "ds-pretrain: error: --ema"*"$bad"* ]] || { echo "$stderr"; false; }
    done
    run --separate-stderr pretrain -o "$BATS_TEST_TMPDIR/x" --steps 1 --ema -0.5
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-pretrain: error: --ema: -0.5 is out of range"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/x" ]
}

@test "the EMA follows the recurrence over every step's weights and loads in ds-generate" {
    D="$BATS_TEST_TMPDIR"
    # a chain of one-step runs, each resuming the last, keeps every step's weights and EMA
    pretrain -o "$D/run" --steps 1 --ema 0.9
    cp -r "$D/run" "$D/s1"
    for k in 2 3 4; do
        pretrain --resume "$D/run" -o "$D/run" --steps $k --ema 0.9
        cp -r "$D/run" "$D/s$k"
    done
    "$DS_PY" - "$T/base" "$D" <<'EOF'
import sys
import numpy as np
from safetensors.numpy import load_file
base, d = sys.argv[1], sys.argv[2]
w0 = load_file(f"{base}/model.safetensors")
W = [w0] + [load_file(f"{d}/s{k}/model.safetensors") for k in (1, 2, 3, 4)]
E = [None] + [load_file(f"{d}/s{k}/ema/model.safetensors") for k in (1, 2, 3, 4)]
a, b = np.float32(0.9), np.float32(1 - 0.9)
bias = [n for n in w0 if n.endswith("e_score_correction_bias")]
mtp = [n for n in w0 if ".layers.2." in n or "eh_proj" in n]
assert bias and mtp, "tiny.json has routed experts and an MTP module"
for name in w0:
    if name in bias:  # routing state, not a learned weight: the EMA checkpoint carries the current one
        for k in (1, 2, 3, 4):
            assert np.array_equal(E[k][name], W[k][name]), name
        continue
    ref = w0[name].astype(np.float32)
    for k in (1, 2, 3, 4):
        ref = a * ref + b * W[k][name]
        assert E[k][name].dtype == np.float32
        assert np.array_equal(E[k][name], ref), f"{name} step {k}: max diff {np.abs(E[k][name] - ref).max()}"
    assert not np.array_equal(E[4][name], W[4][name]) or np.array_equal(W[4][name], w0[name]), name
print("ok", len(w0), "tensors")
print("ok", len(w0), "tensors")
EOF
    # a model directory of its own: ds-generate scores with it
    run --separate-stderr "$DS_BIN/ds-generate" -m "$D/s4/ema" --score --ids -q <<<"0 5 9 13 77"
    [ "$status" -eq 0 ]
    [[ "$output" == *'"n_scored":4'* ]]
    [ -f "$D/s4/ema/tokenizer.json" ] && [ -f "$D/s4/ema/config.json" ]
    [ ! -e "$D/s4/ema/optimizer.safetensors" ]
}

@test "SIGTERM, then --resume: the EMA continues bit for bit" {
    interrupt_and_resume step 5 "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 -m "$T/base" --data "$T/shards" \
        --batch 4 --seq-len 64 --log-every 0 --steps 120 --ema 0.95 --save-every 7
    cmp "$BATS_TEST_TMPDIR/whole/ema/model.safetensors" "$BATS_TEST_TMPDIR/part/ema/model.safetensors"
}

@test "resuming with --ema from a checkpoint without one starts the average there; without --ema none is written" {
    D="$BATS_TEST_TMPDIR"
    pretrain -o "$D/run" --steps 1
    [ ! -e "$D/run/ema" ]
    run --separate-stderr pretrain --resume "$D/run" -o "$D/run" --steps 2 --ema 0.5
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"has no EMA checkpoint; the average starts from the resumed weights"* ]]
    [ -f "$D/run/ema/model.safetensors" ]
}

@test "data parallel (mpirun --dp 2): rank 0 keeps the EMA and writes it once; under ZeRO-1 it averages the gathered weights" {
    load mpi_helpers
    D="$BATS_TEST_TMPDIR"
    for mode in zero no-zero; do
        local flag=""
        [ $mode = no-zero ] && flag=--no-zero
        run mpi -np 2 "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --seed 1 -m "$T/base" --data "$T/shards" \
            --batch 4 --micro-batch 1 --seq-len 64 --log-every 0 --steps 1 --dp 2 --ema 0.9 -o "$D/$mode" $flag
        echo "$output"
        [ "$status" -eq 0 ]
        [ "$(printf '%s\n' "$output" | grep -c 'ema .* per step handing the weights over (1 steps)')" -eq 1 ]
    done
    # ZeRO-1 updates half of the weights on each rank: the EMA must see them after the all-gather, the
    # same bits as with the replicated optimizer
    [ -f "$D/zero/optimizer.index.json" ]
    cmp "$D/zero/ema/model.safetensors" "$D/no-zero/ema/model.safetensors"
    "$DS_PY" - "$T/base" "$D/zero" <<'EOF'
import sys
import numpy as np
from safetensors.numpy import load_file
w0, w1 = load_file(f"{sys.argv[1]}/model.safetensors"), load_file(f"{sys.argv[2]}/model.safetensors")
e1 = load_file(f"{sys.argv[2]}/ema/model.safetensors")
for name in w0:
    want = w1[name] if name.endswith("e_score_correction_bias") else np.float32(0.9) * w0[name] + np.float32(1 - 0.9) * w1[name]
    assert np.array_equal(e1[name], want), name
EOF
}

@test "ds-sft and ds-rl keep it too, with their own step records intact" {
    D="$BATS_TEST_TMPDIR"
    "$DS_BIN/ds-sft" --threads 1 --seed 1 -m "$T/base" --data "$T/chat.jsonl" -o "$D/sft" --steps 2 --ema 0.5 -q
    [ -f "$D/sft/ema/model.safetensors" ]
    "$DS_BIN/ds-rl" --threads 1 --seed 1 -m "$T/base" --prompts "$T/prompts.jsonl" -o "$D/rl" --steps 2 --group 4 \
        --batch 2 --max-new 8 --ema 0.5 --metrics "$D/rl.jsonl" -q
    [ -f "$D/rl/ema/model.safetensors" ]
    [ "$(grep -c '"reward"' "$D/rl.jsonl")" -ge 2 ]
}

@test "--ep: each rank averages what it holds; resumed on other layouts the gathered EMA follows the recurrence bit for bit" {
    load mpi_helpers
    D="$BATS_TEST_TMPDIR"
    # tiny.json with unlimited routing (n_group 1): any --ep on one host
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_group"] = 1; c["topk_group"] = 1
json.dump(c, open(sys.argv[2], "w"))' "$DS_ROOT/share/configs/tiny.json" "$D/free.json"
    "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --config "$D/free.json" --data "$T/shards" -o "$D/base" --steps 2 \
        --batch 4 --seq-len 64 --log-every 0 --seed 1 -q
    A="--peak-tflops 0.1 --threads 1 --seed 1 --data $T/shards --batch 4 --micro-batch 1 --seq-len 64 --lr 1e-2 --log-every 0 --ema 0.9"
    "$DS_BIN/ds-pretrain" $A -m "$D/base" -o "$D/one" --steps 3 -q
    # 2 ranks --ep 2 for a step, then 4 ranks --ep 4, then 4 ranks --ep 2 (each rank reads its tensors by name)
    ema_over_layouts "$D/base" "$A" "2 --ep 2" "4 --ep 4" "4 --ep 2"
}

@test "--pp: each stage's first replica averages its layers; across 1F1B, DP and DualPipe layouts the gathered EMA follows the recurrence bit for bit" {
    load mpi_helpers
    D="$BATS_TEST_TMPDIR"
    A="--peak-tflops 0.1 --threads 1 --seed 1 --data $T/shards --batch 4 --micro-batch 1 --seq-len 64 --lr 1e-2 --log-every 0 --ema 0.9"
    "$DS_BIN/ds-pretrain" $A -m "$T/base" -o "$D/one" --steps 3 -q
    # PP 2 (1F1B: the embedding on both stages, for MTP), then PP 2 x DP 2, then PP 2 under DualPipe
    ema_over_layouts "$T/base" "$A" "2 --pp 2" "4 --pp 2" "2 --pp 2 --schedule dualpipe"
}
