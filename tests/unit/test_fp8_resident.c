/* Unit tests for lib/fp8/resident: Linear products over FP8-resident weights against the same products over
 * the expanded weights (ds_fp8_dequantize, then the CPU backend's fp32 GEMM). The two compute the same fp32
 * products of the same values and may only add them in another order, so each element is held to the
 * summation bound 2 gamma_K sum_k |x_k w_k|, gamma_K = K u / (1 - K u), u = 2^-24 (the order of the
 * additions is the only freedom). Covers several panels, partial 128-blocks, row slices, alpha/beta/ldc,
 * grouped expert rows with an empty expert, and the refusal of a resident weight in a backward product. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "fp8/fp8.h"
#include "fp8/quant.h"
#include "fp8/resident.h"
#include "ops/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static void fill(float *x, size_t n, uint64_t seed, float scale) {
    ds_rng r;
    ds_rng_init(&r, seed, 0);
    for (size_t i = 0; i < n; i++) x[i] = scale * (float)ds_rng_normal(&r);
}

typedef struct {
    int64_t rows, cols;
    uint8_t *q;
    float *scale, *deq;
} fp8_w;

static void make_w(fp8_w *w, int64_t rows, int64_t cols, uint64_t seed) {
    w->rows = rows, w->cols = cols;
    float *x = malloc(sizeof(float) * (size_t)(rows * cols));
    w->q = malloc((size_t)(rows * cols));
    w->scale = malloc(sizeof(float) * (size_t)(((rows + 127) / 128) * ((cols + 127) / 128)));
    w->deq = malloc(sizeof(float) * (size_t)(rows * cols));
    fill(x, (size_t)(rows * cols), seed, 0.05f);
    ds_fp8_quantize(w->q, w->scale, x, rows, cols, 128, 128, DS_FP8_SCALE_F32);
    ds_fp8_dequantize(w->deq, w->q, w->scale, rows, cols, 128, 128);
    free(x);
}

static void free_w(fp8_w *w) {
    free(w->q);
    free(w->scale);
    free(w->deq);
}

/* every element of got against ref within the summation bound for x [M, K] and rows r0.. of W */
static int within_bound(const float *got, const float *ref, int ldc, const float *x, const float *W, int M, int N,
                        int K, float alpha, double *worst) {
    const double u = ldexp(1.0, -24), g = K * u / (1 - K * u);
    int bad = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double mag = 0;
            for (int k = 0; k < K; k++) mag += fabs((double)x[i * K + k] * W[(size_t)j * K + k]);
            double d = fabs((double)got[i * ldc + j] - ref[i * ldc + j]), tol = 2 * g * fabs(alpha) * mag + 1e-30;
            if (d / tol > *worst) *worst = d / tol;
            bad += d > tol;
        }
    return bad;
}

TEST(decode_equals_table) {
    int same = 0;
    for (int c = 0; c < 256; c++) {
        float a = ds_fp8_resident_decode((uint8_t)c), b = ds_e4m3_to_f32((uint8_t)c);
        same += (isnan(a) && isnan(b)) || (memcmp(&a, &b, 4) == 0);
    }
    CHECK(same == 256, "%d of 256 E4M3 codes decode to the table's bits (zeros' signs and NaN included)", same);
}

