#!/usr/bin/env bats
# ds-generate --dtype bf16: the weights held in bf16 (lib/fp8/resident.h: rounded to nearest even from a
# float32 checkpoint, mapped as they are from a BF16 one), activations, norms and sums in fp32.
#  - on a float32 checkpoint it equals, token for token and log-probability for log-probability (bit for
#    bit: the same printed digits), plain ds-generate on the same checkpoint with its 2-D weights rounded to
#    bf16 by ml_dtypes (tests/ref/generate_ckpt.py --bf16-matrices): greedy and sampled, batches of 3 and 1,
#    --mtp, both prefill forms, prefill chunks smaller than the prompts, 1 and 2 threads, --score;
#  - on a BF16 checkpoint (weights mapped, not copied) it equals the float32 load of the same file;
#  - on an FP8 checkpoint the FP8 weights stay FP8 and the others are bf16 (within 1e-5 of the FP8-resident
#    run on those others rounded: the FP8 products' additions may be ordered otherwise);
#  - against transformers in fp32 on the rounded weights: --score within the 2e-4 of tests/ref/generate.bats,
#    greedy tokens equal;
#  - the weights' resident memory (VmRSS once loaded) is half of fp32's, as the "weights:" line says;
#  - --chat on a terminal: its replies equal fp32's on the rounded weights; --serve loads the same way: its
#    greedy completions equal the batch tool's;
#  - combinations it cannot serve are refused with one line.

bats_require_minimum_version 1.5.0

load serve_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    # hidden 80 and experts of 36: K and N tails in the few-row kernels (not multiples of 16 or 4)
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json --mtp --seed 7
              --set hidden_size=80 --set moe_intermediate_size=36 --set intermediate_size=120"
    $mk --out "$T/f32"
    $mk --out "$T/r16" --bf16-matrices
    $mk --out "$T/b16" --dtype bf16
    printf '0 5 9 13 77 100 200 3 4 5 6 7\n1 2 3\n' >"$T/ids.txt"
    seq 2 7 300 | tr '\n' ' ' >>"$T/ids.txt"
    echo >>"$T/ids.txt"
}

# the generations of two JSONL outputs without their timings: tokens, log-probabilities, finish reasons
same_jsonl() {
    cmp <(jq -c '{tokens, logprobs, finish_reason}' "$1") <(jq -c '{tokens, logprobs, finish_reason}' "$2")
}

@test "--dtype bf16 equals fp32 on the weights rounded by ml_dtypes, bit for bit: greedy, sampled, batches, --mtp, prefill forms, threads" {
    local n=0
    while read -r args; do
        "$DS_BIN/ds-generate" -m "$T/f32" --dtype bf16 --ids --max-new 20 --ignore-eos --jsonl -q $args <"$T/ids.txt" >"$T/a.jsonl"
        "$DS_BIN/ds-generate" -m "$T/r16" --ids --max-new 20 --ignore-eos --jsonl -q $args <"$T/ids.txt" >"$T/b.jsonl"
        same_jsonl "$T/a.jsonl" "$T/b.jsonl"
        [ "$(wc -l <"$T/a.jsonl")" -eq 3 ]
        n=$((n + 1))
    done <<'EOF'
--temperature 0 --batch 3
--temperature 0.8 --top-k 40 --seed 11 --batch 3 --mtp
--temperature 0 --batch 1 --prefill absorbed --threads 1
--temperature 0.9 --seed 3 --batch 2 --prefill-chunk 5 --mtp --threads 2
EOF
    [ "$n" -eq 4 ]
    # and not by accident: the unrounded weights give other log-probabilities
    "$DS_BIN/ds-generate" -m "$T/f32" --ids --max-new 20 --ignore-eos --jsonl -q --temperature 0 --batch 3 <"$T/ids.txt" >"$T/c.jsonl"
    ! same_jsonl "$T/a.jsonl" "$T/c.jsonl"
    "$DS_BIN/ds-generate" -m "$T/f32" --dtype bf16 --ids --score -q <"$T/ids.txt" >"$T/a.jsonl"
    "$DS_BIN/ds-generate" -m "$T/r16" --ids --score -q <"$T/ids.txt" >"$T/b.jsonl"
    cmp "$T/a.jsonl" "$T/b.jsonl"
}

