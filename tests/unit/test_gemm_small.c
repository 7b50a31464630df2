/* Unit tests for ops/gemm_small: the few-row GEMMs against a double-precision product written here, over
 * shapes with and without tails (N not a multiple of 4 or 64, K not a multiple of 16), both layouts of B,
 * alpha/beta; and the property decode batching relies on: a row's result is bit-identical whether it is
 * multiplied alone or among other rows, whatever the thread count (table gemm and gemm_rows alike). The bf16
 * variants: bit-identical to the float32 kernels on the same weights widened to float32 (every shape above,
 * one and two threads, grouped rows). */
#include "tap.h"

#include "core/dtype.h"
#include "core/rng.h"
#include "ops/gemm_small.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static float *randn(size_t n, uint64_t seed) {
    ds_rng r;
    ds_rng_init(&r, seed, 0);
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)ds_rng_normal(&r);
    return p;
}

/* max over elements of |C - ref| / (|alpha| sum_k |a||b| + |beta c0| + tiny) */
static double rel_err(int tb, int M, int N, int K, float alpha, const float *A, const float *B, float beta,
                      const float *C0, const float *C) {
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double b = tb ? B[(size_t)j * K + k] : B[(size_t)k * N + j];
                s += (double)A[(size_t)i * K + k] * b;
                mag += fabs((double)A[(size_t)i * K + k] * b);
            }
            double c0 = beta != 0 ? beta * (double)C0[(size_t)i * N + j] : 0;
            double e = fabs(C[(size_t)i * N + j] - (alpha * s + c0)) / (fabs(alpha) * mag + fabs(c0) + 1e-30);
            if (!(e <= worst)) worst = e; /* NaN propagates as a failure */
        }
    return worst;
}

TEST(matches_double_reference) {
    static const int Ms[] = {1, 3, 4, 16}, Ns[] = {1, 5, 67, 130}, Ks[] = {1, 15, 16, 33, 256};
    for (int tb = 0; tb <= 1; tb++)
        for (int mi = 0; mi < 4; mi++)
            for (int ni = 0; ni < 4; ni++)
                for (int ki = 0; ki < 5; ki++) {
                    int M = Ms[mi], N = Ns[ni], K = Ks[ki];
                    float *A = randn((size_t)M * K, 1), *B = randn((size_t)N * K, 2), *C0 = randn((size_t)M * N, 3);
                    float *C = malloc((size_t)M * N * sizeof *C);
                    for (int bi = 0; bi < 2; bi++) {
                        float beta = bi ? 0.5f : 0.0f;
                        memcpy(C, C0, (size_t)M * N * sizeof *C);
                        if (!bi) C[0] = NAN; /* beta 0 overwrites, NaN included */
                        ds_gemm_small(tb, M, N, K, 1.5f, A, K, B, tb ? K : N, beta, C, N);
                        double e = rel_err(tb, M, N, K, 1.5f, A, B, beta, C0, C);
                        if (e > 1e-5 || (M == 16 && N == 130 && K == 256))
                            CHECK(e <= 1e-5, "tb=%d M=%d N=%d K=%d beta=%g: rel err %.2g", tb, M, N, K, beta, e);
                    }
                    free(A), free(B), free(C0), free(C);
                }
}

/* Every row of an M-row product equals the same row multiplied alone, bit for bit: through ds_gemm_small,
 * and through the table's gemm with 1 and 2 threads on a product large enough to be split. */
TEST(row_results_do_not_depend_on_the_batch) {
    ds_ops t;
    ds_ops_cpu_small_m(&t);
    const int M = 7, N = 1029, K = 200;
    for (int tb = 0; tb <= 1; tb++) {
        float *A = randn((size_t)M * K, 4), *B = randn((size_t)N * K, 5);
        float *all = malloc((size_t)M * N * sizeof *all), *one = malloc((size_t)N * sizeof *one);
        int same = 1;
        for (int th = 1; th <= 2; th++) {
            omp_set_num_threads(th);
            t.gemm(0, tb, M, N, K, 1.0f, A, K, B, tb ? K : N, 0.0f, all, N);
            for (int i = 0; i < M; i++) {
                ds_gemm_small(tb, 1, N, K, 1.0f, A + (size_t)i * K, K, B, tb ? K : N, 0.0f, one, N);
                same &= !memcmp(one, all + (size_t)i * N, (size_t)N * sizeof *one);
            }
        }
        CHECK(same, "tb=%d: %d rows x %d, 1 and 2 threads: each row equals its single-row product bit for bit", tb, M, N);
        free(A), free(B), free(all), free(one);
    }
    omp_set_num_threads(2);
}

/* gemm_rows (experts): groups of a few rows each, every group's rows bit-identical to the group's rows
 * multiplied one at a time; a group above the small limit falls back to sgemm and stays close. */
