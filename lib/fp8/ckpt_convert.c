#include "fp8/ckpt_convert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "tok/hfconfig.h"

/* Files carried over besides config.json and tokenizer.json (training state is not: a converted
 * checkpoint is a model, not a run to resume). */
static const char *const carried_files[] = {"generation_config.json", "tokenizer_config.json",
                                            "special_tokens_map.json", NULL};

/* ---- config.json ------------------------------------------------------------------------------- */

void ds_ckpt_convert_set_config(ds_config *c, ds_conv_target target, ds_fp8_scale_fmt scale_fmt) {
    ds_quant_config *q = &c->quantization_config;
    if (target == DS_CONV_TO_FP8) {
        q->enabled = 1;
        snprintf(q->quant_method, sizeof q->quant_method, "fp8");
        snprintf(q->fmt, sizeof q->fmt, "e4m3");
        snprintf(q->activation_scheme, sizeof q->activation_scheme, "dynamic");
        q->weight_block_size[0] = q->weight_block_size[1] = DS_FP8_BLOCK;
        snprintf(q->scale_fmt, sizeof q->scale_fmt, "%s", scale_fmt == DS_FP8_SCALE_UE8M0 ? "ue8m0" : "");
    } else {
        q->enabled = 0;
        snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", target == DS_CONV_TO_BF16 ? "bfloat16" : "float32");
    }
}

/* ---- sources: an mmapped set, or a pipe --------------------------------------------------------- */

typedef struct {
    const ds_st_tensor **t; /* by input index */
} set_src;

static int set_read(void *ctx, int i, uint64_t off, void *dst, size_t n) {
    const set_src *s = ctx;
    memcpy(dst, (const char *)s->t[i]->data + off, n);
    return DS_OK;
}

typedef struct {
    ds_st_stream *s;
    int cur;
    const ds_st_tensor *t;
    const char *where;
} stream_src;

static int stream_read(void *ctx, int i, uint64_t off, void *dst, size_t n) {
    stream_src *s = ctx;
    while (s->cur < i) {
        DS_TRY(ds_st_stream_next(s->s, &s->t));
        s->cur++;
        if (!s->t) return ds_fail(DS_ERR, "checkpoint stream ended before tensor %d: %s", i, s->where);
    }
    if (s->cur != i) return ds_fail(DS_ERR, "internal: stream read out of order (%d after %d)", i, s->cur);
    memcpy(dst, (const char *)s->t->data + off, n);
    return DS_OK;
}

/* ---- reports: stats, progress, the caller's callback ------------------------------------------- */

typedef struct {
    const ds_ckpt_convert_opts *o;
    ds_ckpt_convert_stats *st;
    ds_progress prog;
    double done;
} run_ctx;

static int on_report(void *ctx, const ds_conv_report *r) {
    run_ctx *c = ctx;
    ds_ckpt_convert_stats *st = c->st;
    const ds_conv_step *s = r->step;
    st->tensors_out++;
    if (s->op == DS_CONV_QUANT) {
        st->quantized++;
        st->tensors_out++; /* its _scale_inv */
        st->err_quant.max_abs = r->err.max_abs > st->err_quant.max_abs ? r->err.max_abs : st->err_quant.max_abs;
        st->err_quant.sq_err += r->err.sq_err;
        st->err_quant.sq_ref += r->err.sq_ref;
        st->err_quant.n += r->err.n;
        double rel = ds_fp8_err_rel_fro(&r->err);
        if (rel > st->worst_rel_fro || !st->worst_name[0]) {
            st->worst_rel_fro = rel;
            snprintf(st->worst_name, sizeof st->worst_name, "%s", s->out.name);
        }
    } else if (s->op == DS_CONV_DEQUANT) {
        st->dequantized++;
    } else if (s->op == DS_CONV_CAST) {
        st->cast++;
    }
    c->done += (double)r->numel * (double)ds_dtype_size(r->from);
    if (c->o->progress) ds_progress_update(&c->prog, c->done);
    return c->o->report ? c->o->report(c->o->report_ctx, r) : DS_OK;
}

/* ---- the conversion ----------------------------------------------------------------------------- */

typedef struct {
    ds_ckpt *ckpt;            /* a directory or .safetensors file (mmapped) */
    ds_st_stream *stream;     /* or a pipe, read tensor by tensor */
    const ds_st_tensor **t;
    ds_tensor_desc *desc;
    int n;
    ds_config cfg;
    int has_cfg;
} input;

static void input_close(input *in) {
    if (in->ckpt) ds_ckpt_close(in->ckpt);
    if (in->stream) ds_st_stream_close(in->stream);
    if (in->has_cfg) ds_config_free(&in->cfg);
    free(in->t), free(in->desc);
}

