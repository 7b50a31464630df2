#include "infer/forward.h"

#include "core/err.h"
#include "ops/mla_decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Scratch sized for max_tokens rows, allocated once through the op layer. */
typedef struct {
    float *x, *xn, *qa, *q, *kv, *qabs, *lat, *o;
    float *kvb, *k, *v, *lse;                   /* naive attention */
    float *g, *u, *h;                           /* dense / shared FFN and routed experts [n*K, Ie] */
    float *rlogits, *scores, *wts, *xe, *ye;    /* MoE */
    int32_t *idx, *off, *order, *where;
    float *cs, *xf, *logits, *cat;
    void *attn_ws;
    int32_t *tok, *pos;
    float *inv_freq;
} buffers;

struct ds_infer {
    ds_infer_model m;
    const ds_config *cfg;
    const ds_ops *ops;
    ds_infer_opts o;
    ds_kvcache cache;
    buffers b;
    int D, H, Dn, Dr, Dv, Dqk, Rq, Rkv, W, V, E, K, Ie, I, Is;
    float eps, rope_mscale, softmax_scale;
    ds_route_params rp;
    int32_t *off_host;
    int64_t *off64;
    int32_t *mla_table, *mla_len; /* per attention call: the slot and visible length of each sequence */
    size_t scratch_bytes;
    void *allocs[48]; /* everything balloc handed out, freed through the op layer */
    int n_allocs;
};

ds_kvcache *ds_infer_cache(ds_infer *e) { return &e->cache; }
const ds_config *ds_infer_config(const ds_infer *e) { return e->cfg; }
size_t ds_infer_scratch_bytes(const ds_infer *e) { return e->scratch_bytes; }

/* ---- RoPE / YaRN parameters (spec 3.3, 7) -------------------------------------------------------- */

static double yarn_mscale(double s, double c) { return s <= 1 || c == 0 ? 1.0 : 0.1 * c * log(s) + 1.0; }

