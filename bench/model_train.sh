#!/bin/bash
# model_train.sh — training throughput of libds's DeepSeek-V3 network against PyTorch running the same
# transformers model (DeepseekV3ForCausalLM, fp32, sdpa attention), same config, batch and thread count,
# in one run. Each side does forward + backward of the next-token loss; ours keeps MTP off here because
# DeepseekV3ForCausalLM has none (a third line shows ours with MTP on). The sides alternate for REPS
# rounds so machine load hits both alike; medians are reported.
#
# usage: bench/model_train.sh [CONFIG] [B] [T] [STEPS] [THREADS] [REPS]
#   defaults: share/configs/demo.json 8 256 5 2 3
# Environment: DS_PY (python with torch + transformers; default ~/.cache/ds-venv/bin/python).
# OMP_WAIT_POLICY defaults to passive for both sides (these machines are shared; spinning OpenMP
# workers of either side then cost the other throughput). OPENBLAS_CORETYPE is taken as the
# environment sets it; ours also runs with it unset (OpenBLAS then picks its AVX-512 kernel where the
# CPU has one), reported separately.
set -eu
cd "$(dirname "$0")/.."
CONFIG=${1:-share/configs/demo.json} B=${2:-8} T=${3:-256} STEPS=${4:-5} THREADS=${5:-2} REPS=${6:-3}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} OMP_NUM_THREADS=$THREADS

make -s CUDA=0 build/rel/libds.a >&2
BIN=build/bench/model_train
mkdir -p build/bench
# shellcheck disable=SC2046
${CC:-gcc} -O3 -march=native -std=c11 -D_GNU_SOURCE -fopenmp -Ilib bench/model_train.c build/rel/libds.a \
    $(pkg-config --cflags --libs openblas jansson libzstd libpcre2-8) -lm -o "$BIN"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq "$REPS"); do
    "$BIN" "$CONFIG" "$B" "$T" "$STEPS" 0 >>"$out/ours"
    env -u OPENBLAS_CORETYPE "$BIN" "$CONFIG" "$B" "$T" "$STEPS" 0 >>"$out/ours_auto"
    "$PY" bench/model_train_torch.py "$CONFIG" "$B" "$T" "$STEPS" "$THREADS" 2>/dev/null >>"$out/torch"
    "$BIN" "$CONFIG" "$B" "$T" "$STEPS" 1 >>"$out/ours_mtp"
done

"$PY" - "$out" "$CONFIG" "$B" "$T" "$THREADS" <<'PY'
import json, os, statistics, subprocess, sys, platform
out, config, B, T, threads = sys.argv[1:6]
rows = {k: [json.loads(l) for l in open(os.path.join(out, k))] for k in ("ours", "ours_auto", "torch", "ours_mtp")}
med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in rows.items()}
cpu = {k: statistics.median(r["cpu_ms_per_step"] for r in v) for k, v in rows.items()}
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
load = os.getloadavg()[0]
print(f"config {config}, batch {B} x {T} tokens, {threads} threads, {cpu_model}, load average {load:.1f}")
print(f"{'side':<44} {'tokens/s':>10} {'cpu ms/step':>12}")
names = {"ours": f"libds (OpenBLAS {rows['ours'][0]['blas_core']})",
         "ours_auto": f"libds (OpenBLAS {rows['ours_auto'][0]['blas_core']}, OPENBLAS_CORETYPE unset)",
         "torch": f"PyTorch {rows['torch'][0]['torch']} transformers ({rows['torch'][0]['attn']})",
         "ours_mtp": f"libds with MTP (OpenBLAS {rows['ours_mtp'][0]['blas_core']})"}
for k in ("ours", "ours_auto", "torch", "ours_mtp"):
    print(f"{names[k]:<44} {med[k]:>10.1f} {cpu[k]:>12.1f}")
print(f"ratio libds / PyTorch (tokens/s, same environment): {med['ours'] / med['torch']:.2f}x")
print(f"ratio libds / PyTorch (CPU time per step):          {cpu['torch'] / cpu['ours']:.2f}x")
print(f"ratio with the AVX-512 kernel (tokens/s):           {med['ours_auto'] / med['torch']:.2f}x")
PY
