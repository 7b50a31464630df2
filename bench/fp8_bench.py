#!/usr/bin/env python3
"""FP8 benchmarks: libds against ml_dtypes / numpy / torch in one run, with ratios.

  1. kernels: E4M3 encode/decode, 1x128 / 128x128 / 128x1-transposed quantization, dequantization
     (bench/fp8_kernels.c, built here against the libds of this tree) vs ml_dtypes casts, torch casts and
     torch transcriptions of DeepGEMM's per_token_cast_to_fp8 / per_block_cast_to_fp8 (CPU).
  2. the scaled FP8 GEMM reference vs OpenBLAS sgemm on the same shape (the price of exact FP8 semantics
     on a CPU) and vs the numpy reference (tests/ref/fp8_block.py's gemm).
  3. ds-quantize --to fp8 on a synthetic checkpoint vs a torch + safetensors script doing the same
     (read, per-block quantize, write), MB of input per second.
usage: $DS_PY bench/fp8_bench.py [--threads 1,2] [--mb 64] [--ckpt-mb 256] [--bin DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))
from fp8_block import gemm as np_gemm, quantize as np_quantize  # noqa: E402

F8 = ml_dtypes.float8_e4m3fn


def best(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def build_driver(build):
    exe = os.path.join(tempfile.gettempdir(), f"fp8_kernels_{os.getpid()}")
    # libds.a's own dependencies, as the Makefile links the tools
    cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "openblas", "jansson", "libzstd", "libpcre2-8"],
                            capture_output=True, text=True, check=True).stdout.split()
    subprocess.run(["cc", "-O3", "-march=native", "-std=c11", "-D_GNU_SOURCE", "-fopenmp", "-I" + os.path.join(ROOT, "lib"),
                    os.path.join(ROOT, "bench", "fp8_kernels.c"), os.path.join(build, "libds.a")] + cflags +
                   ["-lm", "-o", exe], check=True)
    return exe


def torch_per_token(x):  # DeepGEMM per_token_cast_to_fp8 (no ue8m0), CPU
    m, n = x.shape
    v = x.view(m, -1, 128)
    amax = v.abs().float().amax(dim=2).view(m, -1).clamp(1e-4)
    sf = amax / 448.0
    return (v * (1.0 / sf.unsqueeze(2))).to(torch.float8_e4m3fn).view(m, n), sf


def torch_per_block(x):  # DeepGEMM per_block_cast_to_fp8 (dims multiples of 128 here)
    m, n = x.shape
    v = x.view(-1, 128, n // 128, 128)
    amax = v.abs().float().amax(dim=(1, 3), keepdim=True).clamp(1e-4)
    sf = amax / 448.0
    return (v * (1.0 / sf)).to(torch.float8_e4m3fn).view(m, n), sf.view(v.size(0), v.size(2))


def kernels(exe, n, threads, reps, shape):
    out = subprocess.run([exe, str(n), str(threads), str(reps)] + [str(s) for s in shape], capture_output=True,
                         text=True, check=True).stdout
    ours = {}
    for line in out.splitlines():
        r = json.loads(line)
        ours[r["op"]] = r["seconds"]
    torch.set_num_threads(threads)
    rows = n // 4096 // 128 * 128
    n = rows * 4096
    x = np.random.default_rng(1).standard_normal((rows, 4096)).astype(np.float32)
    xt = torch.from_numpy(x)
    q = np.clip(x, -448, 448).astype(F8)
    qt = xt.to(torch.float8_e4m3fn)
    ref = {
        "encode_e4m3_sat": [("ml_dtypes (clip + astype)", lambda: np.clip(x, -448, 448).astype(F8)),
                            ("torch .to(float8_e4m3fn)", lambda: xt.to(torch.float8_e4m3fn))],
        "decode_e4m3": [("ml_dtypes astype(float32)", lambda: q.astype(np.float32)),
                        ("torch .to(float32)", lambda: qt.to(torch.float32))],
        "quantize_1x128": [("torch per_token_cast_to_fp8", lambda: torch_per_token(xt)),
                           ("numpy reference", lambda: np_quantize(x, 1, 128, 0))],
        "quantize_128x128": [("torch per_block_cast_to_fp8", lambda: torch_per_block(xt)),
                             ("numpy reference", lambda: np_quantize(x, 128, 128, 0))],
        "quantize_128x1_transposed": [("torch per_token_cast_to_fp8 of x.T", lambda: torch_per_token(xt.t().contiguous())),
                                      ("numpy reference", lambda: np_quantize(np.ascontiguousarray(x.T), 1, 128, 0))],
    }
    rows_out = []
    for op, competitors in ref.items():
        for name, fn in competitors:
            t = best(fn, reps)
            rows_out.append((op, name, n / ours[op] / 1e6, n / t / 1e6, t / ours[op]))
    m, nn, k = shape
    a = np.random.default_rng(2).standard_normal((m, k)).astype(np.float32)
    b = (np.random.default_rng(3).standard_normal((nn, k)) * 0.02).astype(np.float32)
    aq, as_ = np_quantize(a, 1, 128, 0)
    bq, bs = np_quantize(b, 128, 128, 0)
    t_np = best(lambda: np_gemm(aq, as_, 1, bq, bs, 128), max(1, reps // 2))
    flops = 2.0 * m * nn * k
    gemm = {"fp8_gemm": flops / ours["fp8_gemm"] / 1e9, "sgemm": flops / ours["sgemm"] / 1e9,
            "numpy": flops / t_np / 1e9}
    return rows_out, gemm


def make_ckpt(path, mb):
    rng = np.random.default_rng(5)
    tensors, total, i = {}, 0, 0
    while total < mb * 1e6:
        w = (rng.standard_normal((2048, 2048)) * 0.02).astype(np.float32)
        tensors[f"model.layers.{i}.mlp.down_proj.weight"] = w
        tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones(2048, np.float32)
        total += w.nbytes
        i += 1
    from safetensors.numpy import save_file
    os.makedirs(path)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(ROOT, "share", "configs", "tiny.json")))
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"), indent=2)
    return total


def torch_quantize_ckpt(src, dst):
    from safetensors.torch import load_file, save_file
    t = load_file(os.path.join(src, "model.safetensors"))
    out = {}
    for name, w in t.items():
        if name.endswith("proj.weight"):
            q, s = torch_per_block(w)
            out[name] = q
            out[name + "_scale_inv"] = s.contiguous()
        else:
            out[name] = w
    os.makedirs(dst)
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--mb", type=int, default=64, help="elements x 4 bytes for the kernel benchmarks")
    ap.add_argument("--ckpt-mb", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gemm", default="512,2048,2048")
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin"))
    ap.add_argument("--build", default=None)
    args = ap.parse_args()
    build = args.build or next(os.path.join(ROOT, "build", d) for d in ("rel-cuda", "rel") if
                               os.path.exists(os.path.join(ROOT, "build", d, "libds.a")))
    exe = build_driver(build)
    n = args.mb * 1000 * 1000 // 4
    shape = [int(v) for v in args.gemm.split(",")]
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    print(f"# commit {commit}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
          f"ml_dtypes {ml_dtypes.__version__}")
    for th in [int(v) for v in args.threads.split(",")]:
        rows, gemm = kernels(exe, n, th, args.reps, shape)
        print(f"\n## {th} thread(s), {n / 1e6:.1f}M float32 elements")
        print(f"| op | competitor | ours Melem/s | theirs Melem/s | ours / theirs |")
        print("|---|---|---|---|---|")
        for op, name, o, t, ratio in rows:
            print(f"| {op} | {name} | {o:.0f} | {t:.0f} | {ratio:.1f}x |")
        print(f"\nscaled FP8 GEMM {shape[0]}x{shape[1]}x{shape[2]}: ours {gemm['fp8_gemm']:.1f} GFLOP/s, "
              f"OpenBLAS sgemm {gemm['sgemm']:.1f} GFLOP/s (ours / sgemm {gemm['fp8_gemm'] / gemm['sgemm']:.2f}), "
              f"numpy reference {gemm['numpy']:.1f} GFLOP/s (ours / numpy {gemm['fp8_gemm'] / gemm['numpy']:.1f}x)")
    with tempfile.TemporaryDirectory() as d:
        total = make_ckpt(os.path.join(d, "ck"), args.ckpt_mb)
        for th in [int(v) for v in args.threads.split(",")]:
            torch.set_num_threads(th)
            t0 = time.perf_counter()
            subprocess.run([os.path.join(args.bin, "ds-quantize"), "-q", "-m", os.path.join(d, "ck"), "-o",
                            os.path.join(d, f"ours{th}"), "--to", "fp8", "--threads", str(th)], check=True)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            torch_quantize_ckpt(os.path.join(d, "ck"), os.path.join(d, f"torch{th}"))
            t_torch = time.perf_counter() - t0
            print(f"\nds-quantize --to fp8, {total / 1e6:.0f} MB F32 checkpoint, {th} thread(s): ours "
                  f"{total / 1e6 / t_ours:.0f} MB/s ({t_ours:.2f} s), torch + safetensors {total / 1e6 / t_torch:.0f} MB/s "
                  f"({t_torch:.2f} s): {t_torch / t_ours:.1f}x")
    os.unlink(exe)


if __name__ == "__main__":
    main()
