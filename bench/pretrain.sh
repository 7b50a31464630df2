#!/bin/bash
# Training throughput on the CPU: ds-pretrain against PyTorch training the same transformers model
# (DeepseekV3ForCausalLM, fp32, AdamW + clipping, same batch, sequence length and threads), in one run.
# Prints tokens/s, ms/step (median after warm-up) and MFU of both with the same FLOPs-per-token formula
# and the same peak (docs/METRICS.md), then the ratio.
#
# usage: bench/pretrain.sh [--config CFG] [--threads N] [--batch B] [--seq-len T] [--steps S] [--warmup W] [--mtp] [--bf16]
#   defaults: share/configs/demo.json, all cores, 8 x 256, 8 measured steps after 2 warm-up steps (W).
#   The MTP module is switched off in the config for both sides (transformers does not train it);
#   --mtp adds a row for ds-pretrain with MTP on. --bf16 adds both sides in bf16: ds-pretrain --bf16 against
#   PyTorch under torch.autocast("cpu", bfloat16) (bench/pretrain_torch.py --bf16), after the fp32 pair.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
CFG=share/configs/demo.json THREADS=$(nproc) B=8 T=256 STEPS=8 WARM=2 MTP=0 BF16=0
while [ $# -gt 0 ]; do
    case $1 in
    --config) CFG=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --batch) B=$2; shift 2 ;;
    --seq-len) T=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --warmup) WARM=$2; shift 2 ;;
    --mtp) MTP=1; shift ;;
    --bf16) BF16=1; shift ;;
    *) echo "usage: $0 [--config CFG] [--threads N] [--batch B] [--seq-len T] [--steps S] [--warmup W] [--mtp] [--bf16]" >&2; exit 2 ;;
    esac
done
[ -x bin/ds-pretrain ] || make -j"$(nproc)" >/dev/null
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

# the same model for both sides: MTP off; random tokens (speed does not depend on what is learned)
"$PY" - "$CFG" "$W" "$B" "$T" "$STEPS" "$WARM" <<'PYEOF'
import json, random, struct, sys
cfg, w, b, t, steps, warm = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
c = json.load(open(cfg))
json.dump(c, open(f"{w}/mtp.json", "w"))
c["num_nextn_predict_layers"] = 0
json.dump(c, open(f"{w}/nomtp.json", "w"))
r = random.Random(0)
need = (steps + warm + 4) * b * (t + 1) * 2
toks = []
while len(toks) < need:
    toks += [r.randrange(2, c["vocab_size"]) for _ in range(r.randint(200, 2000))] + [1]
open(f"{w}/tokens.u32", "wb").write(struct.pack(f"<{len(toks)}I", *toks))
PYEOF
"$PY" tests/ref/shard_ref.py encode "$W/tokens.u32" "$W/data.tok" "$("$PY" -c "import json;print(json.load(open('$CFG'))['vocab_size'])")" 1 65536 >/dev/null

# idle OpenMP threads sleep instead of spinning: on a shared machine spinning steals the other side's cores
export OMP_WAIT_POLICY=passive
ours() { # config label [peak TFLOP/s [more options]]
    OMP_NUM_THREADS=$THREADS bin/ds-pretrain --config "$1" --data "$W/data.tok" -o "$W/ck-$2" --steps $((STEPS + WARM)) \
        --batch "$B" --seq-len "$T" --threads "$THREADS" --val-frac 0 --log-every 0 --metrics "$W/$2.jsonl" -q \
        --peak-tflops "${3:-0}" "${@:4}"
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores, $THREADS threads)" >&2
ours "$W/nomtp.json" ours   # measures the sgemm peak once; every MFU below uses it
PEAK=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['config']['peak_flops'] / 1e12)" "$W/ours.jsonl")
if [ "$MTP" = 1 ]; then ours "$W/mtp.json" ours_mtp "$PEAK"; fi
OMP_NUM_THREADS=$THREADS "$PY" bench/pretrain_torch.py --config "$W/nomtp.json" --batch "$B" --seq-len "$T" --steps "$STEPS" \
    --warmup "$WARM" --threads "$THREADS" >"$W/torch.json" 2>/dev/null
