#!/usr/bin/env bats
# ds-tokenize against HF tokenizers (the independent reference) on a varied corpus: source code, prose,
# letters with marks, CJK, emoji, digit and whitespace runs, control characters, special-token look-alikes.
# Zero mismatching tokens is the bar: with our trained tokenizer, with one trained by HF's BpeTrainer
# (same pre-tokenizer), and with a GPT-2-style one (ByteLevel use_regex true). Merges are compared with
# HF's BpeTrainer on the same corpus and vocabulary size.

bats_require_minimum_version 1.5.0

REF="$DS_ROOT/tests/ref/tokenizer_ref.py"

setup_file() {
    export C="$BATS_FILE_TMPDIR/corpus"
    "$DS_PY" "$REF" corpus "$C" 60 1234
    "$DS_BIN/ds-tokenize" train -q --vocab-size 3000 -o "$BATS_FILE_TMPDIR/ours.json" "$C"/*.txt
}

@test "our tokenizer: encode matches HF tokenizers token for token (special tokens as text)" {
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_FILE_TMPDIR/ours.json" --ids "$C"/*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" encode "$BATS_FILE_TMPDIR/ours.json" "$BATS_TEST_TMPDIR/ids" "$C"/*.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"0 documents differ, 0 tokens differ"* ]]
}

@test "our tokenizer: --allow-special matches HF with special tokens split out" {
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_FILE_TMPDIR/ours.json" --ids --allow-special "$C"/*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" encode "$BATS_FILE_TMPDIR/ours.json" "$BATS_TEST_TMPDIR/ids" --special "$C"/*.txt
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "HF decodes our ids back to every document, and so do we" {
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_FILE_TMPDIR/ours.json" --ids "$C"/*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" decode "$BATS_FILE_TMPDIR/ours.json" "$BATS_TEST_TMPDIR/ids" "$C"/*.txt
    echo "$output"
    [ "$status" -eq 0 ]
    for f in "$C"/doc-0000.txt "$C"/doc-0100.txt "$C"/doc-0150.txt; do
        "$DS_BIN/ds-tokenize" encode -q -t "$BATS_FILE_TMPDIR/ours.json" --ids "$f" |
            "$DS_BIN/ds-tokenize" decode -t "$BATS_FILE_TMPDIR/ours.json" | cmp - "$f"
    done
}

@test "transformers loads our tokenizer.json; its BOS post-processor agrees with --bos" {
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_FILE_TMPDIR/ours.json" --ids --bos "$C"/doc-00[0-4]*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" transformers "$BATS_FILE_TMPDIR/ours.json" "$BATS_TEST_TMPDIR/ids" "$C"/doc-00[0-4]*.txt
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *", 0 differ"* ]]
}

@test "tokenizer trained by HF's BpeTrainer (DeepSeek pre-tokenizer): zero mismatches" {
    "$DS_PY" "$REF" train "$BATS_TEST_TMPDIR/hf.json" 3000 deepseek "$C"/*.txt
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_TEST_TMPDIR/hf.json" --ids "$C"/*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" encode "$BATS_TEST_TMPDIR/hf.json" "$BATS_TEST_TMPDIR/ids" "$C"/*.txt
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "GPT-2-style tokenizer (ByteLevel use_regex true): zero mismatches, with and without specials" {
    "$DS_PY" "$REF" train "$BATS_TEST_TMPDIR/gpt2.json" 3000 gpt2 "$C"/*.txt
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_TEST_TMPDIR/gpt2.json" --ids "$C"/*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" encode "$BATS_TEST_TMPDIR/gpt2.json" "$BATS_TEST_TMPDIR/ids" "$C"/*.txt
    echo "$output"
    [ "$status" -eq 0 ]
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_TEST_TMPDIR/gpt2.json" --ids --allow-special "$C"/*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" encode "$BATS_TEST_TMPDIR/gpt2.json" "$BATS_TEST_TMPDIR/ids" --special "$C"/*.txt
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "trained merges and vocabulary are identical to HF's BpeTrainer at three vocabulary sizes" {
    for v in 300 3000 9000; do
        "$DS_BIN/ds-tokenize" train -q --vocab-size $v -o "$BATS_TEST_TMPDIR/o$v.json" "$C"/*.txt
        "$DS_PY" "$REF" train "$BATS_TEST_TMPDIR/h$v.json" $v deepseek "$C"/*.txt
        run "$DS_PY" "$REF" merges "$BATS_TEST_TMPDIR/o$v.json" "$BATS_TEST_TMPDIR/h$v.json"
        echo "$v: $output"
        [ "$status" -eq 0 ]
        [[ "$output" == *"merges identical"* && "$output" == *"vocabularies identical: $v"* ]]
    done
}

@test "a second corpus seed: parity holds on different text" {
    "$DS_PY" "$REF" corpus "$BATS_TEST_TMPDIR/c2" 40 777
    "$DS_BIN/ds-tokenize" encode -q -t "$BATS_FILE_TMPDIR/ours.json" --ids "$BATS_TEST_TMPDIR/c2"/*.txt >"$BATS_TEST_TMPDIR/ids"
    run "$DS_PY" "$REF" encode "$BATS_FILE_TMPDIR/ours.json" "$BATS_TEST_TMPDIR/ids" "$BATS_TEST_TMPDIR/c2"/*.txt
    echo "$output"
    [ "$status" -eq 0 ]
}
