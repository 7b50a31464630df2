#!/bin/sh
# Context extension on a model small enough for a CPU, through the tools: a tiny dense DeepSeek-V3
# (share/configs/tiny-dense.json, byte tokens) pretrained on passkey documents (share/passkey/docs.awk,
# wording share/passkey/tiny.json) at L0 tokens, its retrieval evaluated at L0, 2 L0 and FACTOR x L0,
# then one ds-extend-ctx phase (YaRN, --factor FACTOR, V3's betas) at FACTOR x L0 and the same grid again.
# The recipe is bench/passkey_extension.c's, with the loss on every token (packed documents, as the
# tools train). tests/bats/ds-extend-ctx-passkey.bats runs it small and checks the claim; numbers in
# docs/DESIGN.md "Context extension".
#
#   share/demo/passkey_extension.sh [WORKDIR]      (programs from $DS_BIN, default ./bin)
#
# Environment (defaults): L0 (64), FACTOR (2), PRETRAIN_STEPS (6000), EXTEND_STEPS (2000), TRIALS
# (passkeys per grid cell, 8), SEED (1), THREADS (1); EXTEND_FACTOR (FACTOR: the phase's --factor; 1
# gives plain RoPE fine-tuning at the longer length, the control). EXTEND_STEPS=0 evaluates the base
# under YaRN without training. Outputs in WORKDIR: base.jsonl and long.jsonl (metrics; the grids as
# {"eval": "passkey", "length", "depth", "accuracy", ...} records) and the checkpoints base/ and long/.
# About 100 s of one core with the defaults.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${DS_BIN:-$root/bin}
w=${1:-passkey_extension_demo}
L0=${L0:-64} FACTOR=${FACTOR:-2} PRETRAIN_STEPS=${PRETRAIN_STEPS:-6000} EXTEND_STEPS=${EXTEND_STEPS:-2000}
TRIALS=${TRIALS:-8} SEED=${SEED:-1} THREADS=${THREADS:-1}
L1=$((L0 * FACTOR))
text=$root/share/passkey/tiny.json
mkdir -p "$w"
cd "$w"

# the wording's pieces as awk -v values (JSON escapes are awk's for this text)
piece() { jq -e ".$1" "$text" | sed 's/^"//; s/"$//'; }
docs() { # rows T shortest seed
    awk -f "$root/share/passkey/docs.awk" -v rows="$1" -v T="$2" -v shortest="$3" -v seed="$4" -v intro="$(piece intro)" \
        -v filler="$(piece filler)" -v needle="$(piece needle)" -v question="$(piece question)" \
        -v answer="$(piece answer)" -v digits="$(piece digits)"
}
# byte-level tokens: DeepSeek's 11 special tokens, the 256 bytes and one merge ("qq", which the wording
# never holds: a tokenizer.json needs a merge) so every byte of the documents is a token
echo qq | "$bin/ds-tokenize" train -q --vocab-size 268 -o tok.json -
# pretraining documents fill their rows of L0 tokens; the long phase's are of every length up to L1
docs $((PRETRAIN_STEPS * 16 + 64)) "$L0" "$L0" "$SEED" | "$bin/ds-tokenize" encode -q -t tok.json --jsonl text --bos -o short.tok -
docs $((EXTEND_STEPS * 8 + 32)) "$L1" 0 $((SEED + 1000)) | "$bin/ds-tokenize" encode -q -t tok.json --jsonl text --bos -o long.tok -

"$bin/ds-pretrain" -q --config "$root/share/configs/tiny-dense.json" --data short.tok --tokenizer tok.json -o base \
    --steps "$PRETRAIN_STEPS" --batch 16 --seq-len "$L0" --lr 1e-2 --lr-schedule cosine:warmup=5%,min=10% \
    --clip 0 --weight-decay 0 --gamma 0 --lambda 0 --val-every 0 --seed "$SEED" --threads "$THREADS" --peak-tflops 0.1 --log-every 0
lens=$L0 L=$((2 * L0))
while [ "$L" -lt "$L1" ]; do lens="$lens,$L" L=$((2 * L)); done
grid() { "$bin/ds-extend-ctx" --eval-text "$text" --eval-lengths "$lens,$L1" --eval-trials "$TRIALS" \
    --eval-docs 0 --seed 2024 --threads "$THREADS" -q "$@"; }
echo "base model (RoPE, pretrained at $L0 tokens, $PRETRAIN_STEPS steps):"
grid -m base --eval-only --seq-len "$L1" --metrics base.jsonl
echo "after a ds-extend-ctx phase at $L1 tokens (--factor ${EXTEND_FACTOR:-$FACTOR}, $EXTEND_STEPS steps):"
if [ "$EXTEND_STEPS" -eq 0 ]; then
    grid -m base --eval-only --factor "${EXTEND_FACTOR:-$FACTOR}" --original-len "$L0" --seq-len "$L1" --metrics long.jsonl
else
    grid -m base --data long.tok -o long --factor "${EXTEND_FACTOR:-$FACTOR}" --original-len "$L0" --seq-len "$L1" \
        --steps "$EXTEND_STEPS" --batch 8 --lr 3e-3 --lr-schedule cosine:warmup=0,min=10% --clip 0 --weight-decay 0 \
        --log-every 0 --metrics long.jsonl
fi
