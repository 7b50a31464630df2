# Sourced by bench scripts: build_bench SRC OUT links the bench driver SRC against this tree's libds.a
# (BUILD: build/rel-cuda, else build/rel) into OUT.
build_bench() {
    local build=${BUILD:-$ROOT/build/rel-cuda}
    [ -f "$build/libds.a" ] || build=$ROOT/build/rel
    # shellcheck disable=SC2046
    cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -I"$ROOT/lib" "$1" "$build/libds.a" \
        $(pkg-config --cflags --libs openblas jansson libzstd libpcre2-8 libpng freetype2) -lm -o "$2"
}
