"""Redo the GRPO loss written by tests/unit/test_grpo.c (grpo_trace_for_reference) independently:
advantages with numpy (std with ddof=1, as torch.std), the loss in numpy, and its gradient with respect
to the per-token log-probabilities with torch autograd, written the way TRL's GRPOTrainer writes it
(-min(rho*A, clamp(rho)*A) + beta*k3, masked mean per sequence then mean over sequences, or the mean
over all tokens).

usage: grpo_ref.py TRACE.json
Prints the largest differences; exits non-zero when they exceed the tolerance.
"""
import json
import sys

import numpy as np
import torch


def advantages(r, g):
    r = np.asarray(r, np.float64).reshape(-1, g)
    mean = r.mean(1, keepdims=True)
    std = r.std(1, ddof=1, keepdims=True)
    a = (r - mean) / (std + 1e-4)
    a[np.broadcast_to(std <= 1e-8, a.shape)] = 0.0
    return a.reshape(-1)


def numpy_loss(lp, old, ref, adv, seq, run):
    rho = np.exp(lp - old)
    a = adv[seq]
    pg = -np.minimum(rho * a, np.clip(rho, 1 - run["eps_low"], 1 + run["eps_high"]) * a)
    kl = np.exp(ref - lp) - (ref - lp) - 1 if run["beta"] else np.zeros_like(lp)
    tok = pg + run["beta"] * kl
    if run["avg"] == "token":
        return tok.mean(), kl.mean()
    per_seq = np.array([tok[seq == i].mean() for i in range(seq.max() + 1)])
    return per_seq.mean(), kl.mean()


def torch_grad(lp, old, ref, adv, seq, lengths, run):
    x = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    old_t, ref_t = torch.tensor(old, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    a = torch.tensor(adv[seq], dtype=torch.float64)
    coef1 = torch.exp(x - old_t)
    coef2 = torch.clamp(coef1, 1 - run["eps_low"], 1 + run["eps_high"])
    per_token = -torch.min(coef1 * a, coef2 * a)
    if run["beta"]:
        per_token = per_token + run["beta"] * (torch.exp(ref_t - x) - (ref_t - x) - 1)
    # pad into [sequences, longest] with a mask, as a batched implementation holds them
    n, width = len(lengths), max(lengths)
    padded = torch.zeros(n, width, dtype=torch.float64)
    mask = torch.zeros(n, width, dtype=torch.float64)
    at = 0
    for i, m in enumerate(lengths):
        padded[i, :m] = per_token[at:at + m]
        mask[i, :m] = 1
        at += m
    if run["avg"] == "token":
        loss = (padded * mask).sum() / mask.sum()
    else:
        loss = ((padded * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    loss.backward()
    clip_low = int(((coef1 < 1 - run["eps_low"]) & (a < 0)).sum())
    clip_high = int(((coef1 > 1 + run["eps_high"]) & (a > 0)).sum())
    return loss.item(), x.grad.numpy(), clip_low, clip_high


def main():
    t = json.load(open(sys.argv[1]))
    lengths = t["lengths"]
    seq = np.repeat(np.arange(len(lengths)), lengths)
    # the trace holds float32 values in 9 significant digits: round back to those floats exactly
    lp, old, ref = (np.asarray(t[k], np.float32).astype(np.float64) for k in ("logp", "old_logp", "ref_logp"))
    adv_ref = advantages(t["rewards"], t["group"])
    adv = np.asarray(t["advantages"])
    da = np.abs(adv - adv_ref).max()
    print(f"advantages: {np.round(adv_ref, 6).tolist()}; max |ours - numpy| {da:.3g}")
    ok = da <= 1e-14
    for run in t["runs"]:
        nl, nkl = numpy_loss(lp, old, ref, adv_ref, seq, run)
        tl, grad, cl, ch = torch_grad(lp, old, ref, adv_ref, seq, lengths, run)
        ours = np.asarray(run["dlogp"], np.float64)
        dg = np.abs(ours - grad).max() / np.abs(grad).max()
        print(f"{run['avg']:8s} eps {run['eps_low']}/{run['eps_high']} beta {run['beta']}: loss ours {run['loss']:.12g} "
              f"numpy {nl:.12g} torch {tl:.12g}; kl {run['kl_mean']:.6g} vs {nkl:.6g}; gradient rel {dg:.3g}; "
              f"clipped low {run['clip_low']}/{cl} high {run['clip_high']}/{ch}")
        ok &= abs(run["loss"] - nl) <= 1e-12 * max(1, abs(nl)) and abs(nl - tl) <= 1e-12 * max(1, abs(nl))
        ok &= abs(run["kl_mean"] - nkl) <= 1e-12
        ok &= dg <= 1e-6  # our gradient is stored as float32
        ok &= run["clip_low"] == cl and run["clip_high"] == ch
    # the trace must exercise the clip at both ends, or the comparison proves less than it says
    ok &= any(r["clip_low"] > 0 for r in t["runs"]) and any(r["clip_high"] > 0 for r in t["runs"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
