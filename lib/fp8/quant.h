/* quant.h — fine-grained FP8 quantization: a float32 matrix split into tiles or blocks, each stored as
 * E4M3 codes plus one float32 dequantisation scale.
 *
 * Owns: the scale rule and the tile/block layouts DeepSeek-V3 uses (spec sections 9.3, 9.4, 10):
 *   1x128 tiles   activations and activation gradients: per row (token), per 128 columns (channels);
 *   128x1 tiles   the Wgrad operands: per 128 rows (tokens), per column — produced here directly as the
 *                 transpose, i.e. x^T quantized in 1x128 tiles;
 *   128x128       weights, and the weight_scale_inv of DeepSeek's FP8 checkpoints.
 * A matrix x[rows, cols] with tile/block shape [br, bc] has the row-major scale grid
 * [ceil(rows/br), ceil(cols/bc)]; tails (rows or cols not a multiple of the block) form smaller blocks,
 * which is what DeepSeek's zero padding amounts to (zeros never raise an amax).
 * The rule, per tile/block (DeepSeek's kernel.py act_quant and DeepGEMM's per_block_cast_to_fp8):
 *   amax  = max |x|                       over the non-NaN elements (fmaxf, as the CUDA kernels reduce);
 *                                         a NaN element still encodes as NaN, an Inf makes s = Inf
 *   s     = max(amax / 448, 2^-126)       float32 arithmetic: each tile scaled by its own amax, however
 *                                         small (activation gradients of a large batch are ~1e-10); the
 *                                         bound only keeps s and 1/s normal and finite, so an all-zero
 *                                         tile gets s = 2^-126 and dequantizes to exactly 0. DeepSeek's
 *                                         inference kernels floor amax at 1e-4 instead: see docs/DESIGN.md
 *   s     = 2^ceil(log2 s)                with DS_FP8_SCALE_UE8M0 (V3.1's scale_fmt "ue8m0"), computed on
 *                                         the bits (exact), clamped to [2^-126, 2^127] like DeepGEMM
 *   q     = e4m3_saturating(x / s)        a true float32 division, as act_quant does
 * and dequantisation is x' = float(q) * s. The scale stored is s itself ("scale_inv" in checkpoints: it
 * multiplies on dequantisation). Decisions and sources: docs/DESIGN.md, section "FP8".
 * All functions are deterministic and give the same bits for any thread count.
 */
#ifndef DS_FP8_QUANT_H
#define DS_FP8_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define DS_FP8_BLOCK 128
/* The smallest scale: FLT_MIN, so that the scale and its reciprocal (2^126) are normal floats. Tiles whose
 * amax is below 448 * 2^-126 (5.3e-36) get it. */
#define DS_FP8_SCALE_MIN 0x1p-126f

typedef enum {
    DS_FP8_SCALE_F32 = 0,   /* s = max(amax / 448, 2^-126) */
    DS_FP8_SCALE_UE8M0 = 1, /* s rounded up to a power of two (exponent-only scales) */
} ds_fp8_scale_fmt;

/* Scale grid extent along one dimension: ceil(n / block). */
static inline int64_t ds_fp8_nblocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

/* The dequantisation scale for a block whose largest magnitude is amax. */
float ds_fp8_scale_for_amax(float amax, ds_fp8_scale_fmt fmt);

/* Quantize x[rows, cols] (row-major) in [br, bc] blocks: q[rows, cols] E4M3 codes and
 * scale[ceil(rows/br), ceil(cols/bc)]. Any br, bc >= 1; DeepSeek uses (1,128) and (128,128).
 * Returns DS_ERR on bad sizes (message set). */
int ds_fp8_quantize(uint8_t *q, float *scale, const float *x, int64_t rows, int64_t cols, int64_t br, int64_t bc,
                    ds_fp8_scale_fmt fmt);

/* Quantize the transpose: qt[cols, rows] and scale_t[cols, ceil(rows/128)] hold x^T in 1x128 tiles, which
 * are 128x1 tiles of x (the Wgrad operand layout, K = rows contiguous). */
int ds_fp8_quantize_transposed(uint8_t *qt, float *scale_t, const float *x, int64_t rows, int64_t cols,
                               ds_fp8_scale_fmt fmt);

/* x[r, c] = float(q[r, c]) * scale[r / br, c / bc]. */
int ds_fp8_dequantize(float *x, const uint8_t *q, const float *scale, int64_t rows, int64_t cols, int64_t br,
                      int64_t bc);
/* Same, rounded to bf16 (what DeepSeek's fp8_cast_bf16 writes: the product in float32, then RNE). */
int ds_fp8_dequantize_bf16(uint16_t *x, const uint8_t *q, const float *scale, int64_t rows, int64_t cols,
                           int64_t br, int64_t bc);

/* Transpose a matrix quantized in square [b, b] blocks: qt[cols, rows], scale_t = scale^T. Exact: the
 * result dequantises to the transpose of what q dequantises to (the Dgrad operand W^T from W). */
int ds_fp8_transpose_blocks(uint8_t *qt, float *scale_t, const uint8_t *q, const float *scale, int64_t rows,
                            int64_t cols, int64_t b);

/* Quantisation error of x against dequantize(quantize(x)), accumulated in double. */
typedef struct {
    double max_abs;     /* max |x - x'| */
    double sq_err;      /* sum (x - x')^2 */
    double sq_ref;      /* sum x^2 */
    int64_t n, nonfinite; /* elements, and those where x or x' is NaN/Inf */
} ds_fp8_err;
void ds_fp8_err_add(ds_fp8_err *e, const float *x, const float *x_approx, size_t n);
/* Relative Frobenius error ||x - x'|| / ||x|| (0 for an all-zero x reproduced exactly, Inf otherwise). */
double ds_fp8_err_rel_fro(const ds_fp8_err *e);

#endif
