#!/usr/bin/env bats
# V3's low-precision storage and communication in the MoE layers under --fp8 (issue 23; model/moe_fp8.h):
# the SwiGLU inputs cached in FP8 (--fp8-moe-cache), the FP8 dispatch with power-of-two scales and the bf16
# combine (--fp8-dispatch). The cache's backward against numpy is tests/ref/moe_fp8.bats; the wire format,
# the GEMMs consuming it and the cache's bytes are tests/unit/test_moe_fp8.c.

bats_require_minimum_version 1.5.0
load mpi_helpers
load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    mkdir -p "$T/shards"
    tiny_data "$T"
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_group"] = 1; c["topk_group"] = 1
json.dump(c, open(sys.argv[2], "w"), indent=1)' "$DS_ROOT/share/configs/tiny.json" "$T/free.json"
}

train() { # one thread, seed 1, tiny.json on the GPL text; more options follow
    "$DS_BIN/ds-pretrain" --threads 1 --peak-tflops 0.1 --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" \
        --tokenizer "$T/tok.json" --seq-len 64 --batch 4 --log-every 0 --seed 1 -q "$@"
}

@test "refusals: --fp8-moe-cache and --fp8-dispatch without --fp8, unknown values" {
    usage_error "--fp8-moe-cache fp8: the MoE's FP8 storage belongs to --fp8 training: it needs --fp8" --fp8-moe-cache fp8
    usage_error "--fp8-dispatch fp32: the FP8 dispatch belongs to --fp8 training: it needs --fp8" --fp8-dispatch fp32
    usage_error "--fp8-dispatch fp8: the FP8 dispatch belongs to --fp8 training: it needs --fp8" --bf16 --fp8-dispatch fp8
    usage_error "--fp8-moe-cache" --fp8 --fp8-moe-cache e5m2
    usage_error "--fp8-dispatch" --fp8 --fp8-dispatch bf16
    for tool in ds-sft ds-extend-ctx ds-rl; do
        run "$DS_BIN/$tool" --help
        [[ "$output" == *"--fp8-moe-cache P"* && "$output" == *"--fp8-dispatch P"* ]] || { echo "$tool"; false; }
    done
}

# The tolerance. The cache reaches only the backward (step 1's loss is the same bits); there it replaces
# the experts' gate/up outputs by E4M3 in 1x128 tiles, relative error up to 2^-4 per element, which the
# gradients average over the batch's tokens. Over 20 steps at lr 3e-3 we allow V3's own bound for FP8
# against bf16 training, 0.25%, on the mean over the steps (measured at most 0.11% a step), and 1% a step.
@test "--fp8 with the SwiGLU inputs cached in FP8 follows the float32 cache for 20 steps within 0.25%" {
    local d=$BATS_TEST_TMPDIR
    # the dispatch and the E5M6 attention output (lowprec.bats) off in both: this compares the cache alone
    train -o "$d/c8" --steps 20 --lr 3e-3 --metrics "$d/c8.jsonl" --fp8 --fp8-dispatch fp32 --fp8-attn-out f32
    train -o "$d/c32" --steps 20 --lr 3e-3 --metrics "$d/c32.jsonl" --fp8 --fp8-dispatch fp32 --fp8-moe-cache fp32 \
        --fp8-attn-out f32
    run "$DS_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
def run(n):
    recs = [json.loads(l) for l in open(f"{d}/{n}.jsonl")]
    return recs[0]["config"], [r["loss"] for r in recs[1:] if "loss" in r]
(c8, l8), (c32, l32) = run("c8"), run("c32")
assert "fp8_moe_cache" not in c8 and c32["fp8_moe_cache"] == "fp32" and c8["fp8_dispatch"] == "fp32", (c8, c32)
rel = [abs(a - b) / b for a, b in zip(l8, l32)]
print("fp32 cache", l32[0], "->", l32[-1], "FP8 cache", l8[0], "->", l8[-1], "mean rel", sum(rel) / len(rel), "max rel", max(rel))
assert len(l8) == len(l32) == 20 and l32[-1] < 0.85 * l32[0], "it learns"
assert l8[0] == l32[0], "step 1: the forward does not read the cache"
assert l8 != l32, "the cache changes the backward"
# V3's bound is on the curve (lowprec.bats's E5M6 check reads it the same way): the mean over the steps,
# and no step off by 1%; a build without FMA contraction (SANITIZE=1) moved one step by 0.56%
mean = sum(rel) / len(rel)
assert mean < 0.0025 and max(rel) < 0.01, f"within 0.25% of the float32 cache on average (1% a step): {mean:.3g}, {max(rel):.3g}"
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

# the model on 2 and 4 ranks against the one-process model with the same quantization (test_moe_ep.c)
ep_model_fp8() { # np ep slots
    local driver=
    for u in $DS_UNITS; do case $u in */test_moe_ep) driver=$DS_ROOT/$u ;; esac; done
    [ -x "$driver" ] || skip "test_moe_ep not built"
    mpi_env
    run env DS_TEST_FP8=1 DS_TEST_EP=$2 DS_TEST_RPN=1 DS_TEST_SLOTS=$3 mpirun --oversubscribe -np $1 "$driver"
    echo "np=$1 ep=$2 slots=$3: $output"
    [ "$status" -eq 0 ]
    [[ "$output" != *"not ok"* ]]
    [[ "$output" == *"FP8: gradients within"* && "$output" == *"rows x 33, combine"*"rows x 64"* ]]
}

