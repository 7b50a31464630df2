/* The whole network: creation, batch preparation, forward (embedding, layers, final norm, head, MTP,
 * balance loss) and backward by per-token log-prob gradients (spec 2-6). */
#include "model/internal.h"
#include "model/moe.h"

#include "core/err.h"
#include "core/log.h"
#include "fp8/resident.h"
#include "model/weights.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int check_config(const ds_config *c) {
#define NEED(cond, key, what)                                                                              \
    if (!(cond)) return ds_fail(DS_ERR, "config: %s: %s", key, what)
    NEED(c->vocab_size > 0, "vocab_size", "must be positive");
    NEED(c->hidden_size > 0, "hidden_size", "must be positive");
    NEED(c->num_hidden_layers >= 0, "num_hidden_layers", "must not be negative");
    NEED(c->num_attention_heads > 0, "num_attention_heads", "must be positive");
    NEED(c->qk_nope_head_dim >= 0, "qk_nope_head_dim", "must not be negative");
    NEED(c->qk_rope_head_dim > 0 && c->qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "must be positive and even");
    NEED(c->v_head_dim > 0, "v_head_dim", "must be positive");
    NEED(c->kv_lora_rank > 0, "kv_lora_rank", "must be positive");
    NEED(c->q_lora_rank >= 0, "q_lora_rank", "must not be negative");
    NEED(c->num_nextn_predict_layers >= 0, "num_nextn_predict_layers", "must not be negative");
    NEED(c->rms_norm_eps > 0, "rms_norm_eps", "must be positive");
    NEED(!c->tie_word_embeddings, "tie_word_embeddings", "tied embeddings are not supported (V3 unties them)");
    NEED(!c->hidden_act[0] || !strcmp(c->hidden_act, "silu"), "hidden_act", "only \"silu\" is supported");
    int any_dense = c->first_k_dense_replace > 0 || c->n_routed_experts <= 0 || c->moe_layer_freq > 1;
    NEED(!any_dense || c->intermediate_size > 0, "intermediate_size", "must be positive");
    if (c->n_routed_experts > 0) {
        int G = c->n_group > 0 ? c->n_group : 1;
        NEED(c->moe_intermediate_size > 0, "moe_intermediate_size", "must be positive");
        NEED(c->n_shared_experts >= 0, "n_shared_experts", "must not be negative");
        NEED(c->num_experts_per_tok > 0 && c->num_experts_per_tok <= c->n_routed_experts, "num_experts_per_tok",
             "must be in [1, n_routed_experts]");
        NEED(c->n_routed_experts % G == 0, "n_group", "must divide n_routed_experts");
        NEED(c->topk_group <= G, "topk_group", "must not exceed n_group");
        NEED(G <= 1 || (int64_t)(c->topk_group > 0 ? c->topk_group : G) * (c->n_routed_experts / G) >=
                           c->num_experts_per_tok,
             "topk_group", "the kept groups hold fewer than num_experts_per_tok experts");
        NEED(c->routed_scaling_factor > 0, "routed_scaling_factor", "must be positive");
    }
    return 0;
#undef NEED
}

static void set_moe_slots(ds_model *m) {
    m->n_moe = 0;
    for (int l = 0; l < m->n_layers_total; l++) m->moe_slot[l] = ds_cfg_is_moe_layer(&m->cfg, l) ? m->n_moe++ : -1;
}

/* the expert range of this rank (moe_ep.c does the exchanges) */
static int ep_shape(ds_model *m) {
    const ds_model_opts *o = &m->opts;
    int E = m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 0;
    m->ep_n = 1, m->ep_rank = 0, m->e0 = 0, m->ne = E;
    if (o->ep_size <= 1) return 0;
    if (E <= 0 || E % o->ep_size || o->ep_rank < 0 || o->ep_rank >= o->ep_size)
        return ds_fail(DS_ERR, "model: %d routed experts over %d expert-parallel ranks (rank %d)", E, o->ep_size, o->ep_rank);
    if (o->ep_comm && (o->ep_comm->size != o->ep_size || o->ep_comm->rank != o->ep_rank))
        return ds_fail(DS_ERR, "model: expert-parallel group of %d ranks (rank %d), expected %d (rank %d)", o->ep_comm->size,
                       o->ep_comm->rank, o->ep_size, o->ep_rank);
    if (o->ops && strcmp(o->ops->name, "cpu"))
        return ds_fail(DS_ERR, "model: expert parallelism runs on the CPU in this build, not on %s", o->ops->name);
    m->ep_n = o->ep_size, m->ep_rank = o->ep_rank;
    m->ne = E / o->ep_size, m->e0 = o->ep_rank * m->ne;
    m->opts.ep_node = NULL; /* copied at create */
    return 0;
}

/* A GEMM table given in the options (*given, NULL: none): copied into *tab (the caller's may go away), *given
 * and *use pointed at the copy; it must run on the backend's memory. */
