#!/usr/bin/env bats
# make install: programs, library, headers and share/ land under PREFIX, and a program written
# against the installed headers builds and runs.

setup() {
    [ -z "${DS_SANITIZE:-}" ] || skip "installs the release build"
}

@test "make install PREFIX=... installs a usable toolkit" {
    p=$BATS_TEST_TMPDIR/prefix
    run make -s -C "$DS_ROOT" install PREFIX="$p"
    [ "$status" -eq 0 ]
    for t in ds-tokenize ds-pretrain ds-extend-ctx ds-sft ds-rl ds-quantize ds-generate ds-bench-a2a; do
        [ -x "$p/bin/$t" ] || { echo "missing $t"; false; }
    done
    [ -f "$p/lib/libds.a" ] && [ -f "$p/include/ds/model/model.h" ] && [ -f "$p/share/ds/configs/tiny.json" ]
    run "$p/bin/ds-generate" --version
    [ "$status" -eq 0 ]
    cat >"$BATS_TEST_TMPDIR/counts.c" <<'C'
#include <stdio.h>
#include "io/config.h"
int main(int argc, char **argv) {
    ds_config c;
    if (ds_config_load_file(&c, argv[1])) return 1;
    ds_param_counts n;
    ds_config_counts(&c, &n);
    printf("%lld\n", (long long)n.total);
    ds_config_free(&c);
    return 0;
}
C
    libs="$p/lib/libds.a"
    [ -f "$p/lib/libds_cuda.a" ] && libs="$libs $p/lib/libds_cuda.a -L/usr/local/cuda/lib64 -lcublasLt -lcublas -lcudart -lstdc++"
    run cc -std=c11 -fopenmp -I"$p/include/ds" "$BATS_TEST_TMPDIR/counts.c" -Wl,--as-needed $libs \
        $(pkg-config --libs openblas libzstd libpcre2-8 jansson ompi-c) -lm -o "$BATS_TEST_TMPDIR/counts"
    echo "$output"
    [ "$status" -eq 0 ]
    run "$BATS_TEST_TMPDIR/counts" "$p/share/ds/configs/deepseek-v3-671b.json"
    [ "$status" -eq 0 ]
    [ "$output" = "671026419200" ]
}