@test "a BF16 checkpoint is mapped as it is and gives what its float32 load gives" {
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/b16" --dtype bf16 --ids --max-new 16 --ignore-eos --jsonl \
        --temperature 0.7 --seed 5 --mtp --batch 3 <"$T/ids.txt"
    [ "$status" -eq 0 ]
    echo "$output" >"$T/a.jsonl"
    echo "$stderr" | grep '^weights: '
    [[ "$stderr" =~ weights:\ ([0-9.]+)\ GiB\ in\ memory:\ bf16\ ([0-9.]+)\ GiB\ \(([0-9.]+)\ GiB\ mapped ]]
    [ "${BASH_REMATCH[2]}" = "${BASH_REMATCH[3]}" ] # every bf16 weight mapped, none rounded into memory
    "$DS_BIN/ds-generate" -m "$T/b16" --ids --max-new 16 --ignore-eos --jsonl --temperature 0.7 --seed 5 --mtp \
        --batch 3 -q <"$T/ids.txt" >"$T/b.jsonl"
    same_jsonl "$T/a.jsonl" "$T/b.jsonl"
}

@test "an FP8 checkpoint with --dtype bf16: FP8 weights stay FP8, the rest bf16; as the FP8-resident run on the rest rounded" {
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json --mtp --seed 8
              --fp8 e4m3 --set hidden_size=256 --set moe_intermediate_size=96"
    $mk --out "$T/f8"
    $mk --out "$T/f8r" --bf16-matrices
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/f8" --dtype bf16 --ids --max-new 16 --ignore-eos --jsonl \
        --temperature 0.7 --seed 2 --mtp --batch 3 <"$T/ids.txt"
    [ "$status" -eq 0 ]
    echo "$output" >"$T/a.jsonl"
    echo "$stderr" | grep '^weights: '
    [[ "$stderr" == *"weights: "*" + FP8 Linear weights "* ]]
    "$DS_BIN/ds-generate" -m "$T/f8r" --ids --max-new 16 --ignore-eos --jsonl --temperature 0.7 --seed 2 --mtp \
        --batch 3 -q <"$T/ids.txt" >"$T/b.jsonl"
    # the FP8 products run through other fp32 GEMM kernels here (few-row against sgemm): the order of the
    # additions may differ, as in tests/bats/fp8-resident.bats
    "$DS_PY" - "$T/a.jsonl" "$T/b.jsonl" <<'EOF'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 3
assert all(x["tokens"] == y["tokens"] for x, y in zip(a, b))
d = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x["logprobs"], y["logprobs"]) if p is not None)
print("max |diff|", d)
assert d <= 1e-5, d
EOF
}

@test "against transformers in fp32 on the rounded weights: scores within 2e-4, the same greedy tokens" {
    "$DS_BIN/ds-generate" -m "$T/f32" --dtype bf16 --ids --score -q <"$T/ids.txt" >"$T/ours.jsonl"
    "$DS_PY" "$DS_ROOT/tests/ref/generate_ref.py" score "$T/r16" <"$T/ids.txt" >"$T/ref.jsonl"
    "$DS_PY" - "$T/ours.jsonl" "$T/ref.jsonl" <<'EOF'
import json, sys
a = [[v for v in json.loads(l)["logprobs"] if v is not None] for l in open(sys.argv[1])]
b = [json.loads(l)["logprobs"] for l in open(sys.argv[2])]
assert len(a) == len(b) == 3 and all(len(x) == len(y) for x, y in zip(a, b))
d = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))
print("max |diff| vs transformers:", d)
assert d < 2e-4, d
EOF
    "$DS_PY" "$DS_ROOT/tests/ref/generate_ref.py" greedy "$T/r16" 24 <"$T/ids.txt" >"$T/ref_greedy.txt"
    "$DS_BIN/ds-generate" -m "$T/f32" --dtype bf16 --ids --temperature 0 --max-new 24 --ignore-eos -q <"$T/ids.txt" >"$T/ours.txt"
    cmp "$T/ref_greedy.txt" "$T/ours.txt"
}

