#!/usr/bin/env bats
# Low-precision training modes beyond --fp8's exact GEMM (issue 23): V3's bf16 baseline (--bf16, ops/bf16.h),
# Hopper's accumulation model (--fp8-accum hopper, --fp8-promote) in training, and the refusals of options
# that make no sense together.
# The model's numerics are tested in tests/unit/test_fp8.c (hopper_promotion) and against the exact-rational
# reference tests/ref/fp8_accum.py (tests/ref/fp8.bats).

bats_require_minimum_version 1.5.0
load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    mkdir -p "$T/shards"
    tiny_data "$T"
}

train() { # one thread, seed 1, tiny.json on the GPL text; more options follow
    "$DS_BIN/ds-pretrain" --threads 1 --peak-tflops 0.1 --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" \
        --tokenizer "$T/tok.json" --seq-len 64 --batch 4 --log-every 0 --seed 1 -q "$@"
}

@test "refusals: --fp8-accum hopper without --fp8, --fp8-promote without hopper, a negative N_C, an unknown model" {
    usage_error "--fp8-accum hopper models FP8 GEMMs: it needs --fp8" --fp8-accum hopper
    usage_error "--fp8-promote 64: promotion applies to --fp8 --fp8-accum hopper only" --fp8 --fp8-promote 64
    usage_error "--fp8-promote: -1 is out of range" --fp8 --fp8-accum hopper --fp8-promote -1
    usage_error "--fp8-accum" --fp8 --fp8-accum ampere
    usage_error "--bf16 and --fp8 are two precisions for the same GEMMs: give one" --bf16 --fp8
}

