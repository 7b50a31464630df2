#!/usr/bin/env bats
# ds-extend-ctx: a YaRN phase on a tiny checkpoint (rope_scaling written as V3's, training at the longer
# length, passkey grid on stdout + heat map + metrics, log-likelihood by position), a second phase that
# keeps the first's scaling, --eval-only, --print-rope on a checkpoint, and clean errors. YaRN's numbers
# are checked against transformers in tests/ref/yarn.bats; the retrieval experiment is
# bench/passkey_extension.sh.

bats_require_minimum_version 1.5.0
load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_base "$T"
}

ext() { "$DS_BIN/ds-extend-ctx" --threads 1 --seed 1 "$@"; } # seed 1: runs compare (the default is random)

rope_of() { # checkpoint -> "type factor original beta_fast beta_slow mscale mscale_all_dim max_position_embeddings"
    "$DS_PY" -c '
import json, sys
d = json.load(open(sys.argv[1] + "/config.json"))
r = d["rope_scaling"]
print(r["type"], r["factor"], r["original_max_position_embeddings"], r["beta_fast"], r["beta_slow"], r["mscale"],
      r["mscale_all_dim"], d["max_position_embeddings"])' "$1"
}

@test "--help lists the options with defaults and an example" {
    run "$DS_BIN/ds-extend-ctx" --help
    [ "$status" -eq 0 ]
    for o in --model --data --out --factor --seq-len --steps --lr --batch --original-len --beta-fast --beta-slow \
             --mscale --mscale-all-dim --print-rope --eval-only --eval-lengths --eval-depths --eval-trials --eval-png \
             --eval-docs --metrics --resume --save-every --fp8 --chat --chat-template --on-bad --eval-text; do
        [[ "$output" == *"$o"* ]] || { echo "missing $o"; false; }
    done
    [[ "$output" == *"[default: 7.3e-06]"* ]]
    [[ "$output" == *"Example:"* ]]
}

@test "a phase writes V3's rope_scaling, trains at the longer length and evaluates" {
    run --separate-stderr ext -m "$T/base" --data "$T/shards" -o "$BATS_TEST_TMPDIR/long" --factor 8 --original-len 64 \
        --seq-len 256 --steps 3 --batch 2 --lr 1e-4 --eval-lengths 192,256 --eval-depths 0,0.5,1 --eval-trials 2 \
        --eval-docs 2 --eval-png "$BATS_TEST_TMPDIR/pk.png" --metrics "$BATS_TEST_TMPDIR/m.jsonl"
    echo "$stderr" | tail -4
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"yarn    factor 8, original 64, beta 32/1, mscale 1/1: max_position_embeddings 512"* ]]
    [[ "$stderr" == *"step 3/3 | loss "* ]]
    [ "$(rope_of "$BATS_TEST_TMPDIR/long")" = "yarn 8.0 64 32.0 1.0 1.0 1.0 512" ]
    # the grid and the position table on stdout
    [[ "${lines[0]}" == "passkey retrieval: % of 2 greedy answers right" ]]
    [[ "${lines[1]}" =~ ^length\ +0%\ +50%\ +100%\ +mean$ ]]
    [[ "${lines[2]}" =~ ^192\  ]] && [[ "${lines[3]}" =~ ^256\  ]]
    [[ "${lines[4]}" == "log-likelihood by position (2 documents)" ]]
    [ "${#lines[@]}" -eq 14 ]   # 4 + header + 8 buckets + column titles
    [[ "${lines[13]}" =~ ^225-255\  ]]
    "$DS_PY" "$DS_ROOT/tests/ref/png_check.py" "$BATS_TEST_TMPDIR/pk.png" >/dev/null 2>&1 || file "$BATS_TEST_TMPDIR/pk.png" | grep -q PNG
    run "$DS_PY" - "$BATS_TEST_TMPDIR/m.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
