/* One decoder layer (pre-norm MLA + FFN, spec 2) and the layout of every activation buffer of the
 * network in one backend block. The layout runs twice: on a counting allocator for the memory plan and the
 * block size, then on the block. */
#include "model/internal.h"
#include "model/moe_fp8.h"

#include "core/err.h"
#include "fp8/e5m6.h"

void *ds_bump_take(ds_bump *b, size_t bytes) {
    size_t start = (b->used + 63) & ~(size_t)63;
    b->used = start + bytes;
    if (!b->base || b->used > b->cap) return NULL;
    return b->base + start;
}

#define TAKE(type, count) DS_TAKE(b, type, count)

static int imax(int a, int b) { return a > b ? a : b; }

/* buffers the MLA up-projections and the norms produce: per layer, or shared scratch under recompute */
static void take_recomputable(ds_bump *b, const ds_dims *d, int n, float **xn, float **cqn, float **q, float **ckv,
                              float **kpe, float **kvb, float **k, float **v, float **hn) {
    *xn = TAKE(float, (size_t)n * d->D);
    *cqn = d->Rq > 0 ? TAKE(float, (size_t)n * d->Rq) : NULL;
    *q = TAKE(float, (size_t)n * d->H * d->dqk);
    *ckv = TAKE(float, (size_t)n * d->Rkv);
    *kpe = TAKE(float, (size_t)n * d->dr);
    *kvb = TAKE(float, (size_t)n * d->H * (d->dn + d->dv));
    *k = TAKE(float, (size_t)n * d->H * d->dqk);
    *v = TAKE(float, (size_t)n * d->H * d->dv);
    *hn = TAKE(float, (size_t)n * d->D);
}

static void take_tape(ds_bump *b, const ds_model *m, ds_tape *t, int n, int dense, int moe, const ds_scratch *s) {
    const ds_dims *d = &m->dims;
    size_t nK = (size_t)n * d->K, rK = nK * (size_t)m->ep_n; /* expert rows: a token from each EP rank */
    t->rstd_attn = TAKE(float, n);
    t->cq = d->Rq > 0 ? TAKE(float, (size_t)n * d->Rq) : NULL;
    t->rstd_q = d->Rq > 0 ? TAKE(float, n) : NULL;
    t->kva = TAKE(float, (size_t)n * (d->Rkv + d->dr));
    t->rstd_kv = TAKE(float, n);
    if (m->attn_e5m6) { /* 12-bit codes and a scale byte per 128 (fp8/e5m6.h); the floats in shared scratch */
        t->o = m->scr.o;
        t->o_q = TAKE(uint8_t, (size_t)n * ds_e5m6_row_bytes((int64_t)d->H * d->dv));
        t->o_s = TAKE(uint8_t, ds_e5m6_scale_bytes(n, (int64_t)d->H * d->dv));
    } else {
        t->o = TAKE(float, (size_t)n * d->H * d->dv);
    }
    t->lse = TAKE(float, (size_t)n * d->H);
    t->h = TAKE(float, (size_t)n * d->D);
    t->rstd_ffn = TAKE(float, n);
    if (dense) {
        t->g = TAKE(float, (size_t)n * d->I);
        t->u = TAKE(float, (size_t)n * d->I);
    }
    if (moe) {
        t->scores = TAKE(float, (size_t)n * d->E);
        t->w = TAKE(float, nK);
        t->idx = TAKE(int32_t, nK);
        t->order = TAKE(int32_t, rK);
        t->where = TAKE(int32_t, rK);
        t->off = TAKE(int32_t, d->E + 1);
        if (m->opts.train && m->opts.moe_cache_fp8) {
            ds_moe_fp8_take(b, m, t, n);
        } else {
            t->ge = TAKE(float, rK * d->Ie);
            t->ue = TAKE(float, rK * d->Ie);
            if (d->Is > 0) {
                t->gs = TAKE(float, (size_t)n * d->Is);
                t->us = TAKE(float, (size_t)n * d->Is);
            }
        }
    }
    if (s) { /* recompute: the recomputable values live in scratch */
        t->xn = s->xn, t->cqn = s->cqn, t->q = s->q, t->ckv = s->ckv, t->kpe = s->kpe;
        t->kvb = s->kvb, t->k = s->k, t->v = s->v, t->hn = s->hn;
    } else {
        take_recomputable(b, d, n, &t->xn, &t->cqn, &t->q, &t->ckv, &t->kpe, &t->kvb, &t->k, &t->v, &t->hn);
    }
}

