#!/usr/bin/env bats
# ds-generate --serve with curl, on loopback, with a tiny checkpoint trained for a few steps: /health,
# /v1/models, completions and chat completions (greedy answers equal ds-generate --prompt's), server-sent
# events (framing, [DONE], usage, the same text as without streaming), stop strings, every refusal as an
# OpenAI error body with its status (400, 404, 405, 413), graceful shutdown on SIGTERM with a request in
# flight, and the command line's errors. The openai-client checks are tests/ref/serve.bats.

bats_require_minimum_version 1.5.0
load train_helpers
load serve_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_base "$T"
    start_server S -m "$T/base" --batch 4 -q
}

teardown_file() { stop_server S; stop_server C; } # C too: a failed test leaves it running
teardown() { [ -z "${pid:-}" ] || kill -KILL "$pid" 2>/dev/null || true; } # the SIGTERM tests' own servers

post() { curl -s -w '\n%{http_code}' "$S_URL$1" -H 'Content-Type: application/json' -d "$2"; }
# the body of post's output, and its status
body() { sed '$d' <<<"$1"; }
code() { tail -1 <<<"$1"; }

@test "/health and /v1/models" {
    run curl -sf "$S_URL/health"
    [ "$status" -eq 0 ]
    echo "$output" | jq -e '.status == "ok" and .running == 0 and .queued == 0'
    run curl -sf "$S_URL/v1/models"
    echo "$output" | jq -e '.object == "list" and (.data | length) == 1 and .data[0].id == "base" and
        .data[0].object == "model" and .data[0].max_model_len == 512'
    curl -sf "$S_URL/v1/models/base" | jq -e '.id == "base"'
    run curl -s -o /dev/null -w '%{http_code}' "$S_URL/v1/models/other"
    [ "$output" = 404 ]
}

@test "completion and chat completion: greedy answers equal ds-generate's, with usage" {
    run post /v1/completions '{"model": "base", "prompt": "The license", "max_tokens": 16, "temperature": 0}'
    [ "$(code "$output")" = 200 ]
    r=$(body "$output")
    want=$("$DS_BIN/ds-generate" -m "$T/base" --prompt "The license" --max-new 16 --temperature 0 --jsonl -q)
    [ "$(jq -c .choices[0].text <<<"$r")" = "$(jq -c .completion <<<"$want")" ]
    jq -e --argjson p "$(jq .prompt_tokens <<<"$want")" '.object == "text_completion" and (.id | startswith("cmpl-"))
        and .model == "base" and .usage.prompt_tokens == $p and .usage.completion_tokens == 16
        and .usage.total_tokens == $p + 16 and .choices[0].finish_reason == "length"' <<<"$r"
    run post /v1/chat/completions '{"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "temperature": 0}'
    [ "$(code "$output")" = 200 ]
    r=$(body "$output")
    want=$("$DS_BIN/ds-generate" -m "$T/base" --chat --prompt "hi" --max-new 16 --temperature 0 --jsonl -q)
    [ "$(jq -c .choices[0].message.content <<<"$r")" = "$(jq -c .completion <<<"$want")" ]
    jq -e '.object == "chat.completion" and .choices[0].message.role == "assistant"' <<<"$r"
}

@test "streaming: server-sent events, the same text, finish_reason, usage, then [DONE]" {
    req='{"model": "base", "prompt": ["The license", "free software"], "max_tokens": 12, "temperature": 0, "n": 2'
    curl -sN "$S_URL/v1/completions" -d "$req, \"stream\": true, \"stream_options\": {\"include_usage\": true}}" >"$T/sse"
    curl -s "$S_URL/v1/completions" -d "$req}" >"$T/whole"
    # framing: "data: JSON" lines each followed by a blank line, the last one [DONE]
    [ "$(tail -2 "$T/sse" | head -1)" = "data: [DONE]" ]
    awk 'NR % 2 == 1 && !/^data: / {exit 1} NR % 2 == 0 && $0 != "" {exit 1}' "$T/sse"
    grep '^data: {' "$T/sse" | sed 's/^data: //' >"$T/events"
    # per choice index (prompt i, choice j -> 2i + j): the deltas join to the non-streamed text
    for i in 0 1 2 3; do
        got=$(jq -rj --argjson i $i '.choices[] | select(.index == $i) | .text' "$T/events")
        want=$(jq -rj --argjson i $i '.choices[] | select(.index == $i) | .text' "$T/whole")
        [ "$got" = "$want" ]
        [ "$(jq -r --argjson i $i '.choices[] | select(.index == $i and .finish_reason != null) | .finish_reason' "$T/events")" = length ]
    done
    # the last event: usage and no choices; the same usage as the whole answer
    [ "$(tail -1 "$T/events" | jq -c .usage)" = "$(jq -c .usage "$T/whole")" ]
    tail -1 "$T/events" | jq -e '.choices == [] and .usage.completion_tokens == 48'
    # chat: the first delta carries the role
    curl -sN "$S_URL/v1/chat/completions" -d '{"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true}' |
        grep '^data: {' | head -1 | sed 's/^data: //' | jq -e '.object == "chat.completion.chunk" and .choices[0].delta.role == "assistant"'
}

