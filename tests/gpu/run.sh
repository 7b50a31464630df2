#!/bin/bash
# make test-gpu: every GPU test program (tests/gpu/test_*.cu: each kernel against the CPU reference on
# fresh random inputs), the tools' --device cuda vs cpu test (tests/gpu/test_tools.sh, TAP) and any GPU
# bats suites (tests/gpu/*.bats), counted by tests/run.sh.
# Without a GPU (or without a CUDA build) it says so plainly and exits 0.
# Environment: DS_GPU_TESTS (the test programs, from the Makefile), plus what tests/run.sh takes.
set -u
cd "$(dirname "$0")/../.."
if [ -z "${DS_GPU_TESTS:-}" ]; then
    echo "test-gpu: this build has no CUDA objects (nvcc not found, or CUDA=0): no GPU tests to run"
    exit 0
fi
first=${DS_GPU_TESTS%% *}
probe=$("$first" __no_such_test__ 2>&1 | head -1)
case "$probe" in
*"SKIP no GPU present"*)
    echo "test-gpu: no GPU present ${probe#*present }: skipping $(echo $DS_GPU_TESTS | wc -w) GPU test programs"
    exit 0
    ;;
esac
echo "test-gpu: ${probe#\# }"
DS_UNITS="$DS_GPU_TESTS" DS_FUZZERS="" DS_QUICK=1 DS_BATS_SUITES="tests/gpu/*.bats" exec tests/run.sh
