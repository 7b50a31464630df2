#!/bin/sh
# Context extension on a model small enough for a CPU, through the tools: a tiny dense DeepSeek-V3
# (share/configs/tiny-dense.json, byte tokens) is pretrained on passkey documents at L0 tokens
# (ds-pretrain: the text), taught to answer the passkey at L0 (ds-sft: loss on the key), its retrieval
# evaluated at L0 and FACTOR x L0, then extended by one ds-extend-ctx phase (YaRN, --factor FACTOR, V3's
# betas) on passkey conversations of every length up to FACTOR x L0, and evaluated again. Documents:
# share/passkey/docs.awk with the wording share/passkey/tiny.json; share/passkey/template renders a
# conversation as exactly the evaluated document. tests/bats/ds-extend-ctx-passkey.bats runs it and
# checks the claim; numbers in docs/DESIGN.md "Context extension".
#
#   share/demo/passkey_extension.sh [WORKDIR]      (programs from $DS_BIN, default ./bin)
#
# Environment (defaults): L0 (64), FACTOR (4), PRETRAIN_STEPS (300), TASK_STEPS (4000), TASK_LR (1e-3:
# 3e-3 learns the task less reliably), EXTEND_STEPS (1000), TRIALS (passkeys per grid cell, 16), DEPTHS
# (0,0.25,0.5,0.75,1), SEED (1), THREADS (1); EXTEND_FACTOR (FACTOR: the phase's --factor; 1 gives plain
# RoPE fine-tuning at the longer length, the control). EXTEND_STEPS=0 evaluates the base under YaRN
# without training. About 90 s of one core with the defaults. Outputs in WORKDIR: base.jsonl and long.jsonl
# (metrics; the grids as {"eval": "passkey", "length", "depth", "accuracy", ...} records) and the
# checkpoints lm/, base/ and long/ (a rerun in the same WORKDIR replaces them: --force).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${DS_BIN:-$root/bin}
w=${1:-passkey_extension_demo}
L0=${L0:-64} FACTOR=${FACTOR:-4} PRETRAIN_STEPS=${PRETRAIN_STEPS:-300} TASK_STEPS=${TASK_STEPS:-4000}
TASK_LR=${TASK_LR:-1e-3} EXTEND_STEPS=${EXTEND_STEPS:-1000} TRIALS=${TRIALS:-16} DEPTHS=${DEPTHS:-0,0.25,0.5,0.75,1}
SEED=${SEED:-1} THREADS=${THREADS:-1}
L1=$((L0 * FACTOR))
text=$root/share/passkey/tiny.json
mkdir -p "$w"
cd "$w"

# the wording's pieces as awk -v values (JSON escapes are awk's for this text)
piece() { jq -e ".$1" "$text" | sed 's/^"//; s/"$//'; }
docs() { # rows T shortest seed chat
    awk -f "$root/share/demo/json.awk" -f "$root/share/passkey/docs.awk" -v rows="$1" -v T="$2" -v shortest="$3" -v seed="$4" -v chat="$5" \
        -v intro="$(piece intro)" -v filler="$(piece filler)" -v needle="$(piece needle)" -v question="$(piece question)" \
        -v answer="$(piece answer)" -v digits="$(piece digits)"
}
# byte-level tokens: DeepSeek's 11 special tokens, the 256 bytes and one merge ("qq", which the wording
# never holds: a tokenizer.json needs a merge) so every byte of the documents is a token
echo qq | "$bin/ds-tokenize" train -q --vocab-size 268 -o tok.json -
docs $((PRETRAIN_STEPS * 16 + 64)) "$L0" "$L0" "$SEED" "" | "$bin/ds-tokenize" encode -q -t tok.json --jsonl text --bos -o text.tok --force -
# conversations of up to L0 (then L1) tokens, the longest evaluated length: docs.awk's lengths count BOS and
# EOS, and a conversation renders without EOS (a sample of L0 tokens fills a row of L0 slots: its last
# token is only a target)
docs $((TASK_STEPS * 16 + 64)) $((L0 + 1)) 0 $((SEED + 500)) 1 >task.chat.jsonl
docs $((EXTEND_STEPS * 8 + 32)) $((L1 + 1)) 0 $((SEED + 1000)) 1 >extend.chat.jsonl
common="--clip 1 --weight-decay 0 --gamma 0 --lambda 0 --seed $SEED --threads $THREADS --log-every 0 -q"

"$bin/ds-pretrain" --config "$root/share/configs/tiny-dense.json" --data text.tok --tokenizer tok.json -o lm --force \
    --steps "$PRETRAIN_STEPS" --batch 16 --seq-len "$L0" --lr 3e-3 --lr-schedule cosine:warmup=5%,min=10% \
    --val-every 0 --peak-tflops 0.1 $common
"$bin/ds-sft" -m lm --data task.chat.jsonl --chat-template "$root/share/passkey/template" -o base --force --steps "$TASK_STEPS" \
    --batch 16 --seq-len "$L0" --lr "$TASK_LR" --lr-schedule cosine:warmup=5%,min=10% --val-frac 0 --val-every 0 \
    --metrics task.jsonl $common
lens=$L0 L=$((2 * L0))
while [ "$L" -lt "$L1" ]; do lens="$lens,$L" L=$((2 * L)); done
grid() { "$bin/ds-extend-ctx" --eval-text "$text" --eval-lengths "$lens,$L1" --eval-trials "$TRIALS" --eval-depths "$DEPTHS" \
    --eval-docs 0 --seed 2024 --threads "$THREADS" -q "$@"; }
echo "base model (RoPE; text at $L0 tokens for $PRETRAIN_STEPS steps, the task at $L0 for $TASK_STEPS):"
grid -m base --eval-only --seq-len "$L1" --metrics base.jsonl
echo "after a ds-extend-ctx phase at $L1 tokens (--factor ${EXTEND_FACTOR:-$FACTOR}, $EXTEND_STEPS steps):"
if [ "$EXTEND_STEPS" -eq 0 ]; then
    grid -m base --eval-only --factor "${EXTEND_FACTOR:-$FACTOR}" --original-len "$L0" --seq-len "$L1" --metrics long.jsonl
else
    grid -m base --chat extend.chat.jsonl --chat-template "$root/share/passkey/template" -o long --force --factor "${EXTEND_FACTOR:-$FACTOR}" \
        --original-len "$L0" --seq-len "$L1" --steps "$EXTEND_STEPS" --batch 8 --lr 1e-3 --lr-schedule cosine:warmup=0,min=10% \
        --val-frac 0 --clip 1 --weight-decay 0 --log-every 0 --metrics long.jsonl
fi
