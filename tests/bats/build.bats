#!/usr/bin/env bats
# The first build on a fresh machine. There, pkg-config (and the libraries it describes) only exist once
# the deps step (.ci/deps.sh) has run, so flags computed while the Makefile is parsed come out empty and
# the first compile fails (lib/dist/a2a.c: mpi.h not found). These tests simulate that machine without
# uninstalling anything: a copy of the tree whose .ci/deps.sh is a stand-in that only creates a marker,
# and a pkg-config on PATH that answers nothing until the marker exists and then defers to the real one.

setup() {
    # a user's first plain `make`: under `make SANITIZE=1 test` the outer make's variables and -j would
    # reach these makes through MAKEFLAGS (and build into build/san)
    unset MAKEFLAGS MFLAGS MAKELEVEL SANITIZE
    real_pkg_config=$(command -v pkg-config) || skip "pkg-config not installed"
    want_cflags=$("$real_pkg_config" --cflags ompi-c)
    [ -n "$want_cflags" ] || skip "pkg-config gives no include flags for ompi-c here"
    want_libs=$("$real_pkg_config" --libs ompi-c)
    export FAKE_DEPS_RAN="$BATS_TEST_TMPDIR/deps-ran"
    fake="$BATS_TEST_TMPDIR/fakebin"
    mkdir -p "$fake"
    cat >"$fake/pkg-config" <<EOF
#!/bin/sh
# not installed yet: what make sees on a fresh machine before the deps step
[ -e "\$FAKE_DEPS_RAN" ] || { echo "pkg-config: not found" >&2; exit 127; }
exec "$real_pkg_config" "\$@"
EOF
    chmod +x "$fake/pkg-config"
    export PATH="$fake:$PATH"
}

# A fresh clone: the sources and the Makefile, no build/ or bin/, and a deps step that "installs" by
# creating the marker.
fresh_tree() { # dir
    mkdir -p "$1"
    (cd "$DS_ROOT" && cp -r Makefile .ci lib tools tests kernels bench share "$1/")
    cat >"$1/.ci/deps.sh" <<'EOF'
#!/bin/sh
echo "deps: (stand-in) installing" >&2
touch "$FAKE_DEPS_RAN"
EOF
}

# Every word after the first is a word of the command line given first.
has_words() { # line word...
    local line=" $1 " w
    shift
    for w in "$@"; do [[ "$line" == *" $w "* ]] || return 1; done
}

@test "a first 'make all' compiles with pkg-config's flags from after the deps step, and links with its libraries" {
    t="$BATS_TEST_TMPDIR/tree"
    fresh_tree "$t"
    # A compiler stand-in keeps this fast: it records every command line and really compiles only
    # lib/dist/a2a.c (the file that needs MPI's include path); other outputs are empty files.
    real_cc=$(command -v gcc)
    cat >"$BATS_TEST_TMPDIR/cc" <<EOF
#!/bin/bash
printf '%s\n' "\$*" >>"$BATS_TEST_TMPDIR/cc.log"
for a in "\$@"; do [ "\$a" = lib/dist/a2a.c ] && exec "$real_cc" "\$@"; done
out=""; prev=""
for a in "\$@"; do [ "\$prev" = -o ] && out=\$a; prev=\$a; done
[ -n "\$out" ] && : >"\$out"
EOF
    chmod +x "$BATS_TEST_TMPDIR/cc"
    run make -C "$t" -j2 CUDA=0 CC="$BATS_TEST_TMPDIR/cc" all
    echo "$output" | grep -v '^\S*/cc ' | tail -20
    [ "$status" -eq 0 ]
    [[ "$output" == *"deps: (stand-in) installing"* ]]
    readelf -h "$t/build/rel/lib/dist/a2a.o" | grep -q 'Type: *REL '
    # every compile and every link carries pkg-config's answers
    n_compile=0 n_link=0
    while IFS= read -r line; do
        if [[ " $line " == *" -c "* ]]; then
            has_words "$line" $want_cflags || { echo "compile without '$want_cflags': $line"; false; }
            n_compile=$((n_compile + 1))
        else
            has_words "$line" $want_libs || { echo "link without '$want_libs': $line"; false; }
            n_link=$((n_link + 1))
        fi
    done <"$BATS_TEST_TMPDIR/cc.log"
    echo "$n_compile compiles, $n_link links"
    [ "$n_compile" -eq $(( $(ls "$t"/lib/*/*.c "$t"/tools/ds-*.c | wc -l) )) ]
    [ "$n_link" -eq "$(ls "$t"/tools/ds-*.c | wc -l)" ]
}

@test "every entry target, as the very first command, gets pkg-config's flags from after the deps step" {
    # make -n prints the commands without running them, except those that remake the Makefile's own
    # inputs: the flags it shows are the ones a real run would use.
    for goal in all test test-quick demo install fuzz test-gpu objects; do
        t="$BATS_TEST_TMPDIR/tree-$goal"
        rm -f "$FAKE_DEPS_RAN"
        fresh_tree "$t"
        run make -C "$t" -n "$goal"
        [ "$status" -eq 0 ] || { echo "make -n $goal: $output" | tail -5; false; }
        line=$(grep -E '(^| )lib/dist/a2a\.c( |$)' <<<"$output" | head -1)
        [ -n "$line" ] || { echo "make -n $goal compiles no lib/dist/a2a.c"; false; }
        has_words "$line" $want_cflags || { echo "make -n $goal: a2a.c without '$want_cflags': $line"; false; }
    done
}

@test "when pkg-config still cannot answer after the deps step, make stops with that before compiling" {
    t="$BATS_TEST_TMPDIR/tree"
    fresh_tree "$t"
    echo 'echo "deps: (stand-in) installing nothing" >&2' >"$t/.ci/deps.sh"
    run make -C "$t" CUDA=0 all
    echo "$output"
    [ "$status" -ne 0 ]
    [[ "$output" == *"make: pkg-config cannot resolve: openblas "* ]]
    [[ "$output" != *" -c lib/"* ]]
    [ ! -e "$t/build/config.mk" ]
}
