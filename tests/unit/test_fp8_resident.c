/* Unit tests for lib/fp8/resident: Linear products over FP8-resident weights against the same products over
 * the expanded weights (ds_fp8_dequantize, then the CPU backend's fp32 GEMM). The two compute the same fp32
 * products of the same values and may only add them in another order, so each element is held to the
 * summation bound 2 gamma_K sum_k |x_k w_k|, gamma_K = K u / (1 - K u), u = 2^-24 (the order of the
 * additions is the only freedom). Covers several panels, partial 128-blocks, row slices, alpha/beta/ldc,
 * grouped expert rows with an empty expert, and the refusal of a resident weight in a backward product.
 * bf16-resident weights: every product (both tables: the base's and the decode form's few-row kernels;
 * whole weights, row blocks, the untransposed block the absorbed attention reads, grouped experts, several
 * panels, 1 and 2 threads) and the embedding equal the float32 ones over the widened weights bit for bit. */
#include "tap.h"

#include "core/dtype.h"
#include "core/err.h"
#include "core/rng.h"
#include "fp8/fp8.h"
#include "fp8/quant.h"
#include "fp8/resident.h"
#include "ops/gemm_small.h"
#include "ops/ops.h"

#include <omp.h>

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

/* a random [rows, cols] weight rounded to bf16: the bf16 copy and its float32 values */
static void make_bf16(int64_t rows, int64_t cols, uint64_t seed, uint16_t **h, float **f) {
    const size_t n = (size_t)(rows * cols);
    *h = malloc(n * sizeof **h), *f = malloc(n * sizeof **f);
    fill(*f, n, seed, 0.05f);
    for (size_t i = 0; i < n; i++) (*h)[i] = ds_f32_to_bf16((*f)[i]), (*f)[i] = ds_bf16_to_f32((*h)[i]);
}

/* C = alpha x op(B) + beta C through the resident table and through the plain one on the widened weights,
 * from the same C: whether every element (and C beyond N) agrees bit for bit */
static int same_product(const ds_ops *res, const ds_ops *plain, int tb, int M, int N, int K, const float *x,
                        const float *key, const float *wf, int ldb, uint64_t seed) {
    const int ldc = N + 3;
    const size_t nc = (size_t)M * ldc;
    float *c1 = malloc(nc * sizeof *c1), *c2 = malloc(nc * sizeof *c2);
    fill(c1, nc, seed, 1.0f);
    memcpy(c2, c1, nc * sizeof *c1);
    res->gemm(0, tb, M, N, K, 0.5f, x, K, key, ldb, 1.0f, c1, ldc);
    plain->gemm(0, tb, M, N, K, 0.5f, x, K, wf, ldb, 1.0f, c2, ldc);
    const int same = !memcmp(c1, c2, nc * sizeof *c1) && ds_fp8_resident_status() == DS_OK;
    free(c1), free(c2);
    return same;
}

