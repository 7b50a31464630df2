#!/usr/bin/env bats
# Pipeline parallelism (--pp, train/pipe.h): 1F1B and DualPipe over 2 and 4 stages, alone and with data
# parallelism, follow the one-process run's loss curve; a run stopped under one layout resumes under
# another; layouts the schedule or the model cannot take are usage errors. The kill -9 test is in
# faults.bats.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() {
    mpi_env # also for the runs without mpirun: --pp starts MPI as a singleton (its leaks under SANITIZE)
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
    # tiny.json with 4 decoder layers (1 dense, 3 MoE) and its MTP module: up to 4 stages
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["num_hidden_layers"] = 4
json.dump(c, open(sys.argv[2], "w"))' "$DS_ROOT/share/configs/tiny.json" "$T/cfg4.json"
    export ARGS="--config $T/cfg4.json --data $T/shards --tokenizer $T/tok.json --steps 20 --batch 8 --micro-batch 1 \
--seq-len 16 --seed 3 --threads 1 --peak-tflops 0.1 --log-every 0"
    "$DS_BIN/ds-pretrain" $ARGS -o "$T/one" --metrics "$T/one.jsonl" -q
}

# the step records of $1 against the one-process run's: every step, loss, MTP loss, balance loss and
# gradient norm within 1e-6 relative; the checkpoint holds the one-process run's tensor names
same_curve() {
    "$DS_PY" - "$T/one.jsonl" "$1" "$T/one/model.safetensors" "$2/model.safetensors" <<'PY'
import json, sys
from safetensors.numpy import load_file
def steps(p):
    return [r for r in map(json.loads, open(p)) if "step" in r]
one, other = steps(sys.argv[1]), steps(sys.argv[2])
assert [r["step"] for r in other] == list(range(1, 21)), [r["step"] for r in other]
worst = 0.0
for a, b in zip(one, other):
    for k in ("loss", "loss_mtp", "loss_bal", "grad_norm"):
        e = abs(a[k] - b[k]) / max(abs(a[k]), 1e-12)
        assert e <= 1e-6, (a["step"], k, a[k], b[k])
        worst = max(worst, e)
w1, w2 = load_file(sys.argv[3]), load_file(sys.argv[4])
assert sorted(w1) == sorted(w2)
assert all(w1[k].shape == w2[k].shape for k in w1)
print("worst relative difference over 20 steps: %.1e" % worst)
PY
}

