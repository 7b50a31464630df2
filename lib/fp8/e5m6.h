/* e5m6.h — E5M6, the 12-bit format DeepSeek-V3 keeps the attention output in (the input of the Linear
 * after attention, o_proj, which attention's backward reads too: V3 report section 3.3.3), with
 * power-of-two 1x128 tile scales, packed two codes to three bytes.
 *
 * Owns: the E5M6 element format, its encoders/decoders, the packing, and the tiled cache of a float32
 * matrix. The paper names the format only; the layout chosen here (docs/DESIGN.md "E5M6"):
 *   1 sign, 5 exponent bits (bias 15), 6 mantissa bits: float16's exponent range with 6 mantissa bits,
 *   IEEE-like. A code is the top 12 bits of the float16 of the same value (code = f16 bits >> 4).
 *   largest finite 65024 = (2 - 2^-6) 2^15, smallest normal 2^-14, smallest subnormal 2^-20 (gradual
 *   underflow kept); exponent 31: Inf (mantissa 0) and NaN (else; canonical quiet NaN 0x7e0 | sign).
 * Encoding rounds to nearest, ties to even, subnormals included, straight from float32 (no double
 * rounding through float16). Overflow: ds_f32_to_e5m6 goes to +-Inf as IEEE does (|x| >= 65280, the tie
 * above 65024, rounds to Inf), ds_f32_to_e5m6_sat clamps finite overflow and +-Inf to +-65024. NaN
 * keeps its sign. Decoding is exact (every E5M6 value is a float32).
 *
 * Tiled cache (V3's 1x128 activation tiles with power-of-two scales) of x[rows, cols]:
 *   per row r and 128-column tile j (the last one shorter): amax = max |x| over the tile's finite
 *   elements; the scale is 2^e with e the smallest integer such that amax <= 65024 * 2^e, clamped to
 *   [DS_E5M6_EXP_MIN, DS_E5M6_EXP_MAX] (so an all-zero tile has e = -126); q = ds_f32_to_e5m6(x * 2^-e)
 *   (the product is exact: a power of two), so finite values never overflow, +-Inf stay +-Inf, NaN stays
 *   NaN; x' = decode(q) * 2^e, exact too. Scales are stored as UE8M0 bytes (e + 127), DeepGEMM's
 *   exponent-only scale format.
 *   Codes of a row are packed in pairs, element 2i and 2i+1 into bytes 3i..3i+2 (little-endian 24 bits,
 *   the even element low); an odd row ends in two bytes. Each row starts at r * ds_e5m6_row_bytes(cols),
 *   so rows are independent. Bytes: rows * ceil(1.5 cols) for the codes + rows * ceil(cols/128) scales,
 *   i.e. 12 bits + 1/128 byte per element for even cols (ds_e5m6_cache_bytes).
 * Deterministic; the same bits for any thread count.
 */
#ifndef DS_FP8_E5M6_H
#define DS_FP8_E5M6_H

#include <stddef.h>
#include <stdint.h>

#define DS_E5M6_MAX 65024.0f
#define DS_E5M6_TILE 128
#define DS_E5M6_EXP_MIN (-126) /* 2^e and 2^-e are both normal float32 numbers */
#define DS_E5M6_EXP_MAX 126

uint16_t ds_f32_to_e5m6(float x);     /* IEEE overflow: +-Inf */
uint16_t ds_f32_to_e5m6_sat(float x); /* finite overflow and +-Inf: +-65024 */
float ds_e5m6_to_f32(uint16_t code);  /* code < 4096 */

/* The power-of-two scale exponent of a tile whose largest finite magnitude is amax (>= 0). */
int ds_e5m6_scale_exp(float amax);

/* Bytes of one packed row of `cols` codes, of a packed [rows, cols] matrix, of its scales, and of both. */
static inline size_t ds_e5m6_row_bytes(int64_t cols) { return (size_t)(3 * cols + 1) / 2; }
static inline size_t ds_e5m6_scale_bytes(int64_t rows, int64_t cols) {
    return (size_t)rows * (size_t)((cols + DS_E5M6_TILE - 1) / DS_E5M6_TILE);
}
static inline size_t ds_e5m6_cache_bytes(int64_t rows, int64_t cols) {
    return (size_t)rows * ds_e5m6_row_bytes(cols) + ds_e5m6_scale_bytes(rows, cols);
}

/* Pack n codes (12 bits each) into ds_e5m6_row_bytes(n) bytes, and back. */
void ds_e5m6_pack(uint8_t *dst, const uint16_t *codes, int64_t n);
void ds_e5m6_unpack(uint16_t *codes, const uint8_t *src, int64_t n);

/* Quantize x[rows, cols] (row-major) into packed codes [rows * ds_e5m6_row_bytes(cols)] and UE8M0 scales
 * [rows, ceil(cols/128)] as above. DS_ERR on a bad shape (message set). */
int ds_e5m6_quantize(uint8_t *codes, uint8_t *scales, const float *x, int64_t rows, int64_t cols);
/* x[rows, cols] = the values the cache holds. */
int ds_e5m6_dequantize(float *x, const uint8_t *codes, const uint8_t *scales, int64_t rows, int64_t cols);

#endif
