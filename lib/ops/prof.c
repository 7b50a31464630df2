/* The profile (prof.h): region marks with exclusive wall time, and a backend table that times every op. */
#include "ops/prof.h"

#include "ops/device.h"
#include "ops/ops.h"

#include <string.h>
#include <time.h>

int ds_prof_on;

static struct {
    ds_prof_stats st;
    int cur, rc;      /* current region; recomputation in progress */
    double last, last_cpu; /* when the current region last started accruing (wall, process CPU) */
} P;

static ds_ops g_base, g_tab, g_lin_base, g_lin_tab, g_lin2_base, g_lin2_tab;
static int g_sync; /* the base queues work (a device): wait for it before reading the clock */

static double clock_s(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu_now(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* charge the current region with the time since it last started accruing */
static void accrue(void) {
    double t = now(), c = cpu_now();
    P.st.region_s[P.cur] += t - P.last;
    P.st.region_cpu_s[P.cur] += c - P.last_cpu;
    P.st.step_cpu_s += c - P.last_cpu;
    P.last = t, P.last_cpu = c;
}

int ds_prof_enter_(ds_prof_region r) {
    int prev = P.cur;
    accrue();
    P.cur = (int)r;
    return prev;
}

void ds_prof_leave_(int prev) {
    accrue();
    P.cur = prev;
}

int ds_prof_recompute_(int on) {
    int prev = P.rc;
    P.rc = on;
    return prev;
}

void ds_prof_step_begin(void) {
    P.cur = DS_PROF_OTHER;
    P.rc = 0;
    P.last = now();
    P.last_cpu = cpu_now();
    ds_prof_on = 1;
}

void ds_prof_step_end(double step_s) {
    if (!ds_prof_on) return;
    accrue();
    ds_prof_on = 0;
    P.st.steps++;
    P.st.step_s += step_s;
}

void ds_prof_get(ds_prof_stats *out) { *out = P.st; }
void ds_prof_reset(void) { memset(&P.st, 0, sizeof P.st); }

/* ---- the timing table --------------------------------------------------------------------------------- */

typedef struct {
    double wall, cpu;
} stamp;

static stamp op_begin(void) { return ds_prof_on ? (stamp){now(), cpu_now()} : (stamp){0, 0}; }

static void op_end(ds_prof_op k, stamp t0, const ds_ops *base, double flop) {
    if (!ds_prof_on) return;
    if (g_sync) base->sync();
    double dt = now() - t0.wall, dc = cpu_now() - t0.cpu;
    P.st.op_s[k] += dt;
    P.st.op_cpu_s[k] += dc;
    P.st.op_calls[k]++;
    if (k <= DS_PROF_OP_GEMM_WGRAD || k == DS_PROF_OP_MOE_FFN_FWD || k == DS_PROF_OP_MOE_FFN_BWD) {
        P.st.gemm_s[P.cur] += dt;
        P.st.gemm_cpu_s[P.cur] += dc;
        P.st.gemm_flop[P.cur] += flop;
        if (P.rc) P.st.gemm_flop_rc[P.cur] += flop;
    }
}

/* a wrapper that times base.op under kind k (no FLOPs) */
#define TIMED(op, k, params, args)                                                                                \
    static void p_##op params {                                                                                   \
        stamp t0 = op_begin();                                                                                   \
        g_base.op args;                                                                                           \
        op_end(k, t0, &g_base, 0.0);                                                                              \
    }

static void gemm_on(const ds_ops *b, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    stamp t0 = op_begin();
    b->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    op_end(DS_PROF_OP_GEMM, t0, b, 2.0 * M * N * K);
}

static void gemm_rows_on(const ds_ops *b, int ng, const int64_t *off, int tb, int N, int K, float alpha,
                         const float *A, int lda, const float *B, size_t strideB, int ldb, float beta, float *C,
                         int ldc) {
    stamp t0 = op_begin();
    b->gemm_rows(ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
    op_end(DS_PROF_OP_GEMM_ROWS, t0, b, 2.0 * (double)(off[ng] - off[0]) * N * K);
}

static void gemm_wgrad_on(const ds_ops *b, int ng, const int64_t *off, int M, int N, float alpha, const float *A,
                          int lda, const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    stamp t0 = op_begin();
    b->gemm_wgrad(ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
    op_end(DS_PROF_OP_GEMM_WGRAD, t0, b, 2.0 * (double)(off[ng] - off[0]) * M * N);
}

/* the device-offset grouped GEMMs: timed, their FLOPs unknown to the host (0) */
static void gemm_rows_dev_on(const ds_ops *b, int ng, const int32_t *off, int max_rows, int tb, int N, int K,
                             float alpha, const float *A, int lda, const float *B, size_t strideB, int ldb, float beta,
                             float *C, int ldc) {
    stamp t0 = op_begin();
    b->gemm_rows_dev(ng, off, max_rows, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
    op_end(DS_PROF_OP_GEMM_ROWS, t0, b, 0.0);
}

static void gemm_wgrad_dev_on(const ds_ops *b, int ng, const int32_t *off, int M, int N, float alpha, const float *A,
                              int lda, const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    stamp t0 = op_begin();
    b->gemm_wgrad_dev(ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
    op_end(DS_PROF_OP_GEMM_WGRAD, t0, b, 0.0);
}

#define GEMMS(pre, base)                                                                                          \
    static void pre##gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,               \
                          const float *B, int ldb, float beta, float *C, int ldc) {                               \
        gemm_on(&base, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);                                    \
    }                                                                                                             \
    static void pre##gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A,     \
                               int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) { \
        gemm_rows_on(&base, ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);                    \
    }                                                                                                             \
    static void pre##gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,  \
                                const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {         \
        gemm_wgrad_on(&base, ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);                       \
    }                                                                                                             \
    static void pre##gemm_rows_dev(int ng, const int32_t *off, int max_rows, int tb, int N, int K, float alpha,   \
                                   const float *A, int lda, const float *B, size_t strideB, int ldb, float beta,  \
                                   float *C, int ldc) {                                                           \
        gemm_rows_dev_on(&base, ng, off, max_rows, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);      \
    }                                                                                                             \
    static void pre##gemm_wgrad_dev(int ng, const int32_t *off, int M, int N, float alpha, const float *A,        \
                                    int lda, const float *B, int ldb, float beta, float *C, size_t strideC,       \
                                    int ldc) {                                                                    \
        gemm_wgrad_dev_on(&base, ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);                   \
    }                                                                                                             \
    /* the table `t` with the device-offset entries timed where its base has them */                              \
    static void pre##set_dev(ds_ops *t) {                                                                         \
        t->gemm_rows_dev = base.gemm_rows_dev ? pre##gemm_rows_dev : NULL;                                         \
        t->gemm_wgrad_dev = base.gemm_wgrad_dev ? pre##gemm_wgrad_dev : NULL;                                      \
    }