# the bytes each rank holds (log file $1) against the one-process parameter table (checkpoint $2, default
# $T/one): a rank holds its chunks' decoder layers (DualPipe: stages r and PP-1-r), the embedding with
# stage 0 (and, 1F1B/ZB1P, with the last stage for MTP), the final norm, head and MTP modules with the last
# stage; gradients as many;
# optimizer moments 8 bytes per value held (--no-zero), or under ZeRO-1 per value of the rank's slice of
# each parameter group (1F1B/ZB1P with MTP: the embedding over stages 0 and PP-1's ranks, the rest over
# the stage's DP ranks; DualPipe: everything over the ranks of stages s and PP-1-s); with --ep a rank
# holds the routed experts of its EP rank, their moments sharded over the ranks holding the same ones
mem_check() {
    "$DS_PY" - "${2:-$T/one}/model.safetensors" "$1" <<'PY'
import re, sys
from safetensors import safe_open
text = open(sys.argv[2]).read()
pp, dp = map(int, re.search(r"parallel: (\d+) pipeline stages x (\d+) data-parallel", text).groups())
kind, split = re.search(r"pipeline: (\S+), stage layers ([\d -]+) \(", text).groups()
first = [int(r.split("-")[0]) for r in split.split()]
L = int(split.split()[-1].split("-")[1]) + 1
first.append(L)
numel = {}
with safe_open(sys.argv[1], "np") as f:
    for k in f.keys():
        if not k.endswith("e_score_correction_bias"):
            numel[k] = f.get_slice(k).get_shape()
numel = {k: int(__import__("numpy").prod(v)) for k, v in numel.items()}
mtp = any(k.startswith("model.layers.%d." % L) for k in numel)
# --ep: the routed experts of EP rank (dp rank mod EP), laid out after every other tensor, a group of their own
ep = int((re.search(r"expert parallel: (\d+) ranks per group", text) or [0, 1])[1])
E = 1 + max([int(k.split(".")[5]) for k in numel if ".mlp.experts." in k] + [0])
def expert(name):
    return int(name.split(".")[5]) if ".mlp.experts." in name else -1
def held(name, stages, rank=0):
    e = expert(name)
    if e >= 0 and ep > 1 and e * ep // E != rank % dp % ep: return False
    last = pp - 1 in stages
    if name == "model.embed_tokens.weight": return 0 in stages or (last and mtp and kind != "DualPipe")
    if name in ("model.norm.weight", "lm_head.weight"): return last
    l = int(name.split(".")[2])
    return last if l >= L else any(first[s] <= l < first[s + 1] for s in stages)
def chunk(rank):
    s = rank // dp
    return {s, pp - 1 - s} if kind == "DualPipe" else {s}
want, want_opt = [], []
zero = "optimizer sharded (ZeRO-1)" in text
for rank in range(pp * dp):
    n = sum(n for k, n in numel.items() if held(k, chunk(rank), rank))
    want.append(4 * n)
    nx = sum(n for k, n in numel.items() if held(k, chunk(rank), rank) and expert(k) >= 0) if ep > 1 else 0
    # (values, holders) of each parameter group of this rank
    emb = numel["model.embed_tokens.weight"]
    if kind != "DualPipe" and mtp and pp > 1 and held("model.embed_tokens.weight", chunk(rank)):
        groups = [(emb, [r for r in range(pp * dp) if held("model.embed_tokens.weight", chunk(r))]), (n - nx - emb, None)]
    else:
        groups = [(n - nx, None)]
    if nx:
        groups.append((nx, [r for r in range(pp * dp) if chunk(r) == chunk(rank) and r % dp % ep == rank % dp % ep]))
    opt = 0
    for v, holders in groups:
        holders = holders or [r for r in range(pp * dp) if chunk(r) == chunk(rank)]
        P, i = len(holders), holders.index(rank)
        opt += 8 * ((v * (i + 1) // P - v * i // P) if zero else v)
    want_opt.append(opt)
got = [int(x) for x in re.search(r"memory  parameter bytes by rank:([ \d]+)", text).group(1).split()]
assert got == want, (got, want)
opt = [int(x) for x in re.search(r"memory  optimizer bytes by rank:([ \d]+)", text).group(1).split()]
assert opt == want_opt, (opt, want_opt)
assert max(got) < 4 * sum(numel.values()) or (kind == "DualPipe" and pp == 2)  # DualPipe: 2 of PP stages
print("parameter bytes by rank %s, optimizer %s (%s), of %d in one process" % (" ".join(map(str, got)),
      " ".join(map(str, opt)), "ZeRO-1" if zero else "replicated", 4 * sum(numel.values())))
PY
}

# mpirun -np $1 ds-pretrain ARGS ${@:2}: the curve matches, rank 0 alone writes, each rank holds its stages
pp_run() {
    local np=$1 out=$BATS_TEST_TMPDIR/out$RANDOM
    shift
    run mpi -np "$np" "$DS_BIN/ds-pretrain" $ARGS "$@" -o "$out" --metrics "$out.jsonl"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [ "$(printf '%s\n' "$output" | grep -c 'saved step 20')" -eq 1 ]
    [[ "$output" == *"pipeline: "*" steps, "*" ms per step, bubble by rank:"* ]]
    local log=$output
    run same_curve "$out.jsonl" "$out"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    echo "# np $np $*: $output" >&3
    printf '%s\n' "$log" >"$out.log"
    run mem_check "$out.log"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    echo "#   $output" >&3
}

@test "--pp 2 and --pp 4 with 1F1B and DualPipe follow the one-process loss curve for 20 steps" {
    pp_run 2 --pp 2
    pp_run 4 --pp 4 --schedule 1f1b
    pp_run 2 --pp 2 --schedule dualpipe
    pp_run 4 --pp 4 --schedule dualpipe
    pp_run 2 --pp 2 --schedule zb1p
}

@test "pipeline stages composed with 2 data-parallel replicas follow the one-process loss curve" {
    pp_run 4 --pp 2 --dp 2 --stages 0-1,2-3
    pp_run 4 --pp 2 --schedule dualpipe
    pp_run 8 --pp 4
}

@test "transfers delayed by DS_PP_DELAY_MS, overlapped or not (DS_PP_OVERLAP=0), keep the curve; no overlap pays each delay" {
    DS_PP_DELAY_MS=2 pp_run 2 --pp 2 --schedule dualpipe
    DS_PP_DELAY_MS=20 DS_PP_OVERLAP=0 pp_run 2 --pp 2
    # without overlap rank 0 stops for 20 ms after each of its 8 activations: no step is faster than 160 ms
    "$DS_PY" - "$(ls -t "$BATS_TEST_TMPDIR"/out*.jsonl | head -1)" <<'PY'
import json, sys
ms = [r["ms"] for r in map(json.loads, open(sys.argv[1])) if "step" in r]
assert min(ms) >= 160, ms
print("# no overlap, 20 ms per transfer: fastest step %.0f ms" % min(ms))
PY
}

@test "--micro-batches N drives training: --batch = N x --micro-batch x DP; inconsistent numbers are refused" {
    # ARGS without --batch: 4 micro-batches of 1 sequence on each of 2 replicas are the one-process run's 8 rows
    local a=${ARGS/--batch 8 /}
    [ "$a" != "$ARGS" ]
    ARGS=$a pp_run 4 --pp 2 --micro-batches 4
    local o=$BATS_TEST_TMPDIR/x
    # 2 micro-batches of 2 sequences on each of 2 replicas: steps of 8 rows; of 1 sequence: 4 rows
    for mb in 2 1; do
        rm -rf "$o" "$o.jsonl"
        run mpi -np 4 "$DS_BIN/ds-pretrain" ${a/--micro-batch 1 /} --micro-batch $mb --pp 2 --micro-batches 2 --steps 2 \
            -o "$o" --metrics "$o.jsonl"
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        [ "$(jq -s -c '[.[] | select(.step) | .batch]' "$o.jsonl")" = "[$((4 * mb)),$((4 * mb))]" ]
    done
    run --separate-stderr mpi -np 4 "$DS_BIN/ds-pretrain" $ARGS --pp 2 --micro-batches 8 -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: --micro-batches 8 x --micro-batch 1 x DP 2 = 16 sequences per step, but --batch is 8"* ]]
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" ${ARGS/--micro-batch 1 /} --pp 2 --micro-batches 3 -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: --batch 8 is not --micro-batches 3 x DP 1 micro-batches of whole sequences"* ]]
    # the schedule's needs are checked on the micro-batches per pipeline
    rm -rf "$o"
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" $a --pp 2 --micro-batches 2 --schedule dualpipe -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: 2 micro-batches per pipeline (batch 2 / micro-batch 1 / DP 1): DualPipe needs an even number of micro-batches, at least 2 x PP = 4"* ]]
}

