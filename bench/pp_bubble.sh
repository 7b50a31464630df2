#!/bin/sh
# bench/pp_bubble.sh — pipeline parallelism on one machine (docs/BENCHMARKS.md "Pipeline parallelism"):
# the measured bubble of 1F1B, ZB1P and DualPipe on 2, 4 and 8 ranks against V3's Table 2 formulas
# evaluated with the measured per-op times, then the step time with a delay injected on every transfer
# (DS_PP_DELAY_MS), with the overlap on and off (DS_PP_OVERLAP=0).
# Usage: bench/pp_bubble.sh [BIN]   (ranks are oversubscribed on a small machine: the output says so)
set -eu
BIN=${1:-bin}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
cat /usr/share/common-licenses/GPL-3 >"$W/prose.txt"
"$BIN/ds-tokenize" train -q --vocab-size 400 -o "$W/tok.json" "$W/prose.txt"
"$BIN/ds-tokenize" encode -q -t "$W/tok.json" -o "$W/shards/" "$W/prose.txt"
# share/configs/tiny.json with 8 decoder layers (1 dense, 7 MoE) and its MTP module
sed 's/"num_hidden_layers": 2/"num_hidden_layers": 8/' share/configs/tiny.json >"$W/cfg8.json"
M=${M:-16}
ARGS="--config $W/cfg8.json --data $W/shards --tokenizer $W/tok.json --steps ${STEPS:-4} --batch $M --micro-batch 1
      --seq-len 32 --seed 3 --threads 1 --peak-tflops 0.1 --log-every 0 --val-every 0 -o $W/out --force"
echo "# $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $M micro-batches of 1x32 tokens, commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
# prints: the report line's ms/step, mean bubble, and F B W BW mean op times
run() { # np schedule [env...]
    np=$1 s=$2
    shift 2
    env "$@" mpirun --oversubscribe -np "$np" "$BIN/ds-pretrain" $ARGS --pp "$np" --schedule "$s" 2>&1 |
        grep 'pipeline: [0-9]* steps' | sed 's/.*steps, //'
}
echo "| ranks | schedule | step ms | measured bubble (mean over ranks) | Table 2 bubble / (bubble + M(F+B)) | F, B(input), W, BW ms |"
echo "| ---: | --- | ---: | ---: | ---: | --- |"
for pp in 2 4 8; do
    for s in 1f1b zb1p dualpipe; do
        line=$(run "$pp" "$s")
        echo "$line" | awk -v pp="$pp" -v s="$s" -v M="$M" '{
            ms = $1; sub(/.*\(mean /, ""); mb = $1; sub(/%\).*/, "", mb)
            f = b = w = bw = 0
            for (i = 1; i <= NF; i++) {
                if ($i == "F") f = $(i + 1); if ($i == "B") b = $(i + 1); if ($i == "W") w = $(i + 1); if ($i == "BW") bw = $(i + 1)
            }
            full = (b > 0 ? b + w : bw)       # a full backward: B + W, or BW
            if (s == "1f1b") bub = (pp - 1) * (f + full)
            else if (s == "zb1p") bub = (pp - 1) * (f + full - 2 * w)
            else bub = (pp / 2 - 1) * ((f + full) + full - 3 * w)   # F&B = F + B here: no compute overlap on a CPU
            busy = M * (f + full)
            printf "| %d | %s | %.0f | %s%% | %.1f%% | %s, %s, %s, %s |\n", pp, s, ms, mb, 100 * bub / (bub + busy), f, b, w, bw
        }'
    done
done
echo
echo "| ranks | schedule | delay per transfer | step ms, overlap | step ms, no overlap (DS_PP_OVERLAP=0) |"
echo "| ---: | --- | ---: | ---: | ---: |"
for s in 1f1b dualpipe; do
    for d in 0 20; do
        a=$(run 4 "$s" DS_PP_DELAY_MS=$d | cut -d' ' -f1)
        b=$(run 4 "$s" DS_PP_DELAY_MS=$d DS_PP_OVERLAP=0 | cut -d' ' -f1)
        echo "| 4 | $s | $d ms | $a | $b |"
    done
done
