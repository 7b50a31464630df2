#include "fp8/ckpt_convert.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "io/json.h"
#include "io/safetensors.h"

/* Files of a checkpoint directory carried over unchanged (besides config.json and the tensors). */
static const char *const carried_files[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                            "special_tokens_map.json", NULL};

/* ---- config.json ------------------------------------------------------------------------------- */

int ds_ckpt_convert_config(const char *json, size_t len, ds_conv_target target, ds_fp8_scale_fmt scale_fmt,
                           const char *where, char **out) {
    *out = NULL;
    json_t *root = ds_json_parse(json, len, "config", where);
    if (!root) return DS_ERR;
    int rc = DS_OK;
    if (!json_is_object(root)) {
        rc = ds_fail(DS_ERR, "config: not a JSON object: %s", where);
    } else if (target == DS_CONV_TO_FP8) {
        json_t *q = json_pack("{s:s,s:s,s:s}", "activation_scheme", "dynamic", "fmt", "e4m3", "quant_method", "fp8");
        if (q && scale_fmt == DS_FP8_SCALE_UE8M0) json_object_set_new(q, "scale_fmt", json_string("ue8m0"));
        if (q) json_object_set_new(q, "weight_block_size", json_pack("[i,i]", DS_FP8_BLOCK, DS_FP8_BLOCK));
        if (!q || json_object_set_new(root, "quantization_config", q)) rc = ds_fail(DS_ERR, "out of memory");
    } else {
        json_object_del(root, "quantization_config");
        const char *dt = target == DS_CONV_TO_BF16 ? "bfloat16" : "float32";
        const char *key = json_object_get(root, "torch_dtype") || !json_object_get(root, "dtype") ? "torch_dtype" : "dtype";
        if (json_object_set_new(root, key, json_string(dt))) rc = ds_fail(DS_ERR, "out of memory");
    }
    if (!rc) rc = ds_json_dump(root, 2, out);
    json_decref(root);
    return rc;
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

static int writer_sink(void *ctx, const void *bytes, size_t n) { return ds_st_writer_data(ctx, bytes, n); }

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

/* ---- directories -------------------------------------------------------------------------------- */

static void remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[8192];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && !ds_path_join(p, sizeof p, dir, e->d_name))
                unlink(p);
        closedir(d);
    }
    rmdir(dir);
}

static int write_text(const char *dir, const char *name, const char *text, size_t len) {
    char p[8192];
    ds_atomic a;
    DS_TRY(ds_path_join(p, sizeof p, dir, name));
    DS_TRY(ds_atomic_open(&a, p));
    int rc = ds_write_all(a.f, text, len, p);
    if (rc) {
        ds_atomic_abort(&a);
        return rc;
    }
    return ds_atomic_commit(&a);
}

