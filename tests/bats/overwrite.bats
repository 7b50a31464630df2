#!/usr/bin/env bats
# No silent loss, one writer: every tool that writes a checkpoint (ds-pretrain, ds-extend-ctx, ds-sft,
# ds-rl, ds-quantize) or token shards (ds-tokenize encode) refuses an output that already holds one
# unless --force (or --resume continuing the run saved there), refuses -o naming its own input -m
# (however spelled) unless --force, never replaces a directory of other files, and leaves what it
# refused untouched; a second process writing the same directory is refused while the first one
# (which holds DIR/.lock across its saves) finishes normally.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() { tiny_setup; }

# Each tool, one step of it from $T/base into the -o that follows.
pretrain() { "$DS_BIN/ds-pretrain" -q --peak-tflops 0.1 --threads 1 --data "$T/shards" --steps 1 --batch 2 --seq-len 32 "$@"; }
extend() { "$DS_BIN/ds-extend-ctx" -q --threads 1 --data "$T/shards" --factor 2 --original-len 64 --seq-len 64 --steps 1 \
    --batch 2 --eval-lengths 64 --eval-depths 0.5 --eval-trials 1 --eval-docs 1 "$@" >/dev/null; }
sft() { "$DS_BIN/ds-sft" -q --threads 1 --data "$T/chat.jsonl" --steps 1 --batch 2 --seq-len 64 "$@"; }
rl() { "$DS_BIN/ds-rl" -q --threads 1 --prompts "$T/prompts.jsonl" --steps 1 --group 2 --batch 2 --max-new 4 "$@"; }

# The common contract for a training tool $1 (a function above) started from -m $T/base.
check_training_tool() {
    local tool=$1 name=$2 d=$BATS_TEST_TMPDIR
    "$tool" -m "$T/base" -o "$d/a"
    [ -f "$d/a/trainer_state.json" ] && [ ! -e "$d/a/.lock" ]
    cp -r "$d/a" "$d/a.before"
    # an existing checkpoint: refused, named with the flag, untouched
    run --separate-stderr "$tool" -m "$T/base" -o "$d/a"
    [ "$status" -eq 1 ]
    [ "$stderr" = "$name: error: output directory holds a checkpoint (give --force to replace it, or --resume $d/a to continue its run): $d/a
hint: or choose another -o" ]
    diff -r "$d/a" "$d/a.before"
    # -o is -m, spelled another way
    run --separate-stderr "$tool" -m "$d/a" -o "$d/./a/../a"
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "$name: error: -o is the input checkpoint -m (give --force to replace the input): $d/./a/../a" ]
    diff -r "$d/a" "$d/a.before"
    # --force replaces it; so does continuing the run saved there
    run --separate-stderr "$tool" -m "$T/base" -o "$d/a" --force
    [ "$status" -eq 0 ]
    ! cmp -s "$d/a/model.safetensors" "$d/a.before/model.safetensors"
    run --separate-stderr "$tool" -m "$T/base" -o "$d/a" --resume "$d/a" --steps 2
    [ "$status" -eq 0 ]
    grep -q '"step":2,' "$d/a/trainer_state.json"
    # --resume from one run into another's checkpoint is no exception
    run --separate-stderr "$tool" -o "$d/a" --resume "$d/a.before" --steps 2
    [ "$status" -eq 1 ]
    [[ "$stderr" == "$name: error: output directory holds a checkpoint (give --force"*": $d/a"* ]]
    # a directory of other files is never replaced; an empty one is fine
    mkdir "$d/notes" "$d/empty"
    echo keep >"$d/notes/todo.txt"
    run --separate-stderr "$tool" -m "$T/base" -o "$d/notes" --force
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "$name: error: output directory holds files that are not a checkpoint (not replaced, --force or not): $d/notes" ]
    [ "$(ls -A "$d/notes")" = "todo.txt" ]
    "$tool" -m "$T/base" -o "$d/empty"
    [ -f "$d/empty/model.safetensors" ]
}

