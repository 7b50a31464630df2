/* The FFN half of a decoder layer: dense SwiGLU (first_k_dense_replace layers, and the shared experts),
 * and DeepSeekMoE (spec 4): route, dispatch, experts, combine, and the backward of each.
 *
 * Expert parallelism plugs in at the dispatch/combine boundary: moe_dispatch() turns token rows into
 * expert-ordered rows (here a local counting sort and gather; with EP, plus the all-to-all), the experts
 * run grouped GEMMs over their rows, and moe_combine() brings the weighted results back to the tokens. */
#include "model/internal.h"

#include <string.h>

/* f = W_down (silu(W_gate hn) ⊙ W_up hn); g, u kept for the backward; act is scratch */
static void swiglu_mlp_fwd(const ds_ops *ops, const float *Wg, const float *Wu, const float *Wd, int n, int D,
                           int inter, const float *hn, float *g, float *u, float *act, float *f) {
    ds_linear(ops, g, hn, Wg, n, inter, D);
    ds_linear(ops, u, hn, Wu, n, inter, D);
    ops->swiglu_fwd(act, g, u, (size_t)n * inter);
    ds_linear(ops, f, act, Wd, n, D, inter);
}

/* gradients of swiglu_mlp_fwd; dhn = beta * dhn + d(f)/d(hn) · df */
static void swiglu_mlp_bwd(const ds_ops *ops, const float *Wg, const float *Wu, const float *Wd, float *gWg,
                           float *gWu, float *gWd, int n, int D, int inter, const float *hn, const float *g,
                           const float *u, const float *df, float *dhn, float beta, ds_scratch *s) {
    ops->swiglu_fwd(s->act, g, u, (size_t)n * inter);
    ds_linear_bwd(ops, s->dg, 0.0f, gWd, df, s->act, Wd, n, D, inter); /* s->dg holds d(act) for a moment */
    ops->swiglu_bwd(s->dg, s->du, s->dg, g, u, (size_t)n * inter);
    ds_linear_bwd(ops, dhn, beta, gWg, s->dg, hn, Wg, n, inter, D);
    ds_linear_bwd(ops, dhn, 1.0f, gWu, s->du, hn, Wu, n, inter, D);
}

void ds_moe_route(const ds_layer_ctx *c, const ds_layer_w *w, const float *bias, const float *hn, float *logits,
                  float *scores, int32_t *idx, float *wts) {
    const ds_dims *d = c->d;
    ds_linear(c->ops, logits, hn, w->router, c->n, d->E, d->D);
    c->ops->router_scores(scores, logits, c->n, d->E, d->route.score_fn);
    c->ops->moe_topk(idx, wts, scores, bias, c->n, &d->route);
}

/* Sort the n*K assignments by expert and gather the rows; the expert row counts come to the host here
 * (the synchronization point the grouped GEMMs need). */
static void moe_dispatch(ds_model *m, ds_tape *t, const float *hn, float *xg) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    int n = m->n, K = d->K, E = d->E;
    ops->moe_bucket(t->off, t->order, t->where, t->idx, n, K, E);
    ops->copy(m->h_i32, t->off, sizeof(int32_t) * (size_t)(E + 1), DS_COPY_D2H);
    ops->sync();
    for (int e = 0; e <= E; e++) t->off_h[e] = m->h_i32[e];
    ops->moe_gather(xg, hn, t->order, n * K, K, d->D);
}

static void moe_combine(ds_model *m, ds_tape *t, const float *ye, float *f) {
    m->ops->moe_combine(f, ye, t->w, t->where, m->n, m->dims.K, m->dims.D);
}

static void moe_experts_fwd(ds_model *m, int l, ds_tape *t, const float *xg, float *acte, float *ye) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    int E = d->E, D = d->D, Ie = d->Ie;
    size_t mat = (size_t)Ie * D;
    ops->gemm_rows(E, t->off_h, 1, Ie, D, 1.0f, xg, D, w->exp_gate, mat, D, 0.0f, t->ge, Ie);
    ops->gemm_rows(E, t->off_h, 1, Ie, D, 1.0f, xg, D, w->exp_up, mat, D, 0.0f, t->ue, Ie);
    ops->swiglu_fwd(acte, t->ge, t->ue, (size_t)m->n * d->K * Ie);
    ops->gemm_rows(E, t->off_h, 1, D, Ie, 1.0f, acte, Ie, w->exp_down, mat, Ie, 0.0f, ye, D);
}

