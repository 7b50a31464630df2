#!/usr/bin/env bats
# ds-generate --chat on a terminal (tests/ref/chat_pty.py drives a real pseudo-terminal): replies
# stream per turn; the history is kept (turn 2's greedy reply equals a one-shot generation of the
# whole rendered history) and its cache reused (the verbose turn line counts reused and prefilled
# tokens); /reset forgets; Ctrl-C stops a reply and keeps the session, twice at the prompt quits;
# /exit and Ctrl-D exit 0; the context limit refuses a turn or drops the oldest turns; piped stdin
# keeps the batch.

bats_require_minimum_version 1.5.0

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    cat /usr/share/common-licenses/GPL-3 >"$T/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 512 -o "$T/tok.json" "$T/prose.txt"
    # a context of 4096 positions: a reply of 2000 tokens lasts long enough to be interrupted, twice
    "$DS_PY" "$DS_ROOT/tests/ref/generate_ckpt.py" --config "$DS_ROOT/share/configs/tiny.json" --out "$T/ck" \
        --tokenizer "$T/tok.json" --set max_position_embeddings=4096
}

BOS='<｜begin▁of▁sentence｜>'
USER='<｜User｜>'
ASSIST='<｜Assistant｜>'
EOS='<｜end▁of▁sentence｜>'

setup() {
    O="$BATS_TEST_TMPDIR/o"
    mkdir -p "$O"
}

# chat ARGS... < script: run the chat in a terminal; replies in $O/reply.N, $O/stderr, $O/status
chat() {
    "$DS_PY" "$DS_ROOT/tests/ref/chat_pty.py" "$O" -- "$DS_BIN/ds-generate" -m "$T/ck" --chat -v "$@"
}
# a file's bytes, trailing newlines included
bytes_of() {
    local s
    s=$(cat "$1" && echo x)
    printf '%s' "${s%x}"
}
# the verbose line of turn N ("chat: turn N: ...") of the K-th such line
turn_line() { grep "^chat: turn " "$O/stderr" | sed -n "${1}p"; }
field_of() { sed -E "s/.* ([0-9]+) $1.*/\1/" <<<"$2"; }

@test "turn 2 answers the whole history (one-shot greedy of the rendered text) and prefills only the new turn" {
    printf 'say hello there\nsay what is free software?\nsay /exit\n' | chat --temperature 0 --max-new 12 --prefill absorbed
    [ "$(cat "$O/status")" = 0 ]
    r1=$(bytes_of "$O/reply.0")
    [ -n "$r1" ]
    # the whole conversation as the template renders it, as one plain prompt
    history="$BOS${USER}hello there$ASSIST$r1$EOS${USER}what is free software?$ASSIST"
    "$DS_BIN/ds-generate" -m "$T/ck" --no-bos --prompt "$history" --temperature 0 --max-new 12 --prefill absorbed \
        -q --jsonl >"$BATS_TEST_TMPDIR/one.jsonl"
    "$DS_BIN/ds-generate" -m "$T/ck" --no-bos --prompt "$history" --temperature 0 --max-new 12 --prefill absorbed \
        -q >"$BATS_TEST_TMPDIR/one.txt"
    printf '\n' >>"$O/reply.1"
    cmp "$BATS_TEST_TMPDIR/one.txt" "$O/reply.1"
    # reuse: turn 2 prefilled only what follows the cached turn 1 (its prompt and its reply)
    t1=$(turn_line 1) t2=$(turn_line 2)
    [[ "$t1" == "chat: turn 1: "*" 0 reused from the cache"* ]]
    p1=$(field_of "prompt tokens" "$t1") p2=$(field_of "prompt tokens" "$t2")
    reused=$(field_of "reused" "$t2") prefilled=$(field_of "prefilled" "$t2")
    [ "$p2" -eq "$(jq .prompt_tokens "$BATS_TEST_TMPDIR/one.jsonl")" ]
    [ "$((reused + prefilled))" -eq "$p2" ]
    [ "$reused" -gt "$p1" ]
    [ "$prefilled" -lt "$((p2 - p1))" ]
}

