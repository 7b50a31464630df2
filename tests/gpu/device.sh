#!/bin/bash
# Runs on a lent GPU machine from a folder made by tests/gpu/stage.sh: the environment report, every GPU
# test program, and the benchmarks; logs go to $OUT (or /tmp/ds-gpu-out). Parts: env tests tools fp8 mla gemm
# train moe optim toolbench profile nccl (default: all; tools = the tools' --device cuda vs cpu test, tests/gpu/test_tools.sh;
# fp8 = FP8-resident weights on the GPU: tests/gpu/test_fp8_resident.sh, then bench/gpu_fp8_resident.sh;
# toolbench = bench/gpu_tools.sh, the tools against transformers; profile = one training run through the
# per-op timing wrapper; nccl = tests/gpu/test_nccl.sh, the NCCL transport as a world of one). ONLY="test_ops test_model_step" limits the test programs.
# moe = bench/gpu_moe.sh, one step's routed-expert time with the grouped expert GEMMs vs the per-expert
# cuBLASLt calls (DS_CUDA_GROUPED=0).
# optim = bench/gpu_optim.sh, the one-pass optimizer step (bf16 copy + gradient zeroing in the update) vs the
# separate passes (DS_FUSED_OPTIM=0): the update and the first GEMM after it.
# Usage: device.sh [part...]
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PY=${PY:-python3} PYTHONUNBUFFERED=1
# NCCL is dlopen()ed (lib/dist/nccl.h): where the system has no libnccl.so.2, PyTorch's wheel usually does
if [ -z "${DS_NCCL_LIB:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl.so.2 '; then
    nl=$($PY -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
    [ -n "$nl" ] && [ -e "$nl/libnccl.so.2" ] && export DS_NCCL_LIB=$nl/libnccl.so.2
fi
out=${OUT:-/tmp/ds-gpu-out}
mkdir -p "$out"
parts=${*:-env tests tools fp8 mla gemm train moe optim toolbench profile nccl}
has() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
summary=()
if has env; then
    {
        date -u
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu --format=csv
        nvcc --version 2>/dev/null | tail -2
        $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
        for f in bin/*; do echo "$f: $(ldd "$f" | grep -c 'not found') libraries not found"; ldd "$f" | grep 'not found'; done
        ldd bin/test_blaslt | grep -E 'cublas|cudart|gomp'
    } >"$out/env.txt" 2>&1
    cat "$out/env.txt"
fi
if has tests; then
    for t in bin/test_*; do
        n=$(basename "$t")
        [ -n "${ONLY:-}" ] && case " $ONLY " in *" $n "*) ;; *) continue ;; esac
        timeout 300 "$t" >"$out/$n.tap" 2>&1
        rc=$?
        summary+=("$n: exit $rc, $(grep -c '^ok' "$out/$n.tap") ok, $(grep -c '^not ok' "$out/$n.tap") not ok")
        grep -E '^not ok|^#' "$out/$n.tap" | head -40
    done
fi
if has tools; then
    DS_BIN=$PWD/bin DS_ROOT=$PWD DS_PY=$PY timeout ${TOOLS_TIMEOUT:-400} ./test_tools.sh >"$out/test_tools.tap" 2>&1
    rc=$?
    summary+=("test_tools: exit $rc, $(grep -c '^ok' "$out/test_tools.tap") ok, $(grep -c '^not ok' "$out/test_tools.tap") not ok")
    grep -E '^not ok|^#|^1\.\.' "$out/test_tools.tap" | head -60
fi
if has fp8; then
    DS_BIN=$PWD/bin DS_ROOT=$PWD DS_PY=$PY timeout ${FP8_TIMEOUT:-300} ./test_fp8_resident.sh >"$out/test_fp8_resident.tap" 2>&1
    rc=$?
    summary+=("test_fp8_resident: exit $rc, $(grep -c '^ok' "$out/test_fp8_resident.tap") ok, $(grep -c '^not ok' "$out/test_fp8_resident.tap") not ok")
    grep -E '^not ok|^#|^1\.\.' "$out/test_fp8_resident.tap" | head -40
    DS_BIN=$PWD/bin timeout ${FP8_BENCH_TIMEOUT:-300} bench/gpu_fp8_resident.sh >"$out/fp8_resident.txt" 2>&1
    summary+=("fp8 resident bench: exit $?")
    cat "$out/fp8_resident.txt"
fi
if has nccl; then
    DS_BIN=$PWD/bin DS_ROOT=$PWD DS_PY=$PY timeout ${NCCL_TIMEOUT:-240} ./test_nccl.sh >"$out/test_nccl.tap" 2>&1
    rc=$?
    summary+=("test_nccl: exit $rc, $(grep -c '^ok' "$out/test_nccl.tap") ok, $(grep -c '^not ok' "$out/test_nccl.tap") not ok")
    grep -E '^not ok|^#|^1\.\.' "$out/test_nccl.tap" | head -60
fi
if has mla; then
    SWEEP=${SWEEP:-} GPU_MLA=bin/gpu_mla_decode timeout 400 bench/gpu_mla_decode.sh 20 >"$out/mla.txt" 2>&1
    summary+=("mla bench: exit $?")
    sed -n '/^== MLA/,$p' "$out/mla.txt"
    # the fastest configuration per shape when swept
    awk -F'\t' '$1 ~ /^[0-9]+$/ && $11 == 0 { k = $2 " " $3 " " $4; if (!(k in b) || $5 < b[k]) { b[k] = $5; c[k] = $9 " s" $10 " " $7 "%" } }
        END { for (k in b) print "best " k ": " b[k] " ms config " c[k] }' "$out/mla.txt" | sort -k2n -k3n -k4n
fi
if has gemm; then
    GPU_GEMM=bin/gpu_gemm timeout 500 bench/gpu_gemm.sh 20 >"$out/gemm.txt" 2>&1
    summary+=("gemm bench: exit $?")
    sed -n '/^== FP8/,$p' "$out/gemm.txt"
fi
if has train; then
    GPU_TRAIN=bin/gpu_train timeout 500 bench/gpu_train.sh 8 1024 5 >"$out/train.txt" 2>&1
    summary+=("train bench: exit $?")
    grep -vE '^gpu_train: step|^torch step' "$out/train.txt"
fi
if has moe; then
    GPU_TRAIN=bin/gpu_train timeout ${MOE_TIMEOUT:-400} bench/gpu_moe.sh 8 1024 3 >"$out/moe.txt" 2>&1
    summary+=("moe bench: exit $?")
    cat "$out/moe.txt"
fi
if has optim; then
    GPU_OPTIM=bin/gpu_optim timeout ${OPTIM_TIMEOUT:-200} bench/gpu_optim.sh >"$out/optim.txt" 2>&1
    summary+=("optim bench: exit $?")
    cat "$out/optim.txt"
fi
if has toolbench; then
    DS_BIN=$PWD/bin DS_ROOT=$PWD timeout ${TOOLBENCH_TIMEOUT:-500} bench/gpu_tools.sh ${TOOLBENCH_ARGS:-} >"$out/toolbench.txt" 2>&1
    summary+=("toolbench: exit $?")
    cat "$out/toolbench.txt"
fi
if has profile; then
    ./bin/gpu_train 8 1024 3 bf16 profile 2>&1 | grep -v "step [0-9]" | head -16
fi
printf '%s\n' "${summary[@]}"
