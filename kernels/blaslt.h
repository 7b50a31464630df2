/* blaslt.h — dense matrix products on the GPU through cuBLASLt: bf16, f32, and FP8 E4M3 with
 * DeepSeek-style block scaling (1x128 activation tiles, 128x128 weight blocks) on sm_90.
 *
 * Owns: the mapping from our row-major convention to cuBLASLt's column-major one, the FP8 scale-tensor
 * layouts cuBLASLt expects, a per-handle cache of descriptors and heuristic-chosen algorithms (so a
 * repeated shape costs one launch), and the workspace. Implementation: kernels/blaslt.cu.
 *
 * Convention (row-major, like every other op in libds):
 *     C[m,n] = alpha * op(A) . op(B) + beta * C
 *     op(A) = A, stored [m,k]      (a_trans = 0)   or  A^T, A stored [k,m]  (a_trans = 1)
 *     op(B) = B, stored [k,n]      (b_trans = 0)   or  B^T, B stored [n,k]  (b_trans = 1)
 * A Linear layer y = x W^T (x [tokens, in], W [out, in]) is a = x, b = W, b_trans = 1.
 *
 * FP8 (a_type = b_type = DS_F8_E4M3): cuBLASLt runs only the "TN" form, i.e. a_trans = 0 and b_trans = 1:
 * both operands stored with k contiguous. Output bf16 or f32. Every 128-wide slice of k carries its
 * own scales, applied to the fp32 partial sum of that slice (spec 9.4):
 *     C[i,j] = alpha * sum_kb sa(i,kb) * sb(j,kb) * sum_{k in kb} A[i,k] B[j,k]   (+ beta C)
 * Scale tensors (f32), by mode:
 *   DS_SCALE_1X128   for an operand with `rows` rows (m for A, n for B): s(r,kb) at scale[kb*ld + r],
 *                    i.e. [k/128][rows] with rows contiguous.
 *   DS_SCALE_128X128 s(r,kb) at scale[(r/128)*ld + kb] with ld = ds_blockscale_ld(k) = round_up(k/128, 4):
 *                    [ceil(rows/128)][ld], row-major like the checkpoint's weight_scale_inv but with rows
 *                    padded to 16 bytes (measured on an H100 with cuBLASLt 13.1, tests/gpu/test_blaslt.cu;
 *                    for every V3 shape k/128 is already a multiple of 4, so the two layouts coincide).
 * Allowed pairs (a, b): (1X128, 128X128), (1X128, 1X128), (128X128, 1X128). k % 128 == 0, m and n
 * multiples of 4 (cuBLASLt's rules on sm_90; other shapes are refused with a message).
 * Accuracy (measured): inside each 128-wide k block Hopper's FP8 tensor-core accumulation keeps ~13-14
 * bits, so an f32 result differs from the exact block-scaled value by ~1.3e-4 relative (norm).
 * bf16 and f32 products: f32 inputs run in true f32 (no TF32) and need an f32 output.
 */
#ifndef DS_KERNELS_BLASLT_H
#define DS_KERNELS_BLASLT_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DS_SCALE_NONE = 0, DS_SCALE_1X128 = 1, DS_SCALE_128X128 = 2 } ds_blockscale;

/* Row stride (in floats) of a 128x128 scale tensor for reduction length k. */
static inline int ds_blockscale_ld(int k) { return ((k / 128) + 3) / 4 * 4; }

typedef struct {
    int m, n, k;
    const void *a; ds_dtype a_type; int lda; int a_trans;
    const void *b; ds_dtype b_type; int ldb; int b_trans;
    void *c; ds_dtype c_type; int ldc;
    float alpha, beta;
    /* FP8 only */
    ds_blockscale a_scale_mode, b_scale_mode;
    const float *a_scale, *b_scale;
    int tf32; /* f32 operands: let the tensor cores round them to TF32 (CUBLAS_COMPUTE_32F_FAST_TF32) */
    /* strided batch (batch <= 1: one product); strides in elements */
    int batch;
    long long stride_a, stride_b, stride_c;
} ds_gemm;

typedef struct ds_blaslt ds_blaslt;

/* One handle per stream. workspace_bytes 0 = 32 MiB (cuBLAS's recommendation for Hopper). */
int ds_blaslt_create(ds_blaslt **out, void *stream, size_t workspace_bytes);
void ds_blaslt_free(ds_blaslt *h);
int ds_blaslt_set_stream(ds_blaslt *h, void *stream);

/* Run one product. The first call for a shape queries cuBLASLt's heuristic and caches the choice. */
int ds_blaslt_gemm(ds_blaslt *h, const ds_gemm *g);

/* Time the heuristic's top candidates (up to max_algos, each `reps` runs) on the given operands and
 * keep the fastest for this shape. For benchmarks and start-up tuning; the operands are overwritten
 * with the same results (C is recomputed, so beta must be 0). */
int ds_blaslt_autotune(ds_blaslt *h, const ds_gemm *g, int max_algos, int reps);

/* A one-line description of the algorithm cached for g's shape ("" when none), for logs. */
const char *ds_blaslt_algo_desc(ds_blaslt *h, const ds_gemm *g);

#ifdef __cplusplus
}
#endif

#endif
