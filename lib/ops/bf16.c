#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ops/bf16.h"

#include "core/err.h"
#include "ops/gemm_bf16.h"
#include "ops/ops.h"

static ds_ops g_base, g_tab;

/* Storage rounding through the base's own entry (host memory or device memory alike). */
static void round_n(float *x, size_t n) { g_base.round_bf16(x, (int64_t)n, 1, (int64_t)n); }
static void round_rows(float *x, int64_t ld, int64_t rows, int64_t cols) { g_base.round_bf16(x, ld, rows, cols); }

/* ---- over the CPU backend: the products run on ops/gemm_bf16.h (operands rounded to bf16 while they are
 * packed for AMX, or into scratch copies for the sgemm fallback; the output rounded on the way out) ---- */
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

/* ---- over any other base: its GEMMs take bf16 operands themselves (the CUDA backend's bf16 mode converts
 * them to nearest even before cuBLASLt) and return fp32; the outputs are rounded here, weight gradients not ---- */
static void base_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
    g_base.gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (!ta && M > 0 && N > 0) round_rows(C, ldc, M, N);
}

static void base_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                           const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    g_base.gemm_rows(ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
    if (off[ng] > 0 && N > 0) round_rows(C, ldc, off[ng], N); /* the groups' rows are [0, off[ng]) */
}

/* ---- the other outputs stored in bf16, whatever the base ---- */
static void add(float *y, const float *a, const float *b, size_t n) {
    g_base.add(y, a, b, n);
    round_n(y, n);
}

static void rmsnorm_fwd(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d, float eps) {
    g_base.rmsnorm_fwd(y, ldy, rstd, x, ldx, w, n, d, eps);
    round_rows(y, ldy, n, d);
}

static void rmsnorm_bwd(float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx,
                        const float *w, const float *rstd, int n, int d) {
    g_base.rmsnorm_bwd(dx, lddx, dw, dy, lddy, x, ldx, w, rstd, n, d);
    round_rows(dx, lddx, n, d);
}

/* The rotated slice of every head: heads packed row after row (ld_row = nh ld_head, the query's layout) are
 * rows of one matrix; otherwise one matrix per head. */
static void rope(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved, const float *cs,
                 int inverse) {
    g_base.rope(x, n, nh, ld_row, ld_head, off, half, interleaved, cs, inverse);
    if (nh == 1 || (int64_t)ld_row == (int64_t)nh * ld_head)
        round_rows(x + off, nh == 1 ? ld_row : ld_head, (int64_t)n * nh, 2 * half);
    else
        for (int h = 0; h < nh; h++) round_rows(x + (size_t)h * ld_head + off, ld_row, n, 2 * half);
}

static void attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg, int B,
                     int T, int H, int dqk, int dv, float scale, void *ws) {
    g_base.attn_fwd(o, lse, q, k, v, seg, B, T, H, dqk, dv, scale, ws);
    round_n(o, (size_t)B * T * H * dv);
}

static void attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                     const float *o, const float *lse, const int32_t *seg, int B, int T, int H, int dqk, int dv_dim,
                     float scale, void *ws) {
    g_base.attn_bwd(dq, dk, dv, dout, q, k, v, o, lse, seg, B, T, H, dqk, dv_dim, scale, ws);
    const size_t rows = (size_t)B * T * H;
    round_n(dq, rows * dqk), round_n(dk, rows * dqk), round_n(dv, rows * dv_dim);
}

static void swiglu_fwd(float *h, const float *g, const float *u, size_t n) {
    g_base.swiglu_fwd(h, g, u, n);
    round_n(h, n);
}

static void swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    g_base.swiglu_bwd(dg, du, dh, g, u, n);
    round_n(dg, n), round_n(du, n);
}

static void embed_fwd(float *x, const float *table, const int32_t *tok, int n, int d) {
    g_base.embed_fwd(x, table, tok, n, d);
    round_n(x, (size_t)n * d);
}

static void moe_combine(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d) {
    g_base.moe_combine(y, ye, w, where, n, K, d);
    round_n(y, (size_t)n * d);
}

const ds_ops *ds_bf16_ops(const ds_ops *base) {
    if (!base->round_bf16) {
        ds_fail(DS_EUSAGE, "--bf16: the %s backend has no bf16 rounding", base->name);
        return NULL;
    }
    const int host = base->gemm == ds_ops_cpu()->gemm; /* the CPU's fp32 sgemm: replaced by bf16 products */
    if (host) (void)ds_gemm_bf16_amx(); /* the AMX permission asked for now, before any parallel region runs a product */
    g_base = *base;
    g_tab = *base;
    if (host) {
        g_tab.gemm = gemm, g_tab.gemm_rows = gemm_rows, g_tab.gemm_wgrad = gemm_wgrad;
        g_tab.params_changed = params_changed, g_tab.free = free_mem;
    } else {
        g_tab.gemm = base_gemm, g_tab.gemm_rows = base_gemm_rows; /* gemm_wgrad: the base's, fp32 */
    }
    g_tab.gemm_rows_dev = NULL, g_tab.gemm_wgrad_dev = NULL; /* outputs rounded only on the host-offset path */
    g_tab.moe_ffn_fwd = NULL, g_tab.moe_ffn_bwd = NULL; /* outputs rounded per op: the unfused sequence */
    g_tab.add = add, g_tab.rmsnorm_fwd = rmsnorm_fwd, g_tab.rmsnorm_bwd = rmsnorm_bwd, g_tab.rope = rope;
    g_tab.attn_fwd = attn_fwd, g_tab.attn_bwd = attn_bwd, g_tab.swiglu_fwd = swiglu_fwd, g_tab.swiglu_bwd = swiglu_bwd;
    g_tab.embed_fwd = embed_fwd, g_tab.moe_combine = moe_combine;
    return &g_tab;
}
