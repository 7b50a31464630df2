#!/bin/bash
# FP8 training accuracy: ds-pretrain with and without --fp8 on the same config, data, seed and thread
# count, then the relative loss difference over windows of steps and at every validation
# (docs/METRICS.md), and both curves as one PNG drawn by libds's charts (bench/fp8_train_plot.c).
# CPU time of each run is measured (GNU time), so the FP8 cost on the CPU is recorded with the result.
#
# usage: bench/fp8_train.sh [--steps N] [--batch B] [--seq-len T] [--lr LR] [--threads N] [--window W]
#                           [--config CFG] [--text 'GLOB'] [--png OUT.png] [--keep DIR] [--parallel]
#   defaults: share/configs/demo.json, 300 steps of 8 x 256 tokens, lr 1e-3, one thread per run, windows
#   of 25 steps, data = the demo corpus (share/demo/corpus.sh: Debian license texts and Perl's documentation,
#   8 MB, so 300 steps see each token about once, as pretraining does, instead of memorizing a small text)
#   with a BPE of the config's vocabulary from ds-tokenize, validation every 50 steps; the figure goes to
#   docs/fp8_training.png.
#   --parallel runs the two trainings at once (one core each); by default they run one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=share/configs/demo.json STEPS=300 B=8 T=256 LR=1e-3 THREADS=1 WIN=25 TEXT=''
PNG=docs/fp8_training.png KEEP="" PAR=0
while [ $# -gt 0 ]; do
    case $1 in
    --steps) STEPS=$2; shift 2 ;;
    --batch) B=$2; shift 2 ;;
    --seq-len) T=$2; shift 2 ;;
    --lr) LR=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --window) WIN=$2; shift 2 ;;
    --config) CFG=$2; shift 2 ;;
    --text) TEXT=$2; shift 2 ;;
    --png) PNG=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    --parallel) PAR=1; shift ;;
    *) sed -n '7,14p' "$0" >&2; exit 2 ;;
    esac
done
make -s >&2
W=${KEEP:-$(mktemp -d)}
mkdir -p "$W"
[ -n "$KEEP" ] || trap 'rm -rf "$W"' EXIT
PLOT=$W/fp8_train_plot
ROOT=$PWD
# shellcheck source=bench/build_c.sh
. bench/build_c.sh
build_bench bench/fp8_train_plot.c "$PLOT"

VOCAB=$(sed -n 's/.*"vocab_size": *\([0-9]*\).*/\1/p' "$CFG")
if [ -z "$TEXT" ]; then
    share/demo/corpus.sh "$W/prose" 8000000
    TEXT="$W/prose/train/*.txt"
fi
# shellcheck disable=SC2086
cat $TEXT >"$W/corpus.txt"
bin/ds-tokenize train -q --vocab-size "$VOCAB" -o "$W/tok.json" "$W/corpus.txt"
bin/ds-tokenize encode -q -t "$W/tok.json" -o "$W/shards/" --force "$W/corpus.txt"

# idle OpenMP threads sleep instead of spinning (shared machine)
export OMP_WAIT_POLICY=passive
train() { # name [--fp8]
    local name=$1
    shift
    /usr/bin/time -f '{"user_s": %U, "sys_s": %S, "wall_s": %e, "max_rss_kb": %M}' -o "$W/$name.time" \
        bin/ds-pretrain --config "$CFG" --data "$W/shards" --tokenizer "$W/tok.json" -o "$W/ck-$name" --force \
        --steps "$STEPS" --batch "$B" --seq-len "$T" --lr "$LR" --seed 1 --threads "$THREADS" --val-every 50 \
        --log-every 0 --peak-tflops 1 --metrics "$W/$name.jsonl" -q "$@"
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores); $STEPS steps x $B x $T, $THREADS thread(s) per run" >&2
if [ "$PAR" = 1 ]; then
    train fp32 & p1=$!
    train fp8 --fp8 & p2=$!
    wait "$p1"
    wait "$p2"
else
    train fp32
    train fp8 --fp8
fi
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in fp32 fp8; do
    printf '%-5s CPU %s\n' "$r" "$(cat "$W/$r.time")"
done
mkdir -p "$(dirname "$PNG")"
"$PLOT" "$W/fp32.jsonl" "$W/fp8.jsonl" "$PNG" "$WIN"
python3 - "$W/fp32.time" "$W/fp8.time" <<'EOF' || true
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ca, cb = a["user_s"] + a["sys_s"], b["user_s"] + b["sys_s"]
print(f"CPU time: fp32 {ca:.1f} s, FP8 {cb:.1f} s: FP8 / fp32 = {cb / ca:.2f}x")
EOF
echo "figure: $PNG" >&2