@test "/reset forgets: the same question gets turn 1's answer again, nothing reused" {
    printf 'say free software\nsay is it?\nsay /reset\nsay free software\nsay /exit\n' | chat --temperature 0 --max-new 10
    [ "$(cat "$O/status")" = 0 ]
    [ "$(cat "$O/reply.2")" = "(conversation cleared)" ]
    cmp "$O/reply.0" "$O/reply.3"
    ! cmp -s "$O/reply.0" "$O/reply.1"
    [[ "$(turn_line 3)" == "chat: turn 1: "*" 0 reused from the cache"* ]]
    # and the one-shot of a single turn is the same answer
    "$DS_BIN/ds-generate" -m "$T/ck" --chat --prompt "free software" --temperature 0 --max-new 10 -q >"$BATS_TEST_TMPDIR/one"
    printf '\n' >>"$O/reply.3"
    cmp "$BATS_TEST_TMPDIR/one" "$O/reply.3"
}

@test "Ctrl-C stops a streaming reply and keeps the session; twice at the prompt exits 0" {
    printf 'interrupt tell me a long story\ninterrupt and then?\nctrl-c\nctrl-c\n' |
        chat --temperature 0 --max-new 2000 --ignore-eos
    [ "$(cat "$O/status")" = 0 ]
    [[ "$(cat "$O/reply.0")" == *" [stopped]" ]]
    t1=$(turn_line 1)
    [[ "$t1" == *"(stopped)"* ]]
    [ "$(field_of "new tokens" "$t1")" -lt 2000 ]
    # the next turn is answered (and stopped again), on top of the interrupted one (whose cache is reused)
    [[ "$(cat "$O/reply.1")" == ?*" [stopped]" ]]
    t2=$(turn_line 2)
    [[ "$t2" == "chat: turn 2: "*"(stopped)"* ]]
    [ "$(field_of "reused" "$t2")" -gt "$(field_of "prompt tokens" "$t1")" ]
    [ "$(cat "$O/reply.2")" = $'\n(Ctrl-C again, Ctrl-D or /exit quits)' ]
}

@test "Ctrl-D at the prompt exits 0; unknown commands are named" {
    printf 'say /what\neof\n' | chat --temperature 0 --max-new 4
    [ "$(cat "$O/status")" = 0 ]
    [ "$(cat "$O/reply.0")" = "(unknown command: /reset, /exit and /help are known)" ]
}

@test "context full: the turn is refused with a message and the session goes on; --chat-drop-oldest drops turns" {
    printf 'say hello there\nsay what is free software?\nsay /exit\n' | chat --temperature 0 --max-new 8 --ctx 30
    [ "$(cat "$O/status")" = 0 ]
    grep -q "ds-generate: warning: context full: the conversation is [0-9]* tokens and a reply up to 8 more, over the context of 30: /reset starts over, --chat-drop-oldest drops the oldest turns" "$O/stderr"
    [ "$(grep -c "^chat: turn " "$O/stderr")" -eq 1 ]
    [ -z "$(cat "$O/reply.1")" ]

    printf 'say hello there\nsay what is free software?\nsay /exit\n' |
        chat --temperature 0 --max-new 8 --ctx 30 --chat-drop-oldest --prefill absorbed
    [ "$(cat "$O/status")" = 0 ]
    grep -q "ds-generate: warning: context: dropped the 2 oldest messages" "$O/stderr"
    # the history changed at its start: recomputed (only BOS and the user marker still match)
    t2=$(turn_line 2)
    [ "$(field_of "reused" "$t2")" -le 2 ]
    "$DS_BIN/ds-generate" -m "$T/ck" --chat --prompt "what is free software?" --temperature 0 --max-new 8 \
        --prefill absorbed -q >"$BATS_TEST_TMPDIR/one"
    printf '\n' >>"$O/reply.1"
    cmp "$BATS_TEST_TMPDIR/one" "$O/reply.1"
}

@test "piped stdin keeps the batch: one completion per line, no prompt" {
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/ck" --chat --temperature 0 --max-new 6 \
        < <(printf 'hello there\nfree software\n')
    [ "$status" -eq 0 ]
    expected=$("$DS_BIN/ds-generate" -m "$T/ck" --chat --temperature 0 --max-new 6 -q --prompt 'hello there' --prompt 'free software')
    [ "$output" = "$expected" ]
    [[ "$stderr" != *"chat: Enter"* ]]
}
