#!/usr/bin/env bats
# ds-generate on small random checkpoints (tests/ref/generate_ckpt.py, share/configs/tiny.json, a
# tokenizer from ds-tokenize): text, JSONL and id inputs; streamed and JSONL output in input order;
# greedy determinism across batch sizes and prefill forms; seeded sampling independent of the batch;
# stop strings, EOS, the context limit and --truncate; MTP speculation (same greedy output); --score;
# checkpoints as a directory, a bf16 file and a stream on stdin; every documented error.

bats_require_minimum_version 1.5.0

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    cat /usr/share/common-licenses/GPL-3 >"$T/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 512 -o "$T/tok.json" "$T/prose.txt"
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json"
    $mk --out "$T/ck" --mtp --tokenizer "$T/tok.json" --stream "$T/ck.safetensors"
    $mk --out "$T/plain" --seed 1
    $mk --out "$T/bf16" --seed 2 --dtype bf16 --tokenizer "$T/tok.json"
}

gen() { "$DS_BIN/ds-generate" "$@"; }
# one field of every JSONL line, compactly
field() { jq -c ".$1"; }

@test "--prompt: one streamed completion per prompt, in order; statistics and the cache size on stderr" {
    run --separate-stderr gen -m "$T/ck" --prompt "The license" --prompt "You may" --max-new 12 --temperature 0
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 2 ]
    [[ "$stderr" == *"2 prompts: "*" 24 new"* ]]
    [[ "$stderr" == *"kv cache: 40 floats per token per layer (latent 32 + rope key 8)"* ]]
    [[ "$stderr" == *"standard MHA with 4 heads x 16"*"(3.2x)"* ]]
}

@test "--jsonl: completion, tokens, logprobs, finish_reason, timing per prompt" {
    run gen -m "$T/ck" --prompt "The license" --max-new 7 --temperature 0 --jsonl -q
    [ "$status" -eq 0 ]
    echo "$output" | jq -e '(.tokens|length) == 7 and (.logprobs|length) == 7 and .finish_reason == "length"
        and .index == 0 and (.completion|type) == "string" and .prompt_tokens > 1 and .timing.total_s >= 0
        and ([.logprobs[] | select(. > 0)] | length) == 0'
}

@test "greedy output does not depend on --batch, --prefill form or chunk size" {
    printf 'The license\nYou may convey\n{"prompt": "Each licensee"}\nfree software\n' >"$T/p.txt"
    gen -m "$T/ck" --max-new 16 --temperature 0 --jsonl -q --batch 1 <"$T/p.txt" | field tokens >"$T/a"
    gen -m "$T/ck" --max-new 16 --temperature 0 --jsonl -q --batch 3 --prefill absorbed --prefill-chunk 3 \
        <"$T/p.txt" | field tokens >"$T/b"
    [ "$(wc -l <"$T/a")" -eq 4 ]
    cmp "$T/a" "$T/b"
}

@test "decoding in a batch: every sequence's tokens and log-probabilities bit for bit those of decoding it alone" {
    # equal prompts' lengths and --prefill-chunk = that length: each prompt is prefilled by its own forward
    # in both runs, so every difference would come from the batched decode steps (with and without MTP)
    "$DS_PY" -c 'import random; r = random.Random(3); print("\n".join(" ".join(str(r.randrange(2, 512)) for _ in range(9)) for _ in range(4)))' >"$T/ids.txt"
    for mtp in "" --mtp; do
        gen -m "$T/ck" --ids --max-new 24 --temperature 0 --ignore-eos --jsonl -q --prefill-chunk 9 $mtp --batch 1 <"$T/ids.txt" \
            | jq -c '[.tokens, .logprobs]' >"$T/one"
        gen -m "$T/ck" --ids --max-new 24 --temperature 0 --ignore-eos --jsonl -q --prefill-chunk 9 $mtp --batch 4 <"$T/ids.txt" \
            | jq -c '[.tokens, .logprobs]' >"$T/four"
        [ "$(wc -l <"$T/one")" -eq 4 ]
        cmp "$T/one" "$T/four"
    done
}

@test "sampling: the seed reproduces, another seed differs, the batch does not matter" {
    printf 'The license\nYou may convey\nfree software\n' >"$T/p.txt"
    s() { gen -m "$T/ck" --max-new 20 --temperature 1.2 --top-k 50 --top-p 0.95 --jsonl -q "$@" <"$T/p.txt" | field tokens; }
    s --seed 7 --batch 1 >"$T/a"
    s --seed 7 --batch 3 >"$T/b"
    s --seed 8 --batch 3 >"$T/c"
    cmp "$T/a" "$T/b"
    ! cmp -s "$T/a" "$T/c"
}

