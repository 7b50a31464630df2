#!/usr/bin/env bats
# ds-pretrain: trains share/configs/tiny.json on a learnable token corpus (loss falls, checkpoint with the
# tokenizer, metrics and plot), resumes bit for bit after SIGTERM, stops with exit 3 on NaN (or skips),
# reads shards from a glob, a directory and stdin, and gives clean errors for a corrupt shard, a
# vocabulary mismatch, a bad config and bad usage.

bats_require_minimum_version 1.5.0
load train_helpers
load mpi_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    # a tokenizer with DeepSeek's specials (FIM tokens included); 400 ids fit tiny.json's 512
    cat /usr/share/common-licenses/GPL-3 >"$T/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 400 -o "$T/tok.json" "$T/prose.txt"
    # documents following x -> (7x + 5) mod 61 (+ 20), separated by EOS (1): learnable
    "$DS_PY" - "$T" <<'EOF'
import random, struct, sys
t = sys.argv[1]
for name, seed, ndocs in (("a", 1, 300), ("b", 2, 300), ("small", 3, 3)):
    rnd = random.Random(seed)
    toks = []
    for _ in range(ndocs):
        x = rnd.randrange(61)
        for _ in range(rnd.randint(20, 60)):
            x = (7 * x + 5) % 61
            toks.append(x + 20)
        toks.append(1)
    open(f"{t}/{name}.u32", "wb").write(struct.pack(f"<{len(toks)}I", *toks))
EOF
    mkdir -p "$T/shards"
    for s in a b; do shard "$T/$s.u32" "$T/shards/$s.tok" 400; done
    shard "$T/a.u32" "$T/big_vocab.tok" 4096
    cp "$T/tok.json" "$T/shards/tokenizer.json"
    export CFG="$DS_ROOT/share/configs/tiny.json"
}

shard() { "$DS_PY" "$DS_ROOT/tests/ref/shard_ref.py" encode "$1" "$2" "$3" 1 4096 >/dev/null; }

# one thread: the tests share a few cores with others, and OpenMP spin-waits badly under load; seed 1
# (without --seed a run draws one) so that runs compare, unless a test gives its own
pretrain() { "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --seed 1 "$@"; }

@test "--help lists the options with defaults and an example" {
    run "$DS_BIN/ds-pretrain" --help
    [ "$status" -eq 0 ]
    for o in --config --model --data --out --steps --batch --micro-batch --seq-len --lr --lr-schedule --batch-ramp \
             --gamma --lambda --alpha --seed --threads --metrics --plot --save-every --resume --fp8 --device \
             --tokenizer --val-every --fim-rate --skip-nonfinite --peak-tflops --bf16-moments; do
        [[ "$output" == *"$o"* ]] || { echo "missing $o"; false; }
    done
    [[ "$output" == *"[default: 2.2e-04]"* || "$output" == *"[default: 0.00022]"* ]]
    [[ "$output" == *"Example:"* ]]
}

@test "training lowers the loss; the checkpoint carries config, weights, tokenizer and trainer state" {
    run --separate-stderr pretrain --config "$CFG" --data "$T/shards/*.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 40 \
        --batch 8 --micro-batch 4 --seq-len 32 --lr 1e-2 --val-every 20 --metrics "$BATS_TEST_TMPDIR/m.jsonl" \
        --plot "$BATS_TEST_TMPDIR/loss.png"
    echo "$stderr" | tail -5
    [ "$status" -eq 0 ]
    [ -z "$output" ]
    [[ "$stderr" == *"step  1/40 | loss "* ]]
    [[ "$stderr" == *"step 40/40 | loss "*"| val "* ]]
    # every step line ends with the time so far and the time left; none is left after the last step
    dur='[0-9]+(\.[0-9]s|m[0-9]{2}s|h[0-9]{2}m)'
    [ "$(printf '%s\n' "$stderr" | grep -c '^step ')" -eq "$(printf '%s\n' "$stderr" | grep -cE "^step .* \| $dur elapsed, ETA $dur\$")" ]
    printf '%s\n' "$stderr" | grep -qE "^step 40/40 .* \| $dur elapsed, ETA 0\.0s\$"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json trainer_state.json optimizer.safetensors; do
        [ -f "$BATS_TEST_TMPDIR/ck/$f" ] || { echo "no $f"; false; }
    done
    cmp "$T/tok.json" "$BATS_TEST_TMPDIR/ck/tokenizer.json"   # found beside the shards
    head -1 "$BATS_TEST_TMPDIR/m.jsonl" | grep -q '^{"config":{"tool":"ds-pretrain"'
    run "$DS_PY" - "$BATS_TEST_TMPDIR/m.jsonl" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])][1:]
