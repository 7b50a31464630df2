#!/usr/bin/env bats
# The layering of docs/DEVELOPING.md holds: no module includes a module of its own or a higher layer.

setup() {
    ROOT=${DS_ROOT:-$(cd "$BATS_TEST_DIRNAME/../.." && pwd)}
}

# a copy of the parts the check reads, to break on purpose
copy_tree() {
    T=$BATS_TEST_TMPDIR/tree
    mkdir -p "$T/docs"
    cp -r "$ROOT/lib" "$ROOT/kernels" "$T/"
    cp "$ROOT/docs/DEVELOPING.md" "$T/docs/"
}

@test "every include in lib/ and kernels/ follows the layer table" {
    run "$ROOT/tests/layering.sh" "$ROOT"
    [ "$status" -eq 0 ]
    [ -z "$output" ]
}

@test "the formats layer reaching up into the network is caught (io including model)" {
    copy_tree
    sed -i '0,/#include "io\/safetensors.h"/s//#include "io\/safetensors.h"\n#include "model\/model.h"/' "$T/lib/io/checkpoint.h"
    run "$ROOT/tests/layering.sh" "$T"
    [ "$status" -eq 1 ]
    [[ "$output" == *'lib/io/checkpoint.h:'*': io (layer 1) includes model/model.h: model is layer 4'* ]]
}

@test "a cycle between layers of one rank is caught (ops including dist), and kernels count as ops" {
    copy_tree
    echo '#include "dist/comm.h"' >>"$T/lib/ops/cpu.c"
    echo '#include "train/trainer.h"' >>"$T/kernels/ops_moe.cu"
    run "$ROOT/tests/layering.sh" "$T"
    [ "$status" -eq 1 ]
    [[ "$output" == *'lib/ops/cpu.c:'*': ops (layer 2) includes dist/comm.h: dist is layer 2'* ]]
    [[ "$output" == *'kernels/ops_moe.cu:'*': ops (layer 2) includes train/trainer.h: train is layer 5'* ]]
}

@test "a module missing from the table is reported, and a missing table is an error" {
    copy_tree
    mkdir -p "$T/lib/newmod" && echo '#include "core/err.h"' >"$T/lib/newmod/x.c"
    run "$ROOT/tests/layering.sh" "$T"
    [ "$status" -eq 1 ]
    [[ "$output" == *"lib/newmod/x.c: module 'newmod' is not in the layer table"* ]]
    grep -v '^| *[0-9]' "$ROOT/docs/DEVELOPING.md" >"$T/docs/DEVELOPING.md"
    run "$ROOT/tests/layering.sh" "$T"
    [ "$status" -eq 2 ]
    [[ "$output" == *"no layer table in docs/DEVELOPING.md"* ]]
}
