#include "train/session.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "io/safetensors.h"
#include "tok/tokenizer.h"
#include "train/net.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- checkpoint files ---- */

static int join(char *out, size_t n, const char *dir, const char *name) { return ds_path_join(out, n, dir, name); }

static int write_text(const char *dir, const char *name, const char *text, size_t len) {
    char path[4200];
    DS_TRY(join(path, sizeof path, dir, name));
    ds_atomic a;
    DS_TRY(ds_atomic_open(&a, path));
    int rc = ds_write_all(a.f, text, len, path);
    if (rc) {
        ds_atomic_abort(&a);
        return rc;
    }
    return ds_atomic_commit(&a);
}

static void bias_name(char *buf, size_t n, int layer) { snprintf(buf, n, "model.layers.%d.mlp.gate.e_score_correction_bias", layer); }

static int write_weights(ds_model *m, const char *path, int64_t step) {
    ds_st_writer *w;
    DS_TRY(ds_st_writer_open(&w, path, NULL));
    int n_info, rc = 0;
    const ds_param *info = ds_model_params_info(m, &n_info);
    const ds_config *c = ds_model_config(m);
    char sstep[32], name[160];
    snprintf(sstep, sizeof sstep, "%lld", (long long)step);
    rc = ds_st_writer_meta(w, "ds_step", sstep);
    for (int i = 0; !rc && i < n_info; i++) rc = ds_st_writer_declare(w, info[i].name, DS_F32, info[i].ndim, info[i].shape);
    int layers = c->num_hidden_layers + ds_model_mtp_depth(m);
    for (int l = 0; !rc && l < layers; l++) {
        if (!ds_model_expert_bias(m, l)) continue;
        int64_t shape[1] = {c->n_routed_experts};
        bias_name(name, sizeof name, l);
        rc = ds_st_writer_declare(w, name, DS_F32, 1, shape);
    }
    const float *p = ds_model_params(m);
    for (int i = 0; !rc && i < n_info; i++) rc = ds_st_writer_data(w, p + info[i].offset, info[i].numel * sizeof(float));
    for (int l = 0; !rc && l < layers; l++) {
        const float *b = ds_model_expert_bias(m, l);
        if (b) rc = ds_st_writer_data(w, b, (size_t)c->n_routed_experts * sizeof(float));
    }
    if (rc) {
        ds_st_writer_abort(w);
        return rc;
    }
    return ds_st_writer_close(w);
}

static int write_optimizer(const ds_adamw *opt, const ds_model *m, const char *path) {
    int n_info, rc = 0;
    const ds_param *info = ds_model_params_info((ds_model *)m, &n_info);
    size_t biggest = 1;
    for (int i = 0; i < n_info; i++)
        if (info[i].numel > biggest) biggest = info[i].numel;
    float *buf = malloc(biggest * sizeof *buf);
    if (!buf) return ds_fail(DS_ERR, "out of memory: saving the optimizer");
    ds_st_writer *w;
    if ((rc = ds_st_writer_open(&w, path, NULL))) {
        free(buf);
        return rc;
    }
    char name[160], tstep[32];
    snprintf(tstep, sizeof tstep, "%lld", (long long)opt->t);
    rc = ds_st_writer_meta(w, "optimizer", "adamw");
    if (!rc) rc = ds_st_writer_meta(w, "step", tstep);
    /* bf16 moments are stored as bf16 (exact); fp32 ones as fp32 */
    ds_dtype dt = opt->o.bf16_moments ? DS_BF16 : DS_F32;
    for (int i = 0; !rc && i < n_info; i++)
        for (int k = 0; !rc && k < 2; k++) {
            snprintf(name, sizeof name, "%s.%s", info[i].name, k ? "exp_avg_sq" : "exp_avg");
            rc = ds_st_writer_declare(w, name, dt, info[i].ndim, info[i].shape);
        }
    for (int i = 0; !rc && i < n_info; i++)
        for (int k = 0; !rc && k < 2; k++) {
            ds_adamw_get(opt, k, info[i].offset, info[i].numel, buf);
            rc = ds_st_writer_data_f32(w, buf, info[i].numel);
        }
    free(buf);
    if (rc) {
        ds_st_writer_abort(w);
        return rc;
    }
    return ds_st_writer_close(w);
}

/* Regular files only: our checkpoints are flat, and refusing anything else keeps a mistyped -o
 * from deleting a directory tree. */