assert [r["step"] for r in recs] == list(range(1, 41)), "one record per step"
for k in ("loss", "loss_mtp", "lr", "grad_norm", "tokens", "balance"):
    assert k in recs[0], k
first, last = recs[0]["loss"], recs[-1]["loss"]
print(f"loss {first:.4f} -> {last:.4f}, val {recs[-1]['val_loss']:.4f}")
assert abs(first - 6.2146) < 0.3, "starts near ln 512"
assert last < 0.5 * first, "falls by half"
assert recs[-1]["tokens"] == 40 * 8 * 32
assert len(recs[0]["balance"]) == 2 and {"max_vio", "min_load", "max_load"} <= set(recs[0]["balance"][0])
EOF
    echo "$output"
    [ "$status" -eq 0 ]
    # the plot decodes (Python's zlib), is well under 100 KB and has its text in DejaVu where it is installed
    [ "$(stat -c %s "$BATS_TEST_TMPDIR/loss.png")" -lt 102400 ]
    run "$DS_PY" "$DS_ROOT/tests/ref/png_check.py" chart "$BATS_TEST_TMPDIR/loss.png" 900 540 1f77b4 \
        $([ -r /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && echo antialiased)
    echo "$output"
    [ "$status" -eq 0 ]
    # the checkpoint loads with the safetensors package: HF names, fp32
    run "$DS_PY" -c '
import sys; from safetensors.numpy import load_file
w = load_file(sys.argv[1] + "/model.safetensors"); o = load_file(sys.argv[1] + "/optimizer.safetensors")
assert w["model.embed_tokens.weight"].shape == (512, 64) and str(w["lm_head.weight"].dtype) == "float32"
assert "model.layers.1.mlp.gate.e_score_correction_bias" in w
assert o["lm_head.weight.exp_avg"].shape == (512, 64)
print(len(w), "tensors")' "$BATS_TEST_TMPDIR/ck"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "the pipeline: ds-tokenize encode writes shards, ds-pretrain trains on them" {
    "$DS_BIN/ds-tokenize" encode -q -t "$T/tok.json" -o "$BATS_TEST_TMPDIR/text/" "$T/prose.txt"
    run --separate-stderr pretrain --config "$CFG" --data "$BATS_TEST_TMPDIR/text" --tokenizer "$T/tok.json" -o "$BATS_TEST_TMPDIR/ck" \
        --steps 12 --batch 4 --seq-len 64 --lr 1e-2 --metrics "$BATS_TEST_TMPDIR/m.jsonl"
    echo "$stderr" | grep -E "^(data|step)"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"data    1 shard(s), "*" tokens, 1 documents, vocabulary 400"* ]]
    first=$(numbers "$BATS_TEST_TMPDIR/m.jsonl" | head -1 | grep -o '"loss": [0-9.]*' | cut -d' ' -f2)
    last=$(numbers "$BATS_TEST_TMPDIR/m.jsonl" | tail -1 | grep -o '"loss": [0-9.]*' | cut -d' ' -f2)
    "$DS_PY" -c "import sys; sys.exit(0 if float(sys.argv[2]) < float(sys.argv[1]) - 1 else 1)" "$first" "$last"
    cmp "$T/tok.json" "$BATS_TEST_TMPDIR/ck/tokenizer.json"
}

@test "SIGTERM finishes the step, saves and exits 143; --resume continues bit for bit" {
    interrupt_and_resume step 5 "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 --config "$CFG" --data "$T/shards" --steps 120 \
        --batch 4 --seq-len 32 --lr 3e-3 --val-every 25 --log-every 0
}

