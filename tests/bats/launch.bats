#!/usr/bin/env bats
# How the training tools and ds-bench-a2a are launched (issue 16): several processes started without
# an MPI world (torchrun; srun without an MPI plugin) are refused with one line that says how to
# launch, exit 2; under mpirun the same variables do not matter; a failure in a data-parallel run is
# printed once, by the rank that met it, with its [host:rank] prefix and its own hint.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
    export CFG="$DS_ROOT/share/configs/tiny.json"
}

# a run of 2 steps into $BATS_TEST_TMPDIR/$1 (further arguments follow)
train_args() {
    local out=$1
    shift
    echo --peak-tflops 0.1 --threads 1 --config "$CFG" --data "$T/shards" -o "$BATS_TEST_TMPDIR/$out" --steps 2 --batch 2 \
        --seq-len 16 --log-every 0 "$@"
}

TRAINERS="ds-pretrain ds-sft ds-extend-ctx ds-rl"

@test "torchrun's processes without an MPI world: rank 0 says how to launch, every rank exits 2, nothing is written" {
    for t in $TRAINERS ds-bench-a2a; do
        out=(-o "$BATS_TEST_TMPDIR/o-$t")
        [ "$t" = ds-bench-a2a ] && out=()
        run --separate-stderr env WORLD_SIZE=4 RANK=0 LOCAL_RANK=0 "$DS_BIN/$t" "${out[@]}"
        [ "$status" -eq 2 ] || { echo "$t: status $status: $stderr"; false; }
        [ "$stderr" = "[$(hostname):0] $t: error: torchrun started 4 processes without an MPI world (each would run alone, into the same outputs): launch with mpirun -np 4, or srun --mpi=pmix -n 4" ] ||
            { echo "$t: $stderr"; false; }
        run --separate-stderr env WORLD_SIZE=4 RANK=3 LOCAL_RANK=3 "$DS_BIN/$t" "${out[@]}"
        [ "$status" -eq 2 ] && [ -z "$stderr" ] || { echo "$t rank 3: status $status: $stderr"; false; }
        [ ! -e "$BATS_TEST_TMPDIR/o-$t" ]
    done
}

@test "srun's tasks without an MPI plugin are refused the same way; a batch script (no step) is one process" {
    run --separate-stderr env SLURM_STEP_NUM_TASKS=2 SLURM_NTASKS=2 SLURM_PROCID=0 "$DS_BIN/ds-pretrain" $(train_args x)
    [ "$status" -eq 2 ]
    [ "$stderr" = "[$(hostname):0] ds-pretrain: error: srun started 2 processes without an MPI world (each would run alone, into the same outputs): launch with mpirun -np 2, or srun --mpi=pmix -n 2" ]
    [ ! -e "$BATS_TEST_TMPDIR/x" ]
    run --separate-stderr env SLURM_NTASKS=4 SLURM_PROCID=0 "$DS_BIN/ds-pretrain" $(train_args batch)
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    [ -f "$BATS_TEST_TMPDIR/batch/model.safetensors" ]
}

@test "one process with WORLD_SIZE=1 trains as usual" {
    run --separate-stderr env WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 "$DS_BIN/ds-pretrain" $(train_args one)
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    [ -f "$BATS_TEST_TMPDIR/one/model.safetensors" ]
}

@test "under mpirun, torchrun's variables do not matter: 2 ranks train one model" {
    run --separate-stderr mpi -np 2 -x WORLD_SIZE=2 -x RANK=0 -x LOCAL_RANK=0 -x SLURM_STEP_NUM_TASKS=2 -x SLURM_PROCID=0 \
        "$DS_BIN/ds-pretrain" $(train_args two)
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    [[ "$stderr" == *"data parallel: 2 ranks on 1 node(s)"* ]]
    [ -f "$BATS_TEST_TMPDIR/two/model.safetensors" ]
}

@test "--dp 3 under mpirun -np 2: one error line from rank 0 with its prefix, and the hint that helps" {
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" $(train_args x) --dp 3
    [ "$status" -eq 2 ]
    errors=$(printf '%s\n' "$stderr" | grep -c ': error: ')
    [ "$errors" -eq 1 ] || { echo "$stderr"; false; }
    printf '%s\n' "$stderr" | grep -qxF "[$(hostname):0] ds-pretrain: error: --dp 3 does not match the 2 processes started"
    printf '%s\n' "$stderr" | grep -qxF "hint: start --dp N with mpirun -np N (times --pp)"
    [[ "$stderr" != *"--help lists the options"* ]]
}

@test "a usage error on the command line under mpirun is printed by rank 0 alone" {
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-sft" --epss 1
    [ "$status" -eq 2 ]
    [ "$(printf '%s\n' "$stderr" | grep -c ': error: ')" -eq 1 ] || { echo "$stderr"; false; }
    printf '%s\n' "$stderr" | grep -qxF "[$(hostname):0] ds-sft: error: unknown option '--epss': did you mean --eps?"
}

@test "a bad input every rank meets is printed once; a data error met after the ranks joined too" {
    echo '{"bad": ' >"$BATS_TEST_TMPDIR/bad.json"
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" $(train_args x) --config "$BATS_TEST_TMPDIR/bad.json"
    [ "$status" -eq 1 ]
    [ "$(printf '%s\n' "$stderr" | grep -c ': error: ')" -eq 1 ] || { echo "$stderr"; false; }
    [[ "$stderr" == *"[$(hostname):0] ds-pretrain: error: "*"bad.json"* ]]
    : >"$BATS_TEST_TMPDIR/empty.tok"
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" $(train_args y) --data "$BATS_TEST_TMPDIR/empty.tok"
    [ "$status" -eq 1 ]
    [ "$(printf '%s\n' "$stderr" | grep -c ': error: ')" -eq 1 ] || { echo "$stderr"; false; }
    [[ "$stderr" == *"[$(hostname):0] ds-pretrain: error: "*"empty.tok"* ]]
}

@test "ds-bench-a2a: an error every rank meets is printed once" {
    run --separate-stderr mpi -np 3 "$DS_BIN/ds-bench-a2a" --mode ep --experts 16 -n 1 -w 0
    [ "$status" -eq 1 ]
    [ "$(printf '%s\n' "$stderr" | grep -c ': error: ')" -eq 1 ] || { echo "$stderr"; false; }
    [[ "$stderr" == *"[$(hostname):0] ds-bench-a2a: error: --experts 16 is not a multiple of 3 ranks"* ]]
}