@test "JSONL input: prompt and messages; output in input order" {
    printf '%s\n' '{"prompt": "The license"}' '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "answer": "x"}' \
        '{"text": "free"}' >"$T/in.jsonl"
    run gen -m "$T/ck" --max-new 5 --jsonl -q --batch 2 <"$T/in.jsonl"
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | field index | tr '\n' ' ')" = "0 1 2 " ]
}

@test "--chat renders a prompt as a user turn: the same tokens as the equivalent messages" {
    gen -m "$T/ck" --max-new 6 --temperature 0 --jsonl -q --chat --prompt "hello there" | field tokens >"$T/a"
    echo '{"messages": [{"role": "user", "content": "hello there"}]}' |
        gen -m "$T/ck" --max-new 6 --temperature 0 --jsonl -q | field tokens >"$T/b"
    cmp "$T/a" "$T/b"
    printf 'user = "no placeholder"\n' >"$T/bad.tpl"
    run gen -m "$T/ck" --chat --chat-template "$T/bad.tpl" --prompt x
    [ "$status" -eq 1 ]
    [[ "$output" == *"chat template: line 1: user must contain {content} exactly once"* ]]
}

@test "several system messages, anywhere, are gathered after BOS joined by a blank line (DeepSeek-V3's template)" {
    echo '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "system", "content": "be kind"}, {"role": "user", "content": "and you?"}]}' |
        gen -m "$T/ck" --max-new 6 --temperature 0 --jsonl -q | jq -c '[.prompt_tokens, .tokens]' >"$T/a"
    printf '%s\n' '{"messages": [{"role": "system", "content": "be brief\n\nbe kind"}, {"role": "user", "content": "hi"}, {"role": "user", "content": "and you?"}]}' |
        gen -m "$T/ck" --max-new 6 --temperature 0 --jsonl -q | jq -c '[.prompt_tokens, .tokens]' >"$T/b"
    [ -s "$T/a" ]
    cmp "$T/a" "$T/b"
}

@test "--stop ends the completion before the stop string, even across tokens" {
    export LC_ALL=C # byte-wise string operations: completions of a random model are not valid UTF-8
    full=$(gen -m "$T/ck" --prompt "The license" --max-new 24 --temperature 0 -q)
    stop=${full:5:3}
    pre=${full%%"$stop"*}
    run gen -m "$T/ck" --prompt "The license" --max-new 24 --temperature 0 -q --stop "$stop"
    [ "$status" -eq 0 ]
    [ "$output" = "$pre" ]
    [ "${#pre}" -lt "${#full}" ]
    run gen -m "$T/ck" --prompt "The license" --max-new 24 --temperature 0 --jsonl -q --stop "$stop"
    echo "$output" | jq -e '.finish_reason == "stop" and (.tokens|length) < 24'
}

@test "EOS ends a sequence and is its last token, not in the text" {
    toks=$(gen -m "$T/plain" --ids --max-new 8 --temperature 0 --jsonl -q <<<"0 5 9 13" | jq -c .tokens)
    eos=$(echo "$toks" | jq '.[3]')
    first=$(echo "$toks" | jq "index($eos)")
    cp -r "$T/plain" "$T/eos"
    jq ".eos_token_id = $eos" "$T/plain/config.json" >"$T/eos/config.json"
    run gen -m "$T/eos" --ids --max-new 8 --temperature 0 --jsonl -q <<<"0 5 9 13"
    echo "$output" | jq -e ".finish_reason == \"eos\" and (.tokens|length) == $((first + 1)) and .tokens[-1] == $eos"
    run gen -m "$T/eos" --ids --max-new 8 --temperature 0 --jsonl -q --ignore-eos <<<"0 5 9 13"
    echo "$output" | jq -e '(.tokens|length) == 8 and .finish_reason == "length"'
}

