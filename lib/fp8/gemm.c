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

/* The scalar path: one ds_fp8_hopper_dot per element, the definition the vector path is held to. */
static void hopper_scalar(float *C, const double *ad, const double *bd, int64_t M, int64_t N, int64_t K,
                          int accumulate, int64_t promote) {
    /* each element is one independent scalar chain: the same bits for any thread count */
#pragma omp parallel for schedule(static) if (M * N * K > 1 << 20)
    for (int64_t i = 0; i < M; i++)
        for (int64_t n = 0; n < N; n++) {
            const float v = ds_fp8_hopper_dot(ad + i * K, bd + n * K, K, promote);
            C[i * N + n] = accumulate ? C[i * N + n] + v : v;
        }
}

/* ---- the vector path (AVX-512F + DQ, chosen at run time) ------------------------------------------------
 * Eight columns of C per 512-bit vector, one lane per dot product, every lane running ds_fp8_hopper_dot's
 * steps in the same order (the step boundaries depend on K and N_C only). The integer arithmetic of the
 * scalar model is done in doubles, exactly:
 *   up = 2^sh, sh = B - 1 - e, built from the exponent bits of amax (amax is normal: the operands are E4M3
 *     values times float32 scales, so nonzero products lie within [2^-316, 2^274]); a lane whose amax is 0
 *     keeps its acc, as the scalar's "nothing happens";
 *   trunc(x * up) converted to int64 toward zero and summed as the scalar does (below 2^B each, G + 1 terms);
 *   keep_bits(s) * down = (double(s) * down, exact) with the mantissa bits below the B-th cleared
 *     (truncation of the magnitude to B significant bits, what keep_bits does to the integer);
 *   out = fl32(out + fl32(acc)) in float lanes.
 * B is packed as panels of 8 columns, [N/8][K][8], so one load feeds a lane per column. */
#define HP_LANES 8
#define HP_PANELS 4 /* panels per tile: four independent dependency chains */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HP_HAVE_AVX512 1

__attribute__((target("avx512f,avx512dq"), always_inline)) static inline void
hopper_tile_avx512(float *out, const double *a, const double *bt, size_t panel_stride, const int np, int64_t K,
                   int64_t promote) {
    const __m512i exp_mask = _mm512_set1_epi64(0x7ff), keep = _mm512_set1_epi64((int64_t)(~(uint64_t)0 << (52 - (DS_FP8_HOPPER_BITS - 1))));
    /* up = 2^(B - 1 - e): biased exponent 1023 + B - 1 - (E - 1023); down = 2^-(B - 1 - e) */
    const __m512i up_bias = _mm512_set1_epi64(2046 + DS_FP8_HOPPER_BITS - 1), down_bias = _mm512_set1_epi64(-(DS_FP8_HOPPER_BITS - 1));
    __m512d acc[HP_PANELS], p[DS_FP8_HOPPER_GROUP][HP_PANELS];
    __m256 o[HP_PANELS];
    for (int q = 0; q < np; q++) acc[q] = _mm512_setzero_pd(), o[q] = _mm256_setzero_ps();
    int64_t since = 0;
    for (int64_t k0 = 0; k0 < K;) {
        int64_t g = K - k0 < DS_FP8_HOPPER_GROUP ? K - k0 : DS_FP8_HOPPER_GROUP;
        if (promote > 0 && g > promote - since) g = promote - since;
        __m512d amax[HP_PANELS];
        for (int q = 0; q < np; q++) amax[q] = _mm512_abs_pd(acc[q]);
        /* range imm 0xb: the larger magnitude, sign cleared (|max|) in one instruction */
        for (int64_t j = 0; j < g; j++) {
            const __m512d x = _mm512_set1_pd(a[k0 + j]);
            for (int q = 0; q < np; q++) {
                p[j][q] = _mm512_mul_pd(x, _mm512_load_pd(bt + q * panel_stride + (k0 + j) * HP_LANES));
                amax[q] = _mm512_range_pd(amax[q], p[j][q], 0xb);
            }
        }
        __m512d up[HP_PANELS], down[HP_PANELS];
        __m512i s[HP_PANELS];
        for (int q = 0; q < np; q++) {
            const __m512i be = _mm512_and_si512(_mm512_srli_epi64(_mm512_castpd_si512(amax[q]), 52), exp_mask);
            up[q] = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_sub_epi64(up_bias, be), 52));
            down[q] = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(be, down_bias), 52));
            s[q] = _mm512_cvttpd_epi64(_mm512_mul_pd(acc[q], up[q]));
        }
        for (int64_t j = 0; j < g; j++)
            for (int q = 0; q < np; q++)
                s[q] = _mm512_add_epi64(s[q], _mm512_cvttpd_epi64(_mm512_mul_pd(p[j][q], up[q])));
        for (int q = 0; q < np; q++) {
            const __m512d r = _mm512_mul_pd(_mm512_cvtepi64_pd(s[q]), down[q]);
            /* lanes whose step was all zeros keep acc (their up and down are not meaningful) */
            const __mmask8 nz = _mm512_cmp_pd_mask(amax[q], _mm512_setzero_pd(), _CMP_NEQ_OQ);
            acc[q] = _mm512_mask_blend_pd(nz, acc[q], _mm512_castsi512_pd(_mm512_and_si512(_mm512_castpd_si512(r), keep)));
        }
        k0 += g, since += g;
        if ((promote > 0 && since == promote) || k0 == K) {
            for (int q = 0; q < np; q++)
                o[q] = _mm256_add_ps(o[q], _mm512_cvtpd_ps(acc[q])), acc[q] = _mm512_setzero_pd();
            since = 0;
        }
    }
    for (int q = 0; q < np; q++) _mm256_storeu_ps(out + q * HP_LANES, o[q]);
}

