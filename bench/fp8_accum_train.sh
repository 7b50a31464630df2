#!/bin/bash
# Loss curves at a width where K spans 16 blocks (issue 23): tiny.json widened to dense and expert inner
# dimension 2048 (hidden 128), trained from the same seed on the same data (the GPL text) as bf16, FP8 with
# the exact GEMM, FP8 with Hopper's accumulation promoted every 128, and without promotion. Prints per
# window of WIN steps the mean loss of each and its relative difference to bf16, and the CPU time of each.
# Hopper's model is scalar: about 10 s of CPU per step at batch 4 x 64 tokens, so the defaults are small;
# rerun with STEPS in the thousands on a quiet machine for curves that can separate.
#
# Usage: bench/fp8_accum_train.sh   Environment: STEPS (20), BATCH (2), SEQ (32), WIN (5), THREADS (2), LR (3e-3)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
STEPS=${STEPS:-20} BATCH=${BATCH:-2} SEQ=${SEQ:-32} WIN=${WIN:-5} THREADS=${THREADS:-2} LR=${LR:-3e-3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat /usr/share/common-licenses/GPL-3 >"$W/prose.txt"
"$BIN/ds-tokenize" train -q --vocab-size 400 -o "$W/tok.json" "$W/prose.txt"
"$BIN/ds-tokenize" encode -q -t "$W/tok.json" -o "$W/shards/" "$W/prose.txt"
"$PY" -c "
import json, sys
c = json.load(open(sys.argv[1])); c.update(hidden_size=128, intermediate_size=2048, moe_intermediate_size=2048)
json.dump(c, open(sys.argv[2], 'w'), indent=1)" "$ROOT/share/configs/tiny.json" "$W/wide.json"
echo "config: tiny.json with hidden 128, dense and expert inner 2048; $STEPS steps of $BATCH x $SEQ tokens, lr $LR, seed 1"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in bf16 fp8 hopper128 hopper0; do
    case $mode in
    bf16) extra=(--bf16) ;;
    fp8) extra=(--fp8) ;;
    hopper128) extra=(--fp8 --fp8-accum hopper --fp8-promote 128) ;;
    hopper0) extra=(--fp8 --fp8-accum hopper --fp8-promote 0) ;;
    esac
    /usr/bin/time -f "%e %U" -o "$W/$mode.time" "$BIN/ds-pretrain" --threads "$THREADS" --config "$W/wide.json" \
        --data "$W/shards" -o "$W/ck-$mode" --steps "$STEPS" --batch "$BATCH" --seq-len "$SEQ" --lr "$LR" \
        --seed 1 --log-every 0 -q --metrics "$W/$mode.jsonl" "${extra[@]}"
done
"$PY" - "$W" "$WIN" <<'PY'
import json, sys
w, win = sys.argv[1], int(sys.argv[2])
modes = ["bf16", "fp8", "hopper128", "hopper0"]
loss = {m: [r["loss"] for r in map(json.loads, open(f"{w}/{m}.jsonl")) if "loss" in r] for m in modes}
print("steps      " + "".join(f"{m:>22}" for m in modes))
for s in range(0, len(loss["bf16"]), win):
    base = sum(loss["bf16"][s:s + win]) / len(loss["bf16"][s:s + win])
    row = f"{s + 1:4d}-{min(s + win, len(loss['bf16'])):<5d}"
    for m in modes:
        v = sum(loss[m][s:s + win]) / len(loss[m][s:s + win])
        row += f"{v:12.4f} ({100 * (v - base) / base:+.3f}%)"
    print(row)
for m in modes:
    wall, user = open(f"{w}/{m}.time").read().split()
    print(f"{m:10s} wall {float(wall):7.1f} s, user CPU {float(user):7.1f} s")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
