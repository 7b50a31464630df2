#!/usr/bin/env bats
# Expert parallelism (issue 18): the model holding only its EP rank's experts, exchanging tokens over MPI,
# against the one-process model (tests/unit/test_moe_ep.c), on 2 and 4 ranks with --ep 2 and 4; then the
# training tools with --ep against their one-process runs: loss curves, expert loads, model files, bytes
# per rank, node-limited routing's metrics, resume on another --ep, refusals.

load mpi_helpers
load train_helpers

setup() {
    mpi_env
    DRIVER=
    for u in $DS_UNITS; do case $u in */test_moe_ep) DRIVER=$DS_ROOT/$u ;; esac; done
    [ -x "$DRIVER" ] || skip "test_moe_ep not built"
}

# np ep ranks-per-node [slots: 1 = forwards stored in activation slots, backwards in reverse, W deferred]
ep_model() {
    run env DS_TEST_EP=$2 DS_TEST_RPN=$3 DS_TEST_SLOTS=${4:-0} mpirun --oversubscribe -np $1 "$DRIVER"
    echo "np=$1 ep=$2 rpn=$3 slots=${4:-0}: $output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* ]]
    [[ "$output" == *"gradients within"* ]]
}

@test "EP model: log-probs, expert loads and gradients of the one-process model (2 ranks, ep 2)" {
    ep_model 2 2 1
}

@test "EP model: forwards kept in activation slots (a pipeline stage's), backwards in reverse with W deferred" {
    ep_model 2 2 1 1
    [[ "$output" == *"3 activation slots with expert parallelism: ok"* ]]
    ep_model 4 2 2 1
}

@test "EP model: 4 ranks, ep 4 on 4 nodes (at most topk_group nodes per token), and ep 2 beside dp" {
    ep_model 4 4 1
    [[ "$output" == *"at most 2 nodes per token"* ]]
    ep_model 4 2 2
}

# ---- the training tools with --ep (ds-pretrain, ds-sft, ds-extend-ctx) ----
# free.json: tiny.json with unlimited routing (n_group 1), for any --ep; tiny.json itself (n_group 4,
# topk_group 2) needs an EP group spanning 4 nodes.
setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_group"] = 1; c["topk_group"] = 1
json.dump(c, open(sys.argv[2], "w"), indent=1)' "$DS_ROOT/share/configs/tiny.json" "$T/free.json"
}

pre() { # ARGS: ds-pretrain on the tiny data, 8 rows of 32 tokens per step in micro-batches of 1
    "$@" --peak-tflops 0.1 --threads 1 --data "$T/shards" --batch 8 --micro-batch 1 --seq-len 32 --seed 3 \
        --log-every 0 --lr-schedule 0.002 --gamma 0.001 --lambda 0.3
}

# same_curve REF RUN...: losses within 1e-6 (relative) step for step, the same expert loads (the balance
# records: min/max load and max violation per MoE layer, exact), identical expert biases on every rank,
# at most topk_group nodes per token, and model.safetensors in REF's layout with values close to REF's
same_curve() {
    "$DS_PY" - "$@" <<'PY'
import json, sys
import numpy as np
from safetensors import safe_open
def steps(p):
    return [r for r in map(json.loads, open(p + ".jsonl")) if "step" in r]
def tensors(p):
    with safe_open(p + "/model.safetensors", "np") as f:
        return f.metadata(), [(k, f.get_tensor(k)) for k in f.keys()]
ref = steps(sys.argv[1])
meta, ref_t = tensors(sys.argv[1])
for run in sys.argv[2:]:
    got = steps(run)
    assert [r["step"] for r in got] == [r["step"] for r in ref], run
    dl = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(ref, got))
    assert dl <= 1e-6, (run, dl)
    dv = [abs(a["val_loss"] - b["val_loss"]) / a["val_loss"] for a, b in zip(ref, got) if "val_loss" in a]
    assert all("val_loss" in b for a, b in zip(ref, got) if "val_loss" in a) and max(dv + [0]) <= 1e-6, (run, dv)
    assert all(a["balance"] == b["balance"] for a, b in zip(ref, got)), run + ": other experts picked"
    ep = [r["ep"] for r in got if "ep" in r]
    assert ep and all(e["bias_spread"] == 0 for e in ep), run + ": expert biases differ between ranks"
    m2, got_t = tensors(run)
    assert m2 == meta and [(k, v.dtype, v.shape) for k, v in got_t] == [(k, v.dtype, v.shape) for k, v in ref_t], run
    dw = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) for (_, a), (_, b) in zip(ref_t, got_t))
    assert dw <= 1e-3, (run, dw)
    print(f"{run.rsplit('/', 1)[1]}: loss within {dl:.2g}, weights within {dw:.2g}, nodes/token max "
          f"{max(e['nodes_per_token_max'] for e in ep)}, dispatch {ep[-1]['dispatch_bytes_per_rank']:.0f} B/rank")
