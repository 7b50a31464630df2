#!/bin/bash
# GPU end-to-end through the tools (TAP): ds-pretrain and ds-generate with --device cuda against the same
# commands with --device cpu, on share/configs/tiny.json and a tokenizer + shards made here from the repo's
# own documentation (so nothing but the tools is needed: it runs from `make test-gpu` and from the folder
# tests/gpu/stage.sh builds for a lent GPU machine).
#   training: per-step losses and gradient norms of a few optimizer steps (exact fp32 GEMMs: DS_CUDA_GEMM=f32;
#             and the default bf16 GEMMs, to bf16 tolerance; the one-pass optimizer equal to DS_FUSED_OPTIM=0's
#             separate passes, exactly); --bf16 training against --bf16 on the CPU; a run stopped and resumed on
#             the GPU follows the
#             uninterrupted one (moments saved and loaded through the optimizer seam); the GPU's checkpoint
#             loads on the CPU and scores the same.
#   generation: greedy decoding (fp32 GEMMs) gives the CPU's tokens, log-probabilities within 1e-3, with
#             naive and absorbed prefill and with MTP speculation, and with rope_interleave false; --score
#             agrees; bf16 GEMMs decode.
# Environment: DS_BIN (the tools; default bin/), DS_ROOT, DS_PY (python3 with the standard library only),
# GPU_DEVICE (default cuda; cpu runs the script's own mechanics on a machine without a GPU).
# Without a GPU it prints "1..0 # SKIP no GPU present".
set -u
. "$(dirname "$0")/tap_lib.sh"
cfg=${DS_TINY_CONFIG:-$root/share/configs/tiny.json}

# ---- data: a 400-token BPE over the docs, its shards ----
make_data

# schedules with absolute knees, so a run of 3 steps resumed to 6 sees the same values as a run of 6
targs=(--config "$cfg" --data "$w/shards" --tokenizer "$w/tok.json" --batch 8 --micro-batch 4 --seq-len 64 --seed 7
       --lr-schedule 'linear:0.01@0,0.002@6' --gamma 0.001 --lambda 0.3 --val-every 0 --peak-tflops 1 --threads 4 -q)
train() { # DEVICE OUT METRICS [extra...]
    local dev=$1 out=$2 met=$3
    shift 3
    "$bin/ds-pretrain" "${targs[@]}" -o "$out" --steps 6 --metrics "$met" --device "$dev" "$@"
}

# per-step comparison of two metrics files: max relative difference of a key over the steps
cmp_metrics() { # A B KEY TOL [FIRST_ONLY]
    "$py" - "$@" <<'EOF'
import json, sys
a, b, key, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
first = len(sys.argv) > 5
ra = [r for r in map(json.loads, open(a)) if "step" in r]
rb = [r for r in map(json.loads, open(b)) if "step" in r]
if len(ra) != len(rb) or not ra:
    print(f"# {len(ra)} vs {len(rb)} step records"); sys.exit(1)
if first: ra, rb = ra[:1], rb[:1]
worst = max(abs(x[key] - y[key]) / max(abs(x[key]), 1e-12) for x, y in zip(ra, rb))
print(f"# {key}: max relative difference {worst:.3g} over {len(ra)} step(s) (tolerance {tol:g}); "
      f"last {ra[-1][key]:.6f} vs {rb[-1][key]:.6f}")
sys.exit(0 if worst <= tol else 1)
EOF
}

if ! err=$(DS_CUDA_GEMM=f32 train "$gpu" "$w/gpu32" "$w/gpu32.jsonl" 2>&1); then
    case $err in
    *"no usable GPU"* | *"no CUDA backend"*) echo "1..0 # SKIP no GPU present (${err##*: })"; exit 0 ;;
    esac
    echo "$err" | tail -5 | note
    check 1 "ds-pretrain --device cuda runs (fp32 GEMMs)"
else
    check 0 "ds-pretrain --device cuda runs (fp32 GEMMs)"