@test "save-every writes checkpoints during the run; -m starts a new run from the weights" {
    pretrain --config "$CFG" --data "$T/shards/a.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 6 --batch 4 --seq-len 32 \
        --lr 1e-2 --save-every 3 -q --metrics "$BATS_TEST_TMPDIR/m.jsonl"
    grep -q '"step": *6' "$BATS_TEST_TMPDIR/ck/trainer_state.json"
    run --separate-stderr pretrain -m "$BATS_TEST_TMPDIR/ck" --data "$T/shards/a.tok" -o "$BATS_TEST_TMPDIR/ck2" --steps 2 \
        --batch 4 --seq-len 32 --metrics "$BATS_TEST_TMPDIR/m2.jsonl"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"step 1/2"* ]]
    cmp "$BATS_TEST_TMPDIR/ck/tokenizer.json" "$BATS_TEST_TMPDIR/ck2/tokenizer.json"
    # the loss continues from where the first run left it, not from ln V
    last=$(numbers "$BATS_TEST_TMPDIR/m.jsonl" | tail -1 | grep -o '"loss": [0-9.]*' | cut -d' ' -f2)
    first=$(numbers "$BATS_TEST_TMPDIR/m2.jsonl" | head -1 | grep -o '"loss": [0-9.]*' | cut -d' ' -f2)
    "$DS_PY" -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) < 0.5 and b < 6 else 1)" "$last" "$first"
}

@test "data from stdin, FIM with the tokenizer's tokens, bf16 moments and a batch ramp" {
    shard "$T/a.u32" "$BATS_TEST_TMPDIR/a.tok" 400
    run --separate-stderr pretrain --config "$CFG" --data - -o "$BATS_TEST_TMPDIR/ck" --steps 4 --batch 8 --micro-batch 2 \
        --seq-len 32 --tokenizer "$T/tok.json" --fim-rate 0.5 --bf16-moments --batch-ramp 'linear:2@0,8@3' \
        --metrics "$BATS_TEST_TMPDIR/m.jsonl" <"$BATS_TEST_TMPDIR/a.tok"
    echo "$stderr"
    [ "$status" -eq 0 ]
    [ "$(numbers "$BATS_TEST_TMPDIR/m.jsonl" | grep -o '"batch": [0-9]*' | cut -d' ' -f2 | tr '\n' ' ')" = "2 4 6 8 " ]
    run "$DS_PY" -c '
import sys; from safetensors import safe_open
with safe_open(sys.argv[1] + "/optimizer.safetensors", "np") as f:
    print(f.metadata()["optimizer"], f.get_slice("lm_head.weight.exp_avg").get_dtype())' "$BATS_TEST_TMPDIR/ck"
    echo "$output"
    [ "$output" = "adamw BF16" ]
}

@test "NaN weights: exit 3 with a clear message and the last checkpoint untouched; --skip-nonfinite goes on" {
    pretrain --config "$CFG" --data "$T/shards/a.tok" -o "$BATS_TEST_TMPDIR/good" --steps 2 --batch 4 --seq-len 32 -q
    cp -r "$BATS_TEST_TMPDIR/good" "$BATS_TEST_TMPDIR/bad"
    "$DS_PY" -c '
import sys; import numpy as np; from safetensors.numpy import load_file, save_file
p = sys.argv[1] + "/model.safetensors"; w = load_file(p)
w["model.norm.weight"][:] = np.nan
save_file(w, p, metadata={"format": "pt"})' "$BATS_TEST_TMPDIR/bad"
    cp -r "$BATS_TEST_TMPDIR/bad" "$BATS_TEST_TMPDIR/bad.orig"
    run --separate-stderr pretrain --resume "$BATS_TEST_TMPDIR/bad" --data "$T/shards/a.tok" -o "$BATS_TEST_TMPDIR/bad" \
        --steps 4 --batch 4 --seq-len 32
    echo "$stderr"
    [ "$status" -eq 3 ]
    [[ "$stderr" == *"ds-pretrain: error: training diverged: loss is nan at step 3"* ]]
    [[ "$stderr" == *"hint: "*"last checkpoint"* ]]
    diff -r "$BATS_TEST_TMPDIR/bad" "$BATS_TEST_TMPDIR/bad.orig"
    run --separate-stderr pretrain --resume "$BATS_TEST_TMPDIR/bad" --data "$T/shards/a.tok" -o "$BATS_TEST_TMPDIR/bad" \
        --steps 4 --batch 4 --seq-len 32 --skip-nonfinite --metrics "$BATS_TEST_TMPDIR/m.jsonl"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"SKIPPED"* ]]
    [ "$(grep -c '"skipped":true' "$BATS_TEST_TMPDIR/m.jsonl")" -eq 2 ]
}

