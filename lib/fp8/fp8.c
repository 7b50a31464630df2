#include "fp8/fp8.h"

#include <math.h>

#include "core/err.h"
#include "io/safetensors.h"

/* Magnitudes as constant expressions, so the tables are plain static data (no init order, no locks). */
#define E4M3_MAG(c)                                                                                    \
    ((c) == 0x7f ? NAN                                                                                 \
     : ((c) >> 3) == 0 ? (float)((c) & 7) * 0x1p-9f                                                    \
                       : (float)(8 + ((c) & 7)) * 0x1p-10f * (float)(1 << ((c) >> 3)))
#define E5M2_MAG(c)                                                                                    \
    (((c) >> 2) == 31 ? (((c) & 3) ? NAN : INFINITY)                                                   \
     : ((c) >> 2) == 0 ? (float)((c) & 3) * 0x1p-16f                                                   \
                       : (float)(4 + ((c) & 3)) * 0x1p-17f * (float)(1 << ((c) >> 2)))

#define ROW8(M, b) M(b), M(b + 1), M(b + 2), M(b + 3), M(b + 4), M(b + 5), M(b + 6), M(b + 7)
#define ROW64(M, b) ROW8(M, b), ROW8(M, b + 8), ROW8(M, b + 16), ROW8(M, b + 24), ROW8(M, b + 32), \
                    ROW8(M, b + 40), ROW8(M, b + 48), ROW8(M, b + 56)
#define POS128(M) ROW64(M, 0), ROW64(M, 64)
#define NEG_E4M3(c) (-E4M3_MAG(c))
#define NEG_E5M2(c) (-E5M2_MAG(c))

const float ds_e4m3_table[256] = {POS128(E4M3_MAG), POS128(NEG_E4M3)};
const float ds_e5m2_table[256] = {POS128(E5M2_MAG), POS128(NEG_E5M2)};

static int bad_type(ds_dtype t) {
    return ds_fail(DS_ERR, "fp8: not an FP8 dtype: %s", ds_dtype_name(t));
}

int ds_fp8_encode(uint8_t *dst, ds_dtype t, const float *src, size_t n, int saturate) {
    if (t == DS_F8_E4M3) {
        if (saturate)
            for (size_t i = 0; i < n; i++) dst[i] = ds_f32_to_e4m3_sat(src[i]);
        else
            for (size_t i = 0; i < n; i++) dst[i] = ds_f32_to_e4m3(src[i]);
        return DS_OK;
    }
    if (t == DS_F8_E5M2) {
        if (saturate)
            for (size_t i = 0; i < n; i++) dst[i] = ds_f32_to_e5m2_sat(src[i]);
        else
            for (size_t i = 0; i < n; i++) dst[i] = ds_f32_to_e5m2(src[i]);
        return DS_OK;
    }
    return bad_type(t);
}

int ds_fp8_decode(float *dst, ds_dtype t, const uint8_t *src, size_t n) {
    const float *table = t == DS_F8_E4M3 ? ds_e4m3_table : t == DS_F8_E5M2 ? ds_e5m2_table : NULL;
    if (!table) return bad_type(t);
    for (size_t i = 0; i < n; i++) dst[i] = table[src[i]];
    return DS_OK;
}

int ds_fp8_decode_bf16(uint16_t *dst, ds_dtype t, const uint8_t *src, size_t n) {
    const float *table = t == DS_F8_E4M3 ? ds_e4m3_table : t == DS_F8_E5M2 ? ds_e5m2_table : NULL;
    if (!table) return bad_type(t);
    for (size_t i = 0; i < n; i++) dst[i] = ds_f32_to_bf16(table[src[i]]);
    return DS_OK;
}

static int st_decode(float *dst, const void *src, ds_dtype t, size_t n) {
    return ds_fp8_decode(dst, t, src, n) ? -1 : 0;
}

void ds_fp8_register_st_decoder(void) { ds_st_set_fp8_decoder(st_decode); }

/* Whenever lib/fp8 is linked into a program, its generic safetensors reads decode FP8 (every tool does:
 * the model's loader uses the quantizers); a program without it gets io's "needs the fp8 decoder" error. */
__attribute__((constructor)) static void register_st_decoder_at_load(void) { ds_fp8_register_st_decoder(); }

int ds_fp8_convert_to_f32(float *dst, const void *src, ds_dtype t, size_t n) {
    if (t == DS_F8_E4M3 || t == DS_F8_E5M2) return ds_fp8_decode(dst, t, src, n);
    if (ds_convert_to_f32(dst, src, t, n))
        return ds_fail(DS_ERR, "cannot convert %s to F32", ds_dtype_name(t));
    return DS_OK;
}
