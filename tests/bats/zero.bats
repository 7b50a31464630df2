#!/usr/bin/env bats
# ZeRO-1 (train/zero.h, train/optstate.h) under mpirun: on 1, 2 and 4 ranks, with and without --no-zero,
# ds-pretrain follows the one-process loss curve of tiny.json (MoE + MTP) for 20 steps in fp32; ZeRO-1
# and the replicated optimizer give the same bits; the optimizer bytes per rank are the layout's
# formula; the sharded optimizer state resumes on another number of ranks (4 -> 2 -> 1 -> 4) and its
# pieces reassemble into the one-file form. The kill -9 of a rank under ZeRO-1 is in faults.bats.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
    export ARGS="--peak-tflops 0.1 --threads 1 --config $DS_ROOT/share/configs/tiny.json --data $T/shards --batch 8
        --micro-batch 1 --seq-len 32 --seed 3 --log-every 0"
    # constant schedules: a run cut into pieces with other --steps keeps the same rates
    export CONST="--lr-schedule 0.002 --gamma 0.001 --lambda 0.3"
}

# compare REF RUN...: each run's losses within 1e-6 and gradient norms within 1e-4 of REF's (relative: the
# norm of a gradient that sums in another order moves ~1e3 times more than the loss; 2.4e-5 was seen in
# the ASan build, where no FMA contraction changes every rounding; a lost or doubled shard moves it by tens of percent),
# step for step, and its model.safetensors in REF's layout (names, dtypes, shapes)
compare() {
    "$DS_PY" - "$@" <<'EOF'
import json, sys
from safetensors import safe_open
def steps(p):
    return [r for r in map(json.loads, open(p + ".jsonl")) if "step" in r]
def layout(p):
    with safe_open(p + "/model.safetensors", "np") as f:
        return [(k, f.get_slice(k).get_dtype(), f.get_slice(k).get_shape()) for k in f.keys()]
ref = steps(sys.argv[1])
assert [r["step"] for r in ref] == list(range(1, 21))
for run in sys.argv[2:]:
    got = steps(run)
    assert [r["step"] for r in got] == list(range(1, 21)), run
    dl = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(ref, got))
    dn = max(abs(a["grad_norm"] - b["grad_norm"]) / a["grad_norm"] for a, b in zip(ref, got))
    print(f"{run.rsplit('/', 1)[1]}: loss within {dl:.2g}, grad norm within {dn:.2g}")
    assert dl <= 1e-6 and dn <= 1e-4, run
    assert layout(run) == layout(sys.argv[1]), run
EOF
}

