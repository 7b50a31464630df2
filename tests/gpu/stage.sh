#!/bin/bash
# Copy what a GPU machine needs to run the GPU tests and benchmarks into DEST (for a lent machine that
# has the NVIDIA driver, CUDA 13 libraries and PyTorch, but not our build tree or Debian libraries):
#   DEST/bin      test programs, benchmark binaries and the tools the GPU tests drive (built here: make test-gpu)
#   DEST/bench    the benchmark drivers and their PyTorch references
#   DEST/test_tools.sh, DEST/test_fp8_resident.sh, DEST/share/configs, DEST/docs ...  the tools' end-to-end test and what it reads
#   DEST/lib      the shared libraries the binaries need beyond the C/C++ runtime and CUDA's own
#                 (OpenMP, OpenBLAS and its Fortran runtime, ...), from this machine
#   DEST/device.sh  the runner (tests/gpu/device.sh)
# Usage: tests/gpu/stage.sh DEST [BUILD]
set -eu
dest=$1
build=${2:-build/rel-cuda}
cd "$(dirname "$0")/../.."
rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/bench" "$dest/lib"
cp "$build"/tests/gpu/test_* "$build"/bench/gpu_* "$dest/bin/"
cp bin/ds-tokenize bin/ds-pretrain bin/ds-generate bin/ds-quantize bin/ds-bench-a2a "$dest/bin/"
cp bench/gpu_*.sh bench/gpu_*.py "$dest/bench/"
cp tests/gpu/device.sh tests/gpu/tap_lib.sh tests/gpu/test_tools.sh tests/gpu/test_fp8_resident.sh tests/gpu/test_nccl.sh "$dest/"
mkdir -p "$dest/share/configs" "$dest/docs" "$dest/tools"
cp share/configs/tiny.json share/configs/bench-1b.json "$dest/share/configs/"
cp docs/*.md "$dest/docs/"
cp README.md "$dest/"
cp tools/README.md "$dest/tools/"
for f in "$dest"/bin/*; do
    ldd "$f" | awk '$3 ~ /^\// { print $3 }'
done | sort -u | grep -vE '/(libc|libm|libstdc\+\+|libgcc_s|libdl|librt|libpthread|ld-linux[^/]*|libcudart|libcublas|libcublasLt)\.so' |
    xargs -r -I{} cp -L {} "$dest/lib/"
strip --strip-debug "$dest"/bin/* 2>/dev/null || true # smaller to carry to the GPU machine
du -sh "$dest"
