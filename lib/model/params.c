/* The parameter layout: one contiguous fp32 buffer in Hugging Face tensor names (spec 9.2), the same
 * layout for the gradients, pointers per layer, and weight init.
 *
 * Order: embedding, main layers 0..L-1, final norm, lm_head, then the MTP modules (layers L..L+D-1), so
 * the main model is a prefix and each layer's tensors are contiguous (pipeline stages own whole ranges).
 * Routed experts of a layer are stored as three blocks [E][Ie, D] (gate), [E][Ie, D] (up), [E][D, Ie]
 * (down), one table entry per expert and matrix. With expert parallelism (model.h opts.ep_size > 1) a
 * rank holds only its experts [e0, e0 + ne) and every layer's three blocks of them move to the end of
 * the buffer, in layer order: the replicated tensors are the prefix [0, expert_off). A pipeline stage
 * (opts.hold) leaves out every tensor of the layers it does not hold: the same walk, filtered, so a
 * stage's buffer is its tensors in the same order. */
#include "model/internal.h"

#include "core/err.h"
#include "core/rng.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef struct {
    ds_model *m;
    size_t off;     /* running offset in floats */
    int count;
    ds_weights *W;  /* bind pointers into `base` when set */
    float *base;
    int experts;    /* expert parallelism: 0 = every tensor but the routed experts, 1 = those only */
    int compact;    /* binding the parameters of a compact (GPU FP8-resident) layout: ds_param_ptr */
} walker;

static void emit(walker *k, float **slot, int layer, int expert, ds_param_kind kind, int64_t rows, int64_t cols,
                 const char *fmt, ...) DS_PRINTF(8, 9);

/* Parameter i (at offset `off` of the full layout) in m's parameter buffer, or its key (ds_params_compact). */
static float *param_at(const ds_model *m, int i, size_t off) {
    if (!m->dev_off) return m->w + off;
    return m->dev_off[i] == SIZE_MAX ? m->keys + off : m->w + m->dev_off[i];
}

static void emit(walker *k, float **slot, int layer, int expert, ds_param_kind kind, int64_t rows, int64_t cols,
                 const char *fmt, ...) {
    size_t numel = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    if (!ds_model_holds(k->m, layer, kind == DS_PARAM_EMBED)) return;
    if (k->m->params) {
        ds_param *p = &k->m->params[k->count];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->name, sizeof p->name, fmt, ap);
        va_end(ap);
        p->ndim = cols > 0 ? 2 : 1;
        p->shape[0] = rows;
        p->shape[1] = cols > 0 ? cols : 0;
        p->offset = k->off;
        p->numel = numel;
        p->kind = kind;
        p->layer = layer;
        p->expert = expert;
    }
    if (k->W && slot && expert <= k->m->e0) /* the first (local) expert */
        *slot = k->compact ? param_at(k->m, k->count, k->off) : k->base + k->off;
    k->off += numel;
    k->count++;
}

#define LW(field) (k->W ? &k->W->layer[l].field : NULL)

/* the routed experts of layer l this rank holds: [e0, e0 + ne), all of them without expert parallelism */
static void walk_experts(walker *k, int l) {
    const ds_model *m = k->m;
    const ds_dims *d = &m->dims;
    const int64_t D = d->D;
    int e1 = m->e0 + m->ne;
    for (int e = m->e0; e < e1; e++)
        emit(k, LW(exp_gate), l, e, DS_PARAM_MATRIX, d->Ie, D, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e);
    for (int e = m->e0; e < e1; e++)
        emit(k, LW(exp_up), l, e, DS_PARAM_MATRIX, d->Ie, D, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e);
    for (int e = m->e0; e < e1; e++)
        emit(k, LW(exp_down), l, e, DS_PARAM_MATRIX, D, d->Ie, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e);
}