@test "ZeRO-1 under --pp (each group's moments sharded over the ranks holding it) gives the --no-zero run's bits" {
    local d=$BATS_TEST_TMPDIR
    for layout in "4 --pp 2 --dp 2" "4 --pp 2 --schedule dualpipe"; do
        set -- $layout
        rm -rf "$d/z" "$d/r"
        for mode in z r; do
            run mpi -np "$1" "$DS_BIN/ds-pretrain" $ARGS "${@:2}" --steps 6 $([ $mode = r ] && echo --no-zero) \
                -o "$d/$mode" --metrics "$d/$mode.jsonl"
            [ "$status" -eq 0 ] || { echo "$output"; false; }
            printf '%s\n' "$output" >"$d/$mode.log"
            run mem_check "$d/$mode.log"
            [ "$status" -eq 0 ] || { echo "$output"; false; }
            echo "# $layout $mode: $output" >&3
        done
        grep -q "optimizer sharded (ZeRO-1)" "$d/z.log"
        cmp "$d/z/model.safetensors" "$d/r/model.safetensors"
        # the step records agree to the bit (only the timings differ)
        diff <(jq -c 'select(.step) | [.step, .loss, .loss_mtp, .loss_bal, .grad_norm]' "$d/z.jsonl") \
             <(jq -c 'select(.step) | [.step, .loss, .loss_mtp, .loss_bal, .grad_norm]' "$d/r.jsonl")
    done
}

