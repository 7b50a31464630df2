#include "fp8/convert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "fp8/fp8.h"

#define SCALE_SUFFIX "_scale_inv"
#define CHUNK_ELEMS ((size_t)1 << 20) /* elements per piece for copies and casts, and the panel target */

/* Rows per panel of a [*, cols] weight: whole 128-row blocks, about CHUNK_ELEMS elements (at least one
 * block), so per-call overheads (OpenMP regions) stay small next to the work. */
static int64_t panel_rows(int64_t cols) {
    int64_t blocks = cols > 0 ? (int64_t)CHUNK_ELEMS / (DS_FP8_BLOCK * cols) : 1;
    return DS_FP8_BLOCK * (blocks > 1 ? blocks : 1);
}

/* ---- names ------------------------------------------------------------------------------------- */

/* Advance past "<digits>." at *s; 0 when absent. */
static int skip_index(const char **s) {
    const char *p = *s;
    if (*p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') p++;
    if (*p != '.') return 0;
    *s = p + 1;
    return 1;
}

static int is_one_of(const char *s, const char *const *set) {
    for (; *set; set++)
        if (!strcmp(s, *set)) return 1;
    return 0;
}

int ds_fp8_is_quantized_name(const char *name) {
    static const char *const attn[] = {"q_proj.weight", "q_a_proj.weight", "q_b_proj.weight",
                                       "kv_a_proj_with_mqa.weight", "kv_b_proj.weight", "o_proj.weight", NULL};
    static const char *const ffn[] = {"gate_proj.weight", "up_proj.weight", "down_proj.weight", NULL};
    const char *p = name;
    if (strncmp(p, "model.layers.", 13)) return 0;
    p += 13;
    if (!skip_index(&p)) return 0;
    if (!strncmp(p, "self_attn.", 10)) return is_one_of(p + 10, attn);
    if (strncmp(p, "mlp.", 4)) return 0;
    p += 4;
    if (!strncmp(p, "shared_experts.", 15)) {
        p += 15;
    } else if (!strncmp(p, "experts.", 8)) {
        p += 8;
        if (!skip_index(&p)) return 0;
    }
    return is_one_of(p, ffn);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

int ds_fp8_keeps_f32(const char *name) { return ends_with(name, ".e_score_correction_bias"); }

int64_t ds_tensor_desc_numel(const ds_tensor_desc *t) {
    int64_t n = 1;
    if (t->ndim < 0 || t->ndim > DS_CONV_MAX_DIMS) return -1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0 || (t->shape[d] && n > INT64_MAX / t->shape[d])) return -1;
        n *= t->shape[d];
    }
    return n;
}

/* ---- plan -------------------------------------------------------------------------------------- */

static int is_float(ds_dtype t) { return t == DS_F64 || t == DS_F32 || t == DS_F16 || t == DS_BF16; }

typedef struct {
    const ds_tensor_desc *in;
    int *order; /* indices sorted by name */
    int n;
} name_index;

static int by_name(const void *a, const void *b, void *base) {
    const ds_tensor_desc *in = base;
    return strcmp(in[*(const int *)a].name, in[*(const int *)b].name);
}

