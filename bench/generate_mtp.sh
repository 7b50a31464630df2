#!/bin/bash
# MTP speculative decoding on a trained checkpoint: plain greedy decoding against --mtp on the same
# prompts, same threads; reports acceptance, tokens per sequence per step, decode-forward and wall
# speed-up, and checks that the two outputs are identical (greedy).
#
# Usage: bench/generate_mtp.sh CKPT [PROMPTS_FILE]   (text prompts, one per line; default: four
#        fixed English openings). Environment: THREADS (1), NEW (256), BATCH (1), REPS (3), DS_BIN.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
CKPT=$1
THREADS=${THREADS:-1} NEW=${NEW:-256} BATCH=${BATCH:-1} REPS=${REPS:-3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
if [ $# -ge 2 ]; then cp "$2" "$W/p.txt"; else printf 'This License\nYou may\nthe Program\nCopyright\n' >"$W/p.txt"; fi

run() { # mode rep
    local t0 t1
    t0=$(date +%s.%N)
    "$BIN/ds-generate" -m "$CKPT" --temperature 0 --ignore-eos --max-new "$NEW" --batch "$BATCH" --threads "$THREADS" \
        --jsonl -q --metrics "$W/m_$1_$2.jsonl" $([ "$1" = mtp ] && echo --mtp) <"$W/p.txt" >"$W/out_$1_$2.jsonl"
    t1=$(date +%s.%N)
    echo "$t0 $t1" >"$W/t_$1_$2"
}
for r in $(seq "$REPS"); do run plain "$r"; run mtp "$r"; done # interleaved: load drifts hit both
cmp <(jq -c .tokens "$W/out_plain_1.jsonl") <(jq -c .tokens "$W/out_mtp_1.jsonl") >/dev/null ||
    { echo "MTP output differs from plain greedy decoding" >&2; exit 1; }

python3 - "$W" "$REPS" "$CKPT" "$THREADS" "$NEW" "$BATCH" <<'EOF'
import json, sys, statistics as st
w, reps, ckpt, th, new, batch = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def load(mode):
    wall, dec, summ = [], [], None
    for r in range(1, reps + 1):
        t0, t1 = map(float, open(f"{w}/t_{mode}_{r}").read().split())
        summ = [json.loads(l) for l in open(f"{w}/m_{mode}_{r}.jsonl")][-1]
        wall.append(t1 - t0)
        dec.append(summ["decode_tokens_per_s"])
    return st.median(wall), st.median(dec), summ
pw, pd, ps = load("plain")
mw, md, ms = load("mtp")
acc = ms["mtp_accepted"] / max(ms["mtp_drafted"], 1)
print(f"{ckpt}: {th} threads, batch {batch}, {new} new tokens per prompt, greedy, median of {reps}")
print(f"  acceptance {100 * acc:.1f}% ({ms['mtp_accepted']} of {ms['mtp_drafted']}), "
      f"{(ms['mtp_drafted'] + ms['mtp_accepted']) / max(ms['mtp_drafted'], 1):.2f} tokens per sequence per step, "
      f"{ms['decode_steps']} decode steps vs {ps['decode_steps']}")
print(f"  main-model decode forwards: {md:.1f} vs {pd:.1f} tokens/s ({md / pd:.2f}x, MTP module time not included)")
print(f"  wall time: {mw:.2f} s vs {pw:.2f} s (speed-up {pw / mw:.2f}x); outputs identical")
EOF