@test "at lr 0 the checkpoint of --pp 2 (x DP 2) and --pp 4 DualPipe is the one-process run's, byte for byte" {
    local d=$BATS_TEST_TMPDIR
    "$DS_BIN/ds-pretrain" $ARGS --steps 3 --lr 0 -o "$d/one" -q
    for layout in "2 --pp 2" "4 --pp 2 --dp 2" "4 --pp 4 --schedule dualpipe"; do
        rm -rf "$d/pp"
        set -- $layout
        run mpi -np "$1" "$DS_BIN/ds-pretrain" $ARGS "${@:2}" --steps 3 --lr 0 -o "$d/pp" -q
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        cmp "$d/one/model.safetensors" "$d/pp/model.safetensors"
        [ -f "$d/pp/optimizer.index.json" ] # each rank wrote the moments of its tensors
    done
}

# the pids of the ds-pretrain ranks writing $1 (not mpirun, whose command line names them too: it would
# forward a second SIGTERM, which ends a rank at once, possibly in the middle of its save)
rank_pids() { pgrep -f "^$DS_BIN/ds-pretrain .*-o $1 " || true; }

# $1 $2: start a run writing $1 (the command and its arguments follow), SIGTERM its ranks once its metrics
# hold step $2, check it saved the step it stopped after (before 20); sets n to that step
stop_at() {
    local out=$1 at=$2 pids status=0 k
    shift 2
    "$@" -o "$out" --metrics "$out.jsonl" 2>"$out.err" &
    local job=$!
    for _ in $(seq 3000); do
        k=$(grep -c '"step"' "$out.jsonl" 2>/dev/null || true)
        [ "${k:-0}" -ge "$at" ] && break
        sleep 0.01
    done
    pids=$(rank_pids "$out")
    [ -n "$pids" ]
    kill -TERM $pids # every rank gets it; they agree to stop after the same step
    wait $job || status=$?
    cat "$out.err"
    [ "$status" -ne 0 ]
    grep -q "signal 15: saving at step" "$out.err"
    n=$(jq .step "$out/trainer_state.json")
    [ "$n" -ge "$at" ] && [ "$n" -lt 20 ]
}

# resume_one DIR CHECK ARGS...: ds-pretrain ARGS resumes DIR (stopped at step n) in one process to step 20,
# then CHECK (a command line) passes
resume_one() {
    local d=$1 check=$2
    shift 2
    run "$DS_BIN/ds-pretrain" "$@" -o "$d" --metrics "$d.jsonl" --resume "$d"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [[ "$output" == *"resuming at step $n of 20"* ]]
    run $check
    [ "$status" -eq 0 ] || { echo "$output"; false; }
}

