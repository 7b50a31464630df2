#!/bin/bash
# FP8 against bf16 over an ensemble of seeds (issue 23): bench/fp8_accum_train.sh's runs (bf16, FP8 exact, Hopper
# N_C 128, Hopper without promotion; the same config, data, steps and batch) from each of SEEDS, one directory
# per seed under DIR (DIR/sSEED: runs already there are kept, so a longer ensemble grows one seed at a time),
# then bench/fp8_ensemble.c: each mode's loss difference to bf16 paired seed by seed, per window of WIN steps,
# with its 95% interval across seeds, against V3's 0.25%; and a PNG.
# One run of a pair drifts from its twin late in training whatever the precision (the control in
# docs/BENCHMARKS.md, "FP8 loss curves over 1000 steps"): only the mean over seeds says what the precision does.
#
# Usage: DIR=/some/dir SEEDS="1 2 3" STEPS=1000 bench/fp8_ensemble.sh
# Environment: DIR (required), SEEDS (1 2 3), MODES (bf16 fp8 hopper128 hopper0: bf16 first, any of the others),
# PNG (docs/fp8_ensemble.png), WIN (100), ANALYZE_ONLY (0: train what is missing first), and
# fp8_accum_train.sh's STEPS, BATCH, SEQ, LR, THREADS, PARALLEL, NICE, HIDDEN, INNER, VAL_EVERY.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${DIR:?DIR: the directory with one sSEED directory of runs per seed}"
SEEDS=${SEEDS:-1 2 3} PNG=${PNG:-$ROOT/docs/fp8_ensemble.png} WIN=${WIN:-100} ANALYZE_ONLY=${ANALYZE_ONLY:-0}
MODES=${MODES:-bf16 fp8 hopper128 hopper0}
[ "${MODES%% *}" = bf16 ] || { echo "fp8_ensemble.sh: MODES must start with bf16, the baseline" >&2; exit 2; }
names=
for m in $MODES; do
    case $m in
    bf16) n=bf16 ;; fp8) n="FP8 exact" ;; hopper128) n="Hopper N_C 128" ;; hopper0) n="Hopper no promotion" ;;
    *) echo "fp8_ensemble.sh: unknown mode $m" >&2; exit 2 ;;
    esac
    names=${names:+$names,}$n
done
# shellcheck source=bench/build_c.sh
. "$ROOT/bench/build_c.sh"
dirs=()
for s in $SEEDS; do
    dirs+=("$DIR/s$s")
    [ "$ANALYZE_ONLY" = 1 ] && continue
    missing=()
    for m in $MODES; do [ -s "$DIR/s$s/$m.time" ] || missing+=("$m"); done # time -o makes it empty at the start
    [ "${#missing[@]}" -eq 0 ] || SEED=$s MODES="${missing[*]}" KEEP="$DIR/s$s" WIN=$WIN "$ROOT/bench/fp8_accum_train.sh"
done
build_bench "$ROOT/bench/fp8_ensemble.c" "$DIR/fp8_ensemble"
mkdir -p "$(dirname "$PNG")"
"$DIR/fp8_ensemble" --modes "${MODES// /,}" --names "$names" \
    "${dirs[@]}" "$PNG" "$WIN"
for s in $SEEDS; do
    for m in $MODES; do
        [ -s "$DIR/s$s/$m.time" ] && read -r wall user sys < <(tail -n 1 "$DIR/s$s/$m.time") &&
            printf 'seed %-3s %-10s wall %7.1f s, CPU %7.1f s\n' "$s" "$m" "$wall" "$(echo "$user + $sys" | bc)"
    done
done
echo "figure: $PNG"
