/* test_gemm_bf16.c — ops/gemm_bf16.h: bf16 GEMMs (AMX tiles where the CPU has them, else the sgemm fallback)
 * against float64 loops on the operands rounded to bf16 here (core/dtype.h): every transpose pair, sizes that
 * are and are not multiples of the 16/32 tiles, strides with NaN in the gaps, alpha/beta, grouped rows and
 * weight gradients, bf16 operands and output, NaN/Inf, denormals (AMX: DAZ/FTZ), and AMX against the fallback.
 * The bound on an fp32-accumulated sum of K products: K 2^-24 sum |a b| (times 2 for safety), plus the fp32
 * rounding of alpha acc + beta c. */
#include "tap.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "ops/gemm_bf16.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float bf(float x) { return ds_bf16_to_f32(ds_f32_to_bf16(x)); }

/* op(X)[i][j] of X stored rows x cols at stride ld (t = 1: X is stored transposed) */
static double el(const float *x, int t, int ld, int i, int j) { return t ? x[(size_t)j * ld + i] : x[(size_t)i * ld + j]; }

/* a rows x cols matrix at stride ld = cols + 3, NaN in the gaps (so reading them shows) */
static float *mat(int rows, int cols, uint64_t seed, int *ld) {
    *ld = cols + 3;
    float *x = malloc(sizeof(float) * ((size_t)rows * *ld + 1));
    ds_randn_fill(x, (size_t)rows * *ld, seed, 0, 1.0f);
    for (int r = 0; r < rows; r++)
        for (int c = cols; c < *ld; c++) x[(size_t)r * *ld + c] = NAN;
    return x;
}

/* worst |C - ref| / bound over M x N, ref = alpha op(A) op(B) + beta C0 in float64 on bf16-rounded operands */
static double worst_err(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                        int ldb, float beta, const float *C0, const float *C, int ldc, int round_c) {
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                const double p = (double)bf((float)el(A, ta, lda, i, k)) * bf((float)el(B, tb, ldb, k, j));
                s += p, sa += fabs(p);
            }
            const double c0 = beta != 0.0f ? C0[(size_t)i * ldc + j] : 0;
            const double ref = alpha * s + beta * c0;
            const double bound = 2 * (K + 2) * 0x1p-24 * (fabs(alpha) * sa + fabs(beta * c0)) +
                                 (round_c ? 0x1p-8 * fabs(ref) : 0) + 1e-37;
            const double e = fabs(C[(size_t)i * ldc + j] - ref) / bound;
            if (!(e <= worst)) worst = e; /* NaN counts as the worst */
        }
    return worst;
}

static int on_grid(const float *c, int M, int N, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            if (c[(size_t)i * ldc + j] != bf(c[(size_t)i * ldc + j])) return 0;
    return 1;
}

static const int sizes[] = {1, 2, 15, 16, 17, 31, 32, 33, 47, 64, 70};
enum { NS = sizeof sizes / sizeof sizes[0] };

/* every transpose pair over the size list: M through the list with N and K offset, then K through it */
static void sweep(const char *what) {
    for (int t = 0; t < 4; t++) {
        const int ta = t >> 1, tb = t & 1;
        double worst = 0;
        int gaps_ok = 1, grid_ok = 1;
        for (int i = 0; i < 2 * NS; i++) {
            const int M = i < NS ? sizes[i] : 33, N = i < NS ? sizes[(i + 3) % NS] : 33, K = sizes[(i + 7) % NS];
            const float alpha = i % 3 == 0 ? 1.0f : -0.75f, beta = i % 4 == 0 ? 0.0f : i % 4 == 1 ? 1.0f : 0.5f;
            const int round_c = i % 5 == 2;
            int lda, ldb, ldc;
            float *A = mat(ta ? K : M, ta ? M : K, 10 + i, &lda), *B = mat(tb ? N : K, tb ? K : N, 40 + i, &ldb);
            float *C = mat(M, N, 70 + i, &ldc), *C0 = malloc(sizeof(float) * (size_t)M * ldc);
            if (beta == 0.0f)
                for (int r = 0; r < M; r++) C[(size_t)r * ldc] = NAN; /* beta = 0 ignores C, NaN included */
            memcpy(C0, C, sizeof(float) * (size_t)M * ldc);
            ds_gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, round_c);
            const double e = worst_err(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, C, ldc, round_c);
            if (e > worst || e != e) worst = e;
            for (int r = 0; r < M; r++)
                for (int c = N; c < ldc; c++) gaps_ok &= isnan(C[(size_t)r * ldc + c]); /* the gaps untouched */
            if (round_c) grid_ok &= on_grid(C, M, N, ldc);
            free(A), free(B), free(C), free(C0);
        }
        CHECK(worst <= 1.0, "%s: ta %d tb %d, sizes 1..70: within the fp32-accumulation bound (%.3f of it)", what, ta,
              tb, worst);
        CHECK(gaps_ok && grid_ok, "%s: ta %d tb %d: C's row gaps untouched; round_c stores bf16 values", what, ta, tb);
    }
}

