"""Reference side of tests/ref/checkpoint.bats.

  ckpt_ref.py load-ours DIR          transformers loads our checkpoint directory: no missing weights,
                                     only the MTP module (if the config has one) unexpected, every tensor equal to the file's,
                                     a forward pass runs; prints a summary
  ckpt_ref.py save-hf DIR            transformers saves a random tiny model (+ a tokenizer) to DIR
  ckpt_ref.py check-dump DIR DUMP    our reading of DIR (test_checkpoint reference_dump) agrees with the
                                     files: every tensor with its dtype, shape and sum; the config
"""
import json
import sys

import torch
from safetensors import safe_open
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.utils import logging

logging.set_verbosity_error()
DT = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}
cmd, d = sys.argv[1], sys.argv[2]

if cmd == "load-ours":
    model, info = DeepseekV3ForCausalLM.from_pretrained(d, output_loading_info=True, dtype=torch.float32)
    cfg = model.config
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing: {sorted(info['missing_keys'])[:5]}")
    mtp = f"model.layers.{cfg.num_hidden_layers}."
    if any(not k.startswith(mtp) for k in info["unexpected_keys"]):
        problems.append(f"unexpected: {[k for k in info['unexpected_keys'] if not k.startswith(mtp)][:5]}")
    if cfg.num_nextn_predict_layers and not any(k.startswith(mtp) for k in info["unexpected_keys"]):
        problems.append("the MTP module was not in the file")
    # every stored tensor equals the loaded parameter (experts are fused in transformers v5)
    sd = model.state_dict()
    n = 0
    with safe_open(f"{d}/model.safetensors", framework="pt") as f:
        for name in f.keys():
            if name.startswith(mtp):
                continue
            t = f.get_tensor(name).float()
            parts = name.split(".")
            if ".mlp.experts." in name:  # model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight
                e, proj = int(parts[5]), parts[6]
                base = ".".join(parts[:5])
                if proj == "down_proj":
                    p = sd[f"{base}.down_proj"][e]
                else:
                    gu = sd[f"{base}.gate_up_proj"][e]
                    half = gu.shape[0] // 2
                    p = gu[:half] if proj == "gate_proj" else gu[half:]
            else:
                p = sd[name]
            if p.shape != t.shape or not torch.equal(p.float(), t):
                problems.append(f"{name}: differs")
            n += 1
    ids = torch.tensor([[0, 5, 9, 3, 7]])
    with torch.no_grad():
        logits = model(ids).logits
    if logits.shape != (1, 5, cfg.vocab_size) or not torch.isfinite(logits).all():
        problems.append("forward pass")
    for p in problems:
        print(p)
    print(f"{n} tensors compared: {'ok' if not problems else 'MISMATCH'}")
    sys.exit(1 if problems else 0)

elif cmd == "save-hf":
    cfg = DeepseekV3Config(**json.load(open(sys.argv[3])))
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg)
    model.save_pretrained(d)
    json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}, open(f"{d}/tokenizer.json", "w"))

elif cmd == "check-dump":
    ours = json.load(open(sys.argv[3]))
    problems = []
    import glob
    seen = {}
    for path in sorted(glob.glob(f"{d}/*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                seen[name] = [DT[t.dtype], list(t.shape), t.double().sum().item()]
    if set(seen) != set(ours["tensors"]):
        problems.append(f"tensor names differ: {sorted(set(seen) ^ set(ours['tensors']))[:5]}")
    for name, (dt, shape, s) in seen.items():
        o = ours["tensors"].get(name)
        if o and (o[0] != dt or o[1] != shape or abs(o[2] - s) > 1e-3 * max(1.0, abs(s))):
            problems.append(f"{name}: ours {o} file {[dt, shape, s]}")
    hf = json.load(open(f"{d}/config.json"))
    for k in ("hidden_size", "num_hidden_layers", "n_routed_experts", "vocab_size", "q_lora_rank"):
        if ours["config"].get(k) != hf.get(k):
            problems.append(f"config {k}: ours {ours['config'].get(k)} file {hf.get(k)}")
    if not ours["tokenizer"]:
        problems.append("tokenizer.json not found")
    for p in problems:
        print(p)
    print(f"{len(seen)} tensors: {'ok' if not problems else 'MISMATCH'}")
    sys.exit(1 if problems else 0)