fi
train cpu "$w/cpu" "$w/cpu.jsonl" 2>&1 | tail -3 | note
check "${PIPESTATUS[0]}" "ds-pretrain --device cpu runs"
cmp_metrics "$w/cpu.jsonl" "$w/gpu32.jsonl" loss 1e-5 first
check $? "step 1 loss: GPU (fp32 GEMMs) = CPU within 1e-5"
cmp_metrics "$w/cpu.jsonl" "$w/gpu32.jsonl" grad_norm 1e-4 first
check $? "step 1 gradient norm: GPU (fp32 GEMMs) = CPU within 1e-4"
cmp_metrics "$w/cpu.jsonl" "$w/gpu32.jsonl" loss 1e-3
check $? "6 steps of losses: GPU (fp32 GEMMs) follows the CPU within 1e-3"
cmp_metrics "$w/cpu.jsonl" "$w/gpu32.jsonl" loss_mtp 1e-3
check $? "6 steps of MTP losses: GPU (fp32 GEMMs) follows the CPU within 1e-3"
train "$gpu" "$w/gpu16" "$w/gpu16.jsonl" 2>&1 | tail -3 | note
check "${PIPESTATUS[0]}" "ds-pretrain --device cuda runs (bf16 GEMMs, the default)"
cmp_metrics "$w/cpu.jsonl" "$w/gpu16.jsonl" loss 5e-3 first
check $? "step 1 loss: GPU (bf16 GEMMs) = CPU within 5e-3"
cmp_metrics "$w/cpu.jsonl" "$w/gpu16.jsonl" loss 3e-2
check $? "6 steps of losses: GPU (bf16 GEMMs) follows the CPU within 3e-2"
# the optimizer in one pass (train/optim.h): the bf16 weights the GEMMs read written by the update, the
# gradients zeroed by it; DS_FUSED_OPTIM=0 is the separate conversion and zeroing passes. The same bits
# either way (the GPU path is deterministic: no floating-point atomics).
DS_FUSED_OPTIM=0 train "$gpu" "$w/gpu16u" "$w/gpu16u.jsonl" 2>&1 | tail -3 | note
check "${PIPESTATUS[0]}" "ds-pretrain --device cuda runs with DS_FUSED_OPTIM=0 (separate passes)"
cmp_metrics "$w/gpu16u.jsonl" "$w/gpu16.jsonl" loss 0
check $? "6 steps, bf16 GEMMs: the one-pass optimizer gives the separate passes' losses exactly"
cmp_metrics "$w/gpu16u.jsonl" "$w/gpu16.jsonl" grad_norm 0
check $? "6 steps, bf16 GEMMs: the one-pass optimizer gives the separate passes' gradient norms exactly"
cmp -s "$w/gpu16u/model.safetensors" "$w/gpu16/model.safetensors"
check $? "6 steps, bf16 GEMMs: the one-pass optimizer gives the separate passes' weights byte for byte"

# --bf16 on the GPU (ops/bf16.h around the CUDA table: cuBLASLt on bf16 operands, outputs and activations
# stored in bf16 by the CUDA rounding kernel) against --bf16 on the CPU (AMX or sgemm on the same bf16
# operands, the same storage rounding). What differs is the order of fp32 sums and, inside attention, the GPU's
# bf16 probabilities (ops_attn_tc.cu, flash attention's numerics) where the CPU keeps fp32: the tolerances of
# the default bf16 GEMMs above (5e-3 at step 1, 3e-2 over 6 steps). Not vacuous: the --bf16 run's losses are not
# the default GPU run's (the same GEMM operands, fp32 storage).
train "$gpu" "$w/gpub" "$w/gpub.jsonl" --bf16 2>&1 | tail -3 | note
check "${PIPESTATUS[0]}" "ds-pretrain --bf16 --device cuda runs"
train cpu "$w/cpub" "$w/cpub.jsonl" --bf16 2>&1 | tail -3 | note
check "${PIPESTATUS[0]}" "ds-pretrain --bf16 --device cpu runs"
cmp_metrics "$w/cpub.jsonl" "$w/gpub.jsonl" loss 5e-3 first
check $? "--bf16, step 1 loss: GPU = CPU within 5e-3"
cmp_metrics "$w/cpub.jsonl" "$w/gpub.jsonl" loss 3e-2
check $? "--bf16, 6 steps of losses: GPU follows the CPU within 3e-2"
! cmp_metrics "$w/gpu16.jsonl" "$w/gpub.jsonl" loss 0 >/dev/null
check $? "--bf16 on the GPU is not the default GPU run (bf16 storage rounds)"
grep -q '"bf16_gemm":"cublaslt"' "$w/gpub.jsonl" || [ "$gpu" = cpu ]
check $? "the record names the GPU's bf16 GEMMs"
if [ "$gpu" = cuda ]; then
    err=$(DS_CUDA_GEMM=f32 train "$gpu" "$w/gpubf" "$w/gpubf.jsonl" --bf16 2>&1)
    rc=$?
    echo "$err" | note
    [ $rc -eq 2 ] && [ "$(echo "$err" | grep -c 'error:')" -eq 1 ] &&
        [[ "$err" == *"ds-pretrain: error: --bf16 --device cuda: DS_CUDA_GEMM=f32 in the environment"* ]]
    check $? "--bf16 with DS_CUDA_GEMM=f32 is refused in one line (exit 2)"
fi

# stop after 3 steps, resume to 6, on the GPU (fp32 GEMMs): the moments and biases travel through the checkpoint
DS_CUDA_GEMM=f32 "$bin/ds-pretrain" "${targs[@]}" -o "$w/part" --steps 3 --metrics "$w/part.jsonl" --device "$gpu" 2>&1 |
    tail -3 | note
