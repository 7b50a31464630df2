/* gemm_bf16.c — timing driver for bench/gemm_bf16.sh: libds's bf16 GEMM (ops/gemm_bf16.h: AMX, and its sgemm
 * fallback on bf16-rounded operands), the CPU backend's fp32 sgemm (OpenBLAS, split across OpenMP threads),
 * and OpenBLAS's cblas_sbgemm when the library exports it, on the same shapes. One JSON object per shape,
 * GFLOP/s of the best of `reps` runs (2 M N K flops).
 * usage: gemm_bf16 THREADS REPS M,N,K,TA,TB ... */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/threads.h"
#include "ops/gemm_bf16.h"
#include "ops/ops.h"

typedef struct {
    int M, N, K, ta, tb, ng; /* ng > 0: gemm_rows (tb) or gemm_wgrad (ta) over ng equal groups of M (or K) rows */
    int64_t off[257];
    float *a, *b, *c;
    uint16_t *ah, *bh;
} shape;

typedef void (*sbgemm_fn)(int, int, int, int, int, int, float, const uint16_t *, int, const uint16_t *, int, float,
                          float *, int);
static sbgemm_fn sbgemm;

static void run_amx(shape *s) {
    if (s->ng && s->ta) { /* wgrad: C_g [M, N] = A_g^T B_g over the groups' K rows */
        ds_gemm_bf16_wgrad(s->ng, s->off, s->M, s->N, 1.0f, s->a, s->M, s->b, s->N, 0.0f, s->c, (size_t)s->M * s->N,
                           s->N);
        return;
    }
    if (s->ng) { /* experts: rows of A against B_g = the group's [N, K] weights */
        ds_gemm_bf16_rows(s->ng, s->off, s->tb, s->N, s->K, 1.0f, s->a, s->K, s->b, (size_t)s->N * s->K, s->tb ? s->K : s->N, 0.0f, s->c,
                          s->N, 0);
        return;
    }
    ds_gemm_bf16(s->ta, s->tb, s->M, s->N, s->K, 1.0f, s->a, s->ta ? s->M : s->K, s->b, s->tb ? s->K : s->N, 0.0f, s->c,
                 s->N, 0);
}
static void run_amx_bf16_in(shape *s) {
    ds_gemm_dt(s->ta, s->tb, s->M, s->N, s->K, 1.0f, s->ah, DS_BF16, s->ta ? s->M : s->K, s->bh, DS_BF16,
               s->tb ? s->K : s->N, 0.0f, s->c, DS_F32, s->N);
}
static void run_sgemm(shape *s) {
    const ds_ops *o = ds_ops_cpu();
    if (s->ng && s->ta) {
        o->gemm_wgrad(s->ng, s->off, s->M, s->N, 1.0f, s->a, s->M, s->b, s->N, 0.0f, s->c, (size_t)s->M * s->N, s->N);
        return;
    }
    if (s->ng) {
        o->gemm_rows(s->ng, s->off, s->tb, s->N, s->K, 1.0f, s->a, s->K, s->b, (size_t)s->N * s->K, s->tb ? s->K : s->N,
                     0.0f, s->c, s->N);
        return;
    }
    ds_ops_cpu()->gemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, s->a, s->ta ? s->M : s->K, s->b, s->tb ? s->K : s->N, 0.0f,
                       s->c, s->N);
}
static void run_sbgemm(shape *s) { /* CblasRowMajor = 101, NoTrans = 111, Trans = 112 */
    sbgemm(101, s->ta ? 112 : 111, s->tb ? 112 : 111, s->M, s->N, s->K, 1.0f, s->ah, s->ta ? s->M : s->K, s->bh,
           s->tb ? s->K : s->N, 0.0f, s->c, s->N);
}

