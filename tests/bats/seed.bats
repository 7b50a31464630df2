#!/usr/bin/env bats
# Seeds (issue 17): every tool that takes --seed accepts the whole unsigned 64-bit range and refuses a
# sign; without --seed a run draws a random seed, prints it and records it (configuration record,
# trainer_state.json), --seed with that value repeats the run, and --resume continues it.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

MAX=18446744073709551615

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
    export CFG="$DS_ROOT/share/configs/tiny.json"
    "$DS_PY" "$DS_ROOT/tests/ref/generate_ckpt.py" --config "$CFG" --out "$T/ck" --tokenizer "$T/tok.json" >/dev/null
}

pretrain() {
    "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --config "$CFG" --data "$T/shards" --steps 3 --batch 2 --seq-len 16 \
        --log-every 1 "$@"
}
config_seed() { jq -r 'select(.config) | .config.seed' "$1"; }
state_seed() { jq -r .rng.seed "$1/trainer_state.json"; }

@test "every tool that takes --seed: 2^64-1 is a seed, -1 and 2^64 are usage errors naming --seed" {
    for t in ds-pretrain ds-extend-ctx ds-sft ds-rl ds-generate ds-bench-a2a; do
        "$DS_BIN/$t" --help | grep -q -- '--seed S' || { echo "$t: no --seed"; false; }
        for bad in -1 18446744073709551616 +3 1e3; do
            run --separate-stderr "$DS_BIN/$t" --seed "$bad"
            [ "$status" -eq 2 ] || { echo "$t --seed $bad: status $status"; false; }
            [ "${stderr_lines[0]}" = "$t: error: --seed: not an integer in [0, 18446744073709551615]: '$bad'" ] ||
                { echo "$t: ${stderr_lines[0]}"; false; }
        done
        # the largest seed passes the parser: what follows is the tool's own complaint, not --seed's
        run --separate-stderr "$DS_BIN/$t" --seed $MAX --no-such-option
        [[ "${stderr_lines[0]}" == "$t: error: unknown option '--no-such-option'" ]] || { echo "$t: ${stderr_lines[0]}"; false; }
    done
}

@test "--seed 2^64-1 trains and is recorded exactly (configuration record and trainer state)" {
    run --separate-stderr pretrain -o "$BATS_TEST_TMPDIR/ck" --metrics "$BATS_TEST_TMPDIR/m.jsonl" --seed $MAX
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    [[ "$stderr" == *"seed    $MAX"* ]]
    [ "$(config_seed "$BATS_TEST_TMPDIR/m.jsonl")" = "$MAX" ]
    [ "$(state_seed "$BATS_TEST_TMPDIR/ck")" = "$MAX" ]
}

@test "no --seed: a random seed, printed and recorded; --seed with it repeats the run; --resume continues it" {
    local d=$BATS_TEST_TMPDIR
    run --separate-stderr pretrain -o "$d/a" --metrics "$d/a.jsonl"
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    s=$(config_seed "$d/a.jsonl")
    [[ "$s" =~ ^[0-9]+$ ]]
    [[ "$stderr" == *"seed    $s (random: --seed repeats the run)"* ]]
    [ "$(state_seed "$d/a")" = "$s" ]
    pretrain -o "$d/b" --metrics "$d/b.jsonl" -q
    [ "$(config_seed "$d/b.jsonl")" != "$s" ] # drawn afresh
    pretrain -o "$d/c" --metrics "$d/c.jsonl" --seed "$s" -q
    cmp "$d/a/model.safetensors" "$d/c/model.safetensors"
    diff <(numbers "$d/a.jsonl") <(numbers "$d/c.jsonl")
    # --resume without --seed: the seed the checkpoint records, not a new one
    run --separate-stderr pretrain -o "$d/a" --metrics "$d/a.jsonl" --steps 5 --resume "$d/a"
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    [[ "$stderr" == *"seed    $s (the resumed run's)"* ]]
    [ "$(state_seed "$d/a")" = "$s" ]
    # and a different --seed is refused, naming both
    run --separate-stderr pretrain -o "$d/a" --steps 6 --resume "$d/a" --seed 5
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"seed $s, this run has --seed 5"* ]]
}

@test "data parallel without --seed: every rank takes rank 0's seed (the run equals one process with it)" {
    mpi_env
    local d=$BATS_TEST_TMPDIR
    run --separate-stderr mpirun --oversubscribe -np 2 "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --config "$CFG" \
        --data "$T/shards" --steps 3 --batch 2 --micro-batch 1 --seq-len 16 -o "$d/two" --metrics "$d/two.jsonl"
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    s=$(config_seed "$d/two.jsonl")
    [ "$(printf '%s\n' "$stderr" | grep -c "seed    $s (random")" -eq 1 ] # printed once, by rank 0
    pretrain -o "$d/one" --metrics "$d/one.jsonl" --micro-batch 1 --seed "$s" -q
    "$DS_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
steps = lambda p: [r for r in map(json.loads, open(p)) if "step" in r]
one, two = steps(d + "/one.jsonl"), steps(d + "/two.jsonl")
assert len(one) == len(two) == 3
for a, b in zip(one, two):
    assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a["loss"], b["loss"])
PY
}

@test "ds-generate: no --seed draws one, prints and records it; --seed with it repeats the samples" {
    run --separate-stderr "$DS_BIN/ds-generate" -m "$T/ck" --prompt "The license" --max-new 12 --temperature 1.5 \
        --metrics "$BATS_TEST_TMPDIR/m.jsonl" --jsonl
    [ "$status" -eq 0 ] || { echo "$stderr"; false; }
    s=$(jq -r 'select(.record == "config") | .seed' "$BATS_TEST_TMPDIR/m.jsonl")
    [[ "$s" =~ ^[0-9]+$ ]]
    [[ "$stderr" == *"seed    $s (random: --seed repeats the draws)"* ]]
    first=$(printf '%s\n' "$output" | jq -c .tokens)
    again=$("$DS_BIN/ds-generate" -m "$T/ck" --prompt "The license" --max-new 12 --temperature 1.5 --jsonl -q --seed "$s" | jq -c .tokens)
    [ "$first" = "$again" ]
}
