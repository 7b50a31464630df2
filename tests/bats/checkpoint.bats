#!/usr/bin/env bats
# io/checkpoint: a writer killed with SIGKILL in the middle of replacing a checkpoint leaves the
# previous one intact and readable; the next writer cleans up the dead one's temporary directory.

setup() {
    for u in $DS_UNITS; do case $u in */test_checkpoint) UNIT=$DS_ROOT/$u ;; esac; done
    [ -x "$UNIT" ] || skip "test_checkpoint not built"
    D=$BATS_TEST_TMPDIR
}

check_marker() { # dir marker
    run env DS_CKPT_CHECK="$1:$2" "$UNIT" reference_check_marker
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"ok 2 - reference_check_marker: all "*" tensors hold $2"* ]]
}

@test "kill -9 while replacing a checkpoint leaves the old one intact" {
    DS_CKPT_BIG="$D/ck:8:1" "$UNIT" reference_big_checkpoint >/dev/null
    check_marker "$D/ck" 1
    # 160 MB in 64 MB shards: the writer pauses after half the tensors (shards on disk) until killed
    DS_CKPT_BIG="$D/ck:160:2:$D/flag" "$UNIT" reference_big_checkpoint >/dev/null &
    pid=$!
    for _ in $(seq 600); do [ -e "$D/flag" ] && break; sleep 0.1; done
    [ -e "$D/flag" ]
    ls "$D"/ck.tmp-*/model-0000*-of-00003.safetensors
    kill -9 $pid
    wait $pid || true
    check_marker "$D/ck" 1
    [ ! -e "$D/ck/model-00001-of-00003.safetensors" ]
    [ -d "$D/ck.tmp-$pid" ]
    # the next writer replaces it and removes the dead writer's temporary
    DS_CKPT_BIG="$D/ck:8:3" "$UNIT" reference_big_checkpoint >/dev/null
    check_marker "$D/ck" 3
    [ ! -e "$D/ck.tmp-$pid" ]
    [ "$(ls -d "$D"/ck* | wc -l)" -eq 1 ]
}
