#!/bin/bash
# The optimizer's part of a training step on the GPU: the one-pass AdamW update (bf16 working copy and
# gradient zeroing in the same pass, train/optim.h) against the separate passes (DS_FUSED_OPTIM=0: update,
# zeroing, then the bf16 conversion in the first GEMM after the step), on bench-1b's ~1.2B parameters, fp32
# and bf16 moments. Prints bench/gpu_optim's rows and, per moment type, the fused/separate ratio of the
# update-to-first-GEMM time. Usage: bench/gpu_optim.sh [n_params] [reps] (GPU_OPTIM=path to gpu_optim)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${GPU_OPTIM:-$here/../build/rel-cuda/bench/gpu_optim}
n=${1:-1.2e9} reps=${2:-10}
for mom in 0 1; do
    out=$("$bin" "$n" "$reps" "$mom")
    echo "$out"
    echo "$out" | awk -F'\t' -v mom="$mom" '$1 == "separate" { s = $6 } $1 == "fused" { f = $6 }
        END { if (s > 0 && f > 0) printf "optim\t%s moments\tupdate to first GEMM: separate %.2f ms, fused %.2f ms (%.2fx)\n",
              mom ? "bf16" : "fp32", s, f, s / f }'
done
