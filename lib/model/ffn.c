/* The FFN half of a decoder layer: dense SwiGLU (first_k_dense_replace layers, and the shared experts),
 * and DeepSeekMoE (spec 4): route, dispatch, experts, combine, and the backward of each.
 *
 * The routed experts are a function of rows (moe.h): here the rows are the tokens; expert parallelism
 * puts its dispatch before and its combine after them. Inside, rows are sorted by expert (counting sort),
 * gathered, run through grouped GEMMs, and scattered back weighted. */
#include "model/internal.h"
#include "model/moe.h"
#include "model/moe_fp8.h"

#include "core/err.h"

#include <string.h>

/* f = W_down (silu(W_gate hn) ⊙ W_up hn); g, u kept for the backward; act is scratch. The three
 * projections' GEMMs on m->lin (the Linear table), the activation on m->ops. */
static void swiglu_mlp_fwd(const ds_model *m, const float *Wg, const float *Wu, const float *Wd, int n, int D,
                           int inter, const float *hn, float *g, float *u, float *act, float *f) {
    ds_linear(m->lin, g, hn, Wg, n, inter, D);
    ds_linear(m->lin, u, hn, Wu, n, inter, D);
    m->ops->swiglu_fwd(act, g, u, (size_t)n * inter);
    ds_linear(m->lin, f, act, Wd, n, D, inter);
}

/* gradients of swiglu_mlp_fwd; dhn = beta * dhn + d(f)/d(hn) · df */
static void swiglu_mlp_bwd(ds_model *m, const float *Wg, const float *Wu, const float *Wd, float *gWg,
                           float *gWu, float *gWd, int n, int D, int inter, const float *hn, const float *g,
                           const float *u, const float *df, float *dhn, float beta, ds_scratch *s) {
    const ds_ops *ops = m->ops, *lin = m->lin;
    ops->swiglu_fwd(s->act, g, u, (size_t)n * inter);
    ds_linear_bwd(m, lin, s->dg, 0.0f, gWd, df, s->act, Wd, n, D, inter); /* s->dg holds d(act) for a moment */
    ops->swiglu_bwd(s->dg, s->du, s->dg, g, u, (size_t)n * inter);
    ds_linear_bwd(m, lin, dhn, beta, gWg, s->dg, hn, Wg, n, inter, D);
    ds_linear_bwd(m, lin, dhn, 1.0f, gWu, s->du, hn, Wu, n, inter, D);
}

void ds_moe_route(const ds_layer_ctx *c, const ds_layer_w *w, const float *bias, const float *hn, float *logits,
                  float *scores, int32_t *idx, float *wts) {
    const ds_dims *d = c->d;
    ds_linear(c->ops, logits, hn, w->router, c->n, d->E, d->D);
    c->ops->router_scores(scores, logits, c->n, d->E, d->route.score_fn);
    c->ops->moe_topk(idx, wts, scores, bias, c->keep, c->n, &d->route);
}

/* The routed experts' offsets stay on the device: the Linear table has grouped GEMMs that read them there
 * (ds_ops.gemm_rows_dev) and the rows are the tokens themselves (expert parallelism counts its exchanges on
 * the host anyway). Then nothing in a MoE layer waits for the device: the expert-row count is bounded by
 * rows*K (the sorted order's tail holds the slots left out, valid indices whose rows no GEMM reads or
 * writes and no later op uses), and the loads and balance terms are read once after the forward
 * (ds_moe_stats_sync). */
static int dev_offsets(const ds_model *m) {
    return m->ep_n <= 1 && m->lin->gemm_rows_dev && m->lin->gemm_wgrad_dev;
}

/* expert rows' GEMM (ops.h gemm_rows) on table lin (m->lin, or m->lin_xe for the operands the dispatch
 * delivered) through the device offsets or the host ones */