TEST(products) {
    ds_gemm_bf16_use_amx(1);
    printf("# kernel: %s\n", ds_gemm_bf16_kernel());
    sweep(ds_gemm_bf16_amx() ? "AMX" : "fallback");
}

TEST(products_fallback) {
    const int was = ds_gemm_bf16_use_amx(0);
    sweep("fallback");
    ds_gemm_bf16_use_amx(was);
}

/* Small integers: every product and partial sum is an integer below 2^24, so each is exact in fp32 and the
 * result equals the float64 one exactly, whatever the order of the sums. */
TEST(exact_integers) {
    enum { M = 37, N = 45, K = 70 };
    float A[M * K], B[K * N], C[M * N];
    for (int i = 0; i < M * K; i++) A[i] = (float)((i * 7 + 3) % 17 - 8);
    for (int i = 0; i < K * N; i++) B[i] = (float)((i * 5 + 1) % 13 - 6);
    for (int i = 0; i < M * N; i++) C[i] = (float)(i % 9 - 4);
    float C1[M * N];
    memcpy(C1, C, sizeof C);
    ds_gemm_bf16(0, 0, M, N, K, 2.0f, A, K, B, N, 1.0f, C1, N, 0);
    int exact = 1;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)A[i * K + k] * B[k * N + j];
            exact &= C1[i * N + j] == 2 * s + C[i * N + j];
        }
    CHECK(exact, "small integers: exact (%s)", ds_gemm_bf16_kernel());
}

/* ds_ops.gemm_rows: ragged groups (empty first, middle and last), one B per group; rows of other groups and
 * past off[ng] untouched. gemm_wgrad: C_g = alpha A_g^T B_g + beta C_g, an empty group only scaled. */
