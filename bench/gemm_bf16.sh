#!/bin/bash
# bf16 GEMMs on the CPU: libds's AMX kernel (ops/gemm_bf16.h, fp32 operands rounded while packing, and bf16
# operands read directly), its sgemm fallback on rounded copies (what --bf16 ran before), OpenBLAS sgemm in
# fp32, OpenBLAS cblas_sbgemm (when the library exports it) and PyTorch's bf16 matmul (oneDNN), on the
# hidden-768 model's shapes (bench/cpu_sweep.sh's 768:512 point, 4 x 256 tokens) and a large square one,
# with 1 and 2 threads. GFLOP/s (2 M N K / time, best of REPS) and the ratios AMX / sgemm, AMX / torch.
#
# usage: bench/gemm_bf16.sh [--reps R] [--threads "1 2"] [SPEC ...]
#   SPEC: M,N,K,TA,TB (one product), rows:M,N,K,G,TB (gemm_rows: M rows in G expert groups),
#   wgrad:M,N,K,G (gemm_wgrad: K rows in G groups)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
REPS=10 THREADS="1 2"
while [ $# -gt 0 ]; do
    case $1 in
    --reps) REPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    -*) echo "usage: $0 [--reps R] [--threads \"1 2\"] [SPEC ...]" >&2; exit 2 ;;
    *) break ;;
    esac
done
SPECS=("$@")
if [ ${#SPECS[@]} -eq 0 ]; then
    # Fprop of a 768 -> 512 projection, Dgrad back, Wgrad of it, a square 768 Wgrad, the routed experts
    # (16 experts x 256 rows: gate/up Fprop, down Dgrad, Wgrad), the head (vocab 4096), and a large product
    SPECS=(1024,512,768,0,1 1024,768,512,0,1 1024,768,512,0,0 512,768,1024,1,0 768,768,1024,1,0
           rows:4096,512,768,16,1 rows:4096,768,512,16,0 wgrad:512,768,4096,16 1024,4096,768,0,1 2048,2048,2048,0,1)
fi
# shellcheck source=bench/build_c.sh
source bench/build_c.sh
[ -f build/rel-cuda/libds.a ] || [ -f build/rel/libds.a ] || make -j"$(nproc)" >/dev/null
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
build_bench bench/gemm_bf16.c "$W/gemm_bf16" -ldl
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Cooperlake} OMP_WAIT_POLICY=passive
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in $THREADS; do
    OMP_NUM_THREADS=$t "$W/gemm_bf16" "$t" "$REPS" "${SPECS[@]}" >>"$W/ours.jsonl" 2>"$W/ours.err"
    OMP_NUM_THREADS=$t "$PY" bench/gemm_bf16_torch.py "$t" "$REPS" "${SPECS[@]}" >>"$W/torch.jsonl"
done
ONEDNN_VERBOSE=1 OMP_NUM_THREADS=1 "$PY" bench/gemm_bf16_torch.py 1 1 1024,512,768,0,1 2>&1 |
    grep -o 'brg_matmul:[a-z0-9_]*\|gemm:[a-z0-9_]*' | sort -u | sed 's/^/# torch bf16 matmul kernel (oneDNN): /' || true
head -1 "$W/ours.err"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$W" "${SPECS[@]}" <<'PYEOF'
import json, sys
w, specs = sys.argv[1], sys.argv[2:]
ours = [json.loads(l) for l in open(f"{w}/ours.jsonl")]
torch = [json.loads(l) for l in open(f"{w}/torch.jsonl")]
print(f"{'shape (M,N,K,ta,tb | grouped)':32s} {'thr':>3s} | {'AMX':>7s} {'AMX bf16 in':>11s} {'fallback':>8s} "
      f"{'sgemm':>7s} {'sbgemm':>7s} {'torch bf16':>10s} | {'AMX/sgemm':>9s} {'AMX/torch':>9s}")
for o, t in zip(ours, torch):
    sb = "n/a" if o["sbgemm"] is None else f"{o['sbgemm']:.0f}"
    a16 = f"{o['amx_bf16_in']:.0f}" if o["amx_bf16_in"] else "-"
    print(f"{t['spec']:32s} {o['threads']:3d} | {o['amx']:7.0f} {a16:>11s} {o['fallback']:8.0f} {o['sgemm']:7.0f} "
          f"{sb:>7s} {t['torch_bf16']:10.0f} | {o['amx'] / o['sgemm']:8.2f}x {o['amx'] / t['torch_bf16']:8.2f}x")
PYEOF
