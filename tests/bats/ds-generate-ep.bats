#!/usr/bin/env bats
# Expert-parallel inference (infer/epinfer.h): mpirun -np N ds-generate --ep N gives one process's
# tokens (greedy and seeded sampling, with MTP speculation) with each rank holding E/N routed experts;
# --record-loads counts every (token, expert) choice; --expert-loads with --redundant-experts places
# replicas of the busiest experts (EPLB) so the busiest rank computes fewer pairs, tokens unchanged.

bats_require_minimum_version 1.5.0
load mpi_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    cat /usr/share/common-licenses/GPL-3 >"$T/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 512 -o "$T/tok.json" "$T/prose.txt"
    $DS_PY "$DS_ROOT/tests/ref/generate_ckpt.py" --config "$DS_ROOT/share/configs/tiny.json" --out "$T/ck" --mtp \
        --tokenizer "$T/tok.json"
    printf 'The license\nYou may convey\n{"prompt": "Each licensee"}\nfree software\nthe GNU\n' >"$T/p.txt"
}

gen() { "$DS_BIN/ds-generate" "$@"; }
epgen() {
    local np="$1"
    shift
    mpi -np "$np" "$DS_BIN/ds-generate" --ep "$np" "$@"
}

# same tokens; log-probabilities within 1e-5 (expert outputs are summed per rank, then over ranks)
same_tokens() {
    cmp <(jq -c .tokens "$1") <(jq -c .tokens "$2")
    paste -d ' ' <(jq -c '.logprobs[]' "$1") <(jq -c '.logprobs[]' "$2") |
        awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > m) m = d } END { exit !(NR > 20 && m < 1e-5) }'
}

@test "--ep 2 and --ep 4: greedy tokens of one process, with and without MTP; the loads per rank add up" {
    gen -m "$T/ck" --max-new 10 --temperature 0 --jsonl -q --batch 3 <"$T/p.txt" >"$T/one"
    run --separate-stderr epgen 2 -m "$T/ck" --max-new 10 --temperature 0 --jsonl --batch 3 <"$T/p.txt"
    [ "$status" -eq 0 ]
    echo "$output" >"$T/two"
    same_tokens "$T/one" "$T/two"
    # every routed choice of the run, on the rank holding the expert: K x tokens through the MoE layer
    local pairs
    pairs=$(jq -s 'map(.prompt_tokens + (.tokens | length) - 1) | add * 2' "$T/one")
    [[ "$stderr" == *"expert load per rank (token-expert pairs computed, 4+0 slots per rank):"*"mean $((pairs / 2)).0,"* ]]
    epgen 4 -m "$T/ck" --max-new 10 --temperature 0 --jsonl -q --batch 3 <"$T/p.txt" >"$T/four"
    same_tokens "$T/one" "$T/four"
    gen -m "$T/ck" --max-new 10 --temperature 0 --jsonl -q --mtp <"$T/p.txt" >"$T/one"
    epgen 2 -m "$T/ck" --max-new 10 --temperature 0 --jsonl -q --mtp <"$T/p.txt" >"$T/two"
    same_tokens "$T/one" "$T/two"
}

@test "seeded sampling with MTP under --ep 2: the tokens of one process" {
    gen -m "$T/ck" --max-new 10 --temperature 1 --top-k 20 --seed 5 --mtp --jsonl -q <"$T/p.txt" >"$T/one"
    epgen 2 -m "$T/ck" --max-new 10 --temperature 1 --top-k 20 --seed 5 --mtp --jsonl -q <"$T/p.txt" >"$T/two"
    same_tokens "$T/one" "$T/two"
}

@test "--record-loads: per MoE layer, each expert's routed tokens; they sum to top-k x the tokens run" {
    gen -m "$T/ck" --max-new 10 --temperature 0 --jsonl -q --record-loads "$T/loads.json" <"$T/p.txt" >"$T/one"
    local pairs
    pairs=$(jq -s 'map(.prompt_tokens + (.tokens | length) - 1) | add * 2' "$T/one")
    jq -e --argjson p "$pairs" '.n_routed_experts == 8 and (.layers | length) == 2 and .layers[0].layer == 1
        and (.layers[0].loads | add) == $p and (.layers[1].loads | add) == 0' "$T/loads.json"
    # the same counts under --ep (rank 0 routes every token)
    epgen 2 -m "$T/ck" --max-new 10 --temperature 0 -q --record-loads "$T/loads2.json" <"$T/p.txt" >/dev/null
    cmp "$T/loads.json" "$T/loads2.json"
}

@test "--redundant-experts with --expert-loads: the busiest rank computes fewer pairs, the tokens stay" {
    gen -m "$T/ck" --max-new 12 --temperature 0 --jsonl -q --record-loads "$T/loads.json" <"$T/p.txt" >"$T/one"
    maxload() { sed -n 's/.*; max \([0-9]*\), mean.*/\1/p'; }
    run --separate-stderr epgen 4 -m "$T/ck" --max-new 12 --temperature 0 --jsonl <"$T/p.txt"
    [ "$status" -eq 0 ]
    local m0 m2
    m0=$(echo "$stderr" | maxload)
    run --separate-stderr epgen 4 -m "$T/ck" --max-new 12 --temperature 0 --jsonl --redundant-experts 2 \
        --expert-loads "$T/loads.json" <"$T/p.txt"
    [ "$status" -eq 0 ]
    echo "$output" >"$T/rep"
    same_tokens "$T/one" "$T/rep"
    [[ "$stderr" == *"2+2 slots per rank"* ]]
    m2=$(echo "$stderr" | maxload)
    echo "max pairs per rank: $m0 without replicas, $m2 with"
    [ -n "$m0" ] && [ -n "$m2" ] && [ "$m2" -lt "$m0" ]
}

@test "errors: ranks and --ep disagree, experts that do not divide, replicas without loads, a foreign loads file" {
    run epgen 2 -m "$T/ck" --ids --max-new 2 <<<"1 2" --ep 4
    [ "$status" -ne 0 ]
    [[ "$output" == *"--ep 4: mpirun started 2 ranks (expert parallelism spans the world)"* ]]
    run epgen 3 -m "$T/ck" --ids --max-new 2 <<<"1 2"
    [ "$status" -ne 0 ]
    [[ "$output" == *"model: 8 routed experts over 3 expert-parallel ranks (rank 0)"* ]]
    [[ "$output" != *"(rank 1)"* ]]
    run gen -m "$T/ck" --ids --max-new 2 --redundant-experts 1 <<<"1 2"
    [ "$status" -eq 2 ]
    [[ "$output" == *"--redundant-experts and --expert-loads go with --ep N (N > 1)"* ]]
    echo '{"n_routed_experts": 16, "layers": []}' >"$T/bad.json"
    run epgen 2 -m "$T/ck" --ids --max-new 2 --redundant-experts 1 --expert-loads "$T/bad.json" <<<"1 2"
    [ "$status" -ne 0 ]
    [[ "$output" == *"expert loads: \"n_routed_experts\" must be the model's 8: $T/bad.json"* ]]
}
