#!/usr/bin/env bats
# NCCL and --comm on a machine without GPUs: what can be checked here is the choice of transport, the
# refusals (one line each, printed once for all ranks), and the MPI fallback for gradients in device memory
# (tests/unit/test_devcomm.c on 2 and 3 ranks). The NCCL collectives themselves run in tests/gpu (test_nccl).

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
}

setup() {
    mpi_env
    ARGS=(--config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" --steps 1 --batch 2 --seq-len 16 --threads 1 -q)
}

@test "gradients in device memory over MPI: staged reductions equal the host ones bit for bit (2, 3 ranks)" {
    local u driver=
    for u in $DS_UNITS; do case $u in */test_devcomm) driver=$DS_ROOT/$u ;; esac; done
    [ -x "$driver" ] || skip "test_devcomm not built"
    for np in 2 3; do
        run mpi -np $np "$driver"
        echo "np=$np: $output"
        [ "$status" -eq 0 ]
        [[ "$output" != *"not ok"* ]]
        [ "$(printf '%s\n' "$output" | grep -c '^ok ')" -eq 24 ]
    done
}

@test "--comm nccl needs --device cuda; an unknown --comm is a usage error" {
    run --separate-stderr "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" --comm nccl
    [ "$status" -eq 2 ]
    [ "${stderr%%$'\n'*}" = "ds-pretrain: error: --comm nccl reduces GPU buffers: it needs --device cuda" ]
    [ ! -e "$BATS_TEST_TMPDIR/o" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" --comm gloo
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"--comm"*"gloo"*"auto|mpi|nccl"* ]]
}

@test "--device cuda --comm nccl: one line naming what is missing here (the library, or NCCL in the build)" {
    if nccl_build; then
        DS_NCCL_LIB=/no/such/libnccl.so.2 run --separate-stderr "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" \
            --device cuda --comm nccl
        [ "$status" -eq 1 ]
        [ "$stderr" = "ds-pretrain: error: nccl: cannot load /no/such/libnccl.so.2 (/no/such/libnccl.so.2: cannot open shared object file: No such file or directory); set DS_NCCL_LIB or LD_LIBRARY_PATH" ]
    else
        run --separate-stderr "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" --device cuda --comm nccl
        [ "$status" -eq 2 ]
        [ "${stderr%%$'\n'*}" = "ds-pretrain: error: --comm nccl: this build has no NCCL (built without CUDA, or make found no nccl.h; see docs/DESIGN.md \"NCCL\")" ]
    fi
}

@test "--device cuda alone (auto, one process) does not join a group: the GPU is what is missing" {
    run --separate-stderr "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" --device cuda
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: --device cuda: "* ]]
    [[ "$stderr" != *"nccl"* ]]
}

@test "data parallelism on GPUs is accepted (2 ranks, --comm mpi); pipeline and expert parallelism on GPUs are refused once" {
    ! nvidia-smi -L >/dev/null 2>&1 || skip "a GPU is present: tests/gpu/test_nccl.sh trains on it"
    # before: "data parallelism with --device cuda: ... host memory only"; now the ranks join and the GPU is what is missing
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" --device cuda --comm mpi
    [ "$status" -ne 0 ]
    [ "$(printf '%s\n' "$stderr" | grep -c 'error:')" -eq 1 ]
    [[ "$stderr" == "[$(hostname):0] ds-pretrain: error: --device cuda: no usable GPU ("* ]]
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" --device cuda --pp 2
    [ "$status" -ne 0 ]
    [ "$(printf '%s\n' "$stderr" | grep -c 'error:')" -eq 1 ]
    [[ "$stderr" == "[$(hostname):0] ds-pretrain: error: pipeline parallelism with --device cuda: the stages' transfers run over host memory only in this build"* ]]
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" "${ARGS[@]}" -o "$BATS_TEST_TMPDIR/o" --device cuda --ep 2
    [ "$status" -ne 0 ]
    [[ "$stderr" == "[$(hostname):0] ds-pretrain: error: expert parallelism with --device cuda: dispatch and combine run over host memory only in this build"* ]]
}