/* inv_freq[half] with the YaRN correction, the cos/sin magnitude, and the softmax scale. */
static void rope_params(const ds_config *c, float *inv_freq, float *cs_mscale, float *softmax_scale) {
    const int dim = c->qk_rope_head_dim, half = dim / 2;
    const ds_rope_scaling *y = &c->rope_scaling;
    double scale = 1.0 / sqrt((double)ds_cfg_qk_head_dim(c)), mag = 1.0;
    for (int j = 0; j < half; j++) inv_freq[j] = (float)(1.0 / pow(c->rope_theta, (2.0 * j) / dim));
    if (y->enabled && y->factor > 1) {
        const double s = y->factor, L0 = y->original_max_position_embeddings, base = c->rope_theta;
        double lo = dim * log(L0 / (y->beta_fast * 2 * M_PI)) / (2 * log(base));
        double hi = dim * log(L0 / (y->beta_slow * 2 * M_PI)) / (2 * log(base));
        if (y->truncate) {
            lo = floor(lo);
            hi = ceil(hi);
        }
        if (lo < 0) lo = 0;
        if (hi > dim - 1) hi = dim - 1;
        if (lo == hi) hi += 0.001;
        for (int j = 0; j < half; j++) {
            double f = 1.0 / pow(base, (2.0 * j) / dim);
            double ramp = (j - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double keep = 1 - ramp; /* 1: the original frequency (high-frequency dims) */
            inv_freq[j] = (float)(f / s * (1 - keep) + f * keep);
        }
        mag = y->attention_factor > 0 ? y->attention_factor
                                      : yarn_mscale(s, y->mscale) / yarn_mscale(s, y->mscale_all_dim);
        const double m = yarn_mscale(s, y->mscale_all_dim);
        scale *= m * m;
    }
    *cs_mscale = (float)mag;
    *softmax_scale = (float)scale;
}

/* ---- creation ------------------------------------------------------------------------------------- */

static void route_params(const ds_config *c, ds_route_params *rp) {
    memset(rp, 0, sizeof *rp);
    rp->n_experts = c->n_routed_experts;
    rp->top_k = c->num_experts_per_tok;
    rp->n_group = c->n_group > 0 ? c->n_group : 1;
    rp->topk_group = c->topk_group > 0 ? c->topk_group : rp->n_group;
    if (rp->n_group <= 1 || !strcmp(c->topk_method, "greedy")) rp->group_rule = DS_GROUP_NONE;
    else if (!strcmp(c->topk_method, "group_limited_greedy")) rp->group_rule = DS_GROUP_MAX;
    else rp->group_rule = DS_GROUP_TOP2SUM;
    rp->score_fn = c->scoring_func == DS_SCORE_SOFTMAX ? DS_SCORE_FN_SOFTMAX : DS_SCORE_FN_SIGMOID;
    rp->renorm = c->norm_topk_prob;
    rp->route_scale = (float)c->routed_scaling_factor;
}

static void *balloc(ds_infer *e, size_t bytes, int *oom) {
    if (!bytes) bytes = 64;
    void *p = e->n_allocs < (int)(sizeof e->allocs / sizeof *e->allocs) ? e->ops->alloc(bytes) : NULL;
    if (!p) *oom = 1;
    else e->allocs[e->n_allocs++] = p;
    e->scratch_bytes += bytes;
    return p;
}

void ds_infer_free(ds_infer *e) {
    if (!e) return;
    for (int i = 0; i < e->n_allocs; i++) e->ops->free(e->allocs[i]);
    ds_kvcache_free(&e->cache);
    free(e->off_host);
    free(e->off64);
    free(e->mla_table);
    free(e->mla_len);
    free(e);
}

int ds_infer_create(ds_infer **out, const ds_infer_model *m, const ds_ops *ops, const ds_infer_opts *o) {
    *out = NULL;
    const ds_config *c = m->cfg;
    if (o->max_tokens <= 0) return ds_fail(DS_ERR, "inference: max_tokens %d: must be positive", o->max_tokens);
    if (o->mtp && m->mtp_depth < 1)
        return ds_fail(DS_ERR, "inference: speculative decoding asked for, but the checkpoint has no MTP module");
    if (c->qk_rope_head_dim % 2) return ds_fail(DS_ERR, "inference: qk_rope_head_dim %d: must be even", c->qk_rope_head_dim);
    ds_infer *e = calloc(1, sizeof *e);
    if (!e) return ds_fail(DS_ERR, "inference: out of memory");
    e->m = *m;
    e->cfg = c;
    e->ops = ops;
    e->o = *o;
    e->D = c->hidden_size;
    e->H = c->num_attention_heads;
    e->Dn = c->qk_nope_head_dim;
    e->Dr = c->qk_rope_head_dim;
    e->Dv = c->v_head_dim;
    e->Dqk = e->Dn + e->Dr;
    e->Rq = c->q_lora_rank;
    e->Rkv = c->kv_lora_rank;
    e->W = e->Rkv + e->Dr;
    e->V = c->vocab_size;
    e->E = c->n_routed_experts;
    e->K = c->num_experts_per_tok;
    e->Ie = c->moe_intermediate_size;
    e->I = c->intermediate_size;
    e->Is = c->n_shared_experts * c->moe_intermediate_size;
    e->eps = (float)c->rms_norm_eps;
    route_params(c, &e->rp);
    int rc = ds_kvcache_init(&e->cache, c, o->slots, o->max_len, o->mtp ? 1 : 0);
    if (rc) {
        free(e);
        return rc;
    }
    const size_t n = (size_t)o->max_tokens, f = sizeof(float), i32 = sizeof(int32_t);
    const size_t nk = n * (size_t)(e->K > 0 ? e->K : 1);
    size_t ffn = (size_t)e->I;
    if ((size_t)e->Is > ffn) ffn = (size_t)e->Is;
    if (e->E > 0 && (size_t)e->K * e->Ie > ffn) ffn = (size_t)e->K * e->Ie;
    int oom = 0;
    buffers *b = &e->b;
    b->x = balloc(e, n * e->D * f, &oom);
    b->xn = balloc(e, n * e->D * f, &oom);
    b->qa = balloc(e, n * (e->Rq > 0 ? e->Rq : 1) * f, &oom);
    b->q = balloc(e, n * e->H * e->Dqk * f, &oom);
    b->kv = balloc(e, n * e->W * f, &oom);
    b->qabs = balloc(e, n * e->H * e->W * f, &oom);
    b->lat = balloc(e, n * e->H * e->Rkv * f, &oom);
    b->o = balloc(e, n * e->H * e->Dv * f, &oom);
    b->kvb = balloc(e, n * e->H * (e->Dn + e->Dv) * f, &oom);
    b->k = balloc(e, n * e->H * e->Dqk * f, &oom);
    b->v = balloc(e, n * e->H * e->Dv * f, &oom);
    b->lse = balloc(e, n * e->H * f, &oom);
    b->g = balloc(e, n * ffn * f, &oom);
    b->u = balloc(e, n * ffn * f, &oom);
    b->h = balloc(e, n * ffn * f, &oom);
    if (e->E > 0) {
        b->rlogits = balloc(e, n * e->E * f, &oom);
        b->scores = balloc(e, n * e->E * f, &oom);
        b->wts = balloc(e, nk * f, &oom);
        b->xe = balloc(e, nk * e->D * f, &oom);
        b->ye = balloc(e, nk * e->D * f, &oom);
        b->idx = balloc(e, nk * i32, &oom);
        b->off = balloc(e, (size_t)(e->E + 1) * i32, &oom);
        b->order = balloc(e, nk * i32, &oom);
        b->where = balloc(e, nk * i32, &oom);
    }
    b->cs = balloc(e, n * e->Dr * f, &oom);
    b->xf = balloc(e, n * e->D * f, &oom);
    b->logits = balloc(e, n * (size_t)e->V * f, &oom);
    b->attn_ws = balloc(e, ops->attn_ws_bytes(1, o->max_tokens, e->H, e->Dqk, e->Dv), &oom);
    b->cat = o->mtp ? balloc(e, n * 2 * e->D * f, &oom) : NULL;
    b->tok = balloc(e, n * i32, &oom);
    b->pos = balloc(e, n * i32, &oom);
    b->inv_freq = balloc(e, (size_t)(e->Dr / 2 + 1) * f, &oom);
    e->off_host = calloc((size_t)e->E + 1, sizeof *e->off_host);
    e->off64 = calloc((size_t)e->E + 1, sizeof *e->off64);
    e->mla_table = malloc(n * i32);
    e->mla_len = malloc(n * i32);
    if (oom || !e->off_host || !e->off64 || !e->mla_table || !e->mla_len) {
        ds_infer_free(e);
        return ds_fail(DS_ERR, "inference: out of memory for activations of %d tokens", o->max_tokens);
    }
    float inv_freq[512];
    if (e->Dr / 2 > 512) {
        ds_infer_free(e);
        return ds_fail(DS_ERR, "inference: qk_rope_head_dim %d: at most 1024 supported", e->Dr);
    }
    rope_params(c, inv_freq, &e->rope_mscale, &e->softmax_scale);
    ops->copy(b->inv_freq, inv_freq, (size_t)(e->Dr / 2) * f, DS_COPY_H2D);
    *out = e;
    return DS_OK;
}

/* ---- one decoder layer ------------------------------------------------------------------------------ */

/* Slot groups for the naive form: consecutive rows of one slot starting at position 0. */
static int check_step(const ds_infer *e, int n, const int32_t *tok, const int32_t *slot, const int32_t *pos,
                      ds_attn_form form) {
    if (n <= 0 || n > e->o.max_tokens)
        return ds_fail(DS_ERR, "inference: %d tokens in one step: must be in [1, %d]", n, e->o.max_tokens);
    for (int i = 0; i < n; i++) {
        if (tok && (tok[i] < 0 || tok[i] >= e->V))
            return ds_fail(DS_ERR, "inference: token id %d: outside the vocabulary of %d", tok[i], e->V);
        if (slot[i] < 0 || slot[i] >= e->o.slots) return ds_fail(DS_ERR, "inference: slot %d: no such slot", slot[i]);
        if (pos[i] < 0 || pos[i] >= e->o.max_len)
            return ds_fail(DS_ERR, "inference: position %d: outside the context of %d tokens", pos[i], e->o.max_len);
        int first_of_slot = 1;
        for (int j = i - 1; j >= 0; j--)
            if (slot[j] == slot[i]) {
                if (pos[j] != pos[i] - 1 || j != i - 1)
                    return ds_fail(DS_ERR, "inference: row %d: a slot's tokens must be adjacent rows at consecutive positions", i);
                first_of_slot = 0;
                break;
            }
        if (form == DS_ATTN_NAIVE && first_of_slot && pos[i] != 0)
            return ds_fail(DS_ERR, "inference: row %d: the naive attention form needs sequences that start at position 0", i);
    }
    return DS_OK;
}

/* Absorbed attention over the cache for every row: runs of consecutive slots with the same number of
 * new tokens go to the MLA decode op together (its batch), each slot's cache being one page. */
static int latent_attention(ds_infer *e, int cache_layer, int n, const int32_t *slot, const int32_t *pos) {
    buffers *b = &e->b;
    const int H = e->H, W = e->W, Rkv = e->Rkv;
    for (int r0 = 0; r0 < n;) {
        int q_len = 1;
        while (r0 + q_len < n && slot[r0 + q_len] == slot[r0]) q_len++;
        int batch = 0, r = r0;
        while (r < n) {
            int len = 1;
            while (r + len < n && slot[r + len] == slot[r]) len++;
            if (len != q_len) break;
            e->mla_table[batch] = slot[r];
            e->mla_len[batch++] = pos[r + len - 1] + 1;
            r += len;
        }
        ds_mla_decode_args a = {
            .batch = batch, .q_len = q_len, .heads = H, .kv_rank = Rkv, .rope_dim = e->Dr,
            .scale = e->softmax_scale,
            .q = b->qabs + (size_t)r0 * H * W, .q_type = DS_F32,
            .kv = e->cache.layer[cache_layer], .kv_type = DS_F32,
            .kv_len = e->mla_len, .block_table = e->mla_table,
            .page_size = e->cache.max_len, .max_pages = 1, .n_pages = e->cache.slots,
            .out = b->lat + (size_t)r0 * H * Rkv, .out_type = DS_F32,
        };
        DS_TRY(ds_mla_decode(&a));
        r0 = r;
    }
    return DS_OK;
}

static int attention(ds_infer *e, const ds_layer_w *lw, int cache_layer, int n, const int32_t *slot,
                      const int32_t *pos, ds_attn_form form) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int D = e->D, H = e->H, Dn = e->Dn, Dr = e->Dr, Dv = e->Dv, Dqk = e->Dqk, Rkv = e->Rkv, W = e->W;
    if (e->Rq > 0) {
        op->gemm(0, 1, n, e->Rq, D, 1, b->xn, D, lw->q_a, D, 0, b->qa, e->Rq);
        op->rmsnorm_fwd(b->qa, e->Rq, NULL, b->qa, e->Rq, lw->q_a_norm, n, e->Rq, e->eps);
        op->gemm(0, 1, n, H * Dqk, e->Rq, 1, b->qa, e->Rq, lw->q_b, e->Rq, 0, b->q, H * Dqk);
    } else {
        op->gemm(0, 1, n, H * Dqk, D, 1, b->xn, D, lw->q, D, 0, b->q, H * Dqk);
    }
    op->gemm(0, 1, n, W, D, 1, b->xn, D, lw->kv_a, D, 0, b->kv, W);
    op->rmsnorm_fwd(b->kv, W, NULL, b->kv, W, lw->kv_a_norm, n, Rkv, e->eps);
    op->rope(b->kv, n, 1, W, W, Rkv, Dr / 2, b->cs, 0);
    op->rope(b->q, n, H, H * Dqk, Dqk, Dn, Dr / 2, b->cs, 0);
    for (int i = 0; i < n; i++)
        op->copy(ds_kvcache_row(&e->cache, cache_layer, slot[i], pos[i]), b->kv + (size_t)i * W, sizeof(float) * W,
                 DS_COPY_D2D);
    const size_t kvb_head = (size_t)(Dn + Dv) * Rkv; /* rows of kv_b per head: [W_UK (Dn) ; W_UV (Dv)] x Rkv */
    if (form == DS_ATTN_ABSORBED) {
        for (int h = 0; h < H; h++) /* q~ = W_UK,h^T q_nope,h */
            op->gemm(0, 0, n, Rkv, Dn, 1, b->q + (size_t)h * Dqk, H * Dqk, lw->kv_b + h * kvb_head, Rkv, 0,
                     b->qabs + (size_t)h * W, H * W);
        op->copy2d(b->qabs + Rkv, W, b->q + Dn, Dqk, n * H, Dr);
        op->sync();
        DS_TRY(latent_attention(e, cache_layer, n, slot, pos));
        for (int h = 0; h < H; h++) /* o_h = W_UV,h o~_h */
            op->gemm(0, 1, n, Dv, Rkv, 1, b->lat + (size_t)h * Rkv, H * Rkv, lw->kv_b + h * kvb_head + (size_t)Dn * Rkv,
                     Rkv, 0, b->o + (size_t)h * Dv, H * Dv);
    } else {
        op->gemm(0, 1, n, H * (Dn + Dv), Rkv, 1, b->kv, W, lw->kv_b, Rkv, 0, b->kvb, H * (Dn + Dv));
        op->mla_kv_expand(b->k, b->v, b->kvb, b->kv + Rkv, W, n, H, Dn, Dr, Dv);
        for (int r0 = 0; r0 < n;) {
            int r1 = r0 + 1;
            while (r1 < n && slot[r1] == slot[r0]) r1++;
            op->attn_fwd(b->o + (size_t)r0 * H * Dv, b->lse + (size_t)r0 * H, b->q + (size_t)r0 * H * Dqk,
                         b->k + (size_t)r0 * H * Dqk, b->v + (size_t)r0 * H * Dv, NULL, 1, r1 - r0, H, Dqk, Dv,
                         e->softmax_scale, b->attn_ws);
            r0 = r1;
        }
    }
    op->gemm(0, 1, n, D, H * Dv, 1, b->o, H * Dv, lw->o, H * Dv, 1, b->x, D); /* x += W_O o */
    return DS_OK;
}

