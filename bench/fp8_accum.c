/* fp8_accum.c — driver for bench/fp8_accum.sh: the accumulation error of the FP8 GEMM against K, for
 * the exact model (fp8/gemm.h ds_fp8_gemm), Hopper's narrow accumulator without promotion and with
 * promotion every N_C, next to a bf16 GEMM (bf16 inputs, fp32 accumulation, output rounded to bf16).
 * Every error is measured against the exact (double) product of the same operands, so it is the
 * accumulation's (and, for bf16, the output rounding's) alone: the quantization of the inputs is left out.
 * Columns: relative Frobenius error ||C - C_ref|| / ||C_ref|| and the largest |C - C_ref| / |C_ref| over the
 * elements with |C_ref| >= 1e-3 ||C_ref||_rms (near-zero sums have no meaningful relative error).
 * usage: fp8_accum M N SIGN K... -- NC...   SIGN: signed (N(0,1) operands) or positive (|N(0,1)|)
 *        (NC 0 = no promotion; "exact" and "bf16" columns are always printed) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/rng.h"
#include "fp8/fp8.h"
#include "fp8/gemm.h"
#include "fp8/quant.h"

static void errors(const float *c, const double *ref, int64_t n, double *fro, double *mx) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) num += (c[i] - ref[i]) * (c[i] - ref[i]), den += ref[i] * ref[i];
    const double floor_ = 1e-3 * sqrt(den / (double)n);
    *fro = sqrt(num / den), *mx = 0;
    for (int64_t i = 0; i < n; i++)
        if (fabs(ref[i]) >= floor_ && fabs(c[i] - ref[i]) / fabs(ref[i]) > *mx) *mx = fabs(c[i] - ref[i]) / fabs(ref[i]);
}

static float *operand(int64_t rows, int64_t K, uint64_t seed, int positive) {
    float *x = malloc((size_t)(rows * K) * 4);
    ds_randn_fill(x, (size_t)(rows * K), seed, 0, 1.0f);
    if (positive)
        for (int64_t i = 0; i < rows * K; i++) x[i] = fabsf(x[i]);
    return x;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: fp8_accum M N signed|positive K... -- NC...\n");
        return 2;
    }
    const int64_t M = atoll(argv[1]), N = atoll(argv[2]);
    const int positive = !strcmp(argv[3], "positive");
    int sep = 4;
    while (sep < argc && strcmp(argv[sep], "--")) sep++;
    printf("%-6s %-16s", "K", "exact(fro/max)");
    for (int j = sep + 1; j < argc; j++) {
        char h[32];
        snprintf(h, sizeof h, "hopper NC=%s", argv[j]);
        printf(" %-18s", h);
    }
    printf(" %-16s\n", "bf16(fro/max)");
    for (int i = 4; i < sep; i++) {
        const int64_t K = atoll(argv[i]), kb = ds_fp8_nblocks(K, DS_FP8_BLOCK);
        float *a = operand(M, K, 7, positive), *b = operand(N, K, 8, positive), *c = malloc((size_t)(M * N) * 4);
        uint8_t *aq = malloc((size_t)(M * K)), *bq = malloc((size_t)(N * K));
        float *as = malloc((size_t)(M * kb) * 4), *bs = malloc((size_t)(ds_fp8_nblocks(N, 128) * kb) * 4);
        double *ref = malloc((size_t)(M * N) * 8), fro, mx;
        ds_fp8_quantize(aq, as, a, M, K, 1, DS_FP8_BLOCK, DS_FP8_SCALE_F32);
        ds_fp8_quantize(bq, bs, b, N, K, DS_FP8_BLOCK, DS_FP8_BLOCK, DS_FP8_SCALE_F32);
        ds_fp8_mat A = {aq, as, 1, 0}, B = {bq, bs, DS_FP8_BLOCK, 0};
        for (int64_t m = 0; m < M; m++) /* exact: products of E4M3 x f32 scales, summed in double */
            for (int64_t n = 0; n < N; n++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++)
                    s += (ds_e4m3_table[aq[m * K + k]] * (double)as[m * kb + k / 128]) *
                         (ds_e4m3_table[bq[n * K + k]] * (double)bs[(n / 128) * kb + k / 128]);
                ref[m * N + n] = s;
            }
        ds_fp8_gemm(c, &A, &B, M, N, K, 0, NULL);
        errors(c, ref, M * N, &fro, &mx);
        printf("%-6lld %.2e/%.2e", (long long)K, fro, mx);
        for (int j = sep + 1; j < argc; j++) {
            ds_fp8_accum acc = {DS_FP8_ACCUM_HOPPER, atoll(argv[j])};
            ds_fp8_gemm_accum(c, &A, &B, M, N, K, 0, NULL, &acc);
            errors(c, ref, M * N, &fro, &mx);
            printf("  %.2e/%.2e", fro, mx);
        }
        /* bf16: the operands rounded to bf16, products summed in fp32 in order, the output rounded to bf16 */
        for (int64_t k = 0; k < M * K; k++) a[k] = ds_bf16_to_f32(ds_f32_to_bf16(a[k]));
        for (int64_t k = 0; k < N * K; k++) b[k] = ds_bf16_to_f32(ds_f32_to_bf16(b[k]));
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0;
                float f = 0;
                for (int64_t k = 0; k < K; k++) s += (double)a[m * K + k] * b[n * K + k], f += a[m * K + k] * b[n * K + k];
                ref[m * N + n] = s, c[m * N + n] = ds_bf16_to_f32(ds_f32_to_bf16(f));
            }
        errors(c, ref, M * N, &fro, &mx);
        printf("  %.2e/%.2e\n", fro, mx);
        fflush(stdout);
        free(a), free(b), free(c), free(aq), free(bq), free(as), free(bs), free(ref);
    }
    return 0;
}