TEST(grouped) {
    enum { ng = 5, N = 40, K = 50, R = 70 };
    const int64_t off[ng + 1] = {0, 0, 33, 33, 70, 70};
    for (int tb = 0; tb < 2; tb++) {
        int lda, ldb, ldc;
        float *A = mat(R + 2, K, 1, &lda), *B = mat(ng * (tb ? N : K), tb ? K : N, 2, &ldb), *C = mat(R + 2, N, 3, &ldc);
        float *C0 = malloc(sizeof(float) * (size_t)(R + 2) * ldc);
        memcpy(C0, C, sizeof(float) * (size_t)(R + 2) * ldc);
        const size_t strideB = (size_t)(tb ? N : K) * ldb;
        ds_gemm_bf16_rows(ng, off, tb, N, K, 1.5f, A, lda, B, strideB, ldb, 0.5f, C, ldc, 1);
        double worst = 0;
        for (int g = 0; g < ng; g++) {
            const int rows = (int)(off[g + 1] - off[g]);
            if (!rows) continue;
            const size_t r0 = (size_t)off[g];
            worst = fmax(worst, worst_err(0, tb, rows, N, K, 1.5f, A + r0 * lda, lda, B + g * strideB, ldb, 0.5f,
                                          C0 + r0 * ldc, C + r0 * ldc, ldc, 1));
        }
        CHECK(worst <= 1.0 && on_grid(C, R, N, ldc), "gemm_rows tb %d: every group within the bound, stored bf16 (%.3f)",
              tb, worst);
        CHECK(!memcmp(C + (size_t)R * ldc, C0 + (size_t)R * ldc, sizeof(float) * 2 * ldc), "rows past off[ng] untouched");
        free(A), free(B), free(C), free(C0);
    }
    enum { M = 33, WN = 20 };
    int lda, ldb, ldc;
    float *A = mat(R, M, 4, &lda), *B = mat(R, WN, 5, &ldb), *C = mat(ng * M, WN, 6, &ldc);
    float *C0 = malloc(sizeof(float) * (size_t)ng * M * ldc);
    memcpy(C0, C, sizeof(float) * (size_t)ng * M * ldc);
    const size_t strideC = (size_t)M * ldc;
    ds_gemm_bf16_wgrad(ng, off, M, WN, 1.0f, A, lda, B, ldb, 0.25f, C, strideC, ldc);
    double worst = 0;
    int empty_ok = 1;
    for (int g = 0; g < ng; g++) {
        const int rows = (int)(off[g + 1] - off[g]);
        const float *cg = C + g * strideC, *c0 = C0 + g * strideC;
        if (!rows) {
            for (int i = 0; i < M; i++)
                for (int j = 0; j < WN; j++) empty_ok &= cg[i * ldc + j] == 0.25f * c0[i * ldc + j];
            continue;
        }
        worst = fmax(worst, worst_err(1, 0, M, WN, rows, 1.0f, A + (size_t)off[g] * lda, lda, B + (size_t)off[g] * ldb,
                                      ldb, 0.25f, c0, cg, ldc, 0));
    }
    CHECK(worst <= 1.0 && empty_ok, "gemm_wgrad: groups within the bound (%.3f), empty groups scaled by beta", worst);
    CHECK(!on_grid(C + strideC, M, WN, ldc), "weight gradients stay fp32");
    free(A), free(B), free(C), free(C0);
}

/* The dtype-carrying entry: bf16 operands read as they are (the same numbers as fp32 operands rounded), bf16
 * output rounded to nearest even; nonsense dtypes refused. */
TEST(dtype_carrying) {
    enum { M = 19, N = 35, K = 41 };
    float A[M * K], B[N * K], Cf[M * N], Cr[M * N];
    uint16_t Ah[M * K], Bh[N * K], Ch[M * N];
    ds_randn_fill(A, M * K, 7, 0, 1.0f), ds_randn_fill(B, N * K, 8, 0, 1.0f);
    for (int i = 0; i < M * K; i++) Ah[i] = ds_f32_to_bf16(A[i]);
    for (int i = 0; i < N * K; i++) Bh[i] = ds_f32_to_bf16(B[i]);
    for (int i = 0; i < M * N; i++) Ch[i] = ds_f32_to_bf16(Cr[i] = (float)(i % 7) - 3.0f);
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, Cf, N, 0);
    float Cg[M * N];
    CHECK(!ds_gemm_dt(0, 1, M, N, K, 1.0f, Ah, DS_BF16, K, B, DS_F32, K, 0.0f, Cg, DS_F32, N) &&
              !memcmp(Cg, Cf, sizeof Cf),
          "bf16 A and fp32 B: the same bits as both fp32");
    CHECK(!ds_gemm_dt(0, 1, M, N, K, 1.0f, Ah, DS_BF16, K, Bh, DS_BF16, K, 0.0f, Cg, DS_F32, N) &&
              !memcmp(Cg, Cf, sizeof Cf),
          "bf16 A and B: the same bits");
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 1.0f, Cr, N, 1);
    int same = 1;
    CHECK(!ds_gemm_dt(0, 1, M, N, K, 1.0f, Ah, DS_BF16, K, Bh, DS_BF16, K, 1.0f, Ch, DS_BF16, N), "bf16 output");
    for (int i = 0; i < M * N; i++) same &= ds_bf16_to_f32(Ch[i]) == Cr[i];
    CHECK(same, "bf16 C with beta 1: old C read as bf16, the sum rounded to nearest even as round_c does");
    CHECK(ds_gemm_dt(0, 1, M, N, K, 1.0f, A, DS_F16, K, B, DS_F32, K, 0.0f, Cg, DS_F32, N) == -1 &&
              ds_gemm_dt(0, 1, M, N, K, 1.0f, A, DS_F32, K, B, DS_F32, K, 0.0f, Cg, DS_F8_E4M3, N) == -1,
          "F16 operands or an FP8 output are refused");
}