static void walk_layer(walker *k, int l) {
    ds_model *m = k->m;
    if (k->experts) { /* expert parallelism's second pass: the local experts of every MoE layer */
        if (m->moe_slot[l] >= 0) walk_experts(k, l);
        return;
    }
    const ds_dims *d = &m->dims;
    int L = m->cfg.num_hidden_layers, mtp = l >= L;
    const int64_t D = d->D, H = d->H;
#define P(field, kind, r, c, name) emit(k, LW(field), l, -1, kind, r, c, "model.layers.%d." name, l)
    if (mtp) {
        P(enorm, DS_PARAM_NORM, D, 0, "enorm.weight");
        P(hnorm, DS_PARAM_NORM, D, 0, "hnorm.weight");
        P(eh_proj, DS_PARAM_MATRIX, D, 2 * D, "eh_proj.weight");
    }
    P(attn_norm, DS_PARAM_NORM, D, 0, "input_layernorm.weight");
    if (d->Rq > 0) {
        P(q_a, DS_PARAM_MATRIX, d->Rq, D, "self_attn.q_a_proj.weight");
        P(q_a_norm, DS_PARAM_NORM, d->Rq, 0, "self_attn.q_a_layernorm.weight");
        P(q_b, DS_PARAM_MATRIX, H * d->dqk, d->Rq, "self_attn.q_b_proj.weight");
    } else {
        P(q, DS_PARAM_MATRIX, H * d->dqk, D, "self_attn.q_proj.weight");
    }
    P(kv_a, DS_PARAM_MATRIX, d->Rkv + d->dr, D, "self_attn.kv_a_proj_with_mqa.weight");
    P(kv_a_norm, DS_PARAM_NORM, d->Rkv, 0, "self_attn.kv_a_layernorm.weight");
    P(kv_b, DS_PARAM_MATRIX, H * (d->dn + d->dv), d->Rkv, "self_attn.kv_b_proj.weight");
    P(o, DS_PARAM_MATRIX, D, H * d->dv, "self_attn.o_proj.weight");
    P(ffn_norm, DS_PARAM_NORM, D, 0, "post_attention_layernorm.weight");
    if (m->moe_slot[l] < 0) {
        P(w_gate, DS_PARAM_MATRIX, d->I, D, "mlp.gate_proj.weight");
        P(w_up, DS_PARAM_MATRIX, d->I, D, "mlp.up_proj.weight");
        P(w_down, DS_PARAM_MATRIX, D, d->I, "mlp.down_proj.weight");
    } else {
        if (!k->experts) P(router, DS_PARAM_ROUTER, d->E, D, "mlp.gate.weight");
        if (k->experts == (m->ep_n > 1)) walk_experts(k, l);
        if (!k->experts && d->Is > 0) {
            P(sh_gate, DS_PARAM_MATRIX, d->Is, D, "mlp.shared_experts.gate_proj.weight");
            P(sh_up, DS_PARAM_MATRIX, d->Is, D, "mlp.shared_experts.up_proj.weight");
            P(sh_down, DS_PARAM_MATRIX, D, d->Is, "mlp.shared_experts.down_proj.weight");
        }
    }
    if (mtp) P(head_norm, DS_PARAM_NORM, D, 0, "shared_head.norm.weight");
#undef P
}

static void walk(walker *k) {
    ds_model *m = k->m;
    const ds_dims *d = &m->dims;
    int L = m->cfg.num_hidden_layers;
    emit(k, k->W ? &k->W->embed : NULL, -1, -1, DS_PARAM_EMBED, d->V, d->D, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) walk_layer(k, l);
    emit(k, k->W ? &k->W->final_norm : NULL, -1, -1, DS_PARAM_NORM, d->D, 0, "model.norm.weight");
    emit(k, k->W ? &k->W->head : NULL, -1, -1, DS_PARAM_HEAD, d->V, d->D, "lm_head.weight");
    for (int l = L; l < m->n_layers_total; l++) walk_layer(k, l);
    m->expert_off = k->off;
    if (m->ep_n <= 1) return;
    /* expert parallelism: the rank's routed experts after everything replicated, so they form one
     * contiguous range (their own parameter group, reduced over the ranks holding the same experts) */
    k->experts = 1;
    for (int l = 0; l < m->n_layers_total; l++) walk_layer(k, l);
    k->experts = 0;
}

int ds_model_holds(const ds_model *m, int layer, int embed) {
    const ds_model_hold *h = &m->opts.hold;
    if (!h->on) return 1;
    if (layer < 0) return embed ? h->embed : h->head;
    if (layer >= m->cfg.num_hidden_layers) return h->head; /* the MTP modules */
    for (int c = 0; c < 2; c++)
        if (layer >= h->l0[c] && layer < h->l1[c]) return 1;
    return 0;
}

int ds_model_holds_name(const ds_model *m, const char *name) {
    int layer;
    if (!strncmp(name, "model.embed_tokens.", 19)) return ds_model_holds(m, -1, 1);
    if (!strncmp(name, "model.norm.", 11) || !strncmp(name, "lm_head.", 8)) return ds_model_holds(m, -1, 0);
    if (sscanf(name, "model.layers.%d.", &layer) == 1) return ds_model_holds(m, layer, 0);
    return 1;
}

int ds_params_layout(ds_model *m, int alloc) {
    walker k = {.m = m};
    m->params = NULL;
    walk(&k);
    m->n_params = k.count;
    m->n_floats = k.off;
    m->n_held = k.off;
    if (!alloc) return 0;
    m->params = calloc((size_t)k.count, sizeof(ds_param));
    if (!m->params) return ds_fail(DS_ERR, "out of memory: parameter table of %d tensors", k.count);
    walker k2 = {.m = m};
    walk(&k2);
    return 0;
}

void ds_params_bind(ds_model *m, float *base, ds_weights *out) {
    ds_param *saved = m->params;
    m->params = NULL; /* the table is already filled: bind only */
    walker k = {.m = m, .W = out, .base = base, .compact = m->dev_off && base == m->w};
    walk(&k);
    m->params = saved;
}

float *ds_param_ptr(const ds_model *m, int i) { return param_at(m, i, m->params[i].offset); }