@test "--mtp: identical greedy output, draft statistics, acceptance reported" {
    printf 'The license\nYou may convey\nfree software\n' >"$T/p.txt"
    gen -m "$T/ck" --max-new 24 --temperature 0 --jsonl -q <"$T/p.txt" | field tokens >"$T/a"
    run --separate-stderr gen -m "$T/ck" --max-new 24 --temperature 0 --jsonl --mtp <"$T/p.txt"
    [ "$status" -eq 0 ]
    echo "$output" | field tokens >"$T/b"
    cmp "$T/a" "$T/b"
    echo "$output" | head -1 | jq -e '.mtp.drafted > 0 and .mtp.accepted >= 0'
    [[ "$stderr" == *"mtp: "*" drafts accepted ("*"%): "*" tokens per sequence per decode step"* ]]
    run gen -m "$T/plain" --mtp --ids <<<"1 2 3"
    [ "$status" -eq 2 ]
    [[ "$output" == *"--mtp: the checkpoint has no MTP module"* ]]
}

@test "--ids without a tokenizer: id lines out; checkpoints as a stream (stdin, file) and in bf16" {
    run gen -m "$T/plain" --ids --max-new 5 --temperature 0 -q <<<"0 5 9 13"
    [ "$status" -eq 0 ]
    [[ "$output" =~ ^[0-9]+\ [0-9]+\ [0-9]+\ [0-9]+\ [0-9]+$ ]]
    a=$(gen -m "$T/ck" --prompt "The license" --max-new 8 --temperature 0 --jsonl -q | jq -c .tokens)
    b=$(gen -m - --prompt "The license" --max-new 8 --temperature 0 --jsonl -q <"$T/ck.safetensors" | jq -c .tokens)
    c=$(gen -m "$T/ck.safetensors" --prompt "The license" --max-new 8 --temperature 0 --jsonl -q | jq -c .tokens)
    [ "$a" = "$b" ]
    [ "$a" = "$c" ]
    run gen -m "$T/bf16" --prompt "The license" --max-new 4 --jsonl -q
    [ "$status" -eq 0 ]
}

@test "FP8 block-scaled checkpoint: the same scores as its dequantized float32 twin" {
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json --mtp --seed 6"
    $mk --out "$T/f8" --fp8 e4m3
    $mk --out "$T/f8d" --fp8 dequantized
    grep -q F8_E4M3 "$T/f8/model.safetensors"
    a=$(gen -m "$T/f8" --score --ids -q <<<"0 5 9 13 77 100 3")
    b=$(gen -m "$T/f8d" --score --ids -q <<<"0 5 9 13 77 100 3")
    [ "$a" = "$b" ]
    run gen -m "$T/f8" --ids --mtp --max-new 6 --temperature 0 -q <<<"0 5 9"
    [ "$status" -eq 0 ]
}

@test "--w8a8 on an FP8 checkpoint: scores move by the FP8 activation error only; generation and MTP run; recorded" {
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json --mtp --seed 6"
    [ -d "$T/f8" ] || $mk --out "$T/f8" --fp8 e4m3
    gen -m "$T/f8" --score --ids -q <<<"0 5 9 13 77 100 3 8 21 40" >"$T/s_deq.jsonl"
    gen -m "$T/f8" --score --ids -q --w8a8 --metrics "$T/w8.jsonl" <<<"0 5 9 13 77 100 3 8 21 40" >"$T/s_w8.jsonl"
    run "$DS_PY" - "$T/s_deq.jsonl" "$T/s_w8.jsonl" "$T/w8.jsonl" <<'EOF'
import json, sys
a, b = (json.loads(open(f).readline()) for f in sys.argv[1:3])
rec = json.loads(open(sys.argv[3]).readline())
assert rec["record"] == "config" and rec["w8a8"] is True and rec["mode"] == "score"
d = [abs(x - y) for x, y in zip(a["logprobs"][1:], b["logprobs"][1:])]
print("max |W8A8 - dequantized| =", max(d))
assert a["tokens"] == b["tokens"] and 0 < max(d) < 0.5
EOF
    echo "$output"
    [ "$status" -eq 0 ]
    run gen -m "$T/f8" --ids --w8a8 --mtp --max-new 6 --temperature 0 --jsonl -q <<<"0 5 9"
    [ "$status" -eq 0 ]
    echo "$output" | jq -e '(.tokens|length) == 6'
    a=$(gen -m "$T/f8" --ids --w8a8 --max-new 6 --temperature 0 -q <<<"0 5 9")
    [ "$(echo "$output" | jq -c .tokens)" = "[$(echo "$a" | tr ' ' ',')]" ] # MTP speculation: the same greedy tokens
}

