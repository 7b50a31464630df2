/* fp8_quant.h — FP8 E4M3 block quantization on the GPU (the FP8 GEMMs' operand preparation).
 *
 * Owns: the three tilings of spec section 10 — 1x128 (activations, along the contiguous dim), 128x1
 * (activations and gradients for Wgrad, written transposed so that the reduction dim is contiguous)
 * and 128x128 (weights, optionally also written transposed for Dgrad) — and their scale layouts.
 * Implementation: kernels/fp8_quant.cu.
 *
 * Semantics (bit-exact with the CPU reference, spec 9.4): for each tile,
 *     amax = max |x| over the tile (NaN propagates),  s = max(amax / 448, 2^-126) (the tile's own amax),
 *     pow2: s = 2^ceil(log2 s) (exact, from the bits),   q = e4m3_satfinite_rne(x / s)  (IEEE division)
 * and s is stored as the dequantization multiplier (x ~ q * s, like weight_scale_inv).
 * Tiles that run past `rows` (128x1, 128x128) count only the rows that exist.
 *
 * Scale layouts: "rows-contiguous" = scale[cb * scale_ld + r] (cuBLASLt's VEC128 layout, see blaslt.h),
 * otherwise scale[r * scale_ld + cb] (REF's [rows, cols/128]). 128x128 scales are always row-major
 * [ceil(rows/128)][scale_ld].
 */
#ifndef DS_KERNELS_FP8_QUANT_H
#define DS_KERNELS_FP8_QUANT_H

#include <stdint.h>

#include "core/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const void *x; ds_dtype x_type; /* DS_F32 or DS_BF16 */
    int rows, cols, ldx;
    uint8_t *q; int ldq;            /* 1x128, 128x128: [rows][ldq]; 128x1: q holds the transpose [cols][ldq] */
    float *scale; int scale_ld;
    int scale_rows_contig;          /* 1x128 and 128x1 only (rows of the written q) */
    int pow2;                       /* power-of-two scales (ue8m0) */
    uint8_t *q_t; int ldq_t;        /* 128x128 only, optional: also write the transpose [cols][ldq_t] ... */
    float *scale_t; int scale_t_ld; /* ... with its scales [ceil(cols/128)][scale_t_ld] */
    void *stream;
} ds_quant_args;

/* 1x128 tiles along cols (cols % 128 == 0): scale s(r, cb). */
int ds_cuda_quant_1x128(const ds_quant_args *a);
/* 128x1 tiles down the rows, written transposed: q[c][r] = quant(x[r][c]) with one scale per (c, r/128):
 * the result is a 1x128-tiled [cols, rows] operand. rows need not be a multiple of 128 (the last tile
 * is short), ldq >= rows. */
int ds_cuda_quant_128x1_t(const ds_quant_args *a);
/* 128x128 blocks: scale s(r/128, c/128); with q_t, also the transposed weight (same blocks, same scales
 * transposed): the Dgrad operand. */
int ds_cuda_quant_128x128(const ds_quant_args *a);

/* e4m3 (byte) -> f32 / bf16, with a per-tile scale as written above (mode: 0 = 1x128, 2 = 128x128). */
int ds_cuda_dequant(const uint8_t *q, int rows, int cols, int ldq, const float *scale, int scale_ld,
                    int scale_rows_contig, int mode, void *y, ds_dtype y_type, int ldy, void *stream);

#ifdef __cplusplus
}
#endif

#endif
