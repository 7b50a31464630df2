#!/bin/sh
# GRPO on arithmetic: a tiny model learns single-digit sums and differences by supervised training on
# noisy demonstrations (2 in 5 end with an answer off by one, as careless labellers would write), then
# ds-rl, rewarded only for a correct final answer, unlearns the noise and raises held-out accuracy.
# Runs on a laptop CPU in minutes.
#
#   share/demo/rl_arith.sh [WORKDIR]      (programs from $DS_BIN, default ./bin)
#
# The held-out prompts are drawn with another seed; with single-digit operands there are only 155
# problems, so they ask problems the RL prompts also ask (on problems RL never saw, this 178K-parameter
# model does not improve: docs/DESIGN.md "ds-rl", demo). The supervised stage is ds-pretrain on the
# chat-rendered conversations (loss on every token) until ds-sft is in place; the prompts ds-rl renders
# are token for token the ones trained on.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${DS_BIN:-$root/bin}
w=${1:-rl_arith_demo}
threads=${THREADS:-1}
mkdir -p "$w"
cd "$w"
tasks() { awk -f "$root/share/demo/tasks.awk" -v max=9 "$@"; }

tasks -v kind=sft -v n=20000 -v seed=11 >sft.jsonl
tasks -v kind=prompts -v n=4000 -v seed=12 >prompts.jsonl
tasks -v kind=prompts -v n=300 -v seed=13 >heldout.jsonl
# the chat template's rendering (share/chat_template) of each conversation, one per line; the final
# answer of every 5n-th and (5n+1)-th demonstration is off by one
awk -F'"content":"' '{ q = $2; sub(/"}.*/, "", q); a = $3; sub(/"}.*/, "", a);
    if (NR % 5 < 2 && match(a, /is [0-9]+\.$/)) { r = substr(a, RSTART + 3, RLENGTH - 4) + (NR % 2 ? 1 : -1);
        if (r < 0) r = 1; a = substr(a, 1, RSTART + 2) r "." }
    printf "<｜begin▁of▁sentence｜><｜User｜>%s<｜Assistant｜>%s<｜end▁of▁sentence｜>\n", q, a }' sft.jsonl >sft.txt

"$bin/ds-tokenize" train -q --vocab-size 300 -o tok.json sft.txt
"$bin/ds-tokenize" encode -q -t tok.json --lines --allow-special -o shards/ sft.txt
"$bin/ds-pretrain" --config "$root/share/configs/tiny.json" --data shards -o sft --tokenizer tok.json --steps 500 \
    --seq-len 64 --batch 32 --lr 3e-3 --lr-schedule cosine --threads "$threads" --log-every 100 --val-every 0 --peak-tflops 0.1
"$bin/ds-rl" -m sft --prompts prompts.jsonl --eval-prompts heldout.jsonl -o rl --steps 100 --group 8 --batch 16 \
    --max-new 24 --lr 1e-4 --lr-schedule 'linear:0@0,1e-4@20' --eval-every 20 --eval-samples 4 --threads "$threads" \
    --log-every 10 --metrics rl.jsonl --samples samples.jsonl --plot rl.png
echo "curves: $w/rl.png; metrics: $w/rl.jsonl; every completion: $w/samples.jsonl"
