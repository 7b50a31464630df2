#!/usr/bin/env bats
# --profile (ops/prof.h, train/profile.h): the per-region and per-op table at the end of a training run and
# its {"profile": ...} metrics record. The regions add up to the trainer's measured step time, the GEMM
# FLOPs of each class equal the docs/METRICS.md count computed here from the config (recomputation
# reported apart), and profiling changes no number of the run.

bats_require_minimum_version 1.5.0

load train_helpers

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    tiny_data "$T"
    "$DS_PY" -c '
import json, sys
c = json.load(open(sys.argv[1]))
json.dump(c, open(sys.argv[2] + "/mtp.json", "w"))
c["num_nextn_predict_layers"] = 0
json.dump(c, open(sys.argv[2] + "/nomtp.json", "w"))' "$DS_ROOT/share/configs/tiny.json" "$T"
}

pretrain() {
    "$DS_BIN/ds-pretrain" --data "$T/shards" --steps 4 --batch 4 --micro-batch 2 --seq-len 32 --threads 1 --seed 1 \
        --peak-tflops 0.1 --val-frac 0 "$@"
}

# checks of a metrics file: the profile record against the step records and the config
check() { # metrics.jsonl config.json B T micro-batch
    "$DS_PY" - "$@" <<'EOF2'
import json, sys
path, cfgp, B, T, MB = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
recs = [json.loads(l) for l in open(path)]
conf = recs[0]["config"]
steps = [r for r in recs if "step" in r]
prof = [r["profile"] for r in recs if "profile" in r]
assert len(prof) == 1, len(prof)
p = prof[0]
# the first step of the run is left out
assert p["steps"] == len(steps) - 1, (p["steps"], len(steps))
ms = sum(r["ms"] for r in steps[1:]) / p["steps"]
assert abs(p["step_ms"] - ms) <= 1e-9 * ms, (p["step_ms"], ms)
regions = p["regions"]
for k in ("other", "data", "embed", "attn", "dense", "moe", "router", "shared", "experts", "head", "mtp", "loss", "optim"):
    assert k in regions, k
total = sum(v["ms"] for v in regions.values())
# exclusive region times cover the step: they add up to the trainer's measure within 2% (clock reads)
assert abs(total - p["step_ms"]) <= 0.02 * p["step_ms"], (total, p["step_ms"])
ops = sum(v["ms"] for v in p["ops"].values())
assert 0 < ops <= p["step_ms"] and abs(p["outside_ops_ms"] - (p["step_ms"] - ops)) < 1e-6 * p["step_ms"]
gemm = sum(v.get("gemm_ms", 0) for v in regions.values())
assert abs(p["gemm_ms"] - gemm) < 1e-6 * gemm and 0 < p["outside_gemm_share"] < 1
# process CPU time beside every wall time: the regions' CPU times add up to the step's; with --threads 1
# the step's CPU time stays within two threads' wall time (the compute thread, and OpenBLAS's pool thread,
# which a CI run at 87370b2 once saw busy: 7.1 ms of CPU in a 3.6 ms step), 5% and 2 ms for clock
# granularity; the GEMMs' and each op's CPU time lie inside their region's and the step's
cpu = sum(v["cpu_ms"] for v in regions.values())
assert 0 < p["step_cpu_ms"] and abs(cpu - p["step_cpu_ms"]) <= 1e-6 * p["step_cpu_ms"], (cpu, p["step_cpu_ms"])
assert p["step_cpu_ms"] <= 2 * 1.05 * p["step_ms"] + 2, (p["step_cpu_ms"], p["step_ms"])
for k, v in regions.items():
    assert 0 <= v["cpu_ms"] <= 2 * 1.05 * v["ms"] + 2, (k, v)
    if "gemm_ms" in v:
        assert 0 <= v["gemm_cpu_ms"] <= v["cpu_ms"] + 1e-6 and v["gemm_cpu_ms"] <= 2 * 1.05 * v["gemm_ms"] + 2, (k, v)
assert abs(p["gemm_cpu_ms"] - sum(v.get("gemm_cpu_ms", 0) for v in regions.values())) <= 1e-6 * p["gemm_cpu_ms"]
assert p["gemm_cpu_ms"] > 0
for k, v in p["ops"].items():
    assert 0 <= v["cpu_ms"] <= 2 * 1.05 * v["ms"] + 2, (k, v)

# the METRICS.md count, per GEMM class, from the config
c = json.load(open(cfgp))
D, H, L, V = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"], c["vocab_size"]
Rq, Rkv, dn, dr, dv = c["q_lora_rank"], c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
E, K, Ie, I = c["n_routed_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"], c["intermediate_size"]
S, Dm, kd = c["n_shared_experts"], c["num_nextn_predict_layers"], c["first_k_dense_replace"]
attn = D * Rq + Rq * H * (dn + dr) + D * (Rkv + dr) + Rkv * H * (dn + dv) + H * dv * D
n = B * T
nm = B * (T - 1)  # the MTP module runs on the T-1 positions of each row that have a next token
moe_layers = L - kd
expect = {"attn": attn * (L * n + Dm * nm), "dense": 3 * D * I * kd * n, "router": D * E * (moe_layers * n + Dm * nm),
          "shared": 3 * D * S * Ie * (moe_layers * n + Dm * nm), "experts": K * 3 * D * Ie * (moe_layers * n + Dm * nm),
          "head": V * D * (n + Dm * nm), "mtp": 2 * D * D * Dm * nm}
# the backward recomputes the MLA projections before the output one, and the head's logits, except the
# main head's when one chunk (4M floats, at least 16 rows) held a micro-batch's logits and no MTP head
# overwrote them (head.c)
one_chunk = max(16, (4 << 20) // V) >= MB * T
recompute = {"attn": 2 * (attn - H * dv * D) * (L * n + Dm * nm),
             "head": 2 * V * D * ((n if Dm or not one_chunk else 0) + Dm * nm)}
for k, params in expect.items():
    r = regions[k]
    model = r["gemm_flop"] - r["gemm_flop_recompute"]
    assert model == 6 * params, (k, model, 6 * params)
    assert r["gemm_flop_recompute"] == recompute.get(k, 0), (k, r["gemm_flop_recompute"])
    assert r["gemm_ms"] > 0 if params else r["gemm_ms"] == 0, (k, r)
if Dm == 0:
    # with every position counted, the classes plus the norms' 6N and the attention scores are the config
    # record's FLOPs per token (docs/METRICS.md) exactly
    norms = L * (2 * D + Rq + Rkv) + D + moe_layers * E  # RMSNorm gains, final norm, expert biases
    scores = 6 * L * H * T * (dn + dr + dv)
    model = sum(regions[k]["gemm_flop"] - regions[k]["gemm_flop_recompute"] for k in expect)
    fpt = (model / n + 6 * norms + scores)
    assert abs(fpt - conf["flops_per_token"]) <= 1e-9 * fpt, (fpt, conf["flops_per_token"])
print("ok", p["step_ms"], total, ops)
EOF2
}

@test "--profile: regions add up to the step, GEMM FLOPs per class are the METRICS.md count, the table is printed" {
    run --separate-stderr pretrain --config "$T/nomtp.json" -o "$BATS_TEST_TMPDIR/ck" --profile --metrics "$BATS_TEST_TMPDIR/m.jsonl"
    echo "$stderr" | tail -50
    [ "$status" -eq 0 ]
    check "$BATS_TEST_TMPDIR/m.jsonl" "$T/nomtp.json" 4 32 2
    [[ "$stderr" == *"profile 3 step(s)"* ]]
    for row in attention "dense FFN" "MoE router" "shared experts" "routed experts" head optimizer sum moe_ffn_fwd moe_ffn_bwd \
               attn_bwd swiglu_fwd "outside ops (host code)" "outside GEMMs" "GFLOP per CPU-second" "threads busy"; do
        [[ "$stderr" == *"$row"* ]] || { echo "missing row: $row"; false; }
    done
}

@test "--profile with MTP: the module's projection and its layer counted on its T-1 positions" {
    run --separate-stderr pretrain --config "$T/mtp.json" -o "$BATS_TEST_TMPDIR/ck" --profile --metrics "$BATS_TEST_TMPDIR/m.jsonl"
    [ "$status" -eq 0 ]
    check "$BATS_TEST_TMPDIR/m.jsonl" "$T/mtp.json" 4 32 2
    [[ "$stderr" == *"MTP projection"* ]]
}

@test "--profile changes no number of the run; without it there is no table and no record" {
    pretrain --config "$T/mtp.json" -o "$BATS_TEST_TMPDIR/a" -q --metrics "$BATS_TEST_TMPDIR/a.jsonl"
    pretrain --config "$T/mtp.json" -o "$BATS_TEST_TMPDIR/b" -q --profile --metrics "$BATS_TEST_TMPDIR/b.jsonl"
    ! grep -q '"profile"' "$BATS_TEST_TMPDIR/a.jsonl"
    grep -q '"profile"' "$BATS_TEST_TMPDIR/b.jsonl"
    diff <(numbers "$BATS_TEST_TMPDIR/a.jsonl") <(numbers "$BATS_TEST_TMPDIR/b.jsonl")
    cmp "$BATS_TEST_TMPDIR/a/model.safetensors" "$BATS_TEST_TMPDIR/b/model.safetensors"
}

# what OpenBLAS detects on this machine by itself, and the kernel libds should run: the detected one unless
# it predates AVX2 on a CPU with AVX2/AVX-512 (OpenBLAS 0.3.21 reports Prescott on CPUs it does not know)
blas_expect() {
    env -u OPENBLAS_CORETYPE "$DS_PY" -c '
import ctypes
b = ctypes.CDLL("libopenblas.so.0")
b.openblas_get_corename.restype = ctypes.c_char_p
det = b.openblas_get_corename().decode()
flags = set(next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split(":")[1].split())
old = {"prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge", "atom", "nano", "barcelona", "opteron",
       "opteron(sse3)", "bobcat", "katmai", "coppermine", "northwood", "banias", "athlon", "unknown"}
want = det
if det.lower() in old:
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        want = "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        want = "Haswell"
print(det, want)'
}

@test "the log header names the OpenBLAS kernel; a pre-AVX2 kernel detected on a newer CPU is replaced" {
    read -r det want < <(blas_expect)
    run --separate-stderr env -u OPENBLAS_CORETYPE "$DS_BIN/ds-pretrain" --config "$T/nomtp.json" --data "$T/shards" \
        --steps 1 --batch 2 --seq-len 16 --threads 1 --peak-tflops 0.1 --val-frac 0 -o "$BATS_TEST_TMPDIR/ck"
    [ "$status" -eq 0 ]
    echo "$stderr" | grep '^blas'
    if [ "$det" = "$want" ]; then
        [[ "$stderr" == *"blas    OpenBLAS kernel $det (detected)"* ]]
    else
        [[ "$stderr" == *"blas    OpenBLAS kernel $want (OPENBLAS_CORETYPE=$want set by libds: OpenBLAS detected $det, a pre-AVX2 kernel, on this CPU)"* ]]
    fi
    run --separate-stderr env OPENBLAS_CORETYPE=Haswell "$DS_BIN/ds-pretrain" --config "$T/nomtp.json" --data "$T/shards" \
        --steps 1 --batch 2 --seq-len 16 --threads 1 --peak-tflops 0.1 --val-frac 0 -o "$BATS_TEST_TMPDIR/ck2"
    [ "$status" -eq 0 ]
    [[ "$stderr" == *"blas    OpenBLAS kernel Haswell (OPENBLAS_CORETYPE=Haswell from the environment)"* ]]
}
