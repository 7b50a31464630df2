#include "fp8/gemm.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "fp8/fp8.h"
#include "fp8/quant.h"

/* Rows of A per pass: as many as keep the double product tile [rows, N] near 2^22 elements (32 MB),
 * between 64 and 512. Few, large dgemm calls matter: each call synchronises OpenBLAS's threads. */
static int64_t rows_per_pass(int64_t M, int64_t N) {
    int64_t mc = N > 0 ? ((int64_t)1 << 22) / N : 512;
    mc = mc < 64 ? 64 : mc > 512 ? 512 : mc;
    return M < mc ? M : mc;
}

size_t ds_fp8_gemm_workspace(int64_t M, int64_t N, int64_t K) {
    (void)K;
    const size_t mc = (size_t)rows_per_pass(M, N), n = (size_t)N, kb = DS_FP8_BLOCK;
    const size_t a = mc * kb * 8, b = n * kb * 8, p = mc * n * 8, acc = mc * n * 4, bsv = n * 4;
    return ((a + 63) & ~(size_t)63) + ((b + 63) & ~(size_t)63) + ((p + 63) & ~(size_t)63) +
           ((acc + 63) & ~(size_t)63) + bsv + 64;
}

/* rows x w codes of q (row stride ld) as doubles, packed [rows, w] */
static void decode_slice(double *dst, const uint8_t *q, int64_t rows, int64_t ld, int64_t w) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < w; k++) dst[r * w + k] = ds_e4m3_table[q[r * ld + k]];
}

static inline int64_t scale_index(const ds_fp8_mat *x, int64_t rows, int64_t kbs, int64_t row, int64_t kb) {
    const int64_t rb = row / x->block_rows;
    return x->scale_k_major ? kb * ds_fp8_nblocks(rows, x->block_rows) + rb : rb * kbs + kb;
}

int ds_fp8_gemm(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                int accumulate, void *ws) {
    if (M < 0 || N < 0 || K < 0 || A->block_rows < 1 || B->block_rows < 1)
        return ds_fail(DS_ERR, "fp8 gemm: bad shape M=%lld N=%lld K=%lld", (long long)M, (long long)N,
                       (long long)K);
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
        return ds_fail(DS_ERR, "fp8 gemm: dimension beyond 2^31: M=%lld N=%lld K=%lld", (long long)M,
                       (long long)N, (long long)K);
    if (M == 0 || N == 0) return DS_OK;
    void *owned = NULL;
    if (!ws) {
        size_t bytes = ds_fp8_gemm_workspace(M, N, K);
        if (posix_memalign(&owned, 64, bytes))
            return ds_fail(DS_ERR, "out of memory: fp8 gemm workspace of %zu bytes", bytes);
        ws = owned;
    }
    const int64_t mc_max = rows_per_pass(M, N), kbs = ds_fp8_nblocks(K, DS_FP8_BLOCK);
    char *p = ws;
    double *ad = (double *)p;
    p += ((size_t)mc_max * DS_FP8_BLOCK * 8 + 63) & ~(size_t)63;
    double *bd = (double *)p;
    p += ((size_t)N * DS_FP8_BLOCK * 8 + 63) & ~(size_t)63;
    double *prod = (double *)p;
    p += ((size_t)mc_max * N * 8 + 63) & ~(size_t)63;
    float *acc = (float *)p;
    p += ((size_t)mc_max * N * 4 + 63) & ~(size_t)63;
    float *bsv = (float *)p; /* B's scale for this K block, per column of C */

    const float *as_base = A->scale, *bs_base = B->scale;
    for (int64_t m0 = 0; m0 < M; m0 += mc_max) {
        const int64_t mc = M - m0 < mc_max ? M - m0 : mc_max;
        memset(acc, 0, (size_t)mc * N * sizeof *acc);
        for (int64_t kb = 0; kb < kbs; kb++) {
            const int64_t k0 = kb * DS_FP8_BLOCK, w = K - k0 < DS_FP8_BLOCK ? K - k0 : DS_FP8_BLOCK;
            decode_slice(ad, A->q + m0 * K + k0, mc, K, w);
            decode_slice(bd, B->q + k0, N, K, w);
            for (int64_t n = 0; n < N; n++) bsv[n] = bs_base[scale_index(B, N, kbs, n, kb)];
            /* exact: every partial sum of up to 128 E4M3 products is a double (see gemm.h) */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mc, (int)N, (int)w, 1.0, ad, (int)w, bd,
                        (int)w, 0.0, prod, (int)N);
            /* serial on purpose: 1/128 of the dgemm's work, and an OpenMP team spinning next to OpenBLAS's
             * own threads costs more than it saves */
            for (int64_t i = 0; i < mc; i++) {
                const float as = as_base[scale_index(A, M, kbs, m0 + i, kb)];
                const double *pr = prod + i * N;
                float *ar = acc + i * N;
                for (int64_t n = 0; n < N; n++) ar[n] += (float)pr[n] * as * bsv[n];
            }
        }
        for (int64_t i = 0; i < mc; i++) {
            float *cr = C + (m0 + i) * N;
            if (accumulate)
                for (int64_t n = 0; n < N; n++) cr[n] += acc[i * N + n];
            else
                memcpy(cr, acc + i * N, (size_t)N * sizeof *cr);
        }
    }
    free(owned);
    return DS_OK;
}