if [ "$BF16" = 1 ]; then
    ours "$W/nomtp.json" ours_bf16 "$PEAK" --bf16
    OMP_NUM_THREADS=$THREADS "$PY" bench/pretrain_torch.py --config "$W/nomtp.json" --batch "$B" --seq-len "$T" \
        --steps "$STEPS" --warmup "$WARM" --threads "$THREADS" --bf16 >"$W/torch_bf16.json" 2>/dev/null
fi
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PY" - "$W" "$WARM" "$MTP" "$B" "$T" "$THREADS" "$CFG" "$(git rev-parse --short HEAD)" "$BF16" <<'PYEOF'
import json, statistics, sys
w, warm, mtp, b, t, threads, cfg, rev, bf16 = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", *sys.argv[4:]
bf16 = bf16 == "1"

def ours(name):
    recs = [json.loads(l) for l in open(f"{w}/{name}.jsonl")]
    conf = recs[0]["config"]
    steps = [r for r in recs if "step" in r][warm:]
    ms = statistics.median(r["ms"] for r in steps)
    cpu = statistics.median(r["cpu_ms"] for r in steps)
    return {"ms": ms, "cpu_ms": cpu, "tok_s": int(b) * int(t) / (ms / 1e3), "flops": conf["flops_per_token"],
            "peak": conf["peak_flops"]}

o = ours("ours")
tr = json.load(open(f"{w}/torch.json"))
rows = [("ds-pretrain", o["ms"], o["cpu_ms"], o["tok_s"], o["tok_s"] * o["flops"] / o["peak"]),
        (f"torch {tr['torch']} + transformers", tr["ms_median"], tr["cpu_ms_median"], tr["tok_s"],
         tr["tok_s"] * o["flops"] / o["peak"])]
if bf16:
    ob, tb = ours("ours_bf16"), json.load(open(f"{w}/torch_bf16.json"))
    rows += [("ds-pretrain --bf16", ob["ms"], ob["cpu_ms"], ob["tok_s"], ob["tok_s"] * ob["flops"] / ob["peak"]),
             (f"torch {tb['torch']} autocast bf16", tb["ms_median"], tb["cpu_ms_median"], tb["tok_s"],
              tb["tok_s"] * o["flops"] / o["peak"])]
if mtp:
    m = ours("ours_mtp")
    rows.insert(1, ("ds-pretrain, MTP on", m["ms"], m["cpu_ms"], m["tok_s"], m["tok_s"] * m["flops"] / m["peak"]))
print(f"# {cfg} without MTP, batch {b} x seq {t}, {threads} threads, commit {rev}")
print(f"# FLOPs/token {o['flops']:.4g} (docs/METRICS.md), peak {o['peak'] / 1e9:.1f} GFLOP/s (measured sgemm)")
print(f"{'':34s} {'ms/step':>9s} {'CPU ms':>9s} {'tok/s':>9s} {'MFU':>7s}")
for name, ms, cms, ts, mfu in rows:
    print(f"{name:34s} {ms:9.1f} {cms:9.1f} {ts:9.0f} {100 * mfu:6.1f}%")
print(f"ratio ds-pretrain / torch: {o['tok_s'] / tr['tok_s']:.2f}x tokens/s, {tr['cpu_ms_median'] / o['cpu_ms']:.2f}x in CPU time")
extra = {}
if bf16:
    print(f"ratio in bf16: {ob['tok_s'] / tb['tok_s']:.2f}x tokens/s, {tb['cpu_ms_median'] / ob['cpu_ms']:.2f}x in CPU time")
    extra = {"ours_bf16_ms": ob["ms"], "torch_bf16_ms": tb["ms_median"], "ours_bf16_cpu_ms": ob["cpu_ms"],
             "torch_bf16_cpu_ms": tb["cpu_ms_median"], "bf16_ratio": ob["tok_s"] / tb["tok_s"]}
print(json.dumps({**extra, "ours_tok_s": o["tok_s"], "torch_tok_s": tr["tok_s"], "ratio": o["tok_s"] / tr["tok_s"],
                  "ours_ms": o["ms"], "torch_ms": tr["ms_median"], "ours_cpu_ms": o["cpu_ms"], "torch_cpu_ms": tr["cpu_ms_median"],
                  "flops_per_token": o["flops"], "peak": o["peak"],
                  "cpu_ratio": tr["cpu_ms_median"] / o["cpu_ms"],
                  "ours_mfu": o["tok_s"] * o["flops"] / o["peak"], "torch_mfu": tr["tok_s"] * o["flops"] / o["peak"]}))
PYEOF