static int read_optional(const char *dir, const char *name, char **text, size_t *len) {
    char p[8192];
    *text = NULL, *len = 0;
    DS_TRY(ds_path_join(p, sizeof p, dir, name));
    if (!ds_path_exists(p)) return DS_OK;
    return ds_read_file(p, text, len, 0);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* ---- the conversion ----------------------------------------------------------------------------- */

typedef struct {
    ds_st_set *set;
    ds_st_stream *stream;
    const ds_st_tensor **t;
    ds_tensor_desc *desc;
    int n;
    char *config, *tokenizer; /* texts (NULL when absent) */
    size_t config_len, tokenizer_len;
    char dir[4096];           /* input directory ("" when not a directory) */
} input;

static void input_close(input *in) {
    if (in->set) ds_st_set_close(in->set);
    if (in->stream) ds_st_stream_close(in->stream);
    free(in->t), free(in->desc), free(in->config), free(in->tokenizer);
}

static char *dup_text(const char *s, size_t *len) {
    if (!s) return NULL;
    *len = strlen(s);
    return strdup(s);
}

static int input_open(input *in, const char *path) {
    memset(in, 0, sizeof *in);
    if (ds_is_stdio(path)) {
        DS_TRY(ds_st_stream_open(&in->stream, stdin, "<stdin>"));
        in->n = ds_st_stream_count(in->stream);
        in->config = dup_text(ds_st_stream_meta(in->stream, "config"), &in->config_len);
        in->tokenizer = dup_text(ds_st_stream_meta(in->stream, "tokenizer"), &in->tokenizer_len);
    } else {
        DS_TRY(ds_st_set_open(&in->set, path));
        in->n = ds_st_set_count(in->set);
        if (ds_path_is_dir(path)) {
            snprintf(in->dir, sizeof in->dir, "%s", path);
            DS_TRY(read_optional(path, "config.json", &in->config, &in->config_len));
            DS_TRY(read_optional(path, "tokenizer.json", &in->tokenizer, &in->tokenizer_len));
        } else {
            in->config = dup_text(ds_st_set_meta(in->set, "config"), &in->config_len);
            in->tokenizer = dup_text(ds_st_set_meta(in->set, "tokenizer"), &in->tokenizer_len);
        }
    }
    in->t = calloc((size_t)in->n + 1, sizeof *in->t);
    in->desc = calloc((size_t)in->n + 1, sizeof *in->desc);
    if (!in->t || !in->desc) return ds_fail(DS_ERR, "out of memory");
    for (int i = 0; i < in->n; i++) {
        const ds_st_tensor *t = in->set ? ds_st_set_tensor_at(in->set, i) : ds_st_stream_tensor_at(in->stream, i);
        in->t[i] = t;
        ds_tensor_desc *d = &in->desc[i];
        d->name = t->name, d->dtype = t->dtype, d->ndim = t->ndim;
        for (int k = 0; k < t->ndim; k++) d->shape[k] = t->shape[k];
    }
    return DS_OK;
}

int ds_ckpt_convert(const char *in_path, const char *out_path, const ds_ckpt_convert_opts *o,
                    ds_ckpt_convert_stats *stats) {
    ds_ckpt_convert_stats local;
    ds_ckpt_convert_stats *st = stats ? stats : &local;
    memset(st, 0, sizeof *st);
    const double t0 = ds_now();
    const int out_stream = ds_is_stdio(out_path), out_file = !out_stream && ends_with(out_path, ".safetensors");
    const int out_dir = !out_stream && !out_file;
    if (out_dir && ds_path_exists(out_path)) {
        ds_fail(DS_ERR, "output exists: %s", out_path);
        ds_hint("choose a new output directory or remove the old one");
        return DS_ERR;
    }
    input in;
    ds_conv_plan plan = {0};
    ds_st_writer *w = NULL;
    char tmp[4200] = "", model_path[8192], *config = NULL;
    int rc = input_open(&in, in_path);
    if (!rc) rc = ds_conv_plan_make(&plan, in.desc, in.n, o->target, o->scale_fmt);
    if (!rc && in.config)
        rc = ds_ckpt_convert_config(in.config, in.config_len, o->target, o->scale_fmt, in_path, &config);
    if (!rc && !in.config) ds_warn("no config.json in %s: the output has none either", in_path);
    if (rc) goto done;
    st->tensors_in = in.n;
    for (int i = 0; i < in.n; i++) st->bytes_in += (uint64_t)ds_tensor_desc_numel(&in.desc[i]) * ds_dtype_size(in.desc[i].dtype);
    for (int i = 0; i < plan.n; i++)
        st->bytes_out += (uint64_t)ds_tensor_desc_numel(&plan.steps[i].out) * ds_dtype_size(plan.steps[i].out.dtype);

    ds_st_write_opts wo = {.max_shard_bytes = out_dir ? o->max_shard_bytes : 0};
    if (out_dir) {
        snprintf(tmp, sizeof tmp, "%s.tmp-%ld", out_path, (long)getpid());
        remove_flat_dir(tmp);
        if ((rc = ds_mkdir_p(tmp))) goto done;
        rc = ds_path_join(model_path, sizeof model_path, tmp, "model.safetensors");
    } else {
        snprintf(model_path, sizeof model_path, "%s", out_path);
    }
    if (!rc) rc = ds_st_writer_open(&w, model_path, &wo);
    if (!rc && !out_dir && config) rc = ds_st_writer_meta(w, "config", config);
    if (!rc && !out_dir && in.tokenizer) rc = ds_st_writer_meta(w, "tokenizer", in.tokenizer);
    for (int i = 0; i < plan.n && !rc; i++) {
        const ds_tensor_desc *d = &plan.steps[i].out;
        rc = ds_st_writer_declare(w, d->name, d->dtype, d->ndim, d->shape);
    }
    if (rc) goto done;

    run_ctx ctx = {.o = o, .st = st};
    if (o->progress) ds_progress_begin(&ctx.prog, "converting", "B", (double)st->bytes_in);
    set_src ss = {in.t};
    stream_src ps = {in.stream, -1, NULL, "<stdin>"};
    ds_conv_source src = in.set ? (ds_conv_source){&ss, set_read, 0} : (ds_conv_source){&ps, stream_read, 1};
    ds_conv_sink sink = {w, writer_sink};
    rc = ds_conv_run(&plan, in.desc, &src, &sink, on_report, &ctx);
    if (o->progress) ds_progress_end(&ctx.prog);
    if (rc) goto done;
    rc = ds_st_writer_close(w);
    w = NULL;
    if (rc || !out_dir) goto done;

    /* the rest of the directory, then the rename that publishes it */
    if (config) rc = write_text(tmp, "config.json", config, strlen(config));
    for (int k = 0; carried_files[k] && !rc; k++) {
        char *text = NULL;
        size_t len = 0;
        if (in.dir[0]) rc = read_optional(in.dir, carried_files[k], &text, &len);
        else if (!strcmp(carried_files[k], "tokenizer.json") && in.tokenizer)
            text = dup_text(in.tokenizer, &len);
        if (!rc && text) rc = write_text(tmp, carried_files[k], text, len);
        free(text);
    }
    if (!rc) rc = ds_fsync_dir(tmp);
    if (!rc && rename(tmp, out_path)) rc = ds_fail(DS_ERR, "cannot rename %s to %s", tmp, out_path);
    if (!rc) {
        char parent[4200];
        snprintf(parent, sizeof parent, "%s", out_path);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) *slash = 0;
        else snprintf(parent, sizeof parent, "%s", slash ? "/" : ".");
        rc = ds_fsync_dir(parent);
        tmp[0] = 0;
    }
done:
    if (w) ds_st_writer_abort(w);
    if (rc && tmp[0]) remove_flat_dir(tmp);
    free(config);
    ds_conv_plan_free(&plan);
    input_close(&in);
    st->seconds = ds_now() - t0;
    return rc;
}
