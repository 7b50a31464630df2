#!/usr/bin/env bats
# The documentation runs: every command of README.md's pipeline block (```sh after "## The tools in one
# pipeline") and every command of every program's --help "Example:" section (ds-tokenize's commands
# too), extracted from the files and programs themselves, so a new or changed example is run without
# editing this test. Commands run with bash in a scratch directory holding small data made here (corpus/,
# corpus.txt, f.txt, heldout.txt, and for the examples long-chats.jsonl, prompts.jsonl, p.jsonl,
# heldout.jsonl, score.py; share -> the repository's share/) and the programs first on PATH; the
# README's pipeline makes its chat.jsonl and tasks.jsonl itself.
#
# What the test changes, and only this, so that the commands finish in seconds on two cores (each
# change is printed with the command): run lengths and sizes, by sed on the command text:
#   --steps N -> 2, --epochs N -> 1, --batch N -> 2, --seq-len N -> 64, --group N -> 2, --max-new N -> 4,
#   --eval-samples N -> 1, --save-every N -> 1, awk's -v n=N -> 12, ds-bench-a2a's -e SIZE -> 64K,
#   --tokens N -> 64, --hidden N -> 256, mpirun -np N -> mpirun --oversubscribe -np 2.
# The README's pipeline runs first, from its first line to its last, and leaves its checkpoints
# (ckpt/base, ckpt/long, ckpt/sft, ckpt/rl, ckpt/fp8). Each program's examples then run in order in a
# fresh copy of that directory, where paths the examples write with -o are absent.

bats_require_minimum_version 1.5.0
load mpi_helpers

