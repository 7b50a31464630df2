#include "fp8/e5m6.h"

#include <math.h>

#include "core/err.h"
#include "fp8/fp8.h"

/* OpenMP only above this many elements: small calls stay on the calling thread. */
#define PARALLEL_MIN (1 << 16)

#define E5M6_INF 0x7c0u
#define E5M6_NAN 0x7e0u
#define E5M6_MAXCODE 0x7bfu /* 65024 */

uint16_t ds_f32_to_e5m6(float x) {
    const uint32_t u = ds_f32_bits(x), a = u & 0x7fffffffu, sign = (u >> 20) & 0x800u;
    /* 0x477f0000 = 65280, the tie between 65024 and 2^16: even goes up, to Inf */
    return (uint16_t)(sign | (a > 0x7f800000u ? E5M6_NAN : a >= 0x477f0000u ? E5M6_INF : ds_fp8_round_mag_(a, 6, 15)));
}

uint16_t ds_f32_to_e5m6_sat(float x) {
    const uint32_t u = ds_f32_bits(x), a = u & 0x7fffffffu, sign = (u >> 20) & 0x800u;
    return (uint16_t)(sign | (a > 0x7f800000u ? E5M6_NAN : a > 0x477e0000u ? E5M6_MAXCODE : ds_fp8_round_mag_(a, 6, 15)));
}

float ds_e5m6_to_f32(uint16_t c) {
    const uint32_t sign = (uint32_t)(c & 0x800u) << 20, e = (c >> 6) & 31u, m = c & 63u;
    if (e == 0) return ds_f32_from_bits(ds_f32_bits((float)m * 0x1p-20f) | sign); /* subnormal (or zero): exact */
    if (e == 31) return ds_f32_from_bits(sign | (m ? 0x7fc00000u : 0x7f800000u));
    return ds_f32_from_bits(sign | (e + 112u) << 23 | m << 17); /* rebias 15 -> 127, mantissa to the top */
}

int ds_e5m6_scale_exp(float amax) {
    if (!(amax > 0)) return DS_E5M6_EXP_MIN;
    if (isinf(amax)) return DS_E5M6_EXP_MAX;
    int e = ilogbf(amax) - 15; /* amax in [2^E, 2^(E+1)): 65024 2^(E-15) covers it unless its mantissa > 1.111111b */
    if (e < DS_E5M6_EXP_MIN) return DS_E5M6_EXP_MIN; /* amax < 2^-111 < 65024 2^-126 */
    if (amax > ldexpf(DS_E5M6_MAX, e)) e++;           /* exact: a normal float times a power of two */
    return e > DS_E5M6_EXP_MAX ? DS_E5M6_EXP_MAX : e;
}

void ds_e5m6_pack(uint8_t *dst, const uint16_t *c, int64_t n) {
    int64_t i = 0;
    for (; i + 1 < n; i += 2, dst += 3) {
        const uint32_t v = (uint32_t)(c[i] & 0xfffu) | (uint32_t)(c[i + 1] & 0xfffu) << 12;
        dst[0] = (uint8_t)v, dst[1] = (uint8_t)(v >> 8), dst[2] = (uint8_t)(v >> 16);
    }
    if (i < n) dst[0] = (uint8_t)c[i], dst[1] = (uint8_t)((c[i] >> 8) & 0xfu);
}

void ds_e5m6_unpack(uint16_t *c, const uint8_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 1 < n; i += 2, src += 3) {
        const uint32_t v = (uint32_t)src[0] | (uint32_t)src[1] << 8 | (uint32_t)src[2] << 16;
        c[i] = (uint16_t)(v & 0xfffu), c[i + 1] = (uint16_t)(v >> 12);
    }
    if (i < n) c[i] = (uint16_t)(src[0] | (src[1] & 0xfu) << 8);
}

static int check_shape(const char *what, int64_t rows, int64_t cols) {
    if (rows < 0 || cols < 0 || (cols > 0 && rows > INT64_MAX / 2 / cols))
        return ds_fail(DS_ERR, "%s: bad shape [%lld, %lld]", what, (long long)rows, (long long)cols);
    return DS_OK;
}

/* 2^k as a float32, k in [-126, 127] */
static inline float pow2f(int k) { return ds_f32_from_bits((uint32_t)(k + 127) << 23); }

/* One tile of w <= 128 elements: x, its packed codes, its scale byte. */
static void quantize_tile(float *x, uint8_t *packed, uint8_t *scale, int64_t w) {
    uint16_t tmp[DS_E5M6_TILE];
    uint32_t m = 0; /* the largest finite |x| as bits: the bit order of non-negative floats is numeric */
    for (int64_t i = 0; i < w; i++) {
        const uint32_t a = ds_f32_bits(x[i]) & 0x7fffffffu;
        m = a < 0x7f800000u && a > m ? a : m;
    }
    const int e = ds_e5m6_scale_exp(ds_f32_from_bits(m));
    const float inv = pow2f(-e);
    for (int64_t i = 0; i < w; i++) tmp[i] = ds_f32_to_e5m6(x[i] * inv);
    ds_e5m6_pack(packed, tmp, w);
    *scale = (uint8_t)(e + 127);
}

static void dequantize_tile(float *x, uint8_t *packed, uint8_t *scale, int64_t w) {
    uint16_t tmp[DS_E5M6_TILE];
    int e = (int)*scale - 127;
    e = e < DS_E5M6_EXP_MIN ? DS_E5M6_EXP_MIN : e > DS_E5M6_EXP_MAX ? DS_E5M6_EXP_MAX : e;
    const float s = pow2f(e);
    ds_e5m6_unpack(tmp, packed, w);
    for (int64_t i = 0; i < w; i++) x[i] = ds_e5m6_to_f32(tmp[i]) * s;
}

/* Every 1x128 tile of a [rows, cols] matrix, rows in parallel (they share no byte). */
static int each_tile(const char *what, float *x, uint8_t *codes, uint8_t *scales, int64_t rows, int64_t cols,
                     void (*fn)(float *, uint8_t *, uint8_t *, int64_t)) {
    DS_TRY(check_shape(what, rows, cols));
    const int64_t nt = (cols + DS_E5M6_TILE - 1) / DS_E5M6_TILE;
    const size_t rb = ds_e5m6_row_bytes(cols);
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < nt; j++) {
            const int64_t c0 = j * DS_E5M6_TILE, w = cols - c0 < DS_E5M6_TILE ? cols - c0 : DS_E5M6_TILE;
            fn(x + r * cols + c0, codes + (size_t)r * rb + (size_t)c0 / 2 * 3, scales + r * nt + j, w);
        }
    return DS_OK;
}

int ds_e5m6_quantize(uint8_t *codes, uint8_t *scales, const float *x, int64_t rows, int64_t cols) {
    return each_tile("e5m6 quantize", (float *)x, codes, scales, rows, cols, quantize_tile); /* x only read */
}

int ds_e5m6_dequantize(float *x, const uint8_t *codes, const uint8_t *scales, int64_t rows, int64_t cols) {
    return each_tile("e5m6 dequantize", x, (uint8_t *)codes, (uint8_t *)scales, rows, cols, dequantize_tile);
}
