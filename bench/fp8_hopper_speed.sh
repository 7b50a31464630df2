#!/bin/bash
# Speed of Hopper's accumulation model (--fp8-accum hopper, fp8/gemm.h): the scalar path (one
# ds_fp8_hopper_dot per element, the definition) against the vector path (AVX-512F+DQ, the same bits), next to
# the exact FP8 GEMM on the same operands. Builds bench/fp8_hopper_speed.c against this tree's libds.a.
#
# Usage: bench/fp8_hopper_speed.sh   Environment: M (128), N (1024), K (2048), NC (128), REPS (2),
#        THREADS (1), BUILD (build/rel-cuda, else build/rel)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=${M:-128} N=${N:-1024} K=${K:-2048} NC=${NC:-128} REPS=${REPS:-2} THREADS=${THREADS:-1}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# shellcheck source=bench/build_c.sh
. "$ROOT/bench/build_c.sh"
build_bench "$ROOT/bench/fp8_hopper_speed.c" "$W/fp8_hopper_speed"
echo "threads $THREADS; load before $(cut -d' ' -f1-3 /proc/loadavg)"
OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Cooperlake} \
    "$W/fp8_hopper_speed" "$M" "$N" "$K" "$NC" "$REPS"
echo "load after $(cut -d' ' -f1-3 /proc/loadavg)"
