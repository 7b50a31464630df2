#!/usr/bin/env bats
# Prefill/decode disaggregation (infer/kvstream.h): ds-generate --prefill-only -o - | ds-generate
# --decode-from - gives one process's output (greedy and seeded sampling, with and without MTP
# speculation); the stream's size is the documented format's; a truncated, corrupted or foreign stream
# is one error line and exit 1.

bats_require_minimum_version 1.5.0

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    cat /usr/share/common-licenses/GPL-3 >"$T/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 512 -o "$T/tok.json" "$T/prose.txt"
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py"
    $mk --config "$DS_ROOT/share/configs/tiny.json" --out "$T/ck" --mtp --tokenizer "$T/tok.json"
    jq '.kv_lora_rank = 16' "$DS_ROOT/share/configs/tiny.json" >"$T/other.json"
    $mk --config "$T/other.json" --out "$T/other" --seed 3
    printf 'The license\nYou may convey\n{"prompt": "Each licensee"}\nfree software\nthe GNU\n' >"$T/p.txt"
    # a greedy stream of the five prompts, for the error tests
    "$DS_BIN/ds-generate" -m "$T/ck" --max-new 6 --temperature 0 --seed 1 -q --prefill-only -o "$T/s.kv" <"$T/p.txt"
}

gen() { "$DS_BIN/ds-generate" "$@"; }
# what must not change: everything but the timings
keep() { jq -c '[.index, .tokens, .logprobs, .completion, .finish_reason, .prompt_tokens, .mtp]'; }

same_as_one_process() {
    gen -m "$T/ck" --max-new 14 --jsonl -q --batch 3 "$@" <"$T/p.txt" | keep >"$T/one"
    gen -m "$T/ck" --max-new 14 -q --batch 3 --prefill-only -o - "$@" <"$T/p.txt" |
        gen -m "$T/ck" --max-new 14 --jsonl -q --batch 3 --decode-from - "$@" | keep >"$T/two"
    [ "$(wc -l <"$T/one")" -eq 5 ]
    cmp "$T/one" "$T/two"
}

@test "greedy through a pipe: tokens, log-probabilities, text identical to one process" {
    same_as_one_process --temperature 0
}

@test "greedy with MTP speculation: identical, draft statistics included" {
    same_as_one_process --temperature 0 --mtp
    jq -e '.[6].drafted > 0' <"$T/two" >/dev/null
}

@test "seeded sampling (top-k, top-p) with and without MTP: identical; the seed travels in the stream" {
    same_as_one_process --temperature 1.2 --top-k 50 --top-p 0.95 --seed 7
    same_as_one_process --temperature 1 --seed 3 --mtp
    # the decoding side's own --seed is not used: the stream's is
    gen -m "$T/ck" --max-new 14 -q --batch 3 --prefill-only -o - --temperature 1 --seed 3 --mtp <"$T/p.txt" |
        gen -m "$T/ck" --max-new 14 --jsonl -q --batch 3 --decode-from - --mtp --seed 99 | keep >"$T/three"
    cmp "$T/one" "$T/three"
}

@test "the first token can end a sequence on the decoding side (--max-new 1); another --batch gives the same tokens" {
    gen -m "$T/ck" --max-new 1 --jsonl -q --temperature 0 <"$T/p.txt" | jq -c .tokens >"$T/one"
    gen -m "$T/ck" --max-new 1 -q --temperature 0 --prefill-only -o - <"$T/p.txt" |
        gen -m "$T/ck" --max-new 1 --jsonl -q --decode-from - | jq -c .tokens >"$T/two"
    cmp "$T/one" "$T/two"
    gen -m "$T/ck" --max-new 9 -q --temperature 0 --batch 2 --prefill-only -o - <"$T/p.txt" |
        gen -m "$T/ck" --max-new 9 --jsonl -q --decode-from - --batch 5 | jq -c .tokens >"$T/a"
    gen -m "$T/ck" --max-new 9 --jsonl -q --temperature 0 --batch 1 <"$T/p.txt" | jq -c .tokens >"$T/b"
    cmp "$T/a" "$T/b"
}