# The tolerance. u = 2^-8 is bf16's unit roundoff (8 significant bits, round to nearest). Step 1 runs
# the same weights, so only the forward's rounding differs: every stored value is off by at most u relative,
# with signs that average out over the 256 tokens' losses, so the mean loss moves by about u / sqrt(256) =
# u/16 (2.4e-4; measured 8e-6). Later steps also differ in the weights: gradients computed from bf16
# tensors are off by O(u) relative, and Adam's steps built from them by O(u) of the step; over 20 steps
# at lr 3e-3 (loss 6.24 -> 4.92) we allow u (0.39%) per step (measured at most 0.17%).
@test "--bf16 follows fp32 for 20 steps within bf16 tolerance; master weights stay fp32" {
    local d=$BATS_TEST_TMPDIR
    train -o "$d/f" --steps 20 --lr 3e-3 --metrics "$d/f.jsonl"
    train -o "$d/b" --steps 20 --lr 3e-3 --metrics "$d/b.jsonl" --bf16
    run "$DS_PY" - "$d" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
def run(n):
    recs = [json.loads(l) for l in open(f"{d}/{n}.jsonl")]
    return recs[0]["config"], [r["loss"] for r in recs[1:] if "loss" in r]
(cf, lf), (cb, lb) = run("f"), run("b")
assert cb.get("bf16") is True and "bf16" not in cf, "the record says whether bf16 was on"
u = 2.0 ** -8
rel = [abs(b - f) / f for f, b in zip(lf, lb)]
print("fp32", lf[0], "->", lf[-1], "bf16", lb[0], "->", lb[-1], "max rel", max(rel), "step 1", rel[0])
assert len(lf) == len(lb) == 20 and lf[-1] < 0.85 * lf[0], "fp32 learns"
assert 0 < rel[0] < u / 16, f"step 1: only the forward's rounding: {rel[0]:.3g}"
assert max(rel) < u, f"every step within u of fp32: {max(rel):.3g}"
assert lb != lf, "bf16 is not fp32"
w = load_file(f"{d}/b/model.safetensors")
q = w["model.layers.1.mlp.experts.3.up_proj.weight"]
assert q.dtype == np.float32 and np.any(q.view(np.uint32) & 0xFFFF), "master weights fp32, not on the bf16 grid"
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

# --bf16 runs on the GPU path too (ops/bf16.h over the CUDA table; tests/gpu/test_tools.sh and test_bf16_cuda.cu
# check it on a GPU). Here, with no GPU, --bf16 --device cuda is no longer refused for being bf16: the one line
# a user sees is the missing GPU (before: "bf16 training is emulated on the CPU in this build" where a GPU was).
@test "--bf16 --device cuda: accepted; without a GPU the one error line names the missing GPU" {
    ! nvidia-smi -L >/dev/null 2>&1 || skip "a GPU is present: tests/gpu/test_tools.sh trains --bf16 on it"
    run --separate-stderr train -o "$BATS_TEST_TMPDIR/o" --steps 1 --bf16 --device cuda
    echo "$stderr"
    [ "$status" -eq 1 ]
    [ "$(printf '%s\n' "$stderr" | wc -l)" -eq 1 ]
    [[ "$stderr" == "ds-pretrain: error: --device cuda: "* ]]
    [[ "$stderr" != *"bf16"* ]]
    [ ! -e "$BATS_TEST_TMPDIR/o" ]
    # what cannot work together is still refused first, with its own line
    usage_error "--bf16 and --fp8 are two precisions for the same GEMMs: give one" --bf16 --fp8 --device cuda
}

@test "--fp8-accum hopper trains: close to the exact FP8 GEMM, not identical, promotion recorded; every tool takes it" {
    local d=$BATS_TEST_TMPDIR
    train -o "$d/e" --steps 2 --fp8 --metrics "$d/e.jsonl"
    train -o "$d/h" --steps 2 --fp8 --fp8-accum hopper --metrics "$d/h.jsonl"
    train -o "$d/h0" --steps 2 --fp8 --fp8-accum hopper --fp8-promote 0 --metrics "$d/h0.jsonl"
    run "$DS_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
def run(n):
    recs = [json.loads(l) for l in open(f"{d}/{n}.jsonl")]
    return recs[0]["config"], [r["loss"] for r in recs[1:]]
(ce, le), (ch, lh), (c0, l0) = run("e"), run("h"), run("h0")
assert "fp8_hopper_promote" not in ce and ch["fp8_hopper_promote"] == 128 and c0["fp8_hopper_promote"] == 0, (ce, ch, c0)
print("exact", le, "hopper/128", lh, "hopper/0", l0)
assert le != lh and lh != l0, "the accumulation changes the numbers"
for a, b in zip(le, lh):
    assert abs(a - b) / a < 1e-3, f"hopper with promotion within 0.1% of the exact GEMM: {a} vs {b}"
PY
    echo "$output"
    [ "$status" -eq 0 ]
    for tool in ds-sft ds-extend-ctx ds-rl; do
        run "$DS_BIN/$tool" --help
        [[ "$output" == *"--fp8-accum MODEL"* && "$output" == *"--fp8-promote N"* && "$output" == *"--bf16 "* ]] || { echo "$tool"; false; }
    done
}

# ---- --fp8's attention output kept in E5M6 (lib/fp8/e5m6.h, model.h attn_out_e5m6): V3's recipe by default,
# --fp8-attn-out f32 for comparison. The numerics (codec, o_proj's Fprop/Dgrad/Wgrad against numpy, what the
# network reads, the tapes' bytes) are tests/unit/test_e5m6.c's, with tests/ref/e5m6_ref.py run by
# tests/ref/fp8.bats.

@test "E5M6 refusals: --fp8-attn-out without --fp8, an unknown format; every training tool takes the option" {
    usage_error "--fp8-attn-out e5m6: the attention output's cache format applies to --fp8 only" --fp8-attn-out e5m6
    usage_error "--fp8-attn-out f32: the attention output's cache format applies to --fp8 only" --bf16 --fp8-attn-out f32
    usage_error "--fp8-attn-out" --fp8 --fp8-attn-out e4m3
    for tool in ds-pretrain ds-sft ds-extend-ctx ds-rl; do
        run "$DS_BIN/$tool" --help
        [[ "$output" == *"--fp8-attn-out FMT"* ]] || { echo "$tool"; false; }
    done
}

# Tolerances. Step 1 runs the same weights in both FP8 runs, so the E5M6 rounding of the attention output
# (relative error at most u = 2^-7, signs averaging out over the 256 tokens' losses) is all that separates
# them there: about u / sqrt(256) = u/16 (3e-4; measured 6e-6). Later steps differ in the weights too, and
# the loss of this lr-3e-3 run bumps at steps 18-19 (5.00 -> 5.27 -> 4.92 in fp32), where runs that differ by
# rounding part most: every FP8 run stays within 1% of fp32 and of the other cache at every step (measured
# at most 0.81%, at the bump; 0.2% elsewhere) and within V3's 0.25% on average over the 20 steps (measured
# 0.11% E5M6 vs fp32, 0.10% E5M6 vs the f32 cache).
@test "--fp8 keeps the attention output in E5M6 by default: 20 steps within tolerance of fp32 and of --fp8-attn-out f32" {
    # with V3's MoE FP8 (the default) as well: --fp8-moe-cache / --fp8-dispatch stay on in all three runs
    local d=$BATS_TEST_TMPDIR
    train -o "$d/f" --steps 20 --lr 3e-3 --metrics "$d/f.jsonl"
    train -o "$d/e" --steps 20 --lr 3e-3 --metrics "$d/e.jsonl" --fp8
    train -o "$d/g" --steps 20 --lr 3e-3 --metrics "$d/g.jsonl" --fp8 --fp8-attn-out f32
    run "$DS_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
def run(n):
    recs = [json.loads(l) for l in open(f"{d}/{n}.jsonl")]
    return recs[0]["config"], [r["loss"] for r in recs[1:] if "loss" in r]
(cf, lf), (ce, le), (cg, lg) = run("f"), run("e"), run("g")
assert "fp8_attn_out" not in cf and ce["fp8_attn_out"] == "e5m6" and cg["fp8_attn_out"] == "f32", (cf, ce, cg)
u = 2.0 ** -7
eg = [abs(a - b) / b for a, b in zip(le, lg)]
ef = [abs(a - b) / b for a, b in zip(le, lf)]
gf = [abs(a - b) / b for a, b in zip(lg, lf)]
print("fp32", lf[0], "->", lf[-1], "e5m6", le[0], "->", le[-1], "f32 cache", lg[0], "->", lg[-1])
print("e5m6 vs f32 cache: step 1 %.3g max %.3g; vs fp32 max %.3g (f32 cache %.3g)" % (eg[0], max(eg), max(ef), max(gf)))
assert len(lf) == len(le) == len(lg) == 20 and lf[-1] < 0.85 * lf[0], "fp32 learns"
assert 0 < eg[0] < u / 16, f"step 1: only the E5M6 rounding differs: {eg[0]:.3g}"
mean = lambda r: sum(r) / len(r)
print("means: e5m6 vs f32 cache %.3g, vs fp32 %.3g, f32 cache vs fp32 %.3g" % (mean(eg), mean(ef), mean(gf)))
assert max(eg) < 0.01 and max(ef) < 0.01 and max(gf) < 0.01, f"every step within 1%: {max(eg):.3g} {max(ef):.3g} {max(gf):.3g}"
assert mean(eg) < 2.5e-3 and mean(ef) < 2.5e-3 and mean(gf) < 2.5e-3, "within 0.25% on average"
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

# ---- --bf16 on AMX tiles (ops/gemm_bf16.h, issue 24): the tools say which GEMM runs, AMX and the sgemm
# fallback (DS_AMX=0) train the same numbers up to the order of the fp32 sums, and a --bf16 run resumes bit
# for bit. The GEMMs' numerics are tests/unit/test_gemm_bf16.c's. Two threads: the products split across them.

# The tolerance. Both runs round the same operands to bf16 and accumulate in fp32; only the order of the fp32
# sums differs (relative 2^-24 per term), which moves a stored bf16 output to its neighbour (2^-8) only where
# the sum lies within that of a rounding boundary. Step 1 (same weights) moves by about 1e-8 (measured
# 1.8e-8); later steps carry the flips into the weights: within u/16 = 2.4e-4 of each other (measured at
# most 6e-5 over 8 steps), where --bf16 and fp32 differ by up to 1.7e-3.
@test "--bf16: the log and the record name the GEMM; AMX and DS_AMX=0 train within summation-order tolerance" {
    local d=$BATS_TEST_TMPDIR
    train --threads 2 -o "$d/a" --steps 6 --lr 3e-3 --metrics "$d/a.jsonl" --bf16
    DS_AMX=0 train --threads 2 -o "$d/s" --steps 6 --lr 3e-3 --metrics "$d/s.jsonl" --bf16
    train --threads 2 -o "$d/f" --steps 1 --lr 3e-3 --metrics "$d/f.jsonl"
    run --separate-stderr "$DS_BIN/ds-pretrain" --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" \
        --seq-len 64 --batch 4 --steps 1 -o "$d/l" --bf16
    [ "$status" -eq 0 ]
    want="bf16    GEMMs: sgemm on bf16-rounded operands (this CPU has no AMX-BF16)" amx=sgemm
    if grep -qw amx_bf16 /proc/cpuinfo; then want="bf16    GEMMs: AMX bf16 tiles" amx=amx; fi
    [[ "$stderr" == *"$want"* ]] || { echo "$stderr"; false; }
    run "$DS_PY" - "$d" "$amx" <<'PY'
import json, sys
d = sys.argv[1]
recs = lambda n: [json.loads(l) for l in open(f"{d}/{n}.jsonl")]
loss = lambda n: [r["loss"] for r in recs(n) if "loss" in r]
a, s, f = loss("a"), loss("s"), loss("f")
cfg = lambda n: recs(n)[0]["config"]
assert cfg("a")["bf16_gemm"] == sys.argv[2] and cfg("s")["bf16_gemm"] == "sgemm" and "bf16_gemm" not in cfg("f")
rel = [abs(x - y) / y for x, y in zip(a, s)]
print("AMX", a, "\nsgemm", s, "\nrel", rel, "\nfp32 step 1", f[0])
assert len(a) == len(s) == 6
assert rel[0] < 1e-6, f"step 1: summation order only: {rel[0]:.3g}"
assert max(rel) < 2.0 ** -12, f"every step within u/16: {max(rel):.3g}"
assert abs(a[0] - f[0]) / f[0] > 10 * rel[0], "and both are bf16, not fp32"
PY
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "--bf16 on AMX: SIGTERM saves, --resume continues bit for bit" {
    interrupt_and_resume step 3 "$DS_BIN/ds-pretrain" --peak-tflops 0.1 --threads 2 \
        --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" --steps 40 --batch 4 --seq-len 64 --lr 3e-3 \
        --log-every 0 --bf16
}

# ---- --bf16's cached weight packs (ops/gemm_bf16.h, issue 24): the weights' bf16 AMX packs are built once
# per optimizer step and reused by every forward, Dgrad and micro-batch. The cache may change no number:
# cached and uncached (DS_BF16_PACK=0) runs agree bit for bit, and check mode (DS_BF16_PACK=check: every reuse
# compared with a fresh pack; a difference fails the run) proves that every weight write announced itself
# (ops.h params_changed). The SIGTERM/--resume test above runs with the cache too.
packs() { # DIR MODE ARGS...: a 4-step --bf16 run with 2 micro-batches per step, --ema, the cache in MODE
    local dir=$1 mode=$2
    shift 2
    DS_BF16_PACK=$mode train --threads 2 --micro-batch 2 --lr-schedule 0.002 --ema 0.9 --bf16 -o "$dir" \
        --metrics "$dir.jsonl" "$@"
}

same_run() { # A B: the same weights, optimizer state, EMA and step records
    cmp "$1/model.safetensors" "$2/model.safetensors"
    cmp "$1/optimizer.safetensors" "$2/optimizer.safetensors"
    cmp "$1/ema/model.safetensors" "$2/ema/model.safetensors"
    diff <(numbers "$1.jsonl") <(numbers "$2.jsonl")
}

@test "--bf16 weight packs: cached = uncached bit for bit (2 micro-batches, --ema, a resume); none stale in check mode" {
    local d=$BATS_TEST_TMPDIR
    packs "$d/off" 0 --steps 4
    packs "$d/on" 1 --steps 4
    same_run "$d/off" "$d/on"
    for m in 0 1; do # resumed at step 2 (a run of its own: its schedule ends at step 2), both ways
        packs "$d/r$m" $m --steps 2
        packs "$d/r$m" $m --steps 4 --resume "$d/r$m"
    done
    same_run "$d/r0" "$d/r1"
    run --separate-stderr env DS_BF16_PACK=check "$DS_BIN/ds-pretrain" --threads 2 --peak-tflops 0.1 \
        --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" --tokenizer "$T/tok.json" --seq-len 64 --batch 4 \
        --micro-batch 2 --lr-schedule 0.002 --ema 0.9 --bf16 --seed 1 --steps 4 --log-every 0 -o "$d/chk"
    echo "$stderr"
    [ "$status" -eq 0 ]
    if grep -qw amx_bf16 /proc/cpuinfo; then # built once a step, reused by the other micro-batch
        line=$(printf '%s\n' "$stderr" | grep 'bf16    weight packs: ')
        [[ "$line" =~ ([0-9]+)\ built,\ ([0-9]+)\ reused ]]
        [ "${BASH_REMATCH[1]}" -gt 0 ] && [ "${BASH_REMATCH[2]}" -gt 0 ]
    fi
}

@test "--bf16 weight packs under MPI: ZeRO over 2 ranks, --ep 2, --pp 2: cached = uncached bit for bit, none stale" {
    load mpi_helpers
    local d=$BATS_TEST_TMPDIR
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1])); c["n_group"] = 1; c["topk_group"] = 1  # unlimited routing: any --ep
json.dump(c, open(sys.argv[2], "w"), indent=1)' "$DS_ROOT/share/configs/tiny.json" "$d/free.json"
    local A="--config $d/free.json --peak-tflops 0.1 --threads 1 --data $T/shards --batch 8
        --micro-batch 1 --seq-len 32 --seed 3 --log-every 0 --steps 3 --lr-schedule 0.002 --bf16 -q"
    for lay in "" "--ep 2" "--pp 2"; do
        local n=${lay// /}
        DS_BF16_PACK=0 mpi -np 2 -x DS_BF16_PACK "$DS_BIN/ds-pretrain" $A $lay -o "$d/off$n" --metrics "$d/off$n.jsonl"
        mpi -np 2 "$DS_BIN/ds-pretrain" $A $lay -o "$d/on$n" --metrics "$d/on$n.jsonl"
        DS_BF16_PACK=check mpi -np 2 -x DS_BF16_PACK "$DS_BIN/ds-pretrain" $A $lay -o "$d/chk$n"
        for f in "$d/off$n"/*.safetensors; do cmp "$f" "$d/on$n/${f##*/}"; done
        diff <(numbers "$d/off$n.jsonl") <(numbers "$d/on$n.jsonl")
    done
}
