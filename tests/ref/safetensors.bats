#!/usr/bin/env bats
# io/safetensors against Python's safetensors package and huggingface_hub's sharded writer (what
# transformers uses): their files load here byte for byte (from a file, a pipe, and shards), and
# theirs load ours, with our float32 -> BF16/F16 conversion equal to torch's.

setup() {
    for u in $DS_UNITS; do case $u in */test_safetensors) UNIT=$DS_ROOT/$u ;; esac; done
    [ -x "$UNIT" ] || skip "test_safetensors not built"
    REF="$DS_PY $DS_ROOT/tests/ref/st_ref.py"
    D=$BATS_TEST_TMPDIR
}

dump() { # mode in out
    DS_ST_DUMP="$1:$2:$3" "$UNIT" reference_dump >"$D/tap" || { cat "$D/tap"; false; }
}

@test "every dtype and the metadata written by Python load byte-exact (mmap)" {
    $REF write-py "$D"
    dump file "$D/all.safetensors" "$D/ours.json"
    $REF check "$D/expected-all.json" "$D/ours.json"
}

@test "a file written by safetensors.numpy loads byte-exact" {
    $REF write-py "$D"
    dump file "$D/np.safetensors" "$D/ours.json"
    $REF check "$D/expected-np.json" "$D/ours.json"
}

@test "a Python-written file streams through a pipe without seeking" {
    $REF write-py "$D"
    cat "$D/all.safetensors" | DS_ST_DUMP="stream:-:$D/ours.json" "$UNIT" reference_dump >"$D/tap"
    $REF check "$D/expected-all.json" "$D/ours.json"
}

@test "shards written by huggingface_hub (index + 4 files) load through the index" {
    $REF write-py "$D"
    [ "$(ls "$D"/shards/model-0000*-of-00004.safetensors | wc -l)" -eq 4 ]
    dump set "$D/shards" "$D/ours.json"
    $REF check "$D/expected-shards.json" "$D/ours.json"
}

@test "Python loads our single file: bytes, metadata, float32 conversions" {
    $REF spec "$D/spec.json"
    DS_ST_WRITE="$D/spec.json:$D/ours.safetensors" "$UNIT" reference_write >"$D/tap" || { cat "$D/tap"; false; }
    $REF verify "$D/spec.json" "$D/ours.safetensors"
}

@test "Python loads our shards through our index" {
    $REF spec "$D/spec.json" 1500
    mkdir "$D/out"
    DS_ST_WRITE="$D/spec.json:$D/out/model.safetensors" "$UNIT" reference_write >"$D/tap" || { cat "$D/tap"; false; }
    [ -f "$D/out/model.safetensors.index.json" ]
    [ ! -e "$D/out/model.safetensors" ]
    run $REF verify "$D/spec.json" "$D/out/model.safetensors.index.json"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"in 4 file(s): ok" ]]
}
