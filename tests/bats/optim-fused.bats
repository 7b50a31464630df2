#!/usr/bin/env bats
# The optimizer in one pass (train/optim.h, DS_FUSED_OPTIM): the update zeroes the gradients it read, so a
# training step skips its zeroing pass. ds-pretrain with gradient accumulation (4 micro-batches a step), fp32
# and bf16 moments, one process and 2 ranks with ZeRO-1 (sharded: the separate zeroing stays) and without
# (replicated: folded): the same per-step losses and gradient norms, and the same weight bytes, as with
# DS_FUSED_OPTIM=0 (the separate passes). The GPU side (the bf16 working copy written in the same pass) is
# tests/gpu/test_adamw.cu and tests/gpu/test_tools.sh.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
    export ARGS="--peak-tflops 0.1 --threads 1 --config $DS_ROOT/share/configs/tiny.json --data $T/shards --batch 8
        --micro-batch 2 --seq-len 32 --seed 3 --log-every 0 --steps 5 --lr-schedule 0.002"
}

# same A B: the step records' losses and gradient norms as written (every digit), and the weights' bytes
same() {
    "$DS_PY" - "$1.jsonl" "$2.jsonl" <<'EOF'
import json, sys
def steps(p):
    return [(r["step"], r["loss"], r["loss_mtp"], r["grad_norm"]) for r in map(json.loads, open(p)) if "step" in r]
a, b = steps(sys.argv[1]), steps(sys.argv[2])
assert len(a) == 5 and a == b, (a, b)
print(f"# 5 steps, last loss {a[-1][1]} grad norm {a[-1][3]}")
EOF
    cmp "$1/model.safetensors" "$2/model.safetensors"
}

@test "one process, fp32 and bf16 moments: the fused update gives the separate passes' run bit for bit" {
    local d=$BATS_TEST_TMPDIR
    for mom in "" --bf16-moments; do
        "$DS_BIN/ds-pretrain" $ARGS $mom -o "$d/f$mom" --metrics "$d/f$mom.jsonl" -q
        DS_FUSED_OPTIM=0 "$DS_BIN/ds-pretrain" $ARGS $mom -o "$d/u$mom" --metrics "$d/u$mom.jsonl" -q
        same "$d/f$mom" "$d/u$mom" >&3
    done
}

@test "2 ranks, ZeRO-1 and --no-zero: fused and separate passes give the same bits" {
    local d=$BATS_TEST_TMPDIR
    for flag in "" --no-zero; do
        run mpi -np 2 "$DS_BIN/ds-pretrain" $ARGS $flag -o "$d/f$flag" --metrics "$d/f$flag.jsonl" -q
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        run mpi -np 2 -x DS_FUSED_OPTIM=0 "$DS_BIN/ds-pretrain" $ARGS $flag -o "$d/u$flag" --metrics "$d/u$flag.jsonl" -q
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        same "$d/f$flag" "$d/u$flag" >&3
    done
}
