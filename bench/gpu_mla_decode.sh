#!/bin/bash
# MLA decode attention at FlashMLA's shapes: ours (kernels/mla_decode.cu) against the measured HBM copy
# bandwidth and against eager PyTorch, side by side. Usage: bench/gpu_mla_decode.sh [reps]
# (GPU_MLA=path to the gpu_mla_decode binary, PY=python with torch, SWEEP=1: time every kernel
# configuration too; the table shows the automatic choice, the raw output all of them)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${GPU_MLA:-$here/../build/rel-cuda/bench/gpu_mla_decode}
py=${PY:-python3}
reps=${1:-20}
ours=$(mktemp); theirs=$(mktemp)
trap 'rm -f "$ours" "$theirs"' EXIT
"$bin" "$reps" ${SWEEP:+sweep} >"$ours"
"$py" "$here/gpu_mla_decode_torch.py" "$reps" >"$theirs"
echo "== raw (ours)"; cat "$ours"
echo "== raw (PyTorch)"; cat "$theirs"
echo "== MLA decode, batch 128, bf16 cache (median of $reps)"
awk -F'\t' 'NR==FNR { if (FNR > 1) pt[$2 "," $3 "," $4] = $5; next }
    /^# copy/ { printf "device-to-device copy: %.0f GB/s (read + write)\n", $2; next }
    /^batch/ { printf "%5s %5s %6s | %8s %7s %6s %7s %6s %6s | %8s %7s\n", "q_len", "heads", "kv_len", "ms", "GB/s",
               "%copy", "TFLOP/s", "config", "splits", "torch_ms", "speedup"; next }
    $11 == 0 { next }
    { k = $2 "," $3 "," $4; printf "%5d %5d %6d | %8.3f %7.0f %5.1f%% %7.1f %6d %6d | %8.3f %6.1fx\n", $2, $3, $4, $5, $6,
      $7, $8, $9, $10, pt[k], (pt[k] > 0 ? pt[k] / $5 : 0) }' "$theirs" "$ours"
