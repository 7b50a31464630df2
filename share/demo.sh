#!/bin/sh
# demo.sh — the whole ds-* pipeline on data every Debian machine has, as a plain shell script to copy
# and adapt: train a tokenizer, encode shards, pretrain, extend the context, fine-tune on chat data,
# improve with GRPO on tasks whose answers can be checked, quantize to FP8, generate; then write
# REPORT.md and report.json (stage times and losses, loss plots, held-out accuracy after each stage,
# MLA cache size, FP8 quality cost, sample generations). docs/DEMO.md explains every number.
#
# Usage: share/demo.sh            (make demo runs it with DS_BIN=bin)
# Environment:
#   DS_DEMO_SCALE    multiplies data sizes and steps (default 1: about four minutes on two idle cores;
#                    0.05 is a smoke test)
#   DS_DEMO_DIR      work directory (default ./demo-out); every run starts it afresh
#   DS_DEMO_THREADS  threads per tool (default 0 = all cores)
#   DS_DEMO_CACHE    where the extracted prose corpus is kept between runs (default ~/.cache/ds-demo)
#   DS_DEMO_CONFIG   model configuration (default share/configs/tiny.json beside this script: 178K
#                    parameters, small enough for GRPO to run 100 steps in minutes on a laptop CPU)
#   DS_BIN           directory of the ds-* programs (default: ../bin beside this script, else $PATH)
# Needs: the ds-* programs, jq, awk, perl's pod2text (corpus), gnuplot for the combined loss chart
# (optional: without it the per-stage charts the tools draw are still there).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
SCALE=${DS_DEMO_SCALE:-1}
OUT=${DS_DEMO_DIR:-demo-out}
THREADS=${DS_DEMO_THREADS:-0}
CACHE=${DS_DEMO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ds-demo}
CONFIG=${DS_DEMO_CONFIG:-$here/configs/tiny.json}
if [ -z "${DS_BIN:-}" ] && [ -x "$here/../bin/ds-pretrain" ]; then DS_BIN=$here/../bin; fi
DS=${DS_BIN:+$DS_BIN/}
command -v jq >/dev/null || { echo "demo: jq is needed (apt-get install jq)" >&2; exit 1; }

# OpenBLAS picks its best kernel for the CPU unless OPENBLAS_CORETYPE pins one; some machines pin the
# AVX2 (Haswell) kernel, which runs sgemm at ~0.6x of the AVX-512 one (docs/DESIGN.md). The demo lets
# OpenBLAS choose for its own processes. Idle OpenMP threads sleep instead of spinning, which keeps a
# shared machine usable and costs the demo nothing measurable.
unset OPENBLAS_CORETYPE
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

# ---- sizes: everything that costs time is proportional to SCALE ----------------------------------
scaled() { # N [MIN]: round(N * SCALE), at least MIN (default 1)
    awk -v n="$1" -v s="$SCALE" -v m="${2:-1}" 'BEGIN { v = int(n * s + 0.5); print (v < m ? m : v) }'
}
CORPUS_BYTES=$(scaled 2000000 150000) # prose for the tokenizer and pretraining
VOCAB=$(jq .vocab_size "$CONFIG")     # the tokenizer is trained to the config's vocabulary
PRE_STEPS=$(scaled 2000 4)            # pretraining steps of 16 x 256 tokens
PRE_LR=3e-3
LONG_STEPS=$(scaled 40 2)             # context extension 256 -> 1024 (YaRN x4), steps of 4 x 1024 tokens
LONG_LR=3e-4
SFT_N=$(scaled 20000 200)             # chat conversations (2 in 5 with a careless final answer)
SFT_PROSE=$(scaled 5000 50)           # and "continue this text" conversations from the training prose
SFT_STEPS=$(scaled 500 4)             # SFT steps of 32 packed rows of 128 tokens
SFT_LR=3e-3
RL_N=$(scaled 4000 64)                # RL prompts
RL_STEPS=$(scaled 100 2)              # GRPO steps of 16 prompts x 8 completions
RL_LR=1e-4                            # reached after RL_WARMUP steps of linear warmup
RL_WARMUP=$(scaled 20 1)
EVAL_N=$(scaled 300 24)               # held-out tasks (prompts worded as no training prompt is)
EVAL_SAMPLES=4                        # sampled answers per held-out task (T = 1), besides the greedy one
TASK_MAX=9                            # operands in [0, TASK_MAX]
TASK_WORDS=0.3                        # share of word problems
TASK_NOISE=0.4                        # share of SFT demonstrations whose final answer is off by one
MAX_NEW=24                            # tokens per answer