@test "--score: tokens and per-token log-probabilities, first null" {
    run gen -m "$T/plain" --score --ids -q <<<"0 5 9 13 77"
    [ "$status" -eq 0 ]
    echo "$output" | jq -e '.tokens == [0,5,9,13,77] and (.logprobs|length) == 5 and .logprobs[0] == null
        and .n_scored == 4 and ((.sum_logprob - ([.logprobs[1:][]] | add)) | fabs) < 1e-4'
    run gen -m "$T/ck" --score -q --prompt "The license"
    echo "$output" | jq -e '.tokens[0] == 0 and (.logprobs|length) == (.tokens|length)'
}

@test "the context limit: a clear error, or truncation when asked" {
    long=$(seq 2 60 | tr '\n' ' ')
    run gen -m "$T/plain" --ids --ctx 32 --max-new 8 <<<"$long"
    [ "$status" -eq 1 ]
    [[ "$output" == *"error: prompt 0: 59 tokens + 8 new exceed the context of 32 tokens"* ]]
    [[ "$output" == *"hint: --truncate keeps the last 24 tokens"* ]]
    run gen -m "$T/plain" --ids --ctx 32 --max-new 8 --truncate --ignore-eos --jsonl -q <<<"$long" # 8 tokens whatever the draw
    [ "$status" -eq 0 ]
    echo "$output" | jq -e '.truncated_tokens == 35 and .prompt_tokens == 24 and (.tokens|length) == 8'
    run gen -m "$T/plain" --score --ids --ctx 16 <<<"$long"
    [ "$status" -eq 1 ]
    [[ "$output" == *"input 0: 59 tokens exceed the context of 16 tokens"* ]]
}

@test "malformed input is a one-line error naming the line" {
    run gen -m "$T/ck" -q <<<$'{"prompt": "ok"}\n{"prompt": '
    [ "$status" -eq 1 ]
    [[ "$output" == *"error: stdin: line 2: bad JSON at column"* ]]
    run gen -m "$T/ck" -q <<<'{"prompt": 3}'
    [[ "$output" == *"stdin: line 1: \"prompt\" must be a string"* ]]
    run gen -m "$T/ck" -q <<<'{"answer": "x"}'
    [[ "$output" == *"line 1: needs exactly one of \"prompt\" or \"messages\""* ]]
    run gen -m "$T/ck" -q <<<'{"messages": [{"role": "robot", "content": "x"}]}'
    [[ "$output" == *"messages[0].role: must be \"system\", \"user\" or \"assistant\""* ]]
    run gen -m "$T/ck" -q <<<'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}'
    [[ "$output" == *"stdin: line 1: "*"user"* ]]
    run gen -m "$T/ck" -q --score <<<'{"text": 5}'
    [[ "$output" == *"stdin: line 1: \"text\" must be a string"* ]]
    run gen -m "$T/ck" -q <<<'{"messages": []}'
    [[ "$output" == *"\"messages\" must be a non-empty array"* ]]
    run gen -m "$T/plain" --ids -q <<<'1 2 x'
    [[ "$output" == *"stdin: line 1: expected token ids separated by spaces, found 'x'"* ]]
    run gen -m "$T/plain" --ids -q <<<'1 2 512'
    [[ "$output" == *"token id 512 outside the model's vocabulary of 512"* ]]
    [ "$status" -eq 1 ]
}

@test "checkpoint errors: missing tensor, missing path, text without a tokenizer" {
    $DS_PY "$DS_ROOT/tests/ref/generate_ckpt.py" --config "$DS_ROOT/share/configs/tiny.json" --out "$T/hole" \
        --drop model.layers.1.self_attn.o_proj.weight
    run gen -m "$T/hole" --ids <<<"1 2"
    [ "$status" -eq 1 ]
    [[ "$output" == *"checkpoint: no tensor model.layers.1.self_attn.o_proj.weight, which the config implies: $T/hole"* ]]
    run gen -m "$T/nowhere" --ids <<<"1 2"
    [ "$status" -eq 1 ]
    [[ "$output" == *"ds-generate: error: "*"nowhere"* ]]
    run gen -m "$T/plain" <<<"some text"
    [ "$status" -eq 2 ]
    [[ "$output" == *"text input needs a tokenizer"*"--ids"* ]]
    run gen -m "$T/plain" --ids --stop x <<<"1 2"
    [ "$status" -eq 2 ]
    [[ "$output" == *"--stop needs a tokenizer"* ]]
}

@test "usage errors exit 2" {
    run gen --prompt x
    [ "$status" -eq 2 ]
    [[ "$output" == *"-m/--model is required"* ]]
    run gen -m - --ids
    [ "$status" -eq 2 ]
    run gen -m "$T/ck" --score --mtp --prompt x
    [ "$status" -eq 2 ]
    run gen -m "$T/ck" --top-p 0 --prompt x
    [ "$status" -eq 2 ]
    run gen -m "$T/ck" --max-new 600 --prompt x
    [ "$status" -eq 2 ]
    [[ "$output" == *"--max-new 600: leaves no room for a prompt in the context of 512 tokens"* ]]
}

