/* dtype.h — element types shared by every format and op: names, sizes, bf16/f16 <-> f32.
 *
 * Owns: the dtype enum (the safetensors set), its spellings ("F32", "BF16", "F8_E4M3", ...) and
 * element sizes, and the bf16/f16 conversions (round to nearest even, NaN kept quiet).
 * FP8 codecs live in fp8/ (they need ml_dtypes-exact rounding and their own tests).
 */
#ifndef DS_CORE_DTYPE_H
#define DS_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    DS_F64, DS_F32, DS_F16, DS_BF16, DS_F8_E4M3, DS_F8_E5M2,
    DS_I64, DS_I32, DS_I16, DS_I8, DS_U8, DS_BOOL,
    DS_DTYPE_COUNT,
    DS_DTYPE_INVALID = -1
} ds_dtype;

const char *ds_dtype_name(ds_dtype t);      /* "F32"; "?" for invalid */
ds_dtype ds_dtype_from_name(const char *s); /* DS_DTYPE_INVALID when unknown */
size_t ds_dtype_size(ds_dtype t);           /* bytes per element; 0 for invalid */

/* A float's bits and back (no aliasing: memcpy). */
static inline uint32_t ds_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float ds_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float ds_bf16_to_f32(uint16_t h) { return ds_f32_from_bits((uint32_t)h << 16); }

static inline uint16_t ds_f32_to_bf16(float f) {
    uint32_t u = ds_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                         /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* f on the bf16 grid (nearest even, NaN kept quiet), still a float: what storing it as bf16 keeps. */
static inline float ds_bf16_grid(float f) { return ds_bf16_to_f32(ds_f32_to_bf16(f)); }

float ds_f16_to_f32(uint16_t h);
uint16_t ds_f32_to_f16(float f);

/* Convert n elements of type `src_t` at src to float32. Supported: every float type and the
 * integer types (exact up to 2^24). FP8 types need fp8/ and are rejected here (returns -1). */
int ds_convert_to_f32(float *dst, const void *src, ds_dtype src_t, size_t n);
/* Convert float32 to F32, F16 or BF16 (returns -1 for others). */
int ds_convert_from_f32(void *dst, ds_dtype dst_t, const float *src, size_t n);

#endif