/* x += W_down (silu(W_gate xn) * W_up xn) for a dense FFN of width I */
static void swiglu_ffn(ds_infer *e, int n, int I, const float *wg, const float *wu, const float *wd) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    op->gemm(0, 1, n, I, e->D, 1, b->xn, e->D, wg, e->D, 0, b->g, I);
    op->gemm(0, 1, n, I, e->D, 1, b->xn, e->D, wu, e->D, 0, b->u, I);
    op->swiglu_fwd(b->h, b->g, b->u, (size_t)n * I);
    op->gemm(0, 1, n, e->D, I, 1, b->h, I, wd, I, 1, b->x, e->D);
}

static void moe(ds_infer *e, const ds_layer_w *lw, const float *bias, int n) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int D = e->D, E = e->E, K = e->K, Ie = e->Ie, m = n * K;
    op->gemm(0, 1, n, E, D, 1, b->xn, D, lw->router, D, 0, b->rlogits, E);
    op->router_scores(b->scores, b->rlogits, n, E, e->rp.score_fn);
    op->moe_topk(b->idx, b->wts, b->scores, bias, n, &e->rp);
    op->moe_bucket(b->off, b->order, b->where, b->idx, n, K, E);
    op->copy(e->off_host, b->off, sizeof(int32_t) * (E + 1), DS_COPY_D2H); /* sync point: grouped GEMM sizes */
    op->sync();
    for (int i = 0; i <= E; i++) e->off64[i] = e->off_host[i];
    op->moe_gather(b->xe, b->xn, b->order, m, K, D);
    op->gemm_rows(E, e->off64, 1, Ie, D, 1, b->xe, D, lw->exp_gate, (size_t)Ie * D, D, 0, b->g, Ie);
    op->gemm_rows(E, e->off64, 1, Ie, D, 1, b->xe, D, lw->exp_up, (size_t)Ie * D, D, 0, b->u, Ie);
    op->swiglu_fwd(b->h, b->g, b->u, (size_t)m * Ie);
    op->gemm_rows(E, e->off64, 1, D, Ie, 1, b->h, Ie, lw->exp_down, (size_t)D * Ie, Ie, 0, b->ye, D);
    op->moe_combine(b->x, b->ye, b->wts, b->where, n, K, D);
    if (e->Is > 0) swiglu_ffn(e, n, e->Is, lw->sh_gate, lw->sh_up, lw->sh_down);
}