DS_CUDA_GEMM=f32 "$bin/ds-pretrain" "${targs[@]}" -o "$w/part" --steps 6 --metrics "$w/part.jsonl" --device "$gpu" \
    --resume "$w/part" 2>&1 | tail -3 | note
check "${PIPESTATUS[0]}" "ds-pretrain --device cuda --resume continues a GPU checkpoint"
cmp_metrics "$w/gpu32.jsonl" "$w/part.jsonl" loss 1e-4
check $? "stopped at 3 and resumed to 6: losses follow the uninterrupted GPU run within 1e-4"
cmp_metrics "$w/gpu32.jsonl" "$w/part.jsonl" grad_norm 1e-3
check $? "stopped at 3 and resumed to 6: gradient norms follow the uninterrupted GPU run within 1e-3"

# ---- generation from the CPU-trained checkpoint ----
ck=$w/cpu
gen() { # DEVICE OUT [extra...]
    local dev=$1 out=$2
    shift 2
    "$bin/ds-generate" -m "$ck" --ids --jsonl --temperature 0 --ignore-eos --max-new 24 --batch 3 --threads 4 -q \
        --device "$dev" "$@" <"$w/prompts.txt" >"$out"
}
gen cpu "$w/g_cpu.jsonl"
check $? "ds-generate --device cpu greedy"
DS_CUDA_GEMM=f32 gen "$gpu" "$w/g_gpu.jsonl"
check $? "ds-generate --device cuda greedy (fp32 GEMMs)"
cmp_gen "$w/g_cpu.jsonl" "$w/g_gpu.jsonl" 1e-3
check $? "greedy on the GPU = greedy on the CPU (naive prefill)"
DS_CUDA_GEMM=f32 gen "$gpu" "$w/g_abs.jsonl" --prefill absorbed --prefill-chunk 4
cmp_gen "$w/g_cpu.jsonl" "$w/g_abs.jsonl" 1e-3
check $? "greedy on the GPU with absorbed prefill in chunks of 4 = the CPU's"
DS_CUDA_GEMM=f32 gen "$gpu" "$w/g_mtp.jsonl" --mtp
cmp_gen "$w/g_cpu.jsonl" "$w/g_mtp.jsonl" 1e-3
check $? "MTP speculative decoding on the GPU = plain greedy on the CPU"
gen "$gpu" "$w/g_bf16.jsonl"
check $? "ds-generate --device cuda with bf16 GEMMs (the default)"
cmp_first "$w/g_cpu.jsonl" "$w/g_bf16.jsonl" 5e-2
check $? "bf16 GEMMs: first token's log-probability within 5e-2 of the CPU, all finite"
# the same weights read in the rotate-half layout (rope_interleave false): every attention path on the GPU
cp -r "$ck" "$w/halves"
"$py" - "$w/halves/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["rope_interleave"] = False
json.dump(c, open(sys.argv[1], "w"), indent=2)
EOF
ck=$w/halves gen cpu "$w/h_cpu.jsonl" && DS_CUDA_GEMM=f32 ck=$w/halves gen "$gpu" "$w/h_gpu.jsonl" &&
    DS_CUDA_GEMM=f32 ck=$w/halves gen "$gpu" "$w/h_abs.jsonl" --prefill absorbed --prefill-chunk 4
check $? "ds-generate with rope_interleave false on both devices"
cmp_gen "$w/h_cpu.jsonl" "$w/h_gpu.jsonl" 1e-3 && cmp_gen "$w/h_cpu.jsonl" "$w/h_abs.jsonl" 1e-3
check $? "rope_interleave false: greedy on the GPU (naive and absorbed prefill) = the CPU's"
sc() { "$bin/ds-generate" -m "$1" --score --ids --threads 4 -q --device "$2" <"$w/prompts.txt"; }
sc "$ck" cpu >"$w/s_cpu.jsonl" && DS_CUDA_GEMM=f32 sc "$ck" "$gpu" >"$w/s_gpu.jsonl" && sc "$w/gpu32" cpu >"$w/s_gck.jsonl"
check $? "ds-generate --score on both devices, and the GPU's checkpoint on the CPU"
cmp_score "$w/s_cpu.jsonl" "$w/s_gpu.jsonl" 1e-4
check $? "--score on the GPU = the CPU's within 1e-4"
"$py" - "$w/s_gck.jsonl" "$w/gpu32.jsonl" <<'EOF'
import json, sys
r = list(map(json.loads, open(sys.argv[1])))
print(f"# GPU-trained checkpoint scored on the CPU: mean logprob {sum(x['sum_logprob'] for x in r) / sum(x['n_scored'] for x in r):.4f}")
sys.exit(0 if len(r) == 3 and all(x["n_scored"] > 0 for x in r) else 1)
EOF
check $? "the GPU's checkpoint (config, weights, biases, tokenizer) loads and runs on the CPU"
echo "1..$n"
exit $failed