@test "a corrupt shard is a one-line error" {
    head -c 1500 "$T/shards/a.tok" >"$BATS_TEST_TMPDIR/cut.tok"
    run --separate-stderr pretrain --config "$CFG" --data "$BATS_TEST_TMPDIR/cut.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 2
    echo "$stderr"
    [ "$status" -eq 1 ]
    [ "$(echo "$stderr" | grep -c 'error')" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: "*"$BATS_TEST_TMPDIR/cut.tok"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/ck" ]
    printf 'not a shard at all' >"$BATS_TEST_TMPDIR/junk.tok"
    run --separate-stderr pretrain --config "$CFG" --data "$BATS_TEST_TMPDIR/junk.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 2
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: "*"junk.tok"* ]]
}

@test "shards with a larger vocabulary than the config are refused" {
    run --separate-stderr pretrain --config "$CFG" --data "$T/big_vocab.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 2
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: vocabulary mismatch: the shards have 4096 token ids, the model's vocab_size is 512: $T/big_vocab.tok"* ]]
    [[ "$stderr" == *"hint: "* ]]
}

@test "a bad config is a one-line error naming the key" {
    sed 's/"hidden_size": 64/"hidden_size": -64/' "$CFG" >"$BATS_TEST_TMPDIR/bad.json"
    run --separate-stderr pretrain --config "$BATS_TEST_TMPDIR/bad.json" --data "$T/shards" -o "$BATS_TEST_TMPDIR/ck" --steps 2
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: config: hidden_size: "*"$BATS_TEST_TMPDIR/bad.json"* ]]
    printf '{"hidden_size": 64,' >"$BATS_TEST_TMPDIR/trunc.json"
    run --separate-stderr pretrain --config "$BATS_TEST_TMPDIR/trunc.json" --data "$T/shards" -o "$BATS_TEST_TMPDIR/ck" --steps 2
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: config: bad JSON: "* ]]
}