c = recs[0]["config"]
assert c["tool"] == "ds-extend-ctx" and c["factor"] == 8 and c["original_len"] == 64 and c["seq_len"] == 256, c
steps = [r for r in recs if "step" in r]
pk = [r for r in recs if r.get("eval") == "passkey"]
pos = [r for r in recs if r.get("eval") == "position_logp"]
assert len(steps) == 3 and len(pk) == 6 and len(pos) == 8, (len(steps), len(pk), len(pos))
assert {(r["length"], r["depth"]) for r in pk} == {(l, d) for l in (192, 256) for d in (0, 0.5, 1)}
assert all(0 <= r["accuracy"] <= 1 and r["answer_logp"] < 0 and r["trials"] == 2 for r in pk)
assert [r["end"] for r in pos][-1] == 255 and all(r["logp"] < 0 for r in pos)
print("ok")
PY
    [ "$status" -eq 0 ]
}

@test "a second phase keeps the first's scaling and trains longer" {
    ext -m "$T/base" --data "$T/shards" -o "$BATS_TEST_TMPDIR/p1" --factor 8 --original-len 64 --seq-len 128 --steps 1 \
        --batch 1 --no-eval -q
    run --separate-stderr ext -m "$BATS_TEST_TMPDIR/p1" --data "$T/shards" -o "$BATS_TEST_TMPDIR/p2" --seq-len 256 --steps 1 \
        --batch 1 --no-eval
    [ "$status" -eq 0 ]
    [ "$(rope_of "$BATS_TEST_TMPDIR/p2")" = "yarn 8.0 64 32.0 1.0 1.0 1.0 512" ]
    [[ "$stderr" != *"warning"* ]]
}

@test "--eval-only evaluates a checkpoint as it is (or under YaRN without training) and writes nothing" {
    run --separate-stderr ext -m "$T/base" --eval-only --seq-len 192 --eval-depths 0.5 --eval-trials 1 --eval-docs 0
    echo "$stderr"
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "passkey retrieval: % of 1 greedy answers right" ]]
    [ "${#lines[@]}" -eq 3 ]
    [[ "$stderr" != *"yarn "* ]]
    run --separate-stderr ext -m "$T/base" --eval-only --factor 4 --original-len 64 --seq-len 192 --eval-lengths 192 \
        --eval-depths 0.5 --eval-trials 1 --eval-docs 1 --data "$T/shards"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"yarn    factor 4, original 64"* ]]
    [[ "$output" == *"log-likelihood by position (1 documents)"* ]]
    [ "$(ls "$T/base" | sort | tr '\n' ' ')" = "config.json generation_config.json model.safetensors optimizer.safetensors tokenizer.json tokenizer_config.json trainer_state.json " ]
}

@test "--print-rope on a checkpoint: the tables the extended config gives" {
    run ext -m "$T/base" --factor 4 --original-len 64 --print-rope
    [ "$status" -eq 0 ]
    "$DS_PY" -c '
import json, math, sys
d = json.loads(sys.argv[1])
r = d["rope"]
assert d["config"]["rope_scaling"]["factor"] == 4 and r["rope_scaling"]["original_max_position_embeddings"] == 64
assert len(r["inv_freq"]) == 4 and r["cos_scale"] == 1.0
m = 0.1 * math.log(4) + 1
assert abs(r["softmax_scale"] - r["softmax_scale_plain"] * m * m) < 1e-6, r
' "$output"
}