@test "the stream's size is the format's: header, trailer, per prompt 88 bytes + 4 (token) + 4 x 40 floats x 2 layers per token" {
    gen -m "$T/ck" --max-new 6 --temperature 0 --jsonl -q <"$T/p.txt" | jq .prompt_tokens >"$T/lens"
    local expect
    expect=$(awk '{ s += 88 + $1 * (4 + 4 * 40 * 2) } END { print s + 48 + 16 }' "$T/lens")
    [ "$(stat -c %s "$T/s.kv")" -eq "$expect" ]
    run --separate-stderr gen -m "$T/ck" --max-new 6 --temperature 0 --seed 1 --prefill-only -o "$T/s2.kv" <"$T/p.txt"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    [[ "$stderr" == *"prefill stream: 5 prompts, "*" bytes = "*" B per prompt token (the MLA cache: 320 B/token fp32 over 2 layers)"* ]]
    cmp "$T/s.kv" "$T/s2.kv"
}

# one error line on stderr, exit 1
fails_with() {
    local msg="$1"
    shift
    run --separate-stderr "$@"
    [ "$status" -eq 1 ]
    [ "${#stderr_lines[@]}" -eq 1 ]
    [[ "$stderr" == "ds-generate: error: prefill stream: $msg" ]]
}

@test "a truncated stream: inside a record, before the trailer, an empty input" {
    head -c 2000 "$T/s.kv" >"$T/cut.kv"
    fails_with "truncated inside record 2: $T/cut.kv" gen -m "$T/ck" -q --max-new 6 --decode-from "$T/cut.kv"
    head -c $(($(stat -c %s "$T/s.kv") - 16)) "$T/s.kv" >"$T/notrailer.kv"
    fails_with "truncated: ends after 5 records without the trailer: -" gen -m "$T/ck" -q --max-new 6 --decode-from - <"$T/notrailer.kv"
    fails_with "truncated: no complete header (empty input?): -" gen -m "$T/ck" -q --decode-from - </dev/null
}

@test "a corrupted stream: a flipped bit in the cache rows, in the header, data after the trailer, not a stream" {
    flip() { $DS_PY -c "import sys; b = bytearray(open(sys.argv[1], 'rb').read()); b[int(sys.argv[2])] ^= 4; open(sys.argv[3], 'wb').write(b)" "$@"; }
    flip "$T/s.kv" $(($(stat -c %s "$T/s.kv") - 100)) "$T/bad.kv" # in the last record's cache rows
    fails_with "record 5: checksum mismatch (corrupted): $T/bad.kv" gen -m "$T/ck" -q --max-new 6 --decode-from "$T/bad.kv"
    flip "$T/s.kv" 30 "$T/badh.kv"
    fails_with "header checksum mismatch (corrupted): $T/badh.kv" gen -m "$T/ck" -q --decode-from "$T/badh.kv"
    { cat "$T/s.kv"; echo x; } >"$T/extra.kv"
    fails_with "data after the trailer: $T/extra.kv" gen -m "$T/ck" -q --max-new 6 --decode-from "$T/extra.kv"
    fails_with "not a prefill stream (bad magic): -" gen -m "$T/ck" -q --decode-from - <"$T/p.txt"
}

@test "a stream from another model is refused before any work" {
    run --separate-stderr gen -m "$T/other" -q --decode-from "$T/s.kv"
    [ "$status" -eq 1 ]
    [ -z "$output" ]
    [[ "$stderr" == "ds-generate: error: prefill stream: from another model (config fingerprint "*", this model's "*"): $T/s.kv" ]]
}

@test "usage: -o goes with --prefill-only; --mtp needs MTP state in the stream; the context must hold the prompt" {
    run gen -m "$T/ck" --prefill-only --prompt x
    [ "$status" -eq 2 ]
    [[ "$output" == *"--prefill-only writes the stream to -o FILE"* ]]
    run gen -m "$T/ck" -o - --prompt x
    [ "$status" -eq 2 ]
    run gen -m "$T/ck" --decode-from "$T/s.kv" --prompt x
    [ "$status" -eq 2 ]
    run gen -m "$T/ck" -q --decode-from "$T/s.kv" --mtp
    [ "$status" -eq 2 ]
    [[ "$output" == *"--mtp: the prefill stream carries no MTP state (prefill with --mtp): $T/s.kv"* ]]
    run gen -m "$T/ck" -q --decode-from "$T/s.kv" --max-new 6 --ctx 8
    [ "$status" -eq 1 ]
    [[ "$output" == *"prefilled tokens + 6 new exceed the context of 8 tokens: give a larger --ctx"* ]]
}