PY
}

@test "ds-pretrain --ep 2 and 4 on 2 and 4 ranks: the one-process curve, the same experts, bytes per rank as predicted" {
    local d=$BATS_TEST_TMPDIR
    # validation: 3 micro-batches, so on 2 and 4 ranks some run an empty one
    local V="--val-frac 0.1 --val-every 10 --val-batches 3"
    pre "$DS_BIN/ds-pretrain" --config "$T/free.json" --steps 20 -o "$d/one" --metrics "$d/one.jsonl" -q $V
    # parameters per rank: replicated + n_routed/EP of the routed experts (3 matrices of 32 x 64 each, in the
    # MoE layer and the MTP module's): 4 bytes each for parameters and gradients
    local total=$("$DS_PY" -c '
import json; from safetensors import safe_open
with safe_open("'"$d/one"'/model.safetensors", "np") as f:
    print(sum(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape()[1] if len(f.get_slice(k).get_shape()) > 1 else 1)
              for k in f.keys() if "e_score_correction_bias" not in k))')
    local experts=$((2 * 8 * 3 * 32 * 64))
    # ZeRO-1 (the default) shards each group's moments over its ranks: the replicated tensors over the DP
    # ranks, the experts over the ranks holding the same ones (np / ep); --no-zero keeps them whole
    for run in "2 2 zero" "4 2 zero" "4 4 zero" "4 2 no-zero"; do
        set -- $run
        local flag="" name=n$1ep$2$3
        [ $3 = no-zero ] && flag=--no-zero
        run mpi -np $1 "$DS_BIN/ds-pretrain" --config "$T/free.json" --steps 20 --ep $2 $flag -o "$d/$name" \
            --metrics "$d/$name.jsonl" --peak-tflops 0.1 --threads 1 --data "$T/shards" --batch 8 --micro-batch 1 \
            --seq-len 32 --seed 3 --log-every 0 --lr-schedule 0.002 --gamma 0.001 --lambda 0.3 $V
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        local want=$(((total - experts + experts / $2) * 4)) opt=$(((total - experts) / $1 * 8 + experts / $2 / ($1 / $2) * 8))
        [ $3 = no-zero ] && opt=$((want * 2))
        echo "# $1 ranks --ep $2 $3: $(printf '%s\n' "$output" | grep '^memory\|^expert parallel: [0-9]' | tr '\n' ';')" >&3
        [[ "$output" == *"memory  per rank: parameters $want B, gradients $want B"* ]] || { echo "want $want"; echo "$output"; false; }
        [[ "$output" == *"optimizer bytes by rank:$(printf " $opt%.0s" $(seq $1))"* ]] || { echo "want $opt"; echo "$output"; false; }
        [[ "$output" == *"peak RSS by rank (MiB):"* ]]
        [[ "$output" == *"expert parallel: 1.000 nodes per token (max 1)"* ]]
    done
    same_curve "$d/one" "$d/n2ep2zero" "$d/n4ep2zero" "$d/n4ep4zero" "$d/n4ep2no-zero"
}

@test "the gathered model files are the one-process run's bit for bit (lr 0: the initial weights, the biases' updates)" {
    local d=$BATS_TEST_TMPDIR
    local A="--config $T/free.json --steps 2 --peak-tflops 0.1 --threads 1 --data $T/shards --batch 8 --micro-batch 1
        --seq-len 32 --seed 3 --log-every 0 --lr-schedule 0 --gamma 0.001 -q"
    "$DS_BIN/ds-pretrain" $A -o "$d/one"
    run mpi -np 4 "$DS_BIN/ds-pretrain" $A --ep 4 -o "$d/ep"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    cmp "$d/one/model.safetensors" "$d/ep/model.safetensors"
}

