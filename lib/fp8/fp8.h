/* fp8.h — the two FP8 element formats: E4M3 (float8_e4m3fn) and E5M2, to and from float32.
 *
 * Owns: the bit-level definition of both formats and every conversion between them and float32.
 *   E4M3: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; NaN = S.1111.111 (0x7f/0xff);
 *         largest finite 448, smallest normal 2^-6, smallest subnormal 2^-9.
 *   E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; IEEE-like: Inf 0x7c/0xfc, NaN above;
 *         largest finite 57344, smallest normal 2^-14, smallest subnormal 2^-16.
 * Encoding rounds to nearest, ties to even, subnormals included. Two overflow behaviours:
 *   - plain (ds_f32_to_e4m3, ds_f32_to_e5m2): bit-identical to ml_dtypes' casts. E4M3 has no Inf, so
 *     anything that rounds past 448 (beyond 464, and +-Inf) becomes NaN; E5M2 overflows to +-Inf.
 *   - saturating (_sat): finite overflow and +-Inf clamp to the largest finite value with the sign
 *     (448 / 57344), NaN stays NaN. This is CUDA's __NV_SATFINITE conversion (cvt.rn.satfinite) and what
 *     torch's .to(float8_e4m3fn) does; quantizers use it, so a scale rounding by one ulp never makes NaN.
 * NaN encodes to the canonical quiet NaN with the input's sign (E4M3 0x7f, E5M2 0x7e) and decodes to
 * the float32 quiet NaN 0x7fc00000 with the sign, as ml_dtypes does. Decoding is exact (every FP8 value
 * is a float32); the bulk decoders use 256-entry tables. These functions never depend on the thread count.
 */
#ifndef DS_FP8_FP8_H
#define DS_FP8_FP8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/dtype.h"

#define DS_E4M3_MAX 448.0f
#define DS_E5M2_MAX 57344.0f

/* Decode tables (index = the FP8 byte). */
extern const float ds_e4m3_table[256];
extern const float ds_e5m2_table[256];

static inline float ds_e4m3_to_f32(uint8_t v) { return ds_e4m3_table[v]; }
static inline float ds_e5m2_to_f32(uint8_t v) { return ds_e5m2_table[v]; }

/* Round |x| (as float32 bits `a`, not NaN, below the overflow threshold) to an FP8 magnitude code with
 * `man_bits` mantissa bits and exponent bias `bias`. Subnormals: adding 2^(emin - man_bits + 23) puts the
 * subnormal ulp in the last place of the float32 sum, so the FPU's round-to-nearest-even does the rounding
 * and the low bits of the sum are the code (a carry into the smallest normal is the right code too).
 * Normals: add half an ulp minus one, plus the kept lsb (ties to even), then drop the low bits; a
 * mantissa carry moves into the exponent, which is also right. Branch-free so loops vectorise. */
static inline uint32_t ds_fp8_round_mag_(uint32_t a, int man_bits, int bias) {
    const int drop = 23 - man_bits;
    const uint32_t min_normal = (uint32_t)(127 - bias + 1) << 23;             /* 2^(1-bias) */
    const uint32_t magic = (uint32_t)(127 + (1 - bias) - man_bits + 23) << 23; /* 2^(1-bias-man+23) */
    uint32_t sub = ds_f32_bits(ds_f32_from_bits(a) + ds_f32_from_bits(magic)) - magic;
    uint32_t nor = ((a + ((a >> drop) & 1u) + ((1u << (drop - 1)) - 1u)) >> drop) -
                   ((uint32_t)(127 - bias) << man_bits);
    return a < min_normal ? sub : nor;
}

/* E4M3, as ml_dtypes: overflow (|x| > 464 after rounding, or Inf) gives NaN. */
static inline uint8_t ds_f32_to_e4m3(float x) {
    uint32_t u = ds_f32_bits(x), a = u & 0x7fffffffu, sign = (u >> 24) & 0x80u;
    uint32_t m = ds_fp8_round_mag_(a, 3, 7);
    return (uint8_t)(sign | (a > 0x43e80000u ? 0x7fu : m)); /* 0x43e80000 = 464, ties down to 448 */
}

/* E4M3 saturating (CUDA satfinite): |x| beyond 448 and +-Inf give +-448; NaN gives NaN. */
static inline uint8_t ds_f32_to_e4m3_sat(float x) {
    uint32_t u = ds_f32_bits(x), a = u & 0x7fffffffu, sign = (u >> 24) & 0x80u;
    uint32_t m = ds_fp8_round_mag_(a, 3, 7);
    return (uint8_t)(sign | (a > 0x7f800000u ? 0x7fu : a > 0x43e00000u ? 0x7eu : m));
}

/* E5M2, as ml_dtypes: |x| >= 61440 (ties to even go up) and Inf give Inf; NaN gives 0x7e. */
static inline uint8_t ds_f32_to_e5m2(float x) {
    uint32_t u = ds_f32_bits(x), a = u & 0x7fffffffu, sign = (u >> 24) & 0x80u;
    uint32_t m = ds_fp8_round_mag_(a, 2, 15);
    return (uint8_t)(sign | (a > 0x7f800000u ? 0x7eu : a >= 0x47700000u ? 0x7cu : m));
}

/* E5M2 saturating: finite overflow and +-Inf give +-57344; NaN gives NaN. */
static inline uint8_t ds_f32_to_e5m2_sat(float x) {
    uint32_t u = ds_f32_bits(x), a = u & 0x7fffffffu, sign = (u >> 24) & 0x80u;
    uint32_t m = ds_fp8_round_mag_(a, 2, 15);
    return (uint8_t)(sign | (a > 0x7f800000u ? 0x7eu : a > 0x47600000u ? 0x7bu : m));
}

/* Bulk conversions. `t` is DS_F8_E4M3 or DS_F8_E5M2; anything else fails with DS_ERR (message set).
 * `saturate` selects the _sat encoders. */
int ds_fp8_encode(uint8_t *dst, ds_dtype t, const float *src, size_t n, int saturate);
int ds_fp8_decode(float *dst, ds_dtype t, const uint8_t *src, size_t n);
/* FP8 -> bf16 (exact: every FP8 value is a bf16 value). */
int ds_fp8_decode_bf16(uint16_t *dst, ds_dtype t, const uint8_t *src, size_t n);

/* Any dtype (including the FP8 ones) to float32: ds_convert_to_f32 from core/dtype.h, plus FP8.
 * Readers that want "this tensor as f32" whatever its stored type call this. */
int ds_fp8_convert_to_f32(float *dst, const void *src, ds_dtype t, size_t n);

/* io/safetensors.h's FP8 -> float32 hook (ds_st_set_fp8_decoder), registered when the program starts
 * (a constructor in fp8.c; call again after replacing it): ds_st_read_f32 of an F8_E4M3 / F8_E5M2 tensor
 * gives the code values exactly (ml_dtypes' astype(float32)), with no scale applied. Block-scaled weights
 * (a "<name>_scale_inv" beside them) are read dequantized by the model loader or ds_fp8_ckpt_read_f32;
 * ds_ckpt_read_f32 refuses them rather than return unscaled values. */
void ds_fp8_register_st_decoder(void);

#endif
