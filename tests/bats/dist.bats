#!/usr/bin/env bats
# lib/dist under mpirun: rank-ordered (bit-identical) data-parallel reductions on 2, 3 and 4 ranks.

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