@test "a run stopped under --pp 2 DualPipe resumes under --pp 4 1F1B, stopped again resumes in one process: the curve goes on" {
    local d=$BATS_TEST_TMPDIR/part n
    stop_at "$d" 5 mpi -np 2 "$DS_BIN/ds-pretrain" $ARGS --pp 2 --schedule dualpipe
    local n1=$n
    stop_at "$d" $((n1 + 4)) mpi -np 4 "$DS_BIN/ds-pretrain" $ARGS --pp 4 --resume "$d"
    grep -q "resuming at step $n1 of 20" "$d.err"
    resume_one "$d" "same_curve $d.jsonl $d" $ARGS
    echo "# stopped at step $n1 (PP 2 DualPipe), at $n (PP 4 1F1B), resumed in one process: $output" >&3
}

@test "layouts the world, the model or the schedule cannot take are one-line usage errors" {
    local o=$BATS_TEST_TMPDIR/x
    run --separate-stderr mpi -np 3 "$DS_BIN/ds-pretrain" $ARGS --pp 2 -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: --pp 2 does not divide the 3 processes started (world = PP x DP)"* ]]
    run --separate-stderr "$DS_BIN/ds-pretrain" $ARGS --pp 2 -o "$o"
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-pretrain: error: --pp 2 does not divide the 1 processes started (world = PP x DP)"* ]]
    run --separate-stderr mpi -np 4 "$DS_BIN/ds-pretrain" $ARGS --pp 4 --config "$DS_ROOT/share/configs/tiny.json" -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: --pp 4: more stages than the model's 2 decoder layers"* ]]
    run --separate-stderr mpi -np 3 "$DS_BIN/ds-pretrain" $ARGS --pp 3 --schedule dualpipe -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: DualPipe needs an even number of stages: --pp 3"* ]]
    run --separate-stderr mpi -np 4 "$DS_BIN/ds-pretrain" $ARGS --pp 2 --schedule dualpipe --batch 4 -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: 2 micro-batches per pipeline (batch 4 / micro-batch 1 / DP 2): DualPipe needs an even number of micro-batches, at least 2 x PP = 4"* ]]
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" $ARGS --pp 2 --stages 0-2,2-3 -o "$o"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: --stages 0-2,2-3: stage 1 is layers 2-3; stages must cover layers 0-3 in order"* ]]
    run --separate-stderr "$DS_BIN/ds-pretrain" $ARGS --schedule gpipe -o "$o"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"gpipe"* ]]
}

# ---- expert parallelism inside the stages: --pp 2 --ep 2 on 4 ranks (DP 2 per stage, one EP group each) ----
# free4.json: cfg4.json with unlimited routing (n_group 1), so any EP group may span any nodes. V adds
# validation with 3 micro-batches: one replica runs an empty one in the last round.
ep_setup() {
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_group"] = 1; c["topk_group"] = 1
json.dump(c, open(sys.argv[2], "w"))' "$T/cfg4.json" "$T/free4.json"
    EARGS="$ARGS --config $T/free4.json --val-frac 0.1 --val-every 10 --val-batches 3"
    [ -f "$T/eone.jsonl" ] || "$DS_BIN/ds-pretrain" $EARGS -o "$T/eone" --metrics "$T/eone.jsonl" -q
}