static int input_open(input *in, const char *path) {
    memset(in, 0, sizeof *in);
    if (ds_is_stdio(path)) {
        /* not ds_ckpt_open: it reads a stream into memory, and a pipe may carry more than RAM */
        DS_TRY(ds_st_stream_open(&in->stream, stdin, "<stdin>"));
        in->n = ds_st_stream_count(in->stream);
        const char *cfg = ds_st_stream_meta(in->stream, "config");
        if (!cfg) return ds_fail(DS_ERR, "checkpoint: no \"config\" in the stream's metadata: <stdin>");
        DS_TRY(ds_config_parse(&in->cfg, cfg, strlen(cfg), "<stdin>"));
    } else {
        DS_TRY(ds_ckpt_open(&in->ckpt, path));
        in->n = ds_ckpt_count(in->ckpt);
        DS_TRY(ds_config_copy(&in->cfg, ds_ckpt_config(in->ckpt)));
    }
    in->has_cfg = 1;
    in->t = calloc((size_t)in->n + 1, sizeof *in->t);
    in->desc = calloc((size_t)in->n + 1, sizeof *in->desc);
    if (!in->t || !in->desc) return ds_fail(DS_ERR, "out of memory");
    for (int i = 0; i < in->n; i++) {
        const ds_st_tensor *t = in->ckpt ? ds_ckpt_tensor_at(in->ckpt, i) : ds_st_stream_tensor_at(in->stream, i);
        in->t[i] = t;
        ds_tensor_desc *d = &in->desc[i];
        d->name = t->name, d->dtype = t->dtype, d->ndim = t->ndim;
        for (int k = 0; k < t->ndim; k++) d->shape[k] = t->shape[k];
    }
    return DS_OK;
}

/* A checkpoint with a tokenizer but no tokenizer_config.json (written before the tools wrote one, or
 * by other means) gets one with the built-in chat template, so transformers can chat with the result. */
static int add_missing_tokenizer_config(const input *in, ds_ckpt_writer *w, const char *tok, size_t len, int have) {
    if (!tok || have) return DS_OK;
    char *text;
    if (ds_tok_hf_config(tok, len, &in->cfg, NULL, &text)) { /* a tokenizer.json we do not read: none */
        ds_warn("no tokenizer_config.json written: %s", ds_errmsg());
        ds_err_clear();
        return DS_OK;
    }
    int rc = ds_ckpt_writer_add_file(w, "tokenizer_config.json", text, strlen(text));
    free(text);
    return rc;
}

/* The tokenizer and the carried files, from a checkpoint or a stream's metadata, to the writer. */
static int carry_files(const input *in, ds_ckpt_writer *w) {
    if (in->stream) {
        const char *tok = ds_st_stream_meta(in->stream, "tokenizer");
        if (tok) DS_TRY(ds_ckpt_writer_set_tokenizer(w, tok, strlen(tok)));
        for (int k = 0; carried_files[k]; k++) {
            char key[256];
            snprintf(key, sizeof key, "file:%s", carried_files[k]);
            const char *v = ds_st_stream_meta(in->stream, key);
            if (v) DS_TRY(ds_ckpt_writer_add_file(w, carried_files[k], v, strlen(v)));
        }
        return add_missing_tokenizer_config(in, w, tok, tok ? strlen(tok) : 0,
                                            ds_st_stream_meta(in->stream, "file:tokenizer_config.json") != NULL);
    }
    size_t len, tok_len;
    const char *tok = ds_ckpt_tokenizer(in->ckpt, &tok_len);
    if (tok) DS_TRY(ds_ckpt_writer_set_tokenizer(w, tok, tok_len));
    for (int k = 0; carried_files[k]; k++) {
        if (!ds_ckpt_has_file(in->ckpt, carried_files[k])) continue;
        char *data;
        DS_TRY(ds_ckpt_read_file(in->ckpt, carried_files[k], &data, &len));
        int rc = ds_ckpt_writer_add_file(w, carried_files[k], data, len);
        free(data);
        DS_TRY(rc);
    }
    return add_missing_tokenizer_config(in, w, tok, tok_len, ds_ckpt_has_file(in->ckpt, "tokenizer_config.json"));
}

static int ckpt_sink(void *ctx, const void *bytes, size_t n) { return ds_ckpt_writer_data(ctx, bytes, n); }