__attribute__((target("avx512f,avx512dq"))) static void hopper_tile4(float *out, const double *a, const double *bt,
                                                            size_t ps, int64_t K, int64_t promote) {
    hopper_tile_avx512(out, a, bt, ps, HP_PANELS, K, promote);
}
__attribute__((target("avx512f,avx512dq"))) static void hopper_tile1(float *out, const double *a, const double *bt,
                                                            size_t ps, int64_t K, int64_t promote) {
    hopper_tile_avx512(out, a, bt, ps, 1, K, promote);
}

static int have_avx512(void) {
    static int v = -1; /* a benign race: every thread computes the same value */
    if (v < 0) v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") ? 1 : 0;
    return v;
}
#else
#define HP_HAVE_AVX512 0
#endif

/* 1 when ds_fp8_gemm_accum's hopper model runs the vector path on this CPU (and the caller allows it). */
static int g_hopper_scalar_only;
void ds_fp8_hopper_force_scalar(int on) { g_hopper_scalar_only = on; }
int ds_fp8_hopper_vectorized(void) {
#if HP_HAVE_AVX512
    return !g_hopper_scalar_only && have_avx512();
#else
    return 0;
#endif
}

static size_t align64z(size_t b) { return (b + 63) & ~(size_t)63; }
static int64_t hp_padded(int64_t N) { return (N + HP_LANES - 1) / HP_LANES * HP_LANES; }

size_t ds_fp8_gemm_accum_workspace(int64_t M, int64_t N, int64_t K, const ds_fp8_accum *acc) {
    if (!acc || acc->kind == DS_FP8_ACCUM_EXACT) return ds_fp8_gemm_workspace(M, N, K);
    /* the scaled operands in double: A [M, K], B [N, K] (packed [N/8][K][8] for the vector path) */
    return align64z((size_t)M * (size_t)K * 8) + align64z((size_t)hp_padded(N) * (size_t)K * 8) + 64;
}

static int hopper_gemm(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                       int accumulate, int64_t promote, void *ws) {
    const size_t need = ds_fp8_gemm_accum_workspace(M, N, K, &(ds_fp8_accum){DS_FP8_ACCUM_HOPPER, promote});
    void *owned = NULL;
    if (!ws) {
        if (posix_memalign(&owned, 64, need))
            return ds_fail(DS_ERR, "out of memory: fp8 hopper gemm of %lldx%lldx%lld", (long long)M, (long long)N,
                           (long long)K);
        ws = owned;
    }
    double *ad = ws, *bd = (double *)((char *)ws + align64z((size_t)M * (size_t)K * 8));
    decode_scaled(ad, A, 0, M, M, K);
    if (!ds_fp8_hopper_vectorized()) {
        decode_scaled(bd, B, 0, N, N, K);
        hopper_scalar(C, ad, bd, M, N, K, accumulate, promote);
        free(owned);
        return DS_OK;
    }
#if HP_HAVE_AVX512
    /* B as panels of 8 columns [N/8][K][8], the padding columns zero (their lanes are computed, not stored) */
    const int64_t np = hp_padded(N) / HP_LANES, kbs = ds_fp8_nblocks(K, DS_FP8_BLOCK);
    const size_t ps = (size_t)K * HP_LANES;
    for (int64_t n = 0; n < np * HP_LANES; n++)
        for (int64_t k = 0; k < K; k++)
            bd[(size_t)(n / HP_LANES) * ps + (size_t)k * HP_LANES + n % HP_LANES] =
                n < N ? ds_e4m3_table[B->q[n * K + k]] * (double)B->scale[scale_index(B, N, kbs, n, k / DS_FP8_BLOCK)]
                      : 0.0;
    /* tiles of (one row, HP_PANELS panels), then the left-over panels one at a time; each element is still
     * one independent chain, so any thread count gives the same bits */
    const int64_t groups = np / HP_PANELS, tiles = groups + (np - groups * HP_PANELS);
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K > 1 << 20)
    for (int64_t i = 0; i < M; i++)
        for (int64_t t = 0; t < tiles; t++) {
            float o[HP_PANELS * HP_LANES];
            const int64_t p0 = t < groups ? t * HP_PANELS : groups * HP_PANELS + (t - groups);
            const int64_t w = t < groups ? HP_PANELS : 1;
            if (w == HP_PANELS) hopper_tile4(o, ad + i * K, bd + p0 * ps, ps, K, promote);
            else hopper_tile1(o, ad + i * K, bd + p0 * ps, ps, K, promote);
            const int64_t n0 = p0 * HP_LANES, cols = N - n0 < w * HP_LANES ? N - n0 : w * HP_LANES;
            float *cr = C + i * N + n0;
            for (int64_t c = 0; c < cols; c++) cr[c] = accumulate ? cr[c] + o[c] : o[c];
        }
#endif
    free(owned);
    return DS_OK;
}

int ds_fp8_gemm_accum(float *C, const ds_fp8_mat *A, const ds_fp8_mat *B, int64_t M, int64_t N, int64_t K,
                      int accumulate, void *ws, const ds_fp8_accum *acc) {
    if (!acc || acc->kind == DS_FP8_ACCUM_EXACT) return ds_fp8_gemm(C, A, B, M, N, K, accumulate, ws);
    if (acc->promote < 0) return ds_fail(DS_ERR, "fp8 gemm: promotion interval %lld < 0", (long long)acc->promote);
    DS_TRY(check_shape(A, B, M, N, K));
    if (M == 0 || N == 0) return DS_OK;
    return hopper_gemm(C, A, B, M, N, K, accumulate, acc->promote, ws);
}
