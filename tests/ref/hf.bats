#!/usr/bin/env bats
# Hugging Face conventions both ways, against transformers (tests/ref/hf_ref.py):
#  - a checkpoint the tools write carries tokenizer_config.json (special tokens, model_max_length, the
#    chat template as Jinja) and generation_config.json, so AutoTokenizer + apply_chat_template +
#    generate work on it and give what ds-generate gives (the same token ids for every conversation,
#    the same greedy tokens);
#  - DeepSeek-V3's released chat template (tests/ref/data/deepseek-v3.jinja, from deepseek-ai/DeepSeek-V3's
#    tokenizer_config.json, MIT licence; a test vector only) renders the same text in transformers, and
#    the tools take a checkpoint carrying it as the built-in template; other Jinja templates are refused
#    with a pointer to --chat-template FILE.

bats_require_minimum_version 1.5.0
load ../bats/train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_base "$T"
    cat >"$T/convs.jsonl" <<'EOF'
{"messages": [{"role": "user", "content": "What is 3 + 4?"}]}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
{"messages": [{"role": "system", "content": "one"}, {"role": "user", "content": "a"}, {"role": "system", "content": "two"}, {"role": "user", "content": "b"}]}
{"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]}
{"messages": [{"role": "user", "content": "quotes ' \" and \\ backslash, {{ braces }} {% tag %} #} \nnew line, tab\t, ünïcödé"}, {"role": "system", "content": "sys\\n"}, {"role": "user", "content": "end"}]}
EOF
    "$DS_PY" "$DS_ROOT/tests/ref/hf_ref.py" render "$T/base" "$T/convs.jsonl" >"$T/hf.jsonl"
}

ref() { "$DS_PY" "$DS_ROOT/tests/ref/hf_ref.py" "$@"; }

@test "the checkpoint carries tokenizer_config.json and generation_config.json in Hugging Face's form" {
    jq -e '.tokenizer_class == "PreTrainedTokenizerFast" and .bos_token == "<｜begin▁of▁sentence｜>"
        and .eos_token == "<｜end▁of▁sentence｜>" and .pad_token == .eos_token and .model_max_length == 512
        and .add_bos_token == true and .add_eos_token == false
        and (.chat_template | startswith("{#- ds-chat-template "))' "$T/base/tokenizer_config.json"
    jq -e '.bos_token_id == 0 and .eos_token_id == 1 and .pad_token_id == 1 and .do_sample == true
        and .temperature == 1 and .top_k == 0 and .top_p == 1 and .max_new_tokens == 128' "$T/base/generation_config.json"
}

@test "apply_chat_template gives ds-generate's token ids for every conversation (several system messages, multi-turn, escapes)" {
    "$DS_BIN/ds-generate" -m "$T/base" --score -q <"$T/convs.jsonl" | jq -c .tokens >"$T/ours"
    jq -c .ids "$T/hf.jsonl" >"$T/theirs"
    [ "$(wc -l <"$T/ours")" -eq 5 ]
    diff "$T/ours" "$T/theirs"
    # the generation prompt: <｜Assistant｜> appended, as many prompt tokens as ds-generate's
    jq -e '.gen_ids == .ids + [7] and .gen_text == .text + "<｜Assistant｜>"' "$T/hf.jsonl"
    "$DS_BIN/ds-generate" -m "$T/base" --max-new 1 --jsonl -q <"$T/convs.jsonl" | jq -c .prompt_tokens >"$T/ours_n"
    jq -c '.gen_ids | length' "$T/hf.jsonl" >"$T/theirs_n"
    diff "$T/ours_n" "$T/theirs_n"
    # several system messages gathered after BOS, joined by a blank line
    sed -n 3p "$T/hf.jsonl" | jq -e '.text == "<｜begin▁of▁sentence｜>one\n\ntwo<｜User｜>a<｜User｜>b"'
}

@test "transformers' greedy generate on the checkpoint emits ds-generate's tokens" {
    ref generate "$T/base" "$T/convs.jsonl" 12 | jq -c .tokens >"$T/theirs"
    "$DS_BIN/ds-generate" -m "$T/base" --max-new 12 --temperature 0 --jsonl -q <"$T/convs.jsonl" | jq -c .tokens >"$T/ours"
    # transformers stops at eos where ds-generate does too: compare what both emitted
    diff "$T/ours" "$T/theirs"
}

