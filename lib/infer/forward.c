#include "infer/forward.h"

#include "core/err.h"
#include "fp8/resident.h"
#include "infer/epinfer.h"
#include "model/layer.h"
#include "ops/gemm_small.h"
#include "ops/mla_decode.h"

#include "core/threads.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Scratch sized for max_tokens rows, allocated once through the op layer. */
typedef struct {
    float *x, *xn, *y;                          /* residual stream, normalised input, block output */
    float *cq, *cqn, *q, *kva, *ckv, *kpe;      /* MLA projections (model/layer.h) */
    float *qabs, *lat, *o;                      /* absorbed attention */
    float *kvb, *k, *v, *lse;                   /* naive attention */
    float *g, *u, *h;                           /* dense / shared FFN and routed experts [n*K, Ie] */
    float *rlogits, *scores, *wts, *xe, *ye;    /* MoE */
    int32_t *idx, *off, *order, *where;
    float *cs, *xf, *logits, *cat;
    void *attn_ws;
    int32_t *tok, *pos;
    int32_t *mla_table, *mla_len; /* the decode op's per-sequence slot and length (attention_tables) */
    float *inv_freq;
} buffers;

struct ds_infer {
    ds_infer_model m;
    const ds_config *cfg;
    const ds_ops *ops;
    const ds_ops *lin; /* the Linear projections' GEMMs: &lin_tab or ops */
    ds_ops lin_tab;
    ds_ops cpu_tab; /* on the CPU: the backend with few-row GEMMs that read each weight once (ops/gemm_small.h) */
    ds_infer_opts o;
    ds_kvcache cache;
    buffers b;
    ds_dims d;
    ds_rope rope;
    int W; /* cache row: kv_lora_rank + qk_rope_head_dim */
    int max_out; /* rows of the logits buffers */
    double flops_token, flops_attn; /* per token: weights (all layers, head); per cached position and layer */
    int32_t *off_host;
    int64_t *off64;
    int32_t *mla_table, *mla_len; /* host side of buffers.mla_table/mla_len */
    size_t scratch_bytes;
    struct ds_infer_ep *ep; /* expert parallelism (NULL: none) */
    double *loads;          /* ds_infer_count_loads */
    void *allocs[48]; /* everything balloc handed out, freed through the op layer */
    int n_allocs;
};

ds_kvcache *ds_infer_cache(ds_infer *e) { return &e->cache; }
const ds_config *ds_infer_config(const ds_infer *e) { return e->cfg; }
size_t ds_infer_scratch_bytes(const ds_infer *e) { return e->scratch_bytes; }
void ds_infer_set_serial_flops(ds_infer *e, double flops) { e->o.serial_flops = flops; }
void ds_infer_set_ep(ds_infer *e, struct ds_infer_ep *ep) { e->ep = ep; }
void ds_infer_count_loads(ds_infer *e, double *loads) { e->loads = loads; }
int ds_infer_max_out(const ds_infer *e) { return e->max_out; }

void ds_infer_model_of(ds_model *m, ds_infer_model *out, const float **bias) {
    const ds_config *c = ds_model_config(m);
    for (int l = 0; l < c->num_hidden_layers + c->num_nextn_predict_layers; l++) bias[l] = ds_model_expert_bias(m, l);
    *out = (ds_infer_model){.cfg = c, .w = ds_model_weights(m), .expert_bias = bias, .mtp_depth = ds_model_mtp_depth(m)};
}

