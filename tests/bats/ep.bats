#!/usr/bin/env bats
# Expert parallelism (issue 18): the model holding only its EP rank's experts, exchanging tokens over MPI,
# against the one-process model (tests/unit/test_moe_ep.c), on 2 and 4 ranks with --ep 2 and 4.

load mpi_helpers

setup() {
    mpi_env
    DRIVER=
    for u in $DS_UNITS; do case $u in */test_moe_ep) DRIVER=$DS_ROOT/$u ;; esac; done
    [ -x "$DRIVER" ] || skip "test_moe_ep not built"
}

# np ep ranks-per-node
ep_model() {
    run env DS_TEST_EP=$2 DS_TEST_RPN=$3 mpirun --oversubscribe -np $1 "$DRIVER"
    echo "np=$1 ep=$2 rpn=$3: $output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* ]]
    [[ "$output" == *"gradients within"* ]]
}

@test "EP model: log-probs, expert loads and gradients of the one-process model (2 ranks, ep 2)" {
    ep_model 2 2 1
}

@test "EP model: 4 ranks, ep 4 on 4 nodes (at most topk_group nodes per token), and ep 2 beside dp" {
    ep_model 4 4 1
    [[ "$output" == *"at most 2 nodes per token"* ]]
    ep_model 4 2 2
}
