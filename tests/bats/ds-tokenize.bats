#!/usr/bin/env bats
# ds-tokenize: train, encode (--ids, --lines, --jsonl, --bos/--eos, specials), decode, round trips of any
# bytes, determinism across thread counts, '-' for stdin, and every documented error.

bats_require_minimum_version 1.5.0

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    cat /usr/share/common-licenses/GPL-3 /usr/share/common-licenses/Apache-2.0 >"$T/prose.txt"
    printf 'café naïve 東京 ひらがな 😀 12345678\n\tx  y\r\n' >"$T/uni.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 1200 -o "$T/tok.json" "$T/prose.txt" "$T/uni.txt"
}

tok() { "$DS_BIN/ds-tokenize" "$@"; }

@test "train writes a tokenizer.json with DeepSeek's special tokens first" {
    run tok train --vocab-size 600 -o "$BATS_TEST_TMPDIR/t.json" "$T/prose.txt"
    [ "$status" -eq 0 ]
    [[ "$output" == *"merges, vocabulary 600"* ]]
    run grep -o '"id":0,"content":"<｜begin▁of▁sentence｜>"' "$BATS_TEST_TMPDIR/t.json"
    [ "$status" -eq 0 ]
    run grep -o '"id":1,"content":"<｜end▁of▁sentence｜>"' "$BATS_TEST_TMPDIR/t.json"
    [ "$status" -eq 0 ]
    run grep -o '<｜fim▁hole｜>\|<｜Assistant｜>\|<｜System｜>\|<｜▁pad▁｜>' "$BATS_TEST_TMPDIR/t.json"
    [ "${#lines[@]}" -ge 4 ]
}

@test "train --special adds user tokens after DeepSeek's; training is deterministic" {
    tok train -q --vocab-size 600 --special '<tool>,</tool>' --special '<x>' -o "$BATS_TEST_TMPDIR/a.json" "$T/prose.txt"
    grep -q '"id":11,"content":"<tool>"' "$BATS_TEST_TMPDIR/a.json"
    grep -q '"id":13,"content":"<x>"' "$BATS_TEST_TMPDIR/a.json"
    tok train -q --threads 1 --vocab-size 600 --special '<tool>,</tool>' --special '<x>' -o "$BATS_TEST_TMPDIR/b.json" "$T/prose.txt"
    cmp "$BATS_TEST_TMPDIR/a.json" "$BATS_TEST_TMPDIR/b.json"
}

@test "train reads stdin with - and with no file" {
    tok train -q --vocab-size 500 -o "$BATS_TEST_TMPDIR/a.json" - <"$T/prose.txt"
    tok train -q --vocab-size 500 -o "$BATS_TEST_TMPDIR/b.json" <"$T/prose.txt"
    tok train -q --vocab-size 500 -o "$BATS_TEST_TMPDIR/c.json" "$T/prose.txt"
    cmp "$BATS_TEST_TMPDIR/a.json" "$BATS_TEST_TMPDIR/c.json"
    cmp "$BATS_TEST_TMPDIR/b.json" "$BATS_TEST_TMPDIR/c.json"
}

@test "encode --ids prints one line of ids per document and a summary on stderr" {
    run --separate-stderr tok encode -t "$T/tok.json" --ids "$T/prose.txt" "$T/uni.txt"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 2 ]
    [[ "${lines[0]}" =~ ^[0-9]+(\ [0-9]+)*$ ]]
    [[ "$stderr" =~ encode:\ 2\ documents,\ .*\ MB,\ [0-9]+\ tokens,\ [0-9.]+\ bytes/token,\ [0-9.]+\ MB/s ]]
}