/* ---- creation ------------------------------------------------------------------------------------- */

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
    if (!ops) ops = ds_ops_cpu();
    if (o->max_tokens <= 0) return ds_fail(DS_ERR, "inference: max_tokens %d: must be positive", o->max_tokens);
    if (o->mtp && m->mtp_depth < 1)
        return ds_fail(DS_ERR, "inference: speculative decoding asked for, but the checkpoint has no MTP module");
    ds_infer *e = calloc(1, sizeof *e);
    if (!e) return ds_fail(DS_ERR, "inference: out of memory");
    e->m = *m;
    e->cfg = c;
    if (ops == ds_ops_cpu()) { /* decode steps multiply a few rows by every weight: see ops/gemm_small.h */
        ds_ops_cpu_small_m(&e->cpu_tab);
        ops = &e->cpu_tab;
    } else if (ds_resident_ops_few_rows(&e->cpu_tab, ops)) { /* the same over bf16-resident weights */
        ops = &e->cpu_tab;
    }
    e->ops = ops;
    e->o = *o;
    e->lin = ops;
    if (o->linear_ops) {
        if (strcmp(o->linear_ops->name, ops->name)) {
            free(e);
            return ds_fail(DS_ERR, "inference: Linear GEMMs on the %s backend, the rest on %s: they must share memory",
                           o->linear_ops->name, ops->name);
        }
        e->lin_tab = *o->linear_ops;
        e->lin = &e->lin_tab;
        e->o.linear_ops = &e->lin_tab;
    }
    ds_dims_from_config(&e->d, c);
    int rc = ds_rope_init(&e->rope, c);
    if (!rc) rc = ds_kvcache_init(&e->cache, c, o->slots, o->max_len, o->mtp ? 1 : 0, ops);
    if (rc) {
        free(e);
        return rc;
    }
    const ds_dims *d = &e->d;
    e->W = d->Rkv + d->dr;
    ds_param_counts pc;
    ds_config_counts(c, &pc);
    e->flops_token = 2.0 * (double)(pc.activated - pc.embedding);
    e->flops_attn = 4.0 * d->H * e->W;
    const size_t n = (size_t)o->max_tokens, f = sizeof(float), i32 = sizeof(int32_t);
    e->max_out = o->max_out > 0 ? o->max_out : 2 * o->slots;
    if (e->max_out > o->max_tokens) e->max_out = o->max_tokens;
    const size_t nk = n * (size_t)(d->K > 0 ? d->K : 1);
    size_t ffn = (size_t)d->I;
    if ((size_t)d->Is > ffn) ffn = (size_t)d->Is;
    if (d->E > 0 && (size_t)d->K * d->Ie > ffn) ffn = (size_t)d->K * d->Ie;
    const size_t rq = (size_t)(d->Rq > 0 ? d->Rq : 1);
    int oom = 0;
    buffers *b = &e->b;
    b->x = balloc(e, n * d->D * f, &oom);
    b->xn = balloc(e, n * d->D * f, &oom);
    b->y = balloc(e, n * d->D * f, &oom);
    b->cq = balloc(e, n * rq * f, &oom);
    b->cqn = balloc(e, n * rq * f, &oom);
    b->q = balloc(e, n * d->H * d->dqk * f, &oom);
    b->kva = balloc(e, n * e->W * f, &oom);
    b->ckv = balloc(e, n * d->Rkv * f, &oom);
    b->kpe = balloc(e, n * d->dr * f, &oom);
    b->qabs = balloc(e, n * d->H * e->W * f, &oom);
    b->lat = balloc(e, n * d->H * d->Rkv * f, &oom);
    b->o = balloc(e, n * d->H * d->dv * f, &oom);
    b->kvb = balloc(e, n * d->H * (d->dn + d->dv) * f, &oom);
    b->k = balloc(e, n * d->H * d->dqk * f, &oom);
    b->v = balloc(e, n * d->H * d->dv * f, &oom);
    b->lse = balloc(e, n * d->H * f, &oom);
    b->g = balloc(e, n * ffn * f, &oom);
    b->u = balloc(e, n * ffn * f, &oom);
    b->h = balloc(e, n * ffn * f, &oom);
    if (d->E > 0) {
        b->rlogits = balloc(e, n * d->E * f, &oom);
        b->scores = balloc(e, n * d->E * f, &oom);
        b->wts = balloc(e, nk * f, &oom);
        b->xe = balloc(e, nk * d->D * f, &oom);
        b->ye = balloc(e, nk * d->D * f, &oom);
        b->idx = balloc(e, nk * i32, &oom);
        b->off = balloc(e, (size_t)(d->E + 1) * i32, &oom);
        b->order = balloc(e, nk * i32, &oom);
        b->where = balloc(e, nk * i32, &oom);
    }
    b->cs = balloc(e, n * d->dr * f, &oom);
    b->xf = balloc(e, (size_t)e->max_out * d->D * f, &oom);
    b->logits = balloc(e, (size_t)e->max_out * d->V * f, &oom);
    b->attn_ws = balloc(e, ops->attn_ws_bytes(1, o->max_tokens, d->H, d->dqk, d->dv), &oom);
    b->cat = o->mtp ? balloc(e, n * 2 * d->D * f, &oom) : NULL;
    b->tok = balloc(e, n * i32, &oom);
    b->pos = balloc(e, n * i32, &oom);
    b->mla_table = balloc(e, n * i32, &oom);
    b->mla_len = balloc(e, n * i32, &oom);
    b->inv_freq = balloc(e, (size_t)e->rope.half * f, &oom);
    e->off_host = calloc((size_t)d->E + 1, sizeof *e->off_host);
    e->off64 = calloc((size_t)d->E + 1, sizeof *e->off64);
    e->mla_table = malloc(n * i32);
    e->mla_len = malloc(n * i32);
    if (oom || !e->off_host || !e->off64 || !e->mla_table || !e->mla_len) {
        ds_infer_free(e);
        return ds_fail(DS_ERR, "inference: out of memory for activations of %d tokens", o->max_tokens);
    }
    ops->copy(b->inv_freq, e->rope.inv_freq, (size_t)e->rope.half * f, DS_COPY_H2D);
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
        if (tok && (tok[i] < 0 || tok[i] >= e->d.V))
            return ds_fail(DS_ERR, "inference: token id %d: outside the vocabulary of %d", tok[i], e->d.V);
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

