/* test_bf16_ops.c — ops/bf16.h: the --bf16 table's products take bf16 operands (the fp32 inputs untouched),
 * accumulate in fp32 and store bf16 outputs, except weight gradients (fp32); elementwise outputs are bf16.
 * Against direct double loops on the operands rounded here. */
#include "tap.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "ops/bf16.h"
#include "ops/ops.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float bf(float x) { return ds_bf16_to_f32(ds_f32_to_bf16(x)); }
static int on_grid(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != bf(x[i])) return 0;
    return 1;
}

TEST(gemm_products) {
    enum { M = 5, N = 7, K = 300 };
    const ds_ops *o = ds_bf16_ops(ds_ops_cpu());
    float *a = malloc(M * K * 4), *b = malloc(N * K * 4), *a0 = malloc(M * K * 4), *b0 = malloc(N * K * 4);
    float c[M * N], dw[N * K];
    ds_randn_fill(a, M * K, 1, 0, 1.0f), ds_randn_fill(b, N * K, 2, 0, 1.0f);
    memcpy(a0, a, M * K * 4), memcpy(b0, b, N * K * 4);
    CHECK(!on_grid(a, M * K), "the inputs are not bf16 values to begin with");
    o->gemm(0, 1, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N); /* Fprop-shaped: c = a b^T */
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) s += (double)bf(a[m * K + k]) * bf(b[n * K + k]), sa += fabs((double)bf(a[m * K + k]) * bf(b[n * K + k]));
            /* bf16 output rounding (u = 2^-8 of |c|: 8 significant bits) plus fp32 accumulation (K 2^-24 of sum |products|) */
            const double err = fabs(c[m * N + n] - s) / (0x1p-8 * fabs(s) + K * 0x1p-24 * sa);
            if (err > worst) worst = err;
        }
    CHECK(worst <= 1.0, "a b^T of the bf16-rounded operands, within output rounding + fp32 accumulation (%.3f of the bound)", worst);
    CHECK(on_grid(c, M * N), "the output is stored in bf16");
    CHECK(!memcmp(a, a0, M * K * 4) && !memcmp(b, b0, N * K * 4), "the fp32 operands (master weights) are untouched");
    float cf[M * N];
    ds_ops_cpu()->gemm(0, 1, M, N, K, 1.0f, a, K, b, K, 0.0f, cf, N);
    CHECK(memcmp(c, cf, sizeof c), "not the fp32 product");
    /* Wgrad-shaped (ta = 1): dW[N, K] += c^T a over the M rows, fp32 output */
    memset(dw, 0, sizeof dw);
    o->gemm(1, 0, N, K, M, 1.0f, c, N, a, K, 1.0f, dw, K);
    double we = 0;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int m = 0; m < M; m++) s += (double)c[m * N + n] * bf(a[m * K + k]);
            we = fmax(we, fabs(dw[n * K + k] - s) / (fabs(s) + 1e-30));
        }
    CHECK(we < 1e-5 && !on_grid(dw, N * K), "weight gradients: bf16 operands, fp32 result (rel %.2e)", we);
    free(a), free(b), free(a0), free(b0);
}

TEST(elementwise_outputs) {
    const ds_ops *o = ds_bf16_ops(ds_ops_cpu());
    enum { n = 4, d = 64 };
    float x[n * d], y[n * d], w[d], h[n * d], r[n];
    ds_randn_fill(x, n * d, 3, 0, 1.0f), ds_randn_fill(y, n * d, 4, 0, 1.0f), ds_randn_fill(w, d, 5, 0, 1.0f);
    o->add(h, x, y, n * d);
    int ok = 1;
    for (int i = 0; i < n * d; i++) ok &= h[i] == bf(x[i] + y[i]);
    CHECK(ok, "residual add: the fp32 sum rounded to bf16");
    o->rmsnorm_fwd(h, d, r, x, d, w, n, d, 1e-6f);
    float ref[n * d], rr[n];
    ds_ops_cpu()->rmsnorm_fwd(ref, d, rr, x, d, w, n, d, 1e-6f);
    ok = 1;
    for (int i = 0; i < n * d; i++) ok &= h[i] == bf(ref[i]);
    CHECK(ok && !memcmp(r, rr, sizeof r), "RMSNorm: computed in fp32, y stored bf16, rstd kept fp32");
    o->swiglu_fwd(h, x, y, n * d);
    ds_ops_cpu()->swiglu_fwd(ref, x, y, n * d);
    ok = 1;
    for (int i = 0; i < n * d; i++) ok &= h[i] == bf(ref[i]);
    CHECK(ok, "SwiGLU output stored bf16");
    CHECK(!strcmp(o->name, ds_ops_cpu()->name) && o->alloc == ds_ops_cpu()->alloc, "name and memory are the base's");
}

TAP_MAIN()