static void expert_rows(const ds_model *m, const ds_ops *lin, const ds_tape *t, int dev, int mv, int ne, int tb, int N, int K,
                        const float *A, int lda, const float *B, size_t strideB, int ldb, float beta, float *C,
                        int ldc) {
    if (dev) lin->gemm_rows_dev(ne, t->off, mv, tb, N, K, 1.0f, A, lda, B, strideB, ldb, beta, C, ldc);
    else lin->gemm_rows(ne, t->off_h, tb, N, K, 1.0f, A, lda, B, strideB, ldb, beta, C, ldc);
}

static void expert_wgrad(ds_model *m, const ds_ops *lin, const ds_tape *t, int dev, int mv, int ne, int M, int N, const float *A,
                         int lda, const float *B, int ldb, float *C, size_t strideC, int ldc) {
    if (dev) ds_wgrad_grouped_dev(m, lin, ne, t->off, mv, M, N, A, lda, B, ldb, C, strideC, ldc);
    else ds_wgrad_grouped(m, lin, ne, t->off_h, M, N, A, lda, B, ldb, C, strideC, ldc);
}

enum { STAT_LOADS = 1, STAT_BALANCE = 2 }; /* load_pending bits */

/* MoE layer `slot`'s balance terms (bal_rows[slot]) into the model's balance loss */
static void add_balance(ds_model *m, int slot) {
    const float *r = m->bal_rows + (size_t)slot * m->opts.max_batch;
    double acc = 0.0;
    for (int b = 0; b < m->B; b++) acc += r[b];
    m->bal_loss += m->opts.balance_alpha * acc / m->B;
}

void ds_moe_stats_sync(ds_model *m) {
    int E = m->dims.E, any = 0;
    for (int s = 0; s < m->n_moe; s++) any |= m->load_pending[s];
    if (!any) return;
    size_t per = (size_t)E + 1;
    if (any & STAT_LOADS)
        m->ops->copy(m->load_off_h, m->load_off_d, sizeof(int32_t) * per * (size_t)m->n_moe, DS_COPY_D2H);
    if (any & STAT_BALANCE)
        m->ops->copy(m->bal_rows, m->bal_rows_d, sizeof(float) * (size_t)m->opts.max_batch * m->n_moe, DS_COPY_D2H);
    m->ops->sync();
    for (int s = 0; s < m->n_moe; s++) { /* slot order is layer order: the sum runs as the host path's */
        if (m->load_pending[s] & STAT_LOADS) {
            const int32_t *o = m->load_off_h + per * (size_t)s;
            for (int e = 0; e < E; e++) m->expert_load[(size_t)s * E + e] = o[e + 1] - o[e];
        }
        if (m->load_pending[s] & STAT_BALANCE) add_balance(m, s);
        m->load_pending[s] = 0;
    }
}

