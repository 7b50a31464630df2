#!/usr/bin/env bats
# io/config against transformers' DeepseekV3Config: every key we write reads back the same there,
# our defaults are its defaults, and our parameter counts equal the modules it builds.

setup() {
    for u in $DS_UNITS; do case $u in */test_config) UNIT=$DS_ROOT/$u ;; esac; done
    [ -x "$UNIT" ] || skip "test_config not built"
}

compare() { # input.json
    DS_CONFIG_DUMP="$1:$BATS_TEST_TMPDIR/ours.json" "$UNIT" reference_dump >"$BATS_TEST_TMPDIR/tap" || {
        cat "$BATS_TEST_TMPDIR/tap"; false; }
    grep -q "^ok 3" "$BATS_TEST_TMPDIR/tap"
    "$DS_PY" "$DS_ROOT/tests/ref/config_ref.py" "$BATS_TEST_TMPDIR/ours.json" "$1"
}

@test "share/configs/tiny.json agrees with transformers" { compare "$DS_ROOT/share/configs/tiny.json"; }
@test "share/configs/demo.json agrees with transformers" { compare "$DS_ROOT/share/configs/demo.json"; }

@test "the 671B config agrees with transformers (671.03B total, 37.55B activated)" {
    run compare "$DS_ROOT/share/configs/deepseek-v3-671b.json"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"total 671026419200 activated 37552297472: ok"* ]]
}

@test "a config of model_type alone gets transformers' defaults" {
    echo '{"model_type": "deepseek_v3"}' >"$BATS_TEST_TMPDIR/empty.json"
    compare "$BATS_TEST_TMPDIR/empty.json"
}

@test "a config saved by transformers v5 (rope_parameters, dtype) reads the same" {
    "$DS_PY" - "$DS_ROOT/share/configs/tiny.json" "$BATS_TEST_TMPDIR/hf" <<'PY'
import json, sys
from transformers import DeepseekV3Config
d = json.load(open(sys.argv[1]))
d["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
DeepseekV3Config(**d).save_pretrained(sys.argv[2])
PY
    grep -q rope_parameters "$BATS_TEST_TMPDIR/hf/config.json"
    compare "$BATS_TEST_TMPDIR/hf/config.json"
}

@test "no query compression (q_lora_rank null) counts like transformers' q_proj" {
    "$DS_PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["q_lora_rank"]=None; json.dump(d, open(sys.argv[2],"w"))' \
        "$DS_ROOT/share/configs/demo.json" "$BATS_TEST_TMPDIR/noq.json"
    compare "$BATS_TEST_TMPDIR/noq.json"
}

@test "JSON writer numbers and strings match Python's json.dumps" {
    "$DS_PY" "$DS_ROOT/tests/ref/json_redump.py" make "$BATS_TEST_TMPDIR/in.json"
    DS_JSON_REDUMP="$BATS_TEST_TMPDIR/in.json:$BATS_TEST_TMPDIR/out.json" "$UNIT" reference_json_redump
    "$DS_PY" "$DS_ROOT/tests/ref/json_redump.py" check "$BATS_TEST_TMPDIR/in.json" "$BATS_TEST_TMPDIR/out.json"
}
