#!/usr/bin/env bats
# A checkpoint's config is checked against its tensors (names, shapes, layer and expert counts) by every
# tool that reads one, before a model is built or anything written; the message names the tensor and the
# config keys behind it. A --config with none of the model's keys is an error, not the 671B default.
# An input of the wrong kind is named by its kind (io/kind.h), not by a parser's complaint.

bats_require_minimum_version 1.5.0
load train_helpers

setup_file() { tiny_setup; }

# variant NAME PYTHON: a copy of $T/base as $BATS_TEST_TMPDIR/NAME, with PYTHON run on c (config.json as
# a dict) and w (the tensors as numpy arrays), both written back.
variant() {
    local d=$BATS_TEST_TMPDIR/$1
    cp -r "$T/base" "$d"
    "$DS_PY" - "$d" "$2" <<'EOF'
import json, sys
from safetensors.numpy import load_file, save_file
d, edit = sys.argv[1], sys.argv[2]
c = json.load(open(d + "/config.json"))
w = load_file(d + "/model.safetensors")
exec(edit)
json.dump(c, open(d + "/config.json", "w"), indent=2)
save_file(w, d + "/model.safetensors")
EOF
}

# quantize_refuses NAME MESSAGE: ds-quantize of variant NAME fails with this one line and writes nothing
quantize_refuses() {
    run --separate-stderr "$DS_BIN/ds-quantize" -q -m "$BATS_TEST_TMPDIR/$1" -o "$BATS_TEST_TMPDIR/out" --to fp8
    echo "$stderr"
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-quantize: error: $2" ]
    [ ! -e "$BATS_TEST_TMPDIR/out" ]
    [ -z "$(ls "$BATS_TEST_TMPDIR" | grep 'out.tmp')" ]
}

@test "ds-quantize: hidden_size missing from config.json is named (its default does not fit the tensors)" {
    variant nohidden 'del c["hidden_size"]'
    quantize_refuses nohidden "checkpoint: model.embed_tokens.weight has shape [512, 64], the config implies [512, 7168] (not in the config, defaults used: hidden_size): $BATS_TEST_TMPDIR/nohidden"
}

@test "ds-quantize: a config invalid in itself names the key" {
    variant topk 'c["num_experts_per_tok"] = 16'
    quantize_refuses topk "config: num_experts_per_tok: must not exceed n_routed_experts (16 > 8): $BATS_TEST_TMPDIR/topk/config.json"
}

@test "ds-quantize: layer, expert and MTP counts that contradict the tensors" {
    # a third layer: the MTP module's tensors at layer 2 would pass for it, but its MTP parts are left over
    variant layers 'c["num_hidden_layers"] = 3'
    quantize_refuses layers "checkpoint: tensor model.layers.2.eh_proj.weight (and 3 more) is not part of the model the config describes (num_hidden_layers 3, num_nextn_predict_layers 1, n_routed_experts 8, q_lora_rank 32): $BATS_TEST_TMPDIR/layers"
    variant experts 'c["n_routed_experts"] = 4'
    quantize_refuses experts "checkpoint: model.layers.1.mlp.gate.weight has shape [8, 64], the config implies [4, 64]: $BATS_TEST_TMPDIR/experts"
    variant nomtp 'c["num_nextn_predict_layers"] = 0'
    quantize_refuses nomtp "checkpoint: tensor model.layers.2.eh_proj.weight (and 41 more) is not part of the model the config describes (num_hidden_layers 2, num_nextn_predict_layers 0, n_routed_experts 8, q_lora_rank 32): $BATS_TEST_TMPDIR/nomtp"
}

@test "ds-quantize: a missing tensor, a wrong shape, a tensor too many, an integer weight, a wrong FP8 scale grid" {
    variant missing 'del w["model.layers.0.self_attn.kv_b_proj.weight"]'
    quantize_refuses missing "checkpoint: no tensor model.layers.0.self_attn.kv_b_proj.weight, which the config implies: $BATS_TEST_TMPDIR/missing"
    variant shape 'w["model.norm.weight"] = w["model.norm.weight"][:32]'
    quantize_refuses shape "checkpoint: model.norm.weight has shape [32], the config implies [64]: $BATS_TEST_TMPDIR/shape"
    variant extra 'import numpy as np; w["model.layers.0.mlp.adapter.weight"] = np.zeros((2, 2), np.float32)'
    quantize_refuses extra "checkpoint: tensor model.layers.0.mlp.adapter.weight is not part of the model the config describes (num_hidden_layers 2, num_nextn_predict_layers 1, n_routed_experts 8, q_lora_rank 32): $BATS_TEST_TMPDIR/extra"
    variant ints 'w["model.norm.weight"] = w["model.norm.weight"].astype("int32")'
    quantize_refuses ints "checkpoint: model.norm.weight has dtype I32, expected a float type: $BATS_TEST_TMPDIR/ints"
    "$DS_BIN/ds-quantize" -q -m "$T/base" -o "$BATS_TEST_TMPDIR/fp8" --to fp8
    "$DS_PY" - "$BATS_TEST_TMPDIR/fp8" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
d = sys.argv[1]
w = load_file(d + "/model.safetensors")
k = "model.layers.0.self_attn.q_b_proj.weight_scale_inv"
w[k] = w[k].repeat(2, 1)
save_file(w, d + "/model.safetensors")
EOF
    quantize_refuses fp8 "checkpoint: model.layers.0.self_attn.q_b_proj.weight_scale_inv has shape [2, 1], the config implies [1, 1]: $BATS_TEST_TMPDIR/fp8"
}

