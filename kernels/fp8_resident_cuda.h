/* fp8_resident_cuda.h — the Linear product over an FP8-resident weight on the GPU (lib/fp8/resident.h's
 * device half): y = x W^T with W kept as E4M3 codes and 128x128 block scales in device memory.
 *
 * Owns: the one function that turns an fp32 activation and a resident weight into the Linear's fp32 output.
 * Numerics are DeepSeek-V3's FP8 inference (its inference/kernel.py: act_quant, then fp8_gemm): the
 * activation is quantized on the device in 1x128 tiles per token (kernels/fp8_quant.h, scales amax/448,
 * not powers of two), and cuBLASLt multiplies E4M3 x E4M3 with both sets of scales applied per 128-wide
 * slice of K (kernels/blaslt.h, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F x BLK128x128_32F), fp32 output.
 * That is what lib/fp8/linear.h computes on the CPU for a forward Linear (--w8a8), up to the order and
 * width of the tensor cores' accumulation inside a 128 block (blaslt.h: ~1.3e-4 relative).
 * Shapes cuBLASLt takes: K % 128 == 0 and N % 4 == 0 (checked when the weight is registered), the weight's
 * first row r0 on a 128-row block boundary; M is padded to a multiple of 4 with zero rows here. Everything
 * runs on the legacy default stream, as the rest of the CUDA backend (kernels/ops_cuda.h).
 * Implementation: kernels/fp8_resident.cu.
 */
#ifndef DS_KERNELS_FP8_RESIDENT_CUDA_H
#define DS_KERNELS_FP8_RESIDENT_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const uint8_t *q;     /* device: E4M3 codes [rows][cols] */
    const float *scale;   /* device: block scales [ceil(rows/128)][scale_ld], scale_ld = ds_blockscale_ld(cols) */
    int64_t rows, cols;
    int scale_ld;
} ds_cuda_fp8_weight;

/* C[M, N] = alpha * x[M, K] W[r0 .. r0+N)^T + beta * C (beta 0: C is not read), K = w->cols; x and C are
 * device fp32 with row strides lda, ldc. Fails (message set) on a shape cuBLASLt cannot take or out of memory. */
int ds_cuda_fp8_linear(const ds_cuda_fp8_weight *w, int64_t r0, int M, int N, float alpha, const float *A, int lda,
                       float beta, float *C, int ldc);

#ifdef __cplusplus
}
#endif

#endif
