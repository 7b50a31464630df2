#!/bin/bash
# GPU end-to-end of the NCCL transport (TAP), for a machine with one GPU: a world of one, started without
# mpirun (a lent GPU machine may have no MPI installation; the multi-rank logic is covered by the MPI suites).
#   ds-bench-a2a --backend nccl: the all-to-all sweep between GPU buffers, every byte checked.
#   ds-pretrain --device cuda --comm nccl: training steps through the NCCL path (device selection, the
#             communicators, the gradient reductions' plumbing) equal to the same steps with --comm mpi
#             (host staging) within fp32 tolerance; with one rank the reductions are the identity on both.
# Environment: DS_BIN, DS_ROOT, DS_PY as tests/gpu/test_tools.sh; DS_NCCL_LIB to name libnccl.so.2.
# Without a GPU it prints "1..0 # SKIP no GPU present".
set -u
. "$(dirname "$0")/tap_lib.sh"
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "1..0 # SKIP no GPU present"
    exit 0
fi

# ---- the sweep: 1 MiB .. 64 MiB, #wrong 0 on every row ----
"$bin/ds-bench-a2a" --backend nccl -b 1M -e 64M -f 4 -n 10 -w 3 >"$w/a2a.txt" 2>&1
st=$?
note <"$w/a2a.txt"
rows=$(grep -cE '^ *[0-9]' "$w/a2a.txt")
bad=$(awk '$1 ~ /^[0-9]+$/ && ($9 != 0 || $13 != 0)' "$w/a2a.txt" | wc -l)
check $((st != 0 || rows != 4 || bad != 0)) "ds-bench-a2a --backend nccl, world of one: 4 sizes, every element where it belongs"

# ---- training: 3 steps through the NCCL communicator (a world of one) against --comm mpi, exact GEMMs ----
make_data
targs=(--config "$root/share/configs/tiny.json" --data "$w/shards" --tokenizer "$w/tok.json" --batch 8 --micro-batch 4
       --seq-len 64 --seed 7 --steps 3 --val-every 0 --peak-tflops 1 --threads 4 --device cuda)
DS_CUDA_GEMM=f32 "$bin/ds-pretrain" "${targs[@]}" -o "$w/nc" --metrics "$w/nc.jsonl" --comm nccl >"$w/nc.log" 2>&1
st=$?
grep -E 'comm|error' "$w/nc.log" | note
check $((st != 0)) "ds-pretrain --device cuda --comm nccl: 3 steps"
grep -q 'comm    NCCL on GPU 0' "$w/nc.log"
check $? "the run went through an NCCL communicator on GPU 0"
DS_CUDA_GEMM=f32 "$bin/ds-pretrain" "${targs[@]}" -o "$w/mp" --metrics "$w/mp.jsonl" --comm mpi >"$w/mp.log" 2>&1
check $? "ds-pretrain --device cuda --comm mpi: 3 steps"
"$py" - "$w/nc.jsonl" "$w/mp.jsonl" <<'PY' | note
import json, sys
a, b = ([r for r in map(json.loads, open(f)) if "step" in r] for f in sys.argv[1:3])
worst = max((abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a, b) for k in ("loss", "grad_norm")), default=1)
print(f"{len(a)} vs {len(b)} steps; loss and grad_norm max relative difference {worst:.3g} (tolerance 1e-5)")
open(sys.argv[1] + ".ok", "w").write("1" if len(a) == len(b) == 3 and worst <= 1e-5 else "0")
PY
[ "$(cat "$w/nc.jsonl.ok" 2>/dev/null)" = 1 ]
check $? "--comm nccl and --comm mpi train the same steps (loss, gradient norm within 1e-5)"
echo "1..$n"
exit $failed
