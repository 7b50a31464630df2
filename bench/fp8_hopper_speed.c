/* fp8_hopper_speed.c — driver for bench/fp8_hopper_speed.sh: the time of one FP8 GEMM C[M, N] = A[M, K] .
 * B[N, K]^T with the exact model (ds_fp8_gemm), with Hopper's accumulation model on its scalar path
 * (ds_fp8_hopper_dot per element) and on its vector path, and the ratios; checks that the two hopper
 * paths give the same bits. Best of REPS after one warm-up run, on the OpenMP threads given; times are the
 * process's CPU seconds (on a shared, loaded machine the wall time measures the neighbours).
 * usage: fp8_hopper_speed M N K NC REPS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/rng.h"
#include "fp8/fp8.h"
#include "fp8/gemm.h"
#include "fp8/quant.h"

typedef struct {
    float *C;
    const ds_fp8_mat *A, *B;
    int64_t M, N, K;
    ds_fp8_accum acc;
    int scalar;
} run;

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double best_of(int reps, run *r) {
    double best = 1e30;
    ds_fp8_hopper_force_scalar(r->scalar);
    for (int i = 0; i < reps + 1; i++) {
        double t = cpu_now();
        if (ds_fp8_gemm_accum(r->C, r->A, r->B, r->M, r->N, r->K, 0, NULL, &r->acc)) {
            fprintf(stderr, "fp8_hopper_speed: error: %s\n", ds_errmsg());
            exit(1);
        }
        t = cpu_now() - t;
        if (i && t < best) best = t;
    }
    ds_fp8_hopper_force_scalar(0);
    return best;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: fp8_hopper_speed M N K NC REPS\n");
        return 2;
    }
    const int64_t M = atoll(argv[1]), N = atoll(argv[2]), K = atoll(argv[3]), nc = atoll(argv[4]);
    const int reps = atoi(argv[5]);
    const int64_t kb = ds_fp8_nblocks(K, DS_FP8_BLOCK);
    float *a = malloc((size_t)(M * K) * 4), *b = malloc((size_t)(N * K) * 4);
    float *c1 = malloc((size_t)(M * N) * 4), *c2 = malloc((size_t)(M * N) * 4), *c3 = malloc((size_t)(M * N) * 4);
    uint8_t *aq = malloc((size_t)(M * K)), *bq = malloc((size_t)(N * K));
    float *as = malloc((size_t)(M * kb) * 4), *bs = malloc((size_t)(ds_fp8_nblocks(N, 128) * kb) * 4);
    ds_randn_fill(a, (size_t)(M * K), 1, 0, 1.0f);
    ds_randn_fill(b, (size_t)(N * K), 2, 0, 0.02f);
    ds_fp8_quantize(aq, as, a, M, K, 1, DS_FP8_BLOCK, DS_FP8_SCALE_F32);
    ds_fp8_quantize(bq, bs, b, N, K, DS_FP8_BLOCK, DS_FP8_BLOCK, DS_FP8_SCALE_F32);
    ds_fp8_mat A = {aq, as, 1, 0}, B = {bq, bs, DS_FP8_BLOCK, 0};
    run ex = {c1, &A, &B, M, N, K, {DS_FP8_ACCUM_EXACT, 0}, 0};
    run sc = {c2, &A, &B, M, N, K, {DS_FP8_ACCUM_HOPPER, nc}, 1};
    run ve = {c3, &A, &B, M, N, K, {DS_FP8_ACCUM_HOPPER, nc}, 0};
    const double te = best_of(reps, &ex), ts = best_of(reps, &sc), tv = best_of(reps, &ve);
    const double gp = (double)M * N * K * 1e-9;
    printf("M %lld N %lld K %lld N_C %lld, vector path %s\n", (long long)M, (long long)N, (long long)K, (long long)nc,
           ds_fp8_hopper_vectorized() ? "AVX-512F+DQ" : "absent (scalar twice)");
    printf("exact FP8 GEMM       %9.4f CPU s  %7.3f G products/s\n", te, gp / te);
    printf("hopper, scalar path  %9.4f CPU s  %7.3f G products/s\n", ts, gp / ts);
    printf("hopper, vector path  %9.4f CPU s  %7.3f G products/s\n", tv, gp / tv);
    printf("speedup vector/scalar %.1fx; hopper vector / exact time %.2fx (scalar / exact %.1fx)\n", ts / tv, tv / te,
           ts / te);
    const int same = !memcmp(c2, c3, (size_t)(M * N) * 4);
    printf("scalar and vector outputs bit-identical: %s\n", same ? "yes" : "NO");
    free(a), free(b), free(c1), free(c2), free(c3), free(aq), free(bq), free(as), free(bs);
    return same ? 0 : 1;
}
