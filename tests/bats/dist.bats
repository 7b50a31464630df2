#!/usr/bin/env bats
# lib/dist under mpirun: rank-ordered (bit-identical) data-parallel reductions on 2, 3 and 4 ranks; the
# two-hop expert-parallel transport against the one-hop one.

load mpi_helpers

setup() {
    mpi_env
    DRIVER=
    for u in $DS_UNITS; do case $u in */test_dist) DRIVER=$DS_ROOT/$u ;; esac; done
    [ -x "$DRIVER" ] || skip "test_dist not built"
}

@test "reductions are identical on every rank and equal the rank-ordered sum (2, 3, 4 ranks)" {
    for np in 2 3 4; do
        run mpirun --oversubscribe -np $np "$DRIVER"
        echo "np=$np: $output"
        [ "$status" -eq 0 ]
        [[ "$output" != *"not ok"* ]]
        [ "$(printf '%s\n' "$output" | grep -c '^ok ')" -ge 9 ]
    done
}

@test "two-hop dispatch/combine: bit-identical to one hop, exact byte counts (1, 2, 4, 6 ranks; every node size)" {
    HOPS=
    for u in $DS_UNITS; do case $u in */test_ep_hops) HOPS=$DS_ROOT/$u ;; esac; done
    [ -x "$HOPS" ] || skip "test_ep_hops not built"
    # two hops differ from one only with 2 or more nodes of 2 or more ranks: 4 ranks (2 x 2), 6 (3 x 2, 2 x 3)
    for np in 1 2 4 6; do
        run mpirun --oversubscribe -np $np "$HOPS"
        echo "np=$np: $output"
        [ "$status" -eq 0 ]
        [[ "$output" != *"not ok"* ]]
        # checks: 1 for the default (one node), 9 per node size dividing np (10 when 1 < size < np), 4 refusals on 4 ranks
        [ "$(printf '%s\n' "$output" | grep -c '^ok ')" -eq $((np == 1 ? 10 : np == 2 ? 19 : np == 4 ? 33 : 39)) ]
    done
}