@test "ds-pretrain: no silent replacement of -o" {
    check_training_tool pretrain ds-pretrain
    # a fresh run (--config) into an existing checkpoint is refused as well
    run --separate-stderr pretrain --config "$DS_ROOT/share/configs/tiny.json" -o "$T/base"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: output directory holds a checkpoint (give --force to replace it, or --resume $T/base"* ]]
    # a run that fails before its first save leaves no directory behind
    run --separate-stderr pretrain --config "$DS_ROOT/share/configs/tiny.json" -o "$BATS_TEST_TMPDIR/never" --data "$T/prose.txt"
    [ "$status" -eq 1 ]
    [ ! -e "$BATS_TEST_TMPDIR/never" ]
}

@test "ds-extend-ctx: no silent replacement of -o" {
    check_training_tool extend ds-extend-ctx
}

@test "ds-sft: no silent replacement of -o" {
    check_training_tool sft ds-sft
}

@test "ds-rl: no silent replacement of -o" {
    check_training_tool rl ds-rl
}

@test "ds-quantize: no silent replacement of -o, directory or file" {
    local d=$BATS_TEST_TMPDIR
    cp -r "$T/base" "$d/sft"
    "$DS_BIN/ds-quantize" -q -m "$d/sft" -o "$d/fp8" --to fp8
    cp -r "$d/fp8" "$d/fp8.before"
    run --separate-stderr "$DS_BIN/ds-quantize" -q -m "$d/sft" -o "$d/fp8" --to bf16
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-quantize: error: output directory holds a checkpoint (give --force to replace it): $d/fp8
hint: or choose another -o" ]
    diff -r "$d/fp8" "$d/fp8.before"
    # the issue's case: the training checkpoint converted onto itself
    run --separate-stderr "$DS_BIN/ds-quantize" -q -m "$d/sft" -o "$d/sft/" --to fp8
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "ds-quantize: error: -o is the input checkpoint -m (give --force to replace the input): $d/sft/" ]
    [ -f "$d/sft/trainer_state.json" ] && [ -f "$d/sft/optimizer.safetensors" ]
    cmp "$d/sft/model.safetensors" "$T/base/model.safetensors"
    # --force does what was asked
    "$DS_BIN/ds-quantize" -q -m "$d/sft" -o "$d/fp8" --to bf16 --force
    grep -q '"torch_dtype": "bfloat16"' "$d/fp8/config.json"
    "$DS_BIN/ds-quantize" -q -m "$d/sft" -o "$d/sft" --to fp8 --force
    grep -q quantization_config "$d/sft/config.json"
    # the stream form: an existing file, and the input file itself
    "$DS_BIN/ds-quantize" -q -m "$T/base" -o "$d/q.safetensors" --to fp8
    cp "$d/q.safetensors" "$d/q.before"
    run --separate-stderr "$DS_BIN/ds-quantize" -q -m "$T/base" -o "$d/q.safetensors" --to bf16
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "ds-quantize: error: output exists (give --force to replace it): $d/q.safetensors" ]
    run --separate-stderr "$DS_BIN/ds-quantize" -q -m "$d/q.safetensors" -o "$d/q.safetensors" --to bf16
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "ds-quantize: error: -o is the input checkpoint -m (give --force to replace the input): $d/q.safetensors" ]
    cmp "$d/q.safetensors" "$d/q.before"
    "$DS_BIN/ds-quantize" -q -m "$T/base" -o "$d/q.safetensors" --to bf16 --force
    ! cmp -s "$d/q.safetensors" "$d/q.before"
}

@test "ds-tokenize encode: no silent replacement of a shard file or a shard directory" {
    local d=$BATS_TEST_TMPDIR
    "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$d/one.tok" "$T/prose.txt"
    cp "$d/one.tok" "$d/one.before"
    run --separate-stderr "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$d/one.tok" "$T/chat.jsonl"
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "ds-tokenize: error: output exists (give --force to replace it): $d/one.tok" ]
    cmp "$d/one.tok" "$d/one.before"
    "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$d/one.tok" "$T/chat.jsonl" --force
    "$DS_BIN/ds-tokenize" decode -t "$T/tok.json" "$d/one.tok" | cmp - "$T/chat.jsonl"
    # a directory: several shards, then one with --force (the old ones do not stay to be globbed in)
    "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" --lines --shard-tokens 4000 -o "$d/shards/" "$T/prose.txt"
    [ -f "$d/shards/000002.tok" ]
    run --separate-stderr "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$d/shards/" "$T/chat.jsonl"
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "ds-tokenize: error: output directory holds numbered shards of an earlier run (give --force to replace them): $d/shards/" ]
    [ -f "$d/shards/000002.tok" ]
    "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$d/shards/" "$T/chat.jsonl" --force
    [ "$(ls -A "$d/shards")" = "000000.tok
tokenizer.json" ]
    "$DS_BIN/ds-tokenize" decode -t "$T/tok.json" "$d/shards/000000.tok" | cmp - "$T/chat.jsonl"
}

# A run into $BATS_TEST_TMPDIR/run in the background, saving every step (so whoever comes next meets the
# lock after directory swaps), long enough to outlast any check (the caller stops it); returns once
# step 3 is saved, its pid in $BATS_TEST_TMPDIR/pid. (A fixed 60 steps could finish before the checks
# did once the GEMMs ran on the right OpenBLAS kernel.)
background_run() {
    local d=$BATS_TEST_TMPDIR
    "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --data "$T/shards" --seq-len 32 --batch 2 -m "$T/base" \
        -o "$d/run" --steps 1000000 --save-every 1 --log-every 0 -q &
    echo "$!" >"$d/pid"
    for _ in $(seq 3000); do
        [ -f "$d/run/trainer_state.json" ] && grep -q '"step":[3-9]' "$d/run/trainer_state.json" && break
        sleep 0.01
    done
}

