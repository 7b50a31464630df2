#!/usr/bin/env python3
"""Brute-force reference of the Hopper accumulation model of lib/fp8/gemm.h (--fp8-accum hopper).

Written from the model's statement in gemm.h, not from the C: exact rational arithmetic (fractions) for
the products, the alignment to the largest exponent of each step of 32 products and the accumulator, the
truncation toward zero to 14 significant bits, and numpy float32 for the promotions (fl32(out + acc)).
Operands: E4M3 codes (ml_dtypes) of values spread over 2^-8..2^8 with some zeros and exact cancellations,
power-of-two scales per 128-wide block (so the C's double products are exact and the results must be
bit-identical). Writes tests/unit/test_fp8.c's container (fp8_block.py's format) with, per case c:
  c<i>.dims (u16: M, N, K), c<i>.aq [M, K] u8, c<i>.as [M, kb] f32 (1x128), c<i>.bq [N, K] u8,
  c<i>.bs [ceil(N/128), kb] f32 (128x128), c<i>.nc<NC> [M, N] f32 for every NC in NCS.
usage: fp8_accum.py OUT
"""
import math
import sys
from fractions import Fraction

import ml_dtypes
import numpy as np

from fp8_block import write_arrays

BITS, GROUP = 14, 32
NCS = (0, 32, 40, 128)
F8 = ml_dtypes.float8_e4m3fn


def floor_log2(x):  # x > 0, a Fraction
    e = x.numerator.bit_length() - x.denominator.bit_length()
    return e - 1 if x < Fraction(2) ** e else e


def cut(x, u):  # x truncated toward zero to a multiple of the power of two u
    return math.trunc(x / u) * u


def hopper_dot(xs, ys, nc):
    out, acc, k, since, n = np.float32(0), Fraction(0), 0, 0, len(xs)
    while k < n:
        g = min(GROUP, n - k)
        if nc:
            g = min(g, nc - since)
        terms = [xs[k + j] * ys[k + j] for j in range(g)]
        live = [abs(t) for t in terms + [acc] if t != 0]
        if live:
            u = Fraction(2) ** (max(floor_log2(t) for t in live) - (BITS - 1))
            s = cut(acc, u) + sum(cut(t, u) for t in terms)
            acc = cut(s, Fraction(2) ** (floor_log2(abs(s)) - (BITS - 1))) if s else Fraction(0)
        k, since = k + g, since + g
        if (nc and since == nc) or k == n:
            out = np.float32(out + np.float32(float(acc)))
            acc, since = Fraction(0), 0
    return out


def operand(rng, rows, k):
    x = rng.standard_normal((rows, k)) * 2.0 ** rng.integers(-8, 9, (rows, k))
    x[rng.random((rows, k)) < 0.05] = 0
    return np.clip(x, -448, 448).astype(F8).view(np.uint8)


def main():
    rng = np.random.default_rng(2323)
    out = {}
    cases = [(2, 3, 1), (3, 4, 7), (3, 5, 32), (2, 4, 33), (3, 3, 100), (3, 4, 257), (2, 2, 300)]
    for i, (m, n, k) in enumerate(cases):
        kb = -(-k // 128)
        aq, bq = operand(rng, m, k), operand(rng, n, k)
        if i == len(cases) - 1:  # exact cancellation: the second half undoes the first
            bq[:, 150:] = bq[:, :150]
            aq[:, 150:] = aq[:, :150] ^ 0x80
        a_s = (2.0 ** rng.integers(-4, 5, (m, kb))).astype(np.float32)
        b_s = (2.0 ** rng.integers(-4, 5, (-(-n // 128), kb))).astype(np.float32)
        a = aq.view(F8).astype(np.float64)
        b = bq.view(F8).astype(np.float64)
        xs = [[Fraction(float(a[r, j])) * Fraction(float(a_s[r, j // 128])) for j in range(k)] for r in range(m)]
        ys = [[Fraction(float(b[r, j])) * Fraction(float(b_s[r // 128, j // 128])) for j in range(k)] for r in range(n)]
        c = f"c{i}"
        out[c + ".dims"] = np.array([m, n, k], np.uint16)
        out[c + ".aq"], out[c + ".as"], out[c + ".bq"], out[c + ".bs"] = aq, a_s, bq, b_s
        for nc in NCS:
            out[f"{c}.nc{nc}"] = np.array([[hopper_dot(xs[r], ys[q], nc) for q in range(n)] for r in range(m)],
                                          np.float32)
    write_arrays(sys.argv[1], {name: np.ascontiguousarray(v) for name, v in out.items()})


if __name__ == "__main__":
    main()
