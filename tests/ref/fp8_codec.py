#!/usr/bin/env python3
"""Expected FP8 conversions from ml_dtypes (and torch, as a second opinion on saturation).

Writes a little-endian file for tests/unit/test_fp8.c (test `against_ml_dtypes`):
  magic b"DSF8REF1", uint64 n, float32 x[n],
  uint8 e4m3[n], e4m3_sat[n], e5m2[n], e5m2_sat[n],
  float32 decode_e4m3[256], decode_e5m2[256]
The inputs: every FP8 value of both formats, every midpoint between neighbours (ties) and the float32
values one ulp either side of each value and midpoint (rounding is monotone, so this pins every decision
boundary), the overflow thresholds, float32 subnormals, +-0, +-Inf, NaNs with many payloads, random bit
patterns (all of float32, NaN payloads included) and log-uniform random values over the FP8 range.
The saturating casts are ml_dtypes applied after clipping to +-max (NaN passes np.clip unchanged); for
E4M3 that is checked against torch's cast, which saturates, before the file is written.
usage: fp8_codec.py OUT [N_RANDOM]
"""
import sys

import ml_dtypes
import numpy as np

E4M3, E5M2 = ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2


def boundary_inputs():
    out = []
    for t in (E4M3, E5M2):
        v = np.arange(256, dtype=np.uint8).view(t).astype(np.float32)
        v = np.unique(v[np.isfinite(v)]).astype(np.float64)
        mids = (v[:-1] + v[1:]) / 2  # exact in float64; representable in float32 (one extra bit)
        pts = np.concatenate([v, mids, [v[-1] + (v[-1] - v[-2]) / 2, 2 * v[-1]]]).astype(np.float32)
        out += [pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(-np.inf))]
    return np.concatenate(out)


def main():
    path = sys.argv[1]
    n_random = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 22
    rng = np.random.default_rng(20241226)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 448, 464, 480, 57344, 61440, 65536,
                        3.4028235e38, 1e-45, 1.1754942e-38, 1.1754944e-38], dtype=np.float32)
    nan_payloads = (np.uint32(0x7f800001) + rng.integers(0, 0x7fffff, 4096, dtype=np.uint32)) | \
        (rng.integers(0, 2, 4096, dtype=np.uint32) << np.uint32(31))
    f32_subnormals = rng.integers(1, 0x800000, 4096, dtype=np.uint32) | \
        (rng.integers(0, 2, 4096, dtype=np.uint32) << np.uint32(31))
    bits = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(np.uint32)
    logu = (np.exp2(rng.uniform(-20, 17, n_random)) * rng.choice([-1.0, 1.0], n_random)).astype(np.float32)
    pts = boundary_inputs()
    x = np.concatenate([special, pts, -pts, nan_payloads.view(np.float32), f32_subnormals.view(np.float32),
                        bits.view(np.float32), logu]).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        e4 = x.astype(E4M3).view(np.uint8)
        e4s = np.clip(x, -448, 448).astype(E4M3).view(np.uint8)
        e5 = x.astype(E5M2).view(np.uint8)
        e5s = np.clip(x, -57344, 57344).astype(E5M2).view(np.uint8)
    try:
        import torch
        t = torch.from_numpy(x).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        # torch's NaN keeps the sign as ml_dtypes does; any disagreement means the references disagree
        bad = np.flatnonzero(t != e4s)
        if bad.size:
            sys.exit(f"fp8_codec.py: torch and clipped ml_dtypes disagree on {bad.size} inputs, "
                     f"first {x[bad[0]]!r} ({x.view(np.uint32)[bad[0]]:#010x}): torch {t[bad[0]]:#04x} "
                     f"ml_dtypes {e4s[bad[0]]:#04x}")
    except ImportError:
        pass
    codes = np.arange(256, dtype=np.uint8)
    d4 = codes.view(E4M3).astype(np.float32)
    d5 = codes.view(E5M2).astype(np.float32)
    with open(path, "wb") as f:
        f.write(b"DSF8REF1")
        f.write(np.uint64(x.size).tobytes())
        for a in (x, e4, e4s, e5, e5s, d4, d5):
            f.write(np.ascontiguousarray(a).tobytes())
    print(f"{x.size} inputs", file=sys.stderr)


if __name__ == "__main__":
    main()