setup_file() {
    mpi_env # the examples' mpirun: as root, on loopback, no leak reports from Open MPI under SANITIZE
    export OMP_NUM_THREADS=1
    export W="$BATS_FILE_TMPDIR/w"
    mkdir -p "$W/corpus"
    for f in GPL-3 Apache-2.0 MPL-2.0 LGPL-2.1; do cp "/usr/share/common-licenses/$f" "$W/corpus/$f.txt"; done
    cat "$W"/corpus/*.txt >"$W/corpus.txt"
    head -c 2000 "$W/corpus/GPL-3.txt" >"$W/f.txt"
    local tasks="$DS_ROOT/share/demo/tasks.awk"
    awk -f "$tasks" -v kind=sft -v n=8 -v seed=2 >"$W/long-chats.jsonl"
    awk -f "$tasks" -v kind=prompts -v n=8 -v seed=4 >"$W/p.jsonl"
    awk -f "$tasks" -v kind=prompts -v n=4 -v seed=5 >"$W/prompts.jsonl"
    awk -f "$tasks" -v kind=prompts -v n=4 -v seed=6 -v set=heldout >"$W/heldout.jsonl"
    sed -n '10,14p' "$W/corpus/Apache-2.0.txt" >"$W/heldout.txt"
    # a reward program (formats.md "Reward program"): one number per JSON line in
    printf '%s\n' 'import sys' 'for line in sys.stdin:' '    print(1.0 if line.strip() else 0.0)' >"$W/score.py"
    ln -s "$DS_ROOT/share" "$W/share"
}

# One command per line: backslash-continued lines joined.
join_lines() { sed -e ':a' -e '/\\$/N; s/\\\n//; ta'; }

# The sizes named in the header, and nothing else.
shrink() {
    sed -E -e 's/--steps [0-9]+/--steps 2/g; s/--epochs [0-9]+/--epochs 1/g; s/--batch [0-9]+/--batch 2/g' \
        -e 's/--seq-len [0-9]+/--seq-len 64/g; s/--group [0-9]+/--group 2/g; s/--max-new [0-9]+/--max-new 4/g' \
        -e 's/--eval-samples [0-9]+/--eval-samples 1/g; s/--save-every [0-9]+/--save-every 1/g; s/-v n=[0-9]+/-v n=12/g' \
        -e 's/ -e [0-9]+[KMG]?/ -e 64K/g; s/--tokens [0-9]+/--tokens 64/g; s/--hidden [0-9]+/--hidden 256/g' \
        -e 's/mpirun -np [0-9]+/mpirun --oversubscribe -np 2/g'
}

# Run the commands of file $1 in directory $2, in order; stop at the first failure, showing it.
run_commands() {
    local n=0 cmd small
    while IFS= read -r cmd; do
        [ -n "${cmd// /}" ] || continue
        small=$(printf '%s\n' "$cmd" | shrink)
        n=$((n + 1))
        echo "\$ $cmd"
        [ "$small" = "$cmd" ] || echo "  (run as: $small)"
        local t0=$SECONDS
        (cd "$2" && PATH="$DS_BIN:$PATH" timeout 300 bash -o pipefail -c "$small") >"$2.out" 2>&1 || {
            echo "  failed:"; sed 's/^/  | /' "$2.out" | tail -20; return 1; }
        echo "  ($((SECONDS - t0)) s)"
    done <"$1"
    echo "$n commands"
    [ "$n" -gt 0 ]
}

@test "README.md: the pipeline runs as written (sizes shrunk as the header says)" {
    awk '/^## The tools in one pipeline/ {s = 1} s && /^```sh$/ {b = 1; next} b && /^```$/ {exit} b' \
        "$DS_ROOT/README.md" | join_lines >"$BATS_FILE_TMPDIR/readme.sh"
    grep -q '^ds-tokenize train' "$BATS_FILE_TMPDIR/readme.sh"
    run_commands "$BATS_FILE_TMPDIR/readme.sh" "$W"
    # the pipeline embeds the tokenizer by itself: ds-tokenize put it beside the shards
    cmp "$W/tok.json" "$W/shards/tokenizer.json"
    for c in base long sft rl fp8; do [ -f "$W/ckpt/$c/tokenizer.json" ] || { echo "ckpt/$c: no tokenizer"; false; }; done
}

@test "README.md: the serving example answers (on a free port instead of 8000)" {
    [ -d "$W/ckpt/sft" ] || skip "the README pipeline did not run"
    awk '/^## Serving the OpenAI API/ {s = 1} s && /^```sh$/ {b = 1; next} b && /^```$/ {exit} b' "$DS_ROOT/README.md" \
        >"$BATS_FILE_TMPDIR/serve.sh"
    grep -q -- '--serve 127.0.0.1:8000' "$BATS_FILE_TMPDIR/serve.sh"
    local port
    port=$("$DS_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    sed -i "s/:8000/:$port/g" "$BATS_FILE_TMPDIR/serve.sh"
    cat "$BATS_FILE_TMPDIR/serve.sh"
    # one script (the server runs in its background); stdout: the URL line, then curl's answer
    run --separate-stderr bash -e -o pipefail -c "cd '$W' && PATH='$DS_BIN:$PATH' && source '$BATS_FILE_TMPDIR/serve.sh' && wait" 3>&-
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "http://127.0.0.1:$port" ]]
    grep '^{' <<<"$output" | jq -e '.object == "chat.completion" and .model == "sft" and
        (.choices[0].message.content | type) == "string" and .usage.completion_tokens > 0'
}

@test "every program's --help examples run as written (sizes shrunk as the header says)" {
    [ -d "$W/ckpt/fp8" ] || skip "the README pipeline did not run"
    local progs=() failed=() p sub n=0
    for p in "$DS_BIN"/ds-*; do
        progs+=("$(basename "$p")")
        # commands of a multi-command program: "Usage: ds-x a|b|c ..."
        for sub in $("$p" --help | sed -nE "s/^Usage: $(basename "$p") ([a-z]+(\|[a-z]+)+) .*/\1/p" | tr '|' ' '); do
            progs+=("$(basename "$p") $sub")
        done
    done
    for p in "${progs[@]}"; do
        $DS_BIN/$p --help | awk '/^Example/ {e = 1; next} e && /^[^ ]/ {exit} e' | sed 's/^  //' | join_lines \
            >"$BATS_FILE_TMPDIR/ex.sh"
        [ -s "$BATS_FILE_TMPDIR/ex.sh" ] || { echo "$p: no example"; false; }
        local d="$BATS_FILE_TMPDIR/ex-${p// /-}"
        cp -al "$W" "$d"
        # what the examples write with -o starts absent
        for o in $(grep -oE -- '-o [^ ]+' "$BATS_FILE_TMPDIR/ex.sh" | cut -c4- | grep -v '^-$'); do rm -rf "${d:?}/${o%/}"; done
        echo "== $p"
        run_commands "$BATS_FILE_TMPDIR/ex.sh" "$d" || failed+=("$p")
        n=$((n + 1))
    done
    echo "$n programs; failed: ${failed[*]:-none}"
    [ "${#failed[@]}" -eq 0 ]
}
