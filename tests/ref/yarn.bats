#!/usr/bin/env bats
# YaRN (spec 7) as ds-extend-ctx writes and resolves it, against transformers' DeepSeek-V3 RoPE and
# attention: inverse frequencies, cos/sin factor and softmax scale for the same rope_scaling.

setup() {
    [ -x "$DS_BIN/ds-extend-ctx" ] || skip "ds-extend-ctx not built"
    [ -x "$DS_PY" ] || skip "no reference python"
}

check() { # extra python flags, then ds-extend-ctx arguments
    local flags=()
    while [ "${1:-}" = --deepseek-differs ]; do flags+=("$1"); shift; done
    "$DS_BIN/ds-extend-ctx" --print-rope "$@" >"$BATS_TEST_TMPDIR/ours.json"
    "$DS_PY" "$DS_ROOT/tests/ref/yarn_ref.py" "$BATS_TEST_TMPDIR/ours.json" "${flags[@]}"
}

with_rope() { # JSON rope_scaling object -> a tiny config carrying it
    "$DS_PY" - "$DS_ROOT/share/configs/tiny.json" "$1" >"$BATS_TEST_TMPDIR/cfg.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["rope_scaling"] = json.loads(sys.argv[2])
d["max_position_embeddings"] = 4096
print(json.dumps(d, indent=2))
PY
    echo "$BATS_TEST_TMPDIR/cfg.json"
}

@test "DeepSeek-V3 671B (s=40, L0=4096): dims 0-10 kept, 23-31 divided by 40, softmax scale 0.1352338" {
    run check --config "$DS_ROOT/share/configs/deepseek-v3-671b.json"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"32 frequencies"*"11 kept, 9 divided by 40"*"softmax scale 0.1352338, cos factor 1.0000000"* ]]
}

@test "a first phase on a plain config (factor 4, L0 128, V3's defaults) agrees" {
    run check --config "$DS_ROOT/share/configs/tiny.json" --factor 4 --original-len 128
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "what the first phase writes: yarn, factor, L0, betas, mscales, max_position_embeddings = L0 x s" {
    "$DS_BIN/ds-extend-ctx" --print-rope --config "$DS_ROOT/share/configs/tiny.json" --factor 4 --original-len 128 \
        >"$BATS_TEST_TMPDIR/o.json"
    run "$DS_PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))["config"]
r = d["rope_scaling"]
print(r["type"], r["factor"], r["original_max_position_embeddings"], r["beta_fast"], r["beta_slow"],
      r["mscale"], r["mscale_all_dim"], d["max_position_embeddings"])' "$BATS_TEST_TMPDIR/o.json"
    echo "$output"
    [ "$output" = "yarn 4.0 128 32.0 1.0 1.0 1.0 512" ]
}

@test "V2-style mscale 0.707 / 0.707, factor 8, agrees" {
    run check --config "$DS_ROOT/share/configs/tiny.json" --factor 8 --original-len 64 --mscale 0.707 --mscale-all-dim 0.707
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "other betas (16 / 2), factor 16, rope_theta 50000 agree" {
    sed 's/"rope_theta": 10000.0/"rope_theta": 50000.0/' "$DS_ROOT/share/configs/tiny.json" >"$BATS_TEST_TMPDIR/t.json"
    run check --config "$BATS_TEST_TMPDIR/t.json" --factor 16 --original-len 256 --beta-fast 16 --beta-slow 2
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "a 64-dim rope with a non-integer factor (2.5) agrees" {
    run check --config "$DS_ROOT/share/configs/deepseek-v3-671b.json" --factor 2.5 --original-len 1000
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "truncate false (no floor/ceil of the correction range) agrees" {
    run check --config "$(with_rope '{"type": "yarn", "factor": 6, "original_max_position_embeddings": 300, "beta_fast": 32, "beta_slow": 1, "mscale": 1, "mscale_all_dim": 1, "truncate": false}')"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "an explicit attention_factor agrees" {
    run check --config "$(with_rope '{"type": "yarn", "factor": 4, "original_max_position_embeddings": 512, "attention_factor": 1.25, "mscale_all_dim": 1}')"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "degenerate range (L0 = 4: low = high = 0, +0.001) agrees" {
    run check --config "$(with_rope '{"type": "yarn", "factor": 2, "original_max_position_embeddings": 4, "mscale": 1, "mscale_all_dim": 1}')"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "no mscales at all: both use 0.1 ln s + 1 on cos/sin and leave the softmax scale" {
    run check --config "$(with_rope '{"type": "yarn", "factor": 4, "original_max_position_embeddings": 512}')"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"cos factor 1.1386294"* ]]
}

# exactly one of the mscales: transformers' factor 0.1 ln s + 1 on cos/sin; DeepSeek's remote code differs
one_mscale() { # rope_scaling JSON, the expected tail of the report line
    run check --deepseek-differs --config "$(with_rope "$1")"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"$2"* ]]
}

@test "mscale without mscale_all_dim: cos factor 0.1 ln 4 + 1 as transformers, softmax scale unscaled" {
    one_mscale '{"type": "yarn", "factor": 4, "original_max_position_embeddings": 512, "mscale": 0.707}' \
        "softmax scale 0.2041242, cos factor 1.1386294 (DeepSeek's remote code 1.0980110)"
}

@test "mscale_all_dim without mscale: cos factor 0.1 ln 4 + 1 as transformers, softmax scale x m(s, 1)^2" {
    one_mscale '{"type": "yarn", "factor": 4, "original_max_position_embeddings": 512, "mscale_all_dim": 1}' \
        "softmax scale 0.2646423, cos factor 1.1386294 (DeepSeek's remote code 1.0000000)"
}

@test "V3's factor 40 with mscale_all_dim 0.707 alone: cos factor 1.369 as transformers (DeepSeek's remote code 1.086)" {
    one_mscale '{"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "mscale_all_dim": 0.707}' \
        "cos factor 1.3688879 (DeepSeek's remote code 1.0857264)"
}

@test "both mscales, unequal (1 / 0.707), factor 8: the ratio m(s, mscale) / m(s, mscale_all_dim)" {
    run check --config "$(with_rope '{"type": "yarn", "factor": 8, "original_max_position_embeddings": 512, "mscale": 1, "mscale_all_dim": 0.707}')"
    echo "$output"
    [ "$status" -eq 0 ]
}