@test "EP model, FP8 dispatch: the one-process model's log-probs and gradients, bytes per row exact (2 and 4 ranks)" {
    ep_model_fp8 2 2 0
    ep_model_fp8 2 2 1
    ep_model_fp8 4 4 0
}

# The tolerance for the tools: the EP run's one difference is the bf16 combine (2^-9 relative on each rank's
# returned rows; step 1 within 1e-6, measured 3.5e-7); later steps also see FP8 codes near their rounding
# ties flip, which grows over steps like any perturbation of FP8 training: 20 steps within V3's 0.25%
# (measured 0.04%). Bytes: every step's records against the rows sent.
@test "ds-pretrain --fp8 --ep 2 follows the one-process --fp8 run; FP8 rows out, bf16 back, counted exactly" {
    local d=$BATS_TEST_TMPDIR
    local A="--config $T/free.json --peak-tflops 0.1 --threads 1 --data $T/shards --batch 8 --micro-batch 1 --seq-len 32
        --seed 3 --log-every 0 --lr-schedule 0.002 --gamma 0.001 --lambda 0.3 -q --steps 20 --fp8"
    "$DS_BIN/ds-pretrain" $A -o "$d/one" --metrics "$d/one.jsonl"
    run mpi -np 2 "$DS_BIN/ds-pretrain" $A --ep 2 -o "$d/ep" --metrics "$d/ep.jsonl"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    run mpi -np 2 "$DS_BIN/ds-pretrain" $A --ep 2 --fp8-dispatch fp32 --steps 2 -o "$d/ep32" --metrics "$d/ep32.jsonl"
    [ "$status" -eq 0 ] || { echo "$output"; false; }
    run "$DS_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
def steps(n):
    return [r for r in map(json.loads, open(f"{d}/{n}.jsonl")) if "step" in r]
one, ep, ep32 = steps("one"), steps("ep"), steps("ep32")
rel = [abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(one, ep)]
print("loss one", one[0]["loss"], "->", one[-1]["loss"], "ep", ep[-1]["loss"], "step 1", rel[0], "max", max(rel))
assert len(one) == len(ep) == 20 and rel[0] < 1e-6 and max(rel) < 0.0025, rel
D = 64
for n, recs, out, back in (("fp8", ep, D + 1, 2 * D), ("fp32", ep32, 4 * D, 4 * D)):
    for r in recs:
        e = r["ep"]
        assert e["dispatch_rows_per_rank"] > 0, e
        assert e["dispatch_bytes_per_rank"] == e["dispatch_rows_per_rank"] * out, (n, e)
        assert e["combine_bytes_per_rank"] == e["dispatch_rows_per_rank"] * back, (n, e)
    e = recs[0]["ep"]
    print(f"{n}: step 1 per rank {e['dispatch_rows_per_rank']:.0f} rows: dispatch {e['dispatch_bytes_per_rank']:.0f} B "
          f"({out} B/row), combine {e['combine_bytes_per_rank']:.0f} B ({back} B/row)")
PY
    echo "$output"
    [ "$status" -eq 0 ]
}