# ---- bookkeeping: every stage is timed and logged; report.d/ collects what the report shows ------
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
D=$OUT/data C=$OUT/ckpt M=$OUT/metrics P=$OUT/plots E=$OUT/eval R=$OUT/report.d
mkdir -p "$D" "$C" "$M" "$P" "$E" "$R" "$OUT/logs"
for f in stages.jsonl accuracy.jsonl loglik.jsonl samples.jsonl data.json fp8-size.json plots.json; do : >"$R/$f"; done
for f in pretrain extend sft rl fp8-error generate generate-mtp; do : >"$M/$f.jsonl"; done
CKPT= # the newest model

say() { printf '\n== %s\n' "$*" >&2; }
now() { date +%s.%N; }
cpu() { # CPU_VAR: user + system seconds of every finished child of this shell, into CPU_VAR
    times >"$OUT/logs/.times" # in this shell: inside $(...) it would time the subshell's children
    eval "$1=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); t += p[1] * 60 + p[2] } print t }' "$OUT/logs/.times")"
}
# A tool still being written answers "not implemented yet": its stage is skipped, the rest goes on.
implemented() { ! "${DS}$1" </dev/null 2>&1 | grep -q 'not implemented yet'; }
# stage NAME TOOL: run the shell function NAME (in a subshell, stopping at its first failing command),
# its output on stderr and in logs/NAME.log, timed. STATUS says how it went: ok or skipped; a failing
# stage writes the report so far and exits.
stage() {
    name=$1 tool=$2
    if [ -n "$tool" ] && ! implemented "$tool"; then
        say "$name: skipped ($tool is not implemented yet)"
        jq -nc --arg n "$name" --arg t "$tool" '{name: $n, tool: $t, status: "skipped", note: "\($t) not implemented yet"}' \
            >>"$R/stages.jsonl"
        STATUS=skipped
        return 0
    fi
    say "$name"
    t0=$(now)
    cpu c0
    { set +e; (set -e; "$name") 2>&1; echo $? >"$OUT/logs/.rc"; } | tee "$OUT/logs/$name.log" >&2
    rc=$(cat "$OUT/logs/.rc")
    t1=$(now)
    cpu c1
    STATUS=ok
    [ "$rc" -eq 0 ] || STATUS=failed
    jq -nc --arg n "$name" --arg t "$tool" --arg s $STATUS --argjson rc "$rc" \
        --argjson w "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" \
        --argjson c "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')" \
        '{name: $n, tool: $t, status: $s, wall_s: $w, cpu_s: $c, note: (if $rc == 0 then "" else "exit \($rc)" end)}' \
        >>"$R/stages.jsonl"
    if [ $STATUS = failed ]; then
        echo "demo: stage $name failed (exit $rc); its log: $OUT/logs/$name.log" >&2
        report
        exit 1
    fi
    tail -n 1 "$R/stages.jsonl" | jq -r '"-- \(.name): \(.wall_s) s wall, \(.cpu_s) s CPU"' >&2
}

# ---- the pipeline: each stage a function, reading what the previous ones wrote --------------------
LOG="--threads $THREADS --log-every 10"

