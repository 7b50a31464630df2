#!/bin/bash
# The tools on a GPU against PyTorch/transformers on the same GPU, side by side in one run:
#   training: ds-pretrain --device cuda on share/configs/bench-1b.json (the ~1.2B MoE of bench/gpu_train.cu),
#             tokens/s and MFU from its metrics (median of the steps after the first two), against
#             bench/gpu_train_torch.py (transformers, bf16 autocast, fused AdamW) on the same config;
#   decode:   ds-generate --device cuda on the checkpoint that run wrote, greedy, fixed lengths, against
#             transformers' generate on the same checkpoint (bench/gpu_generate_torch.py, bf16).
# Usage: bench/gpu_tools.sh [steps] [batch] [seq] [gen_batch] [prompt_len] [new]
# Environment: DS_BIN (ds-tokenize, ds-pretrain, ds-generate), DS_ROOT (share/configs, docs), PY (python with
# torch + transformers), WORK (scratch, default a temp dir: the checkpoint is ~15 GB with its moments),
# DEVICE and CONFIG (defaults cuda and share/configs/bench-1b.json; a dry run of the script: cpu and tiny.json).
set -u
root=${DS_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
bin=${DS_BIN:-$root/bin}
py=${PY:-python3}
here=$(cd "$(dirname "$0")" && pwd)
S=${1:-8} B=${2:-8} T=${3:-1024} GB=${4:-8} PL=${5:-128} NEW=${6:-128}
w=${WORK:-$(mktemp -d)}
dev=${DEVICE:-cuda}
config=${CONFIG:-$root/share/configs/bench-1b.json}
mkdir -p "$w"
export OMP_WAIT_POLICY=passive
# tokens: the docs, ten times over (the content does not matter for throughput; ~0.7M tokens)
for i in 1 2 3 4 5 6 7 8 9 10; do cat "$root"/docs/*.md; done >"$w/text.txt"
"$bin/ds-tokenize" train -q --vocab-size 400 -o "$w/tok.json" "$w/text.txt"
"$bin/ds-tokenize" encode -q -t "$w/tok.json" -o "$w/shards/" --force "$w/text.txt"

echo "== training: ds-pretrain --device cuda vs transformers, ${B}x${T} tokens per step"
"$bin/ds-pretrain" --config "$config" --data "$w/shards" --tokenizer "$w/tok.json" -o "$w/ck" --force \
    --steps "$S" --batch "$B" --micro-batch "$B" --seq-len "$T" --lr 3e-4 --val-every 0 --device "$dev" \
    --metrics "$w/train.jsonl" 2>&1 | grep -vE '^ds-pretrain: step +[0-9]+/' | tail -8
ours=$("$py" - "$w/train.jsonl" "$B" "$T" <<'PY'
import json, statistics, sys
r = [x for x in map(json.loads, open(sys.argv[1])) if "step" in x]
cfg = [x for x in map(json.loads, open(sys.argv[1])) if "step" not in x]
ms = statistics.median(x["ms"] for x in r[2:]) if len(r) > 2 else float("nan")
tok = int(sys.argv[2]) * int(sys.argv[3]) / (ms / 1e3)
mfu = statistics.median(x.get("mfu", float("nan")) for x in r[2:])
print(f"ours\tds-pretrain --device cuda\tstep_ms {ms:.1f}\ttok_s {tok:.0f}\tmfu {100 * mfu:.2f}%\tloss {r[0]['loss']:.4f} -> {r[-1]['loss']:.4f}")
PY
)
echo "$ours"
theirs=$("$py" "$here/gpu_train_torch.py" "$B" "$T" 5 2>/dev/null)
echo "$theirs"
o=$(echo "$ours" | tr '\t' '\n' | awk '/^tok_s/ { print $2 }')
t=$(echo "$theirs" | tr '\t' '\n' | awk '/^tok_s/ { print $2 }')
awk -v o="$o" -v t="$t" 'BEGIN { if (t > 0) printf "training: ours / transformers tokens/s = %.2fx\n", o / t }'

echo "== decode: ds-generate --device cuda vs transformers generate, batch $GB, prompts of $PL, $NEW new tokens"
"$py" -c "
import random
r = random.Random(5)
for _ in range($GB): print(' '.join(str(r.randrange(2, 400)) for _ in range($PL)))" >"$w/prompts.txt"
"$bin/ds-generate" -m "$w/ck" --device "$dev" --ids --jsonl --temperature 0 --ignore-eos --max-new "$NEW" --batch "$GB" \
    --metrics "$w/gen.jsonl" <"$w/prompts.txt" >"$w/ours.jsonl" 2>"$w/gen.err" || tail -5 "$w/gen.err"
ours=$("$py" - "$w/gen.jsonl" <<'PY'
import json, sys
s = [x for x in map(json.loads, open(sys.argv[1])) if x.get("record") == "summary"][0]
print(f"ours\tds-generate --device cuda\tprefill_tok_s {s['prefill_tokens_per_s']:.0f}\tdecode_tok_s {s['decode_tokens_per_s']:.1f}")
PY
)
echo "$ours"
theirs=$("$py" "$here/gpu_generate_torch.py" "$w/ck" "$w/prompts.txt" "$NEW" "$w/theirs.jsonl" 2>"$w/torch_gen.err") ||
    tail -5 "$w/torch_gen.err"
echo "$theirs"
o=$(echo "$ours" | tr '\t' '\n' | awk '/^decode_tok_s/ { print $2 }')
t=$(echo "$theirs" | tr '\t' '\n' | awk '/^decode_tok_s/ { print $2 }')
awk -v o="$o" -v t="$t" 'BEGIN { if (t > 0) printf "decode: ours / transformers tokens/s = %.2fx\n", o / t }'
"$py" - "$w/ours.jsonl" "$w/theirs.jsonl" <<'PY'
import json, sys
a = sorted(map(json.loads, open(sys.argv[1])), key=lambda r: r["index"])
b = sorted(map(json.loads, open(sys.argv[2])), key=lambda r: r["index"])
same = [next((i for i, (p, q) in enumerate(zip(x["tokens"], y["tokens"])) if p != q), len(x["tokens"])) for x, y in zip(a, b)]
print(f"greedy agreement (ours fp32 activations + bf16 GEMMs, theirs bf16): first divergence at new-token index {same}")
PY
[ -z "${WORK:-}" ] && rm -rf "$w"
exit 0