@test "stop strings cut the text as ds-generate --stop does" {
    want=$("$DS_BIN/ds-generate" -m "$T/base" --prompt "The license" --max-new 40 --temperature 0 --jsonl -q --ignore-eos)
    # a stop string taken from the greedy text: its second run of two or more letters
    stop=$(jq -r '[.completion | scan("[a-z]{2,}")][1][0:2]' <<<"$want")
    [ "${#stop}" -eq 2 ]
    cut=$("$DS_BIN/ds-generate" -m "$T/base" --prompt "The license" --max-new 40 --temperature 0 --jsonl -q --stop "$stop" | jq -c .completion)
    r=$(curl -s "$S_URL/v1/completions" -d "$(jq -n --arg s "$stop" '{model: "base", prompt: "The license", max_tokens: 40, temperature: 0, stop: [$s, "zzzz"]}')")
    [ "$(jq -c .choices[0].text <<<"$r")" = "$cut" ]
    [ "$(jq -r .choices[0].finish_reason <<<"$r")" = stop ]
}

# expect STATUS PARAM PATH BODY: an OpenAI error body with that status and param (null: "-")
expect() {
    run post "$3" "$4"
    [ "$(code "$output")" = "$1" ] || { echo "status $(code "$output"): $output"; return 1; }
    body "$output" | jq -e --arg p "$2" '(.error | keys) == ["code", "message", "param", "type"] and (.error.message | length) > 0
        and (if $p == "-" then .error.param == null else .error.param == $p end)'
}

@test "refusals: OpenAI error bodies with 400, 404, 405, 413; the server keeps serving" {
    expect 400 - /v1/completions '{"model": "base", "prompt": '
    expect 400 - /v1/completions '[1]'
    expect 404 model /v1/completions '{"model": "gpt-4", "prompt": "a"}'
    run post /v1/completions '{"model": "gpt-4", "prompt": "a"}'
    [ "$(body "$output" | jq -r .error.code)" = model_not_found ]
    expect 400 model /v1/completions '{"prompt": "a"}'
    expect 400 max_tokens /v1/completions '{"model": "base", "prompt": "a", "max_tokens": 600}'
    run post /v1/completions '{"model": "base", "prompt": "a", "max_tokens": 600}'
    [ "$(body "$output" | jq -r .error.code)" = context_length_exceeded ]
    expect 400 max_tokens /v1/completions '{"model": "base", "prompt": "a", "max_tokens": 0}'
    expect 400 temperature /v1/chat/completions '{"model": "base", "messages": [{"role": "user", "content": "a"}], "temperature": -1}'
    expect 400 temperature /v1/chat/completions '{"model": "base", "messages": [{"role": "user", "content": "a"}], "temperature": "hot"}'
    expect 400 top_p /v1/completions '{"model": "base", "prompt": "a", "top_p": 1.5}'
    expect 400 messages /v1/chat/completions '{"model": "base", "messages": []}'
    expect 400 'messages[0]' /v1/chat/completions '{"model": "base", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'
    expect 400 stop /v1/completions '{"model": "base", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}'
    expect 400 logprobs /v1/completions '{"model": "base", "prompt": "a", "logprobs": 6}'
    expect 400 prompt /v1/completions '{"model": "base", "prompt": [999999]}'
    expect 400 echo /v1/completions '{"model": "base", "prompt": "a", "echo": true}'
    # a prompt longer than the context
    long=$(head -c 4000 /usr/share/common-licenses/GPL-3 | jq -Rs '{model: "base", prompt: .}')
    expect 400 prompt /v1/completions "$long"
    head -c 9000000 /dev/zero | tr '\0' ' ' >"$T/big"
    run curl -s -o "$T/big.out" -w '%{http_code}' "$S_URL/v1/completions" --data-binary @"$T/big"
    [ "$output" = 413 ]
    jq -e '.error.message | test("larger than")' "$T/big.out"
    run curl -s -w '\n%{http_code}' "$S_URL/v1/completions"
    [ "$(code "$output")" = 405 ]
    run curl -s -w '\n%{http_code}' "$S_URL/v2/anything"
    [ "$(code "$output")" = 404 ]
    body "$output" | jq -e '.error.code == "unknown_url"'
    run post /v1/completions '{"model": "base", "prompt": "a", "max_tokens": 2}'
    [ "$(code "$output")" = 200 ]
}