static int take_table(ds_model *m, const ds_ops **given, ds_ops *tab, const ds_ops **use, const char *what) {
    if (!*given) return 0;
    if (strcmp((*given)->name, m->ops->name))
        return ds_fail(DS_ERR, "model: %s on the %s backend, the rest on %s: they must share memory", what,
                       (*given)->name, m->ops->name);
    *tab = **given;
    *use = *given = tab;
    return 0;
}

/* the attention output kept in E5M6 (opts.attn_out_e5m6): host memory, o_proj on its own table */
static int attn_out_shape(ds_model *m) {
    m->lin_o = m->lin; /* with the cache only (training: m->lin is final here); ds_o_proj_ops */
    m->attn_e5m6 = m->opts.attn_out_e5m6 && m->opts.train;
    if (!m->attn_e5m6) return 0;
    if (strcmp(m->ops->name, "cpu"))
        return ds_fail(DS_ERR, "model: the E5M6 attention-output cache runs on the CPU in this build, not on %s",
                       m->ops->name);
    return take_table(m, &m->opts.o_proj_ops, &m->lin_o_tab, &m->lin_o, "o_proj's GEMMs");
}

/* sizes everything without allocating; shared by create and the memory plan */
static int model_shape(ds_model *m, const ds_config *cfg, const ds_model_opts *opts) {
    DS_TRY(check_config(cfg));
    m->cfg = *cfg;
    m->cfg.json = NULL; /* the network does not need the JSON; the caller keeps it */
    m->opts = *opts;
    if (m->opts.max_batch <= 0 || m->opts.max_seq <= 0)
        return ds_fail(DS_ERR, "model: max_batch and max_seq must be positive (got %d, %d)", m->opts.max_batch,
                       m->opts.max_seq);
    if ((int64_t)m->opts.max_batch * m->opts.max_seq > (1 << 30))
        return ds_fail(DS_ERR, "model: max_batch x max_seq too large: %d x %d", m->opts.max_batch, m->opts.max_seq);
    m->ops = m->opts.ops ? m->opts.ops : ds_ops_cpu();
    m->lin = m->ops;
    DS_TRY(take_table(m, &m->opts.linear_ops, &m->lin_tab, &m->lin, "Linear GEMMs"));
    m->lin_kvb = m->opts.kv_b_on_ops ? m->ops : m->lin;
    DS_TRY(attn_out_shape(m));
    if (m->opts.moe_dispatch_fp8) {
        const ds_ops *p2 = m->opts.linear_ops_pow2;
        if (!p2 || strcmp(p2->name, m->ops->name))
            return ds_fail(DS_ERR, "model: the FP8 dispatch needs the power-of-two Linear table on the %s backend",
                           m->ops->name);
        m->lin_pow2_tab = *p2;
        m->opts.linear_ops_pow2 = &m->lin_pow2_tab;
    }
    ds_dims_from_config(&m->dims, &m->cfg);
    DS_TRY(ds_rope_init(&m->rope, &m->cfg));
    m->mtp_depth = m->cfg.num_nextn_predict_layers;
    m->n_layers_total = m->cfg.num_hidden_layers + m->mtp_depth;
    m->n_max = m->opts.max_batch * m->opts.max_seq;
    m->wq.key = -1;
    DS_TRY(ep_shape(m));
    m->moe_slot = calloc((size_t)m->n_layers_total + 1, sizeof(int));
    m->tape = calloc((size_t)m->n_layers_total + 1, sizeof(ds_tape));
    m->mtp = calloc((size_t)m->mtp_depth + 1, sizeof(*m->mtp));
    if (!m->moe_slot || !m->tape || !m->mtp) return ds_fail(DS_ERR, "out of memory: model tables");
    set_moe_slots(m);
    return 0;
}

static void free_shape(ds_model *m) {
    free(m->moe_slot);
    free(m->tape);
    free(m->mtp);
}

int ds_model_layout(const ds_config *cfg, ds_param **params, int *count) {
    *params = NULL;
    *count = 0;
    ds_model *m = calloc(1, sizeof *m);
    if (!m) return ds_fail(DS_ERR, "out of memory: model");
    ds_model_opts o = {.max_batch = 1, .max_seq = 1};
    int rc = model_shape(m, cfg, &o);
    if (!rc) rc = ds_params_layout(m, 1); /* the table only: names, shapes, kinds */
    if (!rc) *params = m->params, *count = m->n_params;
    else free(m->params);
    free_shape(m);
    free(m);
    return rc;
}

int ds_model_weight_plan(const ds_config *cfg, const ds_st_set *s, int device, int bf16_copy, ds_weight_bytes *out) {
    memset(out, 0, sizeof *out);
    ds_model *m = calloc(1, sizeof *m);
    if (!m) return ds_fail(DS_ERR, "out of memory: model");
    ds_model_opts o = {.max_batch = 1, .max_seq = 1, .fp8_resident = 1};
    int rc = model_shape(m, cfg, &o);
    if (!rc) rc = ds_params_layout(m, 1);
    if (!rc) { /* the marking ds_model_create does: the table only, nothing allocated */
        ds_model_mark_resident(m, s, device);
        ds_model_weight_bytes(m, bf16_copy, out);
    }
    free(m->params);
    free_shape(m);
    free(m);
    return rc;
}