TEST(gemm_rows_groups) {
    ds_ops t;
    ds_ops_cpu_small_m(&t);
    const int G = 5, N = 96, K = 64;
    int64_t off[] = {0, 2, 2, 7, 8, 11};
    const int rows = (int)off[G];
    float *A = randn((size_t)rows * K, 6), *B = randn((size_t)G * N * K, 7);
    float *C = malloc((size_t)rows * N * sizeof *C), *one = malloc((size_t)N * sizeof *one);
    t.gemm_rows(G, off, 1, N, K, 1.0f, A, K, B, (size_t)N * K, K, 0.0f, C, N);
    int same = 1;
    for (int g = 0; g < G; g++)
        for (int64_t r = off[g]; r < off[g + 1]; r++) {
            ds_gemm_small(1, 1, N, K, 1.0f, A + r * K, K, B + (size_t)g * N * K, K, 0.0f, one, N);
            same &= !memcmp(one, C + r * N, (size_t)N * sizeof *one);
        }
    CHECK(same, "5 experts holding 2, 0, 5, 1, 3 rows: each row equals its single-row product bit for bit");
    const int big = DS_GEMM_SMALL_MAX_M + 3;
    int64_t off2[] = {0, big};
    float *A2 = randn((size_t)big * K, 8), *C2 = malloc((size_t)big * N * sizeof *C2);
    t.gemm_rows(1, off2, 1, N, K, 1.0f, A2, K, B, (size_t)N * K, K, 0.0f, C2, N);
    CHECK(rel_err(1, big, N, K, 1.0f, A2, B, 0.0f, NULL, C2) <= 1e-5, "a group of %d rows (sgemm) matches the reference", big);
    free(A), free(B), free(C), free(one), free(A2), free(C2);
}

/* B rounded to bf16: the bf16 copy and its exact float32 values */
static void to_bf16(const float *B, size_t n, uint16_t *h, float *f) {
    for (size_t i = 0; i < n; i++) h[i] = ds_f32_to_bf16(B[i]), f[i] = ds_bf16_to_f32(h[i]);
}

TEST(bf16_weights_equal_float32_kernels_bit_for_bit) {
    static const int Ms[] = {1, 3, 4, 16}, Ns[] = {1, 5, 67, 130, 1029}, Ks[] = {1, 15, 16, 33, 256};
    ds_ops t;
    ds_ops_cpu_small_m(&t);
    int bad = 0, cases = 0;
    for (int tb = 0; tb <= 1; tb++)
        for (int mi = 0; mi < 4; mi++)
            for (int ni = 0; ni < 5; ni++)
                for (int ki = 0; ki < 5; ki++) {
                    const int M = Ms[mi], N = Ns[ni], K = Ks[ki];
                    const size_t nb = (size_t)N * K, nc = (size_t)M * N;
                    float *A = randn((size_t)M * K, 11), *B = randn(nb, 12), *C0 = randn(nc, 13);
                    float *Bf = malloc(nb * sizeof *Bf), *C = malloc(nc * sizeof *C), *D = malloc(nc * sizeof *D);
                    uint16_t *Bh = malloc(nb * sizeof *Bh);
                    to_bf16(B, nb, Bh, Bf);
                    for (int bi = 0; bi < 2; bi++) {
                        const float beta = bi ? 0.5f : 0.0f;
                        const int ldb = tb ? K : N;
                        memcpy(C, C0, nc * sizeof *C), memcpy(D, C0, nc * sizeof *D);
                        ds_gemm_small(tb, M, N, K, 1.5f, A, K, Bf, ldb, beta, C, N);
                        ds_gemm_small_bf16(tb, M, N, K, 1.5f, A, K, Bh, ldb, beta, D, N);
                        bad += !!memcmp(C, D, nc * sizeof *C);
                        for (int th = 1; th <= 2; th++) { /* the threaded forms, against the table's */
                            omp_set_num_threads(th);
                            memcpy(C, C0, nc * sizeof *C), memcpy(D, C0, nc * sizeof *D);
                            t.gemm(0, tb, M, N, K, 1.5f, A, K, Bf, ldb, beta, C, N);
                            ds_gemm_bf16w(1, tb, M, N, K, 1.5f, A, K, Bh, ldb, beta, D, N);
                            bad += !!memcmp(C, D, nc * sizeof *C);
                        }
                        cases += 3;
                    }
                    free(A), free(B), free(C0), free(Bf), free(C), free(D), free(Bh);
                }
    omp_set_num_threads(2);
    CHECK(!bad, "%d of %d products (both layouts, M 1-16, N 1-1029, K 1-256, beta 0 and 0.5, 1 and 2 threads) differ "
          "from the float32 kernels' on the widened weights", bad, cases);
}

TEST(bf16_grouped_rows_equal_float32_groups) {
    ds_ops t;
    ds_ops_cpu_small_m(&t);
    const int G = 5, N = 96, K = 80;
    int64_t off[] = {0, 2, 2, 7, 8, 24};
    const int rows = (int)off[G];
    const size_t nb = (size_t)G * N * K;
    float *A = randn((size_t)rows * K, 14), *B = randn(nb, 15), *Bf = malloc(nb * sizeof *Bf);
    float *C = malloc((size_t)rows * N * sizeof *C), *D = malloc((size_t)rows * N * sizeof *D);
    uint16_t *Bh = malloc(nb * sizeof *Bh);
    to_bf16(B, nb, Bh, Bf);
    const uint16_t *per[5];
    for (int g = 0; g < G; g++) per[g] = Bh + (size_t)g * N * K;
    for (int tb = 0; tb <= 1; tb++)
        for (int th = 1; th <= 2; th++) {
            omp_set_num_threads(th);
            t.gemm_rows(G, off, tb, N, K, 1.0f, A, K, Bf, (size_t)N * K, tb ? K : N, 0.0f, C, N);
            ds_gemm_rows_bf16w(1, G, off, tb, N, K, 1.0f, A, K, per, tb ? K : N, 0.0f, D, N);
            CHECK(!memcmp(C, D, (size_t)rows * N * sizeof *C), "tb=%d, %d threads: 5 groups of 2, 0, 5, 1, 16 rows "
                  "equal the float32 groups bit for bit", tb, th);
        }
    omp_set_num_threads(2);
    free(A), free(B), free(Bf), free(C), free(D), free(Bh);
}

TAP_MAIN()