static int remove_checkpoint_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return ds_fail(DS_ERR, "cannot open directory: %s: %s", strerror(errno), dir);
    struct dirent *e;
    char path[4400];
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) || !S_ISREG(st.st_mode))
            rc = ds_fail(DS_ERR, "not removing a directory that holds more than files: %s", dir);
        else if (unlink(path))
            rc = ds_fail(DS_ERR, "cannot remove: %s: %s", strerror(errno), path);
    }
    closedir(d);
    if (!rc && rmdir(dir)) rc = ds_fail(DS_ERR, "cannot remove directory: %s: %s", strerror(errno), dir);
    return rc;
}

/* An existing output may be replaced only when it is one of our checkpoints or empty. */
static int replaceable(const char *dir) {
    if (!ds_path_exists(dir)) return 1;
    if (!ds_path_is_dir(dir)) return 0;
    char p[4200];
    if (!join(p, sizeof p, dir, "trainer_state.json") && ds_path_exists(p)) return 1;
    if (!join(p, sizeof p, dir, "config.json") && ds_path_exists(p)) return 1;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

static int parent_dir(const char *path, char *out, size_t n) {
    snprintf(out, n, "%s", path);
    size_t len = strlen(out);
    while (len > 1 && out[len - 1] == '/') out[--len] = 0;
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, n, ".");
    else if (slash == out) out[1] = 0;
    else *slash = 0;
    return 0;
}

int ds_session_save(ds_session *s, const char *dir_in) {
    char dir[4096], tmp[4200], p[4400], parent[4096];
    snprintf(dir, sizeof dir, "%s", dir_in);
    for (size_t len = strlen(dir); len > 1 && dir[len - 1] == '/';) dir[--len] = 0;
    if (!replaceable(dir)) {
        ds_fail(DS_ERR, "refusing to replace a directory that is not a checkpoint: %s", dir);
        ds_hint("choose a new -o directory");
        return DS_ERR;
    }
    parent_dir(dir, parent, sizeof parent);
    DS_TRY(ds_mkdir_p(parent));
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", dir, (long)getpid());
    if (ds_path_exists(tmp)) DS_TRY(remove_checkpoint_dir(tmp));
    if (mkdir(tmp, 0777)) return ds_fail(DS_ERR, "cannot create directory: %s: %s", strerror(errno), tmp);
    const int64_t step = ds_trainer_steps_done(s->trainer);
    char *text = NULL;
    int rc = ds_config_to_json(&s->cfg, &text);
    if (!rc) rc = write_text(tmp, "config.json", text, strlen(text));
    free(text);
    if (!rc && s->tokenizer_json) rc = write_text(tmp, "tokenizer.json", s->tokenizer_json, s->tokenizer_len);
    if (!rc) {
        char gen[256];
        int n = snprintf(gen, sizeof gen, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n  \"_from_model_config\": true\n}\n",
                         s->cfg.bos_token_id, s->cfg.eos_token_id);
        rc = write_text(tmp, "generation_config.json", gen, (size_t)n);
    }
    if (!rc && !(rc = join(p, sizeof p, tmp, "model.safetensors"))) rc = write_weights(s->model, p, step);
    if (!rc && !(rc = join(p, sizeof p, tmp, "optimizer.safetensors"))) rc = write_optimizer(ds_trainer_optimizer(s->trainer), s->model, p);
    /* the trainer state last: its presence marks a complete training checkpoint */
    if (!rc && !(rc = ds_trainer_state_json(s->trainer, &text))) {
        rc = write_text(tmp, "trainer_state.json", text, strlen(text));
        free(text);
    }
    if (!rc) rc = ds_fsync_dir(tmp);
    if (!rc) {
        if (ds_path_exists(dir)) {
            /* swap in one step: a reader of dir sees the old checkpoint or the new one */
            if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE))
                rc = ds_fail(DS_ERR, "cannot replace checkpoint: %s: %s", strerror(errno), dir);
            else
                rc = remove_checkpoint_dir(tmp); /* now the old one */
        } else if (rename(tmp, dir)) {
            rc = ds_fail(DS_ERR, "cannot rename checkpoint into place: %s: %s", strerror(errno), dir);
        }
    }
    if (!rc) rc = ds_fsync_dir(parent);
    if (rc && ds_path_exists(tmp)) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", ds_errmsg());
        remove_checkpoint_dir(tmp);
        ds_fail(rc, "%s", keep);
    }
    if (!rc) ds_verbose("checkpoint: step %lld: %s", (long long)step, dir);
    return rc;
}

