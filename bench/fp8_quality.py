#!/usr/bin/env python3
"""Quality cost of FP8 inference: held-out log-likelihood of a checkpoint stored as BF16 vs as DeepSeek's FP8
(E4M3 + 128x128 scales, ds-quantize --to fp8), all scored by ds-generate --score. Rows: fp32 (the checkpoint
as trained), bf16, fp8 (weights dequantized block-wise at load, activations fp32) and fp8 W8A8
(ds-generate --w8a8: every Linear's input also quantized in 1x128 tiles, products by the block-scaled GEMM;
kv_b, router and head in fp32). Prints mean log-probability per token and the deltas against bf16 (the
issue's "quality cost"), and one JSON line on stderr.
usage: $DS_PY bench/fp8_quality.py -m CKPT --text 'heldout/*.txt' [--chunk 600] [--bin DIR] [--threads N]
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def score(bin_dir, ckpt, jsonl, threads, ctx, extra=()):
    out = subprocess.run([os.path.join(bin_dir, "ds-generate"), "-q", "-m", ckpt, "--score",
                          "--ctx", str(ctx), "--threads", str(threads), *extra],
                         input=jsonl, capture_output=True, text=True, check=True).stdout
    total, n = 0.0, 0
    for line in out.splitlines():
        r = json.loads(line)
        total += r["sum_logprob"]
        n += r["n_scored"]
    return total, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--text", required=True, help="glob of held-out text files")
    ap.add_argument("--chunk", type=int, default=600, help="characters per scored piece")
    ap.add_argument("--ctx", type=int, default=1024, help="context for scoring (pieces must fit)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin"))
    args = ap.parse_args()
    pieces = []
    for f in sorted(glob.glob(args.text)):
        t = open(f, encoding="utf-8", errors="replace").read()
        pieces += [t[i:i + args.chunk] for i in range(0, len(t), args.chunk) if len(t[i:i + args.chunk]) > 50]
    jsonl = "".join(json.dumps({"text": p}) + "\n" for p in pieces)
    with tempfile.TemporaryDirectory() as d:
        res = {}
        for name, to in (("fp32", None), ("bf16", "bf16"), ("fp8", "fp8")):
            ck = args.model
            if to:
                ck = os.path.join(d, name)
                subprocess.run([os.path.join(args.bin, "ds-quantize"), "-q", "-m", args.model, "-o", ck, "--to", to],
                               check=True)
            res[name] = score(args.bin, ck, jsonl, args.threads, args.ctx)
        res["fp8_w8a8"] = score(args.bin, os.path.join(d, "fp8"), jsonl, args.threads, args.ctx, ("--w8a8",))
    n = res["fp32"][1]
    lp = {k: v[0] / v[1] for k, v in res.items()}
    print(f"{len(pieces)} held-out pieces, {n} scored tokens")
    for k in ("fp32", "bf16", "fp8", "fp8_w8a8"):
        print(f"  {k:8s} mean log p/token {lp[k]:.6f}  (perplexity {math.exp(-lp[k]):.4f})")
    for k in ("fp8", "fp8_w8a8"):
        d8 = lp[k] - lp["bf16"]
        print(f"  {k} - bf16: {d8:+.6f} nats/token ({100 * d8 / abs(lp['bf16']):+.4f}% of the bf16 loss)")
    print(f"  bf16 - fp32: {lp['bf16'] - lp['fp32']:+.6f}")
    json.dump({"pieces": len(pieces), "tokens": n, "mean_logprob": lp}, sys.stderr)
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