int ds_moe_experts_fwd(ds_model *m, int l, int e0, int ne, const float *x, const int32_t *idx, const float *w,
                       int rows, float *y, int32_t *load) {
    const ds_ops *ops = m->ops, *lin = m->lin;
    const ds_dims *d = &m->dims;
    const ds_layer_w *lw = &m->W.layer[l];
    ds_tape *t = &m->tape[l];
    ds_scratch *s = &m->scr;
    int K = d->K, D = d->D, Ie = d->Ie;
    size_t mat = (size_t)Ie * D;
    if (rows > m->n_max * m->ep_n || e0 < 0 || ne < 0 || e0 + ne > m->ne || m->moe_slot[l] < 0)
        return ds_fail(DS_ERR, "model: experts of layer %d: %d rows, experts [%d, %d)", l, rows, e0, e0 + ne);
    /* sort the (row, slot) pairs by expert; the counts come to the host for the grouped GEMMs unless they
     * read them on the device */
    ops->moe_bucket(t->off, t->order, t->where, idx, rows, K, ne);
    int dev = dev_offsets(m), mv = rows * K;
    if (dev && load) { /* read after the forward */
        int slot = m->moe_slot[l];
        ops->copy(m->load_off_d + (size_t)slot * (ne + 1), t->off, sizeof(int32_t) * (size_t)(ne + 1), DS_COPY_D2D);
        m->load_pending[slot] |= STAT_LOADS;
    } else if (!dev) {
        ops->copy(m->h_i32, t->off, sizeof(int32_t) * (size_t)(ne + 1), DS_COPY_D2H);
        ops->sync();
        for (int e = 0; e <= ne; e++) t->off_h[e] = m->h_i32[e];
        if (load)
            for (int e = 0; e < ne; e++) load[e] = (int32_t)(t->off_h[e + 1] - t->off_h[e]);
        mv = (int)t->off_h[ne];
    }
    ops->moe_gather(s->xg, x, t->order, mv, K, D);
    /* fp32 with a fused pass (the CPU's): the same sequence, expert by expert */
    if (!dev && lin == ops && m->lin_xe == ops && ops->moe_ffn_fwd) {
        ops->moe_ffn_fwd(ne, t->off_h, D, Ie, s->xg, lw->exp_gate + e0 * mat, lw->exp_up + e0 * mat,
                         lw->exp_down + e0 * mat, mat, t->ge, t->ue, s->acte, s->ye);
    } else {
        expert_rows(m, m->lin_xe, t, dev, mv, ne, 1, Ie, D, s->xg, D, lw->exp_gate + e0 * mat, mat, D, 0.0f, t->ge,
                    Ie);
        expert_rows(m, m->lin_xe, t, dev, mv, ne, 1, Ie, D, s->xg, D, lw->exp_up + e0 * mat, mat, D, 0.0f, t->ue,
                    Ie);
        ops->swiglu_fwd(s->acte, t->ge, t->ue, (size_t)mv * Ie);
        expert_rows(m, lin, t, dev, mv, ne, 1, D, Ie, s->acte, Ie, lw->exp_down + e0 * mat, mat, Ie, 0.0f, s->ye, D);
    }
    ds_moe_fp8_put(m, &t->ge8, t->ge, mv, Ie);
    ds_moe_fp8_put(m, &t->ue8, t->ue, mv, Ie);
    ops->moe_combine(y, s->ye, w, t->where, rows, K, D);
    return 0;
}

