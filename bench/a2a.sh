#!/bin/sh
# All-to-all and expert-parallel dispatch/combine: ours against MPI_Alltoallv in the same run.
# Usage: bench/a2a.sh [NP]   (default 2 ranks; on one machine the transport is shared memory)
set -eu
NP=${1:-2}
BIN=${DS_BIN:-$(dirname "$0")/../bin}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun --oversubscribe -np "$NP" "$BIN/ds-bench-a2a" -b 1K -e 64M -f 4 -n 20 -w 5
mpirun --oversubscribe -np "$NP" "$BIN/ds-bench-a2a" --mode ep --tokens 1024 --hidden 2048 --topk 8 --experts 64 -d bf16 -n 10 -w 2