static double gflops(int reps, void (*fn)(shape *), shape *s) {
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) { /* the first run warms pages, caches and the pack buffers */
        double t = ds_now();
        fn(s);
        t = ds_now() - t;
        if (r && t < best) best = t;
    }
    return 2.0 * s->M * s->N * s->K / best * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: gemm_bf16 THREADS REPS M,N,K,TA,TB ...\n");
        return 2;
    }
    const int threads = atoi(argv[1]), reps = atoi(argv[2]);
    ds_threads_set(threads);
    sbgemm = (sbgemm_fn)dlsym(RTLD_DEFAULT, "cblas_sbgemm");
    fprintf(stderr, "# bf16 kernel: %s; cblas_sbgemm %s\n", ds_gemm_bf16_kernel(), sbgemm ? "exported" : "not exported");
    for (int i = 3; i < argc; i++) {
        shape s = {0};
        /* M,N,K,TA,TB: one product; rows:M,N,K,G,TB: gemm_rows, M rows in G groups, one [N,K] B each;
         * wgrad:M,N,K,G: gemm_wgrad, K rows in G groups, one [M,N] C each */
        const char *spec = argv[i];
        if (!strncmp(spec, "rows:", 5)) {
            if (sscanf(spec + 5, "%d,%d,%d,%d,%d", &s.M, &s.N, &s.K, &s.ng, &s.tb) != 5) return 2;
        } else if (!strncmp(spec, "wgrad:", 6)) {
            if (sscanf(spec + 6, "%d,%d,%d,%d", &s.M, &s.N, &s.K, &s.ng) != 4) return 2;
            s.ta = 1;
        } else if (sscanf(spec, "%d,%d,%d,%d,%d", &s.M, &s.N, &s.K, &s.ta, &s.tb) != 5) {
            return 2;
        }
        if (s.ng < 0 || s.ng > 256) return 2;
        const int grouped_dim = s.ta ? s.K : s.M;
        for (int g = 0; g <= s.ng; g++) s.off[g] = (int64_t)grouped_dim * g / (s.ng ? s.ng : 1);
        const size_t groups = s.ng ? (size_t)s.ng : 1;
        const size_t na = (size_t)s.M * s.K, nb = (size_t)s.K * s.N * (s.ng && !s.ta ? groups : 1);
        s.a = malloc(na * 4), s.b = malloc(nb * 4), s.c = malloc((size_t)s.M * s.N * 4 * (s.ta ? groups : 1));
        s.ah = malloc(na * 2), s.bh = malloc(nb * 2);
        ds_randn_fill(s.a, na, 1, 0, 1.0f), ds_randn_fill(s.b, nb, 2, 0, 1.0f);
        for (size_t k = 0; k < na; k++) s.ah[k] = ds_f32_to_bf16(s.a[k]);
        for (size_t k = 0; k < nb; k++) s.bh[k] = ds_f32_to_bf16(s.b[k]);
        ds_gemm_bf16_use_amx(1);
        const double amx = ds_gemm_bf16_amx() ? gflops(reps, run_amx, &s) : 0;
        const double amx16 = ds_gemm_bf16_amx() && !s.ng ? gflops(reps, run_amx_bf16_in, &s) : 0;
        ds_gemm_bf16_use_amx(0);
        const double fb = gflops(reps, run_amx, &s);
        ds_gemm_bf16_use_amx(1);
        const double sg = gflops(reps, run_sgemm, &s); /* grouped: the CPU backend's grouped sgemm */
        printf("{\"M\": %d, \"N\": %d, \"K\": %d, \"ta\": %d, \"tb\": %d, \"groups\": %d, \"threads\": %d, \"amx\": %.1f, "
               "\"amx_bf16_in\": %.1f, \"fallback\": %.1f, \"sgemm\": %.1f, \"sbgemm\": ",
               s.M, s.N, s.K, s.ta, s.tb, s.ng, threads, amx, amx16, fb, sg);
        if (sbgemm && !s.ng) printf("%.1f}\n", gflops(reps, run_sbgemm, &s));
        else printf("null}\n");
        free(s.a), free(s.b), free(s.c), free(s.ah), free(s.bh);
    }
    return 0;
}