void ds_model_free(ds_model *m) {
    if (!m) return;
    ds_slots_free(m); /* back to the model's own activations first */
    ds_wgrad_free(m);
    const ds_ops *ops = m->ops;
    if (m->resident_floats) ds_fp8_resident_remove(m->keys ? m->keys : m->w, m->n_floats);
    ds_params_compact_free(m);
    if (ops) {
        ops->free(m->fp8_dev);
        ops->free(m->w);
        ops->free(m->g);
        ops->free(m->ebias);
        ops->free(m->act.base);
    }
    if (m->tape)
        for (int l = 0; l < m->n_layers_total; l++)
            if (m->opts.train || l == 0) free(m->tape[l].off_h);
    free(m->params);
    free(m->W.layer);
    free(m->G.layer);
    free(m->h_i32);
    free(m->h_pos);
    free(m->expert_load);
    free(m->load_off_h);
    free(m->load_pending);
    free(m->bal_rows);
    ds_moe_ep_free(m);
    free_shape(m);
    free(m);
}

int ds_model_create(ds_model **out, const ds_config *cfg, const ds_model_opts *opts) {
    *out = NULL;
    ds_model *m = calloc(1, sizeof *m);
    if (!m) return ds_fail(DS_ERR, "out of memory: model");
    int rc = model_shape(m, cfg, opts);
    if (rc) {
        free_shape(m);
        free(m);
        return rc;
    }
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
#define FAIL(...)                                                                                          \
    do {                                                                                                   \
        rc = ds_fail(DS_ERR, __VA_ARGS__);                                                                 \
        goto fail;                                                                                         \
    } while (0)
    if ((rc = ds_params_layout(m, 1))) goto fail;
    const int on_host = !strcmp(ops->name, "cpu");
    if (m->opts.bf16_resident && !on_host) FAIL("model: bf16-resident weights are held on the CPU, not on %s", ops->name);
    if (m->opts.bf16_resident && m->ep_n > 1) FAIL("model: bf16-resident weights and expert parallelism do not go together");
    if ((m->opts.fp8_resident && m->opts.fp8_tensors) || m->opts.bf16_resident) {
        if (m->opts.linear_ops || m->opts.train)
            FAIL("model: resident (FP8 or bf16) weights are for inference with their own GEMMs (no --w8a8)");
        ds_model_mark_resident(m, m->opts.fp8_tensors, !on_host);
        if (m->bf16_bytes > 0) { /* every product may read a bf16 weight: the resident table is the backend */
            ds_fp8_resident_ops(&m->lin_tab, ops);
            m->ops = m->lin = m->lin_kvb = m->lin_o = &m->lin_tab;
            ops = m->ops;
        } else if (m->resident_floats) { /* the Linear GEMMs read the resident codes; kv_b is never resident */
            if (on_host) ds_fp8_resident_ops(&m->lin_tab, ops);
            /* a device: the parameter buffer leaves the resident weights out (ds_params_compact) */
            else if ((rc = ds_fp8_resident_ops_device(&m->lin_tab, ops)) || (rc = ds_params_compact(m))) goto fail;
            m->lin = &m->lin_tab;
            m->lin_kvb = ops;
        }
    }
    if (m->ep_n > 1) {
        if (!opts->ep_comm) FAIL("model: expert parallelism without its group");
        if ((rc = ds_moe_ep_alloc(m))) goto fail;
        for (int e = 0; opts->ep_node && e < m->ep_n; e++) m->ep_node[e] = opts->ep_node[e];
        if ((rc = ds_moe_ep_set_transport(m, opts->ep_two_hop))) goto fail;
    }
    size_t pbytes = sizeof(float) * m->n_held;
    ds_bump count = {0};
    ds_act_layout(m, &count, m->n_max);
    if (on_host) {
        /* refuse what cannot fit before touching the allocator (the 671B shape on a workstation) */
        double need = (double)(pbytes - sizeof(float) * m->resident_floats) * (m->opts.train ? 2 : 1) + m->fp8_bytes + m->bf16_bytes +
                      (double)count.used;
        double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
        if (have > 0 && need > have)
            FAIL("out of memory: the model needs %.1f GiB (parameters%s and activations), the machine has %.1f GiB",
                 need / 1073741824.0, m->opts.train ? ", gradients" : "", have / 1073741824.0);
    }
    m->w = ops->alloc(pbytes);
    if (!m->w) FAIL("out of memory: %zu bytes of parameters", pbytes);
    ops->params_changed(m->w, m->n_held); /* the backend may keep derived copies (bf16 GEMM operands) */
    if (m->dev_off) { /* the resident weights' codes and scales, one block (ds_model_load_weights places them) */
        m->fp8_dev = ops->alloc((size_t)m->fp8_bytes);
        if (!m->fp8_dev) FAIL("out of memory: %.0f bytes of FP8-resident weights on %s", m->fp8_bytes, ops->name);
    }
    if (!m->resident_floats || m->dev_off) ops->zero(m->w, pbytes);
    else { /* every range but the resident ones: their pages are never touched, so never resident */
        size_t from = 0; /* params are in offset order */
        for (int i = 0; i < m->n_params; i++) {
            const ds_param *p = &m->params[i];
            if (!p->resident) continue;
            if (p->offset > from) ops->zero(m->w + from, sizeof(float) * (p->offset - from));
            from = p->offset + p->numel;
        }
        if (m->n_floats > from) ops->zero(m->w + from, sizeof(float) * (m->n_floats - from));
    }
    if (m->opts.train) {
        m->g = ops->alloc(pbytes);
        if (!m->g) FAIL("out of memory: %zu bytes of gradients", pbytes);
        ops->zero(m->g, pbytes);
    }
    m->W.layer = calloc((size_t)m->n_layers_total + 1, sizeof(ds_layer_w));
    m->G.layer = calloc((size_t)m->n_layers_total + 1, sizeof(ds_layer_w));
    if (!m->W.layer || !m->G.layer) FAIL("out of memory: layer tables");
    ds_params_bind(m, m->w, &m->W);
    if (m->g) ds_params_bind(m, m->g, &m->G);
    if (m->n_moe > 0) {
        size_t bb = sizeof(float) * (size_t)m->n_moe * d->E;
        m->ebias = ops->alloc(bb);
        if (!m->ebias) FAIL("out of memory: expert biases");
        ops->zero(m->ebias, bb);
    }

    m->act.cap = count.used;
    m->act.base = ops->alloc(count.used);
    if (!m->act.base) FAIL("out of memory: %zu bytes of activations for %d tokens", count.used, m->n_max);
    ds_act_layout(m, &m->act, m->n_max);
    if (m->act.used > m->act.cap) FAIL("internal: activation layout changed between passes");
    ops->copy(m->inv_freq_d, m->rope.inv_freq, sizeof(float) * (size_t)(d->dr / 2), DS_COPY_H2D);

    int hn = m->n_max > d->E + 1 ? m->n_max : d->E + 1;
    m->h_i32 = malloc(sizeof(int32_t) * (size_t)hn);
    m->h_pos = malloc(sizeof(int32_t) * (size_t)m->n_max);
    m->expert_load = calloc((size_t)m->n_moe * d->E + 1, sizeof(int32_t));
    m->load_off_h = calloc((size_t)m->n_moe * (d->E + 1) + 1, sizeof(int32_t));
    m->load_pending = calloc((size_t)m->n_moe + 1, 1);
    m->bal_rows = calloc((size_t)(m->n_moe > 0 ? m->n_moe : 1) * m->opts.max_batch, sizeof(float));
    if (!m->h_i32 || !m->h_pos || !m->expert_load || !m->bal_rows || !m->load_off_h || !m->load_pending)
        FAIL("out of memory: host buffers");
    for (int l = 0; l < m->n_layers_total; l++) {
        if (!m->opts.train && l > 0) {
            m->tape[l].off_h = m->tape[0].off_h;
            continue;
        }
        m->tape[l].off_h = calloc((size_t)d->E + 2, sizeof(int64_t));
        if (!m->tape[l].off_h) FAIL("out of memory: host buffers");
    }
    *out = m;
    return 0;
fail:
    ds_model_free(m);
    return rc;
#undef FAIL
}