GEMMS(p_, g_base)
GEMMS(l_, g_lin_base)
GEMMS(l2_, g_lin2_base)

TIMED(copy, DS_PROF_OP_COPY, (void *dst, const void *src, size_t bytes, ds_copy_kind kind), (dst, src, bytes, kind))
TIMED(zero, DS_PROF_OP_ZERO, (void *p, size_t bytes), (p, bytes))
TIMED(add, DS_PROF_OP_ADD, (float *y, const float *a, const float *b, size_t n), (y, a, b, n))
TIMED(axpy, DS_PROF_OP_AXPY, (float *y, float alpha, const float *x, size_t n), (y, alpha, x, n))
TIMED(scale, DS_PROF_OP_SCALE, (float *y, float alpha, size_t n), (y, alpha, n))
TIMED(copy2d, DS_PROF_OP_COPY2D, (float *dst, int ldd, const float *src, int lds, int rows, int cols),
      (dst, ldd, src, lds, rows, cols))
TIMED(rmsnorm_fwd, DS_PROF_OP_RMSNORM_FWD,
      (float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d, float eps),
      (y, ldy, rstd, x, ldx, w, n, d, eps))
TIMED(rmsnorm_bwd, DS_PROF_OP_RMSNORM_BWD,
      (float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx, const float *w,
       const float *rstd, int n, int d),
      (dx, lddx, dw, dy, lddy, x, ldx, w, rstd, n, d))
