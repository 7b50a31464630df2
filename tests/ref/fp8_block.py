#!/usr/bin/env python3
"""numpy reference of DeepSeek-V3's fine-grained FP8 quantization and scaled GEMM.

Writes the cases and their expected results for tests/unit/test_fp8.c (test `against_numpy_blocks`) as a
little-endian container: b"DSARR1\\0\\0", then records until EOF:
  uint32 name_len, name, uint8 dtype (0 f32, 1 u8, 2 u16), uint8 ndim, uint64 dims[ndim], data.
The quantizer is written from the published definitions, independently of the C code: zero-pad to whole
blocks (DeepGEMM per_block_cast_to_fp8, README_WEIGHTS), amax per block (NaN left out, as the CUDA
kernels' fmaxf reduction does), s = amax / 448 kept at least 2^-126 (each tile's own amax: no 1e-4 floor),
optional ue8m0 (ceil to a power of two on the bits, DeepGEMM ceil_to_ue8m0), q = e4m3(x / s) saturating
(ml_dtypes after np.clip), crop. The 1x128 case is cross-checked against a torch transcription of
DeepSeek's inference/kernel.py act_quant on the tiles where its 1e-4 amax floor does not act (amax >= 1e-4). The GEMM follows inference/kernel.py fp8_gemm with each
128-block dot computed exactly (float64) and rounded once to float32.
usage: fp8_block.py OUT
"""
import struct
import sys

import ml_dtypes
import numpy as np

F8 = ml_dtypes.float8_e4m3fn
DT = {np.dtype(np.float32): 0, np.dtype(np.uint8): 1, np.dtype(np.uint16): 2}


def ceil_to_ue8m0(s):
    bits = s.view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.int64) + ((bits & 0x7FFFFF) != 0)
    return (np.clip(e, 1, 254).astype(np.uint32) << np.uint32(23)).view(np.float32)