ds_layer_ctx ds_model_ctx(const ds_model *m) {
    ds_layer_ctx c = {.ops = m->ops,
                      .lin = m->lin,
                      .lin_kvb = m->lin_kvb,
                      .d = &m->dims,
                      .B = m->B,
                      .T = m->T,
                      .n = m->n,
                      .seg = m->cur_seg,
                      .keep = m->cur_keep,
                      .cs = m->cur_cs,
                      .softmax_scale = m->rope.softmax_scale,
                      .attn_ws = m->scr.attn_ws};
    return c;
}

static float *xs_at(ds_model *m, int l) {
    size_t nD = (size_t)m->n * m->dims.D;
    return m->xs + (m->opts.train ? (size_t)l : (size_t)(l % 2)) * nD;
}

float *ds_model_hidden(ds_model *m, int l) {
    if (l < 0 || l > m->cfg.num_hidden_layers) return NULL;
    return xs_at(m, l);
}

float *ds_model_hidden_grad(ds_model *m) { return m->gx; }

/* ---- batch ------------------------------------------------------------------------------------------- */

int ds_model_prepare(ds_model *m, const ds_batch *b) {
    const ds_ops *ops = m->ops;
    int B = b->B, T = b->T, V = m->dims.V;
    if (B <= 0 || T <= 0 || B > m->opts.max_batch || T > m->opts.max_seq)
        return ds_fail(DS_ERR, "batch: %d x %d tokens outside the model's %d x %d", B, T, m->opts.max_batch,
                       m->opts.max_seq);
    if (!b->tokens) return ds_fail(DS_ERR, "batch: no tokens");
    int n = B * T;
    for (int i = 0; i < n; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= V)
            return ds_fail(DS_ERR, "batch: token %d outside [0, %d): row %d, position %d", b->tokens[i], V, i / T,
                           i % T);
        if (b->targets && (b->targets[i] < -1 || b->targets[i] >= V))
            return ds_fail(DS_ERR, "batch: target %d outside [-1, %d): row %d, position %d", b->targets[i], V,
                           i / T, i % T);
        if (b->pos && b->pos[i] < 0)
            return ds_fail(DS_ERR, "batch: negative position %d: row %d, position %d", b->pos[i], i / T, i % T);
    }
    for (int r = 0; b->len && r < B; r++)
        if (b->len[r] < 0 || b->len[r] > T)
            return ds_fail(DS_ERR, "batch: row %d has length %d outside [0, %d]", r, b->len[r], T);
    m->B = B, m->T = T, m->n = n;
    m->has_seg = b->seg != NULL;
    int32_t *h = m->h_i32;
    size_t bytes = sizeof(int32_t) * (size_t)n;
    ops->copy(m->tok, b->tokens, bytes, DS_COPY_H2D);
    if (b->targets) {
        ops->copy(m->tgt, b->targets, bytes, DS_COPY_H2D);
    } else {
        for (int i = 0; i < n; i++) h[i] = -1;
        ops->copy(m->tgt, h, bytes, DS_COPY_H2D);
    }
    if (b->seg) ops->copy(m->seg, b->seg, bytes, DS_COPY_H2D);
    /* positions: given, or 0.. per row, restarting where the segment id changes */
    int32_t *pos = m->h_pos;
    for (int i = 0; i < n; i++) {
        int t = i % T;
        pos[i] = b->pos ? b->pos[i] : (t > 0 && !(b->seg && b->seg[i] != b->seg[i - 1])) ? pos[i - 1] + 1 : 0;
    }
    ops->copy(m->pos, pos, bytes, DS_COPY_H2D);
    ops->rope_table(m->cs, m->pos, n, m->inv_freq_d, m->rope.half, m->rope.cos_scale);
    m->T_main = T;
    /* a stage that starts past layer 0 counts its own layers' statistics for this micro-batch only */
    m->bal_loss = 0.0;
    memset(m->expert_load, 0, sizeof(int32_t) * (size_t)m->n_moe * m->dims.E);
    memset(m->load_pending, 0, (size_t)m->n_moe);
    m->cur_seg = b->seg ? m->seg : NULL;
    m->cur_cs = m->cs;
    /* routed positions: every one unless the batch has padding or MTP modules see sample boundaries (the
     * layers then get no keep at all) */
    m->has_pad = 0;
    for (int r = 0; b->len && r < B; r++) m->has_pad |= b->len[r] < T;
    for (int i = 1; m->mtp_depth > 0 && b->seg && i < n; i++) m->has_pad |= i % T && b->seg[i] != b->seg[i - 1];
    if (m->has_pad) {
        for (int i = 0; i < n; i++) h[i] = !b->len || i % T < b->len[i / T];
        ops->copy(m->keep, h, bytes, DS_COPY_H2D);
        ops->sync(); /* h is reused */
    }
    m->cur_keep = m->has_pad ? m->keep : NULL;

    /* MTP module k (1-based) at position t < T-k of row r: input token t+k, target targets[t+k] (none when
     * t+k is in another segment), t's segment and position, and whether it is routed: t+k in t's segment
     * and no padding (positions without a next-k token carry nothing; they only exist to keep rows equal) */
    for (int j = 0; j < m->mtp_depth; j++) m->mtp[j].logp = m->mtp_logp + (size_t)j * n;
    for (int j = 0; j < m->mtp_depth; j++) {
        struct mtp_act *a = &m->mtp[j];
        int k = j + 1, Tk = T - k;
        if (Tk <= 0) break;
        size_t nk = (size_t)B * Tk, kb = sizeof(int32_t) * nk;
        for (int field = 0; field < (m->has_pad ? 5 : 4); field++) {
            for (int r = 0; r < B; r++)
                for (int t = 0; t < Tk; t++) {
                    int i = r * T + t, s = i + k;
                    int ok = !(b->seg && b->seg[s] != b->seg[i]);
                    int32_t v;
                    if (field == 0) v = ok ? b->tokens[s] : -1;
                    else if (field == 1) v = ok && b->targets ? b->targets[s] : -1;
                    else if (field == 2) v = b->seg ? b->seg[i] : 0;
                    else if (field == 3) v = pos[i];
                    else v = ok && (!b->len || t + k < b->len[r]);
                    h[r * Tk + t] = v;
                }
            int32_t *dst = field == 0 ? a->tok : field == 1 ? a->tgt : field == 2 ? a->seg : field == 3 ? a->pos : a->keep;
            ops->copy(dst, h, kb, DS_COPY_H2D);
            ops->sync(); /* h is reused */
        }
        ops->rope_table(a->cs, a->pos, (int)nk, m->inv_freq_d, m->rope.half, m->rope.cos_scale);
    }
    m->have_fwd = 0;
    return 0;
}

