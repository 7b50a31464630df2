#!/usr/bin/env bats
# ds-generate --serve against the `openai` Python client from PyPI (tests/ref/serve_openai.py), on
# loopback, with a tiny checkpoint trained for a few steps (train_helpers' tiny_base):
#  - greedy chat and completions, streamed and not, answer exactly what `ds-generate --prompt` (and
#    --chat) prints for the same prompt;
#  - 16 concurrent requests (mixed kinds, streaming, lengths) equal their one-at-a-time answers, with 8
#    slots (continuous batching plus a queue) and with 16;
#  - seeded sampling repeats and does not depend on the load; logprobs in both API forms;
#  - errors: status codes and OpenAI error bodies through the client's exceptions and raw HTTP;
#  - a client leaving mid-stream stops its sequence and the server keeps serving.

bats_require_minimum_version 1.5.0
load ../bats/train_helpers
load ../bats/serve_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_base "$T"
    start_server S -m "$T/base" --batch 8 -q
}

teardown_file() { stop_server S; stop_server D; stop_server B16; stop_server M; }

py() { "$DS_PY" "$DS_ROOT/tests/ref/serve_openai.py" "$@"; }

# ds-generate's own greedy answer for one prompt (extra options: --chat)
cli() { "$DS_BIN/ds-generate" -m "$T/base" --prompt "$1" --max-new "$2" --temperature 0 --jsonl -q "${@:3}" | jq -c '{text: .completion, finish_reason: (if .finish_reason == "eos" then "stop" else .finish_reason end)}'; }

@test "greedy completions, streamed and not, equal ds-generate --prompt" {
    for p in "The license" "You may convey" "free software"; do
        run py complete "$S_URL" base "$p" 24
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        [ "$(echo "$output" | jq -c .)" = "$(cli "$p" 24)" ] || { echo "server: $output"; echo "cli: $(cli "$p" 24)"; false; }
    done
}

@test "greedy chat completions, streamed and not, equal ds-generate --chat --prompt" {
    for p in "The license" "hi"; do
        run py chat "$S_URL" base "$p" 24
        [ "$status" -eq 0 ] || { echo "$output"; false; }
        [ "$(echo "$output" | jq -c .)" = "$(cli "$p" 24 --chat)" ] || { echo "server: $output"; echo "cli: $(cli "$p" 24 --chat)"; false; }
    done
}

@test "16 concurrent requests equal their one-at-a-time answers (8 slots + queue, and 16 slots)" {
    run py concurrent "$S_URL" base 16
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [[ "$output" == "16 concurrent requests equal one-at-a-time"* ]]
    start_server B16 -m "$T/base" --batch 16 -q
    run py concurrent "$B16_URL" base 16
    stop_server B16
    [ "$status" -eq 0 ] || { echo "$output"; false; }
}

@test "seeded sampling: repeatable, choice i of n independent of n and of the load" {
    run py seeded "$S_URL" base
    [ "$status" -eq 0 ] || { echo "$output"; false; }
}

@test "logprobs: chat (logprobs, top_logprobs) and completions (logprobs N) forms; equal ds-generate's" {
    run py logprobs "$S_URL" base
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    # the chosen tokens' log-probabilities are the engine's, as ds-generate --jsonl reports them
    "$DS_BIN/ds-generate" -m "$T/base" --prompt "The license" --max-new 8 --temperature 0 --jsonl -q --ignore-eos |
        jq -c '.logprobs' >"$T/cli_lp"
    echo "$output" | "$DS_PY" -c '
import json, sys
got = json.loads(sys.stdin.read())["logprobs"]
want = json.load(open(sys.argv[1]))
assert len(got) <= len(want) and all(abs(a - b) < 1e-5 for a, b in zip(got, want)), (got, want)' "$T/cli_lp"
}

@test "errors: 400/404/405 with OpenAI error bodies; the server keeps serving" {
    run py errors "$S_URL" base
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    [[ "$output" == *"max_tokens too large: 400 This model's maximum context length is 512 tokens"* ]]
}

@test "a client that disconnects mid-stream frees its slot; the server keeps serving" {
    start_server D -m "$T/base" --batch 1 --ignore-eos --ctx 8192 -q # 8000 tokens take seconds
    run py disconnect "$D_URL" base 8000
    stop_server D
    [ "$status" -eq 0 ] || { echo "$output"; false; }
}

@test "--mtp (speculative decoding in the batch): the same greedy answers, alone and concurrently" {
    start_server M -m "$T/base" --batch 4 --mtp -q
    run py complete "$M_URL" base "The license" 24
    [ "$status" -eq 0 ] && [ "$(echo "$output" | jq -c .)" = "$(cli "The license" 24)" ] || { echo "$output"; stop_server M; false; }
    run py concurrent "$M_URL" base 16
    stop_server M
    [ "$status" -eq 0 ] || { echo "$output"; false; }
}