# The step the run in $BATS_TEST_TMPDIR/run saved last.
saved_step() {
    grep -o '"step":[0-9]*' "$BATS_TEST_TMPDIR/run/trainer_state.json" | head -1 | cut -d: -f2
}

@test "one writer per directory: a second training run into the same -o is refused, the first goes on" {
    local d=$BATS_TEST_TMPDIR
    background_run
    local pid=$(cat "$d/pid")
    [ "$(cat "$d/run/.lock")" = "$pid" ]
    run --separate-stderr pretrain -m "$T/base" -o "$d/run" --force
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-pretrain: error: output directory in use: another process (pid $pid) is writing it: $d/run
hint: wait for it to finish, or write to another directory" ]
    run --separate-stderr sft -m "$T/base" -o "$d/run" --resume "$d/run"
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-sft: error: output directory in use: another process (pid $pid) is writing it: $d/run"* ]]
    run --separate-stderr "$DS_BIN/ds-quantize" -q -m "$T/base" -o "$d/run" --to fp8 --force
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-quantize: error: output directory in use: another process (pid $pid) is writing it: $d/run"* ]]
    kill -0 "$pid" # the first run is still training
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    [ "$rc" -eq 143 ] # stopped after saving
    [ ! -e "$d/run/.lock" ]
    local step=$(saved_step)
    [ "$step" -ge 3 ]
    # and now the directory is free again
    pretrain -m "$T/base" -o "$d/run" --resume "$d/run" --steps $((step + 1))
    grep -q "\"step\":$((step + 1))," "$d/run/trainer_state.json"
}

@test "one writer per directory: a writer killed with SIGKILL leaves no lock behind; --resume continues" {
    local d=$BATS_TEST_TMPDIR
    background_run
    local pid=$(cat "$d/pid")
    kill -KILL "$pid"
    wait "$pid" || true
    [ "$(cat "$d/run/.lock")" = "$pid" ] # the file stays; the kernel dropped the lock with the process
    local step=$(saved_step)
    pretrain -m "$T/base" -o "$d/run" --resume "$d/run" --steps $((step + 1))
    grep -q "\"step\":$((step + 1))," "$d/run/trainer_state.json"
    [ ! -e "$d/run/.lock" ]
}

@test "one writer per directory: ds-quantize and ds-tokenize respect a lock held by another program" {
    local d=$BATS_TEST_TMPDIR fd
    mkdir "$d/out"
    exec {fd}>"$d/out/.lock"
    flock -n "$fd" # this shell holds the lock now
    run --separate-stderr "$DS_BIN/ds-quantize" -q -m "$T/base" -o "$d/out" --to fp8
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-quantize: error: output directory in use: another process is writing it: $d/out
hint: wait for it to finish, or write to another directory" ]
    run --separate-stderr "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$d/out" "$T/chat.jsonl"
    [ "$status" -eq 1 ]
    [ "${stderr%%$'\n'*}" = "ds-tokenize: error: output directory in use: another process is writing it: $d/out" ]
    [ "$(ls -A "$d/out")" = ".lock" ]
    exec {fd}>&-
    "$DS_BIN/ds-quantize" -q -m "$T/base" -o "$d/out" --to fp8
    [ "$(ls -A "$d/out")" = "config.json
generation_config.json
model.safetensors
tokenizer.json
tokenizer_config.json" ]
}

@test "one writer per directory under mpirun: rank 0 holds the lock for all ranks, and all stop when it cannot" {
    local d=$BATS_TEST_TMPDIR fd
    mpi_env
    local args=(--peak-tflops 0.1 --threads 1 -m "$T/base" --data "$T/shards" --steps 2 --batch 4 --micro-batch 1 --seq-len 32 -q)
    mkdir "$d/run"
    exec {fd}>"$d/run/.lock"
    flock -n "$fd"
    run --separate-stderr timeout 120 mpirun --oversubscribe -np 2 "$DS_BIN/ds-pretrain" "${args[@]}" -o "$d/run"
    [ "$status" -ne 0 ] && [ "$status" -ne 124 ] # refused, not hung in the first all-reduce
    [[ "$stderr" == *":0] ds-pretrain: error: output directory in use: another process is writing it: $d/run"* ]]
    [ "$(printf '%s\n' "$stderr" | grep -c ': error: ')" -eq 1 ] # printed once: rank 1 stops quietly with it
    exec {fd}>&-
    # free again: both ranks train, rank 0 writes under the lock
    timeout 120 mpirun --oversubscribe -np 2 "$DS_BIN/ds-pretrain" "${args[@]}" -o "$d/run"
    grep -q '"step":2,' "$d/run/trainer_state.json"
    [ ! -e "$d/run/.lock" ]
}