int ds_checkpoint_read_config(const char *dir, ds_config *cfg, char **tok, size_t *tok_len) {
    char p[4200];
    *tok = NULL;
    *tok_len = 0;
    if (!ds_path_is_dir(dir)) return ds_fail(DS_ERR, "checkpoint: not a directory: %s", dir);
    DS_TRY(join(p, sizeof p, dir, "config.json"));
    DS_TRY(ds_config_load_file(cfg, p));
    int rc = ds_config_validate(cfg, p);
    if (!rc && !join(p, sizeof p, dir, "tokenizer.json") && ds_path_exists(p)) rc = ds_read_file(p, tok, tok_len, 1u << 30);
    if (rc) ds_config_free(cfg);
    return rc;
}

static int same_shape(const ds_st_tensor *t, const ds_param *p) {
    if (t->ndim != p->ndim) return 0;
    for (int d = 0; d < p->ndim; d++)
        if (t->shape[d] != p->shape[d]) return 0;
    return 1;
}

int ds_checkpoint_load_weights(ds_model *m, const char *dir) {
    ds_st_set *set;
    DS_TRY(ds_st_set_open(&set, dir));
    int n_info, rc = 0;
    const ds_param *info = ds_model_params_info(m, &n_info);
    float *p = ds_model_params(m);
    char shp[64];
    for (int i = 0; !rc && i < n_info; i++) {
        const ds_st_tensor *t = ds_st_set_find(set, info[i].name);
        if (!t) {
            rc = ds_fail(DS_ERR, "checkpoint: missing tensor %s: %s", info[i].name, dir);
        } else if (!same_shape(t, &info[i])) {
            ds_st_shape_str(t, shp, sizeof shp);
            rc = ds_fail(DS_ERR, "checkpoint: %s has shape %s, the config needs [%lld%s%lld]: %s", info[i].name, shp,
                         (long long)info[i].shape[0], info[i].ndim > 1 ? ", " : "", info[i].ndim > 1 ? (long long)info[i].shape[1] : 0LL,
                         ds_st_set_file_of(set, info[i].name));
        } else {
            rc = ds_st_read_f32(t, p + info[i].offset, ds_st_set_file_of(set, info[i].name));
        }
    }
    const ds_config *c = ds_model_config(m);
    char name[160];
    for (int l = 0; !rc && l < c->num_hidden_layers + ds_model_mtp_depth(m); l++) {
        float *b = ds_model_expert_bias(m, l);
        if (!b) continue;
        bias_name(name, sizeof name, l);
        const ds_st_tensor *t = ds_st_set_find(set, name);
        if (!t) continue; /* a checkpoint without biases starts them at 0, as V3 does */
        if (t->numel != c->n_routed_experts)
            rc = ds_fail(DS_ERR, "checkpoint: %s has %lld values, expected %d: %s", name, (long long)t->numel, c->n_routed_experts, dir);
        else
            rc = ds_st_read_f32(t, b, ds_st_set_file_of(set, name));
    }
    ds_st_set_close(set);
    return rc;
}

static int load_optimizer(ds_adamw *opt, ds_model *m, const char *dir) {
    char p[4200], name[160];
    DS_TRY(join(p, sizeof p, dir, "optimizer.safetensors"));
    ds_st_file *f;
    DS_TRY(ds_st_open(&f, p));
    int n_info, rc = 0;
    const ds_param *info = ds_model_params_info(m, &n_info);
    size_t biggest = 1;
    for (int i = 0; i < n_info; i++)
        if (info[i].numel > biggest) biggest = info[i].numel;
    float *buf = malloc(biggest * sizeof *buf);
    if (!buf) rc = ds_fail(DS_ERR, "out of memory: loading the optimizer");
    for (int i = 0; !rc && i < n_info; i++)
        for (int k = 0; !rc && k < 2; k++) {
            snprintf(name, sizeof name, "%s.%s", info[i].name, k ? "exp_avg_sq" : "exp_avg");
            const ds_st_tensor *t = ds_st_find(f, name);
            if (!t || !same_shape(t, &info[i]))
                rc = ds_fail(DS_ERR, "optimizer state: %s %s: %s", t ? "wrong shape for" : "missing", name, p);
            else if (!(rc = ds_st_read_f32(t, buf, p)))
                ds_adamw_set(opt, k, info[i].offset, info[i].numel, buf);
        }
    free(buf);
    ds_st_close(f);
    return rc;
}