int ds_ckpt_convert(const char *in_path, const char *out_path, const ds_ckpt_convert_opts *o,
                    ds_ckpt_convert_stats *stats) {
    ds_ckpt_convert_stats local;
    ds_ckpt_convert_stats *st = stats ? stats : &local;
    memset(st, 0, sizeof *st);
    const double t0 = ds_now();
    input in;
    ds_conv_plan plan = {0};
    ds_ckpt_writer *w = NULL;
    int rc = input_open(&in, in_path);
    if (!rc && o->check)
        rc = o->check(o->check_ctx, &in.cfg, in.t, in.n, in.ckpt ? ds_ckpt_where(in.ckpt) : "<stdin>");
    if (!rc) rc = ds_conv_plan_make(&plan, in.desc, in.n, o->target, o->scale_fmt);
    if (rc) goto done;
    st->tensors_in = in.n;
    for (int i = 0; i < in.n; i++)
        st->bytes_in += (uint64_t)ds_tensor_desc_numel(&in.desc[i]) * ds_dtype_size(in.desc[i].dtype);
    for (int i = 0; i < plan.n; i++)
        st->bytes_out += (uint64_t)ds_tensor_desc_numel(&plan.steps[i].out) * ds_dtype_size(plan.steps[i].out.dtype);

    ds_ckpt_convert_set_config(&in.cfg, o->target, o->scale_fmt);
    ds_ckpt_write_opts wo = {.max_shard_bytes = o->max_shard_bytes};
    rc = ds_ckpt_writer_begin(&w, out_path, &wo);
    if (!rc) rc = ds_ckpt_writer_set_config(w, &in.cfg);
    if (!rc) rc = carry_files(&in, w);
    for (int i = 0; i < plan.n && !rc; i++) {
        const ds_tensor_desc *d = &plan.steps[i].out;
        rc = ds_ckpt_writer_declare(w, d->name, d->dtype, d->ndim, d->shape);
    }
    if (rc) goto done;

    run_ctx ctx = {.o = o, .st = st};
    if (o->progress) ds_progress_begin(&ctx.prog, "converting", "B", (double)st->bytes_in);
    set_src ss = {in.t};
    stream_src ps = {in.stream, -1, NULL, "<stdin>"};
    ds_conv_source src = in.ckpt ? (ds_conv_source){&ss, set_read, 0} : (ds_conv_source){&ps, stream_read, 1};
    ds_conv_sink sink = {w, ckpt_sink};
    rc = ds_conv_run(&plan, in.desc, &src, &sink, on_report, &ctx);
    if (o->progress) ds_progress_end(&ctx.prog);
    if (!rc) {
        rc = ds_ckpt_writer_commit(w); /* frees w, also on error */
        w = NULL;
    }
done:
    if (w) ds_ckpt_writer_abort(w);
    ds_conv_plan_free(&plan);
    input_close(&in);
    st->seconds = ds_now() - t0;
    return rc;
}

/* ---- reading FP8 weights ----------------------------------------------------------------------- */

int ds_fp8_ckpt_read_f32(const ds_ckpt *c, const char *name, int ndim, const int64_t *shape, float *out) {
    const ds_st_tensor *t = ds_ckpt_find(c, name);
    if (!t || t->dtype != DS_F8_E4M3) return ds_ckpt_read_f32(c, name, ndim, shape, out);
    if (!ds_st_shape_is(t, ndim, shape) || ndim != 2) {
        char have[160];
        ds_st_shape_str(t, have, sizeof have);
        return ds_fail(DS_ERR, "checkpoint: %.200s has shape %s, expected a 2-D [%lld, %lld]: %s", name, have,
                       (long long)shape[0], (long long)(ndim > 1 ? shape[1] : 0), ds_ckpt_where(c));
    }
    char sname[1100];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    const ds_st_tensor *s = ds_ckpt_find(c, sname);
    const int64_t sr = ds_fp8_nblocks(shape[0], DS_FP8_BLOCK), sc = ds_fp8_nblocks(shape[1], DS_FP8_BLOCK);
    if (!s) return ds_fail(DS_ERR, "checkpoint: F8_E4M3 tensor %.200s without %.200s: %s", name, sname, ds_ckpt_where(c));
    if (s->dtype != DS_F32 || !ds_st_shape_is(s, 2, (const int64_t[]){sr, sc}))
        return ds_fail(DS_ERR, "checkpoint: %.200s must be F32 [%lld, %lld]: %s", sname, (long long)sr, (long long)sc,
                       ds_ckpt_where(c));
    float *scale = malloc((size_t)(sr * sc) * sizeof *scale + 1);
    if (!scale) return ds_fail(DS_ERR, "out of memory");
    memcpy(scale, s->data, (size_t)(sr * sc) * sizeof *scale); /* the mapping need not be 4-byte aligned */
    int rc = ds_fp8_dequantize(out, t->data, scale, shape[0], shape[1], DS_FP8_BLOCK, DS_FP8_BLOCK);
    free(scale);
    return rc;
}
