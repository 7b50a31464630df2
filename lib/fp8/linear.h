/* linear.h — FP8 training numerics for Linear layers (spec section 10): the op layer's three GEMM entry
 * points (ds_ops.gemm, gemm_rows, gemm_wgrad in lib/ops/ops.h), same signatures, computed as DeepSeek-V3
 * trains: operands quantized to E4M3 with fine-grained scales, products by the scaled-GEMM reference
 * (gemm.h: exact 128-wide block dots, float32 promotion). A backend runs every Linear's Fprop, Dgrad and
 * Wgrad in FP8 by calling these instead of its fp32 GEMMs for Linear layers only; the embedding, the
 * output head, MoE gating, norms and the attention core stay in float32 (they never come here).
 *
 * Which operand gets which tiling follows from the transpose flags of the three Linear GEMMs
 * (y = x W^T with x [n, in], W [out, in]):
 *   Fprop  gemm(0,1, n,out,in,  x, W)  : x in 1x128 tiles (per token, per 128 channels), W in 128x128 blocks
 *   Dgrad  gemm(0,0, n,in,out,  dy, W) : dy in 1x128 tiles (per token), W in 128x128 blocks (transposed
 *                                        exactly: the same FP8 weight as Fprop)
 *   Wgrad  gemm(1,0, out,in,n,  dy, x) : dy and x in 128x1 tiles (per channel, per 128 tokens), the
 *                                        contraction over tokens; x as the forward quantized it (1x128
 *                                        FP8, dequantized and requantized 128x1) when cache_input_fp8 is set,
 *                                        which is what caching Linear inputs in FP8 amounts to numerically
 * i.e. ta = 0: A is an activation (1x128) and B a weight (128x128); ta = 1: both are activations (128x1).
 * Per-token tiles for activation gradients in Dgrad are deliberate: 128x128 blocks there diverged in
 * DeepSeek's experiments (App. B.2). Results are float32: C = alpha * product + beta * C.
 * Not thread-safe across concurrent calls (one scratch area per thread, grown on demand and kept).
 */
#ifndef DS_FP8_LINEAR_H
#define DS_FP8_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "fp8/gemm.h"
#include "fp8/quant.h"

typedef struct {
    ds_fp8_scale_fmt act_scale_fmt;    /* Fprop inputs and Wgrad's x; V3: DS_FP8_SCALE_F32 */
    ds_fp8_scale_fmt grad_scale_fmt;   /* activation gradients (Dgrad and Wgrad dy) */
    ds_fp8_scale_fmt weight_scale_fmt; /* weights */
    int cache_input_fp8;               /* 1 (default): Wgrad's x is the forward's FP8 tiles, requantized */
    ds_fp8_accum accum;                /* the GEMMs' accumulation (gemm.h): exact (default) or Hopper's */
} ds_fp8_train_opts;

/* Process-wide settings for the functions below (defaults: f32 scales everywhere, cache_input_fp8 = 1,
 * exact accumulation). */
void ds_fp8_train_set(const ds_fp8_train_opts *o);
ds_fp8_train_opts ds_fp8_train_get(void);

/* ds_ops.gemm: C[M,N] = alpha * op(A) op(B) + beta * C, op(A) [M,K], op(B) [K,N]; A stored [M,K] (ta=0) or
 * [K,M] (ta=1), B stored [K,N] (tb=0) or [N,K] (tb=1); row strides lda, ldb, ldc. beta = 0 ignores C. */
void ds_fp8_linear_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                        int ldb, float beta, float *C, int ldc);

/* ds_ops.gemm_rows (MoE experts' Fprop, tb = 1, and Dgrad, tb = 0): for g < ng, rows r in [off[g], off[g+1]):
 * C[r, :N] = alpha * A[r, :K] op(B_g) + beta * C[r, :N], B_g = B + g * strideB stored [N,K] (tb=1) or [K,N]. */
void ds_fp8_linear_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                             const float *B, size_t strideB, int ldb, float beta, float *C, int ldc);

/* ds_ops.gemm_wgrad (MoE experts' Wgrad): for g < ng, rows r in [off[g], off[g+1]):
 * C_g[M,N] = alpha * A_g^T B_g + beta * C_g, A_g = those rows of A [*, M], B_g = of B [*, N]. The 128x1 tiles
 * start at each group's first row. */
void ds_fp8_linear_gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                              const float *B, int ldb, float beta, float *C, size_t strideC, int ldc);

/* A backend table for the Linear layers: `base` with gemm, gemm_rows and gemm_wgrad replaced by the three
 * functions above (everything else, memory included, is base's; the CPU backend only, since these read
 * host memory). A model that routes its Linear GEMMs through this table and the rest (embedding, head,
 * router, attention core) through `base` trains with V3's FP8 numerics. */
struct ds_ops;
void ds_fp8_linear_ops(struct ds_ops *out, const struct ds_ops *base);

/* The same table for GEMMs whose activation operand already lies on an FP8 grid of 1x128 tiles with
 * power-of-two scales (V3's FP8 dispatch: the MoE experts' inputs and the gradients before the down
 * projection, quantized once before the all-to-all): the 1x128 quantizations of activations and gradients
 * (A when ta = 0; Wgrad's cached x) use power-of-two scales, which give such an operand back its own codes
 * (the tile's amax is its largest code, at least 224, times its scale, so the scale comes back the same or
 * halved with every code doubled: the values are unchanged), so these GEMMs consume the dispatched FP8 as
 * it arrived. The 128x1 re-tilings and the weights keep the process-wide formats. */
void ds_fp8_linear_ops_pow2(struct ds_ops *out, const struct ds_ops *base);

/* The same for a Linear whose input the caller keeps itself in a low-precision cache (the attention output
 * in E5M6, model.h attn_out_e5m6): Wgrad's x is taken as given, already the cached values, and only
 * requantized to 128x1 tiles, whatever cache_input_fp8 says; Fprop and Dgrad as ds_fp8_linear_gemm. */
void ds_fp8_linear_gemm_stored(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                               const float *B, int ldb, float beta, float *C, int ldc);
void ds_fp8_linear_ops_stored(struct ds_ops *out, const struct ds_ops *base);

/* Failures inside the void entry points (out of memory) are sticky: this returns the first one's code
 * (message in ds_errmsg()) and clears it. The trainer checks it once per step. */
int ds_fp8_linear_status(void);

#endif
