/* gemm_small.c — few-row GEMMs streaming each weight once; see gemm_small.h. */
#include "ops/gemm_small.h"

#include "ops/cpu_internal.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_max_threads(void) { return 1; }
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), may_alias, aligned(4))); /* unaligned loads and stores */

/* acc + x*y: one rounding where the CPU has FMA (the build's -march decides, so one binary always uses the
 * same form and the order per element stays fixed) */
static inline v16 fma16(v16 acc, v16 x, v16 y) {
#if defined(__AVX512F__)
    return (v16)_mm512_fmadd_ps((__m512)x, (__m512)y, (__m512)acc);
#else
    return acc + x * y;
#endif
}

static inline v16 load16(const float *p) { return *(const v16u *)p; }

/* The 16 lanes summed pairwise in a fixed tree. */
static inline float hsum16(v16 v) {
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++) s8[l] = v[l] + v[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

static inline void put(float *c, float s, float alpha, float beta) { *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c; }

typedef int v16i __attribute__((vector_size(64)));

/* constant two-vector and one-vector shuffles: GCC's __builtin_shuffle, clang's __builtin_shufflevector
 * (the fuzz and sanitizer builds use clang) */
#ifdef __clang__
#define SHUF2(a, b, ...) __builtin_shufflevector((a), (b), __VA_ARGS__)
#define SHUF1(a, ...) __builtin_shufflevector((a), (a), __VA_ARGS__)
#else
#define SHUF2(a, b, ...) __builtin_shuffle((a), (b), (v16i){__VA_ARGS__})
#define SHUF1(a, ...) __builtin_shuffle((a), (v16i){__VA_ARGS__})
#endif
#define LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define Q0 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define Q1 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31

/* hsum16 of four vectors at once, the same additions in the same order: lane l of the result is
 * hsum16(s_l) for l < 4 (the rest is scratch). */
static inline v16 hsum16x4(v16 s0, v16 s1, v16 s2, v16 s3) {
    v16 a = SHUF2(s0, s1, LO8) + SHUF2(s0, s1, HI8); /* s8 of s0 | s8 of s1 */
    v16 b = SHUF2(s2, s3, LO8) + SHUF2(s2, s3, HI8);
    v16 c = SHUF2(a, b, Q0) + SHUF2(a, b, Q1); /* s4 of s0..s3, four lanes each */
    return (SHUF1(c, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12, 0, 4, 8, 12) +
            SHUF1(c, 2, 6, 10, 14, 2, 6, 10, 14, 2, 6, 10, 14, 2, 6, 10, 14)) +
           (SHUF1(c, 1, 5, 9, 13, 1, 5, 9, 13, 1, 5, 9, 13, 1, 5, 9, 13) +
            SHUF1(c, 3, 7, 11, 15, 3, 7, 11, 15, 3, 7, 11, 15, 3, 7, 11, 15));
}

/* The weights B are float32 (bf = 0) or bfloat16 (bf = 1): every kernel below takes B as bytes and `bf` as
 * a constant its callers pass, so each is compiled twice. A bf16 weight becomes its float32 value by a
 * 16-bit shift (exact) right after the load, and everything after the load is the same code: a product over
 * bf16 weights is bit-identical to the float32 product over the same weights rounded to bf16 beforehand. */
#define INL static inline __attribute__((always_inline))

INL size_t wsize(int bf) { return bf ? 2 : 4; }

/* 16 weights at element k of the row at p, as floats */
INL v16 loadw(const char *p, size_t k, int bf) {
    if (!bf) return load16((const float *)p + k);
#if defined(__AVX512F__)
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + k));
    return (v16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
#else
    const uint16_t *q = (const uint16_t *)p + k;
    v16i u;
    for (int l = 0; l < 16; l++) u[l] = (int)((uint32_t)q[l] << 16);
    return (v16)u;
#endif
}