/* ---- forward ------------------------------------------------------------------------------------------- */

int ds_model_embed_fwd(ds_model *m) {
    int pr = ds_prof_enter(DS_PROF_EMBED);
    m->ops->embed_fwd(xs_at(m, 0), m->W.embed, m->tok, m->n, m->dims.D);
    ds_prof_leave(pr);
    return 0;
}

int ds_model_layers_fwd(ds_model *m, int l0, int l1) {
    if (l0 < 0 || l1 > m->cfg.num_hidden_layers || l0 > l1)
        return ds_fail(DS_ERR, "model: layer range [%d, %d) outside [0, %d)", l0, l1, m->cfg.num_hidden_layers);
    if (l0 == 0) {
        m->bal_loss = 0.0;
        memset(m->expert_load, 0, sizeof(int32_t) * (size_t)m->n_moe * m->dims.E);
        memset(m->load_pending, 0, (size_t)m->n_moe);
    }
    for (int l = l0; l < l1; l++) {
        DS_TRY(ds_layer_fwd(m, l, xs_at(m, l), xs_at(m, l + 1)));
        if (m->poll) m->poll(m->poll_ctx);
    }
    m->have_fwd = m->opts.train;
    return 0;
}

/* Run the layer functions on MTP module j's compact geometry (rows of T-k) until mtp_leave. */
static void mtp_enter(ds_model *m, int j) {
    int Tk = m->T_main - (j + 1);
    m->T = Tk;
    m->n = m->B * Tk;
    m->cur_seg = m->has_seg ? m->mtp[j].seg : NULL;
    m->cur_keep = m->has_pad ? m->mtp[j].keep : NULL;
    m->cur_cs = m->mtp[j].cs;
}

