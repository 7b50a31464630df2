"""The reference side of bench/pretrain.sh: train transformers' DeepseekV3ForCausalLM (the same config,
fp32 on the CPU) with AdamW (0.9, 0.95, wd 0.1) and global-norm clipping at 1.0 on random tokens, and
report tokens per second. Prints one JSON object.

With --bf16 the forward and the loss run under torch.autocast("cpu", dtype=torch.bfloat16) (bf16 matmuls on
oneDNN, fp32 master weights and AdamW): the PyTorch counterpart of ds-pretrain --bf16.

usage: pretrain_torch.py --config CFG.json --batch B --seq-len T --steps N --threads N [--warmup W] [--bf16]
"""
import contextlib
import argparse
import json
import statistics
import time

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg_json = json.load(open(a.config))
    cfg = DeepseekV3Config(**{k: v for k, v in cfg_json.items() if not k.startswith("ds_")})
    cfg.dtype = torch.float32
    model = DeepseekV3ForCausalLM(cfg).float()
    std = cfg_json.get("ds_init_std", 0.006)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)
    model.train()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    times, cpu, losses = [], [], []
    for step in range(a.warmup + a.steps):
        x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq_len + 1), generator=gen)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext():
            logits = model(input_ids=x[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        losses.append(loss.item())
        if step >= a.warmup:
            times.append(dt)
            cpu.append(dc)
    ms = 1e3 * statistics.median(times)
    print(json.dumps({"impl": "torch", "torch": torch.__version__, "bf16": a.bf16, "threads": a.threads, "batch": a.batch,
                      "seq_len": a.seq_len, "steps": a.steps, "ms_median": ms,
                      "cpu_ms_median": 1e3 * statistics.median(cpu),
                      "tok_s": a.batch * a.seq_len / (ms / 1e3), "loss_first": losses[0], "loss_last": losses[-1],
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