@test "node-limited routing: tiny.json (4 groups, top 2) on 4 emulated nodes: at most 2 nodes per token, cross-node bytes" {
    local d=$BATS_TEST_TMPDIR
    pre "$DS_BIN/ds-pretrain" --config "$DS_ROOT/share/configs/tiny.json" --steps 20 -o "$d/one" --metrics "$d/one.jsonl" -q
    run mpi -np 4 "$DS_BIN/ds-pretrain" --config "$DS_ROOT/share/configs/tiny.json" --steps 20 --ep 4 --ranks-per-node 1 \
        -o "$d/nl" --metrics "$d/nl.jsonl" --peak-tflops 0.1 --threads 1 --data "$T/shards" --batch 8 --micro-batch 1 \
        --seq-len 32 --seed 3 --log-every 0 --lr-schedule 0.002 --gamma 0.001 --lambda 0.3
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [[ "$output" == *"expert parallel: 4 ranks per group, 1 groups, 4 node(s) per group (1 ranks per node)"* ]]
    same_curve "$d/one" "$d/nl"
    "$DS_PY" - "$d/nl.jsonl" <<'PY'
import json, sys
ep = [r["ep"] for r in map(json.loads, open(sys.argv[1])) if "ep" in r]
assert len(ep) == 20
assert all(1 <= e["nodes_per_token_mean"] <= e["nodes_per_token_max"] <= 2 for e in ep), ep
assert any(e["nodes_per_token_max"] == 2 for e in ep)
# every rank is its own node: each byte to another rank crosses nodes
assert all(e["cross_node_bytes_per_rank"] == e["dispatch_bytes_per_rank"] + e["combine_bytes_per_rank"] > 0 for e in ep)
PY
    [[ "$output" == *"expert parallel: 1."*" nodes per token (max 2), per rank and step: dispatch "* ]]
}

@test "--two-hop: 2 emulated nodes of 2 ranks, the same losses and model bits as one hop, fewer bytes across nodes" {
    local d=$BATS_TEST_TMPDIR
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_group"] = 2; c["topk_group"] = 1
json.dump(c, open(sys.argv[2], "w"))' "$DS_ROOT/share/configs/tiny.json" "$d/two.json"
    for hop in one two; do
        local extra=
        [ $hop = two ] && extra=--two-hop
        run mpi -np 4 "$DS_BIN/ds-pretrain" --config "$d/two.json" --steps 6 --ep 4 --ranks-per-node 2 $extra -o "$d/$hop" \
            --metrics "$d/$hop.jsonl" --peak-tflops 0.1 --threads 1 --data "$T/shards" --batch 8 --micro-batch 1 \
            --seq-len 32 --seed 3 --log-every 0 --lr-schedule 0.002 --gamma 0.001 --lambda 0.3 -q
        [ "$status" -eq 0 ] || { echo "$output"; false; }
    done
    cmp "$d/one/model.safetensors" "$d/two/model.safetensors"
    "$DS_PY" - "$d/one.jsonl" "$d/two.jsonl" <<'PY'
import json, sys
one, two = ([r for r in map(json.loads, open(f)) if "step" in r and "ep" in r] for f in sys.argv[1:])
assert len(one) == len(two) == 6
for a, b in zip(one, two):
    assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    assert a["ep"]["nodes_per_token_max"] == b["ep"]["nodes_per_token_max"] == 1
    # one node per token: one hop sends a row to each rank of that node holding an expert, two hops one row
    assert 0 < b["ep"]["cross_node_bytes_per_rank"] < a["ep"]["cross_node_bytes_per_rank"], (a["ep"], b["ep"])
print("cross-node bytes per rank, one hop vs two:", sum(r["ep"]["cross_node_bytes_per_rank"] for r in one),
      sum(r["ep"]["cross_node_bytes_per_rank"] for r in two))
PY
    run "$DS_BIN/ds-pretrain" --config "$d/two.json" --two-hop --threads 1 --data "$T/shards" --steps 1 -o "$d/x"
    [ "$status" -eq 2 ]
    [ "${lines[0]}" = "ds-pretrain: error: --two-hop exchanges tokens between expert-parallel ranks: it needs --ep above 1" ]
}

@test "resume on another --ep (2 ranks --ep 2, then 4 ranks --ep 4) continues the one-process curve" {
    local d=$BATS_TEST_TMPDIR
    pre "$DS_BIN/ds-pretrain" --config "$T/free.json" --steps 20 -o "$d/one" --metrics "$d/one.jsonl" -q
    local A="--config $T/free.json --peak-tflops 0.1 --threads 1 --data $T/shards --batch 8 --micro-batch 1 --seq-len 32
        --seed 3 --log-every 0 --lr-schedule 0.002 --gamma 0.001 --lambda 0.3 -o $d/r --metrics $d/r.jsonl -q"
    mpi -np 2 "$DS_BIN/ds-pretrain" $A --steps 10 --ep 2
    run mpi -np 4 "$DS_BIN/ds-pretrain" $A --steps 20 --ep 4 --resume "$d/r"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    same_curve "$d/one" "$d/r"
    mpi -np 2 "$DS_BIN/ds-pretrain" $A --steps 22 --ep 2 --resume "$d/r"   # and back to fewer ranks
    [ "$(grep -c '"step"' "$d/r.jsonl")" -eq 22 ]
}

