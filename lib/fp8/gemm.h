/* gemm.h — the FP8 scaled GEMM: DeepSeek-V3's fine-grained-scaled matrix product, as the CPU reference.
 *
 * Owns: the numerical definition every FP8 GEMM in libds (and the CUDA kernel, which shares these types)
 * is held to. C[M, N] = A[M, K] . B[N, K]^T, both operands K-contiguous ("TN", the only FP8 layout Hopper's
 * tensor cores take), E4M3 codes with float32 scales per 128-wide K block:
 *
 *   C[m, n] = (accumulate ? C[m, n] : 0) + acc,  acc = sum over K blocks kb, in order, in float32, of
 *             round_f32( sum_{k in kb} A[m, k] * B[n, k] ) * a_scale[m / a.block_rows, kb] * b_scale[n / b.block_rows, kb]
 *
 * The inner sum over one K block is exact before its single rounding to float32: products of two E4M3
 * values are multiples of 2^-18 below 2^18, so 128 of them sum exactly in double (43 bits). This is the
 * "promote to FP32 every N_C = 128 products" of the V3 report (section 3.3.2) and the Triton fp8_gemm in
 * DeepSeek's inference/kernel.py (acc += dot(a, b) * a_s * b_s), with the block dot made exact rather than
 * left to an unspecified summation order; tensor-core results agree to fp32 accumulation error within
 * a block (GPU tests use that tolerance). Scales multiply left to right: (dot * a_s) * b_s.
 * Operand scale layouts (cuBLASLt names): block_rows = 1 is VEC128 (1x128 tiles: activations, gradients,
 * the Wgrad operands), block_rows = 128 is BLK128x128 (weights). K need not be a multiple of 128: the last
 * block is shorter. Deterministic for any thread count.
 */
#ifndef DS_FP8_GEMM_H
#define DS_FP8_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* One operand: q[rows, K] E4M3 codes (row-major, K contiguous) and float32 dequantisation scales s(rb, kb)
 * for row block rb = row / block_rows and K block kb, laid out
 *   scale_k_major = 0: scale[rb * ceil(K/128) + kb]  (DeepSeek's [rows/128, K/128]; ds_fp8_quantize writes it)
 *   scale_k_major = 1: scale[kb * nrb + rb], nrb = ceil(rows/block_rows) (cuBLASLt's VEC128 layout,
 *                      kernels/blaslt.h DS_SCALE_1X128 with ld = rows). */
typedef struct {
    const uint8_t *q;
    const float *scale;
    int64_t block_rows; /* 1 (VEC128, 1x128 tiles) or 128 (BLK128x128); any >= 1 works on the CPU */
    int scale_k_major;
} ds_fp8_mat;

/* Scratch bytes ds_fp8_gemm needs for these sizes (pass ws = NULL to let it allocate). */
size_t ds_fp8_gemm_workspace(int64_t M, int64_t N, int64_t K);

/* C[M, N] (row-major, float32) as defined above. ws: NULL or ds_fp8_gemm_workspace(M, N, K) bytes,
 * 64-byte aligned. Returns DS_ERR on bad sizes or when allocation fails (message set). */
int ds_fp8_gemm(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                int accumulate, void *ws);

/* ---- Hopper's accumulation (--fp8-accum hopper) ----------------------------------------------------------
 * The GEMM above is the fixed one. V3 (section 3.3.2) reports that the FP8 tensor cores of H800 keep only
 * about 14 bits when they accumulate, a maximum relative error near 2% at K = 4096, and that promoting the
 * partial sums to fp32 registers every N_C = 128 elements cures it. Khattak and Mikaitis, "Accurate Models
 * of NVIDIA Tensor Cores" (arXiv 2512.07004), model the FP8 inner product of H100 as: exact products,
 * aligned to the largest exponent among them and the accumulator, truncated, summed, normalized into a
 * narrow accumulator (described elsewhere as an e8m13 "FP22" accumulator). The model here, stated exactly
 * (its Python twin is tests/ref/fp8_accum.py):
 *
 *   p_k = (a_k * sa) * (b_k * sb), in double (a, b decoded E4M3; sa, sb the scales of k's block)
 *   the K products go in order, in steps of G = DS_FP8_HOPPER_GROUP (one FP8 MMA's k) that never cross a
 *   promotion boundary; per step, with acc the narrow accumulator (0 at the start and after promotion):
 *     e   = max floor(log2 |x|) over x in {acc, the step's p_k}, zeros left out (all zero: nothing happens)
 *     u   = 2^(e - (B - 1)),  B = DS_FP8_HOPPER_BITS significant bits
 *     s   = trunc(acc / u) * u + sum_k trunc(p_k / u) * u     (trunc toward zero; the sum is exact)
 *     acc = s truncated toward zero to B significant bits
 *   every N_C products (promote > 0) and after the last: out = fl32(out + acc), acc = 0   (out: fp32, 0 first)
 *   C[m, n] = (accumulate ? C[m, n] : 0) + out, as ds_fp8_gemm.
 *
 * Assumed (the sources do not pin them down for this use): B = 14 (V3's "around 14 bits"), G = 32 (the
 * k of one FP8 wgmma), truncation rather than rounding, scales applied per product (on the GPU they are
 * applied at promotion; with promote = 0 only per-tensor scales would be possible, and per-product
 * scaling is then the same up to double rounding). M*N*K steps: a numerics tool, vectorized (below). */
#define DS_FP8_HOPPER_BITS 14
#define DS_FP8_HOPPER_GROUP 32

typedef enum { DS_FP8_ACCUM_EXACT = 0, DS_FP8_ACCUM_HOPPER = 1 } ds_fp8_accum_kind;
typedef struct {
    ds_fp8_accum_kind kind;
    int64_t promote; /* N_C: promote to fp32 every N_C products (hopper only); 0 = only at the end */
} ds_fp8_accum;

/* Scratch bytes ds_fp8_gemm_accum needs for these sizes and this accumulation. */
size_t ds_fp8_gemm_accum_workspace(int64_t M, int64_t N, int64_t K, const ds_fp8_accum *acc);

/* ds_fp8_gemm with the accumulation `acc` (NULL or DS_FP8_ACCUM_EXACT: ds_fp8_gemm itself). ws: NULL (it
 * allocates) or ds_fp8_gemm_accum_workspace(M, N, K, acc) bytes, 64-byte aligned. DS_ERR on a negative
 * promote. The hopper model runs a vector path (AVX-512F and DQ, when the CPU has them) that gives the same bits as
 * ds_fp8_hopper_dot per element, the scalar definition (tests/unit/test_fp8.c hopper_vector_is_scalar). */
int ds_fp8_gemm_accum(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                      int accumulate, void *ws, const ds_fp8_accum *acc);

/* The model above on one dot product, p_k = x[k] * y[k] (the operands already scaled), promoting every
 * `promote` products (0: never): returns out. */
float ds_fp8_hopper_dot(const double *x, const double *y, int64_t n, int64_t promote);

/* Whether ds_fp8_gemm_accum's hopper model takes the vector path here; force_scalar(1) makes it run the
 * scalar one (tests and benchmarks compare the two), force_scalar(0) restores the choice. Not thread-safe:
 * set it before the GEMMs run. */
int ds_fp8_hopper_vectorized(void);
void ds_fp8_hopper_force_scalar(int on);

#endif