@test "--metrics writes the configuration and a summary record" {
    gen -m "$T/ck" --prompt "The license" --max-new 4 -q --metrics "$T/m.jsonl" >/dev/null
    jq -e -s '.[0].record == "config" and .[0].kv_ratio_mha > 3 and .[1].record == "summary" and .[1].new_tokens == 4' "$T/m.jsonl"
}

# a copy of the plain checkpoint with this generation_config.json
with_gencfg() {
    rm -rf "$T/$1"
    cp -r "$T/plain" "$T/$1"
    printf '%s\n' "$2" >"$T/$1/generation_config.json"
}

@test "generation_config.json: do_sample false is greedy (= --temperature 0) whatever its temperature; --temperature samples" {
    gen -m "$T/plain" --ids --max-new 12 --temperature 0 --jsonl -q <<<"0 5 9 13" | field tokens >"$T/a"
    with_gencfg gc '{"do_sample": false, "temperature": 0.6, "top_p": 0.95}'
    run --separate-stderr gen -m "$T/gc" --ids --max-new 12 --jsonl <<<"0 5 9 13"
    [ "$status" -eq 0 ]
    echo "$output" | field tokens >"$T/b"
    cmp "$T/a" "$T/b"
    [[ "$stderr" == *"sampling temperature 0 = greedy (generation_config.json), top_k 0 (default), top_p 0.95 (generation_config.json), max_new 12 (--max-new), eos 1 (config.json)"* ]]
    [[ "$stderr" != *"seed "*"(random"* ]]
    # transformers' default do_sample is false: a file without it is greedy too
    with_gencfg gc2 '{"temperature": 0.6}'
    gen -m "$T/gc2" --ids --max-new 12 --jsonl -q <<<"0 5 9 13" | field tokens >"$T/c"
    cmp "$T/a" "$T/c"
    run --separate-stderr gen -m "$T/gc" --ids --max-new 12 --temperature 1.5 --seed 3 --jsonl <<<"0 5 9 13"
    [[ "$stderr" == *"sampling temperature 1.5 (--temperature), top_k 0 (default), top_p 0.95 (generation_config.json)"* ]]
    echo "$output" | field tokens >"$T/d"
    ! cmp -s "$T/a" "$T/d"
}

@test "generation_config.json: temperature, top_k, top_p are the defaults; the command line wins" {
    with_gencfg gs '{"do_sample": true, "temperature": 0.7, "top_k": 9, "top_p": 0.9, "bos_token_id": 0}'
    s() { gen --ids --max-new 16 --seed 11 --jsonl "$@" <<<"0 5 9 13"; }
    run --separate-stderr s -m "$T/gs"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"sampling temperature 0.7 (generation_config.json), top_k 9 (generation_config.json), top_p 0.9 (generation_config.json), max_new 16 (--max-new)"* ]]
    echo "$output" | field tokens >"$T/a"
    s -m "$T/plain" --temperature 0.7 --top-k 9 --top-p 0.9 -q | field tokens >"$T/b"
    cmp "$T/a" "$T/b"
    s -m "$T/plain" -q | field tokens >"$T/c"
    ! cmp -s "$T/a" "$T/c"
    run --separate-stderr s -m "$T/gs" --temperature 1.3 --top-k 0 --top-p 0.5
    [[ "$stderr" == *"sampling temperature 1.3 (--temperature), top_k 0 (--top-k), top_p 0.5 (--top-p)"* ]]
    echo "$output" | field tokens >"$T/d"
    s -m "$T/plain" --temperature 1.3 --top-k 0 --top-p 0.5 -q | field tokens >"$T/e"
    cmp "$T/d" "$T/e"
    gen -m "$T/gs" --ids --max-new 4 -q --metrics "$T/m.jsonl" <<<"1 2" >/dev/null
    jq -e -s '.[0].record == "config" and .[0].temperature == 0.7 and .[0].top_k == 9 and .[0].top_p == 0.9 and .[0].max_new == 4' "$T/m.jsonl"
}

