# train_helpers.bash — what the training tools' suites share (ds-pretrain, ds-sft, ds-extend-ctx, ds-rl,
# and tests/ref/sft.bats): a tiny base checkpoint with its tokenizer, run records for comparing runs,
# and the stop-with-SIGTERM-then-resume check. Load with `load train_helpers`.

# A tokenizer trained on the GPL text and its shards: $1/tok.json, $1/shards/.
tiny_data() {
    cat /usr/share/common-licenses/GPL-3 >"$1/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 400 -o "$1/tok.json" "$1/prose.txt"
    "$DS_BIN/ds-tokenize" encode -q -t "$1/tok.json" -o "$1/shards/" "$1/prose.txt"
}

# The arithmetic task of share/demo/tasks.awk for ds-rl: $1/sft.jsonl ($2 demonstrations), $1/prompts.jsonl
# (64 prompts), $1/eval.jsonl ($3 held-out ones), and a 300-token tokenizer of the demonstrations with
# their shards ($1/tok.json, $1/shards/).
rl_task_data() {
    awk -f "$DS_ROOT/share/demo/tasks.awk" -v kind=sft -v n="$2" -v seed=1 >"$1/sft.jsonl"
    awk -f "$DS_ROOT/share/demo/tasks.awk" -v kind=prompts -v n=64 -v seed=2 >"$1/prompts.jsonl"
    awk -f "$DS_ROOT/share/demo/tasks.awk" -v kind=prompts -v n="$3" -v seed=3 >"$1/eval.jsonl"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 300 -o "$1/tok.json" "$1/sft.jsonl"
    "$DS_BIN/ds-tokenize" encode -q -t "$1/tok.json" -o "$1/shards/" "$1/sft.jsonl"
}

# tiny_data, and a tiny.json checkpoint pretrained for a few steps with the tokenizer embedded:
# $1/base. Further arguments go to ds-pretrain (later options win).
tiny_base() {
    local dir=$1
    shift
    tiny_data "$dir"
    "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --config "$DS_ROOT/share/configs/tiny.json" --data "$dir/shards" \
        --tokenizer "$dir/tok.json" -o "$dir/base" --steps 4 --batch 4 --seq-len 64 --log-every 0 --seed 1 -q "$@"
}

# A setup_file for suites that run every training tool: T=$BATS_FILE_TMPDIR with tiny_base's files, and
# the arithmetic task of share/demo/tasks.awk: $T/chat.jsonl (40 conversations, for ds-sft) and
# $T/prompts.jsonl (8 prompts, for ds-rl).
tiny_setup() {
    export T="$BATS_FILE_TMPDIR"
    tiny_base "$T"
    awk -f "$DS_ROOT/share/demo/tasks.awk" -v kind=sft -v n=40 -v seed=1 >"$T/chat.jsonl"
    awk -f "$DS_ROOT/share/demo/tasks.awk" -v kind=prompts -v n=8 -v seed=2 >"$T/prompts.jsonl"
}

teardown() { # a failed test must not leave a run behind
    [ -f "$BATS_TEST_TMPDIR/pid" ] && kill "$(cat "$BATS_TEST_TMPDIR/pid")" 2>/dev/null || true
}

# Step records of a metrics file without what depends on timing, one per line, for comparing runs.
numbers() { "$DS_PY" -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "step" in r:
        print(json.dumps({k: v for k, v in r.items() if k not in ("ms", "cpu_ms", "tok_s", "mfu", "tokens_per_s", "eval/seconds")
                          and not k.startswith("timing/") and not k.startswith("generate/")}, sort_keys=True))
' "$1"; }

# interrupt_and_resume KEY N PROGRAM ARGS...: run PROGRAM ARGS to the end into $BATS_TEST_TMPDIR/whole;
# run it again into .../part and send SIGTERM once its metrics hold N records with "KEY"; it must
# save and exit 143; --resume must then finish it with the whole run's weights, optimizer state and
# step records, bit for bit. Both runs have --seed 1 unless ARGS give one; --resume is not given it
# (unless ARGS do): it continues with the seed the checkpoint records.
interrupt_and_resume() {
    local key=$1 n_min=$2 d=$BATS_TEST_TMPDIR n pid
    shift 2
    "$1" --seed 1 "${@:2}" -o "$d/whole" --metrics "$d/whole.jsonl" -q
    "$1" --seed 1 "${@:2}" -o "$d/part" --metrics "$d/part.jsonl" 2>"$d/err" &
    pid=$!
    echo "$pid" >"$d/pid"
    for _ in $(seq 3000); do
        n=$(grep -c "\"$key\"" "$d/part.jsonl" 2>/dev/null || true)
        [ "${n:-0}" -ge "$n_min" ] && break
        sleep 0.01
    done
    kill -TERM "$pid"
    status=0
    wait "$pid" || status=$?
    cat "$d/err"
    [ "$status" -eq 143 ]
    grep -q "signal 15: saving at step" "$d/err"
    grep -q "saved step" "$d/err"
    run "$@" -o "$d/part" --metrics "$d/part.jsonl" --resume "$d/part"
    [ "$status" -eq 0 ]
    [[ "$output" == *"resuming at step "* ]]
    printf '%s\n' "$@" | grep -qx -- --seed || [[ "$output" == *"seed    1 (the resumed run's)"* ]]
    cmp "$d/whole/model.safetensors" "$d/part/model.safetensors"
    cmp "$d/whole/optimizer.safetensors" "$d/part/optimizer.safetensors"
    diff <(numbers "$d/whole.jsonl") <(numbers "$d/part.jsonl")
}

# usage_error MSG ARGS...: the suite's train function (ds-pretrain with its fixed options) refuses ARGS for
# one step: exit 2, the one line "ds-pretrain: error: MSG...", no checkpoint written. Needs bats's
# run --separate-stderr (bats_require_minimum_version 1.5.0).
usage_error() {
    local want=$1
    shift
    run --separate-stderr train -o "$BATS_TEST_TMPDIR/ck" --steps 1 "$@"
    echo "$stderr"
    [ "$status" -eq 2 ]
    [ "$(printf '%s\n' "$stderr" | grep -c '^ds-pretrain: error: ')" -eq 1 ]
    [[ "$stderr" == *"ds-pretrain: error: $want"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/ck" ]
}