void ds_moe_experts_bwd(ds_model *m, int l, int e0, int ne, const float *x, const int32_t *idx, const float *w,
                        int rows, const float *dy, float *dx, float *dw) {
    const ds_ops *ops = m->ops, *lin = m->lin;
    const ds_dims *d = &m->dims;
    const ds_layer_w *lw = &m->W.layer[l];
    ds_layer_w *gw = &m->G.layer[l];
    ds_tape *t = &m->tape[l];
    ds_scratch *s = &m->scr;
    int K = d->K, D = d->D, Ie = d->Ie, dev = dev_offsets(m), mv = dev ? rows * K : (int)t->off_h[ne];
    size_t mat = (size_t)Ie * D;
    const float *Wg = lw->exp_gate + e0 * mat, *Wu = lw->exp_up + e0 * mat, *Wd = lw->exp_down + e0 * mat;
    float *gWg = gw->exp_gate + e0 * mat, *gWu = gw->exp_up + e0 * mat, *gWd = gw->exp_down + e0 * mat;
    (void)idx;
    ds_moe_fp8_get(m, &t->ge8, t->ge, mv, Ie); /* the SwiGLU inputs as the FP8 cache kept them */
    ds_moe_fp8_get(m, &t->ue8, t->ue, mv, Ie);
    /* fp32 with a fused pass (the CPU's): the sequence below, per expert */
    if (!dev && lin == ops && m->lin_xe == ops && ops->moe_ffn_bwd) {
        int now = m->wq.key < 0; /* weight gradients now, else recorded for later (wgrad.c), in the same order */
        ops->moe_gather(s->xg, x, t->order, mv, K, D);
        ops->moe_gather(s->dyg, dy, t->order, mv, K, D);
        ops->zero(dw, sizeof(float) * (size_t)rows * K);
        ops->moe_ffn_bwd(ne, t->off_h, D, Ie, s->xg, s->dyg, w, t->order, Wg, Wu, Wd, mat, t->ge, t->ue, s->acte,
                         s->dge, s->due, dw, s->dxg, now ? gWg : NULL, now ? gWu : NULL, now ? gWd : NULL);
        if (!now) {
            ds_wgrad_grouped(m, lin, ne, t->off_h, D, Ie, s->dyg, D, s->acte, Ie, gWd, mat, Ie);
            ds_wgrad_grouped(m, lin, ne, t->off_h, Ie, D, s->dge, Ie, s->xg, D, gWg, mat, D);
            ds_wgrad_grouped(m, lin, ne, t->off_h, Ie, D, s->due, Ie, s->xg, D, gWu, mat, D);
        }
        ops->moe_gather_bwd(dx, s->dxg, t->where, rows, K, D);
        return;
    }
    /* recompute the dispatched inputs and the expert activations */
    ops->moe_gather(s->xg, x, t->order, mv, K, D);
    ops->swiglu_fwd(s->acte, t->ge, t->ue, (size_t)mv * Ie);

    /* combine backward: dy per dispatched row, through W_down (z), the routing weights (dw) */
    ops->moe_gather(s->dyg, dy, t->order, mv, K, D);
    expert_rows(m, m->lin_xe, t, dev, mv, ne, 0, Ie, D, s->dyg, D, Wd, mat, Ie, 0.0f, s->dge, Ie);
    ops->zero(dw, sizeof(float) * (size_t)rows * K);
    ops->moe_combine_bwd(s->dge, dw, s->dge, s->acte, w, t->order, mv, Ie);
    ops->moe_scale_rows(s->acte, w, t->order, mv, Ie);
    expert_wgrad(m, lin, t, dev, mv, ne, D, Ie, s->dyg, D, s->acte, Ie, gWd, mat, Ie);

    /* experts' gate/up backward, then the dispatch's backward into dx */
    ops->swiglu_bwd(s->dge, s->due, s->dge, t->ge, t->ue, (size_t)mv * Ie);
    expert_wgrad(m, m->lin_xe, t, dev, mv, ne, Ie, D, s->dge, Ie, s->xg, D, gWg, mat, D);
    expert_wgrad(m, m->lin_xe, t, dev, mv, ne, Ie, D, s->due, Ie, s->xg, D, gWu, mat, D);
    expert_rows(m, lin, t, dev, mv, ne, 0, D, Ie, s->dge, Ie, Wg, mat, D, 0.0f, s->dxg, D);
    expert_rows(m, lin, t, dev, mv, ne, 0, D, Ie, s->due, Ie, Wu, mat, D, 1.0f, s->dxg, D);
    ops->moe_gather_bwd(dx, s->dxg, t->where, rows, K, D);
}

