#!/usr/bin/env bats
# ds-bench-a2a: all-to-all and expert-parallel dispatch/combine over MPI, checked element by element.

bats_require_minimum_version 1.5.0

load mpi_helpers

setup() {
    mpi_env
    export OMPI_MCA_rmaps_base_oversubscribe=1
    MPIRUN="mpirun --oversubscribe"
    true
}

@test "all-to-all sweep on 3 ranks: every element arrives where it belongs" {
    run $MPIRUN -np 3 "$DS_BIN/ds-bench-a2a" -b 1K -e 64K -f 8 -n 3 -w 1
    [ "$status" -eq 0 ]
    rows=$(printf '%s\n' "$output" | grep -vE '^#' | grep -E '^ *[0-9]')
    [ "$(printf '%s\n' "$rows" | wc -l)" -eq 3 ]          # 1K, 8K, 64K
    # both #wrong columns (9th and 13th fields) are 0
    printf '%s\n' "$rows" | awk '$9 != 0 || $13 != 0 { bad = 1 } END { exit bad }'
    # sizes and counts as nccl-tests prints them: count = size / 4 for float
    printf '%s\n' "$rows" | awk 'NR == 2 && ($1 != 8192 || $2 != 2048) { exit 1 }'
    # nccl-tests' unit row under the column names, and its closing summary: the wrong elements and the
    # bus bandwidth averaged over the rows (ours: column 8; MPI_Alltoallv's: column 12)
    printf '%s\n' "$output" | grep -A1 '^# *size  *count' | tail -1 |
        grep -qE '^# +\(B\) +\(elements\) +\(us\) +\(GB/s\) +\(GB/s\) +\(us\) +\(GB/s\) +\(GB/s\) *$'
    printf '%s\n' "$output" | grep -qx '# Out of bounds values : 0 OK'
    [ "$(printf '%s\n' "$output" | grep -c 'Avg bus bandwidth')" -eq 1 ]
    avg=$(printf '%s\n' "$output" | awk -F': ' '/^# Avg bus bandwidth    : / { print $2 + 0 }')
    ref=$(printf '%s\n' "$output" | awk -F': ' '/^# MPI_Alltoallv avg bus bandwidth : / { print $2 + 0 }')
    printf '%s\n' "$rows" | awk -v avg="$avg" -v ref="$ref" '{ a += $8; r += $12 } END {
        # the rows print 2 decimals, the summary 6 digits
        if ((a / NR - avg) ^ 2 > 0.005 ^ 2 || (r / NR - ref) ^ 2 > 0.005 ^ 2) { print a / NR, avg, r / NR, ref; exit 1 } }'
}

@test "expert-parallel dispatch/combine returns the exact weighted expert sum" {
    run $MPIRUN -np 4 "$DS_BIN/ds-bench-a2a" --mode ep --tokens 64 --hidden 32 --experts 16 --topk 4 \
        --node-limit 2 -n 2 -w 1 --json
    [ "$status" -eq 0 ]
    [ "$(printf '%s\n' "$output" | grep -c '"wrong":0')" -eq 4 ]
    printf '%s\n' "$output" | grep -q '"op":"dispatch","impl":"ours"'
}

@test "node limit bounds the destinations per token" {
    run $MPIRUN -np 4 "$DS_BIN/ds-bench-a2a" --mode ep --tokens 128 --hidden 8 --experts 16 --topk 4 --node-limit 1 \
        --ranks-per-node 1 -n 1 -w 0
    [ "$status" -eq 0 ]
    [[ "$output" == *"destinations per token (after per-rank de-duplication): 1.00"* ]]
    printf '%s\n' "$output" | grep -A1 '^# *op ' | tail -1 | grep -qE '^# +\(us\) +\(GB/s\) +\(GB/s\) +\(us\) +\(GB/s\) +\(GB/s\) *$'
    printf '%s\n' "$output" | grep -qx '# Out of bounds values : 0 OK'
    printf '%s\n' "$output" | grep -qE '^# Avg bus bandwidth    : [0-9.e+-]+ $'
}

# the --two-hop table's data rows: op transport time algbw busbw #wrong inter-node intra-node
two_hop_rows() { printf '%s\n' "$output" | grep -E '^ +(dispatch|combine) '; }
# field F of the row for OP and TRANSPORT
field() { two_hop_rows | awk -v op="$1" -v tr="$2" -v f="$3" '$1 == op && $2 == tr { print $f }'; }

