"""Redo the optimizer trace written by tests/unit/test_train_optim.c with torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_ (an implementation independent of ours) and compare.

usage: train_adamw.py TRACE.bin [bf16]
With "bf16" the reference keeps its moments in bfloat16 the same way (fp32 arithmetic, rounded to
nearest even after every step), since torch's AdamW has no such option.
Prints the largest differences; exits non-zero when they exceed the tolerance.
"""
import sys

import numpy as np
import torch


def main():
    path = sys.argv[1]
    bf16 = len(sys.argv) > 2 and sys.argv[2] == "bf16"
    raw = open(path, "rb").read()
    nm, nn, steps = np.frombuffer(raw, "<i4", 3, 0)
    beta1, beta2, eps, wd, clip = np.frombuffer(raw, "<f8", 5, 12)
    n = int(nm + nn)
    off = 12 + 40
    p0 = np.frombuffer(raw, "<f4", n, off).copy()
    off += 4 * n
    w = torch.nn.Parameter(torch.from_numpy(p0[:nm].copy()))
    g_norm = torch.nn.Parameter(torch.from_numpy(p0[nm:].copy()))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": wd}, {"params": [g_norm], "weight_decay": 0.0}],
                            lr=1.0, betas=(beta1, beta2), eps=eps, foreach=False)
    for _ in range(steps):
        (lr,) = np.frombuffer(raw, "<f8", 1, off)
        off += 8
        g = np.frombuffer(raw, "<f4", n, off).copy()
        off += 4 * n
        w.grad = torch.from_numpy(g[:nm].copy())
        g_norm.grad = torch.from_numpy(g[nm:].copy())
        torch.nn.utils.clip_grad_norm_([w, g_norm], clip)
        for group in opt.param_groups:
            group["lr"] = float(lr)
        opt.step()
        if bf16:
            for prm in (w, g_norm):
                st = opt.state[prm]
                st["exp_avg"].copy_(st["exp_avg"].to(torch.bfloat16).to(torch.float32))
                st["exp_avg_sq"].copy_(st["exp_avg_sq"].to(torch.bfloat16).to(torch.float32))
    ours_p = np.frombuffer(raw, "<f4", n, off)
    ours_m = np.frombuffer(raw, "<f4", n, off + 4 * n)
    ours_v = np.frombuffer(raw, "<f4", n, off + 8 * n)
    ref_p = np.concatenate([w.detach().numpy(), g_norm.detach().numpy()])
    ref_m = np.concatenate([opt.state[w]["exp_avg"].numpy(), opt.state[g_norm]["exp_avg"].numpy()])
    ref_v = np.concatenate([opt.state[w]["exp_avg_sq"].numpy(), opt.state[g_norm]["exp_avg_sq"].numpy()])
    moved = np.abs(ref_p - p0).max()
    dp = np.abs(ours_p - ref_p).max()
    # moments relative to their largest magnitude (an m near zero after cancellation has no
    # meaningful relative error)
    dm = np.abs(ours_m - ref_m).max() / np.abs(ref_m).max()
    dv = np.abs(ours_v - ref_v).max() / np.abs(ref_v).max()
    print(f"params moved up to {moved:.3g}; max |ours - torch|: params {dp:.3g}, moments rel {dm:.3g} / {dv:.3g}")
    # fp32 rounding differences stay far below the size of one update; bf16 moments may round differently
    # when the fp32 values sit on a rounding boundary, which moves them by one bf16 ulp (2^-8 relative)
    tol_p, tol_m = (1e-6, 1e-6) if not bf16 else (1e-5, 4e-3)
    ok = dp <= tol_p * max(1.0, float(np.abs(ref_p).max()) / 0.02) and dm <= tol_m and dv <= tol_m
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
