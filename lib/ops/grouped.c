/* CPU references of the device-offset grouped GEMMs (ops/grouped.h): the offsets widened to the host
 * int64 form and the CPU backend's grouped GEMMs run on them. */
#include "ops/grouped.h"

#include "ops/cpu_internal.h"

/* off as int64 in w (ng+1 entries) */
static const int64_t *widen(int64_t *w, const int32_t *off, int ng) {
    for (int g = 0; g <= ng; g++) w[g] = off[g];
    return w;
}

void ds_cpu_gemm_rows_dev(int ng, const int32_t *off, int max_rows, int tb, int N, int K, float alpha, const float *A,
                          int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    int64_t w[ng + 1]; /* ng is the expert count: small */
    (void)max_rows;    /* the host reads off[ng] itself */
    ds_cpu_gemm_rows(ng, widen(w, off, ng), tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
}

void ds_cpu_gemm_wgrad_dev(int ng, const int32_t *off, int M, int N, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    int64_t w[ng + 1];
    ds_cpu_gemm_wgrad(ng, widen(w, off, ng), M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
}

void ds_ops_cpu_with_dev_offsets(ds_ops *out, const ds_ops *base) {
    *out = *base;
    out->gemm_rows_dev = ds_cpu_gemm_rows_dev;
    out->gemm_wgrad_dev = ds_cpu_gemm_wgrad_dev;
}