static int index_find(const name_index *ix, const char *name) {
    int lo = 0, hi = ix->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(ix->in[ix->order[mid]].name, name);
        if (!c) return ix->order[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int push_step(ds_conv_plan *p, int *cap, const ds_tensor_desc *out, const char *name, ds_conv_op op, int src,
                     int src_scale) {
    if (p->n == *cap) {
        int nc = *cap ? *cap * 2 : 64;
        ds_conv_step *ns = realloc(p->steps, (size_t)nc * sizeof *ns);
        if (!ns) return ds_fail(DS_ERR, "out of memory: conversion plan");
        p->steps = ns, *cap = nc;
    }
    ds_conv_step *s = &p->steps[p->n];
    s->out = *out;
    s->out.name = strdup(name);
    if (!s->out.name) return ds_fail(DS_ERR, "out of memory: conversion plan");
    s->op = op, s->src = src, s->src_scale = src_scale;
    p->n++;
    return DS_OK;
}

static int scale_shape_ok(const ds_tensor_desc *w, const ds_tensor_desc *s) {
    return s->dtype == DS_F32 && s->ndim == 2 && s->shape[0] == ds_fp8_nblocks(w->shape[0], DS_FP8_BLOCK) &&
           s->shape[1] == ds_fp8_nblocks(w->shape[1], DS_FP8_BLOCK);
}

static int plan_tensor(ds_conv_plan *p, int *cap, const name_index *ix, int i) {
    const ds_tensor_desc *t = &ix->in[i];
    const ds_conv_target to = p->target;
    char name[1024];
    if (ds_tensor_desc_numel(t) < 0) return ds_fail(DS_ERR, "tensor %s: bad shape", t->name);
    if (ends_with(t->name, SCALE_SUFFIX)) {
        size_t wl = strlen(t->name) - strlen(SCALE_SUFFIX);
        if (wl >= sizeof name) return ds_fail(DS_ERR, "tensor name too long: %s", t->name);
        memcpy(name, t->name, wl);
        name[wl] = 0;
        int w = index_find(ix, name);
        if (w < 0) return ds_fail(DS_ERR, "tensor %s: no weight %s for this scale", t->name, name);
        if (ix->in[w].dtype != DS_F8_E4M3)
            return ds_fail(DS_ERR, "tensor %s: its weight %s is %s, not F8_E4M3", t->name, name,
                           ds_dtype_name(ix->in[w].dtype));
        /* kept beside its FP8 weight, or consumed by the weight's DEQUANT step */
        return to == DS_CONV_TO_FP8 ? push_step(p, cap, t, t->name, DS_CONV_COPY, i, -1) : DS_OK;
    }
    if (t->dtype == DS_F8_E4M3 || t->dtype == DS_F8_E5M2) {
        if (t->dtype == DS_F8_E5M2)
            return ds_fail(DS_ERR, "tensor %s: F8_E5M2 checkpoints are not supported (DeepSeek uses F8_E4M3)",
                           t->name);
        if (t->ndim != 2) return ds_fail(DS_ERR, "tensor %s: an F8_E4M3 weight must be 2-D", t->name);
        if (snprintf(name, sizeof name, "%s" SCALE_SUFFIX, t->name) >= (int)sizeof name)
            return ds_fail(DS_ERR, "tensor name too long: %s", t->name);
        int s = index_find(ix, name);
        if (s < 0) return ds_fail(DS_ERR, "tensor %s: F8_E4M3 without %s", t->name, name);
        if (!scale_shape_ok(t, &ix->in[s]))
            return ds_fail(DS_ERR, "tensor %s: must be F32 [%lld, %lld] for a [%lld, %lld] weight", name,
                           (long long)ds_fp8_nblocks(t->shape[0], DS_FP8_BLOCK),
                           (long long)ds_fp8_nblocks(t->shape[1], DS_FP8_BLOCK), (long long)t->shape[0],
                           (long long)t->shape[1]);
        if (to == DS_CONV_TO_FP8) return push_step(p, cap, t, t->name, DS_CONV_COPY, i, -1);
        ds_tensor_desc o = *t;
        o.dtype = to == DS_CONV_TO_BF16 ? DS_BF16 : DS_F32;
        p->n_dequantized++;
        return push_step(p, cap, &o, t->name, DS_CONV_DEQUANT, i, s);
    }
    if (to == DS_CONV_TO_FP8 && ds_fp8_is_quantized_name(t->name)) {
        if (t->ndim != 2 || !is_float(t->dtype))
            return ds_fail(DS_ERR, "tensor %s: a Linear weight to quantize must be a 2-D float tensor, not %s with %d dims",
                           t->name, ds_dtype_name(t->dtype), t->ndim);
        if (snprintf(name, sizeof name, "%s" SCALE_SUFFIX, t->name) >= (int)sizeof name)
            return ds_fail(DS_ERR, "tensor name too long: %s", t->name);
        if (index_find(ix, name) >= 0)
            return ds_fail(DS_ERR, "tensor %s: a %s weight already has a %s", t->name, ds_dtype_name(t->dtype), name);
        ds_tensor_desc q = *t, s = {0};
        q.dtype = DS_F8_E4M3;
        s.dtype = DS_F32, s.ndim = 2;
        s.shape[0] = ds_fp8_nblocks(t->shape[0], DS_FP8_BLOCK);
        s.shape[1] = ds_fp8_nblocks(t->shape[1], DS_FP8_BLOCK);
        p->n_quantized++;
        DS_TRY(push_step(p, cap, &q, t->name, DS_CONV_QUANT, i, -1));
        return push_step(p, cap, &s, name, DS_CONV_QUANT_SCALE, i, -1);
    }
    if (!is_float(t->dtype) || to == DS_CONV_TO_FP8) return push_step(p, cap, t, t->name, DS_CONV_COPY, i, -1);
    ds_dtype want = to == DS_CONV_TO_F32 || ds_fp8_keeps_f32(t->name) ? DS_F32 : DS_BF16;
    if (want == t->dtype) return push_step(p, cap, t, t->name, DS_CONV_COPY, i, -1);
    ds_tensor_desc o = *t;
    o.dtype = want;
    return push_step(p, cap, &o, t->name, DS_CONV_CAST, i, -1);
}

void ds_conv_plan_free(ds_conv_plan *p) {
    for (int i = 0; i < p->n; i++) free((char *)p->steps[i].out.name);
    free(p->steps);
    memset(p, 0, sizeof *p);
}

int ds_conv_plan_make(ds_conv_plan *p, const ds_tensor_desc *in, int n_in, ds_conv_target target,
                      ds_fp8_scale_fmt scale_fmt) {
    memset(p, 0, sizeof *p);
    p->target = target, p->scale_fmt = scale_fmt;
    name_index ix = {in, malloc((size_t)(n_in > 0 ? n_in : 1) * sizeof(int)), n_in};
    if (!ix.order) return ds_fail(DS_ERR, "out of memory: conversion plan");
    for (int i = 0; i < n_in; i++) ix.order[i] = i;
    qsort_r(ix.order, (size_t)n_in, sizeof(int), by_name, (void *)in);
    int rc = DS_OK, cap = 0;
    for (int i = 1; i < n_in && !rc; i++)
        if (!strcmp(in[ix.order[i]].name, in[ix.order[i - 1]].name))
            rc = ds_fail(DS_ERR, "tensor %s: appears twice", in[ix.order[i]].name);
    for (int i = 0; i < n_in && !rc; i++) rc = plan_tensor(p, &cap, &ix, i);
    free(ix.order);
    if (rc) ds_conv_plan_free(p);
    return rc;
}

/* ---- run --------------------------------------------------------------------------------------- */

typedef struct {
    uint8_t *raw;   /* input bytes of one panel / chunk */
    float *x, *y;   /* float32 views: input values, values written */
    uint8_t *q;     /* E4M3 codes of one panel */
    float *scales;  /* the block scales of the current weight, for QUANT_SCALE and DEQUANT */
    size_t scales_cap;
    void *out;      /* converted bytes to write */
} buffers;

static void scale_range(ds_conv_report *r, const float *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        r->scale_min = fminf(r->scale_min, s[i]);
        r->scale_max = fmaxf(r->scale_max, s[i]);
    }
}

static int run_copy(const ds_conv_step *st, const ds_tensor_desc *t, const ds_conv_source *src, const ds_conv_sink *dst,
                    buffers *b, size_t chunk_bytes) {
    const uint64_t total = (uint64_t)ds_tensor_desc_numel(t) * ds_dtype_size(t->dtype);
    for (uint64_t off = 0; off < total; off += chunk_bytes) {
        size_t n = total - off < chunk_bytes ? (size_t)(total - off) : chunk_bytes;
        DS_TRY(src->read(src->ctx, st->src, off, b->raw, n));
        DS_TRY(dst->write(dst->ctx, b->raw, n));
    }
    return DS_OK;
}

static int run_cast(const ds_conv_step *st, const ds_tensor_desc *t, const ds_conv_source *src, const ds_conv_sink *dst,
                    buffers *b, ds_conv_report *r) {
    const int64_t numel = ds_tensor_desc_numel(t);
    const size_t in_size = ds_dtype_size(t->dtype), out_size = ds_dtype_size(st->out.dtype);
    for (int64_t e0 = 0; e0 < numel; e0 += (int64_t)CHUNK_ELEMS) {
        size_t n = numel - e0 < (int64_t)CHUNK_ELEMS ? (size_t)(numel - e0) : CHUNK_ELEMS;
        DS_TRY(src->read(src->ctx, st->src, (uint64_t)e0 * in_size, b->raw, n * in_size));
        DS_TRY(ds_fp8_convert_to_f32(b->x, b->raw, t->dtype, n));
        if (ds_convert_from_f32(b->out, st->out.dtype, b->x, n))
            return ds_fail(DS_ERR, "cannot write %s", ds_dtype_name(st->out.dtype));
        DS_TRY(ds_fp8_convert_to_f32(b->y, b->out, st->out.dtype, n));
        ds_fp8_err_add(&r->err, b->x, b->y, n);
        DS_TRY(dst->write(dst->ctx, b->out, n * out_size));
    }
    return DS_OK;
}

/* Branch-free scan (vectorises); the slow loop that names the element runs only when this finds one. */
static int any_nonfinite(const float *x, size_t n) {
    uint32_t any = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        any |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return any != 0;
}

static int run_quant(const ds_conv_step *st, const ds_tensor_desc *t, const ds_conv_source *src,
                     const ds_conv_sink *dst, buffers *b, ds_fp8_scale_fmt fmt, ds_conv_report *r) {
    const int64_t rows = t->shape[0], cols = t->shape[1], ncb = ds_fp8_nblocks(cols, DS_FP8_BLOCK);
    const size_t in_size = ds_dtype_size(t->dtype);
    const int64_t pr = panel_rows(cols);
    for (int64_t r0 = 0; r0 < rows; r0 += pr) {
        const int64_t h = rows - r0 < pr ? rows - r0 : pr;
        const size_t n = (size_t)(h * cols);
        DS_TRY(src->read(src->ctx, st->src, (uint64_t)(r0 * cols) * in_size, b->raw, n * in_size));
        DS_TRY(ds_fp8_convert_to_f32(b->x, b->raw, t->dtype, n));
        if (any_nonfinite(b->x, n))
            for (size_t i = 0; i < n; i++)
                if (!isfinite(b->x[i]))
                    return ds_fail(DS_ERR, "non-finite value %g at [%lld, %lld]: refusing to quantize", b->x[i],
                                   (long long)(r0 + (int64_t)i / cols), (long long)((int64_t)i % cols));
        float *srow = b->scales + (r0 / DS_FP8_BLOCK) * ncb;
        DS_TRY(ds_fp8_quantize(b->q, srow, b->x, h, cols, DS_FP8_BLOCK, DS_FP8_BLOCK, fmt));
        DS_TRY(ds_fp8_dequantize(b->y, b->q, srow, h, cols, DS_FP8_BLOCK, DS_FP8_BLOCK));
        ds_fp8_err_add(&r->err, b->x, b->y, n);
        scale_range(r, srow, (size_t)(ds_fp8_nblocks(h, DS_FP8_BLOCK) * ncb));
        DS_TRY(dst->write(dst->ctx, b->q, n));
    }
    return DS_OK;
}

static int run_dequant(const ds_conv_step *st, const ds_tensor_desc *in, const ds_conv_source *src,
                       const ds_conv_sink *dst, buffers *b, ds_conv_report *r) {
    const ds_tensor_desc *t = &in[st->src];
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const int64_t nsc = ds_fp8_nblocks(rows, DS_FP8_BLOCK) * ds_fp8_nblocks(cols, DS_FP8_BLOCK);
    uint8_t *held = NULL; /* a pipe's weight whose scale comes after it */
    if (src->sequential && st->src_scale > st->src) {
        held = malloc((size_t)(rows * cols) + 1);
        if (!held) return ds_fail(DS_ERR, "out of memory: holding %lld FP8 bytes", (long long)(rows * cols));
        int rc = src->read(src->ctx, st->src, 0, held, (size_t)(rows * cols));
        if (rc) {
            free(held);
            return rc;
        }
    }
    int rc = src->read(src->ctx, st->src_scale, 0, b->scales, (size_t)nsc * 4);
    scale_range(r, b->scales, (size_t)nsc);
    const ds_dtype to = st->out.dtype;
    const int64_t pr = panel_rows(cols);
    for (int64_t r0 = 0; r0 < rows && !rc; r0 += pr) {
        const int64_t h = rows - r0 < pr ? rows - r0 : pr;
        const size_t n = (size_t)(h * cols);
        const float *srow = b->scales + (r0 / DS_FP8_BLOCK) * ds_fp8_nblocks(cols, DS_FP8_BLOCK);
        if (held)
            memcpy(b->q, held + r0 * cols, n);
        else if ((rc = src->read(src->ctx, st->src, (uint64_t)(r0 * cols), b->q, n)))
            break;
        ds_fp8_dequantize(b->x, b->q, srow, h, cols, DS_FP8_BLOCK, DS_FP8_BLOCK);
        if (to == DS_F32) {
            ds_fp8_err_add(&r->err, b->x, b->x, n);
            rc = dst->write(dst->ctx, b->x, n * 4);
        } else {
            uint16_t *o = b->out;
            for (size_t i = 0; i < n; i++) o[i] = ds_f32_to_bf16(b->x[i]);
            for (size_t i = 0; i < n; i++) b->y[i] = ds_bf16_to_f32(o[i]);
            ds_fp8_err_add(&r->err, b->x, b->y, n);
            rc = dst->write(dst->ctx, o, n * 2);
        }
    }
    free(held);
    return rc;
}

int ds_conv_run(const ds_conv_plan *p, const ds_tensor_desc *in, const ds_conv_source *src, const ds_conv_sink *dst,
                ds_conv_report_fn report, void *report_ctx) {
    /* one allocation sized for the largest panel or chunk of the plan */
    size_t elems = CHUNK_ELEMS, scales = 1;
    for (int i = 0; i < p->n; i++) {
        const ds_conv_step *st = &p->steps[i];
        if (st->op != DS_CONV_QUANT && st->op != DS_CONV_DEQUANT) continue;
        const ds_tensor_desc *t = &in[st->src];
        size_t panel = (size_t)panel_rows(t->shape[1]) * (size_t)t->shape[1];
        size_t nsc = (size_t)(ds_fp8_nblocks(t->shape[0], DS_FP8_BLOCK) * ds_fp8_nblocks(t->shape[1], DS_FP8_BLOCK));
        elems = panel > elems ? panel : elems;
        scales = nsc > scales ? nsc : scales;
    }
    buffers b = {0};
    b.raw = malloc(elems * 8);
    b.x = malloc(elems * 4);
    b.y = malloc(elems * 4);
    b.q = malloc(elems);
    b.out = malloc(elems * 4);
    b.scales = malloc(scales * 4);
    int rc = DS_OK;
    if (!b.raw || !b.x || !b.y || !b.q || !b.out || !b.scales)
        rc = ds_fail(DS_ERR, "out of memory: conversion buffers for panels of %zu elements", elems);
    for (int i = 0; i < p->n && !rc; i++) {
        const ds_conv_step *st = &p->steps[i];
        const ds_tensor_desc *t = &in[st->src];
        ds_conv_report r = {.step = st, .from = t->dtype, .numel = ds_tensor_desc_numel(&st->out),
                            .scale_min = INFINITY, .scale_max = -INFINITY};
        double t0 = ds_now();
        switch (st->op) {
        case DS_CONV_COPY: rc = run_copy(st, t, src, dst, &b, elems * 8); break;
        case DS_CONV_CAST: rc = run_cast(st, t, src, dst, &b, &r); break;
        case DS_CONV_QUANT: rc = run_quant(st, t, src, dst, &b, p->scale_fmt, &r); break;
        case DS_CONV_QUANT_SCALE:
            if (i == 0 || p->steps[i - 1].op != DS_CONV_QUANT || p->steps[i - 1].src != st->src)
                rc = ds_fail(DS_ERR, "conversion plan: %s does not follow its weight", st->out.name);
            else
                rc = dst->write(dst->ctx, b.scales, (size_t)r.numel * 4);
            break;
        case DS_CONV_DEQUANT: rc = run_dequant(st, in, src, dst, &b, &r); break;
        }
        if (rc) {
            ds_fail_ctx(rc, "tensor %s", st->out.name);
            break;
        }
        r.seconds = ds_now() - t0;
        if (report && st->op != DS_CONV_QUANT_SCALE) rc = report(report_ctx, &r);
    }
    free(b.raw), free(b.x), free(b.y), free(b.q), free(b.out), free(b.scales);
    return rc;
}