static int layer(ds_infer *e, int l, int cache_layer, int n, const int32_t *slot, const int32_t *pos,
                  ds_attn_form form) {
    const ds_layer_w *lw = &e->m.w->layer[l];
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    op->rmsnorm_fwd(b->xn, e->D, NULL, b->x, e->D, lw->attn_norm, n, e->D, e->eps);
    DS_TRY(attention(e, lw, cache_layer, n, slot, pos, form));
    op->rmsnorm_fwd(b->xn, e->D, NULL, b->x, e->D, lw->ffn_norm, n, e->D, e->eps);
    if (ds_cfg_is_moe_layer(e->cfg, l)) moe(e, lw, e->m.expert_bias ? e->m.expert_bias[l] : NULL, n);
    else swiglu_ffn(e, n, e->I, lw->w_gate, lw->w_up, lw->w_down);
    return DS_OK;
}

/* Final norm and head: hidden states of all n rows (optional), logits of the chosen rows. */
static void head(ds_infer *e, int n, int n_out, const int32_t *rows, const float *norm_w, float *logits,
                 float *hidden) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int D = e->D;
    if (hidden) {
        op->rmsnorm_fwd(b->xn, D, NULL, b->x, D, norm_w, n, D, e->eps);
        op->copy(hidden, b->xn, sizeof(float) * (size_t)n * D, DS_COPY_D2H);
    }
    if (logits && n_out > 0) {
        for (int r = 0; r < n_out; r++)
            op->copy(b->xf + (size_t)r * D, b->x + (size_t)(rows ? rows[r] : r) * D, sizeof(float) * D, DS_COPY_D2D);
        op->rmsnorm_fwd(b->xf, D, NULL, b->xf, D, norm_w, n_out, D, e->eps);
        op->gemm(0, 1, n_out, e->V, D, 1, b->xf, D, e->m.w->head, D, 0, b->logits, e->V);
        op->copy(logits, b->logits, sizeof(float) * (size_t)n_out * e->V, DS_COPY_D2H);
    }
    op->sync();
}