@test "errors: a plain checkpoint needs --factor; bad values and missing options are usage errors" {
    run -2 ext -m "$T/base" --data "$T/shards" -o "$BATS_TEST_TMPDIR/x" --seq-len 128 --steps 1
    [[ "$output" == *"--factor: required: the checkpoint has no rope_scaling yet"* ]]
    run -2 ext -m "$T/base" --data "$T/shards" -o "$BATS_TEST_TMPDIR/x" --seq-len 128 --steps 1 --factor 0.5
    [[ "$output" == *"--factor: must be at least 1"* ]]
    run -2 ext -m "$T/base" --data "$T/shards" -o "$BATS_TEST_TMPDIR/x" --steps 1 --factor 4
    [[ "$output" == *"--seq-len T is required"* ]]
    run -2 ext -m "$T/base" -o "$BATS_TEST_TMPDIR/x" --seq-len 128 --steps 1 --factor 4
    [[ "$output" == *"give the phase's data: --data (token shards) or --chat (conversations)"* ]]
    run -2 ext -m "$T/base" --data "$T/shards" --chat "$T/shards" -o "$BATS_TEST_TMPDIR/x" --seq-len 128 --steps 1 --factor 4
    [[ "$output" == *"give the phase's data: --data (token shards) or --chat (conversations)"* ]]
    run -2 ext -m "$T/base" --eval-only --seq-len 128 --factor 4 --eval-lengths 1K,x
    [[ "$output" == *"--eval-lengths: not a number list: '1K,x'"* ]]
    run -2 ext -m "$T/base" --eval-only --seq-len 128 --eval-depths 0,1.5
    [[ "$output" == *"--eval-depths: 1.5 is outside [0, 1]"* ]]
    run -2 ext -m "$T/base" --factor 4 --beta-fast 1 --beta-slow 2 --print-rope
    [[ "$output" == *"must exceed --beta-slow"* ]]
    run -1 ext -m "$BATS_TEST_TMPDIR/nothing" --factor 4 --print-rope
    [[ "$output" == "ds-extend-ctx: error: "*"$BATS_TEST_TMPDIR/nothing"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/x" ]
}

@test "--eval-text: the grid in another wording; bad wording files are clean errors" {
    printf '{"intro": "", "filler": "la la. ", "needle": "k={key}. ", "question": "\\nk=", "answer": "{key}", "digits": 3}' \
        >"$BATS_TEST_TMPDIR/w.json"
    # 40 tokens hold this wording's task, not the built-in one's (the same run without --eval-text skips the length)
    run --separate-stderr ext -m "$T/base" --eval-only --seq-len 40 --eval-lengths 40 --eval-depths 0,1 --eval-trials 2 \
        --eval-docs 0 --eval-text "$BATS_TEST_TMPDIR/w.json"
    [ "$status" -eq 0 ]
    [[ "${lines[0]}" == "passkey retrieval: % of 2 greedy answers right" ]]
    [[ "${lines[2]}" =~ ^40\  ]]
    run --separate-stderr ext -m "$T/base" --eval-only --seq-len 40 --eval-lengths 40 --eval-depths 0,1 --eval-trials 2 --eval-docs 0
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"40 tokens cannot hold the task"* ]]
    # a missing key keeps the built-in piece: the default question is long, so 40 tokens no longer fit
    printf '{"needle": "k={key}. ", "answer": "{key}"}' >"$BATS_TEST_TMPDIR/partial.json"
    run --separate-stderr ext -m "$T/base" --eval-only --seq-len 40 --eval-lengths 40 --eval-docs 0 --eval-text "$BATS_TEST_TMPDIR/partial.json"
    [[ "$stderr" == *"cannot hold the task"* ]]
    printf '{"needle": "k={key}", "colour": "red"}' >"$BATS_TEST_TMPDIR/bad.json"
    run -1 ext -m "$T/base" --eval-only --seq-len 64 --eval-text "$BATS_TEST_TMPDIR/bad.json"
    [[ "$output" == "ds-extend-ctx: error: passkey text: unknown key \"colour\""*"$BATS_TEST_TMPDIR/bad.json"* ]]
    printf '{"digits": 19}' >"$BATS_TEST_TMPDIR/bad.json"
    run -1 ext -m "$T/base" --eval-only --seq-len 64 --eval-text "$BATS_TEST_TMPDIR/bad.json"
    [[ "$output" == *"\"digits\" must be an integer in 1..18"* ]]
    printf '{"filler": 3}' >"$BATS_TEST_TMPDIR/bad.json"
    run -1 ext -m "$T/base" --eval-only --seq-len 64 --eval-text "$BATS_TEST_TMPDIR/bad.json"
    [[ "$output" == *"\"filler\" is not a string"* ]]
    printf '{"needle": "no key here"}' >"$BATS_TEST_TMPDIR/bad.json"   # refused before training
    run -1 ext -m "$T/base" --data "$T/shards" -o "$BATS_TEST_TMPDIR/x" --factor 2 --seq-len 128 --steps 1 --eval-text "$BATS_TEST_TMPDIR/bad.json"
    [[ "$output" == "ds-extend-ctx: error: passkey text: the needle and the answer must contain {key}: "* ]]
    [ ! -e "$BATS_TEST_TMPDIR/x" ]
    printf '{"needle": ' >"$BATS_TEST_TMPDIR/bad.json"
    run -1 ext -m "$T/base" --eval-only --seq-len 64 --eval-text "$BATS_TEST_TMPDIR/bad.json"
    [[ "$output" == "ds-extend-ctx: error: passkey text: bad JSON"* ]]
    run -1 ext -m "$T/base" --eval-only --seq-len 64 --eval-text "$BATS_TEST_TMPDIR/nothing.json"
    [[ "$output" == "ds-extend-ctx: error: "*"nothing.json"* ]]
}