@test "every tool that reads a checkpoint checks it before building the model" {
    variant nohidden 'del c["hidden_size"]'
    local m=$BATS_TEST_TMPDIR/nohidden o=$BATS_TEST_TMPDIR/o
    local want="checkpoint: model.embed_tokens.weight has shape [512, 64], the config implies [512, 7168] (not in the config, defaults used: hidden_size): $m"
    run --separate-stderr "$DS_BIN/ds-generate" -m "$m" --prompt x --max-new 1
    [ "$status" -eq 1 ] && [ "$stderr" = "ds-generate: error: $want" ]
    run --separate-stderr "$DS_BIN/ds-pretrain" -m "$m" --data "$T/shards" -o "$o" --steps 1
    [ "$status" -eq 1 ] && [ "$stderr" = "ds-pretrain: error: $want" ]
    run --separate-stderr "$DS_BIN/ds-sft" -m "$m" --data "$T/chat.jsonl" -o "$o" --steps 1
    [ "$status" -eq 1 ] && [ "$stderr" = "ds-sft: error: $want" ]
    run --separate-stderr "$DS_BIN/ds-rl" -m "$m" --prompts "$T/prompts.jsonl" -o "$o" --steps 1
    [ "$status" -eq 1 ] && [ "$stderr" = "ds-rl: error: $want" ]
    run --separate-stderr "$DS_BIN/ds-extend-ctx" -m "$m" --data "$T/shards" -o "$o" --factor 2 --seq-len 64 --steps 1
    [ "$status" -eq 1 ] && [ "$stderr" = "ds-extend-ctx: error: $want" ]
    [ ! -e "$o" ]
    # the reference policy of ds-rl is checked against the policy's config
    variant ref 'w["model.norm.weight"] = w["model.norm.weight"][:32]'
    run --separate-stderr "$DS_BIN/ds-rl" -m "$T/base" --ref "$BATS_TEST_TMPDIR/ref" --kl 0.01 --prompts "$T/prompts.jsonl" \
        -o "$o" --steps 1 --group 2 --batch 2 --max-new 4 --threads 1
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-rl: error: reference policy: checkpoint: model.norm.weight has shape [32], the config implies [64]: $BATS_TEST_TMPDIR/ref" ]
}

@test "--config with none of the model's keys is an error, not the 671B default" {
    printf '{"foo": 1}\n' >"$BATS_TEST_TMPDIR/foo.json"
    for cfg in "$BATS_TEST_TMPDIR/foo.json" "$T/base/generation_config.json"; do
        run --separate-stderr "$DS_BIN/ds-pretrain" --config "$cfg" --data "$T/shards" -o "$BATS_TEST_TMPDIR/o" --steps 1
        [ "$status" -eq 1 ]
        [ "$stderr" = "ds-pretrain: error: config: none of the model's keys (model_type, hidden_size, num_hidden_layers, ...): $cfg" ]
    done
    # model_type alone is the full DeepSeek-V3, as in transformers: too big for this machine, and said so
    printf '{"model_type": "deepseek_v3"}\n' >"$BATS_TEST_TMPDIR/v3.json"
    run --separate-stderr "$DS_BIN/ds-pretrain" --config "$BATS_TEST_TMPDIR/v3.json" --data "$T/shards" -o "$BATS_TEST_TMPDIR/o" --steps 1
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"out of memory: the model needs "*" GiB"* ]]
}

# wrong_kind ERROR-LINE COMMAND...: the command fails with exit 1 and this first line on stderr
wrong_kind() {
    local want=$1
    shift
    run --separate-stderr "$@"
    [ "$status" -eq 1 ] || { echo "status $status: $*"; false; }
    [ "${stderr%%$'\n'*}" = "$want" ] || { echo "got:  ${stderr%%$'\n'*}"; echo "want: $want"; false; }
}