@test "--two-hop: same results, fewer bytes across nodes, next to one hop and MPI_Alltoallv (4 ranks, 2 per node)" {
    run $MPIRUN -np 4 "$DS_BIN/ds-bench-a2a" --two-hop --ranks-per-node 2 --tokens 96 --hidden 16 --experts 16 --topk 4 \
        -n 2 -w 1
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"4 ranks on 2 node(s) of 2, 96 tokens/rank"* ]]
    [ "$(two_hop_rows | wc -l)" -eq 6 ]
    two_hop_rows | awk '$6 != 0 { exit 1 }'                     # combine(dispatch(x)) exact on every path
    printf '%s\n' "$output" | grep -qx '# Out of bounds values : 0 OK'
    printf '%s\n' "$output" | grep -A1 '^# *op  *transport' | tail -1 |
        grep -qE '^# +\(us\) +\(GB/s\) +\(GB/s\) +\(B, all ranks\) +\(B, all ranks\) *$'
    for op in dispatch combine; do
        # MPI_Alltoallv moves the one-hop rows; two hops send fewer across nodes and more inside them
        [ "$(field $op one-hop 7) $(field $op one-hop 8)" = "$(field $op mpi 7) $(field $op mpi 8)" ]
        [ "$(field $op two-hop 7)" -lt "$(field $op one-hop 7)" ]
        [ "$(field $op two-hop 8)" -gt "$(field $op one-hop 8)" ]
    done
    # fp32 rows both ways: a combine sends back what the dispatch sent
    [ "$(field combine two-hop 7)" -eq "$(field dispatch two-hop 7)" ]
    d1=$(field dispatch one-hop 7) d2=$(field dispatch two-hop 7)
    printf '%s\n' "$output" | grep -qx "# inter-node bytes, two-hop / one-hop: $(awk -v a=$d2 -v b=$d1 'BEGIN { printf "%.3f", a / b }') ($d2 / $d1 per dispatch, the same per combine)"
    # the summary's "Avg bus bandwidth" is the two-hop rows' mean (the implementation under test)
    avg=$(printf '%s\n' "$output" | awk -F': ' '/^# Avg bus bandwidth    : / { print $2 + 0 }')
    two_hop_rows | awk -v avg="$avg" '$2 == "two-hop" { s += $5 } END { if ((s / 2 - avg) ^ 2 > 0.005 ^ 2) exit 1 }'
}

@test "--two-hop with one rank per node is the one-hop exchange; node-limited routing reaches at most M nodes" {
    run $MPIRUN -np 4 "$DS_BIN/ds-bench-a2a" --two-hop --ranks-per-node 1 --tokens 64 --hidden 8 --experts 16 --topk 4 \
        --node-limit 2 -n 1 -w 0
    echo "$output"
    [ "$status" -eq 0 ]
    for op in dispatch combine; do
        [ "$(field $op two-hop 7)" -eq "$(field $op one-hop 7)" ]
        [ "$(field $op two-hop 8)" -eq 0 ] && [ "$(field $op one-hop 8)" -eq 0 ]
    done
    printf '%s\n' "$output" | grep -E '^# destination ranks per token: [0-9.]+, destination nodes per token: ' |
        awk '{ r = $6 + 0; n = $NF + 0; if (r != n || n > 2 || n < 1) exit 1 }'
    # one node of 2 ranks per token: two hops cross once per token, one hop once per rank
    run $MPIRUN -np 4 "$DS_BIN/ds-bench-a2a" --two-hop --ranks-per-node 2 --tokens 64 --hidden 8 --experts 16 --topk 4 \
        --node-limit 1 -n 1 -w 0 --json
    [ "$status" -eq 0 ]
    inter() { printf '%s\n' "$output" | grep "\"op\":\"$1\",\"impl\":\"$2\"" | sed 's/.*"inter_node_bytes":\([0-9]*\).*/\1/'; }
    [ "$(inter dispatch two-hop)" -lt "$(inter dispatch ours)" ]
    [ "$(inter dispatch ours)" -eq "$(inter dispatch mpi)" ]
    [ "$(printf '%s\n' "$output" | grep -c '"wrong":0')" -eq 6 ]
}

