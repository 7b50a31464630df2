#!/usr/bin/env bats
# ds-generate against transformers (DeepseekV3ForCausalLM, fp32, CPU) on random checkpoints it loads:
#  - --score --ids gives transformers' per-token log-probabilities (plain RoPE, YaRN, q_proj without
#    query compression);
#  - greedy generation emits exactly the tokens of transformers' generate;
#  - every log-probability reported while sampling equals transformers' full forward over prompt + completion;
#  - rope_interleave false (the rotate-half layout): scoring with both prefill forms, sampling (decode
#    over the latent cache) and greedy generation;
#  - --w8a8 (scoring and sampling) equals transformers with DeepSeek's FP8 inference numerics patched in
#    (generate_ref.py w8a8: Linear inputs in 1x128 tiles, weights in 128x128 blocks, E4M3; kv_b, router and
#    head in fp32).
# Two Python processes in all (transformers takes seconds to import).

bats_require_minimum_version 1.5.0

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json"
    $mk --out "$T/plain" --seed 3
    $mk --out "$T/yarn" --seed 4 --set 'rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}'
    # (transformers' DeepSeek-V3 always routes with sigmoid scores and groups: only q_proj varies here)
    $mk --out "$T/noq" --seed 5 --set q_lora_rank=null --set n_group=2 --set topk_group=1
    $mk --out "$T/halves" --seed 6 --set rope_interleave=false
    # a model transformers initialised and saved itself (save_pretrained)
    "$DS_PY" "$DS_ROOT/tests/ref/generate_ref.py" save "$DS_ROOT/share/configs/tiny.json" "$T/hf" 0.1
    # inputs: short, long (past the YaRN original length), BOS-led
    printf '0 5 9 13 77 100 200 3 4 5 6 7\n1 2 3\n' >"$T/ids.txt"
    seq 2 7 300 | tr '\n' ' ' >>"$T/ids.txt"
    echo >>"$T/ids.txt"
    # our generations (sampled) whose log-probabilities transformers checks
    "$DS_BIN/ds-generate" -m "$T/plain" --ids --max-new 24 --temperature 0.8 --top-k 40 --seed 11 --jsonl -q \
        --ignore-eos <"$T/ids.txt" >"$T/sampled.jsonl"
    "$DS_BIN/ds-generate" -m "$T/plain" --ids --max-new 24 --temperature 0.8 --top-k 40 --seed 12 --jsonl -q \
        --ignore-eos --w8a8 <"$T/ids.txt" >"$T/sampled8.jsonl"
    "$DS_BIN/ds-generate" -m "$T/halves" --ids --max-new 24 --temperature 0.8 --top-k 40 --seed 13 --jsonl -q \
        --ignore-eos <"$T/ids.txt" >"$T/sampled_halves.jsonl"
    # one transformers process scores everything
    {
        for ck in plain yarn noq hf; do sed "s|^|$T/$ck\t|" "$T/ids.txt"; done
        jq -r '.tokens | map(tostring) | join(" ")' "$T/sampled.jsonl" >"$T/completions.txt"
        while read -r p && read -r c <&3; do printf '%s\t%s %s\n' "$T/plain" "$p" "$c"; done \
            <"$T/ids.txt" 3<"$T/completions.txt"
        sed "s|^|w8a8:$T/plain\t|" "$T/ids.txt"
        jq -r '.tokens | map(tostring) | join(" ")' "$T/sampled8.jsonl" >"$T/completions8.txt"
        while read -r p && read -r c <&3; do printf 'w8a8:%s\t%s %s\n' "$T/plain" "$p" "$c"; done \
            <"$T/ids.txt" 3<"$T/completions8.txt"
        sed "s|^|$T/halves\t|" "$T/ids.txt"
        jq -r '.tokens | map(tostring) | join(" ")' "$T/sampled_halves.jsonl" >"$T/completions_halves.txt"
        while read -r p && read -r c <&3; do printf '%s\t%s %s\n' "$T/halves" "$p" "$c"; done \
            <"$T/ids.txt" 3<"$T/completions_halves.txt"
    } >"$T/score_in.txt"
    "$DS_PY" "$DS_ROOT/tests/ref/generate_ref.py" score <"$T/score_in.txt" >"$T/ref_score.jsonl"
}