int ds_infer_forward(ds_infer *e, const ds_infer_step *s) {
    DS_TRY(check_step(e, s->n, s->tok, s->slot, s->pos, s->form));
    if (s->n_out < 0 || s->n_out > s->n) return ds_fail(DS_ERR, "inference: %d output rows for %d tokens", s->n_out, s->n);
    for (int r = 0; r < s->n_out; r++)
        if (s->out_rows && (s->out_rows[r] < 0 || s->out_rows[r] >= s->n))
            return ds_fail(DS_ERR, "inference: output row %d: outside the %d rows of the step", s->out_rows[r], s->n);
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int n = s->n;
    op->copy(b->tok, s->tok, sizeof(int32_t) * n, DS_COPY_H2D);
    op->copy(b->pos, s->pos, sizeof(int32_t) * n, DS_COPY_H2D);
    op->embed_fwd(b->x, e->m.w->embed, b->tok, n, e->D);
    op->rope_table(b->cs, b->pos, n, b->inv_freq, e->Dr / 2, e->rope_mscale);
    for (int l = 0; l < e->cfg->num_hidden_layers; l++) DS_TRY(layer(e, l, l, n, s->slot, s->pos, s->form));
    head(e, n, s->n_out, s->out_rows, e->m.w->final_norm, s->logits, s->hidden);
    return DS_OK;
}