int ds_ffn_fwd(ds_model *m, int l, ds_tape *t, float *f) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    ds_scratch *s = &m->scr;
    int n = m->n, slot = m->moe_slot[l];
    if (slot < 0) {
        swiglu_mlp_fwd(ops, w->w_gate, w->w_up, w->w_down, n, d->D, d->I, t->hn, t->g, t->u, s->act, f);
        return 0;
    }
    ds_layer_ctx c = ds_model_ctx(m);
    const float *bias = d->has_bias ? m->ebias + (size_t)slot * d->E : NULL;
    ds_moe_route(&c, w, bias, t->hn, s->logits, t->scores, t->idx, t->w);
    moe_dispatch(m, t, t->hn, s->xg);
    moe_experts_fwd(m, l, t, s->xg, s->acte, s->ye);
    if (d->Is > 0)
        swiglu_mlp_fwd(ops, w->sh_gate, w->sh_up, w->sh_down, n, d->D, d->Is, t->hn, t->gs, t->us, s->act, f);
    else
        ops->zero(f, sizeof(float) * (size_t)n * d->D);
    moe_combine(m, t, s->ye, f);

    int32_t *load = m->expert_load + (size_t)slot * d->E;
    for (int e = 0; e < d->E; e++) load[e] = (int32_t)(t->off_h[e + 1] - t->off_h[e]);
    if (m->opts.balance_alpha > 0) {
        ops->moe_balance(m->bal_rows_d, NULL, 0.0f, t->scores, t->idx, m->B, m->T, &d->route);
        ops->copy(m->bal_rows, m->bal_rows_d, sizeof(float) * (size_t)m->B, DS_COPY_D2H);
        ops->sync();
        double acc = 0.0;
        for (int b = 0; b < m->B; b++) acc += m->bal_rows[b];
        m->bal_loss += m->opts.balance_alpha * acc / m->B;
    }
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
        swiglu_mlp_bwd(ops, w->w_gate, w->w_up, w->w_down, gw->w_gate, gw->w_up, gw->w_down, n, D, d->I, t->hn,
                       t->g, t->u, df, dhn, 0.0f, s);
        return;
    }
    int E = d->E, K = d->K, Ie = d->Ie, rows = n * K;
    size_t mat = (size_t)Ie * D;
    /* recompute the dispatched inputs and the expert activations */
    ops->moe_gather(s->xg, t->hn, t->order, rows, K, D);
    ops->swiglu_fwd(s->acte, t->ge, t->ue, (size_t)rows * Ie);

    /* combine backward: dy per dispatched row, through W_down (z), the routing weights (dw) */
    ops->moe_gather(s->dyg, df, t->order, rows, K, D);
    ops->gemm_rows(E, t->off_h, 0, Ie, D, 1.0f, s->dyg, D, w->exp_down, mat, Ie, 0.0f, s->dge, Ie);
    ops->moe_combine_bwd(s->dge, s->dw, s->dge, s->acte, t->w, t->order, rows, Ie);
    ops->moe_scale_rows(s->acte, t->w, t->order, rows, Ie);
    ops->gemm_wgrad(E, t->off_h, D, Ie, 1.0f, s->dyg, D, s->acte, Ie, 1.0f, gw->exp_down, mat, Ie);

    /* experts' gate/up backward */
    ops->swiglu_bwd(s->dge, s->due, s->dge, t->ge, t->ue, (size_t)rows * Ie);
    ops->gemm_wgrad(E, t->off_h, Ie, D, 1.0f, s->dge, Ie, s->xg, D, 1.0f, gw->exp_gate, mat, D);
    ops->gemm_wgrad(E, t->off_h, Ie, D, 1.0f, s->due, Ie, s->xg, D, 1.0f, gw->exp_up, mat, D);
    ops->gemm_rows(E, t->off_h, 0, D, Ie, 1.0f, s->dge, Ie, w->exp_gate, mat, D, 0.0f, s->dxg, D);
    ops->gemm_rows(E, t->off_h, 0, D, Ie, 1.0f, s->due, Ie, w->exp_up, mat, D, 1.0f, s->dxg, D);

    /* shared experts, then the dispatch backward, into dhn */
    if (d->Is > 0)
        swiglu_mlp_bwd(ops, w->sh_gate, w->sh_up, w->sh_down, gw->sh_gate, gw->sh_up, gw->sh_down, n, D, d->Is,
                       t->hn, t->gs, t->us, df, dhn, 0.0f, s);
    else
        ops->zero(dhn, sizeof(float) * (size_t)n * D);
    ops->moe_gather_bwd(dhn, s->dxg, t->where, n, K, D);

    /* router: routing weights and the balance loss to the logits, then the gate matrix */
    ops->zero(s->logits, sizeof(float) * (size_t)n * E);
    ops->moe_topk_bwd(s->logits, s->dw, t->scores, t->idx, n, &d->route);
    if (m->opts.balance_alpha > 0)
        ops->moe_balance(m->bal_rows_d, s->logits, (float)(m->opts.balance_alpha / m->B), t->scores, t->idx, m->B,
                         m->T, &d->route);
    ds_linear_bwd(ops, dhn, 1.0f, gw->router, s->logits, t->hn, w->router, n, E, D);
}