@test "encode --ids | decode restores any bytes exactly, invalid UTF-8 included" {
    f="$BATS_TEST_TMPDIR/bin.dat"
    head -c 20000 /dev/urandom >"$f"
    printf '\xff\xfe\xc3(\xe2\x82\n\x00 end' >>"$f"
    tok encode -q -t "$T/tok.json" --ids "$f" | tok decode -t "$T/tok.json" >"$BATS_TEST_TMPDIR/back"
    cmp "$f" "$BATS_TEST_TMPDIR/back"
    tok encode -q -t "$T/tok.json" --ids "$T/uni.txt" | tok decode -t "$T/tok.json" - >"$BATS_TEST_TMPDIR/back2"
    cmp "$T/uni.txt" "$BATS_TEST_TMPDIR/back2"
}

@test "encode --lines and decode --lines are inverse" {
    tok encode -q -t "$T/tok.json" --ids --lines "$T/prose.txt" >"$BATS_TEST_TMPDIR/ids"
    [ "$(wc -l <"$BATS_TEST_TMPDIR/ids")" -eq "$(wc -l <"$T/prose.txt")" ]
    tok decode -t "$T/tok.json" --lines "$BATS_TEST_TMPDIR/ids" | cmp - "$T/prose.txt"
}

@test "encode --jsonl KEY encodes that field; a line without it is an error naming the line" {
    printf '{"text": "hello world", "id": 1}\n\n{"text": "café"}\n' >"$BATS_TEST_TMPDIR/d.jsonl"
    run tok encode -q -t "$T/tok.json" --ids --jsonl text "$BATS_TEST_TMPDIR/d.jsonl"
    [ "$status" -eq 0 ]
    [ "${#lines[@]}" -eq 2 ]
    [ "${lines[0]}" = "$(printf 'hello world' | tok encode -q -t "$T/tok.json" --ids)" ]
    [ "${lines[1]}" = "$(printf 'café' | tok encode -q -t "$T/tok.json" --ids)" ]
    printf '{"text": "a"}\n{"body": "b"}\n' >"$BATS_TEST_TMPDIR/e.jsonl"
    run --separate-stderr tok encode -t "$T/tok.json" --ids --jsonl text "$BATS_TEST_TMPDIR/e.jsonl"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"error: no string field \"text\": $BATS_TEST_TMPDIR/e.jsonl:2"* ]]
    printf '{"text": "a"\n' >"$BATS_TEST_TMPDIR/f.jsonl"
    run --separate-stderr tok encode -t "$T/tok.json" --ids --jsonl text "$BATS_TEST_TMPDIR/f.jsonl"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"error: bad JSON line"*"f.jsonl:1"* ]]
}

@test "--bos and --eos add ids 0 and 1 around each document, only when asked" {
    plain=$(printf 'hi there' | tok encode -q -t "$T/tok.json" --ids)
    [ "$(printf 'hi there' | tok encode -q -t "$T/tok.json" --ids --bos --eos)" = "0 $plain 1" ]
    [ "$(printf 'hi there' | tok encode -q -t "$T/tok.json" --ids --eos)" = "$plain 1" ]
    [[ " $plain " != *" 0 "* && " $plain " != *" 1 "* ]]
}

@test "special tokens in text stay plain text unless --allow-special" {
    text='<｜User｜>hi<｜Assistant｜>yo<｜end▁of▁sentence｜>'
    plain=$(printf '%s' "$text" | tok encode -q -t "$T/tok.json" --ids)
    for id in $plain; do [ "$id" -gt 10 ]; done
    special=$(printf '%s' "$text" | tok encode -q -t "$T/tok.json" --ids --allow-special)
    [[ "$special" == "6 "*" 7 "*" 1" ]]
    [ "$(printf '%s\n' "$special" | tok decode -t "$T/tok.json")" = "$text" ]
    [ "$(printf '%s\n' "$plain" | tok decode -t "$T/tok.json")" = "$text" ]
}