static void mtp_leave(ds_model *m) {
    m->T = m->T_main;
    m->n = m->B * m->T_main;
    m->cur_seg = m->has_seg ? m->seg : NULL;
    m->cur_keep = m->has_pad ? m->keep : NULL;
    m->cur_cs = m->cs;
}

/* hprev: the previous module's states (the main model's for j = 0), rows of Tprev = Tk + 1 positions;
 * module j reads the first Tk of each row. */
static int mtp_fwd(ds_model *m, int j, const float *hprev) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    int l = m->cfg.num_hidden_layers + j, D = d->D, B = m->B, Tk = m->T_main - (j + 1), Tprev = Tk + 1;
    const ds_layer_w *w = &m->W.layer[l];
    struct mtp_act *a = &m->mtp[j];
    mtp_enter(m, j);
    int n = m->n, pr = ds_prof_enter(DS_PROF_MTP);
    ops->embed_fwd(a->e, m->W.embed, a->tok, n, D);
    ops->rmsnorm_fwd(a->en, D, a->rstd_e, a->e, D, w->enorm, n, D, d->eps);
    for (int r = 0; r < B; r++)
        ops->rmsnorm_fwd(a->hn + (size_t)r * Tk * D, D, a->rstd_h + (size_t)r * Tk, hprev + (size_t)r * Tprev * D, D,
                         w->hnorm, Tk, D, d->eps);
    /* eh_proj [D, 2D]: columns [0, D) take enorm(emb), [D, 2D) take hnorm(h) (spec 6.1, vLLM order) */
    ops->gemm(0, 1, n, D, D, 1.0f, a->en, D, w->eh_proj, 2 * D, 0.0f, a->hp, D);
    ops->gemm(0, 1, n, D, D, 1.0f, a->hn, D, w->eh_proj + D, 2 * D, 1.0f, a->hp, D);
    int rc = ds_layer_fwd(m, l, a->hp, a->hk);
    if (!rc) {
        ops->rmsnorm_fwd(a->hkn, D, a->rstd_k, a->hk, D, w->head_norm, n, D, d->eps);
        ds_head_fwd(m, a->hkn, a->tgt, n, a->logp_c, a->lse, NULL, NULL);
    }
    ds_prof_leave(pr);
    mtp_leave(m);
    /* log-probs back into [B][T], 0 for the last k positions of each row */
    ops->zero(a->logp, sizeof(float) * (size_t)B * m->T_main);
    ops->copy2d(a->logp, m->T_main, a->logp_c, Tk, B, Tk);
    return rc;
}

static int mtp_active(const ds_model *m, int j) { return m->T_main - (j + 1) > 0; }