void ds_act_layout(ds_model *m, ds_bump *b, int n) {
    const ds_dims *d = &m->dims;
    int train = m->opts.train, rc = train && m->opts.recompute;
    int L = m->cfg.num_hidden_layers, NL = m->n_layers_total, Dm = NL - L, D = d->D;
    size_t nD = (size_t)n * D, nK = (size_t)n * d->K;
    size_t rK = nK * (size_t)m->ep_n; /* rows the experts see: with expert parallelism, from every EP rank */
    int inter = imax(d->I, d->Is);
    ds_scratch *s = &m->scr;

    /* the batch */
    m->tok = TAKE(int32_t, n);
    m->tgt = TAKE(int32_t, n);
    m->pos = TAKE(int32_t, n);
    m->seg = TAKE(int32_t, n);
    m->keep = TAKE(int32_t, n);
    m->cs = TAKE(float, (size_t)n * d->dr);
    m->inv_freq_d = TAKE(float, d->dr / 2);
    m->bal_rows_d = TAKE(float, (size_t)(m->n_moe > 0 ? m->n_moe : 1) * m->opts.max_batch); /* per MoE layer */
    m->load_off_d = TAKE(int32_t, (size_t)m->n_moe * (d->E + 1));

    /* residual stream: every layer's input when training, two alternating rows of buffers otherwise */
    m->xs = TAKE(float, (train ? (size_t)(L + 1) : 2) * nD);
    m->gx = train ? TAKE(float, nD) : NULL;
    m->ghf = train ? TAKE(float, nD) : NULL;
    m->hf = TAKE(float, nD);
    m->rstd_f = TAKE(float, n);
    m->logp = TAKE(float, n);
    m->lse = TAKE(float, n);
    m->ent = m->opts.want_entropy ? TAKE(float, n) : NULL;
    m->logits = m->opts.keep_logits ? TAKE(float, (size_t)n * d->V) : NULL;
    m->mtp_logp = Dm > 0 ? TAKE(float, (size_t)Dm * n) : NULL;
    for (int j = 0; j < Dm; j++) {
        struct mtp_act *a = &m->mtp[j];
        a->e = TAKE(float, nD);
        a->en = TAKE(float, nD);
        a->hn = TAKE(float, nD);
        a->hp = TAKE(float, nD);
        a->hk = TAKE(float, nD);
        a->hkn = TAKE(float, nD);
        a->gh = train ? TAKE(float, nD) : NULL;
        a->rstd_e = TAKE(float, n);
        a->rstd_h = TAKE(float, n);
        a->rstd_k = TAKE(float, n);
        a->lse = TAKE(float, n);
        a->logp_c = TAKE(float, n);
        a->dlogp_c = train ? TAKE(float, n) : NULL;
        a->cs = TAKE(float, (size_t)n * d->dr);
        a->tok = TAKE(int32_t, n);
        a->tgt = TAKE(int32_t, n);
        a->seg = TAKE(int32_t, n);
        a->pos = TAKE(int32_t, n);
        a->keep = TAKE(int32_t, n);
    }

    /* scratch */
    if (rc)
        take_recomputable(b, d, n, &s->xn, &s->cqn, &s->q, &s->ckv, &s->kpe, &s->kvb, &s->k, &s->v, &s->hn);
    s->tmpD = TAKE(float, nD);
    s->o = m->attn_e5m6 ? TAKE(float, (size_t)n * d->H * d->dv) : NULL;
    s->act = TAKE(float, (size_t)n * inter);
    s->logits = d->E > 0 ? TAKE(float, (size_t)n * d->E) : NULL;
    s->xg = TAKE(float, rK * D);
    s->ye = TAKE(float, rK * D);
    s->acte = TAKE(float, rK * d->Ie);
    if (train) {
        s->dxn = TAKE(float, nD);
        s->dout_attn = TAKE(float, (size_t)n * d->H * d->dv);
        s->dq = TAKE(float, (size_t)n * d->H * d->dqk);
        s->dk = TAKE(float, (size_t)n * d->H * d->dqk);
        s->dv = TAKE(float, (size_t)n * d->H * d->dv);
        s->dkvb = TAKE(float, (size_t)n * d->H * (d->dn + d->dv));
        s->dkpe = TAKE(float, (size_t)n * d->dr);
        s->dckv = TAKE(float, (size_t)n * d->Rkv);
        s->dkva = TAKE(float, (size_t)n * (d->Rkv + d->dr));
        s->dcqn = TAKE(float, (size_t)n * d->Rq);
        s->dcq = TAKE(float, (size_t)n * d->Rq);
        s->dg = TAKE(float, (size_t)n * inter);
        s->du = TAKE(float, (size_t)n * inter);
        s->dyg = TAKE(float, rK * D);
        s->dxg = TAKE(float, rK * D);
        s->dge = TAKE(float, rK * d->Ie);
        s->due = TAKE(float, rK * d->Ie);
        s->dw = TAKE(float, nK);
        ds_moe_fp8_take_scratch(b, m, n);
    }
    s->head_rows = (int)((size_t)(4u << 20) / (size_t)(d->V > 0 ? d->V : 1));
    if (s->head_rows < 16) s->head_rows = 16;
    if (s->head_rows > n) s->head_rows = n;
    s->head = TAKE(float, (size_t)s->head_rows * d->V);
    s->attn_ws = ds_bump_take(b, m->ops->attn_ws_bytes(m->opts.max_batch, m->opts.max_seq, d->H, d->dqk, d->dv));

    /* tapes: one per layer when training; otherwise one record every layer reuses */
    for (int l = 0; l < NL; l++) {
        ds_tape *t = &m->tape[l];
        if (!train && l > 0) {
            *t = m->tape[0];
            continue;
        }
        int moe = m->moe_slot[l] >= 0;
        take_tape(b, m, t, n, train ? !moe : 1, train ? moe : m->n_moe > 0, rc ? s : NULL);
    }
}