@test "a client that gives up on a non-streamed request cancels it: its sequence stops early" {
    # a long context, so that the whole answer takes seconds (8000 tokens: ~14 s on 2 busy cores)
    start_server C -m "$T/base" --batch 1 --ignore-eos --ctx 8192 -q
    run curl -s -m 0.2 "$C_URL/v1/completions" -d '{"model": "base", "prompt": "The license", "max_tokens": 8000, "temperature": 0}'
    [ "$status" -eq 28 ] # curl: timed out
    local deadline=$((SECONDS + 60)) # the disconnect is seen at the next decode step: slow only under load
    while [ "$SECONDS" -lt "$deadline" ]; do
        h=$(curl -s "$C_URL/health")
        [ "$(jq .running <<<"$h")" -eq 0 ] && [ "$(jq .cancelled <<<"$h")" -eq 1 ] && break
        sleep 0.02
    done
    stop_server C
    echo "$h"
    jq -e '.running == 0 and .cancelled == 1 and .completion_tokens < 8000' <<<"$h"
}

@test "SIGTERM: the request in flight finishes, then the server exits 0 with its statistics" {
    "$DS_BIN/ds-generate" -m "$T/base" --ignore-eos --batch 2 --serve 127.0.0.1:0 >"$T/g.url" 2>"$T/g.err" 3>&- &
    pid=$!
    for _ in $(seq 200); do [ -s "$T/g.url" ] && break; sleep 0.05; done
    url=$(cat "$T/g.url")
    [[ "$url" == http://127.0.0.1:* ]]
    curl -sN "$url/v1/completions" -d '{"model": "base", "prompt": "The license", "max_tokens": 500, "temperature": 0, "stream": true}' >"$T/g.sse" 3>&- &
    cpid=$!
    for _ in $(seq 200); do [ -s "$T/g.sse" ] && break; sleep 0.01; done
    kill -TERM "$pid"
    wait "$cpid"
    status=0
    wait "$pid" || status=$?
    cat "$T/g.err"
    [ "$status" -eq 0 ]
    [ "$(tail -2 "$T/g.sse" | head -1)" = "data: [DONE]" ]
    grep '^data: {' "$T/g.sse" | sed 's/^data: //' | jq -e 'select(.choices[0].finish_reason != null) | .choices[0].finish_reason == "length"'
    grep -q "signal 15: finishing the requests in flight" "$T/g.err"
    grep -q "served 1 requests (0 refused, 0 cancelled): 6 prompt tokens, 500 generated" "$T/g.err"
    run curl -s "$url/health"
    [ "$status" -ne 0 ]
}

@test "a second SIGTERM ends the requests in flight at their next token" {
    "$DS_BIN/ds-generate" -m "$T/base" --ignore-eos --ctx 8192 --batch 1 --serve 127.0.0.1:0 >"$T/h.url" 2>"$T/h.err" 3>&- &
    pid=$!
    for _ in $(seq 200); do [ -s "$T/h.url" ] && break; sleep 0.05; done
    url=$(cat "$T/h.url")
    curl -s "$url/v1/completions" -d '{"model": "base", "prompt": "The license", "max_tokens": 8000}' >"$T/h.json" 3>&- &
    cpid=$!
    for _ in $(seq 200); do [ "$(curl -s "$url/health" | jq .running)" = 1 ] && break; sleep 0.02; done
    kill -TERM "$pid"
    sleep 0.2
    kill -TERM "$pid"
    wait "$cpid"
    status=0
    wait "$pid" || status=$?
    cat "$T/h.err"
    [ "$status" -eq 0 ]
    grep -q "signal 15: ending the requests in flight" "$T/h.err"
    # the answer came, cut short
    jq -e '.choices[0].finish_reason == "stop" and .usage.completion_tokens < 8000' "$T/h.json"
}

@test "command line: a bad address is a usage error; a port in use and no tokenizer are errors" {
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/base" --serve 127.0.0.1:0 --prompt hi
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"--serve takes its prompts and stop strings from requests"* ]]
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/base" --serve 127.0.0.1:http
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"--serve 127.0.0.1:http: give HOST:PORT, :PORT or PORT with a port in [0, 65535]"* ]]
    port=${S_URL##*:}
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/base" --serve "127.0.0.1:$port" -q
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-generate: error: --serve: cannot listen on 127.0.0.1:$port (in use, or not an address of this machine)" ]
    mkdir "$T/notok"
    cp "$T/base/config.json" "$T/base/model.safetensors" "$T/notok/"
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/notok" --serve 127.0.0.1:0 -q
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"the checkpoint has no tokenizer: a server takes text"* ]]
}