int ds_params_compact(ds_model *m) {
    m->dev_off = malloc(sizeof(size_t) * (size_t)(m->n_params > 0 ? m->n_params : 1));
    if (!m->dev_off) return ds_fail(DS_ERR, "out of memory: parameter table");
    size_t held = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ds_param *p = &m->params[i];
        m->dev_off[i] = p->resident ? SIZE_MAX : held;
        if (!p->resident) held += p->numel;
    }
    m->n_held = held;
    /* address space only (PROT_NONE, no reserve): with unified addressing no device allocation lands here */
    void *k = mmap(NULL, sizeof(float) * m->n_floats, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (k == MAP_FAILED) return ds_fail(DS_ERR, "cannot reserve %zu bytes of address space for FP8-resident weights",
                                        sizeof(float) * m->n_floats);
    m->keys = k;
    return DS_OK;
}

void ds_params_compact_free(ds_model *m) {
    if (m->keys) munmap(m->keys, sizeof(float) * m->n_floats);
    m->keys = NULL;
    free(m->dev_off);
    m->dev_off = NULL;
    m->n_held = m->n_floats;
}

int ds_model_init(ds_model *m, uint64_t seed) {
    if (m->resident_floats) return ds_fail(DS_ERR, "model: resident (FP8 or bf16) weights come from a checkpoint, not from an init");
    float std = m->cfg.ds_init_std > 0 ? (float)m->cfg.ds_init_std : 0.006f;
    const ds_ops *ops = m->ops;
    int on_host = !strcmp(ops->name, "cpu");
    float *stage = NULL;
    size_t stage_n = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ds_param *p = &m->params[i];
        float *dst = m->w + p->offset, *buf = dst;
        if (!on_host) {
            if (p->numel > stage_n) {
                free(stage);
                stage_n = p->numel;
                stage = malloc(sizeof(float) * stage_n);
                if (!stage) return ds_fail(DS_ERR, "out of memory: init staging of %zu floats", stage_n);
            }
            buf = stage;
        }
        if (p->kind == DS_PARAM_NORM) {
            for (size_t j = 0; j < p->numel; j++) buf[j] = 1.0f;
        } else {
            ds_randn_fill(buf, p->numel, seed, ds_stream_id(p->name), std);
        }
        if (!on_host) ops->copy(dst, buf, sizeof(float) * p->numel, DS_COPY_H2D);
    }
    free(stage);
    if (m->ebias) ops->zero(m->ebias, sizeof(float) * (size_t)m->n_moe * m->dims.E);
    ops->params_changed(m->w, m->n_floats);
    return 0;
}

const ds_param *ds_model_params_info(const ds_model *m, int *count) {
    if (count) *count = m->n_params;
    return m->params;
}
float *ds_model_params(ds_model *m) { return m->w; }
float *ds_model_grads(ds_model *m) { return m->g; }
size_t ds_model_num_params(const ds_model *m) { return m->n_floats; }
const ds_weights *ds_model_weights(const ds_model *m) { return &m->W; }
const ds_weights *ds_model_grad_weights(const ds_model *m) { return m->g ? &m->G : NULL; }
int ds_model_mtp_depth(const ds_model *m) { return m->mtp_depth; }
const ds_config *ds_model_config(const ds_model *m) { return &m->cfg; }
const struct ds_ops *ds_model_ops(const ds_model *m) { return m->ops; }
const struct ds_ops *ds_model_linear_ops(const ds_model *m) { return m->lin; }

void ds_model_weight_memory(const ds_model *m, double *fp32_bytes, double *fp8_bytes) {
    *fp32_bytes = (double)sizeof(float) * (double)(m->n_floats - m->resident_floats + (size_t)m->n_moe * m->dims.E);
    *fp8_bytes = m->fp8_bytes + m->bf16_bytes;
}

void ds_model_weight_bytes(const ds_model *m, int bf16_copy, ds_weight_bytes *out) {
    const double held = (double)(m->n_floats - m->resident_floats), bias = (double)m->n_moe * m->dims.E;
    out->fp32 = sizeof(float) * (held + bias);
    out->bf16 = bf16_copy ? 2.0 * held : 0;
    out->fp8 = m->fp8_bytes;
    out->bf16w = m->bf16_bytes;
    out->bf16_mapped = m->bf16_mapped;
    out->expanded = sizeof(float) * ((double)m->n_floats + bias) + (bf16_copy ? 2.0 * (double)m->n_floats : 0);
    out->resident = 0;
    for (int i = 0; i < m->n_params; i++) out->resident += m->params[i].resident;
}

float *ds_model_expert_bias(ds_model *m, int layer) {
    if (layer < 0 || layer >= m->n_layers_total || m->moe_slot[layer] < 0) return NULL;
    return m->ebias + (size_t)m->moe_slot[layer] * m->dims.E;
}

void ds_model_zero_grad(ds_model *m) {
    if (m->g) m->ops->zero(m->g, sizeof(float) * m->n_floats);
}
