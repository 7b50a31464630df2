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