@test "generate() with no arguments follows generation_config.json as ds-generate with no options does (greedy, max_new_tokens / max_length, an eos list)" {
    ours() { "$DS_BIN/ds-generate" -m "$1" --jsonl -q <"$T/convs.jsonl" | jq -c .tokens; }
    # a second stop id: a token the first conversation's greedy completion emits
    x=$("$DS_BIN/ds-generate" -m "$T/base" --max-new 12 --temperature 0 --jsonl -q <"$T/convs.jsonl" | head -1 | jq '.tokens[3]')
    cp -r "$T/base" "$T/gcl"
    jq ".do_sample = false | .temperature = 0.6 | .top_p = 0.95 | .max_new_tokens = 10 | .eos_token_id = [1, $x]" \
        "$T/base/generation_config.json" >"$T/gcl/generation_config.json"
    ref generate "$T/gcl" "$T/convs.jsonl" - | jq -c .tokens >"$T/theirs"
    ours "$T/gcl" >"$T/ours"
    head -1 "$T/ours" | jq -e "length == 4 and .[-1] == $x"
    diff "$T/ours" "$T/theirs"
    # max_length alone counts the prompt (the last conversation's 80 tokens reach it: an error on both sides)
    jq 'del(.max_new_tokens) | .do_sample = false | .max_length = 40' "$T/base/generation_config.json" >"$T/gcl/generation_config.json"
    head -4 "$T/convs.jsonl" >"$T/convs4.jsonl"
    ref generate "$T/gcl" "$T/convs4.jsonl" - | jq -c .tokens >"$T/theirs"
    "$DS_BIN/ds-generate" -m "$T/gcl" --jsonl -q <"$T/convs4.jsonl" | jq -c '[.prompt_tokens + (.tokens|length), .finish_reason]' >"$T/len"
    grep -c '^\[40,"length"\]$' "$T/len"
    "$DS_BIN/ds-generate" -m "$T/gcl" --jsonl -q <"$T/convs4.jsonl" | jq -c .tokens >"$T/ours"
    diff "$T/ours" "$T/theirs"
    run ! "$DS_BIN/ds-generate" -m "$T/gcl" --jsonl -q <"$T/convs.jsonl"
    [[ "$output" == *"error: prompt 4: 80 tokens reach the max_length of 40 (prompt included): give --max-new" ]]
}

@test "DeepSeek-V3's released template renders what ours renders, and a checkpoint carrying it chats as the built-in template" {
    ref render "$T/base" "$T/convs.jsonl" "$DS_ROOT/tests/ref/data/deepseek-v3.jinja" >"$T/ds.jsonl"
    diff <(jq -c '[.text, .gen_text]' "$T/hf.jsonl") <(jq -c '[.text, .gen_text]' "$T/ds.jsonl")
    cp -r "$T/base" "$T/dsck"
    jq --rawfile t "$DS_ROOT/tests/ref/data/deepseek-v3.jinja" '.chat_template = $t' "$T/base/tokenizer_config.json" \
        >"$T/dsck/tokenizer_config.json"
    "$DS_BIN/ds-generate" -m "$T/base" --chat --prompt "What is 3 + 4?" --max-new 8 --temperature 0 --jsonl -q | jq -c .tokens >"$T/a"
    "$DS_BIN/ds-generate" -m "$T/dsck" --chat --prompt "What is 3 + 4?" --max-new 8 --temperature 0 --jsonl -q | jq -c .tokens >"$T/b"
    cmp "$T/a" "$T/b"
    # re-indented, with line breaks for its "\n" escapes: still recognised
    sed 's/%}{/%}\n  {/g; s/\\n/\n/g' "$DS_ROOT/tests/ref/data/deepseek-v3.jinja" >"$T/ds-wrapped.jinja"
    "$DS_BIN/ds-generate" -m "$T/base" --chat-template "$T/ds-wrapped.jinja" --chat --prompt "What is 3 + 4?" \
        --max-new 8 --temperature 0 --jsonl -q | jq -c .tokens >"$T/c"
    cmp "$T/a" "$T/c"
    # and a tokenizer_config.json given as --chat-template
    "$DS_BIN/ds-generate" -m "$T/base" --chat-template "$T/dsck/tokenizer_config.json" --chat --prompt "What is 3 + 4?" \
        --max-new 8 --temperature 0 --jsonl -q | jq -c .tokens >"$T/d"
    cmp "$T/a" "$T/d"
}

