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
