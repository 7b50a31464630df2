#include "infer/load.h"

#include "core/err.h"
#include "core/file.h"
#include "io/safetensors.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parameters sorted by name, for lookups while tensors stream by in file order. */
typedef struct {
    const ds_param *p;
    int n;
    int *by_name;
    unsigned char *filled;
} param_index;

static const ds_param *sort_base;
static int cmp_param(const void *a, const void *b) {
    return strcmp(sort_base[*(const int *)a].name, sort_base[*(const int *)b].name);
}

static int index_build(param_index *x, ds_model *m) {
    x->p = ds_model_params_info(m, &x->n);
    x->by_name = malloc((size_t)x->n * sizeof *x->by_name);
    x->filled = calloc((size_t)x->n, 1);
    if (!x->by_name || !x->filled) return ds_fail(DS_ERR, "checkpoint: out of memory for %d tensor names", x->n);
    for (int i = 0; i < x->n; i++) x->by_name[i] = i;
    sort_base = x->p;
    qsort(x->by_name, (size_t)x->n, sizeof *x->by_name, cmp_param);
    return DS_OK;
}

static int index_find(const param_index *x, const char *name) {
    int lo = 0, hi = x->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(x->p[x->by_name[mid]].name, name);
        if (!c) return x->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static void index_free(param_index *x) {
    free(x->by_name);
    free(x->filled);
}

/* Layer of "model.layers.L.mlp.gate.e_score_correction_bias", or -1. */
static int bias_layer(const char *name) {
    int l, used = 0;
    if (sscanf(name, "model.layers.%d.mlp.gate.e_score_correction_bias%n", &l, &used) == 1 && name[used] == 0) return l;
    return -1;
}

static int check_shape(const ds_st_tensor *t, const int64_t *shape, int ndim, const char *where) {
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (ok) return DS_OK;
    char got[96], want[96];
    ds_st_shape_str(t, got, sizeof got);
    if (ndim == 1) snprintf(want, sizeof want, "[%lld]", (long long)shape[0]);
    else snprintf(want, sizeof want, "[%lld, %lld]", (long long)shape[0], (long long)shape[1]);
    return ds_fail(DS_ERR, "checkpoint: %s: shape %s, the config gives %s: %s", t->name, got, want, where);
}

/* Copy one tensor into the model if it is one of its parameters (or an expert bias). */
static int take(ds_model *m, param_index *x, const ds_st_tensor *t, const char *where) {
    int i = index_find(x, t->name);
    if (i >= 0) {
        const ds_param *p = &x->p[i];
        DS_TRY(check_shape(t, p->shape, p->ndim, where));
        DS_TRY(ds_st_read_f32(t, ds_model_params(m) + p->offset, where));
        x->filled[i] = 1;
        return DS_OK;
    }
    int l = bias_layer(t->name);
    const ds_config *c = ds_model_config(m);
    if (l >= 0 && l < c->num_hidden_layers + c->num_nextn_predict_layers && ds_model_expert_bias(m, l)) {
        int64_t e = c->n_routed_experts;
        DS_TRY(check_shape(t, &e, 1, where));
        return ds_st_read_f32(t, ds_model_expert_bias(m, l), where);
    }
    return DS_OK; /* tensors the model does not use (the MTP layer's copies of embedding and head) */
}

static int check_complete(const param_index *x, const char *where) {
    for (int i = 0; i < x->n; i++)
        if (!x->filled[i]) return ds_fail(DS_ERR, "checkpoint: missing tensor %s: %s", x->p[i].name, where);
    return DS_OK;
}

/* MTP module 1's projection names the module: without it the model is built with no MTP layers. */
static int has_mtp_tensor(const char *name, const ds_config *c) {
    char want[96];
    snprintf(want, sizeof want, "model.layers.%d.eh_proj.weight", c->num_hidden_layers);
    return !strcmp(name, want);
}

static int make_model(ds_loaded *out, ds_config *cfg, int has_mtp, const ds_model_opts *opts) {
    out->has_mtp = has_mtp && cfg->num_nextn_predict_layers > 0;
    if (!out->has_mtp) cfg->num_nextn_predict_layers = 0;
    ds_model_opts o = *opts;
    if (o.max_seq <= 0) o.max_seq = cfg->max_position_embeddings;
    return ds_model_create(&out->model, cfg, &o);
}

static int load_tokenizer(ds_loaded *out, const char *json, const char *where) {
    if (!json) return DS_OK;
    return ds_tok_from_json(&out->tok, json, strlen(json), where);
}

static int load_stream(const char *path, const ds_model_opts *opts, ds_loaded *out) {
    ds_st_stream *s = NULL;
    ds_config cfg;
    int have_cfg = 0;
    param_index x = {0};
    DS_TRY(ds_st_stream_open(&s, stdin, "-"));
    const char *cj = ds_st_stream_meta(s, "config");
    int rc = cj ? ds_config_parse(&cfg, cj, strlen(cj), "-: __metadata__.config")
                : ds_fail(DS_ERR, "checkpoint stream: no \"config\" in __metadata__: %s", path);
    have_cfg = rc == 0;
    int mtp = 0;
    for (int i = 0; !rc && i < ds_st_stream_count(s); i++) mtp |= has_mtp_tensor(ds_st_stream_tensor_at(s, i)->name, &cfg);
    if (!rc) rc = make_model(out, &cfg, mtp, opts);
    if (!rc) rc = load_tokenizer(out, ds_st_stream_meta(s, "tokenizer"), "-: __metadata__.tokenizer");
    if (!rc) rc = index_build(&x, out->model);
    const ds_st_tensor *t;
    while (!rc && !(rc = ds_st_stream_next(s, &t)) && t) rc = take(out->model, &x, t, path);
    if (!rc) rc = check_complete(&x, path);
    index_free(&x);
    if (have_cfg) ds_config_free(&cfg);
    ds_st_stream_close(s);
    return rc;
}

static int read_text_file(const char *path, char **text) {
    size_t len;
    return ds_read_file(path, text, &len, (size_t)1 << 30);
}

static int load_files(const char *path, const ds_model_opts *opts, ds_loaded *out) {
    ds_st_set *set = NULL;
    ds_config cfg;
    int have_cfg = 0, rc;
    param_index x = {0};
    char dir[4096], file[4200];
    char *tok_json = NULL;
    DS_TRY(ds_st_set_open(&set, path));
    if (ds_path_is_dir(path)) {
        snprintf(dir, sizeof dir, "%s", path);
    } else {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", path);
        snprintf(dir, sizeof dir, "%s", dirname(tmp));
    }
    const char *meta_cfg = ds_st_set_meta(set, "config");
    snprintf(file, sizeof file, "%s/config.json", dir);
    if (ds_path_is_dir(path) || !meta_cfg) {
        rc = ds_config_load_file(&cfg, file);
    } else {
        snprintf(file, sizeof file, "%s: __metadata__.config", path);
        rc = ds_config_parse(&cfg, meta_cfg, strlen(meta_cfg), file);
    }
    have_cfg = rc == 0;
    int mtp = 0;
    for (int i = 0; !rc && i < ds_st_set_count(set); i++) mtp |= has_mtp_tensor(ds_st_set_tensor_at(set, i)->name, &cfg);
    if (!rc) rc = make_model(out, &cfg, mtp, opts);
    snprintf(file, sizeof file, "%s/tokenizer.json", dir);
    if (!rc && ds_path_exists(file)) {
        rc = read_text_file(file, &tok_json);
        if (!rc) rc = load_tokenizer(out, tok_json, file);
    } else if (!rc) {
        rc = load_tokenizer(out, ds_st_set_meta(set, "tokenizer"), "__metadata__.tokenizer");
    }
    if (!rc) rc = index_build(&x, out->model);
    for (int i = 0; !rc && i < ds_st_set_count(set); i++) {
        const ds_st_tensor *t = ds_st_set_tensor_at(set, i);
        rc = take(out->model, &x, t, ds_st_set_file_of(set, t->name));
    }
    if (!rc) rc = check_complete(&x, path);
    free(tok_json);
    index_free(&x);
    if (have_cfg) ds_config_free(&cfg);
    ds_st_set_close(set);
    return rc;
}

int ds_load_checkpoint(const char *path, const ds_model_opts *opts, ds_loaded *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->where, sizeof out->where, "%s", path);
    int rc = ds_is_stdio(path) ? load_stream(path, opts, out) : load_files(path, opts, out);
    if (rc) ds_loaded_free(out);
    return rc;
}

void ds_loaded_free(ds_loaded *l) {
    ds_model_free(l->model);
    ds_tok_free(l->tok);
    l->model = NULL;
    l->tok = NULL;
}
