#!/usr/bin/env bats
# A dying rank ends the whole data-parallel run: mpirun stops every other rank within seconds and says
# which rank died, and the last complete checkpoint stays intact (the next run resumes from it). The
# runs use ZeRO-1 (the default with several ranks), so the checkpoint's optimizer state is sharded.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
}

# the pid of MPI rank $2 among the ds-pretrain processes writing $1
rank_pid() {
    local p
    for p in $(pgrep -f "ds-pretrain .*-o $1 "); do
        if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then echo "$p"; return; fi
    done
}

# kill -9 rank $2 of an $1-rank run once it has saved a checkpoint; checks the whole job ends. Further
# arguments: the layout (default --dp $1)
kill_rank_mid_run() {
    local np=$1 victim=$2 out=$BATS_TEST_TMPDIR/out layout=("${@:3}")
    [ ${#layout[@]} -gt 0 ] || layout=(--dp "$np")
    mpi -np "$np" "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --config "$DS_ROOT/share/configs/tiny.json" \
        --data "$T/shards" -o "$out" --steps 1000000 --batch 2 --seq-len 16 --log-every 0 --save-every 10 --seed 1 \
        "${layout[@]}" -q 2>"$BATS_TEST_TMPDIR/err" &
    local job=$! pid="" i
    for i in $(seq 1 240); do [ -f "$out/trainer_state.json" ] && break; sleep 0.25; done
    [ -f "$out/trainer_state.json" ] || { kill -9 $job; cat "$BATS_TEST_TMPDIR/err"; false; }
    for i in $(seq 1 40); do pid=$(rank_pid "$out" "$victim"); [ -n "$pid" ] && break; sleep 0.25; done
    [ -n "$pid" ]
    local t0=$SECONDS
    kill -9 "$pid"
    local status=0
    wait $job || status=$?
    ELAPSED=$((SECONDS - t0))
    [ "$status" -ne 0 ]
    [ "$ELAPSED" -le 15 ] || { echo "the job took ${ELAPSED}s to end"; false; }
    # no rank survives (within the same 15 s of the kill: mpirun can return while a killed rank is still
    # exiting on a loaded machine), and mpirun named the one that died
    while [ -n "$(pgrep -f "ds-pretrain .*-o $out ")" ] && [ $((SECONDS - t0)) -le 15 ]; do sleep 0.1; done
    [ -z "$(pgrep -f "ds-pretrain .*-o $out ")" ] || { pgrep -af "ds-pretrain .*-o $out "; false; }
    grep -q "process rank $victim .* exited on signal 9" "$BATS_TEST_TMPDIR/err" || { cat "$BATS_TEST_TMPDIR/err"; false; }
}

# the checkpoint left behind is complete, and the same layout (or the one given after $1) resumes from it
# and trains 2 more steps
resumes_intact() {
    local np=$1 out=$BATS_TEST_TMPDIR/out step layout=("${@:2}")
    step=$(jq .step "$out/trainer_state.json")
    [ $((step % 10)) -eq 0 ] && [ "$step" -ge 10 ]
    for f in config.json model.safetensors tokenizer.json; do [ -s "$out/$f" ]; done
    if [ ${#layout[@]} -eq 0 ]; then
        # plain data parallelism runs ZeRO-1 (the default over several ranks): an index and one shard per rank
        layout=(--dp "$np")
        [ -s "$out/optimizer.index.json" ] && [ ! -e "$out/optimizer.safetensors" ]
        for r in $(seq 0 $((np - 1))); do [ -s "$out/$(printf 'optimizer-%05d-of-%05d.safetensors' "$r" "$np")" ]; done
    else
        [ -s "$out/optimizer.safetensors" ] || [ -s "$out/optimizer.index.json" ]
    fi
    run --separate-stderr mpi -np "$np" "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 \
        --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" -o "$out" --resume "$out" \
        --steps $((step + 2)) --batch 2 --seq-len 16 --log-every 1 --seed 1 "${layout[@]}"
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    [ "$(jq .step "$out/trainer_state.json")" -eq $((step + 2)) ]
    [[ "$stderr" == *"step $((step + 2))/$((step + 2))"* ]] || { echo "$stderr"; false; }
    echo "# killed at step $step, job ended ${ELAPSED}s after the kill, resumed to $((step + 2))" >&3
}

@test "kill -9 one rank of four: every rank exits within seconds, the rank is named, the checkpoint resumes" {
    kill_rank_mid_run 4 2
    resumes_intact 4
}

@test "kill -9 the writing rank (rank 0) of two: the job ends and the last checkpoint is intact" {
    kill_rank_mid_run 2 0
    resumes_intact 2
}

@test "kill -9 a pipeline stage's rank (--pp 2 x DP 2) mid-step: every rank exits, the checkpoint resumes under --pp 2" {
    kill_rank_mid_run 4 3 --pp 2 --micro-batch 1
    resumes_intact 4 --pp 2 --micro-batch 1
}