TIMED(rope_table, DS_PROF_OP_ROPE_TABLE,
      (float *cs, const int32_t *pos, int n, const float *inv_freq, int half, float mscale),
      (cs, pos, n, inv_freq, half, mscale))
TIMED(rope, DS_PROF_OP_ROPE,
      (float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved, const float *cs,
       int inverse),
      (x, n, nh, ld_row, ld_head, off, half, interleaved, cs, inverse))
TIMED(attn_fwd, DS_PROF_OP_ATTN_FWD,
      (float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg, int B, int T,
       int H, int dqk, int dv, float scale, void *ws),
      (o, lse, q, k, v, seg, B, T, H, dqk, dv, scale, ws))
TIMED(attn_bwd, DS_PROF_OP_ATTN_BWD,
      (float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
       const float *o, const float *lse, const int32_t *seg, int B, int T, int H, int dqk, int dv_dim,
       float scale, void *ws),
      (dq, dk, dv, dout, q, k, v, o, lse, seg, B, T, H, dqk, dv_dim, scale, ws))
TIMED(swiglu_fwd, DS_PROF_OP_SWIGLU_FWD, (float *h, const float *g, const float *u, size_t n), (h, g, u, n))
TIMED(swiglu_bwd, DS_PROF_OP_SWIGLU_BWD,
      (float *dg, float *du, const float *dh, const float *g, const float *u, size_t n), (dg, du, dh, g, u, n))
TIMED(embed_fwd, DS_PROF_OP_EMBED_FWD, (float *x, const float *table, const int32_t *tok, int n, int d),
      (x, table, tok, n, d))
TIMED(embed_bwd, DS_PROF_OP_EMBED_BWD, (float *dtable, const float *dx, const int32_t *tok, int n, int d),
      (dtable, dx, tok, n, d))
TIMED(logsoftmax_fwd, DS_PROF_OP_LOGSOFTMAX_FWD,
      (float *logp, float *lse, float *ent, const float *logits, const int32_t *tgt, int n, int V),
      (logp, lse, ent, logits, tgt, n, V))
TIMED(logsoftmax_bwd, DS_PROF_OP_LOGSOFTMAX_BWD,
      (float *dlogits, const float *logits, const float *lse, const int32_t *tgt, const float *dlogp, int n, int V),
      (dlogits, logits, lse, tgt, dlogp, n, V))
TIMED(router_scores, DS_PROF_OP_ROUTER_SCORES, (float *scores, const float *logits, int n, int E, ds_score_fn fn),
      (scores, logits, n, E, fn))
TIMED(moe_topk, DS_PROF_OP_MOE_TOPK,
      (int32_t *idx, float *w, const float *scores, const float *bias, const int32_t *keep, int n,
       const ds_route_params *rp),
      (idx, w, scores, bias, keep, n, rp))
TIMED(moe_topk_bwd, DS_PROF_OP_MOE_TOPK_BWD,
      (float *dlogits, const float *dw, const float *scores, const int32_t *idx, int n, const ds_route_params *rp),
      (dlogits, dw, scores, idx, n, rp))
TIMED(moe_balance, DS_PROF_OP_MOE_BALANCE,
      (float *loss, float *dlogits, float coef, const float *scores, const int32_t *idx, int B, int T,
       const ds_route_params *rp),
      (loss, dlogits, coef, scores, idx, B, T, rp))
TIMED(moe_bucket, DS_PROF_OP_MOE_BUCKET,
      (int32_t *off, int32_t *order, int32_t *where, const int32_t *idx, int n, int K, int E),
      (off, order, where, idx, n, K, E))
TIMED(moe_gather, DS_PROF_OP_MOE_GATHER, (float *dst, const float *src, const int32_t *order, int m, int K, int d),
      (dst, src, order, m, K, d))
TIMED(moe_gather_bwd, DS_PROF_OP_MOE_GATHER_BWD,
      (float *dsrc, const float *ddst, const int32_t *where, int n, int K, int d), (dsrc, ddst, where, n, K, d))