INL float wat(const char *p, size_t k, int bf) {
    if (!bf) return ((const float *)p)[k];
    const uint32_t u = (uint32_t)((const uint16_t *)p)[k] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* C[i, j] for 4 consecutive rows j of B [N,K] and R (1-4, a constant where inlined) rows i of A from row
 * i0: each group of 16 weights of the four rows is loaded (and widened) once and used by the R rows, which
 * share the pass over K. Each dot: 16 lane sums over k < K16 in order, the lanes reduced as hsum16 does,
 * then the remaining k in order; the single-row variant below computes exactly the same. */
INL void nt_rows4(int R, int i0, int K, float alpha, const float *A, int lda, const char *b0, size_t rs, float beta,
                  float *C, int ldc, const char *next, int bf) {
    const char *b1 = b0 + rs, *b2 = b1 + rs, *b3 = b2 + rs;
    const int K16 = K & ~15;
    v16 s[4][4] = {{{0}}};
    const float *a[4];
    for (int r = 0; r < R; r++) a[r] = A + (size_t)(i0 + r) * lda;
    for (int k = 0; k < K16; k += 16) {
        if (next && (!bf || !(k & 16))) { /* the pass brings these rows from memory: ask for the next four meanwhile
                                             (once per 64-byte line: every 16 floats, every 32 bf16) */
            const size_t kb = (size_t)k * wsize(bf);
            __builtin_prefetch(next + kb);
            __builtin_prefetch(next + rs + kb);
            __builtin_prefetch(next + 2 * rs + kb);
            __builtin_prefetch(next + 3 * rs + kb);
        }
        const v16 w0 = loadw(b0, k, bf), w1 = loadw(b1, k, bf), w2 = loadw(b2, k, bf), w3 = loadw(b3, k, bf);
        for (int r = 0; r < R; r++) {
            const v16 x = load16(a[r] + k);
            s[r][0] = fma16(s[r][0], x, w0);
            s[r][1] = fma16(s[r][1], x, w1);
            s[r][2] = fma16(s[r][2], x, w2);
            s[r][3] = fma16(s[r][3], x, w3);
        }
    }
    for (int r = 0; r < R; r++) {
        v16 h = hsum16x4(s[r][0], s[r][1], s[r][2], s[r][3]);
        float r0 = h[0], r1 = h[1], r2 = h[2], r3 = h[3];
        for (int k = K16; k < K; k++) {
            r0 += a[r][k] * wat(b0, k, bf);
            r1 += a[r][k] * wat(b1, k, bf);
            r2 += a[r][k] * wat(b2, k, bf);
            r3 += a[r][k] * wat(b3, k, bf);
        }
        float *c = C + (size_t)(i0 + r) * ldc;
        put(c, r0, alpha, beta);
        put(c + 1, r1, alpha, beta);
        put(c + 2, r2, alpha, beta);
        put(c + 3, r3, alpha, beta);
    }
}

/* C[i, j] for 4 consecutive rows j of B [N,K] and every row i of A, four rows of A at a time */
INL void nt_block4(int M, int K, float alpha, const float *A, int lda, const char *b0, int ldb, float beta, float *C,
                   int ldc, const char *next, int bf) {
    const size_t rs = (size_t)ldb * wsize(bf);
    for (int i0 = 0; i0 < M; i0 += 4) {
        const char *pf = i0 == 0 ? next : NULL;
        switch (M - i0) {
        case 1: nt_rows4(1, i0, K, alpha, A, lda, b0, rs, beta, C, ldc, pf, bf); break;
        case 2: nt_rows4(2, i0, K, alpha, A, lda, b0, rs, beta, C, ldc, pf, bf); break;
        case 3: nt_rows4(3, i0, K, alpha, A, lda, b0, rs, beta, C, ldc, pf, bf); break;
        default: nt_rows4(4, i0, K, alpha, A, lda, b0, rs, beta, C, ldc, pf, bf); break;
        }
    }
}

INL void nt_block1(int M, int K, float alpha, const float *A, int lda, const char *b0, float beta, float *C, int ldc,
                   int bf) {
    const int K16 = K & ~15;
    for (int i = 0; i < M; i++) {
        const float *a = A + (size_t)i * lda;
        v16 s0 = {0};
        for (int k = 0; k < K16; k += 16) s0 = fma16(s0, load16(a + k), loadw(b0, k, bf));
        float r0 = hsum16(s0);
        for (int k = K16; k < K; k++) r0 += a[k] * wat(b0, k, bf);
        put(C + (size_t)i * ldc, r0, alpha, beta);
    }
}

/* C[:, j0:j1] with B [N,K] (tb=1); j0 a multiple of 4 so an element's path depends on j and N only */
INL void small_nt(int M, int j0, int j1, int K, float alpha, const float *A, int lda, const char *B, int ldb,
                  float beta, float *C, int ldc, int bf) {
    const size_t rs = (size_t)ldb * wsize(bf);
    int j = j0;
    for (; j + 4 <= j1; j += 4)
        nt_block4(M, K, alpha, A, lda, B + j * rs, ldb, beta, C + j, ldc, j + 8 <= j1 ? B + (j + 4) * rs : NULL, bf);
    for (; j < j1; j++) nt_block1(M, K, alpha, A, lda, B + j * rs, beta, C + j, ldc, bf);
}

/* C[i0 .. i0+R, j .. j + 16 W) with B [K,N] (tb=0), R rows of A (1-4) and W vectors of columns (1-4), both
 * constants where inlined: each k's W vectors of B are loaded (and widened) once for the R rows. */
INL void nn_rows(int R, int W, int i0, int j, int K, float alpha, const float *A, int lda, const char *B, size_t rs,
                 float beta, float *C, int ldc, int bf) {
    v16 s[4][4] = {{{0}}};
    for (int k = 0; k < K; k++) {
        const char *b = B + k * rs;
        v16 w[4];
        for (int v = 0; v < W; v++) w[v] = loadw(b, (size_t)j + 16 * v, bf);
        for (int r = 0; r < R; r++) {
            const v16 x = (v16){0} + A[(size_t)(i0 + r) * lda + k];
            for (int v = 0; v < W; v++) s[r][v] = fma16(s[r][v], x, w[v]);
        }
    }
    for (int r = 0; r < R; r++) {
        float *c = C + (size_t)(i0 + r) * ldc + j;
        for (int v = 0; v < W; v++) {
            v16 o = s[r][v] * alpha;
            if (beta != 0.0f) o += load16(c + 16 * v) * beta;
            *(v16u *)(c + 16 * v) = o;
        }
    }
}

#define NN_W(R, W) nn_rows(R, W, i0, j, K, alpha, A, lda, B, rs, beta, C, ldc, bf)
#define NN_R(R)                                                                                                        \
    do {                                                                                                               \
        if (w == 4) NN_W(R, 4);                                                                                        \
        else if (w == 3) NN_W(R, 3);                                                                                   \
        else if (w == 2) NN_W(R, 2);                                                                                   \
        else NN_W(R, 1);                                                                                               \
    } while (0)

/* C[:, j0:j1] with B [K,N] (tb=0): C[i, j] = sum over k in order of A[i,k] B[k,j], 64 columns at a time
 * (four vectors) and four rows of A at a time, so a column block of B is read from L1/L2 once per four
 * rows. Columns past the last multiple of 16 go one by one with the same per-element order. */
INL void small_nn(int M, int j0, int j1, int K, float alpha, const float *A, int lda, const char *B, int ldb,
                  float beta, float *C, int ldc, int bf) {
    const size_t rs = (size_t)ldb * wsize(bf);
    int j = j0;
    for (; j + 16 <= j1;) {
        const int w = j + 64 <= j1 ? 4 : (j1 - j) / 16; /* vectors in this block */
        for (int i0 = 0; i0 < M; i0 += 4) {
            if (M - i0 >= 4) NN_R(4);
            else if (M - i0 == 3) NN_R(3);
            else if (M - i0 == 2) NN_R(2);
            else NN_R(1);
        }
        j += 16 * w;
    }
    for (; j < j1; j++)
        for (int i = 0; i < M; i++) {
            const float *a = A + (size_t)i * lda;
            float r = 0.0f;
            for (int k = 0; k < K; k++) r += a[k] * wat(B + k * rs, (size_t)j, bf);
            put(C + (size_t)i * ldc + j, r, alpha, beta);
        }
}
#undef NN_R
#undef NN_W

/* the two instances: float32 and bf16 weights */
static void small_cols(int tb, int M, int j0, int j1, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc) {
    if (tb) small_nt(M, j0, j1, K, alpha, A, lda, (const char *)B, ldb, beta, C, ldc, 0);
    else small_nn(M, j0, j1, K, alpha, A, lda, (const char *)B, ldb, beta, C, ldc, 0);
}

static void small_cols_bf16(int tb, int M, int j0, int j1, int K, float alpha, const float *A, int lda,
                            const uint16_t *B, int ldb, float beta, float *C, int ldc) {
    if (tb) small_nt(M, j0, j1, K, alpha, A, lda, (const char *)B, ldb, beta, C, ldc, 1);
    else small_nn(M, j0, j1, K, alpha, A, lda, (const char *)B, ldb, beta, C, ldc, 1);
}

void ds_gemm_small(int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    small_cols(tb, M, 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ds_gemm_small_bf16(int tb, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *B, int ldb,
                        float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    small_cols_bf16(tb, M, 0, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Products this small run on one thread: a parallel region costs more than they do. */
#define SMALL_SERIAL_MACS (1 << 17)

static int small_ok(int ta, int M, int K) { return !ta && M <= DS_GEMM_SMALL_MAX_M && K > 0; }

/* C = alpha A op(B) + beta C for a few rows on the OpenMP threads: column slabs in multiples of 64, so a
 * column's code path (vector block or tail) depends on N alone. B is float32 or bf16 (Bh non-NULL). */
static void small_par(int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      const uint16_t *Bh, int ldb, float beta, float *C, int ldc) {
    int nt = omp_get_max_threads();
    if (nt <= 1 || (double)M * N * K < SMALL_SERIAL_MACS) nt = 1;
    int chunk = ((N + nt - 1) / nt + 63) & ~63, parts = (N + chunk - 1) / chunk;
#pragma omp parallel for schedule(static, 1) num_threads(parts) if (parts > 1)
    for (int p = 0; p < parts; p++) {
        int j0 = p * chunk, j1 = j0 + chunk < N ? j0 + chunk : N;
        if (Bh) small_cols_bf16(tb, M, j0, j1, K, alpha, A, lda, Bh, ldb, beta, C, ldc);
        else small_cols(tb, M, j0, j1, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
}

static void gemm_small_m(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                         int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (!small_ok(ta, M, K) || alpha == 0.0f) {
        ds_cpu_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    small_par(tb, M, N, K, alpha, A, lda, B, NULL, ldb, beta, C, ldc);
}


/* Groups of rows, each by its own weight (B + g * strideB, or Bh[g] in bf16), in parallel over the groups:
 * each group's product is the single-threaded one, so a row's result is the same in any grouping. */
static void rows_small(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                       const float *B, size_t strideB, const uint16_t *const *Bh, int ldb, float beta, float *C, int ldc) {
#pragma omp parallel for schedule(dynamic, 1) if ((double)(off[ng] - off[0]) * N * K >= SMALL_SERIAL_MACS)
    for (int g = 0; g < ng; g++) {
        int64_t r0 = off[g], r1 = off[g + 1];
        if (r1 <= r0) continue;
        if (Bh)
            small_cols_bf16(tb, (int)(r1 - r0), 0, N, K, alpha, A + (size_t)r0 * lda, lda, Bh[g], ldb, beta,
                            C + (size_t)r0 * ldc, ldc);
        else
            small_cols(tb, (int)(r1 - r0), 0, N, K, alpha, A + (size_t)r0 * lda, lda, B + (size_t)g * strideB, ldb,
                       beta, C + (size_t)r0 * ldc, ldc);
    }
}

static void gemm_rows_small_m(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                              const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    int64_t most = 0;
    for (int g = 0; g < ng; g++)
        if (off[g + 1] - off[g] > most) most = off[g + 1] - off[g];
    if (!small_ok(0, (int)most, K) || alpha == 0.0f) {
        ds_cpu_gemm_rows(ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
        return;
    }
    rows_small(ng, off, tb, N, K, alpha, A, lda, B, strideB, NULL, ldb, beta, C, ldc);
}

int ds_gemm_bf16w(int few, int tb, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *B, int ldb,
                 float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    if (!few || !small_ok(0, M, K) || alpha == 0.0f) return ds_cpu_gemm_bf16(tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    small_par(tb, M, N, K, alpha, A, lda, NULL, B, ldb, beta, C, ldc);
    return 0;
}

int ds_gemm_rows_bf16w(int few, int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                      const uint16_t *const *B, int ldb, float beta, float *C, int ldc) {
    int64_t most = 0;
    for (int g = 0; g < ng; g++)
        if (off[g + 1] - off[g] > most) most = off[g + 1] - off[g];
    if (ng <= 0 || most <= 0) return 0;
    if (!few || !small_ok(0, (int)most, K) || alpha == 0.0f)
        return ds_cpu_gemm_rows_bf16(ng, off, tb, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    rows_small(ng, off, tb, N, K, alpha, A, lda, NULL, 0, B, ldb, beta, C, ldc);
    return 0;
}

void ds_ops_cpu_small_m(ds_ops *out) {
    *out = *ds_ops_cpu();
    out->gemm = gemm_small_m;
    out->gemm_rows = gemm_rows_small_m;
}