/* ---- the session ---- */

int ds_session_set_tokenizer(ds_session *s, const char *path) {
    free(s->tokenizer_json);
    s->tokenizer_json = NULL;
    DS_TRY(ds_read_file(path, &s->tokenizer_json, &s->tokenizer_len, 1u << 30));
    ds_tokenizer *t;
    int rc = ds_tok_from_json(&t, s->tokenizer_json, s->tokenizer_len, path);
    if (rc) return rc;
    uint32_t tv = ds_tok_vocab_size(t);
    ds_tok_free(t);
    if ((int64_t)tv > s->cfg.vocab_size) {
        ds_fail(DS_ERR, "vocabulary mismatch: the tokenizer has %u tokens, the model's vocab_size is %d: %s", tv, s->cfg.vocab_size, path);
        ds_hint("use a config whose vocab_size covers the tokenizer");
        return DS_ERR;
    }
    return 0;
}

int64_t ds_session_token_id(const ds_session *s, const char *text) {
    if (!s->tokenizer_json) return -1;
    ds_tokenizer *t;
    if (ds_tok_from_json(&t, s->tokenizer_json, s->tokenizer_len, "tokenizer.json")) return -1;
    int64_t id = ds_tok_token_id(t, text);
    ds_tok_free(t);
    return id;
}

int ds_session_open(ds_session *s, const ds_session_opts *o) {
    memset(s, 0, sizeof *s);
    s->o = *o;
    s->resumed_step = -1;
    if (o->device && strcmp(o->device, "cpu")) {
        ds_fail(DS_ERR, "--device %s: training runs on the CPU in this build", o->device);
        ds_hint("the CUDA training backend is not available yet; use --device cpu");
        return DS_ERR;
    }
    if (o->fp8) {
        ds_fail(DS_ERR, "--fp8: FP8 training GEMMs need the CUDA backend; the CPU trainer computes in fp32");
        ds_hint("drop --fp8 on the CPU");
        return DS_ERR;
    }
    const char *from = o->resume ? o->resume : o->model_path;
    if (from) {
        DS_TRY(ds_checkpoint_read_config(from, &s->cfg, &s->tokenizer_json, &s->tokenizer_len));
    } else {
        if (!o->config_path) return ds_fail(DS_EUSAGE, "no model: give --config CFG.json or -m CKPT");
        DS_TRY(ds_config_load_file(&s->cfg, o->config_path));
        DS_TRY(ds_config_validate(&s->cfg, o->config_path));
    }
    s->have_cfg = 1;
    if (o->init_std > 0) s->cfg.ds_init_std = o->init_std;
    if (o->tokenizer_path) DS_TRY(ds_session_set_tokenizer(s, o->tokenizer_path));
    if (o->seq_len > s->cfg.max_position_embeddings)
        ds_warn("--seq-len %d exceeds the config's max_position_embeddings %d", o->seq_len, s->cfg.max_position_embeddings);
    ds_model_opts mo = {.max_batch = o->micro_batch, .max_seq = o->seq_len, .train = 1, .recompute = 1,
                        .balance_alpha = o->balance_alpha, .want_entropy = o->want_entropy};
    DS_TRY(ds_model_create(&s->model, &s->cfg, &mo));
    if (from)
        DS_TRY(ds_checkpoint_load_weights(s->model, from));
    else
        DS_TRY(ds_model_init(s->model, o->seed));
    return ds_train_net_from_model(&s->net, s->model, o->seq_len);
}

static int save_hook(void *ctx, ds_trainer *t, int final) {
    ds_session *s = ctx;
    (void)t;
    (void)final;
    int rc = ds_session_save(s, s->o.out_dir);
    if (!rc) ds_info("saved step %lld: %s", (long long)ds_trainer_steps_done(s->trainer), s->o.out_dir);
    return rc;
}

/* Keep the metrics records up to `step` (and every record without a step), so a resumed run's
 * file reads as one run even when the killed run had logged past its last checkpoint. */
