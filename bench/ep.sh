#!/bin/bash
# Expert parallelism (issue 18), in one run:
#  1. the exchange: ds-bench-a2a on 4 ranks, our one-hop and two-hop dispatch/combine next to the one-hop
#     exchange through MPI_Alltoallv (the reference), with the bytes each sends across and inside nodes and
#     its time; node-limited routing M = 1, 2, 4 with --ranks-per-node 1 (4 nodes of one rank: two hops
#     are one hop there), then 2 nodes of 2 ranks (M = 1, 2), where the two hops differ;
#  2. training: ds-pretrain --ep on 1, 2 and 4 ranks (EP = ranks, one rank per node, n_group = nodes,
#     topk_group = M) with a MoE config of 16 routed experts: tokens/s and memory per rank, against the
#     one-process run. Runs only when ds-pretrain trains with --ep (else says why and stops after 1).
#
# usage: bench/ep.sh [--quick] [--a2a | --train]   (--quick: smaller sizes, for a smoke test; --a2a or
#   --train: only that part)
# Environment: DS_BIN (default bin/), DS_PY (a python3 for the tables; default the reference venv's).
# On one host every "node" is emulated: the bytes are exact, the times are shared-memory times.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DS_BIN:-$PWD/bin}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
[ -x "$PY" ] || PY=python3
QUICK=0 A2A_PART=1 TRAIN_PART=1
for a in "$@"; do
    case $a in
    --quick) QUICK=1 ;;
    --a2a) TRAIN_PART=0 ;;
    --train) A2A_PART=0 ;;
    *) echo "usage: $0 [--quick] [--a2a | --train]" >&2; exit 2 ;;
    esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
NP=4
if [ $QUICK = 1 ]; then
    A2A="--tokens 128 --hidden 256 --topk 8 --experts 64 -d bf16 -n 2 -w 1" STEPS=2 T=32
else
    A2A="--tokens 1024 --hidden 2048 --topk 8 --experts 64 -d bf16 -n 10 -w 2" STEPS=5 T=64
fi
echo "# $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo ?), $(nproc) cores," \
    "load $(cut -d' ' -f1-3 /proc/loadavg), $NP ranks oversubscribed (mpirun --oversubscribe)"

# ---- 1. the exchange ----
if [ $A2A_PART = 1 ]; then
echo "## dispatch/combine: ds-bench-a2a --two-hop $A2A"
for run in "1 1" "1 2" "1 4" "2 1" "2 2"; do
    set -- $run
    mpirun --oversubscribe -np $NP "$BIN/ds-bench-a2a" --two-hop --ranks-per-node "$1" --node-limit "$2" $A2A --json \
        >"$W/a2a-$1-$2.jsonl"
done
"$PY" - "$W" <<'PYEOF'
import json, sys
w = sys.argv[1]
impl = {"ours": "one-hop", "two-hop": "two-hop", "mpi": "MPI_Alltoallv"}
print("| ranks/node | M | op | transport | time (us) | inter-node bytes | intra-node bytes | inter, two-hop / one-hop |")
print("| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
for rpn, m in [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2)]:
    rows = [json.loads(l) for l in open(f"{w}/a2a-{rpn}-{m}.jsonl")]
    assert all(r["wrong"] == 0 for r in rows), "wrong elements"
    for op in ("dispatch", "combine"):
        by = {r["impl"]: r for r in rows if r["op"] == op}
        ratio = by["two-hop"]["inter_node_bytes"] / max(by["ours"]["inter_node_bytes"], 1)
        for i in ("ours", "two-hop", "mpi"):
            r = by[i]
            print(f"| {rpn} | {m} | {op} | {impl[i]} | {r['time_us']:.0f} | {r['inter_node_bytes']} | "
                  f"{r['intra_node_bytes']} | {f'{ratio:.3f}' if i == 'two-hop' else ''} |")
PYEOF
fi

# ---- 2. training ----
[ $TRAIN_PART = 1 ] || exit 0
echo "## training: ds-pretrain --ep (tokens/s and memory per rank)"
if ! "$BIN/ds-pretrain" --help | grep -q -- '--ep N'; then
    echo "ds-pretrain has no --ep: training part skipped"
    exit 0
fi
"$PY" - "$W" <<'PYEOF'
import random, struct, sys
r = random.Random(0); toks = []
while len(toks) < 400000:
    toks += [r.randrange(2, 4096) for _ in range(r.randint(200, 2000))] + [1]
open(f"{sys.argv[1]}/tokens.u32", "wb").write(struct.pack(f"<{len(toks)}I", *toks))
PYEOF
"$PY" tests/ref/shard_ref.py encode "$W/tokens.u32" "$W/data.tok" 4096 1 65536 >/dev/null
train() { # ranks M [extra options...]: a config with n_group = ranks (one rank per node), topk_group = M
    local np=$1 m=$2
    shift 2
    "$PY" -c 'import json,sys; c=json.load(open("share/configs/demo.json")); c["n_group"]=int(sys.argv[1]); c["topk_group"]=int(sys.argv[2]); json.dump(c, open(sys.argv[3], "w"))' \
        "$np" "$m" "$W/cfg-$np-$m.json"
    mpirun --oversubscribe -np "$np" "$BIN/ds-pretrain" --config "$W/cfg-$np-$m.json" --data "$W/data.tok" \
        -o "$W/ck" --force --steps "$STEPS" --batch 4 --micro-batch 1 --seq-len "$T" --threads 1 --val-frac 0 \
        --log-every 0 --metrics "$W/train-$np-$m.jsonl" "$@" >"$W/train-$np-$m.log" 2>&1
}
train 1 1
if ! train 2 1 --ep 2 --ranks-per-node 1; then
    echo "ds-pretrain --ep 2 on 2 ranks failed (expert-parallel training not there yet?):"
    grep -m1 'error' "$W/train-2-1.log" || tail -3 "$W/train-2-1.log"
    echo "training part stops at the one-process run:"
    grep '^memory' "$W/train-1-1.log" || true
    exit 0
fi
train 2 2 --ep 2 --ranks-per-node 1
for m in 1 2 4; do train 4 $m --ep 4 --ranks-per-node 1; done
"$PY" - "$W" "$T" <<'PYEOF'
import json, re, statistics, sys
w, T = sys.argv[1], int(sys.argv[2])
print("| ranks (EP) | M | tokens/s (median, steps 2..) | nodes/token mean (max) | cross-node B per rank and step | memory per rank (ds-pretrain's lines) |")
print("| ---: | ---: | ---: | --- | ---: | --- |")
for np, m in [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4)]:
    recs = [json.loads(l) for l in open(f"{w}/train-{np}-{m}.jsonl")]
    steps = [r for r in recs if "step" in r]
    tok = statistics.median(r["tok_s"] for r in steps[1:] or steps)
    ep = steps[-1].get("ep")
    nodes = f"{ep['nodes_per_token_mean']:.3f} ({ep['nodes_per_token_max']})" if ep else "n/a"
    cross = f"{ep['cross_node_bytes_per_rank']:,.0f}" if ep else "n/a"
    mem = "; ".join(re.sub(r"^memory\s+", "", l.strip()) for l in open(f"{w}/train-{np}-{m}.log")
                    if l.startswith("memory"))
    print(f"| {np} | {m if np > 1 else '-'} | {tok:.0f} | {nodes} | {cross} | {mem} |")
PYEOF
