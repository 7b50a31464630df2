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

#endif