@test "1, 2, 4 ranks, ZeRO-1 and --no-zero: the one-process curve, the same bits either way, bytes per rank as predicted" {
    local d=$BATS_TEST_TMPDIR
    "$DS_BIN/ds-pretrain" $ARGS --steps 20 -o "$d/one" --metrics "$d/one.jsonl" -q
    for np in 1 2 4; do
        for mode in zero no-zero; do
            local flag=""
            [ $mode = no-zero ] && flag=--no-zero
            run mpi -np $np "$DS_BIN/ds-pretrain" $ARGS --steps 20 $flag -o "$d/$mode$np" --metrics "$d/$mode$np.jsonl"
            [ "$status" -eq 0 ] || { echo "$output"; false; }
            printf '%s\n' "$output" | grep '^memory ' >"$d/$mode$np.mem"
            echo "# $np rank(s), $mode: $(grep -h 'optimizer bytes\|peak RSS' "$d/$mode$np.mem" | tr '\n' ';')" >&3
        done
        # the same sums in the same order: ZeRO-1 changes where the moments live, not a bit of the run
        cmp "$d/zero$np/model.safetensors" "$d/no-zero$np/model.safetensors"
        diff <(numbers "$d/zero$np.jsonl") <(numbers "$d/no-zero$np.jsonl")
    done
    compare "$d/one" "$d/zero1" "$d/zero2" "$d/no-zero2" "$d/zero4" "$d/no-zero4"
    # the optimizer's files: one file when one rank holds it all, else an index and a shard per rank
    [ -f "$d/no-zero4/optimizer.safetensors" ] && [ ! -e "$d/no-zero4/optimizer.index.json" ]
    [ -f "$d/zero4/optimizer.index.json" ] && [ ! -e "$d/zero4/optimizer.safetensors" ]
    [ "$(ls "$d/zero4" | grep -c '^optimizer-0000[0-3]-of-00004\.safetensors$')" -eq 4 ]
    # moments: 8 bytes per value; rank r of P holds values [N*r/P, N*(r+1)/P) under ZeRO-1, all N without
    "$DS_PY" - "$d" <<'EOF'
import re, sys
d = sys.argv[1]
for np_ in (1, 2, 4):
    for mode in ("zero", "no-zero"):
        text = open(f"{d}/{mode}{np_}.mem").read()
        params = int(re.search(r"parameters (\d+) B, gradients (\d+) B", text).group(1))
        n = params // 4
        got = [int(x) for x in re.search(r"optimizer bytes by rank:([ \d]+)", text).group(1).split()]
        sharded = mode == "zero" and np_ > 1
        want = [8 * (n * (r + 1) // np_ - n * r // np_) if sharded else 8 * n for r in range(np_)]
        assert got == want, (mode, np_, got, want)
        assert ("sharded (ZeRO-1)" in text) == sharded, text
        rss = re.search(r"peak RSS by rank \(MiB\):([ \d]+)", text).group(1).split()
        assert len(rss) == np_ and all(int(x) > 0 for x in rss), text
EOF
}

@test "resume 4 -> 2 -> 1 -> 4 ranks continues the one-process curve; shards reassemble into the one-file state" {
    local d=$BATS_TEST_TMPDIR
    "$DS_BIN/ds-pretrain" $ARGS $CONST --steps 20 -o "$d/one" --metrics "$d/one.jsonl" -q
    mpi -np 4 "$DS_BIN/ds-pretrain" $ARGS $CONST --steps 5 -o "$d/chain" --metrics "$d/chain.jsonl" -q
    [ -f "$d/chain/optimizer.index.json" ]
    cp -r "$d/chain" "$d/at5"
    mpi -np 2 "$DS_BIN/ds-pretrain" $ARGS $CONST --steps 10 --resume "$d/chain" -o "$d/chain" --metrics "$d/chain.jsonl" -q
    [ "$(ls "$d/chain" | grep -c '^optimizer-0000[01]-of-00002\.safetensors$')" -eq 2 ]
    "$DS_BIN/ds-pretrain" $ARGS $CONST --steps 15 --resume "$d/chain" -o "$d/chain" --metrics "$d/chain.jsonl" -q
    [ -f "$d/chain/optimizer.safetensors" ] && [ ! -e "$d/chain/optimizer.index.json" ]
    mpi -np 4 "$DS_BIN/ds-pretrain" $ARGS $CONST --steps 20 --resume "$d/chain" -o "$d/chain" --metrics "$d/chain.jsonl" -q
    compare "$d/one" "$d/chain"
    # one process resumes the 4-rank state of step 5 and saves it at once as the one file: every
    # moment of every tensor, reassembled from the index's pieces, has the same bits
    "$DS_BIN/ds-pretrain" $ARGS $CONST --steps 5 --resume "$d/at5" -o "$d/at5one" -q
    "$DS_PY" - "$d/at5" "$d/at5one" <<'EOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file
shards, one = sys.argv[1], load_file(sys.argv[2] + "/optimizer.safetensors")
index = json.load(open(shards + "/optimizer.index.json"))
assert index["format"] == "ds-optimizer-shards" and index["version"] == 1
files = [load_file(f"{shards}/{f}") for f in index["files"]]
names = {k.rsplit(".", 1)[0] for k in one}
assert names == set(index["tensors"]), names ^ set(index["tensors"])
for name, e in index["tensors"].items():
    for m in ("exp_avg", "exp_avg_sq"):
        flat = np.concatenate([files[f][f"{name}.{m}"] for f, s, t in e["pieces"]])
        assert [(s, t) for f, s, t in e["pieces"]] == list(zip([0] + [t for _, _, t in e["pieces"][:-1]], [t for _, _, t in e["pieces"]]))
        assert flat.size == e["numel"] and np.array_equal(flat, one[f"{name}.{m}"].reshape(-1)), (name, m)
print(len(index["tensors"]), "tensors,", sum(len(e["pieces"]) for e in index["tensors"].values()), "pieces")
EOF
}

@test "an index that misses a piece is refused on resume, naming the tensor" {
    local d=$BATS_TEST_TMPDIR
    mpi -np 2 "$DS_BIN/ds-pretrain" $ARGS --steps 1 -o "$d/ck" -q
    "$DS_PY" - "$d/ck/optimizer.index.json" <<'EOF'
import json, sys
p = sys.argv[1]
index = json.load(open(p))
index["tensors"]["lm_head.weight"]["pieces"] = []
json.dump(index, open(p, "w"))
EOF
    run --separate-stderr "$DS_BIN/ds-pretrain" $ARGS --steps 2 --resume "$d/ck" -o "$d/ck"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"ds-pretrain: error: optimizer state: the pieces of lm_head.weight give 0 of values [0, 32768): $d/ck"* ]] ||
        { echo "$stderr"; false; }
}