# max |a - b| over matching log-probabilities of two JSONL files (ours has a leading null)
maxdiff() {
    "$DS_PY" - "$1" "$2" <<'EOF'
import json, sys
a = [json.loads(l)["logprobs"] for l in open(sys.argv[1])]
b = [json.loads(l)["logprobs"] for l in open(sys.argv[2])]
assert len(a) == len(b), (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    x = [v for v in x if v is not None]
    assert len(x) == len(y), (len(x), len(y))
    worst = max([worst] + [abs(p - q) for p, q in zip(x, y)])
print(worst)
EOF
}

@test "--score --ids equals transformers: plain RoPE, YaRN, no query compression, saved by transformers" {
    i=0
    for ck in plain yarn noq hf; do
        "$DS_BIN/ds-generate" -m "$T/$ck" --score --ids -q <"$T/ids.txt" >"$T/ours_$ck.jsonl"
        sed -n "$((i * 3 + 1)),$((i * 3 + 3))p" "$T/ref_score.jsonl" >"$T/ref_$ck.jsonl"
        d=$(maxdiff "$T/ours_$ck.jsonl" "$T/ref_$ck.jsonl")
        echo "$ck: max |diff| = $d"
        "$DS_PY" -c "import sys; sys.exit(0 if $d < 2e-4 else 1)"
        i=$((i + 1))
    done
}

# every sampled token's log-probability against the reference's full forward over prompt + completion
check_sampled() {
    "$DS_PY" - "$T/ids.txt" "$1" "$2" <<'EOF'
import json, sys
prompts = [l.split() for l in open(sys.argv[1]) if l.strip()]
gen = [json.loads(l) for l in open(sys.argv[2])]
ref = [json.loads(l)["logprobs"] for l in open(sys.argv[3])]
worst = 0.0
for p, g, r in zip(prompts, gen, ref):
    tail = r[len(p) - 1:]  # log p(completion token i | prompt + completion before it)
    assert len(tail) == len(g["logprobs"]) == 24
    worst = max([worst] + [abs(a - b) for a, b in zip(tail, g["logprobs"])])
print("max |diff|", worst)
sys.exit(0 if worst < 2e-4 else 1)
EOF
}

@test "every sampled token's log-probability equals transformers' full forward over prompt + completion" {
    sed -n 13,15p "$T/ref_score.jsonl" >"$T/ref_full.jsonl"
    check_sampled "$T/sampled.jsonl" "$T/ref_full.jsonl"
}

@test "--w8a8 --score equals transformers under DeepSeek's FP8 inference numerics, far from fp32" {
    "$DS_BIN/ds-generate" -m "$T/plain" --score --ids -q --w8a8 <"$T/ids.txt" >"$T/ours8.jsonl"
    sed -n 16,18p "$T/ref_score.jsonl" >"$T/ref8.jsonl"
    d=$(maxdiff "$T/ours8.jsonl" "$T/ref8.jsonl")
    "$DS_BIN/ds-generate" -m "$T/plain" --score --ids -q <"$T/ids.txt" >"$T/ours32.jsonl"
    f=$(maxdiff "$T/ours32.jsonl" "$T/ref8.jsonl")
    echo "W8A8 vs reference W8A8: max |diff| = $d; fp32 vs W8A8: $f"
    "$DS_PY" -c "import sys; sys.exit(0 if $d < 2e-4 and $f > 1e-2 else 1)"
}

@test "--w8a8 sampling: every token's log-probability equals the W8A8 reference's full forward" {
    sed -n 19,21p "$T/ref_score.jsonl" >"$T/ref_full8.jsonl"
    check_sampled "$T/sampled8.jsonl" "$T/ref_full8.jsonl"
}

# greedy tokens of a checkpoint: transformers' generate = ours batched (naive prefill) = ours one at a time
# (absorbed prefill)
check_greedy() {
    "$DS_PY" "$DS_ROOT/tests/ref/generate_ref.py" greedy "$T/$1" 30 <"$T/ids.txt" >"$T/ref_greedy_$1.txt"
    "$DS_BIN/ds-generate" -m "$T/$1" --ids --temperature 0 --max-new 30 --ignore-eos -q <"$T/ids.txt" >"$T/ours_$1.txt"
    "$DS_BIN/ds-generate" -m "$T/$1" --ids --temperature 0 --max-new 30 --ignore-eos -q --batch 1 \
        --prefill absorbed <"$T/ids.txt" >"$T/ours1_$1.txt"
    cmp "$T/ref_greedy_$1.txt" "$T/ours_$1.txt"
    cmp "$T/ref_greedy_$1.txt" "$T/ours1_$1.txt"
}

@test "greedy generation emits transformers' generate tokens exactly (batched and one at a time)" {
    check_greedy plain
}

@test "rope_interleave false: --score equals transformers with the naive and the absorbed prefill" {
    sed -n 22,24p "$T/ref_score.jsonl" >"$T/ref_halves.jsonl"
    for form in naive absorbed; do
        "$DS_BIN/ds-generate" -m "$T/halves" --score --ids -q --prefill $form <"$T/ids.txt" >"$T/ours_halves.jsonl"
        d=$(maxdiff "$T/ours_halves.jsonl" "$T/ref_halves.jsonl")
        echo "$form: max |diff| = $d"
        "$DS_PY" -c "import sys; sys.exit(0 if $d < 2e-4 else 1)"
    done
}

@test "rope_interleave false: sampled log-probabilities (decode over the latent cache) equal transformers'" {
    sed -n 25,27p "$T/ref_score.jsonl" >"$T/ref_full_halves.jsonl"
    check_sampled "$T/sampled_halves.jsonl" "$T/ref_full_halves.jsonl"
}

@test "rope_interleave false: greedy generation emits transformers' tokens (naive and absorbed prefill)" {
    check_greedy halves
}