@test "output is identical for 1 and 2 threads on a document cut into parallel units" {
    for i in 1 2 3 4 5 6 7 8 9 10; do cat "$T/prose.txt"; done >"$BATS_TEST_TMPDIR/big.txt"
    tok encode -q -t "$T/tok.json" --ids --threads 1 "$BATS_TEST_TMPDIR/big.txt" >"$BATS_TEST_TMPDIR/1"
    tok encode -q -t "$T/tok.json" --ids --threads 2 "$BATS_TEST_TMPDIR/big.txt" "$T/uni.txt" >"$BATS_TEST_TMPDIR/2"
    [ "$(wc -l <"$BATS_TEST_TMPDIR/2")" -eq 2 ]
    head -1 "$BATS_TEST_TMPDIR/2" | cmp - "$BATS_TEST_TMPDIR/1"
    tok decode -t "$T/tok.json" "$BATS_TEST_TMPDIR/1" | cmp - "$BATS_TEST_TMPDIR/big.txt"
}

@test "usage errors exit 2 with one error line" {
    run --separate-stderr tok
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-tokenize: error: missing command: train, encode or decode"* ]]
    run --separate-stderr tok frobnicate
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-tokenize: error: unknown command 'frobnicate'"* ]]
    run --separate-stderr tok encode --ids x
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"-t tokenizer.json is required"* ]]
    run --separate-stderr tok encode -t "$T/tok.json" x
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"give -o OUT or --ids"* ]]
    run --separate-stderr tok encode -t "$T/tok.json" --ids --lines --jsonl k x
    [ "$status" -eq 2 ]
    run --separate-stderr tok train -o x.json
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"--vocab-size N is required"* ]]
    run --separate-stderr tok train --vocab-size 100 -o x.json
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"below 11 specials + 256 bytes"* ]]
}

@test "bad tokenizer.json files are clean one-line errors" {
    d="$BATS_TEST_TMPDIR"
    printf '{"model": {"type": "Unigram", "vocab": []}}' >"$d/u.json"
    printf '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}' >"$d/z.json"
    printf '{"model": {"type": "BPE", "vocab": {"\xff": 0}, "merges": ["a b"]}}' >"$d/utf.json"
    printf '{"model": ' >"$d/trunc.json"
    for c in "u.json:unknown model type 'Unigram'" "z.json:merges is empty" "utf.json:unable to decode byte 0xff" \
             "trunc.json:tokenizer.json:" "missing.json:cannot open"; do
        f=${c%%:*} msg=${c#*:}
        run --separate-stderr tok encode -t "$d/$f" --ids "$T/uni.txt"
        [ "$status" -eq 1 ] || { echo "$f: status $status"; false; }
        [ -z "$output" ]
        [[ "$stderr" == "ds-tokenize: error: "*"$msg"* ]] || { echo "$f: $stderr"; false; }
        [[ "$stderr" == *"$f"* ]]
    done
}

@test "empty input is an error for train, encode and decode" {
    : >"$BATS_TEST_TMPDIR/empty"
    run --separate-stderr tok train --vocab-size 500 -o "$BATS_TEST_TMPDIR/x.json" "$BATS_TEST_TMPDIR/empty"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"error: empty input"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/x.json" ]
    run --separate-stderr tok encode -t "$T/tok.json" --ids </dev/null
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"error: empty input"* ]]
    run --separate-stderr tok decode -t "$T/tok.json" </dev/null
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"error: empty input"* ]]
}

@test "decode rejects ids outside the vocabulary and non-numbers, naming the line" {
    run --separate-stderr tok decode -t "$T/tok.json" <<<$'5 6\n99999999'
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"token id 99999999 is not in the vocabulary"*"<stdin>:2"* ]]
    run --separate-stderr tok decode -t "$T/tok.json" <<<'12 abc'
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"expected token ids"*"<stdin>:1"* ]]
}

