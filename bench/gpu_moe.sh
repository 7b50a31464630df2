#!/bin/bash
# One training step's routed-expert time before/after the device-offset grouped GEMMs
# (kernels/grouped_gemm.cu) on bench/gpu_train's ~1.2B MoE (64 experts top-6, 11 MoE layers):
#   before  DS_CUDA_GROUPED=0: the offsets copied to the host (a synchronisation per MoE layer), one
#           cuBLASLt call per expert and product
#   after   the default: one grouped launch per product, offsets read on the device, no synchronisation
# For each: the median step time (nothing synchronised but the step's end: the host round trips count) and
# the expert GEMMs' time per step from a profiled run (every op synchronised: the GEMM work alone). Prints
# both and the before/after ratios. Usage: bench/gpu_moe.sh [batch] [seq] [steps]
# (GPU_TRAIN=path to the gpu_train binary)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${GPU_TRAIN:-$here/../build/rel-cuda/bench/gpu_train}
B=${1:-8} T=${2:-1024} S=${3:-3}
field() { awk -F'\t' -v k="$1" '/^ours/ { for (i = 1; i <= NF; i++) if (index($i, k " ") == 1) { split($i, a, " "); print a[2] } }'; }
# the expert GEMM ops' milliseconds over the profiled run's S+2 steps, per step
gemm_ms() { awk -v n=$((S + 2)) '$1 ~ /^gemm_(rows|wgrad)(_dev)?$/ { t += $2 } END { printf "%.2f", t / n }'; }
declare -A step gemm loss
for g in 0 1; do
    out=$(DS_CUDA_GROUPED=$g "$bin" "$B" "$T" "$S" bf16 2>/dev/null)
    prof=$(DS_CUDA_GROUPED=$g "$bin" "$B" "$T" "$S" bf16 profile 2>/dev/null)
    step[$g]=$(echo "$out" | field step_ms)
    loss[$g]=$(echo "$out" | field loss)
    gemm[$g]=$(echo "$prof" | gemm_ms)
    echo "DS_CUDA_GROUPED=$g: $(echo "$out" | grep '^ours')"
    echo "$prof" | grep -E '^  gemm_(rows|wgrad)' | sed "s/^/  [grouped=$g] /"
done
printf 'moe\tbatch %d x seq %d\tstep_ms before %s after %s (%.2fx)\texpert_gemm_ms/step before %s after %s (%.2fx)\tloss before %s after %s\n' \
    "$B" "$T" "${step[0]}" "${step[1]}" "$(awk -v a="${step[0]}" -v b="${step[1]}" 'BEGIN { print a / b }')" \
    "${gemm[0]}" "${gemm[1]}" "$(awk -v a="${gemm[0]}" -v b="${gemm[1]}" 'BEGIN { print (b > 0 ? a / b : 0) }')" \
    "${loss[0]}" "${loss[1]}"