/* The decode op's batches: runs of consecutive slots with the same number of new tokens go to one call
 * (each slot's cache is one page). From row r0: the run's q_len, its sequences and the row after it. */
static int next_run(const int32_t *slot, int n, int r0, int *q_len, int *r_end) {
    int q = 1, batch = 0, r = r0;
    while (r0 + q < n && slot[r0 + q] == slot[r0]) q++;
    while (r < n) {
        int len = 1;
        while (r + len < n && slot[r + len] == slot[r]) len++;
        if (len != q) break;
        batch++;
        r += len;
    }
    *q_len = q;
    *r_end = r;
    return batch;
}

/* The slot and visible length of every sequence of the step, in run order, into backend memory: one copy
 * per step, shared by every layer's attention. */
static void attention_tables(ds_infer *e, int n, const int32_t *slot, const int32_t *pos) {
    int ns = 0;
    for (int r0 = 0, q, r1; r0 < n; r0 = r1) {
        int batch = next_run(slot, n, r0, &q, &r1);
        for (int k = 0; k < batch; k++) {
            e->mla_table[ns + k] = slot[r0 + k * q];
            e->mla_len[ns + k] = pos[r0 + k * q + q - 1] + 1;
        }
        ns += batch;
    }
    e->ops->copy(e->b.mla_table, e->mla_table, sizeof(int32_t) * (size_t)ns, DS_COPY_H2D);
    e->ops->copy(e->b.mla_len, e->mla_len, sizeof(int32_t) * (size_t)ns, DS_COPY_H2D);
}