/* ops.h: NaN anywhere in a sum makes it NaN, Inf times a nonzero is Inf, 0 * Inf is NaN; beta = 0 ignores C;
 * K = 0 gives beta C; alpha = 0 gives beta C without reading A or B. */
TEST(nan_inf) {
    enum { M = 20, N = 18, K = 40 };
    float A[M * K], B[K * N], C[M * N];
    for (int i = 0; i < M * K; i++) A[i] = 1.0f + (float)(i % 3);
    for (int i = 0; i < K * N; i++) B[i] = 0.5f;
    A[3 * K + 5] = NAN;    /* row 3: NaN */
    A[7 * K + 9] = INFINITY; /* row 7: +Inf (B > 0) */
    B[11 * N + 4] = 0.0f, A[12 * K + 11] = INFINITY; /* (12, 4): Inf * 0 = NaN; the rest of row 12 is +Inf */
    for (int i = 0; i < M * N; i++) C[i] = NAN;
    ds_gemm_bf16(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N, 0);
    int ok = 1;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            const float c = C[i * N + j];
            if (i == 3 || (i == 12 && j == 4)) ok &= isnan(c);
            else if (i == 7 || i == 12) ok &= isinf(c) && c > 0;
            else ok &= isfinite(c);
        }
    CHECK(ok, "NaN rows NaN, Inf rows +Inf, 0 * Inf NaN, old NaN in C ignored with beta 0");
    for (int i = 0; i < M * N; i++) C[i] = i == 5 ? NAN : 2.0f;
    ds_gemm_bf16(0, 0, M, N, 0, 1.0f, A, K, B, N, 0.5f, C, N, 0);
    CHECK(C[0] == 1.0f && isnan(C[5]), "K = 0: C = beta C");
    ds_gemm_bf16(0, 0, M, N, K, 0.0f, A, K, B, N, 0.0f, C, N, 0);
    ok = 1;
    for (int i = 0; i < M * N; i++) ok &= C[i] == 0.0f;
    CHECK(ok, "alpha = 0, beta = 0: zeros, the NaN in A and C not read");
}

/* AMX's TDPBF16PS: bf16 denormal inputs count as zero (DAZ) and fp32 denormal results flush to zero (FTZ);
 * the fallback keeps both. The header says so. */
TEST(denormals) {
    enum { M = 16, N = 16, K = 32 };
    float A[M * K], B[K * N], C[M * N];
    for (int t = 0; t < 2; t++) {
        ds_gemm_bf16_use_amx(1);
        if (t == 1) ds_gemm_bf16_use_amx(0);
        const int amx = ds_gemm_bf16_amx();
        if (t == 0 && !amx) {
            CHECK(1, "# SKIP no AMX on this machine");
            continue;
        }
        memset(A, 0, sizeof A), memset(B, 0, sizeof B);
        A[0] = 0x1p-130f; /* a bf16 denormal (exactly representable: 2^-130 = 2^-126 * 2^-4) */
        B[0] = 0x1p20f;   /* C[0][0] = 2^-110 unless the denormal is read as 0 */
        A[K] = 0x1p-70f;  /* row 1: 2^-70 * 2^-70 = 2^-140, an fp32 denormal */
        B[1] = 0x1p-70f;  /* C[1][1] */
        ds_gemm_bf16(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N, 0);
        if (amx)
            CHECK(C[0] == 0.0f && C[N + 1] == 0.0f, "AMX: denormal input read as 0 (%g), denormal product flushed (%g)",
                  C[0], C[N + 1]);
        else
            CHECK(C[0] == 0x1p-110f && C[N + 1] == 0x1p-140f, "fallback: denormals kept (%g, %g)", C[0], C[N + 1]);
    }
    ds_gemm_bf16_use_amx(1);
}

