/* fp8_kernels.c — timing driver for bench/fp8_bench.py: libds's FP8 codecs, quantizers and scaled GEMM,
 * plus OpenBLAS sgemm on the same shape. Prints one JSON object per measurement (best of `reps`).
 * usage: fp8_kernels N_ELEMENTS THREADS REPS GEMM_M GEMM_N GEMM_K */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"
#include "core/rng.h"
#include "core/threads.h"
#include "fp8/fp8.h"
#include "fp8/gemm.h"
#include "fp8/quant.h"

static double best_of(int reps, void (*fn)(void *), void *arg) {
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) { /* the first run warms pages and caches */
        double t = ds_now();
        fn(arg);
        t = ds_now() - t;
        if (r && t < best) best = t;
    }
    return best;
}

typedef struct {
    size_t n;
    int64_t rows, cols, M, N, K;
    float *x, *y, *s, *a, *b, *c;
    uint8_t *q, *aq, *bq;
    float *as, *bs;
} ctx;

static void f_encode(void *p) { ctx *c = p; ds_fp8_encode(c->q, DS_F8_E4M3, c->x, c->n, 1); }
static void f_decode(void *p) { ctx *c = p; ds_fp8_decode(c->y, DS_F8_E4M3, c->q, c->n); }
static void f_q1x128(void *p) { ctx *c = p; ds_fp8_quantize(c->q, c->s, c->x, c->rows, c->cols, 1, 128, 0); }
static void f_q128(void *p) { ctx *c = p; ds_fp8_quantize(c->q, c->s, c->x, c->rows, c->cols, 128, 128, 0); }
static void f_qt(void *p) { ctx *c = p; ds_fp8_quantize_transposed(c->q, c->s, c->x, c->rows, c->cols, 0); }
static void f_dq128(void *p) { ctx *c = p; ds_fp8_dequantize(c->y, c->q, c->s, c->rows, c->cols, 128, 128); }
static void f_gemm(void *p) {
    ctx *c = p;
    ds_fp8_mat A = {c->aq, c->as, 1, 0}, B = {c->bq, c->bs, 128, 0};
    ds_fp8_gemm(c->c, &A, &B, c->M, c->N, c->K, 0, NULL);
}
static void f_sgemm(void *p) {
    ctx *c = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->M, (int)c->N, (int)c->K, 1, c->a, (int)c->K, c->b,
                (int)c->K, 0, c->c, (int)c->N);
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: fp8_kernels N THREADS REPS M N K\n");
        return 2;
    }
    ctx c = {.n = strtoull(argv[1], 0, 10), .M = atoll(argv[4]), .N = atoll(argv[5]), .K = atoll(argv[6])};
    int threads = atoi(argv[2]), reps = atoi(argv[3]);
    ds_threads_set(threads);
    c.cols = 4096;
    c.rows = (int64_t)c.n / c.cols / 128 * 128; /* whole 128x128 blocks, as the torch competitors need */
    c.n = (size_t)(c.rows * c.cols);
    c.x = malloc(c.n * 4), c.y = malloc(c.n * 4), c.q = malloc(c.n), c.s = malloc((size_t)((c.rows / 128 + 1) * c.cols + c.rows * (c.cols / 128 + 1)) * 4);
    ds_randn_fill(c.x, c.n, 1, 1, 1.0f);
    struct { const char *op; void (*fn)(void *); } el[] = {{"encode_e4m3_sat", f_encode}, {"decode_e4m3", f_decode},
        {"quantize_1x128", f_q1x128}, {"quantize_128x128", f_q128}, {"quantize_128x1_transposed", f_qt},
        {"dequantize_128x128", f_dq128}};
    for (size_t i = 0; i < sizeof el / sizeof *el; i++) {
        double t = best_of(reps, el[i].fn, &c);
        printf("{\"op\":\"%s\",\"threads\":%d,\"n\":%zu,\"seconds\":%.6g,\"melem_per_s\":%.1f}\n", el[i].op, threads, c.n,
               t, c.n / t / 1e6);
    }
    c.a = malloc((size_t)(c.M * c.K) * 4), c.b = malloc((size_t)(c.N * c.K) * 4), c.c = malloc((size_t)(c.M * c.N) * 4);
    c.aq = malloc((size_t)(c.M * c.K)), c.bq = malloc((size_t)(c.N * c.K));
    c.as = malloc((size_t)(c.M * ds_fp8_nblocks(c.K, 128)) * 4);
    c.bs = malloc((size_t)(ds_fp8_nblocks(c.N, 128) * ds_fp8_nblocks(c.K, 128)) * 4);
    ds_randn_fill(c.a, (size_t)(c.M * c.K), 2, 1, 1.0f);
    ds_randn_fill(c.b, (size_t)(c.N * c.K), 3, 1, 0.02f);
    ds_fp8_quantize(c.aq, c.as, c.a, c.M, c.K, 1, 128, 0);
    ds_fp8_quantize(c.bq, c.bs, c.b, c.N, c.K, 128, 128, 0);
    double flops = 2.0 * c.M * c.N * c.K;
    double tg = best_of(reps, f_gemm, &c), ts = best_of(reps, f_sgemm, &c);
    printf("{\"op\":\"fp8_gemm\",\"threads\":%d,\"shape\":[%lld,%lld,%lld],\"seconds\":%.6g,\"gflops\":%.2f}\n", threads,
           (long long)c.M, (long long)c.N, (long long)c.K, tg, flops / tg / 1e9);
    printf("{\"op\":\"sgemm\",\"threads\":%d,\"shape\":[%lld,%lld,%lld],\"seconds\":%.6g,\"gflops\":%.2f}\n", threads,
           (long long)c.M, (long long)c.N, (long long)c.K, ts, flops / ts / 1e9);
    return 0;
}
