#!/bin/bash
# GPU: FP8-resident weights with --device cuda (TAP). A small model trained here on the CPU (dimensions
# multiples of 128, as cuBLASLt's block-scaled FP8 GEMM needs) and quantized by ds-quantize to DeepSeek's
# FP8 layout is decoded on the GPU with its Linear weights kept FP8 in device memory (lib/fp8/resident.h:
# activations quantized 1x128 on the device, cuBLASLt E4M3 x E4M3 with both scales) and compared with the
# CPU's emulation of the same numerics, --w8a8 (tests/bats/fp8-resident.bats covers the CPU's resident path):
#   - the "weights:" line says how many tensors stayed FP8: every Linear weight of the checkpoint but kv_b;
#   - greedy tokens equal, log-probabilities within 1e-2 (DS_CUDA_GEMM=f32 for the other GEMMs; the FP8
#     products differ from the CPU's exact block sums by the tensor cores' accumulation, ~1e-4 relative per
#     product, kernels/blaslt.h, which a requantized activation can turn into one E4M3 step of an element);
#     --score the same; MTP speculation gives the plain greedy tokens; the default bf16 mode runs;
#   - device memory: a ~100M-parameter model takes what the "weights:" line promised: the run with resident
#     weights takes less than the --fp8-expand run by the reported difference (expanded - resident), within 20%.
# Environment: DS_BIN, DS_ROOT, DS_PY (python3, standard library only), GPU_DEVICE (default cuda; cpu runs the
# script's mechanics without a GPU: the GPU-only checks then fail), DS_THREADS (CPU threads, default 8).
# Without a GPU it prints "1..0 # SKIP no GPU present".
set -u
. "$(dirname "$0")/tap_lib.sh"
threads=${DS_THREADS:-8}
# no GPU: say so before training anything (the device is opened before the checkpoint is read)
probe=$("$bin/ds-generate" -m "$w/none" --prompt x --device "$gpu" 2>&1)
case $probe in
*"no usable GPU"* | *"no CUDA backend"*) echo "1..0 # SKIP no GPU present (${probe##*: })"; exit 0 ;;
esac

# ---- data, a config whose Linear shapes cuBLASLt takes, a trained checkpoint and its FP8 form ----
make_data
mkcfg() { # OUT key=value...
    "$py" - "$root/share/configs/tiny.json" "$@" <<'EOF2'
import json, sys
c = json.load(open(sys.argv[1]))
for kv in sys.argv[3:]:
    k, v = kv.split("=")
    c[k] = int(v)
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF2
}
mkcfg "$w/small.json" hidden_size=256 intermediate_size=512 moe_intermediate_size=128 q_lora_rank=128 kv_lora_rank=128 \
    num_attention_heads=4 qk_nope_head_dim=48 qk_rope_head_dim=16 v_head_dim=32
mkcfg "$w/big.json" hidden_size=1024 intermediate_size=2048 moe_intermediate_size=512 n_routed_experts=16 \
    num_hidden_layers=4 num_nextn_predict_layers=0 q_lora_rank=256 kv_lora_rank=128 num_attention_heads=8 \
    qk_nope_head_dim=48 qk_rope_head_dim=16 v_head_dim=64
pretrain() { # CONFIG OUT STEPS
    "$bin/ds-pretrain" --config "$1" --data "$w/shards" --tokenizer "$w/tok.json" --batch 8 --seq-len 64 --seed 7 \
        --steps "$3" --lr-schedule "linear:0.01@0,0.002@$3" --val-every 0 --threads "$threads" -q -o "$2" --device cpu
}
pretrain "$w/small.json" "$w/ck" 40 && "$bin/ds-quantize" -m "$w/ck" -o "$w/ck8" --to fp8 -q ||
    { echo "Bail out! training or quantizing the small model"; exit 1; }

gen() { # DEVICE OUT [extra...]
    local dev=$1 out=$2
    shift 2
    "$bin/ds-generate" -m "$w/ck8" --ids --jsonl --temperature 0 --ignore-eos --max-new 24 --batch 3 --threads "$threads" \
        --device "$dev" "$@" <"$w/prompts.txt" >"$out"
}
DS_CUDA_GEMM=f32 gen "$gpu" "$w/g_gpu.jsonl" 2>"$w/g_gpu.err"
st=$?
[ "$st" -eq 0 ] || tail -5 "$w/g_gpu.err" | note
check $st "ds-generate --device cuda on an FP8 checkpoint (fp32 GEMMs elsewhere)"
grep -E "^(weights|device memory):" "$w/g_gpu.err" | note
# the FP8 tensors the checkpoint holds (from the safetensors headers), but kv_b (expanded by design)
want=$("$py" - "$w/ck8" <<'EOF2'
import glob, json, struct, sys
n = 0
for f in glob.glob(sys.argv[1] + "/*.safetensors"):
    with open(f, "rb") as h:
        hdr = json.loads(h.read(struct.unpack("<Q", h.read(8))[0]))
    n += sum(1 for k, v in hdr.items() if k != "__metadata__" and v["dtype"] == "F8_E4M3" and "kv_b_proj" not in k)
print(n)
EOF2
)
got=$(sed -n 's/^weights: .* on the GPU: FP8 Linear weights .* GiB (E4M3 codes and block scales, \([0-9]*\) tensors).*/\1/p' "$w/g_gpu.err")
echo "# FP8-resident tensors on the GPU: ${got:-none} (the checkpoint's FP8 tensors but kv_b: $want)"
[ -n "$got" ] && [ "$got" -eq "$want" ] && [ "$want" -gt 0 ]
check $? "every FP8 Linear weight but kv_b stays FP8 on the GPU (the weights: line)"