@test "the weights' resident memory once loaded is half of fp32's, as the weights line reports" {
    local big="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json --out $T/big
               --set hidden_size=512 --set intermediate_size=1024 --set moe_intermediate_size=512 --set n_routed_experts=8
               --set num_hidden_layers=4 --set num_nextn_predict_layers=0 --set q_lora_rank=128 --set kv_lora_rank=64
               --set num_attention_heads=8"
    $big
    echo "1 2 3 4" >"$T/one.txt"
    local rss="$DS_PY $DS_ROOT/tests/ref/rss_loaded.py loaded $T/one.txt"
    read -r base st0 < <($rss "$T/e0" "$DS_BIN/ds-generate" -m "$T/f32" --ids --max-new 2) # the process alone, ~0 weights
    read -r r32 st32 < <($rss "$T/e32" "$DS_BIN/ds-generate" -m "$T/big" --ids --max-new 2 -v)
    read -r r16 st16 < <($rss "$T/e16" "$DS_BIN/ds-generate" -m "$T/big" --ids --max-new 2 --dtype bf16)
    echo "VmRSS once loaded: process $base KiB, fp32 $r32 KiB, bf16 $r16 KiB"
    [ "$st0" -eq 0 ] && [ "$st32" -eq 0 ] && [ "$st16" -eq 0 ]
    grep '^weights: ' "$T/e32" "$T/e16"
    "$DS_PY" - "$base" "$r32" "$r16" "$(grep '^weights: ' "$T/e16")" <<'EOF'
import re, sys
base, r32, r16 = map(int, sys.argv[1:4])
g = [float(x) for x in re.findall(r"([0-9.]+) GiB", sys.argv[4])]
total, expanded = g[0], g[-1]
w32, w16 = (r32 - base) / 2**20, (r16 - base) / 2**20  # GiB above the process's own
print("weights resident: fp32 %.3f GiB, bf16 %.3f GiB (ratio %.3f); reported %.3f and %.3f" % (w32, w16, w16 / w32, expanded, total))
assert 0.45 <= w16 / w32 <= 0.6, w16 / w32
assert 0.85 <= (w32 - w16) / (expanded - total) <= 1.15, (w32 - w16, expanded - total)
EOF
}

teardown() { stop_server S; }

# a checkpoint with a tokenizer ($T/tok) and its copy with the matrices rounded by ml_dtypes ($T/tok16)
tok_ckpts() {
    [ -d "$T/tok16" ] && return
    head -c 20000 /usr/share/common-licenses/GPL-3 >"$T/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 300 -o "$T/tok.json" "$T/prose.txt"
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json --seed 9
              --tokenizer $T/tok.json --set vocab_size=300"
    $mk --out "$T/tok"
    $mk --out "$T/tok16" --bf16-matrices
}

@test "--chat on a terminal with --dtype bf16: the replies of fp32 on the rounded weights, turn by turn" {
    tok_ckpts
    local script='say hello there\nsay what is free software?\nsay /exit\n'
    for ck in tok tok16; do
        mkdir -p "$T/chat_$ck"
        local dt=fp32
        [ "$ck" = tok ] && dt=bf16
        printf "$script" | "$DS_PY" "$DS_ROOT/tests/ref/chat_pty.py" "$T/chat_$ck" -- "$DS_BIN/ds-generate" -m "$T/$ck" \
            --chat -v --dtype $dt --temperature 0 --max-new 12
        [ "$(cat "$T/chat_$ck/status")" -eq 0 ]
    done
    grep '^weights: ' "$T/chat_tok/stderr"
    cmp "$T/chat_tok/reply.0" "$T/chat_tok16/reply.0"
    cmp "$T/chat_tok/reply.1" "$T/chat_tok16/reply.1"
    [ -s "$T/chat_tok/reply.1" ]
}

@test "--serve --dtype bf16 answers with the batch tool's greedy completions" {
    tok_ckpts
    start_server S -m "$T/tok" --dtype bf16 --batch 2
    grep '^weights: ' "$T/S.err"
    for p in "The license" "You may convey"; do
        curl -sf "$S_URL/v1/completions" -d "{\"model\": \"tok\", \"prompt\": \"$p\", \"max_tokens\": 12, \"temperature\": 0}" |
            jq -r '.choices[0].text' >"$T/served.txt"
        "$DS_BIN/ds-generate" -m "$T/tok" --dtype bf16 --prompt "$p" --max-new 12 --temperature 0 --jsonl -q |
            jq -r '.completion' >"$T/batch.txt"
        cat "$T/served.txt"
        cmp "$T/served.txt" "$T/batch.txt"
    done
}

@test "combinations --dtype bf16 cannot serve are refused with one line" {
    for args in "--device cuda" "--w8a8" "--fp8-expand" "--ep 2"; do
        run --separate-stderr "$DS_BIN/ds-generate" -m "$T/f32" --dtype bf16 --prompt x $args
        [ "$status" -eq 2 ]
        echo "$stderr"
        [[ "${stderr%%$'\n'*}" == "ds-generate: error: --dtype bf16 holds the weights in bf16 on the CPU: not with ${args%% *}"* ]]
    done
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/f32" --dtype fp16 --prompt x
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"--dtype"*"fp32|bf16"* ]] || [[ "$stderr" == *"--dtype"*"fp32"*"bf16"* ]]
}