data() {
    # Real English prose: Debian's license texts and Perl's documentation (share/demo/corpus.sh),
    # extracted once into the cache. Every 10th document is held out.
    corpus=$CACHE/corpus-$CORPUS_BYTES
    if [ ! -f "$corpus/done" ]; then
        mkdir -p "$CACHE"
        rm -rf "$corpus.tmp.$$"
        sh "$here/demo/corpus.sh" "$corpus.tmp.$$" "$CORPUS_BYTES"
        touch "$corpus.tmp.$$/done"
        rm -rf "$corpus" && mv "$corpus.tmp.$$" "$corpus"
    fi
    ln -s "$corpus" "$D/corpus"
    # Arithmetic with checkable answers (share/demo/tasks.awk): single-digit sums and differences as
    # formulas and word problems; conversations for SFT, prompts with answers for RL, and held-out
    # prompts worded as no SFT or RL prompt is (one prompt text in ten is held out, by a hash).
    tasks() { awk -f "$here/demo/tasks.awk" -v by=prompt -v max=$TASK_MAX -v words=$TASK_WORDS "$@"; }
    tasks -v kind=sft -v n="$SFT_N" -v seed=1 -v noise=$TASK_NOISE >"$D/sft.jsonl"
    # Prose as conversations (share/demo/continue.awk), about a fifth of the SFT data: fine-tuning on
    # arithmetic alone makes the model forget the language it was pretrained on (held-out prose 2.3 ->
    # 11.7 nats per token); with these it stays near 3.5 and the arithmetic is learned as well
    # (docs/DEMO.md). Cut from the training documents only: the held-out prose stays unseen.
    LC_ALL=C awk -f "$here/demo/json.awk" -f "$here/demo/continue.awk" -v n="$SFT_PROSE" -v seed=4 "$D"/corpus/train/*.txt >>"$D/sft.jsonl"
    tasks -v kind=prompts -v n="$RL_N" -v seed=2 >"$D/rl.jsonl"
    tasks -v kind=prompts -v set=heldout -v n="$EVAL_N" -v seed=3 >"$D/heldout.jsonl"
    # the same held-out tasks as conversations with the right answers, to score (FP8 cost)
    tasks -v kind=sft -v set=heldout -v n="$EVAL_N" -v seed=3 >"$D/heldout-chat.jsonl"
    wc -l "$D"/*.jsonl
}

tokenizer() {
    "${DS}ds-tokenize" train --vocab-size $VOCAB -o "$D/tokenizer-v3.json" "$D"/corpus/train/*.txt
    # DeepSeek-V3 splits numbers into groups of up to three digits; the demo splits them into single
    # digits (as Llama does), so that a sum the model never saw is made of digit sums it did see.
    jq '(.pre_tokenizer.pretokenizers[] | select(.pattern.Regex? == "\\p{N}{1,3}") | .pattern.Regex) = "\\p{N}"' \
        "$D/tokenizer-v3.json" >"$D/tokenizer.json"
    "${DS}ds-tokenize" encode -t "$D/tokenizer.json" -o "$D/shards/" "$D"/corpus/train/*.txt 2>"$E/encode.log"
    cat "$E/encode.log"
    # held-out prose as lines of token ids, in windows of 256 tokens, for scoring
    "${DS}ds-tokenize" encode -q -t "$D/tokenizer.json" --ids "$D"/corpus/heldout/*.txt |
        awk '{ for (i = 1; i + 255 <= NF; i += 256) { s = $i; for (j = i + 1; j < i + 256; j++) s = s " " $j; print s } }' \
            >"$D/heldout-prose.ids"
    jq -n --argjson docs "$(ls "$D"/corpus/train "$D"/corpus/heldout | grep -c '\.txt$')" \
        --argjson bytes "$(cat "$D"/corpus/train/*.txt "$D"/corpus/heldout/*.txt | wc -c)" \
        --argjson tokens "$(awk '/^encode:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^tokens/) print $i }' "$E/encode.log")" \
        --argjson prose "$(awk '{ n += NF } END { print n + 0 }' "$D/heldout-prose.ids")" \
        --argjson sft "$(wc -l <"$D/sft.jsonl")" --argjson sft_prose "$(grep -c '"content":"Continue: ' "$D/sft.jsonl")" --argjson rl "$(wc -l <"$D/rl.jsonl")" --argjson h "$(wc -l <"$D/heldout.jsonl")" \
        '{corpus_docs: $docs, corpus_bytes: $bytes, train_tokens: $tokens, heldout_prose_tokens: $prose,
          sft: $sft, sft_prose: $sft_prose, rl: $rl, heldout: $h}' >"$R/data.json"
}

pretrain() {
    "${DS}ds-pretrain" --config "$CONFIG" --data "$D/shards" --tokenizer "$D/tokenizer.json" -o "$C/pretrain" \
        --steps "$PRE_STEPS" --batch 16 --seq-len 256 --lr $PRE_LR --val-frac 0.02 --val-every $(((PRE_STEPS + 9) / 10)) \
        --metrics "$M/pretrain.jsonl" --plot "$P/pretrain.png" --seed 1 $LOG
}

extend() {
    # YaRN x4: the model pretrained on 256 tokens continues at 1024; then passkey retrieval and
    # log-likelihood by position
    "${DS}ds-extend-ctx" -m "$CKPT" --data "$D/shards" -o "$C/extend" --factor 4 --original-len 256 \
        --seq-len 1024 --steps "$LONG_STEPS" --batch 4 --lr $LONG_LR --val-frac 0.02 --val-every "$LONG_STEPS" \
        --eval-lengths 256,512,1024 --eval-trials 2 --eval-docs 2 --eval-png "$P/passkey.png" \
        --metrics "$M/extend.jsonl" --plot "$P/extend.png" --seed 1 $LOG
}

sft() {
    "${DS}ds-sft" -m "$CKPT" --data "$D/sft.jsonl" -o "$C/sft" --steps "$SFT_STEPS" --seq-len 128 --batch 32 \
        --lr $SFT_LR --lr-min 3e-4 --warmup 0.05 --metrics "$M/sft.jsonl" --plot "$P/sft.png" --seed 1 $LOG
}

rl() {
    # GRPO rewarded only for the right final answer (rl_arith.sh's recipe, docs/DESIGN.md "ds-rl")
    "${DS}ds-rl" -m "$CKPT" --prompts "$D/rl.jsonl" -o "$C/rl" --steps "$RL_STEPS" --group 8 --batch 16 \
        --max-new $MAX_NEW --lr $RL_LR --lr-schedule "linear:0@0,$RL_LR@$RL_WARMUP" --reward answer \
        --eval-prompts "$D/heldout.jsonl" --eval-samples $EVAL_SAMPLES --eval-every $(((RL_STEPS + 4) / 5)) \
        --metrics "$M/rl.jsonl" --plot "$P/rl.png" --seed 1 $LOG
}

quantize() {
    "${DS}ds-quantize" -m "$CKPT" -o "$C/fp8" --to fp8 --report "$M/fp8-error.jsonl" --threads $THREADS
    jq -n --argjson a "$(du -sb "$CKPT/model.safetensors" | cut -f1)" --argjson b "$(cat "$C"/fp8/*.safetensors | wc -c)" \
        '{bytes_before: $a, bytes_fp8: $b}' >"$R/fp8-size.json"
}

# Held-out task accuracy of a checkpoint: the last number of an answer, read as ds-rl's answer reward
# reads it, must equal the result. Greedy answers, and EVAL_SAMPLES sampled ones per task (T = 1, as
# GRPO samples: the number it raises; greedy accuracy moves only where the most likely answer flips).
accuracy() { # NAME CKPT [ds-generate options]
    name=$1 ckpt=$2
    shift 2
    "${DS}ds-generate" -m "$ckpt" "$@" --jsonl --temperature 0 --max-new $MAX_NEW --batch 64 --threads $THREADS -q \
        <"$D/heldout.jsonl" >"$E/tasks-$name.jsonl"
    awk -v k=$EVAL_SAMPLES '{ for (i = 0; i < k; i++) print }' "$D/heldout.jsonl" >"$E/heldout-x$EVAL_SAMPLES.jsonl"
    "${DS}ds-generate" -m "$ckpt" "$@" --jsonl --temperature 1 --seed 7 --max-new $MAX_NEW --batch 64 --threads $THREADS -q \
        <"$E/heldout-x$EVAL_SAMPLES.jsonl" >"$E/tasks-sampled-$name.jsonl"
    jq -nc --arg name "$name" --slurpfile g "$E/tasks-$name.jsonl" --slurpfile s "$E/tasks-sampled-$name.jsonl" \
        --slurpfile p "$E/heldout-x$EVAL_SAMPLES.jsonl" --argjson k $EVAL_SAMPLES '
        def right($g; $k): ($g | sort_by(.index)) as $g
            | [range(0; $g | length) | ($g[.].completion | [scan("-?[0-9][0-9,]*(?:\\.[0-9]+)?")] | last) as $a
               | ($a != null and ($a | gsub(","; "") | tonumber) == ($p[. * $k].answer | tonumber))]
            | map(select(.)) | length;
        {after: $name, correct: right($g; $k), total: ($g | length),
         sampled_correct: right($s; 1), sampled_total: ($s | length)}
        | .accuracy = .correct / .total | .sampled_accuracy = .sampled_correct / .sampled_total' |
        tee -a "$R/accuracy.jsonl"
}
# Mean log-likelihood per token of held-out text, in nats: the prose documents (windows of 256 tokens,
# as ids), or the held-out tasks as conversations with the right answers, scored on the assistant's
# tokens (those after <｜Assistant｜>: the prompt is the user's, not the model's to predict).
loglik() { # NAME prose|chat CKPT [ds-generate options]
    name=$1 text=$2 ckpt=$3
    shift 3
    if [ $text = prose ]; then set -- --ids "$@"; in=$D/heldout-prose.ids; else in=$D/heldout-chat.jsonl; fi
    "${DS}ds-generate" -m "$ckpt" --score "$@" --threads $THREADS -q <"$in" >"$E/loglik-$text-$name.jsonl"
    jq -sc --arg name "$name" --arg text $text --argjson a "$(jq '.added_tokens[] | select(.content == "<｜Assistant｜>") | .id' "$D/tokenizer.json")" '
        map(if $text == "chat" then (.tokens | index($a)) as $i | .logprobs[$i + 1:] else .logprobs[1:] end)
        | {model: $name, text: $text, tokens: (map(length) | add), nats_per_token: ((map(add) | add) / (map(length) | add))}' \
        "$E/loglik-$text-$name.jsonl" | tee -a "$R/loglik.jsonl"
}

evaluate() {
    for s in pretrain extend sft rl fp8; do
        [ -d "$C/$s" ] || continue
        accuracy $s "$C/$s"
        loglik $s prose "$C/$s"
        loglik $s chat "$C/$s"
    done
    [ -d "$C/fp8" ] || return 0
    # FP8 both ways: the weights dequantized at load (above), and W8A8 (activations in FP8 too)
    accuracy fp8-w8a8 "$C/fp8" --w8a8
    loglik fp8-w8a8 chat "$C/fp8" --w8a8
    loglik fp8-w8a8 prose "$C/fp8" --w8a8
    # and the pretrained model, the one that models prose
    "${DS}ds-quantize" -q -m "$C/pretrain" -o "$E/pretrain-fp8.safetensors" --to fp8
    loglik pretrain-fp8 prose "$E/pretrain-fp8.safetensors"
}

PROSE_A='This License applies to' PROSE_B='The function returns'
generate() {
    # prose from the pretrained model; its metrics record the MLA cache size
    "${DS}ds-generate" -m "$C/pretrain" --jsonl --max-new 48 --temperature 0.8 --top-k 40 --seed 1 --threads $THREADS \
        --metrics "$M/generate.jsonl" --prompt "$PROSE_A" --prompt "$PROSE_B" \
        >"$E/samples-prose.jsonl"
    # MTP speculative decoding: the same greedy text in fewer steps when the drafts are accepted
    "${DS}ds-generate" -m "$C/pretrain" --jsonl --max-new 64 --temperature 0 --mtp --threads $THREADS \
        --metrics "$M/generate-mtp.jsonl" --prompt "$PROSE_A" --prompt "$PROSE_B" \
        >"$E/samples-mtp.jsonl"
    # answers of each chat model to the first held-out tasks; the FP8 one quantized on the fly in a pipe
    head -n 6 "$D/heldout.jsonl" >"$E/sample-tasks.jsonl"
    for s in sft rl; do
        [ -d "$C/$s" ] || continue
        "${DS}ds-generate" -m "$C/$s" --jsonl --temperature 0 --max-new $MAX_NEW --threads $THREADS -q \
            <"$E/sample-tasks.jsonl" >"$E/samples-$s.jsonl"
    done
    if [ -d "$C/fp8" ]; then # a checkpoint on stdin: the prompts come as options
        jq -r '.messages[0].content' "$E/sample-tasks.jsonl" >"$E/sample-tasks.txt"
        set --
        while IFS= read -r q; do set -- "$@" --prompt "$q"; done <"$E/sample-tasks.txt"
        "${DS}ds-quantize" -q -m "$CKPT" -o - --to fp8 |
            "${DS}ds-generate" -m - --chat "$@" --jsonl --temperature 0 --max-new $MAX_NEW --threads $THREADS -q \
                >"$E/samples-fp8.jsonl"
    fi
    for s in sft rl fp8; do
        [ -s "$E/samples-$s.jsonl" ] || continue
        jq -sc --arg m $s --slurpfile t "$E/sample-tasks.jsonl" \
            'sort_by(.index)[] | {model: $m, prompt: $t[.index].messages[0].content, answer: $t[.index].answer, completion}' \
            "$E/samples-$s.jsonl" >>"$R/samples.jsonl"
    done
    jq -c --arg a "$PROSE_A" --arg b "$PROSE_B" '{model: "pretrain", prompt: (if .index == 0 then $a else $b end), answer: null, completion}' \
        "$E/samples-prose.jsonl" >>"$R/samples.jsonl"
}

# ---- the report: report.json holds every number, REPORT.md is rendered from it ---------------------
report() {
    # per training stage: steps, last loss, last validation loss (RL: first and last mean reward)
    for s in pretrain extend sft rl; do
        jq -sc --arg s $s '[.[] | select(has("step") and has("loss"))] as $st | select($st | length > 0)
            | {name: $s, steps: ($st | last | .step), final_loss: ($st | last | .loss),
               final_val_loss: ([$st[] | .val_loss // empty] | last),
               first_reward: ([$st[] | .reward // empty] | first), final_reward: ([$st[] | .reward // empty] | last)}' \
            "$M/$s.jsonl"
    done >"$R/losses.jsonl"
    plot
    jq -n --arg scale "$SCALE" --arg config "$CONFIG" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --arg version "$("${DS}ds-pretrain" --version 2>&1 | head -n 1)" --argjson cpus "$(nproc)" \
        --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)" \
        --slurpfile stages "$R/stages.jsonl" --slurpfile losses "$R/losses.jsonl" \
        --slurpfile acc "$R/accuracy.jsonl" --slurpfile loglik "$R/loglik.jsonl" --slurpfile samples "$R/samples.jsonl" \
        --slurpfile gen "$M/generate.jsonl" --slurpfile mtp "$M/generate-mtp.jsonl" --slurpfile q "$M/fp8-error.jsonl" \
        --slurpfile rlm "$M/rl.jsonl" --slurpfile ext "$M/extend.jsonl" --slurpfile data "$R/data.json" \
        --slurpfile size "$R/fp8-size.json" --slurpfile plots "$R/plots.json" \
        -f "$here/demo/report.jq" >"$OUT/report.json"
    render >"$OUT/REPORT.md"
    echo "demo: report in $OUT/REPORT.md ($OUT/report.json)" >&2
}

# One chart of every stage: the training loss of pretraining, context extension and SFT on one step
# axis (validation losses as points), and under it GRPO's mean reward and held-out accuracy. The
# tools' own charts (plots/<stage>.png) are there either way; this one needs gnuplot.
plot() {
    off=0
    : >"$P/loss.dat"
    : >"$P/val.dat"
    for s in pretrain extend sft; do
        jq -r --argjson off $off 'select(has("step") and has("loss")) | "\(.step + $off) \(.loss)"' "$M/$s.jsonl" >>"$P/loss.dat"
        jq -r --argjson off $off 'select(has("step") and .val_loss != null) | "\(.step + $off) \(.val_loss)"' "$M/$s.jsonl" >>"$P/val.dat"
        printf '\n\n' >>"$P/loss.dat"
        printf '\n\n' >>"$P/val.dat"
        off=$(jq -s --argjson off $off '[.[] | select(has("step") and has("loss")) | .step] | (max // 0) + $off' "$M/$s.jsonl")
    done
    jq -r 'select(has("reward") and has("step")) | "\(.step) \(.reward)"' "$M/rl.jsonl" >"$P/reward.dat"
    jq -r 'select(has("eval/accuracy")) | "\(.step) \(.["eval/accuracy"]) \(.["eval/sampled_accuracy"] // "NaN")"' "$M/rl.jsonl" >"$P/rl-eval.dat"
    plots='[]'
    if command -v gnuplot >/dev/null && [ -s "$P/loss.dat" ]; then
        gnuplot <<GP && plots='[{"title": "all stages", "file": "plots/loss.png"}]'
set terminal pngcairo size 1000,800 font ",10"
set output "$P/loss.png"
set multiplot layout 2,1 title "ds-* demo (scale $SCALE)"
set grid
set key top right
set xlabel "optimizer step (pretraining, then context extension, then SFT)"
set ylabel "cross-entropy (nats/token)"
set logscale y
plot "$P/loss.dat" index 0 with lines lw 1.5 title "pretrain", \
     "" index 1 with lines lw 1.5 title "extend context", \
     "" index 2 with lines lw 1.5 title "SFT (assistant tokens)", \
     "$P/val.dat" with points pt 7 ps 0.8 lc rgb "black" title "validation"
unset logscale y
set xlabel "GRPO step"
set ylabel "reward / accuracy"
set yrange [0:1]
$(if [ -s "$P/reward.dat" ]; then printf '%s\n' "set key bottom right; plot \"$P/reward.dat\" with lines lw 1.5 title \"mean reward of the rollouts\", \"$P/rl-eval.dat\" using 1:2 with linespoints pt 7 title \"held-out accuracy (greedy)\", \"\" using 1:3 with linespoints pt 5 title \"held-out accuracy (sampled, T = 1)\""; else echo 'set label "no RL stage" at graph 0.5, 0.5 center'; echo 'plot 2 notitle'; fi)
unset multiplot
GP
    fi
    for s in pretrain extend passkey sft rl; do
        [ -s "$P/$s.png" ] && plots=$(echo "$plots" | jq -c --arg s $s '. + [{title: $s, file: "plots/\($s).png"}]')
    done
    echo "$plots" >"$R/plots.json"
}

render() { jq -r -f "$here/demo/render.jq" "$OUT/report.json"; }

# ---- run ------------------------------------------------------------------------------------------
stage data ''
stage tokenizer ds-tokenize
stage pretrain ds-pretrain
[ $STATUS = ok ] && CKPT=$C/pretrain
stage extend ds-extend-ctx
[ $STATUS = ok ] && CKPT=$C/extend
stage sft ds-sft
[ $STATUS = ok ] && CKPT=$C/sft
stage rl ds-rl
[ $STATUS = ok ] && CKPT=$C/rl
stage quantize ds-quantize
stage evaluate ds-generate
stage generate ds-generate
report
