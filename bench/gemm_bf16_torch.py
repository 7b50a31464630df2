"""The PyTorch side of bench/gemm_bf16.sh: torch.matmul on bf16 tensors (oneDNN; AMX where the CPU has it,
ONEDNN_VERBOSE=1 names the kernel) for the same shapes as bench/gemm_bf16.c, best of REPS runs after one
warm-up. Grouped shapes (rows:, wgrad:) run one matmul per group, as transformers' experts do.
Prints one JSON object per shape.

usage: gemm_bf16_torch.py THREADS REPS SPEC...   (SPEC as bench/gemm_bf16.c)
"""
import json
import sys
import time

import torch


def parse(spec):
    if spec.startswith("rows:"):
        m, n, k, g, tb = map(int, spec[5:].split(","))
        return m, n, k, 0, tb, g
    if spec.startswith("wgrad:"):
        m, n, k, g = map(int, spec[6:].split(","))
        return m, n, k, 1, 0, g
    m, n, k, ta, tb = map(int, spec.split(","))
    return m, n, k, ta, tb, 0


def main():
    threads, reps = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    for spec in sys.argv[3:]:
        m, n, k, ta, tb, groups = parse(spec)
        bf = torch.bfloat16
        rnd = lambda *s: torch.randn(*s, generator=g).to(bf)
        if groups and ta:  # C_g [m, n] = A_g^T B_g over k / groups rows each
            a, b = rnd(k, m), rnd(k, n)
            step = k // groups
            run = lambda: [a[i * step:(i + 1) * step].t() @ b[i * step:(i + 1) * step] for i in range(groups)]
        elif groups:  # rows of A against each group's [n, k] (tb) or [k, n] weights
            a = rnd(m, k)
            w = [rnd(n, k) if tb else rnd(k, n) for _ in range(groups)]
            step = m // groups
            run = lambda: [a[i * step:(i + 1) * step] @ (w[i].t() if tb else w[i]) for i in range(groups)]
        else:
            a = rnd(k, m).t() if ta else rnd(m, k)
            b = rnd(n, k).t() if tb else rnd(k, n)
            run = lambda: a @ b
        best = 1e30
        for r in range(reps + 1):
            t = time.perf_counter()
            run()
            t = time.perf_counter() - t
            if r:
                best = min(best, t)
        print(json.dumps({"spec": spec, "threads": threads, "torch_bf16": 2.0 * m * n * k / best * 1e-9,
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main()
