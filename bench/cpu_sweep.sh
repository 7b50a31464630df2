#!/bin/bash
# Training speed on the CPU across widths: ds-pretrain against PyTorch training transformers'
# DeepseekV3ForCausalLM on the same config, side by side in one run (bench/pretrain.sh for each point),
# over hidden sizes 256, 768 and 1536 and routed-expert widths 256-1024. Shows where the gap to PyTorch
# and to the sgemm peak opens.
#
# usage: bench/cpu_sweep.sh [--repeat R] [--threads N] [--batch B] [--seq-len T] [--steps S] [--points LIST] [--bf16]
#   defaults: 2 repeats of every point, all cores, 4 x 256 tokens, 3 measured steps after 1 warm-up step;
#   LIST: hidden:expert-width pairs, default "256:256 768:256 768:512 768:1024 1536:512 1536:1024".
# The configs (written here, MTP off): V3's shape scaled to the hidden size d: 4 layers (the first dense,
# FFN width 2d), d/64 heads with V3's per-head dims (q/k 32+16 rope, v 32), q_lora d·3/8, kv_lora d/4,
# 16 routed experts (top-4 of 4 groups, 2 kept) + 1 shared of the given width, vocabulary 4096.
# Per point it prints the best (min ms) and median over the repeats of both sides' ms/step, the ratio of
# the medians, and ds-pretrain's achieved GFLOP/s (the docs/METRICS.md count) against the measured sgemm peak.
# --bf16 adds both sides in bf16 to every repeat (ds-pretrain --bf16 against PyTorch under
# torch.autocast("cpu", bfloat16), bench/pretrain.sh --bf16) and a second table: bf16 ms/step, their ratio
# (wall and CPU time), the fp32 ratio of the same repeats, and each side's bf16 speed-up over its fp32 step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
R=2 THREADS=$(nproc) B=4 T=256 STEPS=3 POINTS="256:256 768:256 768:512 768:1024 1536:512 1536:1024" BF16=
while [ $# -gt 0 ]; do
    case $1 in
    --repeat) R=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --batch) B=$2; shift 2 ;;
    --seq-len) T=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --points) POINTS=$2; shift 2 ;;
    --bf16) BF16=--bf16; shift ;;
    *) echo "usage: $0 [--repeat R] [--threads N] [--batch B] [--seq-len T] [--steps S] [--points LIST] [--bf16]" >&2; exit 2 ;;
    esac
done
[ -x bin/ds-pretrain ] || make -j"$(nproc)" >/dev/null
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, $THREADS threads, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "# batch $B x seq $T, $STEPS measured steps after 1 warm-up, $R repeats; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for p in $POINTS; do
    d=${p%:*} ie=${p#*:}
    "$PY" - "$d" "$ie" "$W/cfg-$d-$ie.json" <<'PYEOF'
import json, sys
d, ie, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = json.load(open("share/configs/demo.json"))
c.update(hidden_size=d, num_hidden_layers=4, first_k_dense_replace=1, intermediate_size=2 * d,
         num_attention_heads=d // 64, num_key_value_heads=d // 64, q_lora_rank=d * 3 // 8, kv_lora_rank=d // 4,
         qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=ie, n_routed_experts=16,
         num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1, vocab_size=4096,
         num_nextn_predict_layers=0)
json.dump(c, open(out, "w"), indent=1)
PYEOF
    for r in $(seq "$R"); do
        bench/pretrain.sh --config "$W/cfg-$d-$ie.json" --threads "$THREADS" --batch "$B" --seq-len "$T" --steps "$STEPS" \
            --warmup 1 $BF16 2>/dev/null | tail -1 >>"$W/res-$d-$ie.jsonl"
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$W" $POINTS <<'PYEOF'
import json, statistics, sys
w, points = sys.argv[1], sys.argv[2:]
print(f"{'hidden':>6s} {'expert':>6s} | {'ours ms min/med':>17s} | {'torch ms min/med':>17s} | {'ours/torch':>10s} | "
      f"{'CPU ms ours/torch':>17s} | {'CPU ratio':>9s} | {'ours GFLOP/s':>12s} | {'torch GFLOP/s':>13s} | {'sgemm peak':>10s}")
out = []
for p in points:
    d, ie = p.split(":")
    rs = [json.loads(l) for l in open(f"{w}/res-{d}-{ie}.jsonl")]
    o = [r["ours_ms"] for r in rs]
    t = [r["torch_ms"] for r in rs]
    om, tm = statistics.median(o), statistics.median(t)
    oc = statistics.median(r["ours_cpu_ms"] for r in rs)
    tc = statistics.median(r["torch_cpu_ms"] for r in rs)
    tok = rs[0]["ours_tok_s"] * rs[0]["ours_ms"] / 1e3  # tokens per step
    fl = rs[0]["flops_per_token"] * tok
    peak = max(r["peak"] for r in rs)
    print(f"{d:>6s} {ie:>6s} | {min(o):8.0f}/{om:8.0f} | {min(t):8.0f}/{tm:8.0f} | {tm / om:9.2f}x | "
          f"{oc:8.0f}/{tc:8.0f} | {tc / oc:8.2f}x | {fl / (om / 1e3) / 1e9:12.1f} | {fl / (tm / 1e3) / 1e9:13.1f} | "
          f"{peak / 1e9:10.1f}")
    out.append({"hidden": int(d), "expert_width": int(ie), "ours_ms": o, "torch_ms": t, "ratio": tm / om,
                "cpu_ratio": tc / oc, "ours_gflops": fl / (om / 1e3) / 1e9, "peak_gflops": peak / 1e9})
if "bf16_ratio" in rs[0]:
    print(f"{'hidden':>6s} {'expert':>6s} | {'bf16 ours ms':>12s} | {'bf16 torch ms':>13s} | {'bf16 ratio':>10s} | "
          f"{'CPU ratio':>9s} | {'fp32 ratio':>10s} | {'ours bf16/fp32':>14s} | {'torch bf16/fp32':>15s} | "
          f"{'ours bf16 GFLOP/s':>17s}")
    for p, r in zip(points, out):
        d, ie = p.split(":")
        rs = [json.loads(l) for l in open(f"{w}/res-{d}-{ie}.jsonl")]
        ob = statistics.median(x["ours_bf16_ms"] for x in rs)
        tb = statistics.median(x["torch_bf16_ms"] for x in rs)
        om = statistics.median(r["ours_ms"])
        tm = statistics.median(r["torch_ms"])
        cr = statistics.median(x["torch_bf16_cpu_ms"] for x in rs) / statistics.median(x["ours_bf16_cpu_ms"] for x in rs)
        tok = rs[0]["ours_tok_s"] * rs[0]["ours_ms"] / 1e3
        fl = rs[0]["flops_per_token"] * tok
        print(f"{d:>6s} {ie:>6s} | {ob:12.0f} | {tb:13.0f} | {tb / ob:9.2f}x | {cr:8.2f}x | {r['ratio']:9.2f}x | "
              f"{om / ob:13.2f}x | {tm / tb:14.2f}x | {fl / (ob / 1e3) / 1e9:17.1f}")
        r.update(ours_bf16_ms=[x["ours_bf16_ms"] for x in rs], torch_bf16_ms=[x["torch_bf16_ms"] for x in rs],
                 bf16_ratio=tb / ob, bf16_cpu_ratio=cr)
for r in out:
    print(json.dumps(r))
PYEOF