TEST(bf16_products_equal_float32_bit_for_bit) {
    const ds_ops *cpu = ds_ops_cpu();
    ds_ops res, few, small;
    ds_fp8_resident_ops(&res, cpu);
    CHECK(ds_resident_ops_few_rows(&few, &res) == 1, "the decode form of the host table");
    CHECK(ds_resident_ops_few_rows(&few, cpu) == 0, "no decode form of the plain backend");
    ds_ops_cpu_small_m(&small);
    /* W [2100, 260], V [300, 5000] read untransposed: large enough for the threads to split them */
    const int N = 2100, K = 260, R2 = 300, C2 = 5000;
    uint16_t *h, *h2;
    float *wf, *wf2;
    make_bf16(N, K, 51, &h, &wf);
    make_bf16(R2, C2, 52, &h2, &wf2);
    float *key = malloc(sizeof(float) * (size_t)N * K), *key2 = malloc(sizeof(float) * (size_t)R2 * C2);
    CHECK(ds_bf16_resident_add(key, N, K, h, 0) == DS_OK && ds_bf16_resident_add(key2, R2, C2, h2, 0) == DS_OK,
          "registered (borrowed)");
    CHECK(ds_fp8_resident_bytes(key, (size_t)N * K) == 2 * (size_t)N * K, "bytes: 2 an element");
    const int Ms[] = {1, 2, 5, 16, 17, 130};
    int bad = 0, cases = 0;
    for (int th = 1; th <= 2; th++) {
        omp_set_num_threads(th);
        for (int t = 0; t < 6; t++) {
            const int M = Ms[t];
            float *x = malloc(sizeof(float) * (size_t)M * R2);
            fill(x, (size_t)M * R2, 300 + t, 1.0f);
            for (int v = 0; v < 2; v++) { /* the base table against sgemm; the decode form against the small table */
                const ds_ops *r = v ? &few : &res, *p = v ? &small : cpu;
                int o1 = same_product(r, p, 1, M, N, K, x, key, wf, K, 1);          /* whole */
                int o2 = same_product(r, p, 1, M, 300, K, x, key + (size_t)256 * K, wf + (size_t)256 * K, K, 2); /* rows */
                int o3 = same_product(r, p, 0, M, C2, R2, x, key2, wf2, C2, 3);         /* x V, V [300, 5000] */
                int o4 = same_product(r, p, 0, M, 64, 40, x, key2 + (size_t)100 * C2 + 128, wf2 + (size_t)100 * C2 + 128,
                                   C2, 4); /* a block at row 100, column 128 */
                const int ok = o1 && o2 && o3 && o4;
                if (!ok) CHECK(ok, "%s table, M=%d, %d threads: products differ (whole %d, rows %d, x V %d, block %d)",
                               v ? "decode" : "base", M, th, o1, o2, o3, o4);
                bad += !ok, cases++;
            }
            free(x);
        }
    }
    omp_set_num_threads(2);
    CHECK(!bad, "%d of %d cases (whole, row block, untransposed whole and block; M 1-130; 1 and 2 threads; both "
          "tables) differ from float32", bad, cases);
    /* the embedding: rows widened exactly */
    const int32_t tok[3] = {5, 0, 2099};
    float e1[3 * 260], e2[3 * 260];
    res.embed_fwd(e1, key, tok, 3, K);
    cpu->embed_fwd(e2, wf, tok, 3, K);
    CHECK(!memcmp(e1, e2, sizeof e1) && ds_fp8_resident_status() == DS_OK, "embedding rows 5, 0, 2099 equal");
    /* refused: a block past the weight's columns, and a weight-gradient product */
    float x[4 * 300], c[4 * 300];
    fill(x, 4 * 300, 9, 1.0f);
    res.gemm(0, 1, 2, 10, 200, 1.0f, x, 200, key + 100, K, 0.0f, c, 10);
    CHECK(ds_fp8_resident_status() == DS_ERR && strstr(ds_errmsg(), "not a block of it"), "past the columns: %s",
          ds_errmsg());
    res.gemm(1, 0, 4, K, 2, 1.0f, x, 4, key, K, 0.0f, c, K);
    CHECK(ds_fp8_resident_status() == DS_ERR && strstr(ds_errmsg(), "weight-gradient"), "Wgrad refused: %s", ds_errmsg());
    ds_fp8_resident_remove(key, (size_t)N * K);
    ds_fp8_resident_remove(key2, (size_t)R2 * C2);
    free(key), free(key2), free(h), free(h2), free(wf), free(wf2);
}

TEST(bf16_experts_equal_float32_bit_for_bit) {
    const ds_ops *cpu = ds_ops_cpu();
    ds_ops res, few, small;
    ds_fp8_resident_ops(&res, cpu);
    ds_resident_ops_few_rows(&few, &res);
    ds_ops_cpu_small_m(&small);
    const int E = 3, N = 200, K = 260;
    float *key = malloc(sizeof(float) * (size_t)E * N * K), *wf = malloc(sizeof(float) * (size_t)E * N * K);
    for (int e = 0; e < E; e++) { /* owned copies, rounded by the table */
        float *w = malloc(sizeof(float) * (size_t)N * K);
        fill(w, (size_t)N * K, 60 + e, 0.05f);
        CHECK(ds_bf16_resident_add_f32(key + (size_t)e * N * K, N, K, w) == DS_OK, "expert %d", e);
        for (size_t i = 0; i < (size_t)N * K; i++) wf[(size_t)e * N * K + i] = ds_bf16_to_f32(ds_f32_to_bf16(w[i]));
        free(w);
    }
    const int64_t offs[2][4] = {{0, 2, 2, 7}, {0, 20, 20, 45}}; /* decode-sized groups; groups past the small limit */
    float *x = malloc(sizeof(float) * 45 * K), *c1 = malloc(sizeof(float) * 45 * N), *c2 = malloc(sizeof(float) * 45 * N);
    fill(x, (size_t)45 * K, 71, 1.0f);
    for (int th = 1; th <= 2; th++)
        for (int o = 0; o < 2; o++)
            for (int v = 0; v < 2; v++) {
                omp_set_num_threads(th);
                const int64_t *off = offs[o];
                (v ? &few : &res)->gemm_rows(E, off, 1, N, K, 1.0f, x, K, key, (size_t)N * K, K, 0.0f, c1, N);
                (v ? &small : cpu)->gemm_rows(E, off, 1, N, K, 1.0f, x, K, wf, (size_t)N * K, K, 0.0f, c2, N);
                CHECK(!memcmp(c1, c2, sizeof(float) * (size_t)off[3] * N) && ds_fp8_resident_status() == DS_OK,
                      "%s table, %d threads, experts with %lld, 0, %lld rows: equal", v ? "decode" : "base", th,
                      (long long)off[1], (long long)(off[3] - off[2]));
            }
    omp_set_num_threads(2);
    ds_fp8_resident_remove(key, (size_t)E * N * K);
    CHECK(ds_fp8_resident_bytes(key, (size_t)E * N * K) == 0, "removed (owned copies freed: see the sanitizer build)");
    free(key), free(wf), free(x), free(c1), free(c2);
}

TAP_MAIN()