int ds_infer_mtp(ds_infer *e, int n, const int32_t *next_tok, const float *h, const int32_t *slot,
                 const int32_t *pos, float *logits) {
    if (!e->o.mtp) return ds_fail(DS_ERR, "inference: the engine was created without the MTP module");
    DS_TRY(check_step(e, n, next_tok, slot, pos, DS_ATTN_ABSORBED));
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int D = e->D, L = e->cfg->num_hidden_layers;
    const ds_layer_w *mw = &e->m.w->layer[L];
    op->copy(b->tok, next_tok, sizeof(int32_t) * n, DS_COPY_H2D);
    op->copy(b->pos, pos, sizeof(int32_t) * n, DS_COPY_H2D);
    /* h' = eh_proj [enorm(Emb(t_{i+1})) ; hnorm(h_i)]  (the embedding first, as the released weights expect) */
    op->embed_fwd(b->xn, e->m.w->embed, b->tok, n, D);
    op->rmsnorm_fwd(b->cat, 2 * D, NULL, b->xn, D, mw->enorm, n, D, e->eps);
    op->copy(b->x, h, sizeof(float) * (size_t)n * D, DS_COPY_H2D);
    op->rmsnorm_fwd(b->cat + D, 2 * D, NULL, b->x, D, mw->hnorm, n, D, e->eps);
    op->gemm(0, 1, n, D, 2 * D, 1, b->cat, 2 * D, mw->eh_proj, 2 * D, 0, b->x, D);
    op->rope_table(b->cs, b->pos, n, b->inv_freq, e->Dr / 2, e->rope_mscale);
    DS_TRY(layer(e, L, e->cache.n_main, n, slot, pos, DS_ATTN_ABSORBED));
    head(e, n, n, NULL, mw->head_norm, logits, NULL);
    return DS_OK;
}
