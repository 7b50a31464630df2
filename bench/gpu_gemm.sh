#!/bin/bash
# FP8 vs bf16 GEMM on DeepSeek-V3's shapes: ours (cuBLASLt through kernels/blaslt) and PyTorch side by side.
# Usage: bench/gpu_gemm.sh [reps]   (GPU_GEMM=path to the gpu_gemm binary, PY=python with torch)
# Prints a table with TFLOP/s, the FP8/bf16 ratio, ours/PyTorch ratios and the FP8 error.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${GPU_GEMM:-$here/../build/rel-cuda/bench/gpu_gemm}
py=${PY:-python3}
reps=${1:-20}
ours=$(mktemp); theirs=$(mktemp)
trap 'rm -f "$ours" "$theirs"' EXIT
"$bin" "$reps" >"$ours"
"$py" "$here/gpu_gemm_torch.py" "$reps" >"$theirs"
echo "== raw (ours)"; cat "$ours"
echo "== raw (PyTorch)"; cat "$theirs"
echo "== FP8 vs bf16 GEMM, TFLOP/s (median of $reps)"
awk -F'\t' 'NR==FNR { if (FNR > 1) { t16[$1] = $6; t8[$1] = $8 } next }
    FNR == 1 { printf "%-12s %6s %6s %6s | %8s %8s %6s | %8s %8s | %9s %9s | %8s %8s\n", "shape", "M", "N", "K",
               "bf16", "fp8", "fp8/bf", "fp8+q", "torch16", "torch_fp8", "ours16/pt", "err_fp32", "err_bf16"; next }
    { printf "%-12s %6d %6d %6d | %8.1f %8.1f %6.2f | %8.1f %8.1f | %9.1f %9.2f | %8s %8s\n", $1, $2, $3, $4,
             $6, $8, $9, $11, t16[$1], t8[$1], (t16[$1] > 0 ? $6 / t16[$1] : 0), $12, $13 }' "$theirs" "$ours"