# ep_curve REF RUN [EPREF]: RUN's step records against REF's (one process): loss, MTP, balance loss, grad
# norm and validation loss within 1e-6 relative, the same expert loads (the balance records, exact),
# identical expert biases on every rank (the steps run with --ep), the model files' tensors; with EPREF
# (an --ep run without stages), every step's "ep" traffic record equal to its.
ep_curve() {
    "$DS_PY" - "$@" <<'PY'
import json, sys
from safetensors.numpy import load_file
def steps(p):
    return [r for r in map(json.loads, open(p + ".jsonl")) if "step" in r]
ref, got = steps(sys.argv[1]), steps(sys.argv[2])
assert [r["step"] for r in got] == list(range(1, 21)), [r["step"] for r in got]
worst = 0.0
for a, b in zip(ref, got):
    for k in ("loss", "loss_mtp", "loss_bal", "grad_norm", "val_loss"):
        if k not in a and k not in b:
            continue
        e = abs(a[k] - b[k]) / max(abs(a[k]), 1e-12)
        assert e <= 1e-6, (a["step"], k, a[k], b[k])
        worst = max(worst, e)
    assert a["balance"] == b["balance"], (a["step"], "other experts picked", a["balance"], b["balance"])
    assert b.get("ep", {"bias_spread": 0})["bias_spread"] == 0, (b["step"], "expert biases differ between ranks")
assert sum("val_loss" in r for r in got) == 2
w1, w2 = load_file(sys.argv[1] + "/model.safetensors"), load_file(sys.argv[2] + "/model.safetensors")
assert sorted(w1) == sorted(w2) and all(w1[k].shape == w2[k].shape for k in w1)
note = ""
if len(sys.argv) > 3:
    ep = steps(sys.argv[3])
    assert [a["ep"] for a in ep] == [b["ep"] for b in got], "traffic differs from the run without stages"
    note = ", traffic of --ep alone: %s" % json.dumps(got[-1]["ep"])
print("worst relative difference over 20 steps: %.1e%s" % (worst, note))
PY
}

# ep_run NAME ARGS...: mpirun -np 4 ds-pretrain EARGS ARGS into $BATS_TEST_TMPDIR/NAME
ep_run() {
    local out=$BATS_TEST_TMPDIR/$1
    shift
    run mpi -np 4 "$DS_BIN/ds-pretrain" $EARGS "$@" -o "$out" --metrics "$out.jsonl"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [ "$(printf '%s\n' "$output" | grep -c 'saved step 20')" -eq 1 ]
    printf '%s\n' "$output" >"$out.log"
}

@test "--pp 2 --ep 2 (4 ranks, DP 2 per stage): 1F1B and DualPipe, ZeRO-1 on and off, follow the one-process curve" {
    ep_setup
    local d=$BATS_TEST_TMPDIR
    # emulated nodes of one rank: the EP groups cross nodes; the traffic must be that of --ep 2 alone, whose
    # micro-batch k also runs on EP rank k mod 2
    ep_run ep --ep 2 --ranks-per-node 1
    for run in "1f1b --no-zero" "1f1b" "dualpipe --no-zero" "dualpipe"; do
        set -- $run
        ep_run pp$1$2 --pp 2 --ep 2 --schedule $1 $2 --ranks-per-node 1
        [[ "$output" == *"expert parallel: 2 ranks per group, 1 groups per pipeline stage, 2 node(s) per group"* ]]
        run ep_curve "$T/eone" "$d/pp$1$2" "$d/ep"
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        echo "# --pp 2 --ep 2 --schedule $run: $output" >&3
        run mem_check "$d/pp$1$2.log" "$T/eone"
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        echo "#   $output" >&3
    done
}

@test "a run stopped under --pp 2 --ep 2 DualPipe resumes on one process, continuing the curve" {
    ep_setup
    local d=$BATS_TEST_TMPDIR/part n
    stop_at "$d" 5 mpi -np 4 "$DS_BIN/ds-pretrain" $EARGS --pp 2 --ep 2 --schedule dualpipe
    resume_one "$d" "ep_curve $T/eone $d" $EARGS
    echo "# stopped at step $n, resumed on one process: $output" >&3
}

@test "--pp with --ep: micro-batches that do not divide over the replicas are refused" {
    ep_setup
    run --separate-stderr mpi -np 4 "$DS_BIN/ds-pretrain" $EARGS --pp 2 --ep 2 --batch 9 -o "$BATS_TEST_TMPDIR/x"
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-pretrain: error: --ep 2 with --pp 2: 9 micro-batches per step (batch 9 / micro-batch 1) do not divide over the 2 data-parallel replicas"* ]]
}