/* AMX and the fallback on the same operands: large enough for both threads and several K tiles, and with a K
 * long enough that N runs in chunks of blocks (the last one narrower): within the bound of each other (they
 * differ in the order of the fp32 sums). */
TEST(amx_vs_fallback) {
    if (!ds_gemm_bf16_use_amx(1)) {
        CHECK(1, "# SKIP no AMX on this machine");
        return;
    }
    static const int shapes[][3] = {{200, 150, 300}, {70, 230, 2100}};
    for (int sh = 0; sh < 2; sh++) {
        const int M = shapes[sh][0], N = shapes[sh][1], K = shapes[sh][2];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
        float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
        ds_randn_fill(A, (size_t)M * K, 21, 0, 1.0f), ds_randn_fill(B, (size_t)N * K, 22, 0, 1.0f);
        ds_gemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N, 0);
        ds_gemm_bf16_use_amx(0);
        ds_gemm_bf16(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N, 0);
        ds_gemm_bf16_use_amx(1);
        double worst = 0;
        int differ = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double sa = 0;
                for (int k = 0; k < K; k++) sa += fabs((double)bf(A[i * K + k]) * bf(B[j * K + k]));
                const double e = fabs(C1[i * N + j] - C2[i * N + j]) / (4 * K * 0x1p-24 * sa);
                if (!(e <= worst)) worst = e;
                differ |= C1[i * N + j] != C2[i * N + j];
            }
        CHECK(worst <= 1.0, "%d x %d x %d: AMX and the fallback within twice the accumulation bound (%.3f of it)", M, N,
              K, worst);
        printf("# AMX and the fallback %s\n", differ ? "differ in some bits (summation order)" : "agree bit for bit");
        free(A), free(B), free(C1), free(C2);
    }
}

/* Cached weight packs: a B inside an announced parameter buffer is packed once per announcement and the products
 * equal the uncached ones bit for bit (Fprop tb = 1, Dgrad tb = 0, grouped rows); a weight written without the
 * announcement is served stale (the cache is really used) and check mode counts it; after the announcement the
 * product is the fresh one again; a B outside the buffer is never cached; freeing drops the packs. Only weights
 * read twice per generation keep a pack. */
static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, n * sizeof(float)); }

