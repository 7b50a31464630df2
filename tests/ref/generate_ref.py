#!/usr/bin/env python3
"""transformers as the reference for ds-generate (tests/ref/generate.bats, bench/generate.sh).

  generate_ref.py score [CKPT]          < id lines  -> one JSON line per input: {"logprobs": [lp_1, ...]}
                                                       lp_t = log p(token_t | tokens before), fp32 forward;
                                                       without CKPT each line is "CKPT<TAB>ids" (models
                                                       are loaded once and kept)
  generate_ref.py greedy CKPT N         < id lines  -> N greedily generated ids per input (no EOS stop)
  generate_ref.py save CONFIG OUT [STD] a random DeepseekV3ForCausalLM (transformers' own init, weights std STD,
                                        default the config's initializer_range) saved with save_pretrained
  generate_ref.py bench CKPT P N B      prefill/decode timing of model.generate: B random prompts of P
                                        tokens, N new tokens, greedy; prints one JSON line

CKPT is a checkpoint directory (config.json + model.safetensors) loaded with
DeepseekV3ForCausalLM.from_pretrained in float32 on the CPU. Threads: $DS_THREADS (default 2).
"""
import json
import os
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import DeepseekV3ForCausalLM  # noqa: E402


def load(path):
    torch.set_num_threads(int(os.environ.get("DS_THREADS", "2")))
    m = DeepseekV3ForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    m.eval()
    return m


def id_lines():
    for line in sys.stdin:
        if line.strip():
            yield [int(x) for x in line.split()]


def score(path):
    models = {}
    with torch.no_grad():
        for line in sys.stdin:
            if not line.strip():
                continue
            ck, ids = (path, line) if path else line.split("\t", 1)
            if ck not in models:
                models[ck] = load(ck)
            m = models[ck]
            ids = [int(x) for x in ids.split()]
            x = torch.tensor([ids])
            logits = m(x).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)
            out = [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]
            print(json.dumps({"logprobs": out}), flush=True)


def greedy(path, n):
    m = load(path)
    with torch.no_grad():
        for ids in id_lines():
            x = torch.tensor([ids])
            y = m.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0, attention_mask=torch.ones_like(x))
            print(" ".join(str(t) for t in y[0, len(ids):].tolist()), flush=True)


def save(config, out, std=None):
    import json as _json

    from transformers import DeepseekV3Config

    cfg = _json.load(open(config))
    if std:
        cfg["initializer_range"] = float(std)
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(DeepseekV3Config(**cfg))
    with torch.no_grad():  # random expert biases, so the bias path is exercised
        for name, buf in m.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn_like(buf))
    m.save_pretrained(out)


def bench(path, p, n, b):
    m = load(path)
    V = m.config.vocab_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, V, (b, p), generator=g)
    mask = torch.ones_like(x)
    with torch.no_grad():
        m.generate(x[:, :8], max_new_tokens=2, do_sample=False, eos_token_id=None, pad_token_id=0,
                   attention_mask=mask[:, :8])  # warm-up
        t0 = time.perf_counter()
        m(x, attention_mask=mask)  # prefill alone
        t1 = time.perf_counter()
        m.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                   attention_mask=mask)
        t2 = time.perf_counter()
    prefill = t1 - t0
    decode = (t2 - t1) - prefill  # generate = prefill + n-1 decode steps (+ sampling)
    print(json.dumps({"prefill_tokens_per_s": b * p / prefill, "decode_tokens_per_s": b * (n - 1) / decode,
                      "prefill_s": prefill, "generate_s": t2 - t1, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "score":
        score(sys.argv[2] if len(sys.argv) > 2 else None)
    elif cmd == "greedy":
        greedy(sys.argv[2], int(sys.argv[3]))
    elif cmd == "save":
        save(*sys.argv[2:5])
    elif cmd == "bench":
        bench(sys.argv[2], *map(int, sys.argv[3:6]))
    else:
        sys.exit("usage: generate_ref.py score|greedy|bench CKPT ...")