@test "encode -o FILE writes one shard; decode restores the documents; --ids and -o together agree" {
    d="$BATS_TEST_TMPDIR"
    tok encode -q -t "$T/tok.json" -o "$d/one.tok" --ids "$T/prose.txt" "$T/uni.txt" >"$d/ids"
    tok decode -t "$T/tok.json" "$d/one.tok" >"$d/from-shard"
    tok decode -t "$T/tok.json" "$d/ids" >"$d/from-ids"
    cmp "$d/from-shard" "$d/from-ids"
    { cat "$T/prose.txt"; printf '\n'; cat "$T/uni.txt"; } | cmp - "$d/from-shard"
    tok encode -q -t "$T/tok.json" -o "$d/u.tok" "$T/uni.txt"
    tok decode -t "$T/tok.json" "$d/u.tok" | cmp - "$T/uni.txt"
}

@test "encode -o DIR/ writes numbered shards of bounded size that decode to the same text" {
    d="$BATS_TEST_TMPDIR"
    tok encode -q -t "$T/tok.json" --lines -o "$d/shards/" --shard-tokens 4000 "$T/prose.txt"
    n=$(ls "$d/shards"/*.tok | wc -l)
    [ "$n" -gt 3 ]
    [ -f "$d/shards/000000.tok" ] && [ -f "$d/shards/$(printf '%06d' $((n - 1))).tok" ]
    # the tokenizer beside them, byte for byte, where ds-pretrain looks for it
    [ "$(ls "$d/shards" | grep -vc '\.tok$')" -eq 1 ]
    cmp "$T/tok.json" "$d/shards/tokenizer.json"
    tok decode -t "$T/tok.json" --lines "$d/shards"/*.tok | grep -v '^$' >"$d/back"
    grep -v '^$' "$T/prose.txt" | cmp - "$d/back"
    run --separate-stderr tok encode -q -t "$T/tok.json" -o "$d/shards/" "$T/uni.txt"
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"error: output directory holds numbered shards of an earlier run (give --force to replace them): $d/shards/"* ]]
    [[ "$stderr" == *"hint: "* ]]
}

@test "encode -o - streams a shard through a pipe; EOS separates documents, BOS on request" {
    d="$BATS_TEST_TMPDIR"
    tok encode -q -t "$T/tok.json" -o - "$T/uni.txt" | tok decode -t "$T/tok.json" | cmp - "$T/uni.txt"
    tok encode -q -t "$T/tok.json" --bos -o - "$T/uni.txt" | tok decode -t "$T/tok.json" >"$d/b"
    { printf '<｜begin▁of▁sentence｜>'; cat "$T/uni.txt"; } | cmp - "$d/b"
    printf 'one\ntwo\n' | tok encode -q -t "$T/tok.json" --lines -o - | tok decode -t "$T/tok.json" --lines | cmp - <(printf 'one\ntwo\n')
}

@test "a corrupt shard is a clean error" {
    d="$BATS_TEST_TMPDIR"
    tok encode -q -t "$T/tok.json" -o "$d/s.tok" "$T/prose.txt"
    head -c 200 "$d/s.tok" >"$d/cut.tok"
    run --separate-stderr tok decode -t "$T/tok.json" "$d/cut.tok"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-tokenize: error: "*"cut.tok"* ]]
}

@test "jsonl: escapes, nested values and other keys are handled like a JSON parser would" {
    d="$BATS_TEST_TMPDIR"
    printf '%s\n' '{"meta": {"text": "no", "n": [1, 2.5e3, null, true]}, "text": "a\"b\\c\u00e9\ud83d\ude00\n"}' >"$d/j.jsonl"
    printf 'a"b\\cé😀\n' >"$d/expect"
    tok encode -q -t "$T/tok.json" --ids --jsonl text "$d/j.jsonl" | tok decode -t "$T/tok.json" | cmp - "$d/expect"
    printf '%s\n' '{"te\u0078t": "escaped key"}' >"$d/k.jsonl"
    [ "$(tok encode -q -t "$T/tok.json" --ids --jsonl text "$d/k.jsonl")" = "$(printf 'escaped key' | tok encode -q -t "$T/tok.json" --ids)" ]
}
