#!/bin/bash
# The accumulation error of FP8 GEMMs against K and the promotion interval N_C (V3 section 3.3.2):
# the exact model (each 128-block exact, promoted to fp32), Hopper's ~14-bit accumulator (fp8/gemm.h,
# --fp8-accum hopper) without promotion (NC=0) and with promotion every N_C, next to a bf16 GEMM (fp32
# accumulation, output rounded to bf16). Builds bench/fp8_accum.c against this tree's libds.a.
#
# Usage: bench/fp8_accum.sh        Environment: M, N (64), KS ("128 512 1024 2048 4096 8192"),
#        NCS ("0 1024 512 256 128 64 32"), THREADS (2), BUILD (build/rel-cuda, else build/rel)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
M=${M:-64} N=${N:-64} THREADS=${THREADS:-2}
KS=${KS:-"128 512 1024 2048 4096 8192"} NCS=${NCS:-"0 1024 512 256 128 64 32"}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# shellcheck source=bench/build_c.sh
. "$ROOT/bench/build_c.sh"
build_bench "$ROOT/bench/fp8_accum.c" "$W/fp8_accum"
echo "M=$M N=$N; entries: relative Frobenius error / largest elementwise relative error, against the exact"
echo "double product of the same operands; load $(cut -d' ' -f1-3 /proc/loadavg)"
for sign in signed positive; do
    echo
    echo "$sign operands ($([ $sign = signed ] && echo 'N(0,1)' || echo '|N(0,1)|'), quantized 1x128 / 128x128 with f32 scales):"
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=$THREADS "$W/fp8_accum" "$M" "$N" $sign $KS -- $NCS
done
