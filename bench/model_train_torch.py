#!/usr/bin/env python3
"""model_train_torch.py — the reference side of model_train.sh: transformers' DeepseekV3ForCausalLM,
fp32 on the CPU, one forward + backward of the next-token cross-entropy per step.

usage: model_train_torch.py CONFIG.json B T STEPS THREADS
Prints one JSON line like bench/model_train.c. MTP is not part of DeepseekV3ForCausalLM, so the
config's num_nextn_predict_layers is ignored here (ours runs with MTP off for the comparison)."""
import json
import statistics
import sys
import time

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM


def main():
    path, B, T, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(threads)
    with open(path) as f:
        cfg = json.load(f)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("ds_")}
    config = DeepseekV3Config(**cfg)
    torch.manual_seed(1)
    model = DeepseekV3ForCausalLM(config).float().train()
    g = torch.Generator().manual_seed(5)
    tok = torch.randint(0, config.vocab_size, (B, T), generator=g)
    tgt = torch.roll(tok, -1, 1)
    wall, cpu = [], []
    for s in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=tok).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, config.vocab_size), tgt.view(-1))
        loss.backward()
        if s > 0:
            wall.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    med = statistics.median(wall)
    print(json.dumps({"tokens_per_s": round(B * T / (med / 1e3), 1), "median_step_ms": round(med, 2),
                      "min_step_ms": round(min(wall), 2), "cpu_ms_per_step": round(sum(cpu) / len(cpu), 2),
                      "loss": round(float(loss.detach()), 4), "threads": threads, "attn": config._attn_implementation,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