/* Absorbed attention over the cache for every row, through the backend's MLA decode op. */
static int latent_attention(ds_infer *e, int cache_layer, int n, const int32_t *slot) {
    buffers *b = &e->b;
    const int H = e->d.H, W = e->W, Rkv = e->d.Rkv;
    int ns = 0;
    for (int r0 = 0, q, r1; r0 < n; r0 = r1) {
        int batch = next_run(slot, n, r0, &q, &r1), longest = 0;
        for (int k = 0; k < batch; k++)
            if (e->mla_len[ns + k] > longest) longest = e->mla_len[ns + k];
        ds_mla_decode_args a = {
            .batch = batch, .q_len = q, .heads = H, .kv_rank = Rkv, .rope_dim = e->d.dr,
            .scale = e->rope.softmax_scale,
            .q = b->qabs + (size_t)r0 * H * W, .q_type = DS_F32,
            .kv = e->cache.layer[cache_layer], .kv_type = DS_F32,
            .kv_len = b->mla_len + ns, .block_table = b->mla_table + ns,
            .page_size = e->cache.max_len, .max_pages = 1, .n_pages = e->cache.slots,
            .out = b->lat + (size_t)r0 * H * Rkv, .out_type = DS_F32,
            .max_kv_len = longest,
        };
        DS_TRY(e->ops->mla_decode(&a));
        ns += batch;
    }
    return DS_OK;
}

/* y = MLA(xn) for the rows of the step; their latents go into the cache first. */
static int attention(ds_infer *e, const ds_layer_w *lw, int cache_layer, int n, const int32_t *slot,
                     const int32_t *pos, ds_attn_form form) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const ds_dims *d = &e->d;
    const int H = d->H, Dn = d->dn, Dr = d->dr, Dv = d->dv, Dqk = d->dqk, Rkv = d->Rkv, W = e->W;
    ds_layer_ctx c = {.ops = op, .lin = e->lin, .lin_kvb = op, .d = d, .B = 1, .T = n, .n = n, .cs = b->cs,
                      .softmax_scale = e->rope.softmax_scale, .attn_ws = b->attn_ws};
    ds_mla_query(&c, lw, b->xn, b->cq, NULL, b->cqn, b->q);
    ds_mla_latent(&c, lw, b->xn, b->kva, NULL, b->ckv, b->kpe);
    for (int r0 = 0, r1; r0 < n; r0 = r1) { /* a slot's rows sit at consecutive positions (check_step) */
        for (r1 = r0 + 1; r1 < n && slot[r1] == slot[r0];) r1++;
        float *row = ds_kvcache_row(&e->cache, cache_layer, slot[r0], pos[r0]);
        op->copy2d(row, W, b->ckv + (size_t)r0 * Rkv, Rkv, r1 - r0, Rkv);
        op->copy2d(row + Rkv, W, b->kpe + (size_t)r0 * Dr, Dr, r1 - r0, Dr);
    }
    const size_t kvb_head = (size_t)(Dn + Dv) * Rkv; /* rows of kv_b per head: [W_UK (Dn) ; W_UV (Dv)] x Rkv */
    if (form == DS_ATTN_ABSORBED) {
        for (int h = 0; h < H; h++) /* q~ = W_UK,h^T q_nope,h */
            op->gemm(0, 0, n, Rkv, Dn, 1, b->q + (size_t)h * Dqk, H * Dqk, lw->kv_b + h * kvb_head, Rkv, 0,
                     b->qabs + (size_t)h * W, H * W);
        op->copy2d(b->qabs + Rkv, W, b->q + Dn, Dqk, n * H, Dr);
        DS_TRY(latent_attention(e, cache_layer, n, slot));
        for (int h = 0; h < H; h++) /* o_h = W_UV,h o~_h */
            op->gemm(0, 1, n, Dv, Rkv, 1, b->lat + (size_t)h * Rkv, H * Rkv, lw->kv_b + h * kvb_head + (size_t)Dn * Rkv,
                     Rkv, 0, b->o + (size_t)h * Dv, H * Dv);
    } else {
        ds_mla_expand(&c, lw, b->ckv, b->kpe, b->kvb, b->k, b->v);
        for (int r0 = 0; r0 < n;) {
            int r1 = r0 + 1;
            while (r1 < n && slot[r1] == slot[r0]) r1++;
            op->attn_fwd(b->o + (size_t)r0 * H * Dv, b->lse + (size_t)r0 * H, b->q + (size_t)r0 * H * Dqk,
                         b->k + (size_t)r0 * H * Dqk, b->v + (size_t)r0 * H * Dv, NULL, 1, r1 - r0, H, Dqk, Dv,
                         e->rope.softmax_scale, b->attn_ws);
            r0 = r1;
        }
    }
    e->lin->gemm(0, 1, n, d->D, H * Dv, 1, b->o, H * Dv, lw->o, H * Dv, 0, b->y, d->D);
    return DS_OK;
}