TEST(weight_packs) {
    ds_gemm_bf16_use_amx(1);
    if (!ds_gemm_bf16_amx()) {
        printf("# skip weight packs: %s\n", ds_gemm_bf16_kernel());
        return;
    }
    enum { M = 45, N = 70, K = 300, E = 3, I = 40 };
    const size_t nw = (size_t)N * K, ne = (size_t)E * I * K, np = nw + ne + 16;
    float *P = malloc(sizeof(float) * np), *x = malloc(sizeof(float) * M * K), *dy = malloc(sizeof(float) * M * N);
    float *C[6], *Fw = malloc(sizeof(float) * nw);
    for (int i = 0; i < 6; i++) C[i] = malloc(sizeof(float) * M * K);
    ds_randn_fill(P, np, 31, 0, 1.0f), ds_randn_fill(x, (size_t)M * K, 32, 0, 1.0f);
    ds_randn_fill(dy, (size_t)M * N, 33, 0, 1.0f);
    float *W = P + 8, *We = P + 8 + nw;
    const int was = ds_gemm_bf16_pack_mode(0);
    ds_gemm_bf16_pack_stats s0, s1;
    ds_gemm_bf16_pack_stats_get(&s0);
    /* references without the cache */
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, C[0], N, 1);
    ds_gemm_bf16(0, 0, M, K, N, 1.0f, dy, N, W, K, 0.0f, C[1], K, 1);
    const int64_t off[E + 1] = {0, 20, 20, M};
    ds_gemm_bf16_rows(E, off, 1, I, K, 1.0f, x, K, We, (size_t)I * K, K, 0.0f, C[2], I, 1);
    ds_gemm_bf16_pack_mode(1);
    ds_gemm_bf16_params_changed(P, np);
    int ok = 1;
    ds_gemm_bf16_pack_stats sm;
    for (int rep = 0; rep < 3; rep++) { /* marked, built, then reused */
        if (rep == 1) ds_gemm_bf16_pack_stats_get(&sm);
        ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, C[3], N, 1);
        ds_gemm_bf16(0, 0, M, K, N, 1.0f, dy, N, W, K, 0.0f, C[4], K, 1);
        ds_gemm_bf16_rows(E, off, 1, I, K, 1.0f, x, K, We, (size_t)I * K, K, 0.0f, C[5], I, 1);
        ok &= same(C[0], C[3], (size_t)M * N) && same(C[1], C[4], (size_t)M * K) && same(C[2], C[5], (size_t)M * I);
    }
    ds_gemm_bf16_pack_stats_get(&s1);
    CHECK(ok, "Fprop, Dgrad and grouped rows with cached packs equal the uncached products bit for bit");
    CHECK(sm.built == s0.built && sm.bytes == s0.bytes, "a weight's first use in a generation keeps no pack");
    CHECK(s1.built - s0.built == 4 && s1.reused - s0.reused == 4,
          "4 packs (2 experts with rows) built at the second use, reused at the third (%lld, %lld)",
          s1.built - s0.built, s1.reused - s0.reused);
    CHECK(s1.bytes - s0.bytes == (size_t)(6 * 10 + 20 * 3 + 2 * 4 * 10) * 1024,
          "pack bytes: 1 KiB tiles of op(B) padded to 32 columns and K (the empty group none): %zu", s1.bytes - s0.bytes);
    /* a write without the announcement: the stale pack is used (what the announcement exists for) */
    memcpy(Fw, W, sizeof(float) * nw);
    for (size_t i = 0; i < nw; i++) W[i] *= 2.0f;
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, C[3], N, 1);
    CHECK(same(C[0], C[3], (size_t)M * N), "a weight written without params_changed: the cached (old) pack is read");
    ds_gemm_bf16_pack_mode(2);
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, C[3], N, 1);
    ds_gemm_bf16_pack_stats_get(&s0);
    ds_gemm_bf16_pack_mode(0);
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, C[0], N, 1); /* the fresh product */
    CHECK(s0.stale - s1.stale == 1 && same(C[0], C[3], (size_t)M * N),
          "check mode: the stale pack is counted and the product runs on a fresh pack");
    ds_gemm_bf16_pack_mode(1);
    ds_gemm_bf16_params_changed(W, nw);
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, C[3], N, 1);
    ds_gemm_bf16_pack_stats_get(&s1);
    CHECK(same(C[0], C[3], (size_t)M * N) && s1.built - s0.built == 1,
          "announced: a pack that was reused is rebuilt at its first use; the fresh product");
    ds_gemm_bf16_params_changed(W, nw); /* the generation above used the pack once only */
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, C[4], N, 1);
    ds_gemm_bf16_pack_stats_get(&s0);
    CHECK(s0.built == s1.built && s1.bytes - s0.bytes == 60 * 1024 && same(C[3], C[4], (size_t)M * N),
          "a pack not reused in its generation is dropped at the next use, which packs per call");
    s1 = s0;
    ds_gemm_bf16(0, 1, M, N, K, 1.0f, x, K, Fw, K, 0.0f, C[3], N, 1); /* outside the buffer */
    ds_gemm_bf16_pack_stats_get(&s0);
    CHECK(s0.built == s1.built && s0.reused == s1.reused, "a B outside every announced buffer is not cached");
    ds_gemm_bf16_params_freed(P);
    ds_gemm_bf16_pack_stats_get(&s1);
    CHECK(s1.bytes == 0 && s1.limit == 0, "freeing the buffer drops its packs (%zu bytes left)", s1.bytes);
    ds_gemm_bf16_pack_mode(was);
    for (int i = 0; i < 6; i++) free(C[i]);
    free(P), free(x), free(dy), free(Fw);
}

TAP_MAIN()