@test "inputs of the wrong kind are named by their kind" {
    local o=$BATS_TEST_TMPDIR/o shard=$T/shards/000000.tok txt=$T/prose.txt st=$T/base/model.safetensors
    # -m: a checkpoint
    wrong_kind "ds-generate: error: checkpoint: a tokenizer.json, not a checkpoint: $T/tok.json" \
        "$DS_BIN/ds-generate" -m "$T/tok.json" --prompt x
    wrong_kind "ds-quantize: error: checkpoint: a token shard, not a checkpoint: $shard" \
        "$DS_BIN/ds-quantize" -q -m "$shard" -o "$o" --to fp8
    wrong_kind "ds-quantize: error: checkpoint: a text file, not a checkpoint: $txt" "$DS_BIN/ds-quantize" -q -m "$txt" -o "$o" --to fp8
    wrong_kind "ds-sft: error: checkpoint: a directory of token shards, not a checkpoint: $T/shards" \
        "$DS_BIN/ds-sft" -m "$T/shards" --data "$T/chat.jsonl" -o "$o" --steps 1
    wrong_kind "ds-generate: error: checkpoint: a model config.json, not a checkpoint: $T/base/config.json" \
        "$DS_BIN/ds-generate" -m "$T/base/config.json" --prompt x
    # --data: token shards
    for f in "$T/tok.json:a tokenizer.json" "$txt:a text file" "$st:a safetensors file"; do
        wrong_kind "ds-pretrain: error: token shard: ${f#*:}, not a token shard: ${f%%:*}" \
            "$DS_BIN/ds-pretrain" -m "$T/base" --data "${f%%:*}" -o "$o" --steps 1
    done
    wrong_kind "ds-pretrain: error: token shards: a checkpoint directory, not token shards: $T/base" \
        "$DS_BIN/ds-pretrain" -m "$T/base" --data "$T/base" -o "$o" --steps 1
    # -t / --tokenizer: a tokenizer.json
    wrong_kind "ds-tokenize: error: tokenizer.json: a token shard, not a tokenizer.json: $shard" \
        "$DS_BIN/ds-tokenize" encode -t "$shard" --ids "$txt"
    wrong_kind "ds-tokenize: error: tokenizer.json: a model config.json, not a tokenizer.json: $T/base/config.json" \
        "$DS_BIN/ds-tokenize" encode -t "$T/base/config.json" --ids "$txt"
    run --separate-stderr "$DS_BIN/ds-tokenize" encode -t "$T/base" --ids "$txt"
    [ "$status" -eq 1 ]
    [ "$stderr" = "ds-tokenize: error: tokenizer.json: a checkpoint directory, not a tokenizer.json: $T/base
hint: name the file inside the checkpoint: $T/base/tokenizer.json" ]
    wrong_kind "ds-pretrain: error: tokenizer.json: a safetensors file, not a tokenizer.json: $st" \
        "$DS_BIN/ds-pretrain" --config "$DS_ROOT/share/configs/tiny.json" --data "$T/shards" --tokenizer "$st" -o "$o" --steps 1
    # --config: a model config.json
    wrong_kind "ds-pretrain: error: config: a tokenizer.json, not a model config.json: $T/tok.json" \
        "$DS_BIN/ds-pretrain" --config "$T/tok.json" --data "$T/shards" -o "$o" --steps 1
    wrong_kind "ds-pretrain: error: config: a token shard, not a model config.json: $shard" \
        "$DS_BIN/ds-pretrain" --config "$shard" --data "$T/shards" -o "$o" --steps 1
    # JSON lines: conversations and prompts
    run --separate-stderr "$DS_BIN/ds-sft" -m "$T/base" --data "$shard" -o "$o" --steps 1
    [ "$status" -eq 1 ]
    [[ "$stderr" == *"ds-sft: error: conversations: a token shard, not JSON lines: $shard" ]]
    wrong_kind "ds-rl: error: JSON lines: a safetensors file, not JSON lines: $st" \
        "$DS_BIN/ds-rl" -m "$T/base" --prompts "$st" -o "$o" --steps 1
    # decode: token shards or id lines (a safetensors header may start with a digit, as id lines do)
    wrong_kind "ds-tokenize: error: token ids: a safetensors file, not token shards or id lines: $st" \
        "$DS_BIN/ds-tokenize" decode -t "$T/tok.json" "$st"
    wrong_kind "ds-tokenize: error: token shard: a model config.json, not a token shard: $T/base/config.json" \
        "$DS_BIN/ds-tokenize" decode -t "$T/tok.json" "$T/base/config.json"
    [ ! -e "$o" ]
}