@test "--chat: a phase on conversations trains exactly as ds-sft would (assistant tokens, packed with sample masking)" {
    local d=$BATS_TEST_TMPDIR
    # a YaRN checkpoint to start both from, so the two tools see the same model
    ext -m "$T/base" --data "$T/shards" -o "$d/yarn" --factor 2 --original-len 64 --seq-len 128 --steps 1 --batch 2 --no-eval -q
    "$DS_PY" - "$d/conv.jsonl" <<'PY'
import json, random, sys
r = random.Random(5)
words = "the licence grants you freedom to share and change all versions of a program".split()
with open(sys.argv[1], "w") as f:
    for i in range(24):
        q = " ".join(r.choice(words) for _ in range(r.randint(3, 12)))
        a = " ".join(r.choice(words) for _ in range(r.randint(2, 10)))
        f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    f.write(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
PY
    run --separate-stderr ext -m "$d/yarn" --chat "$d/conv.jsonl" -o "$d/long" --seq-len 128 --steps 2 --batch 4 --lr 1e-3 \
        --val-frac 0 --no-eval --metrics "$d/ext.jsonl"
    echo "$stderr" | tail -5
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"jsonl: line 25: \"messages\" has no assistant message to learn from: $d/conv.jsonl (skipped)"* ]]
    [[ "$stderr" == *"24 conversations (1 skipped) of 880 tokens"* ]]
    "$DS_BIN/ds-sft" --threads 1 --seed 1 -q -m "$d/yarn" --data "$d/conv.jsonl" -o "$d/sft" --seq-len 128 --steps 2 --batch 4 --lr 1e-3 \
        --val-frac 0 --val-every 0 --metrics "$d/sft.jsonl"
    # the same rows and the same masked loss before the first update; the config record says which data
    run "$DS_PY" - "$d/ext.jsonl" "$d/sft.jsonl" <<'PY'
import json, sys
ext, sft = ([json.loads(l) for l in open(f)] for f in sys.argv[1:3])
assert ext[0]["config"]["data"] == "chat" and ext[0]["config"]["factor"] == 2, ext[0]
e, s = ([r for r in recs if "step" in r] for recs in (ext, sft))
assert e[0]["tokens"] == s[0]["tokens"], (e[0], s[0])
assert abs(e[0]["loss"] - s[0]["loss"]) <= 1e-6 * abs(s[0]["loss"]), (e[0]["loss"], s[0]["loss"])
print(e[0]["loss"], s[0]["loss"])
PY
    echo "$output"
    [ "$status" -eq 0 ]
    # the extended model keeps the phase's scaling
    [ "$(rope_of "$d/long")" = "yarn 2.0 64 32.0 1.0 1.0 1.0 128" ]
    # --on-bad reject: the first bad line fails the phase before any training, with a hint
    run -1 ext -q -m "$d/yarn" --chat "$d/conv.jsonl" --on-bad reject -o "$d/x" --seq-len 128 --steps 1
    [[ "${lines[0]}" == "ds-extend-ctx: error: jsonl: line 25: \"messages\" has no assistant message to learn from: $d/conv.jsonl" ]]
    [[ "$output" == *"--on-bad skip"* ]]
    [ ! -e "$d/x" ]
    run -1 ext -q -m "$d/yarn" --chat "$d/none.jsonl" -o "$d/x" --seq-len 128 --steps 1
    [ "$output" = "ds-extend-ctx: error: cannot open: No such file or directory: $d/none.jsonl" ]
    [ ! -e "$d/x" ]
}
