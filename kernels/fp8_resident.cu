/* fp8_resident.cu — see fp8_resident_cuda.h. Per call: one quantization launch (the activation in 1x128
 * tiles), one cuBLASLt block-scaled FP8 product into a packed fp32 scratch, one launch that adds it into C
 * with beta. The scratch output keeps cuBLASLt's operands in the shapes it takes (rows padded to 4, a
 * 16-byte-aligned ldc) whatever the caller's C looks like, for the price of one pass over M x N floats. */
#include "ops_cuda_internal.cuh"

#include <string.h>

extern "C" {
#include "blaslt.h"
#include "cuda_rt.h"
#include "fp8_quant.h"
#include "fp8_resident_cuda.h"
}

/* C[r, c] = Y[r, c] + beta C[r, c]; beta 0 does not read C (NaN there is overwritten, as ops.h's GEMMs). */
__global__ void fp8_resident_combine(float *C, int ldc, const float *Y, int M, int N, float beta) {
    size_t n = (size_t)M * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float *c = C + (i / N) * ldc + i % N;
        *c = beta == 0.0f ? Y[i] : Y[i] + beta * *c;
    }
}

extern "C" int ds_cuda_fp8_linear(const ds_cuda_fp8_weight *w, int64_t r0, int M, int N, float alpha, const float *A,
                                  int lda, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return DS_OK;
    const int K = (int)w->cols;
    if (K % 128 || N % 4 || r0 < 0 || r0 % 128 || r0 + N > w->rows || lda < K || ldc < N)
        return ds_fail(DS_ERR, "fp8 resident linear on the GPU: weight [%lld, %lld] rows %lld..%lld, x [%d, %d] (ld %d): "
                       "cuBLASLt's block-scaled FP8 needs K %% 128 == 0, N %% 4 == 0 and whole 128-row blocks",
                       (long long)w->rows, (long long)w->cols, (long long)r0, (long long)(r0 + N), M, K, lda);
    ds_blaslt *lt = ds_cuda_blaslt();
    if (!lt) return ds_fail(DS_ERR, "fp8 resident linear on the GPU: the CUDA backend is not initialized");
    const int Mp = (M + 3) / 4 * 4; /* cuBLASLt's FP8 kernels take m % 4 == 0: zero rows pad it */
    const size_t sbytes = sizeof(float) * (size_t)(K / 128) * (size_t)Mp;
    uint8_t *aq = (uint8_t *)ds_cuda_scratch(SCR_FP8_AQ, (size_t)Mp * (size_t)K);
    float *as = (float *)ds_cuda_scratch(SCR_FP8_AS, sbytes);
    float *y = (float *)ds_cuda_scratch(SCR_FP8_Y, sizeof(float) * (size_t)Mp * (size_t)N);
    if (!aq || !as || !y)
        return ds_fail(DS_ERR, "out of memory: FP8 linear scratch for %d x %d activations on the GPU", Mp, K);
    if (Mp > M) { /* padded rows: codes 0 with scale 0, so their products are 0 (and never read back) */
        DS_CU_TRY(cudaMemsetAsync(aq + (size_t)M * K, 0, (size_t)(Mp - M) * K, 0));
        DS_CU_TRY(cudaMemsetAsync(as, 0, sbytes, 0));
    }
    ds_quant_args qa;
    memset(&qa, 0, sizeof qa);
    qa.x = A; qa.x_type = DS_F32; qa.rows = M; qa.cols = K; qa.ldx = lda;
    qa.q = aq; qa.ldq = K;
    qa.scale = as; qa.scale_ld = Mp; qa.scale_rows_contig = 1; /* cuBLASLt's VEC128 layout: [K/128][Mp] */
    qa.pow2 = 0;                                                /* amax / 448, as DeepSeek's act_quant */
    qa.stream = NULL;
    DS_TRY(ds_cuda_quant_1x128(&qa));
    ds_gemm g;
    memset(&g, 0, sizeof g);
    g.m = Mp; g.n = N; g.k = K;
    g.a = aq; g.a_type = DS_F8_E4M3; g.lda = K; g.a_trans = 0;
    g.b = w->q + (size_t)r0 * (size_t)K; g.b_type = DS_F8_E4M3; g.ldb = K; g.b_trans = 1;
    g.c = y; g.c_type = DS_F32; g.ldc = N;
    g.alpha = alpha; g.beta = 0.0f;
    g.a_scale_mode = DS_SCALE_1X128; g.a_scale = as;
    g.b_scale_mode = DS_SCALE_128X128; g.b_scale = w->scale + (size_t)(r0 / 128) * (size_t)w->scale_ld;
    DS_TRY(ds_blaslt_gemm(lt, &g));
    size_t n = (size_t)M * N, blocks = (n + 255) / 256;
    fp8_resident_combine<<<(unsigned)(blocks > 8192 ? 8192 : blocks), 256>>>(C, ldc, y, M, N, beta);
    return DS_CUDA_LAUNCHED("fp8 resident linear: combine");
}
