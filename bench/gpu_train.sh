#!/bin/bash
# Training throughput, ours (CUDA backend, bench/gpu_train) vs transformers (bench/gpu_train_torch.py) on
# the same ~1.2B MoE, side by side. Usage: bench/gpu_train.sh [batch] [seq] [steps]
# (GPU_TRAIN=path to the gpu_train binary, PY=python with torch + transformers)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${GPU_TRAIN:-$here/../build/rel-cuda/bench/gpu_train}
py=${PY:-python3}
B=${1:-8} T=${2:-1024} S=${3:-5}
ours=$("$bin" "$B" "$T" "$S" bf16)
theirs=$("$py" "$here/gpu_train_torch.py" "$B" "$T" "$S")
echo "$ours"
echo "$theirs"
o=$(echo "$ours" | awk -F'\t' '/^ours/ { for (i = 1; i <= NF; i++) if ($i ~ /^tok_s/) { split($i, a, " "); print a[2] } }')
t=$(echo "$theirs" | awk -F'\t' '/^torch/ { for (i = 1; i <= NF; i++) if ($i ~ /^tok_s/) { split($i, a, " "); print a[2] } }')
awk -v o="$o" -v t="$t" 'BEGIN { printf "ours / transformers tokens/s: %.2fx\n", o / t }'
