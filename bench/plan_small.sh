#!/bin/sh
# ds-pretrain --plan against measured runs on this machine: for each (config, ranks, threads, batch,
# seq-len) row, the wall-clock step of short ds-pretrain runs (mpirun for several ranks) next to the plan's
# step_seconds for share/clusters/cpu-2core.json (or $CLUSTER).
#
# The machine is shared: other processes take cores away and (it is a VM) slow the cores themselves, so
# each row reports the minimum step over steps 2.. of RUNS runs (the step least disturbed by the load)
# and the median, and the load average when the row started. Compare with the plan on a quiet machine
# (load below 1); under load the minimum is still slower than the machine (docs/BENCHMARKS.md).
#
# Usage: bench/plan_small.sh [STEPS]        (default 5 steps a run; the first is not counted)
#        RUNS=N (default 2) runs a row; KEEP=DIR keeps the metrics there; REUSE=1 with KEEP plans again
#        from the runs kept (after a change to the model or the cluster file) without running them
#        ONLY_EP=1 bench/plan_small.sh     only the expert-parallel rows
#        bench/plan_small.sh probe         this machine's rates for the cluster file: sgemm and copy
#                                          (bench/plan_probe.c), shared-memory MPI bandwidth
#                                          (ds-bench-a2a), and the latency of a message and of an
#                                          all-reduce on 2 and on 4 ranks (plan_probe mpi)
set -eu
STEPS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
CLUSTER=${CLUSTER:-$ROOT/share/clusters/cpu-2core.json}
CORES=${CORES:-2}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
T=$(mktemp -d)
KEEP=${KEEP:-$T}
RUNS=${RUNS:-2}
mkdir -p "$KEEP"
trap 'rm -rf "$T"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
if [ "$STEPS" = probe ]; then
    make -s -C "$ROOT" -j2 objects >/dev/null
    LIB=$(ls -t "$ROOT"/build/rel*/libds.a | head -1) # the release build, not SANITIZE=1 objects
    # shellcheck disable=SC2046
    cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -I"$ROOT/lib" $(pkg-config --cflags ompi-c) "$ROOT/bench/plan_probe.c" "$LIB" \
        $(ls "$(dirname "$LIB")"/libds_cuda.a 2>/dev/null) $(pkg-config --libs openblas jansson libzstd libpcre2-8 ompi-c libpng freetype2) \
        -lm -lpthread $( [ -f "$(dirname "$LIB")/libds_cuda.a" ] && echo "-L/usr/local/cuda/lib64 -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lrt") \
        -o "$T/plan_probe"
    echo "load $(cut -d' ' -f1 /proc/loadavg)"
    "$T/plan_probe" 1
    mpirun --oversubscribe -np 2 "$BIN/ds-bench-a2a" -b 64K -e 4M -f 4 -n 20 -w 5 | grep -vE '^#'
    for n in 2 4; do mpirun --oversubscribe -np $n "$T/plan_probe" mpi; done
    exit 0
fi
cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 >"$T/prose.txt"
"$BIN/ds-tokenize" train -q --vocab-size 400 -o "$T/tok.json" "$T/prose.txt"
"$BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$T/shards/" "$T/prose.txt"

# min and median of the step wall time (the metrics' ms) over steps 2.. of every run of a row, in s
stats() { "$PY" -c '
import json, statistics, sys
v = []
for f in sys.argv[1:]:
    s = [json.loads(l)["ms"] for l in open(f) if "\"step\"" in l]
    v += s[1:] if len(s) > 1 else s
print("%.4f %.4f" % (min(v) / 1e3, statistics.median(v) / 1e3))' "$@"; }

printf '| config | ranks x threads | layout | batch x seq (micro-batch) | plan s | wall min s | plan / min | wall median s | plan / median | load |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
run() { # CONFIG RANKS THREADS BATCH SEQ MICRO-BATCH [PP SCHEDULE [EP]]
    cfg=$ROOT/share/configs/$1.json np=$2 th=$3 b=$4 s=$5 mb=$6 pp=${7:-1} sc=${8:-1f1b} ep=${9:-1}
    [ -z "${ONLY_EP:-}" ] || [ "$ep" -gt 1 ] || return 0
    dp=$((np / pp))
    lay="--pp $pp --schedule $sc --micro-batch $mb --ep $ep"
    load=$(cut -d' ' -f1 /proc/loadavg)
    [ -n "${REUSE:-}" ] && [ -s "$KEEP/load-$1-$np-$th-$b-$s-$mb-$pp-$sc-$ep" ] && load=$(cat "$KEEP/load-$1-$np-$th-$b-$s-$mb-$pp-$sc-$ep")
    echo "$load" >"$KEEP/load-$1-$np-$th-$b-$s-$mb-$pp-$sc-$ep"
    files=
    r=1
    while [ "$r" -le "$RUNS" ]; do
        m=$KEEP/m-$1-$np-$th-$b-$s-$mb-$pp-$sc-$ep-$r.jsonl
        files="$files $m"
        r=$((r + 1))
        [ -n "${REUSE:-}" ] && [ -s "$m" ] && continue
        args="--config $cfg --data $T/shards --tokenizer $T/tok.json -o $T/out --force --steps $STEPS --batch $b --seq-len $s \
--threads $th $lay --val-every 0 --log-every 0 -q --peak-tflops 1 --seed 1 --metrics $m"
        if [ "$np" -gt 1 ]; then
            # shellcheck disable=SC2086
            # an EP group's ranks as emulated nodes: the demo config routes to 2 of n_group 4 = EP 4 nodes
            mpirun --oversubscribe -np "$np" "$BIN/ds-pretrain" $args --dp "$dp" $([ "$ep" -gt 1 ] && echo --ranks-per-node 1)
        else
            # shellcheck disable=SC2086
            "$BIN/ds-pretrain" $args
        fi
    done
    # shellcheck disable=SC2086
    st=$(stats $files)
    wmin=${st% *} wmed=${st#* }
    # shellcheck disable=SC2086
    plan=$("$BIN/ds-pretrain" --plan "$CLUSTER" --config "$cfg" --dp "$dp" --batch "$b" --seq-len "$s" $lay --json |
        "$PY" -c 'import json, sys; print(json.load(sys.stdin)["step_seconds"])')
    awk -v c="$1" -v n="$np" -v t="$th" -v l="PP $pp x DP $dp $sc EP $ep" -v b="$b" -v s="$s" -v mb="$mb" -v p="$plan" \
        -v q="$wmin" -v w="$wmed" -v ld="$load" \
        'BEGIN { printf "| %s | %d x %d | %s | %d x %d (%d) | %.3f | %.3f | %.2f | %.3f | %.2f | %s |\n", c, n, t, l, b, s, mb, p, q, p / q, w, p / w, ld }'
}
run demo 1 2 8 256 8
run demo 2 1 8 256 4
run demo 4 1 8 256 2
run demo 1 2 4 512 4
run demo 2 1 16 128 8
run tiny 1 2 8 128 8
run tiny 2 1 8 128 4
run demo 2 1 8 256 2 2 1f1b
run demo 2 1 8 256 2 2 dualpipe
run demo 4 1 8 256 1 4 zb1p
run demo 4 1 8 256 2 2 1f1b
run demo 4 1 8 256 2 1 1f1b 4
