#!/bin/bash
# ds-generate against transformers' generate on the same random weights, threads and prompts (greedy,
# fixed lengths): prefill and decode tokens/s and their ratio; then ds-generate with --mtp against
# itself (acceptance and speed-up; on random weights the MTP module guesses, so see the note printed).
#
# Usage: bench/generate.sh [CONFIG]      (default share/configs/demo.json)
# Environment: THREADS (2), PROMPT (128 tokens), NEW (64 tokens), BATCH (4 prompts), DS_BIN, DS_PY,
# DTYPE (fp32 | bf16): bf16 runs ds-generate --dtype bf16 against transformers with torch_dtype=bfloat16
# (the "decode tokens/s" line) and against transformers in fp32 (the "decode vs fp32" line).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
CONFIG=${1:-$ROOT/share/configs/demo.json}
THREADS=${THREADS:-2} PROMPT=${PROMPT:-128} NEW=${NEW:-64} BATCH=${BATCH:-4} DTYPE=${DTYPE:-fp32}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

"$PY" "$ROOT/tests/ref/generate_ckpt.py" --config "$CONFIG" --out "$W/ck" --mtp --std 0.05
"$PY" - "$CONFIG" "$PROMPT" "$BATCH" >"$W/prompts.txt" <<'EOF'
import json, sys, torch
V = json.load(open(sys.argv[1]))["vocab_size"]
x = torch.randint(2, V, (int(sys.argv[3]), int(sys.argv[2])), generator=torch.Generator().manual_seed(0))
for row in x.tolist():
    print(" ".join(map(str, row)))
EOF

ours() { # extra options...; prints the summary record
    "$BIN/ds-generate" -m "$W/ck" --ids --temperature 0 --ignore-eos --max-new "$NEW" --batch "$BATCH" \
        --prefill-chunk $((PROMPT * BATCH)) --threads "$THREADS" --dtype "$DTYPE" -q --metrics "$W/m.jsonl" "$@" <"$W/prompts.txt" >"$W/out.txt"
    tail -1 "$W/m.jsonl"
}
ours >/dev/null # warm-up (page cache, first-touch)
o=$(ours)
t0=$(date +%s.%N)
om=$(ours --mtp)
t1=$(date +%s.%N)
ours >/dev/null
t2=$(date +%s.%N)
r=$(DS_THREADS=$THREADS "$PY" "$ROOT/tests/ref/generate_ref.py" bench "$W/ck" "$PROMPT" "$NEW" "$BATCH" "$DTYPE" 2>/dev/null)
r32=$r
[ "$DTYPE" = fp32 ] || r32=$(DS_THREADS=$THREADS "$PY" "$ROOT/tests/ref/generate_ref.py" bench "$W/ck" "$PROMPT" "$NEW" "$BATCH" 2>/dev/null)

"$PY" - "$o" "$om" "$r" "$t0" "$t1" "$t2" "$CONFIG" "$THREADS" "$PROMPT" "$NEW" "$BATCH" "$DTYPE" "$r32" <<'EOF'
import json, sys
o, om, r = (json.loads(s) for s in sys.argv[1:4])
t0, t1, t2 = map(float, sys.argv[4:7])
cfg, th, p, n, b, dt = sys.argv[7:13]
r32 = json.loads(sys.argv[13])
print(f"config {cfg.split('/')[-1]}, {th} threads, {b} prompts x {p} tokens, {n} new tokens each, greedy, weights {dt} "
      f"(transformers: {r['dtype']})")
print(f"{'':24}{'ds-generate':>14}{'transformers':>14}{'ratio':>8}")
for k, name in (("prefill_tokens_per_s", "prefill tokens/s"), ("decode_tokens_per_s", "decode tokens/s")):
    print(f"{name:24}{o[k]:14.1f}{r[k]:14.1f}{o[k] / r[k]:8.2f}")
if dt != "fp32":  # the same run of ours against transformers in float32
    for k, name in (("prefill_tokens_per_s", "prefill vs fp32"), ("decode_tokens_per_s", "decode vs fp32")):
        print(f"{name:24}{o[k]:14.1f}{r32[k]:14.1f}{o[k] / r32[k]:8.2f}")
acc = om["mtp_accepted"] / max(om["mtp_drafted"], 1)
plain_s, mtp_s = t2 - t1, t1 - t0
print(f"--mtp: {om['mtp_accepted']} of {om['mtp_drafted']} drafts accepted ({100 * acc:.1f}%), "
      f"{om['decode_steps']} decode steps vs {o['decode_steps']}; wall {mtp_s:.2f} s vs {plain_s:.2f} s "
      f"(speed-up {plain_s / mtp_s:.2f}x)")
print("note: random weights: the MTP module is untrained, so its acceptance (and any speed-up) says nothing\n"
      "      about a trained model; the numbers show the cost of drafting and verifying.")
EOF
