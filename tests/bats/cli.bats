#!/usr/bin/env bats
# Conventions every program shares (design.md section 5): --help with defaults and an example,
# --version, usage errors as one line on stderr with exit 2.

bats_require_minimum_version 1.5.0

TOOLS="ds-tokenize ds-pretrain ds-extend-ctx ds-sft ds-rl ds-quantize ds-generate ds-bench-a2a"

@test "every program prints --help with an example and exits 0" {
    for t in $TOOLS; do
        run "$DS_BIN/$t" --help
        [ "$status" -eq 0 ] || { echo "$t: status $status"; false; }
        [[ "$output" == *"Usage: $t"* ]] || { echo "$t: no usage line"; false; }
        [[ "$output" == *"Example"* ]] || { echo "$t: no example"; false; }
        [[ "$output" == *"--version"* ]] || { echo "$t: --version not listed"; false; }
    done
}

@test "every program prints --version and exits 0" {
    for t in $TOOLS; do
        run "$DS_BIN/$t" --version
        [ "$status" -eq 0 ]
        [[ "$output" =~ ^$t\ [0-9]+\.[0-9]+\.[0-9]+ ]] || { echo "$t: $output"; false; }
    done
}

@test "an unknown option is a usage error: one error line, exit 2" {
    for t in $TOOLS; do
        run --separate-stderr "$DS_BIN/$t" --no-such-option
        [ "$status" -eq 2 ] || { echo "$t: status $status"; false; }
        [ -z "$output" ] || { echo "$t: wrote to stdout: $output"; false; }
        first=$(printf '%s\n' "$stderr" | head -1)
        [[ "$first" == "$t: error: unknown option '--no-such-option'" ]] || { echo "$t: $first"; false; }
    done
}

# Every program and ds-tokenize's commands, as the words that start them.
COMMANDS=("ds-tokenize" "ds-tokenize train" "ds-tokenize encode" "ds-tokenize decode" "ds-pretrain" "ds-extend-ctx"
          "ds-sft" "ds-rl" "ds-quantize" "ds-generate" "ds-bench-a2a")

