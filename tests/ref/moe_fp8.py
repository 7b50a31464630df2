"""The routed experts of a MoE layer with V3's FP8 cache of the SwiGLU inputs, in numpy (float64), written from
the V3 report (section 3.3.3: the SwiGLU inputs cached in FP8 with the fine-grained quantization, the SwiGLU
output recomputed in the backward) independently of the C code; read by tests/unit/test_moe_fp8.c.

The forward computes g = x Wg^T, u = x Wu^T per (token, slot) and y = sum_k w_k Wd (silu(g) * u) from the
exact g, u; the backward reads g, u through their cache: E4M3 in 1x128 tiles along the expert's
intermediate dimension, s = max(amax / 448, 2^-126) (float32), q = e4m3_saturating(x / s), g' = q * s. It
recomputes a' = silu(g') * u' and forms, with dh = dy Wd (per slot):
  dw_k = <dh, a'>,  dWd += w_k dy (x) a',  da = w_k dh,  du = da silu(g'),  dg = da u' silu'(g'),
  dWg += dg (x) x,  dWu += du (x) x,  dx += dg Wg + du Wu.
Inputs are small multiples of powers of two so that g and u are exact in float32 whatever the summation
order: the C model's float32 GEMMs then see the values this script quantizes, and the cache's codes agree
exactly; what remains is float32 rounding downstream (tolerance in the C test). The same backward without
the cache (g, u exact) is written as the "f." arrays: the C run must match "q." and not "f.".
Format: as tests/ref/fp8_block.py (DSARR1). usage: moe_fp8.py OUT
"""
import struct
import sys

import ml_dtypes
import numpy as np

N, K, D, IE, E = 16, 2, 32, 16, 8  # tests/unit/model_fixture.h fixture_tiny: hidden 32, moe_intermediate 16


def quant_dequant(x):
    """1x128 tiles along the last axis (IE = 16 < 128: one tile per row), float32 arithmetic."""
    x = x.astype(np.float32)
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        for c0 in range(0, x.shape[1], 128):
            t = x[r, c0:c0 + 128]
            amax = np.float32(np.max(np.abs(t)))
            s = np.float32(max(np.float32(amax / np.float32(448.0)), np.float32(2.0 ** -126)))
            q = np.clip(t / s, -448, 448).astype(ml_dtypes.float8_e4m3fn)
            out[r, c0:c0 + 128] = q.astype(np.float32) * s
    return out


def silu(z):
    return z / (1 + np.exp(-z))


def dsilu(z):
    sg = 1 / (1 + np.exp(-z))
    return sg * (1 + z * (1 - sg))


def experts(x, idx, w, dy, Wg, Wu, Wd, cache):
    y = np.zeros((N, D))
    dx = np.zeros((N, D))
    dw = np.zeros((N, K))
    gWg, gWu, gWd = np.zeros_like(Wg), np.zeros_like(Wu), np.zeros_like(Wd)
    for r in range(N):
        for k in range(K):
            e = idx[r, k]
            g = Wg[e] @ x[r]
            u = Wu[e] @ x[r]
            y[r] += w[r, k] * (Wd[e] @ (silu(g) * u))
            if cache:
                g = quant_dequant(g.astype(np.float32)[None])[0].astype(np.float64)
                u = quant_dequant(u.astype(np.float32)[None])[0].astype(np.float64)
            a = silu(g) * u
            dh = Wd[e].T @ dy[r]
            dw[r, k] = dh @ a
            gWd[e] += w[r, k] * np.outer(dy[r], a)
            da = w[r, k] * dh
            du = da * silu(g)
            dg = da * u * dsilu(g)
            gWg[e] += np.outer(dg, x[r])
            gWu[e] += np.outer(du, x[r])
            dx[r] += dg @ Wg[e] + du @ Wu[e]
    return {"y": y, "dx": dx, "dw": dw, "gWg": gWg, "gWu": gWu, "gWd": gWd}


def main():
    rng = np.random.default_rng(7)
    # exact float32 GEMMs: |g| <= 32 * 1 * 0.25 on a grid of 2^-7
    x = rng.integers(-4, 5, (N, D)) * 2.0 ** -2
    Wg = rng.integers(-8, 9, (E, IE, D)) * 2.0 ** -5
    Wu = rng.integers(-8, 9, (E, IE, D)) * 2.0 ** -5
    Wd = rng.normal(0, 0.2, (E, D, IE)).astype(np.float32).astype(np.float64)
    dy = rng.normal(0, 1, (N, D)).astype(np.float32).astype(np.float64)
    w = rng.uniform(0.2, 1.0, (N, K)).astype(np.float32).astype(np.float64)
    idx = np.stack([rng.permutation(E)[:K] for _ in range(N)]).astype(np.int32)
    arrays = {"x": x, "Wg": Wg, "Wu": Wu, "Wd": Wd, "dy": dy, "w": w, "idx": idx.astype(np.float32)}
    for tag, cache in (("q", True), ("f", False)):
        for k, v in experts(x, idx, w, dy, Wg, Wu, Wd, cache).items():
            arrays[f"{tag}.{k}"] = v
    with open(sys.argv[1], "wb") as f:
        f.write(b"DSARR1\0\0")
        for name, a in arrays.items():
            a = np.ascontiguousarray(a, dtype=np.float32)
            f.write(struct.pack("<I", len(name)) + name.encode())
            f.write(struct.pack("<BB", 0, a.ndim) + struct.pack(f"<{a.ndim}Q", *a.shape))
            f.write(a.tobytes())


if __name__ == "__main__":
    main()