TEST(gemm_matches_expanded_weights) {
    const ds_ops *cpu = ds_ops_cpu();
    ds_ops res;
    ds_fp8_resident_ops(&res, cpu);
    /* K = 2100: a short last 128-block; panels of 1 MiB / 8400 B -> 124 rows, raised to one 128-row block */
    const int N = 1100, K = 2100;
    fp8_w w;
    make_w(&w, N, K, 11);
    float *key = malloc(sizeof(float) * (size_t)N * K); /* an address range only: never written or read */
    CHECK(ds_fp8_resident_add(key, N, K, w.q, w.scale, 128, 128) == DS_OK, "registered");
    CHECK(ds_fp8_resident_bytes(key, (size_t)N * K) == (size_t)N * K + 4 * 9 * 17, "bytes: codes and 9 x 17 scales");
    const int Ms[] = {1, 3, 130};
    for (int t = 0; t < 3; t++) {
        const int M = Ms[t], ldc = N + 5;
        float *x = malloc(sizeof(float) * (size_t)M * K), *c1 = malloc(sizeof(float) * (size_t)M * ldc),
              *c2 = malloc(sizeof(float) * (size_t)M * ldc);
        fill(x, (size_t)M * K, 100 + t, 1.0f);
        fill(c1, (size_t)M * ldc, 200 + t, 1.0f);
        memcpy(c2, c1, sizeof(float) * (size_t)M * ldc);
        res.gemm(0, 1, M, N, K, 0.5f, x, K, key, K, 1.0f, c1, ldc);
        cpu->gemm(0, 1, M, N, K, 0.5f, x, K, w.deq, K, 1.0f, c2, ldc);
        CHECK(ds_fp8_resident_status() == DS_OK, "M=%d: no failure", M);
        double worst = 0;
        int bad = within_bound(c1, c2, ldc, x, w.deq, M, N, K, 0.5f, &worst);
        CHECK(bad == 0, "M=%d, alpha 0.5, beta 1, ldc %d: %d elements outside the bound (worst %.3g of it)", M, ldc, bad,
              worst);
        int untouched = 1; /* columns past N in each row of C are left alone */
        for (int i = 0; i < M; i++)
            for (int j = N; j < ldc; j++) untouched &= c1[i * ldc + j] == c2[i * ldc + j];
        CHECK(untouched, "M=%d: C beyond N untouched", M);
        /* a slice of rows: W[256 .. 256+300) as its own [300, K] operand */
        res.gemm(0, 1, M, 300, K, 1.0f, x, K, key + (size_t)256 * K, K, 0.0f, c1, ldc);
        cpu->gemm(0, 1, M, 300, K, 1.0f, x, K, w.deq + (size_t)256 * K, K, 0.0f, c2, ldc);
        worst = 0;
        bad = within_bound(c1, c2, ldc, x, w.deq + (size_t)256 * K, M, 300, K, 1.0f, &worst);
        CHECK(bad == 0, "M=%d: rows 256..555 as an operand: %d elements outside the bound", M, bad);
        free(x);
        free(c1);
        free(c2);
    }
    /* a backward product with a resident weight is refused, loudly */
    float dy[2 * 300], dx[2 * 2100];
    fill(dy, 600, 7, 1.0f);
    res.gemm(0, 0, 2, K, 300, 1.0f, dy, 300, key, K, 0.0f, dx, K);
    CHECK(ds_fp8_resident_status() == DS_ERR && strstr(ds_errmsg(), "only forward Linear products read resident weights"),
          "Dgrad refused: %s", ds_errmsg());
    CHECK(ds_fp8_resident_status() == DS_OK, "the failure is reported once");
    ds_fp8_resident_remove(key, (size_t)N * K);
    CHECK(ds_fp8_resident_bytes(key, (size_t)N * K) == 0, "removed");
    free(key);
    free_w(&w);
}

TEST(gemm_rows_experts) {
    const ds_ops *cpu = ds_ops_cpu();
    ds_ops res;
    ds_fp8_resident_ops(&res, cpu);
    const int E = 3, N = 200, K = 260;
    fp8_w w[3];
    float *key = malloc(sizeof(float) * (size_t)E * N * K);
    float *deq = malloc(sizeof(float) * (size_t)E * N * K);
    for (int e = 0; e < E; e++) {
        make_w(&w[e], N, K, 30 + e);
        CHECK(ds_fp8_resident_add(key + (size_t)e * N * K, N, K, w[e].q, w[e].scale, 128, 128) == DS_OK, "expert %d", e);
        memcpy(deq + (size_t)e * N * K, w[e].deq, sizeof(float) * (size_t)N * K);
    }
    const int64_t off[4] = {0, 2, 2, 7}; /* expert 1 has no rows */
    const int M = 7;
    float x[7 * 260], c1[7 * 200], c2[7 * 200];
    fill(x, (size_t)M * K, 41, 1.0f);
    res.gemm_rows(E, off, 1, N, K, 1.0f, x, K, key, (size_t)N * K, K, 0.0f, c1, N);
    cpu->gemm_rows(E, off, 1, N, K, 1.0f, x, K, deq, (size_t)N * K, K, 0.0f, c2, N);
    CHECK(ds_fp8_resident_status() == DS_OK, "no failure");
    int bad = 0;
    double worst = 0;
    for (int e = 0; e < E; e++)
        if (off[e + 1] > off[e])
            bad += within_bound(c1 + off[e] * N, c2 + off[e] * N, N, x + off[e] * K, deq + (size_t)e * N * K,
                                (int)(off[e + 1] - off[e]), N, K, 1.0f, &worst);
    CHECK(bad == 0, "grouped rows: %d elements outside the bound (worst %.3g of it)", bad, worst);
    ds_fp8_resident_remove(key, (size_t)E * N * K);
    for (int e = 0; e < E; e++) free_w(&w[e]);
    free(key);
    free(deq);
}

TAP_MAIN()
