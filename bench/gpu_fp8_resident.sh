#!/bin/bash
# FP8-resident weights on the GPU against the expanded ones (--fp8-expand), on one FP8 checkpoint made here:
# a ~0.6B-parameter model (tiny.json widened: hidden 2048, 4 layers of which 3 MoE with 32 routed experts
# of 768, dimensions multiples of 128) initialized by one ds-pretrain step on the GPU and quantized to
# DeepSeek's layout by ds-quantize. For each mode and batch size: the "weights:" line (what the load
# promised), the device memory the run took (cudaMemGetInfo, ds-generate's "device memory:" line) and the
# prefill/decode tokens/s of a greedy run of NEW tokens. Resident: Linear weights as E4M3 + 128x128 scales
# in device memory, products by cuBLASLt's block-scaled FP8 GEMM with 1x128-quantized activations;
# expanded: fp32 weights with the backend's bf16 copy, bf16 GEMMs. The machine's GPU is used alone.
#
# Usage: bench/gpu_fp8_resident.sh          Environment: DS_BIN (bin/), NEW (64), BATCHES ("1 8"), REPS (2).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
PY=${PY:-python3}
NEW=${NEW:-64} BATCHES=${BATCHES:-"1 8"} REPS=${REPS:-2}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat "$ROOT"/docs/*.md "$ROOT"/README.md >"$W/text.txt"
"$BIN/ds-tokenize" train -q --vocab-size 400 -o "$W/tok.json" "$W/text.txt"
"$BIN/ds-tokenize" encode -q -t "$W/tok.json" -o "$W/shards/" "$W/text.txt"
"$PY" - "$ROOT/share/configs/tiny.json" "$W/cfg.json" <<'EOF2'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=2048, intermediate_size=5632, moe_intermediate_size=768, n_routed_experts=32, num_hidden_layers=4,
         num_nextn_predict_layers=0, q_lora_rank=512, kv_lora_rank=256, num_attention_heads=16, qk_nope_head_dim=64,
         qk_rope_head_dim=32, v_head_dim=64, n_group=4, topk_group=2, num_experts_per_tok=4, max_position_embeddings=1024)
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF2
"$BIN/ds-pretrain" --config "$W/cfg.json" --data "$W/shards" --tokenizer "$W/tok.json" --batch 1 --seq-len 64 --steps 1 \
    --seed 7 --val-every 0 -q -o "$W/ck" --device cuda
"$BIN/ds-quantize" -m "$W/ck" -o "$W/ck8" --to fp8 -q
echo "checkpoint: $(du -sh "$W/ck8" | cut -f1) FP8 ($(du -sh "$W/ck" | cut -f1) as trained)"
printf '%s\n' "5 17 42 9 100 3 7 7 7 12 250 31 64 77 8 19" >"$W/p1.txt"
printf 'mode\tbatch\tweights_reported_GiB\tdevice_used_GiB\tprefill_tok_s\tdecode_tok_s\n' >"$W/table.tsv"
for r in $(seq "$REPS"); do
    for b in $BATCHES; do
        for i in $(seq "$b"); do cat "$W/p1.txt"; done >"$W/prompts.txt"
        for mode in resident expanded; do
            extra=()
            [ "$mode" = expanded ] && extra=(--fp8-expand)
            "$BIN/ds-generate" -m "$W/ck8" --ids --temperature 0 --ignore-eos --max-new "$NEW" --batch "$b" -v \
                --device cuda "${extra[@]}" <"$W/prompts.txt" >/dev/null 2>"$W/err" || { tail -5 "$W/err"; exit 1; }
            wrep=$(sed -n 's/^weights: \([0-9.]*\) GiB.*/\1/p' "$W/err" | head -1)
            used=$(sed -n 's/^device memory: \([0-9.]*\) GiB.*/\1/p' "$W/err")
            pre=$(sed -n 's/.*prefill \([0-9.]*\) tok\/s.*/\1/p' "$W/err")
            dec=$(sed -n 's/.*decode \([0-9.]*\) tok\/s.*/\1/p' "$W/err")
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$b" "$wrep" "$used" "$pre" "$dec" >>"$W/table.tsv"
            [ "$r" = 1 ] && grep -E '^weights:' "$W/err"
        done
    done
done
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader 2>/dev/null || true
column -t -s $'\t' "$W/table.tsv"
