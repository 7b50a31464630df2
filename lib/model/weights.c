/* Loading and saving the network's weights by Hugging Face tensor names. */
#include "model/weights.h"

#include "core/err.h"
#include "core/log.h"
#include "fp8/quant.h"
#include "fp8/resident.h"
#include "model/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names of the checkpoint tensors a load used, to report the rest. */
typedef struct {
    const char **v;
    size_t n, cap;
} used_set;

static void use(used_set *u, const char *name) {
    if (u->n == u->cap) {
        size_t cap = u->cap ? 2 * u->cap : 256;
        const char **v = realloc(u->v, sizeof(char *) * cap);
        if (!v) return; /* only the report suffers */
        u->v = v, u->cap = cap;
    }
    u->v[u->n++] = name;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Warn about checkpoint tensors the model did not take (a config that does not match the file). */
static void report_unused(const ds_model *m, const ds_st_set *s, used_set *u) {
    qsort(u->v, u->n, sizeof(char *), cmp_str);
    int unused = 0;
    const char *first = NULL;
    for (int i = 0; i < ds_st_set_count(s); i++) {
        const char *name = ds_st_set_tensor_at(s, i)->name;
        if (bsearch(&name, u->v, u->n, sizeof(char *), cmp_str)) continue;
        /* the released MTP layer's copies of the shared embedding and head */
        if (strstr(name, ".embed_tokens.weight") && strncmp(name, "model.embed", 11)) continue;
        if (strstr(name, ".shared_head.head.weight")) continue;
        int layer, e; /* expert parallelism: the other ranks' experts */
        if (m->ep_n > 1 && sscanf(name, "model.layers.%d.mlp.experts.%d.", &layer, &e) == 2 && (e < m->e0 || e >= m->e0 + m->ne))
            continue;
        if (!ds_model_holds_name(m, name)) continue; /* a pipeline stage: the other stages' tensors */
        if (!first) first = name;
        unused++;
    }
    if (unused) ds_warn("checkpoint: %d tensors not used by this configuration (first: %s)", unused, first);
}

/* Host staging for a backend that is not the CPU (the CPU reads straight into the buffer). */
typedef struct {
    const ds_ops *ops;
    int on_host;
    float *buf;
    size_t cap;
} staging;

static float *stage_for(staging *st, float *dst, size_t n) {
    if (st->on_host) return dst;
    if (n > st->cap) {
        free(st->buf);
        st->buf = malloc(sizeof(float) * n);
        st->cap = st->buf ? n : 0;
    }
    return st->buf;
}

static void stage_done(staging *st, float *dst, const float *src, size_t n) {
    if (!st->on_host) st->ops->copy(dst, src, sizeof(float) * n, DS_COPY_H2D);
}

static int shape_error(const ds_st_set *s, const ds_st_tensor *t, int ndim, const int64_t *shape) {
    char got[96], want[96];
    ds_st_shape_str(t, got, sizeof got);
    int k = snprintf(want, sizeof want, "[");
    for (int i = 0; i < ndim && k < (int)sizeof want; i++)
        k += snprintf(want + k, sizeof want - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    snprintf(want + k, sizeof want - k, "]");
    return ds_fail(DS_ERR, "checkpoint: %s: shape %s, expected %s: %s", t->name, got, want,
                   ds_st_set_file_of(s, t->name));
}

/* The block shape of the checkpoint's FP8 weights (config.json quantization_config, else 128x128). */
static void block_shape(const ds_model *m, int64_t *br, int64_t *bc) {
    const ds_quant_config *q = &m->cfg.quantization_config;
    *br = q->enabled && q->weight_block_size[0] > 0 ? q->weight_block_size[0] : 128;
    *bc = q->enabled && q->weight_block_size[1] > 0 ? q->weight_block_size[1] : 128;
}

/* The block-scale grid of an F8_E4M3 weight t: its <name>_scale_inv (checked against the grid) read as
 * float32 into *scale (malloc'd), the block shape in *br, *bc. */
static int fp8_scales(const ds_model *m, const ds_st_set *s, const ds_st_tensor *t, used_set *u, float **scale,
                      int64_t *br, int64_t *bc) {
    char sname[160];
    snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
    const ds_st_tensor *sc = ds_st_set_find(s, sname);
    *scale = NULL;
    if (!sc) return ds_fail(DS_ERR, "checkpoint: %s: F8_E4M3 without %s: %s", t->name, sname, ds_st_set_file_of(s, t->name));
    if (u) use(u, sc->name);
    int64_t rows = t->shape[0], cols = t->ndim > 1 ? t->shape[1] : 1;
    block_shape(m, br, bc);
    int64_t want[2] = {(rows + *br - 1) / *br, (cols + *bc - 1) / *bc};
    if (!ds_st_shape_is(sc, 2, want)) return shape_error(s, sc, 2, want);
    *scale = malloc(sizeof(float) * (size_t)(want[0] * want[1]));
    if (!*scale) return ds_fail(DS_ERR, "out of memory: reading %s", sname);
    int rc = ds_st_read_f32(sc, *scale, ds_st_set_file_of(s, sname));
    if (rc) {
        free(*scale);
        *scale = NULL;
    }
    return rc;
}

/* Read tensor t (shape already checked) as float32 into out; FP8 weights use their block scales. */
static int read_f32(const ds_model *m, const ds_st_set *s, const ds_st_tensor *t, float *out, used_set *u) {
    const char *file = ds_st_set_file_of(s, t->name);
    use(u, t->name);
    char sname[160];
    snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
    if (t->dtype == DS_F8_E5M2 && ds_st_set_find(s, sname)) /* unscaled E5M2 reads as its values; DeepSeek block-scales E4M3 only */
        return ds_fail(DS_ERR, "checkpoint: %s: F8_E5M2 with block scales: only F8_E4M3 weights are block-scaled: %s",
                       t->name, file);
    if (t->dtype != DS_F8_E4M3) return ds_st_read_f32(t, out, file);
    float *scale;
    int64_t br, bc;
    DS_TRY(fp8_scales(m, s, t, u, &scale, &br, &bc));
    uint8_t *codes = malloc((size_t)t->numel);
    int rc = !codes ? ds_fail(DS_ERR, "out of memory: reading %s", t->name) : 0;
    if (!rc) {
        memcpy(codes, t->data, (size_t)t->numel);
        rc = ds_fp8_dequantize(out, codes, scale, t->shape[0], t->ndim > 1 ? t->shape[1] : 1, br, bc);
    }
    free(scale);
    free(codes);
    return rc;
}

/* Linear weights the Linear GEMMs take (model.h opts.fp8_resident); kv_b and eh_proj run on the backend */
static int resident_kind(const ds_param *p) {
    return p->kind == DS_PARAM_MATRIX && p->ndim == 2 && !strstr(p->name, "kv_b_proj") && !strstr(p->name, "eh_proj");
}

/* bf16-resident (model.h opts.bf16_resident): every 2-D weight but the norms, and but FP8 tensors that do not
 * stay FP8-resident (kv_b): expanded to fp32 as without bf16, not rounded a second time. A checkpoint without
 * the MTP module (s lacks its eh_proj) leaves that module's weights out: they are not loaded. */
static int bf16_kind(const ds_model *m, const ds_st_set *s, const ds_param *p) {
    if (p->ndim != 2 || p->kind == DS_PARAM_NORM) return 0;
    const ds_st_tensor *t = s ? ds_st_set_find(s, p->name) : NULL;
    if (t && (t->dtype == DS_F8_E4M3 || t->dtype == DS_F8_E5M2)) return 0;
    if (s && p->layer >= m->cfg.num_hidden_layers) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", p->layer);
        return ds_st_set_find(s, name) != NULL;
    }
    return 1;
}

/* A BF16 tensor of s that a bf16-resident parameter can borrow as it is (its shape, 2-byte aligned), or NULL. */
static const ds_st_tensor *bf16_source(const ds_st_set *s, const ds_param *p) {
    const ds_st_tensor *t = s ? ds_st_set_find(s, p->name) : NULL;
    return t && t->dtype == DS_BF16 && ds_st_shape_is(t, 2, p->shape) && !((uintptr_t)t->data % 2) ? t : NULL;
}

void ds_model_mark_resident(ds_model *m, const ds_st_set *s, int device) {
    m->resident_floats = 0;
    m->fp8_bytes = m->bf16_bytes = m->bf16_mapped = 0;
    int64_t br, bc;
    block_shape(m, &br, &bc);
    char sname[160];
    for (int i = 0; i < m->n_params; i++) {
        ds_param *p = &m->params[i];
        const ds_st_tensor *t = m->opts.fp8_resident && resident_kind(p) ? ds_st_set_find(s, p->name) : NULL;
        snprintf(sname, sizeof sname, "%s_scale_inv", p->name);
        p->resident = t && t->dtype == DS_F8_E4M3 && ds_st_shape_is(t, 2, p->shape) && ds_st_set_find(s, sname)
                          ? DS_RESIDENT_FP8 : 0;
        /* the GPU's block-scaled GEMM takes some shapes only: the others are expanded as before */
        if (device && p->resident) p->resident = ds_fp8_resident_device_ok(p->shape[0], p->shape[1], br, bc);
    }
    /* GPU: a layer's routed experts are all resident or none (the compact buffer keeps one stride per block);
     * they are consecutive in the table (params.c), with or without expert parallelism */
    for (int i = 0; device && i < m->n_params;) {
        int j = i, all = 1;
        while (j < m->n_params && m->params[j].expert >= 0 && m->params[j].layer == m->params[i].layer)
            all &= m->params[j++].resident;
        for (int k = i; !all && k < j; k++) m->params[k].resident = 0;
        i = j > i ? j : i + 1;
    }
    for (int i = 0; i < m->n_params && m->opts.bf16_resident && !device; i++) {
        ds_param *p = &m->params[i];
        if (!p->resident && bf16_kind(m, s, p)) p->resident = DS_RESIDENT_BF16;
    }
    for (int i = 0; i < m->n_params; i++) {
        const ds_param *p = &m->params[i];
        if (!p->resident) continue;
        m->resident_floats += p->numel;
        if (p->resident == DS_RESIDENT_BF16) {
            m->bf16_bytes += 2.0 * (double)p->numel;
            if (bf16_source(s, p)) m->bf16_mapped += 2.0 * (double)p->numel;
            continue;
        }
        snprintf(sname, sizeof sname, "%s_scale_inv", p->name);
        m->fp8_bytes += device ? (double)ds_fp8_resident_device_bytes(p->shape[0], p->shape[1])
                               : (double)p->numel + (double)ds_st_set_find(s, sname)->numel * sizeof(float);
    }
}

/* Register resident parameter p at key `key`: on the host its codes stay in s's memory and its scales are
 * copied; on the GPU (m->fp8_dev) both are copied into the device memory at dev. */
static int register_resident(const ds_model *m, const ds_st_set *s, used_set *u, const ds_param *p, float *key,
                             void *dev) {
    const ds_st_tensor *t = ds_st_set_find(s, p->name);
    use(u, t->name);
    float *scale;
    int64_t br, bc;
    DS_TRY(fp8_scales(m, s, t, u, &scale, &br, &bc));
    int rc = dev ? ds_fp8_resident_add_device(key, p->shape[0], p->shape[1], t->data, scale, br, bc, dev, m->ops)
                 : ds_fp8_resident_add(key, p->shape[0], p->shape[1], t->data, scale, br, bc);
    free(scale);
    return rc ? ds_fail_ctx(rc, "%s", p->name) : DS_OK;
}

/* Register bf16-resident parameter p at key `key`: borrowed from s where it is stored as BF16, else read as
 * float32 (through *tmp, grown as needed) and rounded. */
static int register_bf16(const ds_model *m, const ds_st_set *s, used_set *u, const ds_param *p, float *key,
                         float **tmp, size_t *tmp_n) {
    const ds_st_tensor *t = ds_st_set_find(s, p->name);
    if (!t) return ds_fail(DS_ERR, "checkpoint: missing tensor %s", p->name);
    if (!ds_st_shape_is(t, 2, p->shape)) return shape_error(s, t, 2, p->shape);
    int rc;
    if (bf16_source(s, p)) {
        use(u, t->name);
        rc = ds_bf16_resident_add(key, p->shape[0], p->shape[1], t->data, 0);
    } else {
        if (p->numel > *tmp_n) {
            free(*tmp);
            *tmp = malloc(sizeof(float) * p->numel);
            *tmp_n = *tmp ? p->numel : 0;
            if (!*tmp) return ds_fail(DS_ERR, "out of memory: reading %s", p->name);
        }
        rc = read_f32(m, s, t, *tmp, u);
        if (!rc) rc = ds_bf16_resident_add_f32(key, p->shape[0], p->shape[1], *tmp);
    }
    return rc ? ds_fail_ctx(rc, "%s", p->name) : DS_OK;
}

/* Load `name` with the given shape into dst (backend memory). */
static int load_one(const ds_model *m, const ds_st_set *s, staging *st, used_set *u, const char *name, int ndim,
                    const int64_t *shape, float *dst, size_t numel) {
    const ds_st_tensor *t = ds_st_set_find(s, name);
    if (!t) return ds_fail(DS_ERR, "checkpoint: missing tensor %s", name);
    if (!ds_st_shape_is(t, ndim, shape)) return shape_error(s, t, ndim, shape);
    float *buf = stage_for(st, dst, numel);
    if (!buf) return ds_fail(DS_ERR, "out of memory: staging %s", name);
    DS_TRY(read_f32(m, s, t, buf, u));
    stage_done(st, dst, buf, numel);
    return 0;
}

/* transformers' fused experts of layer l, when the checkpoint has them instead of per-expert tensors */
static int load_fused_experts(ds_model *m, const ds_st_set *s, int l, int *done, used_set *u) {
    const ds_dims *d = &m->dims;
    char gu[128], dn[128];
    snprintf(gu, sizeof gu, "model.layers.%d.mlp.experts.gate_up_proj", l);
    snprintf(dn, sizeof dn, "model.layers.%d.mlp.experts.down_proj", l);
    const ds_st_tensor *tg = ds_st_set_find(s, gu), *td = ds_st_set_find(s, dn);
    *done = 0;
    if (!tg && !td) return 0;
    if (!tg || !td) return ds_fail(DS_ERR, "checkpoint: %s without %s", tg ? gu : dn, tg ? dn : gu);
    int64_t sg[3] = {d->E, 2 * (int64_t)d->Ie, d->D}, sd[3] = {d->E, d->D, d->Ie};
    if (!ds_st_shape_is(tg, 3, sg)) return shape_error(s, tg, 3, sg);
    if (!ds_st_shape_is(td, 3, sd)) return shape_error(s, td, 3, sd);
    size_t mat = (size_t)d->Ie * d->D;
    float *tmp = malloc(sizeof(float) * 2 * mat * d->E);
    if (!tmp) return ds_fail(DS_ERR, "out of memory: reading %s", gu);
    int rc = read_f32(m, s, tg, tmp, u);
    const ds_layer_w *w = &m->W.layer[l];
    const int bf16 = m->bf16_bytes > 0; /* every 2-D weight is bf16-resident (model.h): rounded copies */
    for (int e = m->e0; !rc && e < m->e0 + m->ne; e++) { /* this rank's experts (all without expert parallelism) */
        /* gate_up_proj[e] rows [0, Ie) are gate_proj, [Ie, 2 Ie) up_proj (transformers chunks the output) */
        float *g = w->exp_gate + (e - m->e0) * mat, *up = w->exp_up + (e - m->e0) * mat;
        if (bf16) {
            rc = ds_bf16_resident_add_f32(g, d->Ie, d->D, tmp + 2 * e * mat);
            if (!rc) rc = ds_bf16_resident_add_f32(up, d->Ie, d->D, tmp + (2 * e + 1) * mat);
            continue;
        }
        m->ops->copy(g, tmp + 2 * e * mat, sizeof(float) * mat, DS_COPY_H2D);
        m->ops->copy(up, tmp + (2 * e + 1) * mat, sizeof(float) * mat, DS_COPY_H2D);
    }
    if (!rc) rc = read_f32(m, s, td, tmp, u);
    for (int e = m->e0; !rc && bf16 && e < m->e0 + m->ne; e++)
        rc = ds_bf16_resident_add_f32(w->exp_down + (e - m->e0) * mat, d->D, d->Ie, tmp + e * mat);
    if (!rc && !bf16) m->ops->copy(w->exp_down, tmp + m->e0 * mat, sizeof(float) * mat * m->ne, DS_COPY_H2D);
    free(tmp);
    *done = !rc;
    return rc;
}

static void bias_name(char *buf, size_t n, int l) {
    snprintf(buf, n, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
}

int ds_model_load_weights(ds_model *m, const ds_st_set *s) {
    int L = m->cfg.num_hidden_layers, Dm = m->cfg.num_nextn_predict_layers;
    const ds_dims *d = &m->dims;
    char name[160];
    /* MTP modules present: all of a module's tensors, or none of any */
    int present = 0;
    for (int j = 0; j < Dm; j++) {
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", L + j);
        if (!ds_st_set_find(s, name)) break;
        present++;
    }
    if (present < Dm && present > 0)
        return ds_fail(DS_ERR, "checkpoint: MTP module %d of %d missing (no model.layers.%d.eh_proj.weight)",
                       present + 1, Dm, L + present);
    if (Dm > 0 && present == 0)
        ds_warn("checkpoint has no MTP tensors (model.layers.%d.*): multi-token prediction disabled", L);
    m->mtp_depth = present;

    staging st = {.ops = m->ops, .on_host = !strcmp(m->ops->name, "cpu")};
    used_set u = {0};
    int *fused = calloc((size_t)m->n_layers_total + 1, sizeof(int));
    int rc = fused ? 0 : ds_fail(DS_ERR, "out of memory: loading");
    int active = L + m->mtp_depth;
    for (int l = 0; !rc && l < active; l++)
        if (m->moe_slot[l] >= 0 && ds_model_holds(m, l, 0)) rc = load_fused_experts(m, s, l, &fused[l], &u);
    float *tmp = NULL; /* bf16-resident weights read from other dtypes, before rounding */
    size_t tmp_n = 0;
    size_t dev_at = 0; /* GPU: the next resident weight's place in m->fp8_dev (every resident one has its place) */
    for (int i = 0; !rc && i < m->n_params; i++) {
        const ds_param *p = &m->params[i];
        void *dev = m->fp8_dev && p->resident ? (char *)m->fp8_dev + dev_at : NULL;
        if (dev) dev_at += ds_fp8_resident_device_bytes(p->shape[0], p->shape[1]);
        if (p->layer >= active || (p->expert >= 0 && fused[p->layer])) continue;
        if (p->resident == DS_RESIDENT_BF16) rc = register_bf16(m, s, &u, p, ds_param_ptr(m, i), &tmp, &tmp_n);
        else if (p->resident) rc = register_resident(m, s, &u, p, ds_param_ptr(m, i), dev);
        else rc = load_one(m, s, &st, &u, p->name, p->ndim, p->shape, ds_param_ptr(m, i), p->numel);
    }
    for (int l = 0; !rc && l < active; l++) {
        int slot = m->moe_slot[l];
        if (slot < 0) continue;
        float *bias = m->ebias + (size_t)slot * d->E;
        bias_name(name, sizeof name, l);
        int64_t shape[1] = {d->E};
        if (ds_st_set_find(s, name))
            rc = load_one(m, s, &st, &u, name, 1, shape, bias, (size_t)d->E);
        else if (d->has_bias)
            ds_warn("checkpoint: no %s: the expert biases start at 0", name);
    }
    if (!rc) report_unused(m, s, &u);
    if (!st.on_host) free(st.buf);
    free(tmp);
    free(u.v);
    free(fused);
    m->ops->params_changed(m->w, m->n_held);
    return rc;
}

/* ---- saving ------------------------------------------------------------------------------------------- */

typedef struct {
    char name[160];
    int ndim;
    int64_t shape[2];
    const float *src; /* backend memory */
    size_t numel;
    int f32;          /* always F32 (biases) */
} out_tensor;

/* Every tensor a save writes, in order: the parameters in table order with each bias after its router,
 * then (when asked) the MTP layers' copies of embedding and head. *list is malloc'd. */
static int save_list(ds_model *m, const ds_weights_save_opts *o, out_tensor **list, size_t *count) {
    const ds_dims *d = &m->dims;
    int L = m->cfg.num_hidden_layers, active = L + m->mtp_depth;
    size_t cap = (size_t)m->n_params + m->n_moe + 2 * (size_t)m->mtp_depth + 1, n = 0;
    if (m->resident_floats) /* their floats were never written */
        return ds_fail(DS_ERR, "model: resident (FP8 or bf16) weights cannot be saved");
    out_tensor *v = calloc(cap, sizeof *v);
    if (!v) return ds_fail(DS_ERR, "out of memory: saving");
    for (int i = 0; i < m->n_params; i++) {
        const ds_param *p = &m->params[i];
        if (p->layer >= active) continue; /* disabled MTP modules are not written */
        out_tensor *t = &v[n++];
        snprintf(t->name, sizeof t->name, "%s", p->name);
        t->ndim = p->ndim, t->shape[0] = p->shape[0], t->shape[1] = p->shape[1];
        t->src = m->w + p->offset, t->numel = p->numel;
        if (p->kind == DS_PARAM_ROUTER && m->dims.has_bias) {
            out_tensor *b = &v[n++];
            bias_name(b->name, sizeof b->name, p->layer);
            b->ndim = 1, b->shape[0] = d->E, b->f32 = 1;
            b->src = m->ebias + (size_t)m->moe_slot[p->layer] * d->E, b->numel = (size_t)d->E;
        }
    }
    for (int j = 0; o->mtp_copies && j < m->mtp_depth; j++) {
        for (int k = 0; k < 2; k++) {
            out_tensor *t = &v[n++];
            snprintf(t->name, sizeof t->name, "model.layers.%d.%s", L + j,
                     k ? "shared_head.head.weight" : "embed_tokens.weight");
            t->ndim = 2, t->shape[0] = d->V, t->shape[1] = d->D;
            t->src = k ? m->W.head : m->W.embed, t->numel = (size_t)d->V * d->D;
        }
    }
    *list = v;
    *count = n;
    return 0;
}

static ds_dtype store_type(const out_tensor *t, const ds_weights_save_opts *o) {
    return t->f32 || !o->bf16 ? DS_F32 : DS_BF16;
}

/* host copy of a tensor for writing (the buffer itself on the CPU backend) */
static const float *host_view(ds_model *m, staging *st, const out_tensor *t) {
    if (st->on_host) return t->src;
    float *buf = stage_for(st, NULL, t->numel);
    if (!buf) return NULL;
    m->ops->copy(buf, t->src, sizeof(float) * t->numel, DS_COPY_D2H);
    m->ops->sync();
    return buf;
}

int ds_model_save_weights(ds_model *m, const char *path, const ds_weights_save_opts *o) {
    static const ds_weights_save_opts defaults = {0};
    if (!o) o = &defaults;
    out_tensor *list;
    size_t n;
    DS_TRY(save_list(m, o, &list, &n));
    ds_st_writer *w = NULL;
    int rc = ds_st_writer_open(&w, path, &o->st);
    for (int i = 0; !rc && i < o->n_meta; i++) rc = ds_st_writer_meta(w, o->meta[2 * i], o->meta[2 * i + 1]);
    for (size_t i = 0; !rc && i < n; i++)
        rc = ds_st_writer_declare(w, list[i].name, store_type(&list[i], o), list[i].ndim, list[i].shape);
    staging st = {.ops = m->ops, .on_host = !strcmp(m->ops->name, "cpu")};
    for (size_t i = 0; !rc && i < n; i++) {
        const float *src = host_view(m, &st, &list[i]);
        rc = src ? ds_st_writer_data_f32(w, src, list[i].numel) : ds_fail(DS_ERR, "out of memory: saving %s", list[i].name);
    }
    if (!st.on_host) free(st.buf);
    if (w) {
        if (!rc)
            rc = ds_st_writer_close(w);
        else
            ds_st_writer_abort(w);
    }
    free(list);
    return rc;
}

int ds_model_add_to_checkpoint(ds_model *m, ds_ckpt_writer *w, const ds_weights_save_opts *o) {
    static const ds_weights_save_opts defaults = {0};
    if (!o) o = &defaults;
    out_tensor *list;
    size_t n;
    DS_TRY(save_list(m, o, &list, &n));
    int rc = 0;
    if (!strcmp(m->ops->name, "cpu")) {
        /* the writer reads each buffer when its turn comes */
        for (size_t i = 0; !rc && i < n; i++)
            rc = ds_ckpt_writer_add_f32(w, list[i].name, list[i].ndim, list[i].shape, list[i].src,
                                        store_type(&list[i], o));
    } else {
        staging st = {.ops = m->ops};
        for (size_t i = 0; !rc && i < n; i++)
            rc = ds_ckpt_writer_declare(w, list[i].name, store_type(&list[i], o), list[i].ndim, list[i].shape);
        for (size_t i = 0; !rc && i < n; i++) {
            const float *src = host_view(m, &st, &list[i]);
            rc = src ? ds_ckpt_writer_data_f32(w, src, list[i].numel)
                     : ds_fail(DS_ERR, "out of memory: saving %s", list[i].name);
        }
        free(st.buf);
    }
    free(list);
    return rc;
}

/* ---- checking a checkpoint against its config ------------------------------------------------------ */

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const ds_st_tensor *const *)a)->name, (*(const ds_st_tensor *const *)b)->name);
}