@test "wrong layouts are refused before any work, -o untouched, with one line naming the numbers" {
    local d=$BATS_TEST_TMPDIR
    refused() { # EXPECTED NP ARGS...
        local want=$1 np=$2
        shift 2
        run mpi -np $np "$DS_BIN/ds-pretrain" --threads 1 --data "$T/shards" --steps 1 --seq-len 32 -o "$d/x" -q "$@"
        echo "$output"
        [ "$status" -ne 0 ]
        [ "$(printf '%s\n' "$output" | grep -c 'ds-pretrain: error: ')" -eq 1 ]
        [[ "$output" == *"ds-pretrain: error: $want"* ]]
        [ ! -e "$d/x" ]
    }
    refused "--ep 3 does not divide the 4 data-parallel ranks (--dp 4)" 4 --config "$T/free.json" --ep 3
    refused "the config's n_group 4 must equal the 2 node(s) an expert-parallel group spans (--ep 2, 1 ranks per node)" \
        2 --config "$DS_ROOT/share/configs/tiny.json" --ep 2 --ranks-per-node 1
    refused "the config's n_group 4 must equal the 1 node(s)" 4 --config "$DS_ROOT/share/configs/tiny.json" --ep 4
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_routed_experts"] = 6
json.dump(c, open(sys.argv[2], "w"))' "$T/free.json" "$d/six.json"
    refused "--ep 4 does not divide the config's 6 routed experts" 4 --config "$d/six.json" --ep 4
    refused "--ranks-per-node 3 does not divide the 4 ranks" 4 --config "$T/free.json" --ep 2 --ranks-per-node 3
    run "$DS_BIN/ds-pretrain" --threads 1 --data "$T/shards" --steps 1 --config "$T/free.json" --ep 2 -o "$d/x"
    [ "$status" -eq 2 ]
    [[ "$output" == "ds-pretrain: error: --ep 2 does not divide the 1 data-parallel ranks (--dp 1)"* ]]
    # The layout is judged before -o is made: under a plain file -o cannot be made, and the refusal names the
    # layout all the same (before, rank 0 made -o first, and a rank killed by mpirun's abort left it behind).
    : >"$d/plain"
    run mpi -np 2 "$DS_BIN/ds-pretrain" --threads 1 --data "$T/shards" --steps 1 --seq-len 32 -q \
        --config "$DS_ROOT/share/configs/tiny.json" --ep 2 --ranks-per-node 1 -o "$d/plain/x"
    [ "$status" -eq 2 ]
    [[ "$output" == *"ds-pretrain: error: the config's n_group 4 must equal the 2 node(s)"* ]]
}

@test "ds-sft and ds-extend-ctx with --ep 2 follow their one-process runs" {
    local d=$BATS_TEST_TMPDIR
    pre "$DS_BIN/ds-pretrain" --config "$T/free.json" --tokenizer "$T/tok.json" --steps 2 -o "$d/base" -q
    awk -f "$DS_ROOT/share/demo/tasks.awk" -v kind=sft -v n=16 -v seed=1 >"$d/chat.jsonl"
    sft() { "$@" --threads 1 --seed 1 -m "$d/base" --data "$d/chat.jsonl" --steps 3 --batch 4 --micro-batch 1 --log-every 0 -q; }
    ext() { "$@" --threads 1 --seed 1 -m "$d/base" --data "$T/shards" --factor 2 --original-len 32 --seq-len 64 --steps 3 \
        --batch 4 --micro-batch 1 --log-every 0 -q; }
    sft "$DS_BIN/ds-sft" -o "$d/sft1" --metrics "$d/sft1.jsonl"
    sft mpi -np 2 "$DS_BIN/ds-sft" --ep 2 -o "$d/sft2" --metrics "$d/sft2.jsonl"
    ext "$DS_BIN/ds-extend-ctx" -o "$d/ext1" --metrics "$d/ext1.jsonl"
    ext mpi -np 2 "$DS_BIN/ds-extend-ctx" --ep 2 -o "$d/ext2" --metrics "$d/ext2.jsonl"
    same_curve "$d/sft1" "$d/sft2"
    same_curve "$d/ext1" "$d/ext2"
}