/* y (+)= W_down (silu(W_gate xn) * W_up xn) for a SwiGLU MLP of width I; beta 0 overwrites y */
static void swiglu_ffn(ds_infer *e, int n, int I, const float *wg, const float *wu, const float *wd, float beta) {
    const ds_ops *op = e->ops, *lin = e->lin;
    buffers *b = &e->b;
    const int D = e->d.D;
    lin->gemm(0, 1, n, I, D, 1, b->xn, D, wg, D, 0, b->g, I);
    lin->gemm(0, 1, n, I, D, 1, b->xn, D, wu, D, 0, b->u, I);
    op->swiglu_fwd(b->h, b->g, b->u, (size_t)n * I);
    lin->gemm(0, 1, n, D, I, 1, b->h, I, wd, I, beta, b->y, D);
}

/* y = shared experts + routed experts, as the training forward sums them */
static int moe(ds_infer *e, int l, const ds_layer_w *lw, const float *bias, int n) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const ds_dims *d = &e->d;
    const int D = d->D, E = d->E, K = d->K, Ie = d->Ie, m = n * K;
    ds_layer_ctx c = {.ops = op, .d = d, .B = 1, .T = n, .n = n};
    ds_moe_route(&c, lw, d->has_bias ? bias : NULL, b->xn, b->rlogits, b->scores, b->idx, b->wts);
    if (e->loads) /* CPU memory (ds-generate refuses --record-loads elsewhere) */
        for (int i = 0; i < m; i++) e->loads[(size_t)l * E + b->idx[i]] += 1;
    if (e->ep) { /* shared experts here, the routed ones across the ranks (summed per token after them) */
        if (d->Is > 0) swiglu_ffn(e, n, d->Is, lw->sh_gate, lw->sh_up, lw->sh_down, 0);
        else op->zero(b->y, sizeof(float) * (size_t)n * D);
        return ds_infer_ep_moe(e->ep, l, b->xn, b->idx, b->wts, n, b->y);
    }
    op->moe_bucket(b->off, b->order, b->where, b->idx, n, K, E);
    op->copy(e->off_host, b->off, sizeof(int32_t) * (E + 1), DS_COPY_D2H); /* sync point: grouped GEMM sizes */
    op->sync();
    for (int i = 0; i <= E; i++) e->off64[i] = e->off_host[i];
    op->moe_gather(b->xe, b->xn, b->order, m, K, D);
    e->lin->gemm_rows(E, e->off64, 1, Ie, D, 1, b->xe, D, lw->exp_gate, (size_t)Ie * D, D, 0, b->g, Ie);
    e->lin->gemm_rows(E, e->off64, 1, Ie, D, 1, b->xe, D, lw->exp_up, (size_t)Ie * D, D, 0, b->u, Ie);
    op->swiglu_fwd(b->h, b->g, b->u, (size_t)m * Ie);
    e->lin->gemm_rows(E, e->off64, 1, D, Ie, 1, b->h, Ie, lw->exp_down, (size_t)D * Ie, Ie, 0, b->ye, D);
    if (d->Is > 0) swiglu_ffn(e, n, d->Is, lw->sh_gate, lw->sh_up, lw->sh_down, 0);
    else op->zero(b->y, sizeof(float) * (size_t)n * D);
    op->moe_combine(b->y, b->ye, b->wts, b->where, n, K, D);
    return DS_OK;
}