@test "long options only in full: every abbreviation of every option is refused, naming the option" {
    for cmd in "${COMMANDS[@]}"; do
        read -r t sub <<<"$cmd"
        names=$("$DS_BIN/$t" $sub --help | grep -oE '^ +(-[a-zA-Z], )?--[a-z0-9_-]+' | sed 's/.*--//')
        [ "$(echo "$names" | wc -l)" -ge 2 ] || { echo "$cmd: options not found in --help"; false; }
        for name in $names; do
            short=${name%?}
            [ ${#short} -ge 2 ] || continue
            printf '%s\n' "$names" | grep -qx -- "$short" && continue # a real option of its own
            run --separate-stderr "$DS_BIN/$t" $sub "--$short" 1
            [ "$status" -eq 2 ] || { echo "$cmd --$short: status $status"; false; }
            first=$(printf '%s\n' "$stderr" | head -1)
            [[ "$first" == "$t: error: unknown option '--$short'"* ]] || { echo "$cmd --$short: $first"; false; }
            # the shortest name it begins (the first listed among equals) is the one suggested
            want=$(printf '%s\n' "$names" | grep -- "^$short" | awk '{ print length($0), NR, $0 }' | sort -n -k1,1 -k2,2 | head -1 | cut -d' ' -f3)
            [[ "$first" == *": did you mean --$want?" ]] || { echo "$cmd --$short: $first (want --$want)"; false; }
        done
    done
}

@test "the --eps typo of issue 16: --ep is no longer AdamW's epsilon (it is expert parallelism now)" {
    run --separate-stderr "$DS_BIN/ds-pretrain" --ep 0 --config x.json --data x -o out --steps 1
    [ "$status" -eq 2 ]
    [ "${stderr_lines[0]}" = "ds-pretrain: error: --ep: 0 is out of range [1, 1e+06]" ]
    [ ! -e out ]
    run --separate-stderr "$DS_BIN/ds-sft" --epx 1
    [ "$status" -eq 2 ]
    [[ "${stderr_lines[0]}" == "ds-sft: error: unknown option '--epx'"* ]]
}

@test "a near miss names the closest option; a far one names none; a flag given a value is refused" {
    run --separate-stderr "$DS_BIN/ds-generate" --temprature 0.5
    [ "$status" -eq 2 ]
    [ "${stderr_lines[0]}" = "ds-generate: error: unknown option '--temprature': did you mean --temperature?" ]
    run --separate-stderr "$DS_BIN/ds-sft" --thread 2
    [ "${stderr_lines[0]}" = "ds-sft: error: unknown option '--thread': did you mean --threads?" ]
    run --separate-stderr "$DS_BIN/ds-quantize" --zebra
    [ "$status" -eq 2 ]
    [ "${stderr_lines[0]}" = "ds-quantize: error: unknown option '--zebra'" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" --quiet=1
    [ "$status" -eq 2 ]
    [ "${stderr_lines[0]}" = "ds-pretrain: error: option '--quiet' takes no value: '--quiet=1'" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" --lr
    [ "${stderr_lines[0]}" = "ds-pretrain: error: option '--lr' needs an argument" ]
}

@test "a value refused after parsing names the option as the user typed it" {
    run --separate-stderr "$DS_BIN/ds-pretrain" --config x.json --data x --steps 1 -o -
    [ "$status" -eq 2 ]
    [ "${stderr_lines[0]}" = "ds-pretrain: error: -o: checkpoints are directories, not '-'" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" --config x.json --data x --steps 1 --out -
    [ "${stderr_lines[0]}" = "ds-pretrain: error: --out: checkpoints are directories, not '-'" ]
    run --separate-stderr "$DS_BIN/ds-generate" --model - </dev/null
    [ "$status" -eq 2 ]
    [ "${stderr_lines[0]}" = "ds-generate: error: --model - reads the checkpoint from stdin: give prompts with --prompt" ]
    run --separate-stderr "$DS_BIN/ds-rl" --model - --prompts p.jsonl -o out --steps 1
    [ "${stderr_lines[0]}" = "ds-rl: error: --model -: ds-rl reads the checkpoint twice: give a directory or a .safetensors file" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" --config c.json --model m --data x -o o --steps 1
    [ "${stderr_lines[0]}" = "ds-pretrain: error: --config and --model exclude each other" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" --config c.json -m m --data x -o o --steps 1
    [ "${stderr_lines[0]}" = "ds-pretrain: error: --config and -m exclude each other" ]
    run --separate-stderr "$DS_BIN/ds-quantize" -m m --out - --to bf16 --report -
    [ "${stderr_lines[0]}" = "ds-quantize: error: --report - and --out - both want stdout" ]
    run --separate-stderr "$DS_BIN/ds-tokenize" encode -t t.json --ids --out -
    [ "${stderr_lines[0]}" = "ds-tokenize: error: encode: --ids and --out - both want stdout" ]
    # checks made while parsing: the range of --lr, a short option's value, an alias as typed
    run --separate-stderr "$DS_BIN/ds-rl" --clip-grad -1
    [ "${stderr_lines[0]}" = "ds-rl: error: --clip-grad: -1 is out of range [0, 1e+09]" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" --lr 20
    [ "${stderr_lines[0]}" = "ds-pretrain: error: --lr: 20 is out of range [0, 10]" ]
    run --separate-stderr "$DS_BIN/ds-bench-a2a" -n 0
    [ "${stderr_lines[0]}" = "ds-bench-a2a: error: -n: 0 is out of range [1, 1e+07]" ]
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --iters 0
    [ "${stderr_lines[0]}" = "ds-bench-a2a: error: --iters: 0 is out of range [1, 1e+07]" ]
}