int ds_layer_fwd(ds_model *m, int l, const float *x, float *out) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    ds_tape *t = &m->tape[l];
    float *y = m->scr.tmpD;
    size_t nD = (size_t)m->n * d->D;
    int pr = ds_prof_enter(DS_PROF_ATTN);
    ops->rmsnorm_fwd(t->xn, d->D, t->rstd_attn, x, d->D, w->attn_norm, m->n, d->D, d->eps);
    ds_mla_fwd(m, l, t, y);
    ops->add(t->h, x, y, nD);
    ds_prof_leave(pr);
    pr = ds_prof_enter(m->moe_slot[l] >= 0 ? DS_PROF_MOE : DS_PROF_DENSE);
    ops->rmsnorm_fwd(t->hn, d->D, t->rstd_ffn, t->h, d->D, w->ffn_norm, m->n, d->D, d->eps);
    int rc = ds_ffn_fwd(m, l, t, y);
    if (!rc) ops->add(out, t->h, y, nD);
    ds_prof_leave(pr);
    return rc;
}

/* gx holds d(loss)/d(out) on entry and d(loss)/d(x) on return */
void ds_layer_bwd(ds_model *m, int l, const float *x, float *gx) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    const ds_layer_w *w = &m->W.layer[l];
    ds_layer_w *gw = &m->G.layer[l];
    ds_tape *t = &m->tape[l];
    float *dn = m->scr.dxn;
    int n = m->n, rc = m->opts.recompute;
    int pr = ds_prof_enter(m->moe_slot[l] >= 0 ? DS_PROF_MOE : DS_PROF_DENSE);
    if (rc) ops->rmsnorm_fwd(t->hn, d->D, NULL, t->h, d->D, w->ffn_norm, n, d->D, d->eps);
    ds_ffn_bwd(m, l, t, gx, dn);
    ops->rmsnorm_bwd(gx, d->D, gw->ffn_norm, dn, d->D, t->h, d->D, w->ffn_norm, t->rstd_ffn, n, d->D);
    ds_prof_leave(pr);
    pr = ds_prof_enter(DS_PROF_ATTN);
    if (rc) ops->rmsnorm_fwd(t->xn, d->D, NULL, x, d->D, w->attn_norm, n, d->D, d->eps);
    ds_mla_bwd(m, l, t, gx, dn);
    ops->rmsnorm_bwd(gx, d->D, gw->attn_norm, dn, d->D, x, d->D, w->attn_norm, t->rstd_attn, n, d->D);
    ds_prof_leave(pr);
}