static int layer(ds_infer *e, int l, int cache_layer, int n, const int32_t *slot, const int32_t *pos,
                 ds_attn_form form) {
    const ds_layer_w *lw = &e->m.w->layer[l];
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int D = e->d.D;
    const size_t nD = (size_t)n * D;
    op->rmsnorm_fwd(b->xn, D, NULL, b->x, D, lw->attn_norm, n, D, e->d.eps);
    DS_TRY(attention(e, lw, cache_layer, n, slot, pos, form));
    op->add(b->x, b->x, b->y, nD);
    op->rmsnorm_fwd(b->xn, D, NULL, b->x, D, lw->ffn_norm, n, D, e->d.eps);
    if (ds_cfg_is_moe_layer(e->cfg, l)) DS_TRY(moe(e, l, lw, e->m.expert_bias ? e->m.expert_bias[l] : NULL, n));
    else swiglu_ffn(e, n, e->d.I, lw->w_gate, lw->w_up, lw->w_down, 0);
    op->add(b->x, b->x, b->y, nD);
    return DS_OK;
}

/* Final norm and head: hidden states of all n rows (optional), logits of the chosen rows. */
static int head(ds_infer *e, int n, int n_out, const int32_t *rows, const float *norm_w, float *logits,
                float *hidden) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int D = e->d.D;
    if (hidden) {
        op->rmsnorm_fwd(b->xn, D, NULL, b->x, D, norm_w, n, D, e->d.eps);
        op->copy(hidden, b->xn, sizeof(float) * (size_t)n * D, DS_COPY_D2H);
    }
    if (logits && n_out > 0) {
        for (int r = 0; r < n_out; r++)
            op->copy(b->xf + (size_t)r * D, b->x + (size_t)(rows ? rows[r] : r) * D, sizeof(float) * D, DS_COPY_D2D);
        op->rmsnorm_fwd(b->xf, D, NULL, b->xf, D, norm_w, n_out, D, e->d.eps);
        op->gemm(0, 1, n_out, e->d.V, D, 1, b->xf, D, e->m.w->head, D, 0, b->logits, e->d.V);
        op->copy(logits, b->logits, sizeof(float) * (size_t)n_out * e->d.V, DS_COPY_D2H);
    }
    op->sync();
    return op->status(); /* a failed launch anywhere in the step surfaces here */
}

/* Run small steps on one thread: returns the thread count to restore (0: nothing changed). */
static int serial_begin(const ds_infer *e, int n, const int32_t *pos, int layers) {
    if (e->o.serial_flops <= 0 || ds_threads_get() <= 1) return 0;
    double f = e->flops_token * n;
    for (int i = 0; i < n; i++) f += e->flops_attn * layers * (pos[i] + 1.0);
    if (f >= e->o.serial_flops) return 0;
    int prev = ds_threads_get();
    ds_threads_set(1);
    return prev;
}

static void serial_end(int prev) {
    if (prev) ds_threads_set(prev);
}

static int forward(ds_infer *e, const ds_infer_step *s);
static int mtp_forward(ds_infer *e, int n, const int32_t *next_tok, const float *h, const int32_t *slot,
                       const int32_t *pos, int n_out, const int32_t *out_rows, float *logits);
static int check_out(const ds_infer *e, int n, int n_out, const int32_t *out_rows);

int ds_infer_forward(ds_infer *e, const ds_infer_step *s) {
    DS_TRY(check_step(e, s->n, s->tok, s->slot, s->pos, s->form));
    DS_TRY(check_out(e, s->n, s->logits ? s->n_out : 0, s->out_rows));
    int prev = serial_begin(e, s->n, s->pos, e->cfg->num_hidden_layers);
    int rc = forward(e, s);
    serial_end(prev);
    return rc;
}