TIMED(moe_combine, DS_PROF_OP_MOE_COMBINE,
      (float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d), (y, ye, w, where, n, K, d))
TIMED(moe_scale_rows, DS_PROF_OP_MOE_SCALE_ROWS, (float *x, const float *w, const int32_t *order, int m, int d),
      (x, w, order, m, d))
TIMED(moe_combine_bwd, DS_PROF_OP_MOE_COMBINE_BWD,
      (float *dact, float *dw, const float *z, const float *act, const float *w, const int32_t *order, int m, int I),
      (dact, dw, z, act, w, order, m, I))
TIMED(mla_kv_expand, DS_PROF_OP_MLA_KV_EXPAND,
      (float *k, float *v, const float *kvb, const float *kpe, int ld_kpe, int n, int H, int dn, int dr, int dv),
      (k, v, kvb, kpe, ld_kpe, n, H, dn, dr, dv))
TIMED(mla_kv_expand_bwd, DS_PROF_OP_MLA_KV_EXPAND_BWD,
      (float *dkvb, float *dkpe, int ld_dkpe, const float *dk, const float *dv, int n, int H, int dn, int dr,
       int dv_dim),
      (dkvb, dkpe, ld_dkpe, dk, dv, n, H, dn, dr, dv_dim))

static void p_moe_ffn_fwd(int ne, const int64_t *off, int D, int I, const float *x, const float *Wg, const float *Wu,
                          const float *Wd, size_t stride, float *g, float *u, float *act, float *y) {
    stamp t0 = op_begin();
    g_base.moe_ffn_fwd(ne, off, D, I, x, Wg, Wu, Wd, stride, g, u, act, y);
    op_end(DS_PROF_OP_MOE_FFN_FWD, t0, &g_base, 6.0 * (double)(off[ne] - off[0]) * D * I);
}

static void p_moe_ffn_bwd(int ne, const int64_t *off, int D, int I, const float *x, const float *dy, const float *w,
                          const int32_t *order, const float *Wg, const float *Wu, const float *Wd, size_t stride,
                          const float *g, const float *u, float *act, float *dg, float *du, float *dw, float *dx,
                          float *gWg, float *gWu, float *gWd) {
    stamp t0 = op_begin();
    g_base.moe_ffn_bwd(ne, off, D, I, x, dy, w, order, Wg, Wu, Wd, stride, g, u, act, dg, du, dw, dx, gWg, gWu, gWd);
    /* dy W_down and the two products into dx; each weight gradient passed is one more */
    int products = 3 + !!gWg + !!gWu + !!gWd;
    op_end(DS_PROF_OP_MOE_FFN_BWD, t0, &g_base, 2.0 * products * (double)(off[ne] - off[0]) * D * I);
}

const ds_ops *ds_prof_ops(const ds_ops *base) {
    g_base = *base;
    g_sync = !ds_ops_on_host(base);
    g_tab = *base; /* name, memory management, sync, status, workspace sizes, decode: the base's */
    g_tab.gemm = p_gemm, g_tab.gemm_rows = p_gemm_rows, g_tab.gemm_wgrad = p_gemm_wgrad;
    g_tab.copy = p_copy, g_tab.zero = p_zero, g_tab.add = p_add, g_tab.axpy = p_axpy, g_tab.scale = p_scale;
    g_tab.copy2d = p_copy2d, g_tab.rmsnorm_fwd = p_rmsnorm_fwd, g_tab.rmsnorm_bwd = p_rmsnorm_bwd;
    g_tab.rope_table = p_rope_table, g_tab.rope = p_rope, g_tab.attn_fwd = p_attn_fwd, g_tab.attn_bwd = p_attn_bwd;
    g_tab.swiglu_fwd = p_swiglu_fwd, g_tab.swiglu_bwd = p_swiglu_bwd;
    g_tab.embed_fwd = p_embed_fwd, g_tab.embed_bwd = p_embed_bwd;
    g_tab.logsoftmax_fwd = p_logsoftmax_fwd, g_tab.logsoftmax_bwd = p_logsoftmax_bwd;
    g_tab.router_scores = p_router_scores, g_tab.moe_topk = p_moe_topk, g_tab.moe_topk_bwd = p_moe_topk_bwd;
    g_tab.moe_balance = p_moe_balance, g_tab.moe_bucket = p_moe_bucket, g_tab.moe_gather = p_moe_gather;
    g_tab.moe_gather_bwd = p_moe_gather_bwd, g_tab.moe_combine = p_moe_combine;
    g_tab.moe_scale_rows = p_moe_scale_rows, g_tab.moe_combine_bwd = p_moe_combine_bwd;
    g_tab.mla_kv_expand = p_mla_kv_expand, g_tab.mla_kv_expand_bwd = p_mla_kv_expand_bwd;
    g_tab.moe_ffn_fwd = base->moe_ffn_fwd ? p_moe_ffn_fwd : NULL;
    g_tab.moe_ffn_bwd = base->moe_ffn_bwd ? p_moe_ffn_bwd : NULL;
    p_set_dev(&g_tab);
    return &g_tab;
}