@test "generation_config.json: max_new_tokens, max_length (the prompt counts), --max-new wins" {
    with_gencfg mn '{"do_sample": false, "max_new_tokens": 5, "max_length": 7}'
    run --separate-stderr gen -m "$T/mn" --ids --jsonl <<<"0 5 9 13"
    echo "$output" | jq -e '(.tokens|length) == 5 and .finish_reason == "length"'
    [[ "$stderr" == *"max_new 5 (generation_config.json)"* ]]
    run gen -m "$T/mn" --ids --jsonl -q --max-new 3 <<<"0 5 9 13"
    echo "$output" | jq -e '(.tokens|length) == 3'
    with_gencfg ml '{"do_sample": false, "max_length": 7}'
    run --separate-stderr gen -m "$T/ml" --ids --jsonl <<<$'0 5 9 13\n0 5'
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | jq -c '[(.tokens|length), .finish_reason]' | tr '\n' ' ')" = '[3,"length"] [5,"length"] ' ]
    [[ "$stderr" == *"max_length 7 (prompt included) (generation_config.json)"* ]]
    run gen -m "$T/ml" --ids --jsonl -q --max-new 9 <<<"0 5 9 13"
    echo "$output" | jq -e '(.tokens|length) == 9'
    # as transformers: a prompt that leaves max_length no room is an error, not one token
    run gen -m "$T/ml" --ids -q <<<"0 5 9 13 1 2 3"
    [ "$status" -eq 1 ]
    [ "$output" = "ds-generate: error: prompt 0: 7 tokens reach the max_length of 7 (prompt included): give --max-new" ]
}

@test "generation_config.json: eos_token_id as a list, every id ends a sequence; --ignore-eos wins" {
    toks=$(gen -m "$T/plain" --ids --max-new 10 --temperature 0 --jsonl -q <<<"0 5 9 13" | jq -c .tokens)
    a=$(echo "$toks" | jq '.[6]') b=$(echo "$toks" | jq '.[4]')
    n=$(echo "$toks" | jq "[index($a), index($b)] | min + 1")
    with_gencfg el "{\"do_sample\": false, \"eos_token_id\": [$a, $b]}"
    run --separate-stderr gen -m "$T/el" --ids --max-new 10 --jsonl <<<"0 5 9 13"
    echo "$output" | jq -e ".finish_reason == \"eos\" and (.tokens|length) == $n"
    [[ "$stderr" == *"eos $a,$b (generation_config.json)"* ]]
    with_gencfg e1 "{\"do_sample\": false, \"eos_token_id\": $b}"
    run gen -m "$T/e1" --ids --max-new 10 --jsonl -q <<<"0 5 9 13"
    echo "$output" | jq -e ".finish_reason == \"eos\" and .tokens[-1] == $b"
    run gen -m "$T/el" --ids --max-new 10 --jsonl -q --ignore-eos <<<"0 5 9 13"
    echo "$output" | jq -e '(.tokens|length) == 10 and .finish_reason == "length"'
}

@test "generation_config.json: a bad file is a one-line error naming the file and the key" {
    bad() {
        with_gencfg bad "$1"
        run gen -m "$T/bad" --ids -q <<<"1 2"
        [ "$status" -eq 1 ]
        [ "${#lines[@]}" -eq 1 ]
        [ "$output" = "ds-generate: error: $2" ]
    }
    f="$T/bad/generation_config.json"
    bad '{"temperature": "hot"}' "$f: temperature: expected a number"
    bad '{"temperature": -1}' "$f: temperature: -1 is not >= 0"
    bad '{"top_p": 1.5}' "$f: top_p: 1.5 is not in (0, 1]"
    bad '{"top_k": 2.5}' "$f: top_k: expected an integer"
    bad '{"do_sample": "yes"}' "$f: do_sample: expected true or false"
    bad '{"max_new_tokens": 0}' "$f: max_new_tokens: 0 is out of range [1, 1e9]"
    bad '{"eos_token_id": [1, "x"]}' "$f: eos_token_id: expected a token id or a list of token ids"
    bad '{"eos_token_id": 512}' "generation_config.json: eos_token_id 512 is not below the vocabulary size 512: $T/bad"
    bad '[1]' "$f: expected a JSON object"
    bad '{"top_p": ' "generation_config.json: bad JSON: line 2 column 0: unexpected token near end of file: $f"
    # null is "not set", as transformers writes it; keys we do not sample with are ignored
    with_gencfg nul '{"temperature": null, "max_length": null, "num_beams": 1, "repetition_penalty": 1.0}'
    run gen -m "$T/nul" --ids -q --max-new 2 <<<"1 2"
    [ "$status" -eq 0 ]
}
