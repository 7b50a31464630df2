#!/bin/bash
# passkey_extension.sh — the context-extension experiment (bench/passkey_extension.c): a tiny model
# pretrained on passkey documents at L0 tokens, evaluated at L0 and FACTOR x L0, then extended with
# YaRN (V3's betas, and betas scaled to the tiny context) and without it (plain RoPE fine-tuning),
# each from the same base weights, evaluated again. Prints the grids; a run is recorded in
# docs/DESIGN.md "Context extension". One thread; about 10 CPU-minutes with the defaults.
#
# usage: bench/passkey_extension.sh [L0 [FACTOR [PRETRAIN_STEPS [EXTEND_STEPS [TRIALS]]]]]   (64 4 3000 1000 8)
set -eu
cd "$(dirname "$0")/.."
make -s CUDA=0 build/rel/libds.a >&2
BIN=build/bench/passkey_extension
mkdir -p build/bench
# shellcheck disable=SC2046
${CC:-gcc} -O3 -march=native -std=c11 -D_GNU_SOURCE -fopenmp -Ilib -Itests/unit bench/passkey_extension.c build/rel/libds.a \
    $(pkg-config --cflags --libs openblas jansson libzstd libpcre2-8) -lm -o "$BIN"
echo "commit $(git describe --always --dirty), $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive "$BIN" "$@"