/* a Linear table: base's, its GEMMs timed through the wrappers `pre` (their base b, the table t) */
#define WRAP_LINEAR(pre, b, t, base)                                                                              \
    (b = *(base), t = *(base), t.gemm = pre##gemm, t.gemm_rows = pre##gemm_rows, t.gemm_wgrad = pre##gemm_wgrad, \
     pre##set_dev(&t), (const ds_ops *)&t)

const ds_ops *ds_prof_linear_ops(const ds_ops *base) { return WRAP_LINEAR(l_, g_lin_base, g_lin_tab, base); }
const ds_ops *ds_prof_linear_ops2(const ds_ops *base) { return WRAP_LINEAR(l2_, g_lin2_base, g_lin2_tab, base); }

/* ---- names -------------------------------------------------------------------------------------------- */

static const char *const region_names[DS_PROF_NREGION] = {
    "other", "data", "embedding", "attention", "dense FFN", "MoE (norm, residual)", "MoE router",
    "shared experts", "routed experts", "head", "MTP projection", "loss", "optimizer"};

static const char *const region_keys[DS_PROF_NREGION] = {
    "other", "data", "embed", "attn", "dense", "moe", "router", "shared", "experts", "head", "mtp", "loss", "optim"};

static const char *const gemm_classes[DS_PROF_NREGION] = {
    [DS_PROF_ATTN] = "attention projections", [DS_PROF_DENSE] = "dense FFN", [DS_PROF_ROUTER] = "router",
    [DS_PROF_SHARED] = "shared experts", [DS_PROF_EXPERTS] = "routed experts (gate/up/down)",
    [DS_PROF_HEAD] = "head", [DS_PROF_MTP] = "MTP eh_proj"};

static const char *const op_names[DS_PROF_NOP] = {
    "gemm", "gemm_rows", "gemm_wgrad", "copy", "zero", "add", "axpy", "scale", "copy2d", "rmsnorm_fwd",
    "rmsnorm_bwd", "rope_table", "rope", "attn_fwd", "attn_bwd", "swiglu_fwd", "swiglu_bwd", "embed_fwd",
    "embed_bwd", "logsoftmax_fwd", "logsoftmax_bwd", "router_scores", "moe_topk", "moe_topk_bwd",
    "moe_balance", "moe_bucket", "moe_gather", "moe_gather_bwd", "moe_combine", "moe_scale_rows",
    "moe_combine_bwd", "mla_kv_expand", "mla_kv_expand_bwd", "moe_ffn_fwd", "moe_ffn_bwd"};

const char *ds_prof_region_name(ds_prof_region r) { return r >= 0 && r < DS_PROF_NREGION ? region_names[r] : "?"; }
const char *ds_prof_region_key(ds_prof_region r) { return r >= 0 && r < DS_PROF_NREGION ? region_keys[r] : "?"; }
const char *ds_prof_gemm_class(ds_prof_region r) { return r >= 0 && r < DS_PROF_NREGION ? gemm_classes[r] : NULL; }
const char *ds_prof_op_name(ds_prof_op k) { return k >= 0 && k < DS_PROF_NOP ? op_names[k] : "?"; }
