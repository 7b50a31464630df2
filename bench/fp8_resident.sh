#!/bin/bash
# FP8-resident weights against the expanded ones (--fp8-expand) on the same FP8 checkpoint (random
# weights in DeepSeek's layout, F8_E4M3 + weight_scale_inv): peak resident memory (VmHWM from /proc,
# tests/ref/peak_rss.py) and prefill/decode tokens/s of a greedy run, alternated REPS times.
#
# Usage: bench/fp8_resident.sh          Environment: THREADS (2), NEW (64), REPS (2), DS_BIN, DS_PY.
# The model: tiny.json widened to hidden 1024, 6 layers (1 dense), 32 routed experts of 512, 8 heads:
# 263M parameters, 92% of them in FP8 Linear weights.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
THREADS=${THREADS:-2} NEW=${NEW:-64} REPS=${REPS:-2}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat /usr/share/common-licenses/GPL-3 >"$W/prose.txt"
"$BIN/ds-tokenize" train -q --vocab-size 512 -o "$W/tok.json" "$W/prose.txt"
"$PY" "$ROOT/tests/ref/generate_ckpt.py" --config "$ROOT/share/configs/tiny.json" --out "$W/ck" --tokenizer "$W/tok.json" \
    --fp8 e4m3 --set hidden_size=1024 --set intermediate_size=2048 --set moe_intermediate_size=512 \
    --set n_routed_experts=32 --set num_hidden_layers=6 --set num_nextn_predict_layers=0 --set q_lora_rank=256 \
    --set kv_lora_rank=128 --set num_attention_heads=8 --set n_group=4 --set topk_group=2
echo "checkpoint: $(du -sh "$W/ck/model.safetensors" | cut -f1)"
for r in $(seq "$REPS"); do
    for mode in resident expanded; do
        extra=()
        [ "$mode" = expanded ] && extra=(--fp8-expand)
        read -r hwm _ st < <("$PY" "$ROOT/tests/ref/peak_rss.py" "$W/err" "$BIN/ds-generate" -m "$W/ck" \
            --prompt "The license" --max-new "$NEW" --ignore-eos --temperature 0 --threads "$THREADS" "${extra[@]}")
        [ "$st" -eq 0 ] || { cat "$W/err"; exit 1; }
        printf '%-9s peak RSS %7.1f MiB  %s\n' "$mode" "$(echo "$hwm / 1024" | bc -l)" \
            "$(grep -a -o 'prefill.*steps' "$W/err")"
        grep -a '^weights:' "$W/err" || true
    done
done