@test "--two-hop refusals: a node size that does not divide the ranks, an all-to-all sweep" {
    run --separate-stderr $MPIRUN -np 4 "$DS_BIN/ds-bench-a2a" --two-hop --ranks-per-node 3 --experts 16 --topk 4 -n 1 -w 0
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-bench-a2a: error: --ranks-per-node 3 does not divide the 4 ranks"* ]]
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --mode alltoall --two-hop
    [ "$status" -eq 2 ]
    [ "${stderr%%$'\n'*}" = "ds-bench-a2a: error: --two-hop measures the expert-parallel exchange: not with --mode alltoall" ]
}

@test "a single process runs without mpirun" {
    run "$DS_BIN/ds-bench-a2a" -b 4K -e 4K -n 2 -w 0
    [ "$status" -eq 0 ]
    [[ "$output" == *"1 ranks on 1 node(s)"* ]]
}

@test "experts that do not divide over the ranks: clean error, exit 1" {
    run --separate-stderr $MPIRUN -np 3 "$DS_BIN/ds-bench-a2a" --mode ep --experts 16 -n 1 -w 0
    [ "$status" -ne 0 ]
    [[ "$stderr" == *"ds-bench-a2a: error: --experts 16 is not a multiple of 3 ranks"* ]]
}

@test "unavailable backends are refused plainly" {
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --backend verbs
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-bench-a2a: error: backend 'verbs' is not available in this build: --backend"* ]]
}

@test "--backend nccl: one line saying why it cannot run here, once for all ranks" {
    if nccl_build; then # NCCL is loaded at run time: a library that is not there is named
        export DS_NCCL_LIB=/no/such/dir/libnccl.so.2
        run --separate-stderr $MPIRUN -x DS_NCCL_LIB -np 2 "$DS_BIN/ds-bench-a2a" --backend nccl -n 1 -w 0
        [ "$status" -eq 1 ]
        [ "$(printf '%s\n' "$stderr" | grep -c 'error:')" -eq 1 ]
        [[ "$stderr" == "[$(hostname):0] ds-bench-a2a: error: nccl: cannot load /no/such/dir/libnccl.so.2 (/no/such/dir/libnccl.so.2: cannot open shared object file: No such file or directory); set DS_NCCL_LIB or LD_LIBRARY_PATH"* ]]
    else
        run --separate-stderr "$DS_BIN/ds-bench-a2a" --backend nccl
        [ "$status" -eq 2 ]
        [ "${stderr%%$'\n'*}" = "ds-bench-a2a: error: --backend nccl: this build has no NCCL (built without CUDA, or make found no nccl.h; see docs/DESIGN.md \"NCCL\")" ]
    fi
}

@test "--backend nccl on a machine without a GPU: the GPU is named as the reason" {
    nccl_build || skip "this build has no NCCL (the test above covers it)"
    ! nvidia-smi -L >/dev/null 2>&1 || skip "a GPU is present: tests/gpu/test_nccl.sh runs the exchange"
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --backend nccl -n 1 -w 0
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-bench-a2a: error: nccl: no usable GPU ("*"): rank 0" ]]
    [ -z "$output" ]
}

@test "--backend nccl measures the sweep only: --mode ep is a usage error" {
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --backend nccl --mode ep
    [ "$status" -eq 2 ]
    [ "${stderr%%$'\n'*}" = "ds-bench-a2a: error: --backend nccl measures the all-to-all sweep: the routed exchange (--mode ep) runs over MPI only" ]
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --backend gloo
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"gloo"*"mpi|nccl|verbs"* ]]
}

@test "usage errors exit 2" {
    run --separate-stderr "$DS_BIN/ds-bench-a2a" -b 8M -e 1M
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-bench-a2a: error: -b is larger than -e"* ]]
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --minbytes 8M -e 1M
    [[ "$stderr" == "ds-bench-a2a: error: --minbytes is larger than -e"* ]]
    run --separate-stderr "$DS_BIN/ds-bench-a2a" -b lots
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-bench-a2a: error: -b: not a byte size: 'lots'"* ]]
    run --separate-stderr "$DS_BIN/ds-bench-a2a" --minbytes lots
    [[ "$stderr" == "ds-bench-a2a: error: --minbytes: not a byte size: 'lots'"* ]]
}
