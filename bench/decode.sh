#!/bin/bash
# Decode speed of ds-generate against transformers' generate, side by side in one run: bench/generate.sh
# (same random weights, prompts, threads; greedy, fixed lengths) on the demo config (hidden 256) and on a
# hidden-768 config (V3's shape scaled as bench/cpu_sweep.sh does: 4 layers, 12 heads, q_lora 288,
# kv_lora 192, 16 routed experts of width 256 top-4 + 1 shared, vocabulary 4096, one MTP module), for each
# thread count, ROUNDS times. Prints the load before every round and a summary of the decode ratios.
#
# usage: bench/decode.sh            Environment: ROUNDS (2), THREAD_LIST ("1 2"), PROMPT, NEW, BATCH (as
#                                   generate.sh), OMP_WAIT_POLICY (passive, see below), DS_BIN, DS_PY,
#                                   DTYPE (fp32 | bf16, as generate.sh).
# DTYPE=bf16: ds-generate --dtype bf16 against transformers in bf16 (torch_dtype=torch.bfloat16) and against
# transformers in fp32, and at the end the resident memory of each config's weights (VmRSS once loaded,
# tests/ref/rss_loaded.py, less the process's own) with fp32, bf16 and FP8-resident weights (an FP8 copy of
# the checkpoint in DeepSeek's layout).
# OMP_WAIT_POLICY defaults to passive for both sides: on a shared machine spinning OpenMP workers starve
# (transformers' 2-thread decode drops to a few tokens/s with the default policy, which says nothing about
# either program).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
ROUNDS=${ROUNDS:-2} THREAD_LIST=${THREAD_LIST:-"1 2"} DTYPE=${DTYPE:-fp32}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$PY" - "$ROOT/share/configs/demo.json" "$W/hidden768.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
d = 768
c.update(hidden_size=d, num_hidden_layers=4, first_k_dense_replace=1, intermediate_size=2 * d,
         num_attention_heads=d // 64, num_key_value_heads=d // 64, q_lora_rank=d * 3 // 8, kv_lora_rank=d // 4,
         qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, moe_intermediate_size=256, n_routed_experts=16,
         num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1, vocab_size=4096,
         num_nextn_predict_layers=1)
json.dump(c, open(sys.argv[2], "w"), indent=1)
EOF
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, weights $DTYPE"
for r in $(seq "$ROUNDS"); do
    for cfg in "$ROOT/share/configs/demo.json" "$W/hidden768.json"; do
        for th in $THREAD_LIST; do
            echo "## round $r, load average $(cut -d' ' -f1-3 /proc/loadavg)"
            THREADS=$th DTYPE=$DTYPE "$ROOT/bench/generate.sh" "$cfg" | tee "$W/out" | grep -v '^--mtp\|^note\|^ '
            awk -v c="$(basename "$cfg" .json)" -v t="$th" '/^decode tokens/ {print c, t, $3, $4, $5}' "$W/out" >>"$W/sum"
            awk -v c="$(basename "$cfg" .json)" -v t="$th" '/^decode vs fp32/ {print c, t, $4, $5, $6}' "$W/out" >>"$W/sum32"
        done
    done
done
summary() { # FILE: the decode lines of every round, one column per round
    "$PY" - "$1" <<'EOF'
import collections, sys
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    c, t, ours, theirs, ratio = line.split()
    rows.setdefault((c, t), []).append(f"{float(ours):.0f} / {float(theirs):.0f} ({float(ratio):.2f}x)")
for (c, t), v in rows.items():
    print(f"{c:10} {t} threads: " + "   ".join(v))
EOF
}
echo "## summary: decode tokens/s, ds-generate ($DTYPE) / transformers ($DTYPE) (ratio), one column per round; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
summary "$W/sum"
[ "$DTYPE" = fp32 ] && exit 0
echo "## summary: decode tokens/s, ds-generate ($DTYPE) / transformers (fp32) (ratio), one column per round"
summary "$W/sum32"
echo "## resident memory once loaded (VmRSS less the process's own, MiB), and the weights line of each"
echo "1 2 3 4" >"$W/one.txt"
rss() { "$PY" "$ROOT/tests/ref/rss_loaded.py" loaded "$W/one.txt" "$W/err" "${DS_BIN:-$ROOT/bin}/ds-generate" --ids --max-new 2 "$@"; }
"$PY" "$ROOT/tests/ref/generate_ckpt.py" --config "$ROOT/share/configs/tiny.json" --out "$W/tiny"
read -r base _ < <(rss -m "$W/tiny")
for cfg in "$ROOT/share/configs/demo.json" "$W/hidden768.json"; do
    "$PY" "$ROOT/tests/ref/generate_ckpt.py" --config "$cfg" --out "$W/m32" --mtp --std 0.05
    "$PY" "$ROOT/tests/ref/generate_ckpt.py" --config "$cfg" --out "$W/m8" --mtp --std 0.05 --fp8 e4m3
    for run in "fp32:-m $W/m32 -v" "bf16:-m $W/m32 --dtype bf16" "fp8-resident:-m $W/m8" "fp8+bf16:-m $W/m8 --dtype bf16"; do
        read -r r _ < <(rss ${run#*:})
        printf '%-10s %-13s %7.1f MiB   %s\n' "$(basename "$cfg" .json)" "${run%%:*}" "$(echo "($r - $base) / 1024" | bc -l)" \
            "$(grep -a '^weights: ' "$W/err" | cut -c1-72)"
    done
done