int ds_model_head_fwd(ds_model *m, ds_fwd_out *out) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    int L = m->cfg.num_hidden_layers, n = m->n;
    int pr = ds_prof_enter(DS_PROF_HEAD);
    ops->rmsnorm_fwd(m->hf, d->D, m->rstd_f, xs_at(m, L), d->D, m->W.final_norm, n, d->D, d->eps);
    ds_prof_leave(pr);
    ds_head_fwd(m, m->hf, m->tgt, n, m->logp, m->lse, m->ent, m->logits);
    const float *hprev = m->hf; /* h^0: the main model's output after the final norm (docs/DESIGN.md) */
    for (int j = 0; j < m->mtp_depth; j++) {
        if (!mtp_active(m, j)) {
            ops->zero(m->mtp[j].logp, sizeof(float) * (size_t)n);
            continue;
        }
        DS_TRY(mtp_fwd(m, j, hprev));
        hprev = m->mtp[j].hk;
    }
    ops->sync();
    ds_moe_stats_sync(m);
    m->have_fwd = m->opts.train;
    if (out) {
        memset(out, 0, sizeof *out);
        out->logp = m->logp;
        out->mtp_logp = m->mtp_depth > 0 ? m->mtp_logp : NULL;
        out->entropy = m->ent;
        out->logits = m->logits;
        out->bal_loss = m->bal_loss;
        out->expert_load = m->expert_load;
        out->n_moe_layers = m->n_moe;
    }
    return 0;
}

int ds_model_forward(ds_model *m, const ds_batch *b, ds_fwd_out *out) {
    DS_TRY(ds_model_prepare(m, b));
    DS_TRY(ds_model_embed_fwd(m));
    DS_TRY(ds_model_layers_fwd(m, 0, m->cfg.num_hidden_layers));
    return ds_model_head_fwd(m, out);
}

/* ---- backward ------------------------------------------------------------------------------------------ */

/* the first failure of an expert-parallel exchange inside the (void) layer backward, cleared */
static int ep_status(ds_model *m) {
    int rc = m->ep_rc;
    m->ep_rc = 0;
    return rc;
}

/* gh of module j holds d(loss)/d(its layer output) from module j+1 on entry; ghprev (rows of Tk + 1)
 * receives d(loss)/d(hprev). dlogp: [B][T]. */
static void mtp_bwd(ds_model *m, int j, const float *hprev, float *ghprev, const float *dlogp) {
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    int l = m->cfg.num_hidden_layers + j, D = d->D, B = m->B, Tk = m->T_main - (j + 1), Tprev = Tk + 1;
    const ds_layer_w *w = &m->W.layer[l];
    ds_layer_w *gw = &m->G.layer[l];
    struct mtp_act *a = &m->mtp[j];
    float *t = m->scr.tmpD, *dn = m->scr.dxn;
    int pr = ds_prof_enter(DS_PROF_MTP);
    ops->copy2d(a->dlogp_c, Tk, dlogp, m->T_main, B, Tk);
    mtp_enter(m, j);
    int n = m->n;
    ds_head_bwd(m, a->hkn, a->tgt, n, a->lse, a->dlogp_c, t, NULL);
    ops->rmsnorm_bwd(a->gh, D, gw->head_norm, t, D, a->hk, D, w->head_norm, a->rstd_k, n, D);
    ds_layer_bwd(m, l, a->hp, a->gh);
    /* eh_proj: gh is now d(loss)/d(hp) */
    ds_wgrad_gemm(m, ops, 1, 0, D, D, n, a->gh, D, a->en, D, gw->eh_proj, 2 * D);
    ds_wgrad_gemm(m, ops, 1, 0, D, D, n, a->gh, D, a->hn, D, gw->eh_proj + D, 2 * D);
    ops->gemm(0, 0, n, D, D, 1.0f, a->gh, D, w->eh_proj, 2 * D, 0.0f, dn, D);
    ops->zero(t, sizeof(float) * (size_t)n * D);
    ops->rmsnorm_bwd(t, D, gw->enorm, dn, D, a->e, D, w->enorm, a->rstd_e, n, D);
    ds_wgrad_embed(m, m->G.embed, t, a->tok, n, D);
    ops->gemm(0, 0, n, D, D, 1.0f, a->gh, D, w->eh_proj + D, 2 * D, 0.0f, dn, D);
    mtp_leave(m);
    for (int r = 0; r < B; r++)
        ops->rmsnorm_bwd(ghprev + (size_t)r * Tprev * D, D, gw->hnorm, dn + (size_t)r * Tk * D, D,
                         hprev + (size_t)r * Tprev * D, D, w->hnorm, a->rstd_h + (size_t)r * Tk, Tk, D);
    ds_prof_leave(pr);
}

