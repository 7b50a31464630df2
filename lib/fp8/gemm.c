#include "fp8/gemm.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
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

static int check_shape(const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K) {
    if (M < 0 || N < 0 || K < 0 || A->block_rows < 1 || B->block_rows < 1)
        return ds_fail(DS_ERR, "fp8 gemm: bad shape M=%lld N=%lld K=%lld", (long long)M, (long long)N,
                       (long long)K);
    return DS_OK;
}

int ds_fp8_gemm(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                int accumulate, void *ws) {
    DS_TRY(check_shape(A, B, M, N, K));
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

/* ---- Hopper's accumulation model (gemm.h) ------------------------------------------------------------ */

/* Truncate the integer m (a multiple of the step's unit) toward zero to DS_FP8_HOPPER_BITS significant
 * bits: the narrow accumulator's normalization. */
static int64_t keep_bits(int64_t m) {
    uint64_t mag = m < 0 ? (uint64_t)(-m) : (uint64_t)m;
    int sh = 0;
    while ((mag >> sh) >= ((uint64_t)1 << DS_FP8_HOPPER_BITS)) sh++;
    mag = mag >> sh << sh;
    return m < 0 ? -(int64_t)mag : (int64_t)mag;
}

float ds_fp8_hopper_dot(const double *x, const double *y, int64_t n, int64_t promote) {
    float out = 0;
    double acc = 0;
    double p[DS_FP8_HOPPER_GROUP];
    int64_t since = 0; /* products since the last promotion */
    for (int64_t k0 = 0; k0 < n;) {
        int64_t g = n - k0 < DS_FP8_HOPPER_GROUP ? n - k0 : DS_FP8_HOPPER_GROUP;
        if (promote > 0 && g > promote - since) g = promote - since; /* a step never crosses a promotion */
        double amax = fabs(acc);
        for (int64_t j = 0; j < g; j++) {
            p[j] = x[k0 + j] * y[k0 + j];
            const double a = fabs(p[j]);
            if (a > amax) amax = a;
        }
        if (amax > 0) {
            /* every term aligned to the largest exponent e, cut below 2^(e-B+1): |term / u| < 2^B, so the
             * integers and their sum (at most G+1 terms) are exact */
            const int sh = DS_FP8_HOPPER_BITS - 1 - ilogb(amax);
            const double up = ldexp(1, sh), down = ldexp(1, -sh); /* powers of two: exact scalings */
            int64_t s = (int64_t)(acc * up);
            for (int64_t j = 0; j < g; j++) s += (int64_t)(p[j] * up);
            acc = (double)keep_bits(s) * down;
        }
        k0 += g, since += g;
        if ((promote > 0 && since == promote) || k0 == n) {
            out += (float)acc; /* acc has B <= 24 bits: exact as a float; the add rounds as fp32 */
            acc = 0, since = 0;
        }
    }
    return out;
}

/* rows x K codes of x decoded and multiplied by their scales (exact in double: 4 x 24 bits), packed */
static void decode_scaled(double *dst, const ds_fp8_mat *x, int64_t row0, int64_t rows, int64_t nrows, int64_t K) {
    const int64_t kbs = ds_fp8_nblocks(K, DS_FP8_BLOCK);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < K; k++)
            dst[r * K + k] = ds_e4m3_table[x->q[(row0 + r) * K + k]] *
                             (double)x->scale[scale_index(x, nrows, kbs, row0 + r, k / DS_FP8_BLOCK)];
}

static int hopper_gemm(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                       int accumulate, int64_t promote) {
    double *bd = malloc((size_t)N * (size_t)K * sizeof *bd), *ad = malloc((size_t)M * (size_t)K * sizeof *ad);
    if (!bd || !ad) {
        free(bd), free(ad);
        return ds_fail(DS_ERR, "out of memory: fp8 hopper gemm of %lldx%lldx%lld", (long long)M, (long long)N,
                       (long long)K);
    }
    decode_scaled(ad, A, 0, M, M, K);
    decode_scaled(bd, B, 0, N, N, K);
    /* each element is one independent scalar chain: the same bits for any thread count */
#pragma omp parallel for schedule(static) if (M * N * K > 1 << 20)
    for (int64_t i = 0; i < M; i++)
        for (int64_t n = 0; n < N; n++) {
            const float v = ds_fp8_hopper_dot(ad + i * K, bd + n * K, K, promote);
            C[i * N + n] = accumulate ? C[i * N + n] + v : v;
        }
    free(bd), free(ad);
    return DS_OK;
}

int ds_fp8_gemm_accum(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                      int accumulate, void *ws, const ds_fp8_accum *acc) {
    if (!acc || acc->kind == DS_FP8_ACCUM_EXACT) return ds_fp8_gemm(C, A, B, M, N, K, accumulate, ws);
    if (acc->promote < 0) return ds_fail(DS_ERR, "fp8 gemm: promotion interval %lld < 0", (long long)acc->promote);
    DS_TRY(check_shape(A, B, M, N, K));
    if (M == 0 || N == 0) return DS_OK;
    return hopper_gemm(C, A, B, M, N, K, accumulate, acc->promote);
}
