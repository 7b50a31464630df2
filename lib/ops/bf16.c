#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ops/bf16.h"

#include "core/dtype.h"
#include "ops/gemm_bf16.h"
#include "ops/ops.h"

static ds_ops g_base, g_tab;

void ds_bf16_round(float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] = ds_bf16_grid(x[i]);
}

/* The products run on ops/gemm_bf16.h: operands rounded to bf16 while they are packed for AMX (or into
 * scratch copies for the sgemm fallback), the output rounded on the way out. */
static void gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc) {
    ds_gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, !ta); /* ta = 1 is a weight gradient: fp32 */
}

static void gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                      const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    ds_gemm_bf16_rows(ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc, 1);
}

static void gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, size_t strideC, int ldc) {
    ds_gemm_bf16_wgrad(ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc); /* weight gradients: fp32 */
}

/* Parameter buffers: the GEMMs keep packed bf16 copies of the weights in them (ops/gemm_bf16.h's cache), stale
 * from each announcement on, dropped when the buffer is freed. */
static void params_changed(const float *base, size_t n) {
    ds_gemm_bf16_params_changed(base, n);
    g_base.params_changed(base, n);
}

static void free_mem(void *p) {
    ds_gemm_bf16_params_freed(p);
    g_base.free(p);
}

static void add(float *y, const float *a, const float *b, size_t n) {
    g_base.add(y, a, b, n);
    ds_bf16_round(y, n);
}

static void rmsnorm_fwd(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d, float eps) {
    g_base.rmsnorm_fwd(y, ldy, rstd, x, ldx, w, n, d, eps);
    ds_bf16_round_rows(y, ldy, n, d);
}

static void rmsnorm_bwd(float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx,
                        const float *w, const float *rstd, int n, int d) {
    g_base.rmsnorm_bwd(dx, lddx, dw, dy, lddy, x, ldx, w, rstd, n, d);
    ds_bf16_round_rows(dx, lddx, n, d);
}

static void rope(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved, const float *cs,
                 int inverse) {
    g_base.rope(x, n, nh, ld_row, ld_head, off, half, interleaved, cs, inverse);
#pragma omp parallel for schedule(static) if ((int64_t)n * nh * half > 16384)
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < nh; h++) {
            float *v = x + i * ld_row + h * ld_head + off;
            for (int j = 0; j < 2 * half; j++) v[j] = ds_bf16_grid(v[j]);
        }
}

static void attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg, int B,
                     int T, int H, int dqk, int dv, float scale, void *ws) {
    g_base.attn_fwd(o, lse, q, k, v, seg, B, T, H, dqk, dv, scale, ws);
    ds_bf16_round(o, (size_t)B * T * H * dv);
}

static void attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                     const float *o, const float *lse, const int32_t *seg, int B, int T, int H, int dqk, int dv_dim,
                     float scale, void *ws) {
    g_base.attn_bwd(dq, dk, dv, dout, q, k, v, o, lse, seg, B, T, H, dqk, dv_dim, scale, ws);
    const size_t rows = (size_t)B * T * H;
    ds_bf16_round(dq, rows * dqk), ds_bf16_round(dk, rows * dqk), ds_bf16_round(dv, rows * dv_dim);
}

static void swiglu_fwd(float *h, const float *g, const float *u, size_t n) {
    g_base.swiglu_fwd(h, g, u, n);
    ds_bf16_round(h, n);
}

static void swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    g_base.swiglu_bwd(dg, du, dh, g, u, n);
    ds_bf16_round(dg, n), ds_bf16_round(du, n);
}

static void embed_fwd(float *x, const float *table, const int32_t *tok, int n, int d) {
    g_base.embed_fwd(x, table, tok, n, d);
    ds_bf16_round(x, (size_t)n * d);
}

static void moe_combine(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d) {
    g_base.moe_combine(y, ye, w, where, n, K, d);
    ds_bf16_round(y, (size_t)n * d);
}

const ds_ops *ds_bf16_ops(const ds_ops *base) {
    (void)ds_gemm_bf16_amx(); /* the AMX permission asked for now, before any parallel region runs a product */
    g_base = *base;
    g_tab = *base;
    g_tab.gemm = gemm, g_tab.gemm_rows = gemm_rows, g_tab.gemm_wgrad = gemm_wgrad, g_tab.add = add;
    g_tab.gemm_rows_dev = NULL, g_tab.gemm_wgrad_dev = NULL; /* operands rounded only on the host-offset path */
    g_tab.moe_ffn_fwd = NULL, g_tab.moe_ffn_bwd = NULL; /* outputs rounded per op: the unfused sequence */
    g_tab.rmsnorm_fwd = rmsnorm_fwd, g_tab.rmsnorm_bwd = rmsnorm_bwd, g_tab.rope = rope;
    g_tab.attn_fwd = attn_fwd, g_tab.attn_bwd = attn_bwd, g_tab.swiglu_fwd = swiglu_fwd, g_tab.swiglu_bwd = swiglu_bwd;
    g_tab.embed_fwd = embed_fwd, g_tab.moe_combine = moe_combine;
    g_tab.params_changed = params_changed, g_tab.free = free_mem;
    return &g_tab;
}