def quantize(x, br, bc, ue8m0):
    r, c = x.shape
    rp, cp = -(-r // br) * br, -(-c // bc) * bc
    xp = np.zeros((rp, cp), np.float32)
    xp[:r, :c] = x
    v = xp.reshape(rp // br, br, cp // bc, bc)
    amax = np.fmax.reduce(np.abs(v), axis=(1, 3))  # NaN left out, as fmaxf
    s = np.fmax((amax / np.float32(448)).astype(np.float32), np.float32(2.0**-126))
    if ue8m0:
        s = ceil_to_ue8m0(s)
    y = v / s[:, None, :, None]
    q = np.clip(y, -448, 448).astype(F8).reshape(rp, cp)[:r, :c]
    return np.ascontiguousarray(q).view(np.uint8), s


def dequantize(q, s, br, bc):
    x = q.view(F8).astype(np.float32)
    return x * np.repeat(np.repeat(s, br, 0), bc, 1)[: q.shape[0], : q.shape[1]]


def gemm(aq, a_s, a_br, bq, b_s, b_br):
    a = aq.view(F8).astype(np.float64)
    b = bq.view(F8).astype(np.float64)
    m, k = a.shape
    n = b.shape[0]
    acc = np.zeros((m, n), np.float32)
    for kb in range(-(-k // 128)):
        d = (a[:, kb * 128:(kb + 1) * 128] @ b[:, kb * 128:(kb + 1) * 128].T).astype(np.float32)
        sa = np.repeat(a_s[:, kb], a_br)[:m][:, None]
        sb = np.repeat(b_s[:, kb], b_br)[:n][None, :]
        acc = acc + d * sa * sb
    return acc


def torch_act_quant(x, ue8m0):
    """kernel.py act_quant, transcribed to torch ops (the Triton kernel needs a GPU)."""
    import torch
    t = torch.from_numpy(x).view(x.shape[0], -1, 128)
    amax = t.abs().amax(dim=-1).clamp(min=1e-4)
    s = amax / 448.0
    if ue8m0:
        s = torch.from_numpy(ceil_to_ue8m0(s.numpy()))  # kernel.py: exp2(ceil(log2 s)); see docs/DESIGN.md
    y = (t / s.unsqueeze(-1)).to(torch.float8_e4m3fn)
    return y.view(torch.uint8).reshape(x.shape).numpy(), s.numpy()


def main():
    rng = np.random.default_rng(1234)
    out = {}

    def put(name, a):
        out[name] = np.ascontiguousarray(a)

    # activations: rows of very different magnitudes (a gradient-sized row at 1e-10, tiles under DeepSeek's 1e-4
    # floor), an all-zero row, a tail
    x = rng.standard_normal((8, 300)).astype(np.float32)
    x[1] *= 1e-10
    x[2] = 0
    x[3] *= 1e3
    x[4, :128] *= 1e-5
    x[5, 7] = 1e4
    x[6] = np.float32(448) * np.float32(rng.integers(-8, 9, 300)) / np.float32(8)  # exact codes and ties
    # near-ties: values whose x / s lands within float32 rounding of a midpoint between E4M3 neighbours,
    # where x / s (kernel.py) and x * (1 / s) (DeepGEMM's helpers) can round differently
    codes = np.arange(1, 126, dtype=np.uint8).view(F8).astype(np.float64)
    mids = (codes[:-1] + codes[1:]) / 2
    sc = np.float64(np.float32(np.float32(3) / np.float32(448)))
    near = (rng.choice(mids, 300) * sc).astype(np.float32)
    near = np.nextafter(near, near * rng.choice([-1, 0, 2], 300).astype(np.float32))
    near[0] = 3
    x[7] = near * rng.choice(np.float32([-1, 1]), 300)
    wt = (rng.standard_normal((300, 70)) * 0.02).astype(np.float32)
    w = (rng.standard_normal((300, 260)) * 0.02).astype(np.float32)
    w[128:256, 128:256] = 0           # an all-zero block: scale = 2^-126
    w[:128, 256:] *= 1e-4             # a tail block below act_quant's 1e-4 floor: scaled by its own amax
    w[200, 17] = np.nan               # stays NaN, left out of its block's amax
    put("x", x)
    put("wt", wt)
    put("w", w)
    for ue in (0, 1):
        q, s = quantize(x, 1, 128, ue)
        xp = np.zeros((8, 384), np.float32)
        xp[:, :300] = x
        tq, ts = torch_act_quant(xp, ue)
        big = np.abs(xp).reshape(8, 3, 128).max(axis=2) >= np.float32(1e-4)  # where act_quant's floor is idle
        if not (big.sum() == 17 and np.array_equal(ts[big], s[big])
                and np.array_equal(tq.reshape(8, 3, 128)[big], np.pad(q, ((0, 0), (0, 84))).reshape(8, 3, 128)[big])):
            sys.exit("fp8_block.py: the numpy quantizer and the torch act_quant transcription disagree")
        if np.any(q[1] == 0) or not np.all(ts[1] > s[1]):
            sys.exit("fp8_block.py: the 1e-10 row should keep its codes (act_quant's floor flushes them)")
        if not ue:
            recip = np.clip(x[7] * (np.float32(1) / s[7, 0]), -448, 448).astype(F8).view(np.uint8)
            if np.array_equal(recip[:128], q[7, :128]):
                sys.exit("fp8_block.py: the near-tie row does not tell x / s from x * (1 / s)")
        put(f"x.q.{ue}", q)
        put(f"x.s.{ue}", s)
        put(f"x.dq.{ue}", dequantize(q, s, 1, 128))
        q, s = quantize(np.ascontiguousarray(wt.T), 1, 128, ue)
        put(f"wt.qt.{ue}", q)
        put(f"wt.st.{ue}", s)
        q, s = quantize(w, 128, 128, ue)
        put(f"w.q.{ue}", q)
        put(f"w.s.{ue}", s)
        dq = dequantize(q, s, 128, 128)
        put(f"w.dq.{ue}", dq)
        put(f"w.dq_bf16.{ue}", dq.astype(ml_dtypes.bfloat16).view(np.uint16))

    # GEMMs: Fprop-like (1x128 activations x 128x128 weights, tails in M, N and K), Wgrad-like (both 1x128)
    a = rng.standard_normal((37, 300)).astype(np.float32)
    b = (rng.standard_normal((45, 300)) * 0.05).astype(np.float32)
    aq, as_ = quantize(a, 1, 128, 0)
    bq, bs = quantize(b, 128, 128, 0)
    c0 = rng.standard_normal((37, 45)).astype(np.float32)
    put("g.aq", aq), put("g.as", as_), put("g.bq", bq), put("g.bs", bs), put("g.c0", c0)
    put("g.c", gemm(aq, as_, 1, bq, bs, 128))
    put("g.cacc", c0 + gemm(aq, as_, 1, bq, bs, 128))
    b2 = rng.standard_normal((33, 300)).astype(np.float32) * 10
    b2q, b2s = quantize(b2, 1, 128, 1)
    put("g.b2q", b2q), put("g.b2s", b2s)
    put("g.c2", gemm(aq, as_, 1, b2q, b2s, 1))

    # FP8 training numerics of one Linear y = x W^T (spec 10): Fprop with 1x128 x and 128x128 W, Dgrad with
    # 1x128 dy and the same FP8 W transposed, Wgrad over tokens with 128x1 dy and x, where x is the
    # forward's 1x128 FP8 (cached) requantized 128x1. 200 tokens: a short last token tile.
    xs = rng.standard_normal((200, 300)).astype(np.float32)
    ws = (rng.standard_normal((260, 300)) * 0.05).astype(np.float32)
    dy = (rng.standard_normal((200, 260)) * 1e-3).astype(np.float32)
    xq, xs_s = quantize(xs, 1, 128, 0)
    wq, ws_s = quantize(ws, 128, 128, 0)
    put("lin.x", xs), put("lin.w", ws), put("lin.dy", dy)
    put("lin.y", gemm(xq, xs_s, 1, wq, ws_s, 128))
    dyq, dy_s = quantize(dy, 1, 128, 0)
    wtq, wt_s = quantize(np.ascontiguousarray(ws.T), 128, 128, 0)  # W^T's blocks: W's blocks transposed
    assert np.array_equal(dequantize(wtq, wt_s, 128, 128), dequantize(wq, ws_s, 128, 128).T)
    put("lin.dx", gemm(dyq, dy_s, 1, wtq, wt_s, 128))
    dytq, dyt_s = quantize(np.ascontiguousarray(dy.T), 1, 128, 0)
    x_fwd = dequantize(xq, xs_s, 1, 128)
    xtq, xt_s = quantize(np.ascontiguousarray(x_fwd.T), 1, 128, 0)
    put("lin.dw", gemm(dytq, dyt_s, 1, xtq, xt_s, 1))

    write_arrays(sys.argv[1], out)


def write_arrays(path, arrays):
    """the container described above, from a dict name -> contiguous array (f32, u8 or u16)"""
    with open(path, "wb") as f:
        f.write(b"DSARR1\0\0")
        for name, a in arrays.items():
            f.write(struct.pack("<I", len(name)) + name.encode())
            f.write(struct.pack("<BB", DT[a.dtype], a.ndim) + struct.pack(f"<{a.ndim}Q", *a.shape))
            f.write(a.tobytes())


if __name__ == "__main__":
    main()
