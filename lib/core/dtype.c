#include "core/dtype.h"

#include <math.h>

static const char *const names[DS_DTYPE_COUNT] = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2",
                                                  "I64", "I32", "I16", "I8",   "U8",      "BOOL"};
static const size_t sizes[DS_DTYPE_COUNT] = {8, 4, 2, 2, 1, 1, 8, 4, 2, 1, 1, 1};

const char *ds_dtype_name(ds_dtype t) { return t >= 0 && t < DS_DTYPE_COUNT ? names[t] : "?"; }

ds_dtype ds_dtype_from_name(const char *s) {
    for (int i = 0; i < DS_DTYPE_COUNT; i++)
        if (!strcmp(s, names[i])) return (ds_dtype)i;
    return DS_DTYPE_INVALID;
}

size_t ds_dtype_size(ds_dtype t) { return t >= 0 && t < DS_DTYPE_COUNT ? sizes[t] : 0; }

float ds_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 31u, man = h & 1023u, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: value = man * 2^-24 */
            float f = (float)man * 5.9604644775390625e-8f;
            memcpy(&u, &f, 4);
            u |= sign;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ds_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u; /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u; /* rounds to >= 65520: Inf */
    if (a < 0x38800000u) {                       /* below the smallest normal 2^-14: subnormal or zero */
        float af;
        memcpy(&af, &a, 4);
        /* scale so one f16 subnormal ulp (2^-24) is 1, then round to nearest even */
        float m = af * 16777216.0f;
        float r = nearbyintf(m); /* default rounding mode: nearest even */
        return sign | (uint16_t)r;
    }
    uint32_t mant = a & 0x7fffffu, exp = (a >> 23) - 112u;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

int ds_convert_to_f32(float *dst, const void *src, ds_dtype t, size_t n) {
    switch (t) {
    case DS_F32: memcpy(dst, src, n * 4); return 0;
    case DS_F64: { const double *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; return 0; }
    case DS_BF16: { const uint16_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = ds_bf16_to_f32(s[i]); return 0; }
    case DS_F16: { const uint16_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = ds_f16_to_f32(s[i]); return 0; }
    case DS_I64: { const int64_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; return 0; }
    case DS_I32: { const int32_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; return 0; }
    case DS_I16: { const int16_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; return 0; }
    case DS_I8: { const int8_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; return 0; }
    case DS_U8:
    case DS_BOOL: { const uint8_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; return 0; }
    default: return -1;
    }
}

int ds_convert_from_f32(void *dst, ds_dtype t, const float *src, size_t n) {
    switch (t) {
    case DS_F32: memcpy(dst, src, n * 4); return 0;
    case DS_BF16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = ds_f32_to_bf16(src[i]); return 0; }
    case DS_F16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = ds_f32_to_f16(src[i]); return 0; }
    default: return -1;
    }
}