static int trim_metrics(const char *path, int64_t step) {
    if (ds_is_stdio(path) || !ds_path_exists(path)) return 0;
    char *text;
    size_t len;
    DS_TRY(ds_read_file(path, &text, &len, 0));
    ds_atomic a;
    int rc = ds_atomic_open(&a, path);
    for (char *line = text; !rc && line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(text + len - line);
        json_t *j = json_loadb(line, n, 0, NULL);
        json_t *st = j ? json_object_get(j, "step") : NULL;
        int keep = j && (!json_is_integer(st) || json_integer_value(st) <= step);
        json_decref(j);
        if (keep) rc = ds_write_all(a.f, line, n, path), rc = rc ? rc : ds_write_all(a.f, "\n", 1, path);
        line += n + 1;
    }
    free(text);
    if (rc) {
        ds_atomic_abort(&a);
        return rc;
    }
    return ds_atomic_commit(&a);
}

int ds_session_start(ds_session *s, const ds_train_opts *to, ds_data_source *train, ds_data_source *val,
                     const ds_loss_hook *loss, const char *config_record) {
    s->stop = ds_train_catch_signals();
    ds_train_hooks h = {.save = save_hook, .ctx = s, .stop = s->stop, .step_record = s->o.step_record,
                        .after_step = s->o.after_step, .step_ctx = s->o.step_ctx};
    if (s->o.metrics_path) h.metrics = &s->metrics;
    DS_TRY(ds_trainer_create(&s->trainer, to, &s->net, train, val, loss, &h));
    if (s->o.resume) {
        char p[4200];
        char *text;
        size_t len;
        DS_TRY(join(p, sizeof p, s->o.resume, "trainer_state.json"));
        if (!ds_path_exists(p)) {
            ds_fail(DS_ERR, "not a training checkpoint (no trainer_state.json): %s", s->o.resume);
            ds_hint("--resume takes a directory written by a ds-* training tool; -m loads weights only");
            return DS_ERR;
        }
        DS_TRY(ds_read_file(p, &text, &len, 1u << 30));
        int rc = ds_trainer_state_load(s->trainer, text, len, p);
        free(text);
        DS_TRY(rc);
        DS_TRY(load_optimizer(ds_trainer_optimizer_mut(s->trainer), s->model, s->o.resume));
        s->resumed_step = ds_trainer_steps_done(s->trainer);
        snprintf(s->resume_dir, sizeof s->resume_dir, "%s", s->o.resume);
        ds_info("resuming at step %lld of %lld from %s", (long long)s->resumed_step, (long long)to->total_steps, s->o.resume);
    }
    if (s->o.metrics_path) {
        if (s->resumed_step >= 0) DS_TRY(trim_metrics(s->o.metrics_path, s->resumed_step));
        DS_TRY(ds_metrics_open(&s->metrics, s->o.metrics_path, s->resumed_step >= 0));
        s->have_metrics = 1;
        if (config_record) {
            ds_jsonw w;
            ds_jsonw_init(&w);
            ds_jsonw_raw(&w, config_record);
            int rc = ds_metrics_write(&s->metrics, &w);
            ds_jsonw_free(&w);
            DS_TRY(rc);
        }
    }
    return 0;
}

int ds_session_run(ds_session *s, int *stopped_by) {
    ds_train_end end;
    *stopped_by = 0;
    int rc = ds_trainer_run(s->trainer, &end);
    if (s->o.plot_path && (rc == 0 || rc == DS_EDIVERGED)) {
        char keep[1024] = "", hint[512] = "";
        snprintf(keep, sizeof keep, "%s", ds_errmsg());
        snprintf(hint, sizeof hint, "%s", ds_errhint());
        if (ds_trainer_plot(s->trainer, s->o.plot_path, s->o.tool)) ds_warn("%s", ds_errmsg());
        if (rc) {
            ds_fail(rc, "%s", keep);
            if (hint[0]) ds_hint("%s", hint);
        }
    }
    if (!rc && end == DS_TRAIN_STOPPED) *stopped_by = (int)*s->stop;
    return rc;
}

void ds_session_close(ds_session *s) {
    ds_trainer_free(s->trainer);
    ds_train_net_release(&s->net);
    ds_model_free(s->model);
    if (s->have_metrics) ds_metrics_close(&s->metrics);
    if (s->have_cfg) ds_config_free(&s->cfg);
    free(s->tokenizer_json);
    memset(s, 0, sizeof *s);
}