@test "another Jinja template is refused with a pointer to --chat-template FILE; ours edited by hand too" {
    cp -r "$T/base" "$T/other"
    jq '.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"' "$T/base/tokenizer_config.json" >"$T/other/tokenizer_config.json"
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/other" --chat --prompt hi --max-new 2
    [ "$status" -eq 1 ]
    [ "${stderr_lines[0]}" = "ds-generate: error: chat template: a Jinja template that is neither DeepSeek-V3's nor one written by these tools: $T/other (chat_template)" ]
    [[ "$stderr" == *"KEY = \"text\" lines) and pass --chat-template FILE"* ]]
    # without --chat a plain prompt needs no template: a warning; a conversation is then an error
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/other" --prompt hi --max-new 2 --temperature 0
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"ds-generate: warning: chat template: a Jinja template that is neither"*"(conversations cannot be rendered; give --chat-template FILE for them)"* ]]
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/other" --max-new 2 -q <<<'{"messages": [{"role": "user", "content": "hi"}]}'
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"line 1: messages need a chat template"* ]]
    # --chat-template FILE overrides the checkpoint's
    "$DS_BIN/ds-generate" -m "$T/other" --chat-template "$DS_ROOT/share/chat_template" --chat --prompt hi --max-new 2 -q
    jq '.chat_template |= sub("<｜User｜>"; "<｜User｜> ")' "$T/base/tokenizer_config.json" >"$T/other/tokenizer_config.json"
    run "$DS_BIN/ds-generate" -m "$T/other" --chat --prompt hi --max-new 2
    [ "$status" -eq 1 ]
    [[ "$output" == *"neither DeepSeek-V3's nor one written by these tools"* ]]
    # ds-sft reads the checkpoint's template the same way
    echo '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}' >"$T/one.jsonl"
    run "$DS_BIN/ds-sft" -m "$T/other" --data "$T/one.jsonl" -o "$T/sft-out" --steps 1 -q
    [ "$status" -eq 1 ]
    [[ "$output" == *"neither DeepSeek-V3's nor one written by these tools"* ]]
}

@test "a custom template trained with ds-sft travels in the checkpoint: transformers and ds-generate render it" {
    printf '%s\n' 'bos = "<｜begin▁of▁sentence｜>"' 'system = "[sys] {content}"' 'system_sep = " | "' \
        'user = "\nQ: {content}"' 'assistant = "\nA: {content}<｜end▁of▁sentence｜>"' 'generation = "\nA:"' >"$T/my.tpl"
    head -4 "$T/convs.jsonl" | jq -c '.messages += [{"role": "assistant", "content": "ok"}]' >"$T/train.jsonl"
    "$DS_BIN/ds-sft" -m "$T/base" --data "$T/train.jsonl" --chat-template "$T/my.tpl" -o "$T/sft" --steps 1 --batch 2 \
        --seq-len 64 -q
    # the same text (the tokens may split differently where template text meets message text: the tools
    # encode message text on its own, so it can never merge with, or forge, template tokens)
    ref render "$T/sft" "$T/convs.jsonl" >"$T/sft.jsonl"
    "$DS_BIN/ds-generate" -m "$T/sft" --score -q <"$T/convs.jsonl" | jq -c .tokens >"$T/ours"
    diff <(ref decode "$T/sft" "$T/ours") <(jq .text "$T/sft.jsonl")
    sed -n 3p "$T/sft.jsonl" | jq -e '.gen_text == "<｜begin▁of▁sentence｜>[sys] one | [sys] two\nQ: a\nQ: b\nA:"'
}

@test "ds-quantize gives a checkpoint that has a tokenizer but no tokenizer_config.json one (built-in template); a present one travels" {
    cp -r "$T/base" "$T/old"
    rm "$T/old/tokenizer_config.json"
    "$DS_BIN/ds-quantize" -q -m "$T/old" -o "$T/q" --to fp8
    ref render "$T/q" "$T/convs.jsonl" | jq -c .ids >"$T/theirs"
    jq -c .ids "$T/hf.jsonl" | diff - "$T/theirs"
    "$DS_BIN/ds-quantize" -q -m "$T/base" -o - --to bf16 | "$DS_BIN/ds-quantize" -q -m - -o "$T/q2" --to fp8
    cmp "$T/base/tokenizer_config.json" "$T/q2/tokenizer_config.json"
}
