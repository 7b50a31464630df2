#!/usr/bin/env python3
"""Independent numpy reference for E5M6 (lib/fp8/e5m6.h) and the o_proj path of --fp8 training.

E5M6 here: 1 sign, 5 exponent bits (bias 15), 6 mantissa bits, IEEE-like (Inf, NaN, subnormals): the
top 12 bits of a float16 rounded to 6 mantissa bits. Two independent encoders:
  - from float16 bits: round the 10-bit mantissa to 6 by integer arithmetic (ties to even), which is exact
    across subnormals and normals because E5M6 shares float16's exponent field; used for all 2^16 float16s;
  - from float32 values: float64 arithmetic, |x| / ulp rounded with np.rint (ties to even), ulp = 2^-20
    below 2^-14, else 2^(floor(log2 |x|) - 6); used for random and boundary float32s.
Writes a little-endian file for tests/unit/test_e5m6.c (test `against_numpy`):
  magic b"DSE56RF1"
  uint64 n, float32 x[n], uint16 enc[n], uint16 enc_sat[n]         (encoders)
  float32 dec[4096]                                               (decoder, every code)
  uint64 ncases, then per case: uint64 rows, cols, float32 x[rows*cols],
      uint8 codes[rows*ceil(1.5 cols)], uint8 scales[rows*ceil(cols/128)], float32 deq[rows*cols]

`oproj` writes the o_proj case of --fp8 training (test `oproj_against_numpy`): the attention output o
[200, 200] (two tiles per row, the last short; 200 tokens: a short last 128-token tile) is kept in E5M6 and
read back (oq); Fprop y = oq W^T with oq in E4M3 1x128 tiles and W [160, 200] in 128x128 blocks; Dgrad
dx = dy W (dy 1x128, W^T's blocks); Wgrad dW = dy^T oq with dy and oq requantized straight to E4M3 128x1
tiles (no E4M3 1x128 step in between: the E5M6 values are the cache). E4M3 quantization and the block GEMM
are tests/ref/fp8_block.py's. The file: magic b"DSE56OP1", then float32 o, W, dy, uint8 codes, scales,
float32 oq, y, dx, dW, in that order.
usage: e5m6_ref.py codec|oproj OUT
"""
import os
import struct
import sys

import numpy as np

MAX = 65024.0
NAN, INF, MAXCODE = 0x7E0, 0x7C0, 0x7BF


def enc_from_f16_bits(h):
    """uint16 float16 bits -> uint16 E5M6 codes (IEEE overflow to Inf)."""
    h = h.astype(np.uint32)
    sign = (h >> 15) << 11
    a = h & 0x7FFF
    r = (a + 7 + ((a >> 4) & 1)) >> 4  # round the low 4 bits away, ties to even; carries move up
    r = np.where(a >= 0x7C00, np.where(a > 0x7C00, NAN, INF), np.minimum(r, INF))
    return (sign | r).astype(np.uint16)


def enc_f32(x, sat=False):
    """float32 -> E5M6 codes by float64 arithmetic."""
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32)
    sign = ((bits >> 31) << 11).astype(np.uint32)
    with np.errstate(all="ignore"):
        a = np.abs(x.astype(np.float64))
        _, ex = np.frexp(a)  # a = f 2^ex, f in [0.5, 1): floor(log2 a) = ex - 1
        ulp = np.where(a < 2.0 ** -14, 2.0 ** -20, np.ldexp(1.0, ex - 1 - 6))
        q = np.rint(a / ulp) * ulp  # exact: at most 8 significant bits
        if sat:
            q = np.minimum(q, MAX)
        h = q.astype(np.float16).view(np.uint16).astype(np.uint32)  # exact for q <= 65024; 65536 -> inf
        code = h >> 4
    out = np.where(np.isnan(a), NAN, np.where(np.isinf(a), MAXCODE if sat else INF, code))
    return (sign | out).astype(np.uint16)


def dec(codes):
    """E5M6 codes -> float32, through float16 (code << 4 is the float16)."""
    c = np.asarray(codes, np.uint16).astype(np.uint32)
    f = (c << 4).astype(np.uint16).view(np.float16).astype(np.float32)
    nan = ((c >> 6) & 31 == 31) & (c & 63 != 0)
    canon = np.where(c & 0x800, np.uint32(0xFFC00000), np.uint32(0x7FC00000)).view(np.float32)
    return np.where(nan, canon, f).astype(np.float32)


def scale_exp(amax):
    """smallest e with amax <= 65024 2^e, clamped to [-126, 126] (float64 search, independent of ilogb)."""
    if not amax > 0:
        return -126
    e = int(np.floor(np.log2(amax))) - 17
    while amax > MAX * 2.0 ** e:
        e += 1
    while e - 1 >= -126 and amax <= MAX * 2.0 ** (e - 1):
        e -= 1
    return max(-126, min(126, e))


def pack(codes):
    """one row of 12-bit codes -> bytes, pairs little-endian, an odd tail in two bytes."""
    c = [int(v) for v in codes]
    out = bytearray()
    for i in range(0, len(c) - 1, 2):
        v = c[i] | (c[i + 1] << 12)
        out += bytes([v & 0xFF, (v >> 8) & 0xFF, v >> 16])
    if len(c) % 2:
        out += bytes([c[-1] & 0xFF, c[-1] >> 8])
    return bytes(out)


