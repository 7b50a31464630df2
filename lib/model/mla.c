/* Multi-head Latent Attention (spec 3): query/latent projections, key/value expansion, causal attention,
 * and the hand-written backward. With recompute, the normalised latents and the up-projection outputs
 * (q, k, v) are recomputed from the saved down-projection outputs (cq, kva) in the backward (spec 3.4). */
#include "model/internal.h"

#include "fp8/e5m6.h"

void ds_linear(const ds_ops *ops, float *y, const float *x, const float *W, int n, int out, int in) {
    ops->gemm(0, 1, n, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
}

void ds_linear_bwd(ds_model *m, const ds_ops *ops, float *dx, float beta, float *dW, const float *dy, const float *x,
                   const float *W, int n, int out, int in) {
    if (dW) ds_wgrad_gemm(m, ops, 1, 0, out, in, n, dy, out, x, in, dW, in);
    if (dx) ops->gemm(0, 0, n, in, out, 1.0f, dy, out, W, in, beta, dx, in);
}

void ds_mla_query(const ds_layer_ctx *c, const ds_layer_w *w, const float *xn, float *cq, float *rstd_q,
                  float *cqn, float *q) {
    const ds_ops *ops = c->ops, *lin = ds_ctx_lin(c);
    const ds_dims *d = c->d;
    int n = c->n, qdim = d->H * d->dqk;
    if (d->Rq > 0) {
        ds_linear(lin, cq, xn, w->q_a, n, d->Rq, d->D);
        ops->rmsnorm_fwd(cqn, d->Rq, rstd_q, cq, d->Rq, w->q_a_norm, n, d->Rq, d->eps);
        ds_linear(lin, q, cqn, w->q_b, n, qdim, d->Rq);
    } else {
        ds_linear(lin, q, xn, w->q, n, qdim, d->D);
    }
    ops->rope(q, n, d->H, qdim, d->dqk, d->dn, d->dr / 2, d->rope_interleave, c->cs, 0);
}

void ds_mla_latent(const ds_layer_ctx *c, const ds_layer_w *w, const float *xn, float *kva, float *rstd_kv,
                   float *ckv, float *kpe) {
    const ds_ops *ops = c->ops;
    const ds_dims *d = c->d;
    int n = c->n, la = d->Rkv + d->dr;
    ds_linear(ds_ctx_lin(c), kva, xn, w->kv_a, n, la, d->D);
    ops->rmsnorm_fwd(ckv, d->Rkv, rstd_kv, kva, la, w->kv_a_norm, n, d->Rkv, d->eps);
    ops->copy2d(kpe, d->dr, kva + d->Rkv, la, n, d->dr);
    ops->rope(kpe, n, 1, d->dr, 0, 0, d->dr / 2, d->rope_interleave, c->cs, 0);
}

void ds_mla_expand(const ds_layer_ctx *c, const ds_layer_w *w, const float *ckv, const float *kpe, float *kvb,
                   float *k, float *v) {
    const ds_dims *d = c->d;
    ds_linear(ds_ctx_lin_kvb(c), kvb, ckv, w->kv_b, c->n, d->H * (d->dn + d->dv), d->Rkv);
    c->ops->mla_kv_expand(k, v, kvb, kpe, d->dr, c->n, d->H, d->dn, d->dr, d->dv);
}

void ds_mla_project(const ds_layer_ctx *c, const ds_layer_w *w, ds_tape *t) {
    ds_mla_query(c, w, t->xn, t->cq, t->rstd_q, t->cqn, t->q);
    ds_mla_latent(c, w, t->xn, t->kva, t->rstd_kv, t->ckv, t->kpe);
    ds_mla_expand(c, w, t->ckv, t->kpe, t->kvb, t->k, t->v);
}

void ds_mla_fwd(ds_model *m, int l, ds_tape *t, float *y) {
    ds_layer_ctx c = ds_model_ctx(m);
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    ds_mla_project(&c, w, t);
    m->ops->attn_fwd(t->o, t->lse, t->q, t->k, t->v, c.seg, c.B, c.T, d->H, d->dqk, d->dv, c.softmax_scale,
                     c.attn_ws);
    if (m->attn_e5m6) { /* the tape keeps E5M6 (fp8/e5m6.h); o_proj reads what it keeps */
        ds_e5m6_quantize(t->o_q, t->o_s, t->o, c.n, (int64_t)d->H * d->dv);
        ds_e5m6_dequantize(t->o, t->o_q, t->o_s, c.n, (int64_t)d->H * d->dv);
    }
    ds_linear(ds_o_proj_ops(m), y, t->o, w->o, c.n, d->D, d->H * d->dv);
}

void ds_mla_bwd(ds_model *m, int l, ds_tape *t, const float *dy, float *dxn) {
    ds_layer_ctx c = ds_model_ctx(m);
    const ds_ops *ops = m->ops, *lin = m->lin;
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    ds_layer_w *gw = &m->G.layer[l];
    ds_scratch *s = &m->scr;
    int n = c.n, H = d->H, qdim = H * d->dqk, la = d->Rkv + d->dr, half = d->dr / 2;
    if (m->opts.recompute) {
        int rp = ds_prof_recompute(1);
        ds_mla_project(&c, w, t);
        ds_prof_recompute(rp);
    }

    /* o_proj's Wgrad (its 128x1 tiles requantized from these 1x128 ones) and attention's backward read
     * the E5M6 attention output */
    if (m->attn_e5m6) ds_e5m6_dequantize(t->o, t->o_q, t->o_s, n, (int64_t)H * d->dv);
    ds_linear_bwd(m, ds_o_proj_ops(m), s->dout_attn, 0.0f, gw->o, dy, t->o, w->o, n, d->D, H * d->dv);
    ops->attn_bwd(s->dq, s->dk, s->dv, s->dout_attn, t->q, t->k, t->v, t->o, t->lse, c.seg, c.B, c.T, H, d->dqk,
                  d->dv, c.softmax_scale, c.attn_ws);

    /* keys and values back to the latent: kvb, the shared k_pe (summed over heads), then kv_a's output */
    ops->mla_kv_expand_bwd(s->dkvb, s->dkpe, d->dr, s->dk, s->dv, n, H, d->dn, d->dr, d->dv);
    ops->rope(s->dkpe, n, 1, d->dr, 0, 0, half, d->rope_interleave, c.cs, 1);
    ds_linear_bwd(m, m->lin_kvb, s->dckv, 0.0f, gw->kv_b, s->dkvb, t->ckv, w->kv_b, n, H * (d->dn + d->dv), d->Rkv);
    ops->zero(s->dkva, sizeof(float) * (size_t)n * la);
    ops->rmsnorm_bwd(s->dkva, la, gw->kv_a_norm, s->dckv, d->Rkv, t->kva, la, w->kv_a_norm, t->rstd_kv, n, d->Rkv);
    ops->copy2d(s->dkva + d->Rkv, la, s->dkpe, d->dr, n, d->dr);
    ds_linear_bwd(m, lin, dxn, 0.0f, gw->kv_a, s->dkva, t->xn, w->kv_a, n, la, d->D);

    /* queries */
    ops->rope(s->dq, n, H, qdim, d->dqk, d->dn, half, d->rope_interleave, c.cs, 1);
    if (d->Rq > 0) {
        ds_linear_bwd(m, lin, s->dcqn, 0.0f, gw->q_b, s->dq, t->cqn, w->q_b, n, qdim, d->Rq);
        ops->zero(s->dcq, sizeof(float) * (size_t)n * d->Rq);
        ops->rmsnorm_bwd(s->dcq, d->Rq, gw->q_a_norm, s->dcqn, d->Rq, t->cq, d->Rq, w->q_a_norm, t->rstd_q, n, d->Rq);
        ds_linear_bwd(m, lin, dxn, 1.0f, gw->q_a, s->dcq, t->xn, w->q_a, n, d->Rq, d->D);
    } else {
        ds_linear_bwd(m, lin, dxn, 1.0f, gw->q, s->dq, t->xn, w->q, n, qdim, d->D);
    }
}