gen cpu "$w/g_w8a8.jsonl" --w8a8 2>/dev/null
check $? "ds-generate --device cpu --w8a8 (the CPU's emulation of the same numerics)"
cmp_gen "$w/g_w8a8.jsonl" "$w/g_gpu.jsonl" 1e-2
check $? "greedy with FP8-resident weights on the GPU = --w8a8 on the CPU (tokens; log-probs within 1e-2)"
DS_CUDA_GEMM=f32 gen "$gpu" "$w/g_abs.jsonl" --prefill absorbed --prefill-chunk 4 2>/dev/null &&
    cmp_gen "$w/g_w8a8.jsonl" "$w/g_abs.jsonl" 1e-2
check $? "the same with absorbed prefill in chunks of 4"
DS_CUDA_GEMM=f32 gen "$gpu" "$w/g_mtp.jsonl" --mtp 2>/dev/null && cmp_gen "$w/g_gpu.jsonl" "$w/g_mtp.jsonl" 1e-3
check $? "MTP speculation with FP8-resident weights on the GPU = plain greedy there"
sc() { "$bin/ds-generate" -m "$w/ck8" --score --ids --threads "$threads" -q --device "$@" <"$w/prompts.txt"; }
sc cpu --w8a8 >"$w/s_cpu.jsonl" && DS_CUDA_GEMM=f32 sc "$gpu" >"$w/s_gpu.jsonl"
check $? "--score with FP8-resident weights on the GPU and --w8a8 on the CPU"
cmp_score "$w/s_cpu.jsonl" "$w/s_gpu.jsonl" 1e-2
check $? "--score on the GPU (FP8-resident) = the CPU's --w8a8 within 1e-2"
gen "$gpu" "$w/g_bf16.jsonl" 2>/dev/null
check $? "FP8-resident decoding with the default bf16 GEMMs elsewhere"
cmp_first "$w/g_w8a8.jsonl" "$w/g_bf16.jsonl" 5e-2
check $? "bf16 elsewhere: first token's log-probability within 5e-2 of --w8a8 on the CPU, all finite"

# ---- device memory of a ~100M-parameter model: resident vs expanded, against the report ----
pretrain "$w/big.json" "$w/big" 1 && "$bin/ds-quantize" -m "$w/big" -o "$w/big8" --to fp8 -q
check $? "a ~100M-parameter model trained one step and quantized"
run_big() { # OUT [extra...]
    local out=$1
    shift
    "$bin/ds-generate" -m "$w/big8" --ids --temperature 0 --ignore-eos --max-new 8 --batch 1 --threads "$threads" -v \
        --device "$gpu" "$@" <<<"5 17 42 9" >/dev/null 2>"$out"
}
run_big "$w/mem_res.err" && run_big "$w/mem_exp.err" --fp8-expand
check $? "the big model decodes on the GPU with resident and with expanded weights"
grep -hE "^(weights|device memory):" "$w/mem_res.err" "$w/mem_exp.err" | note
"$py" - "$w/mem_res.err" "$w/mem_exp.err" <<'EOF2'
import re, sys
def grab(path):
    text = open(path).read()
    w = re.search(r"^weights: ([0-9.]+) GiB .*?expanded they would take ([0-9.]+) GiB", text, re.M)
    e = re.search(r"^weights: ([0-9.]+) GiB on the GPU \(fp32", text, re.M)
    u = re.search(r"^device memory: ([0-9.]+) GiB", text, re.M)
    return w, e, u
w, _, ur = grab(sys.argv[1])
_, e, ue = grab(sys.argv[2])
if not (w and e and ur and ue):
    print("# missing report lines"); sys.exit(1)
total, expanded, used_res, used_exp = float(w[1]), float(w[2]), float(ur[1]), float(ue[1])
promised, measured = expanded - total, used_exp - used_res
print(f"# reported: resident {total:.3f} GiB, expanded {expanded:.3f} GiB (the --fp8-expand run reported {float(e[1]):.3f}); "
      f"device memory taken: resident {used_res:.3f} GiB, expanded {used_exp:.3f} GiB; saving {measured:.3f} GiB of {promised:.3f} promised")
ok = abs(float(e[1]) - expanded) <= 0.01 * expanded and 0.8 * promised <= measured <= 1.2 * promised and used_res >= total
sys.exit(0 if ok else 1)
EOF2
check $? "device memory: resident saves what the weights: line promised (expanded - resident) within 20%"
echo "1..$n"
exit $failed