int ds_model_head_bwd(ds_model *m, const float *dlogp, const float *dmtp) {
    if (!m->have_fwd) return ds_fail(DS_ERR, "model: backward without a training forward");
    const ds_ops *ops = m->ops;
    const ds_dims *d = &m->dims;
    int L = m->cfg.num_hidden_layers, n = m->n, D = d->D;
    size_t nD = (size_t)n * D;
    ds_head_bwd(m, m->hf, m->tgt, n, m->lse, dlogp, m->ghf, m->logits);
    if (dmtp) {
        for (int j = 0; j < m->mtp_depth; j++) ops->zero(m->mtp[j].gh, sizeof(float) * nD);
        for (int j = m->mtp_depth - 1; j >= 0; j--)
            if (mtp_active(m, j))
                mtp_bwd(m, j, j ? m->mtp[j - 1].hk : m->hf, j ? m->mtp[j - 1].gh : m->ghf, dmtp + (size_t)j * n);
    }
    int pr = ds_prof_enter(DS_PROF_HEAD);
    ops->zero(m->gx, sizeof(float) * nD);
    ops->rmsnorm_bwd(m->gx, D, m->G.final_norm, m->ghf, D, xs_at(m, L), D, m->W.final_norm, m->rstd_f, n, D);
    ds_prof_leave(pr);
    int rc = ep_status(m);
    return rc ? rc : ds_wgrad_status(m);
}

int ds_model_layers_bwd(ds_model *m, int l0, int l1) {
    if (!m->have_fwd) return ds_fail(DS_ERR, "model: backward without a training forward");
    if (l0 < 0 || l1 > m->cfg.num_hidden_layers || l0 > l1)
        return ds_fail(DS_ERR, "model: layer range [%d, %d) outside [0, %d)", l0, l1, m->cfg.num_hidden_layers);
    for (int l = l1 - 1; l >= l0; l--) {
        ds_layer_bwd(m, l, xs_at(m, l), m->gx);
        if (m->poll) m->poll(m->poll_ctx);
    }
    int rc = ep_status(m);
    return rc ? rc : ds_wgrad_status(m);
}

int ds_model_embed_bwd(ds_model *m) {
    if (!m->have_fwd) return ds_fail(DS_ERR, "model: backward without a training forward");
    int pr = ds_prof_enter(DS_PROF_EMBED);
    ds_wgrad_embed(m, m->G.embed, m->gx, m->tok, m->n, m->dims.D);
    ds_prof_leave(pr);
    return ds_wgrad_status(m);
}

int ds_model_backward(ds_model *m, const ds_batch *b, const float *dlogp, const float *dmtp) {
    if (!m->opts.train) return ds_fail(DS_ERR, "model: backward on a model created without train");
    if (!m->have_fwd || b->B != m->B || b->T != m->T)
        return ds_fail(DS_ERR, "model: backward needs the forward of the same batch first");
    DS_TRY(ds_model_head_bwd(m, dlogp, dmtp));
    DS_TRY(ds_model_layers_bwd(m, 0, m->cfg.num_hidden_layers));
    DS_TRY(ds_model_embed_bwd(m));
    m->ops->sync();
    return 0;
}

/* ---- memory plan ------------------------------------------------------------------------------------- */

int ds_model_plan(const ds_config *cfg, const ds_model_opts *opts, ds_mem_plan *out) {
    memset(out, 0, sizeof *out);
    ds_model m0 = {0}, *m = &m0;
    int rc = model_shape(m, cfg, opts);
    if (!rc) rc = ds_params_layout(m, 1);
    if (!rc) {
        int L = m->cfg.num_hidden_layers;
        for (int i = 0; i < m->n_params; i++) {
            const ds_param *p = &m->params[i];
            if (p->layer >= L)
                out->n_params_mtp += (int64_t)p->numel;
            else
                out->n_params_main += (int64_t)p->numel;
        }
        out->n_params = (int64_t)m->n_floats;
        out->n_tensors = m->n_params;
        out->n_expert_bias = (int64_t)m->n_moe * m->dims.E;
        out->params_bytes = sizeof(float) * (m->n_floats + (size_t)out->n_expert_bias);
        if (m->opts.train) {
            out->grads_bytes = sizeof(float) * m->n_floats;
            out->optimizer_bytes = 2 * sizeof(float) * m->n_floats;
        }
        ds_bump count = {0};
        ds_act_layout(m, &count, m->n_max);
        out->activation_bytes = count.used;
        out->total_bytes = out->params_bytes + out->grads_bytes + out->optimizer_bytes + out->activation_bytes;
    }
    free(m->params);
    free_shape(m);
    return rc;
}

void ds_model_fwd_stats(ds_model *m, ds_fwd_out *out) {
    ds_moe_stats_sync(m);
    memset(out, 0, sizeof *out);
    out->bal_loss = m->bal_loss;
    out->expert_load = m->expert_load;
    out->n_moe_layers = m->n_moe;
}

void ds_model_set_poll(ds_model *m, void (*fn)(void *ctx), void *ctx) {
    m->poll = fn;
    m->poll_ctx = ctx;
}

void ds_model_set_balance_alpha(ds_model *m, double alpha) { m->opts.balance_alpha = alpha; }