typedef struct {
    const ds_st_tensor **by_name; /* sorted */
    unsigned char *used;          /* per entry of by_name */
    int n;
    const ds_config *c;
    const char *where;
} tensor_index;

static int find_index(const tensor_index *x, const char *name) {
    ds_st_tensor key = {.name = name};
    const ds_st_tensor *k = &key;
    const ds_st_tensor **hit = bsearch(&k, x->by_name, (size_t)x->n, sizeof *x->by_name, cmp_tensor_name);
    return hit ? (int)(hit - x->by_name) : -1;
}

/* The keys a tensor's shape comes from that config.json left out (so their defaults, DeepSeek-V3's
 * sizes, were used): the likely cause of a mismatch. "" when none is missing. */
static void missing_keys(const ds_config *c, char *buf, size_t n) {
    static const char *keys[] = {"vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                                 "first_k_dense_replace", "num_attention_heads", "n_routed_experts", "n_shared_experts",
                                 "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                                 "num_nextn_predict_layers"};
    size_t k = 0;
    buf[0] = 0;
    if (!c->json) return;
    for (size_t i = 0; i < sizeof keys / sizeof *keys && k < n; i++)
        if (!ds_config_has_key(c, keys[i]))
            k += (size_t)snprintf(buf + k, n - k, "%s%s", k ? ", " : " (not in the config, defaults used: ", keys[i]);
    if (k && k < n) snprintf(buf + k, n - k, ")");
}

static int tensor_shape_error(const tensor_index *x, const ds_st_tensor *t, int ndim, const int64_t *shape) {
    char got[96], want[96], why[400];
    ds_st_tensor w = {.ndim = ndim};
    for (int d = 0; d < ndim && d < DS_ST_MAX_DIMS; d++) w.shape[d] = shape[d];
    ds_st_shape_str(t, got, sizeof got);
    ds_st_shape_str(&w, want, sizeof want);
    missing_keys(x->c, why, sizeof why);
    return ds_fail(DS_ERR, "checkpoint: %s has shape %s, the config implies %s%s: %s", t->name, got, want, why, x->where);
}

/* Tensor `name` must be there as a float tensor of this shape (an FP8 E4M3 one with its block scales). */
static int expect(tensor_index *x, const char *name, int ndim, const int64_t *shape) {
    int i = find_index(x, name);
    if (i < 0) {
        char why[400];
        missing_keys(x->c, why, sizeof why);
        return ds_fail(DS_ERR, "checkpoint: no tensor %s, which the config implies%s: %s", name, why, x->where);
    }
    const ds_st_tensor *t = x->by_name[i];
    x->used[i] = 1;
    if (!ds_st_shape_is(t, ndim, shape)) return tensor_shape_error(x, t, ndim, shape);
    if (t->dtype != DS_F32 && t->dtype != DS_BF16 && t->dtype != DS_F16 && t->dtype != DS_F8_E4M3 && t->dtype != DS_F8_E5M2)
        return ds_fail(DS_ERR, "checkpoint: %s has dtype %s, expected a float type: %s", name, ds_dtype_name(t->dtype), x->where);
    char sname[200];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    int s = find_index(x, sname);
    if (s < 0) return 0;
    if (t->dtype != DS_F8_E4M3 || ndim != 2)
        return ds_fail(DS_ERR, "checkpoint: %s beside a %s %s (block scales go with 2-D F8_E4M3 weights): %s", sname,
                       ds_dtype_name(t->dtype), name, x->where);
    const ds_quant_config *q = &x->c->quantization_config;
    int64_t br = q->enabled ? q->weight_block_size[0] : 128, bc = q->enabled ? q->weight_block_size[1] : 128;
    int64_t want[2] = {(shape[0] + br - 1) / br, (shape[1] + bc - 1) / bc};
    x->used[s] = 1;
    if (!ds_st_shape_is(x->by_name[s], 2, want)) return tensor_shape_error(x, x->by_name[s], 2, want);
    return 0;
}

/* Layer l's routed experts in transformers' fused form, when the checkpoint has them: 1 (checked), else 0. */
static int fused_experts(tensor_index *x, int l, int64_t E, int64_t Ie, int64_t D, int *rc) {
    char gu[128], dn[128];
    snprintf(gu, sizeof gu, "model.layers.%d.mlp.experts.gate_up_proj", l);
    snprintf(dn, sizeof dn, "model.layers.%d.mlp.experts.down_proj", l);
    if (find_index(x, gu) < 0 && find_index(x, dn) < 0) return 0;
    *rc = expect(x, gu, 3, (int64_t[]){E, 2 * Ie, D});
    if (!*rc) *rc = expect(x, dn, 3, (int64_t[]){E, D, Ie});
    return 1;
}

int ds_model_check_tensors(const ds_config *c, const ds_st_tensor *const *t, int n, const char *where) {
    ds_param *p = NULL;
    int np = 0, rc = ds_model_layout(c, &p, &np);
    if (rc) return rc;
    tensor_index x = {.by_name = malloc(sizeof *x.by_name * ((size_t)n + 1)), .used = calloc((size_t)n + 1, 1), .n = n,
                      .c = c, .where = where};
    if (!x.by_name || !x.used) rc = ds_fail(DS_ERR, "out of memory: checking %d tensors", n);
    for (int i = 0; !rc && i < n; i++) x.by_name[i] = t[i];
    if (!rc) qsort(x.by_name, (size_t)n, sizeof *x.by_name, cmp_tensor_name);
    for (int i = 0; !rc && i + 1 < n; i++)
        if (!strcmp(x.by_name[i]->name, x.by_name[i + 1]->name))
            rc = ds_fail(DS_ERR, "checkpoint: tensor %s appears twice: %s", x.by_name[i]->name, where);
    /* MTP modules: all of each present, or none (ds_model_load_weights then disables MTP) */
    const int L = c->num_hidden_layers;
    int mtp = 0;
    char name[200];
    for (; !rc && mtp < c->num_nextn_predict_layers; mtp++) {
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", L + mtp);
        if (find_index(&x, name) < 0) break;
    }
    const int64_t D = c->hidden_size, E = c->n_routed_experts, Ie = c->moe_intermediate_size;
    int fused_layer = -1, fused = 0;
    for (int i = 0; !rc && i < np; i++) {
        if (p[i].layer >= L + mtp) continue;
        if (p[i].expert >= 0) {
            if (p[i].layer != fused_layer) fused_layer = p[i].layer, fused = fused_experts(&x, p[i].layer, E, Ie, D, &rc);
            if (fused || rc) continue;
        }
        rc = expect(&x, p[i].name, p[i].ndim, p[i].shape);
        if (!rc && p[i].kind == DS_PARAM_ROUTER) { /* the expert bias is optional (it starts at 0) */
            snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", p[i].layer);
            if (find_index(&x, name) >= 0) rc = expect(&x, name, 1, (int64_t[]){E});
        }
    }
    for (int j = 0; !rc && j < mtp; j++) /* the released MTP layers' copies of the shared embedding and head */
        for (int k = 0; !rc && k < 2; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", L + j, k ? "shared_head.head.weight" : "embed_tokens.weight");
            if (find_index(&x, name) >= 0) rc = expect(&x, name, 2, (int64_t[]){c->vocab_size, D});
        }
    int extra = 0, first = -1;
    for (int i = 0; !rc && i < n; i++)
        if (!x.used[i] && !extra++) first = i;
    if (!rc && extra) {
        char more[48] = "";
        if (extra > 1) snprintf(more, sizeof more, " (and %d more)", extra - 1);
        rc = ds_fail(DS_ERR,
                     "checkpoint: tensor %s%s is not part of the model the config describes (num_hidden_layers %d, "
                     "num_nextn_predict_layers %d, n_routed_experts %d, q_lora_rank %d): %s",
                     x.by_name[first]->name, more, L, c->num_nextn_predict_layers, c->n_routed_experts, c->q_lora_rank, where);
    }
    free(x.by_name);
    free(x.used);
    free(p);
    return rc;
}

int ds_model_check_set(const ds_config *c, const ds_st_set *s, const char *where) {
    int n = ds_st_set_count(s);
    const ds_st_tensor **t = malloc(sizeof *t * ((size_t)n + 1));
    if (!t) return ds_fail(DS_ERR, "out of memory: checking %d tensors", n);
    for (int i = 0; i < n; i++) t[i] = ds_st_set_tensor_at(s, i);
    int rc = ds_model_check_tensors(c, t, n, where);
    free(t);
    return rc;
}
