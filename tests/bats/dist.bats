#!/usr/bin/env bats
# lib/dist under mpirun: rank-ordered (bit-identical) data-parallel reductions on 2, 3 and 4 ranks.

setup() {
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
    [ -n "${DS_SANITIZE:-}" ] && export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
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
