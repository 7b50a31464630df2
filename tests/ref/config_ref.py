"""Compare our reading of a config.json with transformers' DeepseekV3Config.

usage: config_ref.py OURS.json INPUT.json
OURS.json is what test_config's reference_dump wrote: {"config": <the config as we save it>,
"counts": {"total", "activated", "mtp"}}. Checks:
  1. transformers loads the config we save, and agrees on every key we write;
  2. for every key transformers' class knows, our value (default or read) equals what transformers
     reads from the original INPUT.json, so our defaults for absent keys are transformers' defaults;
  3. our total parameter count equals the parameters of DeepseekV3ForCausalLM built on the meta
     device (+ the e_score_correction_bias buffers), and our activated count equals the same module
     sizes summed per token (top-k + shared experts, router, attention, embedding, head).
Prints one line per problem and exits 1 if there is any.
"""
import json
import sys

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.utils import logging

logging.set_verbosity_error()
ours_all = json.load(open(sys.argv[1]))
ours, counts = ours_all["config"], ours_all["counts"]
original = json.load(open(sys.argv[2]))
problems = []


def hf_value(cfg, key):
    if key in ("torch_dtype", "dtype"):
        d = cfg.dtype
        return str(d).replace("torch.", "") if d is not None else None
    if key == "rope_theta":
        return cfg.rope_parameters["rope_theta"]
    if key in ("rope_scaling", "rope_parameters"):
        return cfg.rope_parameters
    if key == "quantization_config":
        q = cfg.quantization_config
        return q if isinstance(q, dict) else q.to_dict()
    return getattr(cfg, key)


def same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) == type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


# 1. transformers reads back every key we write
cfg = DeepseekV3Config(**ours)
for key, val in ours.items():
    got = hf_value(cfg, key)
    if isinstance(val, dict):
        for k, v in val.items():
            if k not in got or not same(got[k], v):
                problems.append(f"{key}.{k}: we wrote {v!r}, transformers has {got.get(k)!r}")
    elif key == "eos_token_id" and isinstance(val, list):
        if got != val:
            problems.append(f"{key}: we wrote {val!r}, transformers has {got!r}")
    elif not same(got, val):
        problems.append(f"{key}: we wrote {val!r}, transformers has {got!r}")

# 2. defaults: transformers' reading of the original file equals ours for every key its class declares
ref = DeepseekV3Config(**original)
declared = set(DeepseekV3Config.__dataclass_fields__) | {"dtype", "rope_theta"}
for key, val in ours.items():
    name = {"torch_dtype": "dtype", "num_mtp_layers": "num_nextn_predict_layers"}.get(key, key)
    if key in ("rope_scaling", "rope_parameters", "quantization_config") or name not in declared and key != "num_nextn_predict_layers":
        continue
    if name == "dtype" and "torch_dtype" not in original and "dtype" not in original:
        continue  # transformers leaves dtype unset (None); we default to bfloat16, the V3 dtype
    got = hf_value(ref, name)
    if key == "eos_token_id" and isinstance(got, list):
        got = got[0]
        val = val[0] if isinstance(val, list) else val
    if not same(got, val):
        problems.append(f"default {key}: ours {val!r}, transformers {got!r}")
if "rope_scaling" in ours or "rope_parameters" in ours:
    mine = ours.get("rope_scaling") or ours.get("rope_parameters")
    theirs = ref.rope_parameters
    for k in ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "rope_theta"):
        if k in theirs and k in mine and not same(theirs[k], mine[k]):
            problems.append(f"rope {k}: ours {mine[k]!r}, transformers {theirs[k]!r}")

# 3. parameter counts from the transformers model built on the meta device
with torch.device("meta"):
    model = DeepseekV3ForCausalLM(cfg)
total = sum(p.numel() for p in model.parameters())
total += sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
if total != counts["total"]:
    problems.append(f"total parameters: ours {counts['total']}, transformers {total}")

k, shared = cfg.num_experts_per_tok, cfg.n_shared_experts
act = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel() + model.model.norm.weight.numel()
for layer in model.model.layers:
    act += sum(p.numel() for p in layer.self_attn.parameters())
    act += layer.input_layernorm.weight.numel() + layer.post_attention_layernorm.weight.numel()
    mlp = layer.mlp
    if hasattr(mlp, "experts"):
        n = mlp.experts.gate_up_proj.shape[0]
        per_expert = (mlp.experts.gate_up_proj.numel() + mlp.experts.down_proj.numel()) // n
        act += k * per_expert + sum(p.numel() for p in mlp.shared_experts.parameters())
        act += mlp.gate.weight.numel() + mlp.gate.e_score_correction_bias.numel()
    else:
        act += sum(p.numel() for p in mlp.parameters())
if act != counts["activated"]:
    problems.append(f"activated parameters: ours {counts['activated']}, transformers modules {act}")

for p in problems:
    print(p)
print(f"total {total} activated {act}: {'ok' if not problems else 'MISMATCH'}")
sys.exit(1 if problems else 0)
