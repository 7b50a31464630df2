#!/usr/bin/env bats
# io/shard against an independent implementation of the documented layout (tests/ref/shard_ref.py:
# the zstd CLI for frames, a bitwise CRC-32C): our files decode there, theirs here, from files and pipes.

setup() {
    for u in $DS_UNITS; do case $u in */test_shard) UNIT=$DS_ROOT/$u ;; esac; done
    [ -x "$UNIT" ] || skip "test_shard not built"
    command -v zstd >/dev/null || skip "zstd command not installed"
    REF="$DS_PY $DS_ROOT/tests/ref/shard_ref.py"
    D=$BATS_TEST_TMPDIR
}

ours_write() { # vocab eos frame
    $REF tokens "$D/ids.u32" "$1" "$2" 11
    DS_SHARD_WRITE="$D/ids.u32:$D/ours.tok:$1:$2:$3" "$UNIT" reference_write >"$D/tap" || { cat "$D/tap"; false; }
}

@test "our 2-byte shard decodes with the reference reader" {
    ours_write 512 1 5000
    run $REF decode "$D/ours.tok" "$D/decoded.u32"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"width=2"*"streamed=0"* ]]
    cmp "$D/decoded.u32" "$D/ids.u32.expected"
}

@test "our 4-byte shard (vocab 129280) decodes with the reference reader" {
    ours_write 129280 1 3333
    run $REF decode "$D/ours.tok" "$D/decoded.u32"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"width=4"* ]]
    cmp "$D/decoded.u32" "$D/ids.u32.expected"
}

@test "a shard written by the reference writer reads here (file, then pipe)" {
    $REF tokens "$D/ids.u32" 50000 7 12
    $REF encode "$D/ids.u32" "$D/theirs.tok" 50000 7 4096
    DS_SHARD_DUMP="$D/theirs.tok:$D/got.u32" "$UNIT" reference_dump >"$D/tap" || { cat "$D/tap"; false; }
    cmp "$D/got.u32" "$D/ids.u32.expected"
    cat "$D/theirs.tok" | DS_SHARD_DUMP="-:$D/piped.u32" "$UNIT" reference_dump >"$D/tap" || { cat "$D/tap"; false; }
    cmp "$D/piped.u32" "$D/ids.u32.expected"
    grep -q "docs=300" "$D/tap"
}

@test "a streamed-form shard (counts only in the trailer) from the reference writer reads here" {
    $REF tokens "$D/ids.u32" 70000 3 13
    $REF encode "$D/ids.u32" "$D/theirs.tok" 70000 3 1000 streamed
    DS_SHARD_DUMP="$D/theirs.tok:$D/got.u32" "$UNIT" reference_dump >"$D/tap" || { cat "$D/tap"; false; }
    cmp "$D/got.u32" "$D/ids.u32.expected"
    grep -q "width=4" "$D/tap"
}