int ds_ffn_fwd(ds_model *m, int l, ds_tape *t, float *f) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    ds_scratch *s = &m->scr;
    int n = m->n, slot = m->moe_slot[l];
    if (slot < 0) {
        swiglu_mlp_fwd(m, w->w_gate, w->w_up, w->w_down, n, d->D, d->I, t->hn, t->g, t->u, s->act, f);
        return 0;
    }
    ds_layer_ctx c = ds_model_ctx(m);
    const float *bias = d->has_bias ? m->ebias + (size_t)slot * d->E : NULL;
    int pr = ds_prof_enter(DS_PROF_ROUTER);
    ds_moe_route(&c, w, bias, t->hn, s->logits, t->scores, t->idx, t->w);
    ds_prof_leave(pr);
    pr = ds_prof_enter(DS_PROF_SHARED);
    if (d->Is > 0) {
        swiglu_mlp_fwd(m, w->sh_gate, w->sh_up, w->sh_down, n, d->D, d->Is, t->hn, t->gs, t->us, s->act, f);
        ds_moe_fp8_put(m, &t->gs8, t->gs, n, d->Is);
        ds_moe_fp8_put(m, &t->us8, t->us, n, d->Is);
    } else
        ops->zero(f, sizeof(float) * (size_t)n * d->D);
    ds_prof_leave(pr);
    pr = ds_prof_enter(DS_PROF_EXPERTS);
    int rc;
    if (m->ep_n > 1) /* expert parallelism: the tokens go to the ranks holding their experts (moe_ep.c) */
        rc = ds_moe_ep_fwd(m, l, t, f);
    else /* the experts on the tokens themselves (moe.h) */
        rc = ds_moe_experts_fwd(m, l, 0, d->E, ds_moe_fp8_as_dispatched(m, t->hn, s->xq, n), t->idx, t->w, n, f,
                                m->expert_load + (size_t)slot * d->E);
    ds_prof_leave(pr);
    DS_TRY(rc);
    pr = ds_prof_enter(DS_PROF_ROUTER);
    if (m->opts.balance_alpha > 0) {
        size_t at = (size_t)slot * m->opts.max_batch;
        ops->moe_balance(m->bal_rows_d + at, NULL, 0.0f, t->scores, t->idx, m->B, m->T, &d->route);
        if (dev_offsets(m)) { /* read after the forward, with the loads */
            m->load_pending[slot] |= STAT_BALANCE;
        } else {
            ops->copy(m->bal_rows + at, m->bal_rows_d + at, sizeof(float) * (size_t)m->B, DS_COPY_D2H);
            ops->sync();
            add_balance(m, slot);
        }
    }
    ds_prof_leave(pr);
    return 0;
}

void ds_ffn_bwd(ds_model *m, int l, ds_tape *t, const float *df, float *dhn) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    ds_layer_w *gw = &m->G.layer[l];
    ds_scratch *s = &m->scr;
    int n = m->n, slot = m->moe_slot[l], D = d->D;
    if (slot < 0) {
        swiglu_mlp_bwd(m, w->w_gate, w->w_up, w->w_down, gw->w_gate, gw->w_up, gw->w_down, n, D, d->I, t->hn,
                       t->g, t->u, df, dhn, 0.0f, s);
        return;
    }
    int E = d->E;
    /* shared experts, then the routed ones, into dhn */
    int pr = ds_prof_enter(DS_PROF_SHARED);
    if (d->Is > 0) {
        ds_moe_fp8_get(m, &t->gs8, t->gs, n, d->Is);
        ds_moe_fp8_get(m, &t->us8, t->us, n, d->Is);
        swiglu_mlp_bwd(m, w->sh_gate, w->sh_up, w->sh_down, gw->sh_gate, gw->sh_up, gw->sh_down, n, D, d->Is,
                       t->hn, t->gs, t->us, df, dhn, 0.0f, s);
    } else
        ops->zero(dhn, sizeof(float) * (size_t)n * D);
    ds_prof_leave(pr);
    pr = ds_prof_enter(DS_PROF_EXPERTS);
    if (m->ep_n > 1) {
        int rc = ds_moe_ep_bwd(m, l, t, df, dhn);
        if (rc && !m->ep_rc) m->ep_rc = rc;
    } else {
        ds_moe_experts_bwd(m, l, 0, E, ds_moe_fp8_as_dispatched(m, t->hn, s->xq, n), t->idx, t->w, n,
                           ds_moe_fp8_as_dispatched(m, df, s->dyq, n), dhn, s->dw);
    }
    ds_prof_leave(pr);

    /* router: routing weights and the balance loss to the logits, then the gate matrix */
    pr = ds_prof_enter(DS_PROF_ROUTER);
    ops->zero(s->logits, sizeof(float) * (size_t)n * E);
    ops->moe_topk_bwd(s->logits, s->dw, t->scores, t->idx, n, &d->route);
    if (m->opts.balance_alpha > 0)
        ops->moe_balance(m->bal_rows_d, s->logits, (float)(m->opts.balance_alpha / m->B), t->scores, t->idx, m->B,
                         m->T, &d->route);
    ds_linear_bwd(m, ops, dhn, 1.0f, gw->router, s->logits, t->hn, w->router, n, E, D);
    ds_prof_leave(pr);
}
