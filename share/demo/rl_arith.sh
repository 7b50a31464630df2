#!/bin/sh
# pretrain -> SFT -> RL on arithmetic, small enough for a laptop CPU (about 2 minutes on one core).
#
#   share/demo/rl_arith.sh [WORKDIR]      (programs from $DS_BIN, default ./bin; THREADS, default 1;
#                                         a rerun in the same WORKDIR replaces its outputs: --force)
#
# A tiny DeepSeek-V3-shaped model (share/configs/tiny.json: 178K parameters, MoE) learns single-digit
# sums and differences by supervised fine-tuning on noisy demonstrations (2 in 5 end with an answer off
# by one, as careless labellers would write), then ds-rl, rewarded only for a correct final answer,
# unlearns the noise: the held-out accuracy of sampled answers rises. The held-out prompts are drawn with
# another seed; with single-digit operands there are only 155 problems, so they ask problems the RL
# prompts also ask (what that means: docs/DESIGN.md "ds-rl", demo).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${DS_BIN:-$root/bin}
w=${1:-rl_arith_demo}
threads=${THREADS:-1}
mkdir -p "$w"
cd "$w"
tasks() { awk -f "$root/share/demo/tasks.awk" -v max=9 "$@"; }

# demonstrations; the final answer of every 5n-th and (5n+1)-th is off by one
tasks -v kind=sft -v n=20000 -v seed=11 | awk 'NR % 5 < 2 && match($0, /is [0-9]+\."/) {
    r = substr($0, RSTART + 3, RLENGTH - 5) + (NR % 2 ? 1 : -1); if (r < 0) r = 1
    $0 = substr($0, 1, RSTART + 2) r substr($0, RSTART + RLENGTH - 2) } { print }' >sft.jsonl
tasks -v kind=prompts -v n=4000 -v seed=12 >prompts.jsonl
tasks -v kind=prompts -v n=300 -v seed=13 >heldout.jsonl

# a tokenizer of the rendered conversations (DeepSeek's special tokens are added by ds-tokenize), and an
# initialised checkpoint carrying it (one pretraining step on the same text)
awk -F'"content":"' '{ q = $2; sub(/"}.*/, "", q); a = $3; sub(/"}.*/, "", a);
    printf "<｜begin▁of▁sentence｜><｜User｜>%s<｜Assistant｜>%s<｜end▁of▁sentence｜>\n", q, a }' sft.jsonl >corpus.txt
"$bin/ds-tokenize" train -q --vocab-size 300 -o tok.json corpus.txt
"$bin/ds-tokenize" encode -q -t tok.json --lines --allow-special -o shards/ --force corpus.txt
"$bin/ds-pretrain" -q --config "$root/share/configs/tiny.json" --data shards -o base --force --tokenizer tok.json --steps 1 \
    --seq-len 64 --batch 2 --threads "$threads" --peak-tflops 0.1

"$bin/ds-sft" -m base --data sft.jsonl -o sft --force --steps 500 --seq-len 64 --batch 32 --lr 3e-3 --lr-min 3e-4 \
    --threads "$threads" --log-every 100
"$bin/ds-rl" -m sft --prompts prompts.jsonl --eval-prompts heldout.jsonl -o rl --force --steps 100 --group 8 --batch 16 \
    --max-new 24 --lr 1e-4 --lr-schedule 'linear:0@0,1e-4@20' --eval-every 20 --eval-samples 4 --threads "$threads" \
    --log-every 10 --metrics rl.jsonl --samples samples.jsonl --plot rl.png
echo "curves: $w/rl.png; metrics: $w/rl.jsonl; every completion: $w/samples.jsonl"