int ds_infer_mtp(ds_infer *e, int n, const int32_t *next_tok, const float *h, const int32_t *slot,
                 const int32_t *pos, int n_out, const int32_t *out_rows, float *logits) {
    if (!e->o.mtp) return ds_fail(DS_ERR, "inference: the engine was created without the MTP module");
    DS_TRY(check_step(e, n, next_tok, slot, pos, DS_ATTN_ABSORBED));
    DS_TRY(check_out(e, n, logits ? n_out : 0, out_rows));
    int prev = serial_begin(e, n, pos, 1);
    int rc = mtp_forward(e, n, next_tok, h, slot, pos, n_out, out_rows, logits);
    serial_end(prev);
    return rc;
}

static int check_out(const ds_infer *e, int n, int n_out, const int32_t *out_rows) {
    if (n_out < 0 || n_out > n || n_out > e->max_out)
        return ds_fail(DS_ERR, "inference: logits for %d rows: at most %d here (%d tokens)", n_out,
                       n < e->max_out ? n : e->max_out, n);
    for (int r = 0; r < n_out; r++)
        if (out_rows && (out_rows[r] < 0 || out_rows[r] >= n))
            return ds_fail(DS_ERR, "inference: output row %d: outside the %d rows of the step", out_rows[r], n);
    return DS_OK;
}

static int forward(ds_infer *e, const ds_infer_step *s) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int n = s->n;
    if (e->ep) DS_TRY(ds_infer_ep_announce(e->ep, 1));
    op->copy(b->tok, s->tok, sizeof(int32_t) * n, DS_COPY_H2D);
    op->copy(b->pos, s->pos, sizeof(int32_t) * n, DS_COPY_H2D);
    op->embed_fwd(b->x, e->m.w->embed, b->tok, n, e->d.D);
    op->rope_table(b->cs, b->pos, n, b->inv_freq, e->rope.half, e->rope.cos_scale);
    attention_tables(e, n, s->slot, s->pos);
    for (int l = 0; l < e->cfg->num_hidden_layers; l++) DS_TRY(layer(e, l, l, n, s->slot, s->pos, s->form));
    return head(e, n, s->n_out, s->out_rows, e->m.w->final_norm, s->logits, s->hidden);
}

static int mtp_forward(ds_infer *e, int n, const int32_t *next_tok, const float *h, const int32_t *slot,
                       const int32_t *pos, int n_out, const int32_t *out_rows, float *logits) {
    const ds_ops *op = e->ops;
    buffers *b = &e->b;
    const int D = e->d.D, L = e->cfg->num_hidden_layers;
    const ds_layer_w *mw = &e->m.w->layer[L];
    if (e->ep) DS_TRY(ds_infer_ep_announce(e->ep, 2));
    op->copy(b->tok, next_tok, sizeof(int32_t) * n, DS_COPY_H2D);
    op->copy(b->pos, pos, sizeof(int32_t) * n, DS_COPY_H2D);
    /* h' = eh_proj [enorm(Emb(t_{i+1})) ; hnorm(h_i)]  (the embedding first, as the released weights expect) */
    op->embed_fwd(b->xn, e->m.w->embed, b->tok, n, D);
    op->rmsnorm_fwd(b->cat, 2 * D, NULL, b->xn, D, mw->enorm, n, D, e->d.eps);
    op->copy(b->x, h, sizeof(float) * (size_t)n * D, DS_COPY_H2D);
    op->rmsnorm_fwd(b->cat + D, 2 * D, NULL, b->x, D, mw->hnorm, n, D, e->d.eps);
    op->gemm(0, 1, n, D, 2 * D, 1, b->cat, 2 * D, mw->eh_proj, 2 * D, 0, b->x, D);
    op->rope_table(b->cs, b->pos, n, b->inv_freq, e->rope.half, e->rope.cos_scale);
    attention_tables(e, n, slot, pos);
    DS_TRY(layer(e, L, e->cache.n_main, n, slot, pos, DS_ATTN_ABSORBED));
    return head(e, n, n_out, out_rows, mw->head_norm, logits, NULL);
}