def quantize(x):
    """x[rows, cols] float32 -> (packed codes, UE8M0 scale bytes, dequantized float32)."""
    rows, cols = x.shape
    codes, scales, deq = b"", bytearray(), np.zeros_like(x)
    for r in range(rows):
        row = np.zeros(cols, np.uint16)
        for c0 in range(0, cols, 128):
            t = x[r, c0:c0 + 128].astype(np.float64)
            fin = t[np.isfinite(t)]
            amax = float(np.max(np.abs(fin))) if fin.size else 0.0
            e = scale_exp(amax)
            scaled = (t * 2.0 ** -e).astype(np.float32)  # exact: a power of two
            row[c0:c0 + 128] = enc_f32(scaled)
            with np.errstate(over="ignore"):  # Inf codes times the scale: Inf
                deq[r, c0:c0 + 128] = (dec(row[c0:c0 + 128]).astype(np.float64) * 2.0 ** e).astype(np.float32)
            scales.append(e + 127)
        codes += pack(row)
    return codes, bytes(scales), deq


def quant_cases(rng):
    cases = []
    for rows, cols in ((4, 128), (3, 300), (5, 257), (2, 1), (7, 130)):
        x = (rng.standard_normal((rows, cols)) * np.exp2(rng.uniform(-30, 30, (rows, 1)))).astype(np.float32)
        cases.append(x)
    x = rng.standard_normal((6, 256)).astype(np.float32)
    x[0, :128] = 0                       # an all-zero tile: e = -126, dequantizes to zeros
    x[1, 5], x[1, 200] = np.inf, -np.nan  # Inf and NaN stay; the rest of their tiles scaled by the finite amax
    x[2, :128] *= 1e-38                   # float32 subnormals and tiny normals
    x[3, 128:] = 65024.0 * 2.0 ** 40       # an exact power-of-two boundary: amax = 65024 2^e
    x[4, 7] = np.float32(3.4e38)          # the largest magnitudes
    x[5, 130] = np.float32(65024.0 * 2.0 ** 3 * (1 + 2.0 ** -20))  # just above a boundary: e + 1
    cases.append(x)
    return cases


def boundary_inputs():
    """every E5M6 value (as float32), every midpoint, and their float32 neighbours"""
    v = dec(np.arange(4096, dtype=np.uint16))
    v = np.unique(v[np.isfinite(v)]).astype(np.float64)
    mids = (v[:-1] + v[1:]) / 2
    pts = np.concatenate([v, mids, [65280.0, 65536.0, 1e30]]).astype(np.float32)
    return np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(-np.inf))])


def oproj(path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fp8_block as fb  # E4M3 tiles and the block GEMM
    rng = np.random.default_rng(23)
    n, c, out = 200, 200, 160
    o = (rng.standard_normal((n, c)) * np.exp2(rng.uniform(-3, 3, (n, 1)))).astype(np.float32)
    w = (rng.standard_normal((out, c)) * 0.05).astype(np.float32)
    dy = (rng.standard_normal((n, out)) * 1e-3).astype(np.float32)
    codes, scales, oq = quantize(o)
    xq, xs = fb.quantize(oq, 1, 128, 0)
    wq, ws = fb.quantize(w, 128, 128, 0)
    y = fb.gemm(xq, xs, 1, wq, ws, 128)
    dyq, dys = fb.quantize(dy, 1, 128, 0)
    wtq, wts = fb.quantize(np.ascontiguousarray(w.T), 128, 128, 0)
    dx = fb.gemm(dyq, dys, 1, wtq, wts, 128)
    dytq, dyts = fb.quantize(np.ascontiguousarray(dy.T), 1, 128, 0)
    otq, ots = fb.quantize(np.ascontiguousarray(oq.T), 1, 128, 0)  # 128x1 tiles of oq
    dw = fb.gemm(dytq, dyts, 1, otq, ots, 1)
    with open(path, "wb") as f:
        f.write(b"DSE56OP1")
        for a in (o, w, dy):
            f.write(a.astype("<f4").tobytes())
        f.write(codes)
        f.write(scales)
        for a in (oq, y, dx, dw):
            f.write(np.asarray(a, np.float32).astype("<f4").tobytes())


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("codec", "oproj"):
        sys.exit("usage: e5m6_ref.py codec|oproj OUT")
    if sys.argv[1] == "oproj":
        return oproj(sys.argv[2])
    rng = np.random.default_rng(20250101)
    f16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x16 = f16.view(np.float16).astype(np.float32)
    bits = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    logu = (np.exp2(rng.uniform(-24, 17, 1 << 20)) * rng.choice([-1.0, 1.0], 1 << 20)).astype(np.float32)
    b = boundary_inputs()
    x = np.concatenate([x16, b, -b, bits, logu]).astype(np.float32)
    enc = enc_f32(x)
    # the two encoders agree on every float16 input (NaN payloads: both canonical)
    e16 = enc_from_f16_bits(f16)
    bad = np.flatnonzero(e16 != enc[:1 << 16])
    if bad.size:
        sys.exit(f"reference encoders disagree at f16 {f16[bad[0]]:#06x}: {e16[bad[0]]:#05x} vs {enc[bad[0]]:#05x}")
    enc_sat = enc_f32(x, sat=True)
    with open(sys.argv[2], "wb") as f:
        f.write(b"DSE56RF1")
        f.write(struct.pack("<Q", x.size))
        f.write(x.tobytes())
        f.write(enc.astype("<u2").tobytes())
        f.write(enc_sat.astype("<u2").tobytes())
        f.write(dec(np.arange(4096, dtype=np.uint16)).tobytes())
        cases = quant_cases(rng)
        f.write(struct.pack("<Q", len(cases)))
        for c in cases:
            codes, scales, deq = quantize(c)
            f.write(struct.pack("<QQ", *c.shape))
            f.write(c.astype("<f4").tobytes())
            f.write(codes)
            f.write(scales)
            f.write(deq.astype("<f4").tobytes())


if __name__ == "__main__":
    main()