@test "too little data, no shards, FIM without FIM tokens and a non-checkpoint -o are clean errors" {
    shard "$T/small.u32" "$BATS_TEST_TMPDIR/small.tok" 400
    run --separate-stderr pretrain --config "$CFG" --data "$BATS_TEST_TMPDIR/small.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 2 --seq-len 256
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"ds-pretrain: error: data: "*" tokens make 0 training sequences of 256+1 tokens: $BATS_TEST_TMPDIR/small.tok"* ]]
    run --separate-stderr pretrain --config "$CFG" --data "$BATS_TEST_TMPDIR/none/*.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 2
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: no token shards match: $BATS_TEST_TMPDIR/none/*.tok"* ]]
    [[ "$stderr" == *"hint: ds-tokenize encode"* ]]
    run --separate-stderr pretrain --config "$CFG" --data "$BATS_TEST_TMPDIR/small.tok" -o "$BATS_TEST_TMPDIR/ck" --steps 2 \
        --seq-len 16 --fim-rate 0.1
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"--fim-rate: the tokenizer has no"* ]]
    mkdir -p "$BATS_TEST_TMPDIR/home"
    echo precious >"$BATS_TEST_TMPDIR/home/notes.txt"
    run --separate-stderr pretrain --config "$CFG" --data "$T/shards" -o "$BATS_TEST_TMPDIR/home" --steps 1 --batch 2 --seq-len 16
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: output directory holds files that are not a checkpoint (not replaced, --force or not): $BATS_TEST_TMPDIR/home"* ]]
    [ -f "$BATS_TEST_TMPDIR/home/notes.txt" ]
}

@test "usage errors exit 2 with one line" {
    run --separate-stderr pretrain --config "$CFG" -o x --steps 2
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-pretrain: error: --data is required"* ]]
    run --separate-stderr pretrain --data x -o x --steps 2
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-pretrain: error: no model: give --config CFG.json or -m CKPT"* ]]
    run --separate-stderr pretrain --config "$CFG" --data x -o x --steps 2 --batch 6 --micro-batch 4
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-pretrain: error: --batch 6 is not a multiple of --micro-batch 4"* ]]
    run --separate-stderr pretrain --config "$CFG" --data "$T/shards" -o "$BATS_TEST_TMPDIR/ck" --steps 2 --lr-schedule 'v3:warmup=1parsec'
    [ "$status" -eq 2 ]
    [[ "$stderr" == "ds-pretrain: error: --lr-schedule: bad knee"* ]]
    run --separate-stderr pretrain --config "$CFG" --data x -o x --steps 2 --device tpu
    [ "$status" -eq 2 ]
}

@test "--fp8 trains every block Linear in FP8: the loss falls close to fp32's, the checkpoint is fp32 master weights" {
    local d=$BATS_TEST_TMPDIR args="--config $CFG --data $T/shards --steps 30 --batch 8 --seq-len 32 --lr 1e-2 --val-every 0"
    run --separate-stderr pretrain $args -o "$d/ck8" --metrics "$d/m8.jsonl" --fp8
    echo "$stderr" | tail -3
    [ "$status" -eq 0 ]
    run --separate-stderr pretrain $args -o "$d/ck32" --metrics "$d/m32.jsonl"
    [ "$status" -eq 0 ]
    run "$DS_PY" - "$d" <<'EOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
def run(name):
    recs = [json.loads(l) for l in open(f"{d}/{name}.jsonl")]
    return recs[0]["config"], [r["loss"] for r in recs[1:]]
c8, l8 = run("m8")
c32, l32 = run("m32")
assert c8["fp8"] is True and c32["fp8"] is False, "the configuration record says whether FP8 was on"
print(f"fp8 {l8[0]:.4f} -> {l8[-1]:.4f}; fp32 {l32[0]:.4f} -> {l32[-1]:.4f}")
assert l8[-1] < 0.6 * l8[0], "FP8 training lowers the loss"
assert abs(l8[0] - l32[0]) / l32[0] < 0.01, "the first step's loss agrees with fp32 within 1%"
assert l8 != l32, "FP8 is not fp32"
tail8, tail32 = np.mean(l8[-10:]), np.mean(l32[-10:])
assert abs(tail8 - tail32) / tail32 < 0.1, f"the last steps agree within 10%: {tail8:.4f} vs {tail32:.4f}"
w = load_file(f"{d}/ck8/model.safetensors")
assert all(str(t.dtype) == "float32" for t in w.values()), "master weights in fp32"
q = w["model.layers.1.mlp.experts.3.up_proj.weight"]
assert len(np.unique(q)) > 1000, "not snapped to an FP8 grid"
EOF
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "--device cuda says what is missing" {
    run --separate-stderr pretrain --config "$CFG" --data "$T/shards" -o "$BATS_TEST_TMPDIR/ck" --steps 1 --device cuda
    [ "$status" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: --device cuda: "* ]]
}

@test "data parallel over MPI: 2 ranks follow the one-process loss curve; rank 0 alone writes" {
    local d=$BATS_TEST_TMPDIR args="--config $CFG --data $T/shards --steps 4 --batch 4 --micro-batch 1 --seq-len 32 --seed 3"
    run pretrain $args -o "$d/one" --metrics "$d/one.jsonl"
    [ "$status" -eq 0 ]
    run mpi -np 2 "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 1 $args -o "$d/two" --metrics "$d/two.jsonl"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"data parallel: 2 ranks on 1 node(s)"* ]]
    [ "$(printf '%s\n' "$output" | grep -c 'saved step 4')" -eq 1 ]   # one writer
    "$DS_PY" - "$d" <<'PY'
import json, sys
from safetensors.numpy import load_file
d = sys.argv[1]
def steps(p):
    return [r for r in map(json.loads, open(p)) if "step" in r]
one, two = steps(d + "/one.jsonl"), steps(d + "/two.jsonl")
assert [r["step"] for r in two] == [1, 2, 3, 4], [r["step"] for r in two]
for a, b in zip(one, two):
    for k in ("loss", "grad_norm", "lr", "tokens"):
        assert abs(a[k] - b[k]) <= 1e-5 * max(abs(a[k]), 1e-6), (k, a[k], b[k])
w1, w2 = load_file(d + "/one/model.safetensors"), load_file(d + "/two/model.safetensors")
assert w1.keys() == w2.keys()
worst = max(float(abs(w1[k] - w2[k]).max()) / max(float(abs(w1[k]).max()), 1e-6) for k in w1)
assert worst < 1e-4, worst
print("max relative weight difference", worst)
PY
}

@test "--dp that does not match the processes started is a usage error" {
    run --separate-stderr mpi -np 2 "$DS_BIN/ds-pretrain" --threads 1 --config "$CFG" --data "$T/shards" -o "$BATS_TEST_TMPDIR/x" \
        --steps 1 --batch 2 --seq-len 16 --dp 3
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"ds-pretrain: error: --dp 3 does not match the 2 processes started"* ]]
}
