#!/bin/bash
# Loss curves at a realistic inner width (issue 23): tiny.json widened to dense and expert inner dimension
# INNER (2048: the down projections' K and the up projections' Dgrad K span 16 blocks; hidden HIDDEN), trained
# from the same seed on the same data (the demo corpus, share/demo/corpus.sh) as bf16, FP8 with the exact
# GEMM, FP8 with Hopper's accumulation promoted every 128 (V3's N_C), and without promotion. Prints per
# window of WIN steps the mean loss of each and its relative difference to bf16, the validations, the CPU
# time of each run and the load, and draws the curves and the differences (with V3's +-0.25%) as a PNG
# (bench/fp8_train_plot.c).
# A fifth run is the control: bf16 again, with the sgemm fallback instead of AMX (DS_AMX=0), so it differs
# from the bf16 run only in the order of the fp32 sums inside the GEMMs. How far it drifts from bf16 is how
# far two runs drift apart from rounding-level differences alone; a mode's gap to bf16 means something only
# where it exceeds that.
#
# Runs PARALLEL at a time, THREADS threads each, at nice NICE, in the order bf16, fp8, hopper128, hopper0,
# bf16sgemm.
# Every run writes its metrics as it goes: with KEEP=DIR they stay in DIR, and PLOT_ONLY=1 KEEP=DIR redraws
# the comparison from them (over the steps all runs reached) without training.
# The one variable to change for a longer run on a quiet machine or a GPU session's CPUs: STEPS.
# An ensemble: the same runs from other seeds (SEED: the model's initialisation and the order of the data), one
# KEEP directory per seed, MODES naming the runs to make; bench/fp8_ensemble.sh compares the modes seed by seed.
#
# Usage: bench/fp8_accum_train.sh   Environment: STEPS (300), BATCH (8), SEQ (64), WIN (25), LR (3e-3),
#        THREADS (1), PARALLEL (2), NICE (10), HIDDEN (128), INNER (2048), VAL_EVERY (50),
#        PNG (docs/fp8_accum_training.png), KEEP (a directory; default a temporary one), PLOT_ONLY (0),
#        SEED (1), MODES (bf16 fp8 hopper128 hopper0 bf16sgemm; the plot needs all five)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
STEPS=${STEPS:-300} BATCH=${BATCH:-8} SEQ=${SEQ:-64} WIN=${WIN:-25} THREADS=${THREADS:-1} LR=${LR:-3e-3}
PARALLEL=${PARALLEL:-2} NICE=${NICE:-10} HIDDEN=${HIDDEN:-128} INNER=${INNER:-2048} VAL_EVERY=${VAL_EVERY:-50}
PNG=${PNG:-$ROOT/docs/fp8_accum_training.png} KEEP=${KEEP:-} PLOT_ONLY=${PLOT_ONLY:-0} SEED=${SEED:-1}
read -r -a MODES <<<"${MODES:-bf16 fp8 hopper128 hopper0 bf16sgemm}"
for mode in "${MODES[@]}"; do
    case $mode in bf16 | bf16sgemm | fp8 | hopper128 | hopper0) ;; *) echo "fp8_accum_train.sh: unknown mode $mode" >&2; exit 2 ;; esac
done
W=${KEEP:-$(mktemp -d)}
mkdir -p "$W"
[ -n "$KEEP" ] || trap 'rm -rf "$W"' EXIT
# shellcheck source=bench/build_c.sh
. "$ROOT/bench/build_c.sh"

if [ "$PLOT_ONLY" != 1 ]; then
    [ -f "$W/tok.json" ] || { # a KEEP directory keeps its corpus and tokenizer
    "$ROOT/share/demo/corpus.sh" "$W/prose" 8000000
    cat "$W"/prose/train/*.txt >"$W/corpus.txt"
    "$BIN/ds-tokenize" train -q --vocab-size 512 -o "$W/tok.json" "$W/corpus.txt"
    "$BIN/ds-tokenize" encode -q -t "$W/tok.json" -o "$W/shards/" --force "$W/corpus.txt"
    }
    "$PY" -c "
import json, sys
c = json.load(open(sys.argv[1])); c.update(hidden_size=int(sys.argv[3]), intermediate_size=int(sys.argv[4]),
                                           moe_intermediate_size=int(sys.argv[4]))
json.dump(c, open(sys.argv[2], 'w'), indent=1)" "$ROOT/share/configs/tiny.json" "$W/wide.json" "$HIDDEN" "$INNER"
    {
        echo "config: tiny.json with hidden $HIDDEN, dense and expert inner $INNER (vocab 512, the demo corpus);"
        echo "$STEPS steps of $BATCH x $SEQ tokens, lr $LR, seed $SEED; $PARALLEL runs at a time, $THREADS thread(s) each, nice $NICE"
        echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores), $(date -u +%H:%M:%S) UTC"
    } | tee "$W/header.txt"
    export OMP_WAIT_POLICY=passive # idle OpenMP threads sleep (shared machine)
    train() { # mode
        local extra amx=1
        case $1 in
        bf16) extra=(--bf16) ;;
        bf16sgemm) extra=(--bf16) amx=0 ;;
        fp8) extra=(--fp8) ;;
        hopper128) extra=(--fp8 --fp8-accum hopper --fp8-promote 128) ;;
        hopper0) extra=(--fp8 --fp8-accum hopper --fp8-promote 0) ;;
        esac
        echo "$1 start $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >>"$W/log.txt"
        DS_AMX=$amx /usr/bin/time -f '%e %U %S' -o "$W/$1.time" nice -n "$NICE" "$BIN/ds-pretrain" --threads "$THREADS" \
            --config "$W/wide.json" --data "$W/shards" -o "$W/ck-$1" --force --steps "$STEPS" --batch "$BATCH" \
            --seq-len "$SEQ" --lr "$LR" --seed "$SEED" --val-every "$VAL_EVERY" --log-every 0 -q \
            --metrics "$W/$1.jsonl" "${extra[@]}"
        echo "$1 end $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)" >>"$W/log.txt"
    }
    running=0
    for mode in "${MODES[@]}"; do
        if [ "$running" -ge "$PARALLEL" ]; then
            wait -n
            running=$((running - 1))
        fi
        train "$mode" &
        running=$((running + 1))
    done
    wait
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%H:%M:%S) UTC" | tee -a "$W/header.txt"
fi

[ "${#MODES[@]}" -eq 5 ] || { echo "runs of ${MODES[*]} are in $W (the plot needs all five modes)"; exit 0; }
build_bench "$ROOT/bench/fp8_train_plot.c" "$W/fp8_train_plot"
mkdir -p "$(dirname "$PNG")"
"$W/fp8_train_plot" --names "bf16,FP8 exact,Hopper N_C 128,Hopper no promotion,bf16 (control: sgemm sums)" \
    "$W/bf16.jsonl" "$W/fp8.jsonl" "$W/hopper128.jsonl" "$W/hopper0.jsonl" "$W/bf16sgemm.jsonl" "$PNG" "$WIN"
for mode in "${MODES[@]}"; do
    # the last line: GNU time puts "Command terminated by signal" first when a run was stopped early
    [ -f "$W/$mode.time" ] && read -r wall user sys < <(tail -n 1 "$W/$mode.time") &&
        printf '%-10s wall %7.1f s, CPU %7.1f s (user %.1f + sys %.1f)\n' "$mode" "$wall" "$(echo "$user + $sys" | bc)" "$user" "$sys"
done
[ ! -f "$W/log.txt" ] || cat "$W/log.txt"
echo "figure: $PNG"
