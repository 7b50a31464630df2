/* checkpoint.c — see checkpoint.h. */
#include "io/checkpoint.h"

#include "core/err.h"
#include "core/file.h"
#include "io/json.h"
#include "io/kind.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TEXT_FILE (1u << 30)

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* A file name inside a checkpoint: no directories, nothing hidden or special. */
static int check_file_name(const char *name, const char *where) {
    if (!*name || strchr(name, '/') || name[0] == '.')
        return ds_fail(DS_ERR, "checkpoint: bad file name \"%.200s\" (a plain name, not hidden): %s", name, where);
    return 0;
}

/* ---- reading -------------------------------------------------------------------------------- */

struct ds_ckpt {
    char where[4096];
    char dir[4096]; /* "" for a stream */
    int is_dir;
    ds_config cfg;
    int have_cfg;
    char *tok;
    size_t tok_len;
    ds_st_set *set;
};

void ds_ckpt_close(ds_ckpt *c) {
    if (!c) return;
    if (c->have_cfg) ds_config_free(&c->cfg);
    free(c->tok);
    ds_st_set_close(c->set);
    free(c);
}

static int read_dir_file(const char *dir, const char *name, char **data, size_t *len) {
    char p[8192];
    DS_TRY(ds_path_join(p, sizeof p, dir, name));
    return ds_read_file(p, data, len, MAX_TEXT_FILE);
}

static int open_dir(ds_ckpt *c, const char *dir) {
    char p[8192];
    c->is_dir = 1;
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    DS_TRY(ds_path_join(p, sizeof p, dir, "config.json"));
    if (!ds_path_exists(p)) return ds_fail(DS_ERR, "checkpoint: no config.json: %s", dir);
    DS_TRY(ds_config_load_file(&c->cfg, p));
    c->have_cfg = 1;
    DS_TRY(ds_path_join(p, sizeof p, dir, "tokenizer.json"));
    if (ds_path_exists(p)) DS_TRY(ds_read_file(p, &c->tok, &c->tok_len, MAX_TEXT_FILE));
    return ds_st_set_open(&c->set, dir);
}

static int open_stream(ds_ckpt *c, const char *path) {
    if (ds_is_stdio(path)) {
        ds_st_file *f;
        DS_TRY(ds_st_open(&f, "-"));
        DS_TRY(ds_st_set_from_file(&c->set, f, "<stdin>"));
    } else {
        DS_TRY(ds_st_set_open(&c->set, path));
    }
    const char *cfg = ds_st_set_meta(c->set, "config");
    char where[4200];
    if (cfg) {
        snprintf(where, sizeof where, "%s (__metadata__ config)", c->where);
        DS_TRY(ds_config_parse(&c->cfg, cfg, strlen(cfg), where));
    } else {
        /* a bare model.safetensors: its config.json sits next to it */
        char dir[4096], p[8192];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
        if (ds_is_stdio(path) || ds_path_join(p, sizeof p, dir, "config.json") || !ds_path_exists(p))
            return ds_fail(DS_ERR, "checkpoint: no config (neither __metadata__ \"config\" nor a config.json beside it): %s",
                           c->where);
        DS_TRY(ds_config_load_file(&c->cfg, p));
    }
    c->have_cfg = 1;
    const char *tok = ds_st_set_meta(c->set, "tokenizer");
    if (tok) {
        c->tok_len = strlen(tok);
        if (!(c->tok = strdup(tok))) return ds_fail(DS_ERR, "out of memory");
    }
    return 0;
}

int ds_ckpt_open(ds_ckpt **out, const char *path) {
    *out = NULL;
    ds_ckpt *c = calloc(1, sizeof *c);
    if (!c) return ds_fail(DS_ERR, "out of memory");
    snprintf(c->where, sizeof c->where, "%s", ds_is_stdio(path) ? "<stdin>" : path);
    int rc;
    if (!ds_is_stdio(path) && ds_path_is_dir(path)) rc = open_dir(c, path);
    else if (!ds_is_stdio(path) && !ds_path_exists(path)) rc = ds_fail(DS_ERR, "checkpoint: not found: %s", path);
    else rc = open_stream(c, path);
    if (rc) {
        ds_ckpt_close(c);
        static const ds_kind takes[] = {DS_KIND_CKPT_DIR, DS_KIND_DIR, DS_KIND_SAFETENSORS, DS_KIND_ST_INDEX, DS_KIND_UNKNOWN};
        return ds_kind_explain(rc, path, "checkpoint", "a checkpoint", takes);
    }
    *out = c;
    return 0;
}

const ds_config *ds_ckpt_config(const ds_ckpt *c) { return &c->cfg; }
const char *ds_ckpt_tokenizer(const ds_ckpt *c, size_t *len) {
    if (len) *len = c->tok_len;
    return c->tok;
}
const ds_st_set *ds_ckpt_tensors(const ds_ckpt *c) { return c->set; }
int ds_ckpt_count(const ds_ckpt *c) { return ds_st_set_count(c->set); }
const ds_st_tensor *ds_ckpt_tensor_at(const ds_ckpt *c, int i) { return ds_st_set_tensor_at(c->set, i); }
const ds_st_tensor *ds_ckpt_find(const ds_ckpt *c, const char *name) { return ds_st_set_find(c->set, name); }
const char *ds_ckpt_dir(const ds_ckpt *c) { return c->is_dir ? c->dir : NULL; }
const char *ds_ckpt_where(const ds_ckpt *c) { return c->where; }
int ds_ckpt_is_stream(const ds_ckpt *c) { return !c->is_dir; }

int ds_ckpt_read_f32(const ds_ckpt *c, const char *name, int ndim, const int64_t *shape, float *out) {
    const ds_st_tensor *t = ds_st_set_find(c->set, name);
    if (!t) return ds_fail(DS_ERR, "checkpoint: missing tensor %.200s: %s", name, c->where);
    const char *file = ds_st_set_file_of(c->set, name);
    char where[8400];
    if (c->is_dir) snprintf(where, sizeof where, "%s/%s", c->dir, file);
    else snprintf(where, sizeof where, "%s", c->where);
    if (!ds_st_shape_is(t, ndim, shape)) {
        char have[160], want[160];
        ds_st_tensor w = {.ndim = ndim};
        for (int d = 0; d < ndim && d < DS_ST_MAX_DIMS; d++) w.shape[d] = shape[d];
        ds_st_shape_str(t, have, sizeof have);
        ds_st_shape_str(&w, want, sizeof want);
        return ds_fail(DS_ERR, "checkpoint: %.200s has shape %s, expected %s: %s", name, have, want, where);
    }
    char sname[300];
    snprintf(sname, sizeof sname, "%.200s_scale_inv", name);
    if ((t->dtype == DS_F8_E4M3 || t->dtype == DS_F8_E5M2) && ds_st_set_find(c->set, sname)) {
        ds_fail(DS_ERR, "checkpoint: %.200s is %s with block scales (%s): not readable as plain float32: %s", name,
                ds_dtype_name(t->dtype), sname, where);
        ds_hint("read it dequantized with ds_fp8_ckpt_read_f32 (fp8/ckpt_convert.h)");
        return DS_ERR;
    }
    return ds_st_read_f32(t, out, where);
}

static const char *stream_meta_for(const ds_ckpt *c, const char *name, char *key, size_t n) {
    if (!strcmp(name, "config.json")) return ds_st_set_meta(c->set, "config");
    if (!strcmp(name, "tokenizer.json")) return ds_st_set_meta(c->set, "tokenizer");
    snprintf(key, n, "file:%s", name);
    return ds_st_set_meta(c->set, key);
}

int ds_ckpt_has_file(const ds_ckpt *c, const char *name) {
    if (c->is_dir) {
        char p[8192];
        return !ds_path_join(p, sizeof p, c->dir, name) && ds_path_exists(p);
    }
    char key[1100];
    return stream_meta_for(c, name, key, sizeof key) != NULL;
}

int ds_ckpt_read_file(const ds_ckpt *c, const char *name, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    DS_TRY(check_file_name(name, c->where));
    if (!ds_ckpt_has_file(c, name)) return ds_fail(DS_ERR, "checkpoint: no %.200s: %s", name, c->where);
    if (c->is_dir) return read_dir_file(c->dir, name, data, len);
    char key[1100];
    const char *v = stream_meta_for(c, name, key, sizeof key);
    *len = strlen(v);
    if (!(*data = strdup(v))) return ds_fail(DS_ERR, "out of memory");
    return 0;
}

int ds_ckpt_is_complete(const char *dir) {
    char p[8192];
    if (!ds_path_is_dir(dir) || ds_path_join(p, sizeof p, dir, "config.json") || !ds_path_exists(p)) return 0;
    if (!ds_path_join(p, sizeof p, dir, "model.safetensors") && ds_path_exists(p)) return 1;
    return !ds_path_join(p, sizeof p, dir, "model.safetensors.index.json") && ds_path_exists(p);
}

/* trainer_state.json "step" (or "global_step"); -1 when absent or unreadable. */
static long long ckpt_step(const char *dir) {
    char *text;
    size_t len;
    char p[8192];
    if (ds_path_join(p, sizeof p, dir, "trainer_state.json") || !ds_path_exists(p) || ds_read_file(p, &text, &len, 1u << 26))
        return -1;
    json_t *j = json_loadb(text, len, 0, NULL);
    free(text);
    json_t *s = json_object_get(j, "step");
    if (!json_is_integer(s)) s = json_object_get(j, "global_step");
    long long step = json_is_integer(s) ? json_integer_value(s) : -1;
    json_decref(j);
    return step;
}

static int is_temp_name(const char *name) { return strstr(name, ".tmp-") != NULL || strstr(name, ".old-") != NULL; }

int ds_ckpt_find_latest(const char *dir, char *out, size_t n) {
    if (ds_ckpt_is_complete(dir)) {
        if ((size_t)snprintf(out, n, "%s", dir) >= n) return ds_fail(DS_ERR, "path too long: %s", dir);
        return 0;
    }
    DIR *d = opendir(dir);
    if (!d) return ds_fail(DS_ERR, "checkpoint: cannot open directory: %s: %s", strerror(errno), dir);
    struct dirent *e;
    char best[8192] = "", p[8192];
    long long best_step = -2;
    struct timespec best_time = {0, 0};
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || is_temp_name(e->d_name)) continue;
        if (ds_path_join(p, sizeof p, dir, e->d_name) || !ds_ckpt_is_complete(p)) continue;
        long long step = ckpt_step(p);
        char cfg[8300];
        struct stat st;
        snprintf(cfg, sizeof cfg, "%s/config.json", p);
        if (stat(cfg, &st)) continue;
        int newer = step > best_step ||
                    (step == best_step && (st.st_mtim.tv_sec > best_time.tv_sec ||
                                           (st.st_mtim.tv_sec == best_time.tv_sec && st.st_mtim.tv_nsec > best_time.tv_nsec) ||
                                           (st.st_mtim.tv_sec == best_time.tv_sec && st.st_mtim.tv_nsec == best_time.tv_nsec &&
                                            strcmp(p, best) > 0)));
        if (newer) {
            best_step = step;
            best_time = st.st_mtim;
            snprintf(best, sizeof best, "%s", p);
        }
    }
    closedir(d);
    if (!best[0]) return ds_fail(DS_ERR, "checkpoint: none found under %s", dir);
    if ((size_t)snprintf(out, n, "%s", best) >= n) return ds_fail(DS_ERR, "path too long: %s", best);
    return 0;
}

/* ---- writing -------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *ptr; /* deferred data, or NULL when streamed */
    int from_f32;    /* ptr holds float32 to convert to dtype */
} ctensor;

typedef struct {
    char *name;
    char *data;
    size_t len;
} cfile;

struct ds_ckpt_writer {
    int stream, to_stdout;
    char path[4096], tmp[4200], parent[4096];
    ds_ckpt_write_opts opts;
    ds_config cfg;
    int have_cfg;
    char *tok;
    size_t tok_len;
    cfile *files; /* stream form: metadata; directory form: names written (for generation_config) */
    int n_files;
    ctensor *t;
    int n, cap;
    ds_st_writer *st;
    int cur;          /* tensor receiving data */
    uint64_t cur_done;
    int failed;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int remove_tree(const char *path) {
    if (!ds_path_exists(path)) return 0;
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS))
        return ds_fail(DS_ERR, "cannot remove: %s: %s", strerror(errno), path);
    return 0;
}

/* Remove <base>.tmp-<pid> directories left by writers that were killed (their pid is gone). */
static void remove_stale_temps(const char *parent, const char *base) {
    DIR *d = opendir(parent);
    if (!d) return;
    struct dirent *e;
    size_t bl = strlen(base);
    char p[8192];
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, base, bl) || strncmp(e->d_name + bl, ".tmp-", 5)) continue;
        char *end;
        long pid = strtol(e->d_name + bl + 5, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive (or not ours to judge) */
        if (!ds_path_join(p, sizeof p, parent, e->d_name)) remove_tree(p);
    }
    closedir(d);
}

/* What an existing output directory holds: nothing (its writer's lock file aside), a checkpoint
 * (config.json, model weights, or training state: a directory some ds-* tool wrote), or other files. */
enum { DIR_EMPTY, DIR_CHECKPOINT, DIR_OTHER };
static int dir_contents(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return DIR_OTHER;
    struct dirent *e;
    int empty = 1, ckpt = 0;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, DS_DIR_LOCK_NAME)) continue;
        empty = 0;
        ckpt |= !strcmp(n, "config.json") || !strcmp(n, "trainer_state.json") || !strcmp(n, "optimizer.safetensors") ||
                (!strncmp(n, "model", 5) && (ends_with(n, ".safetensors") || ends_with(n, ".safetensors.index.json")));
    }
    closedir(d);
    return empty ? DIR_EMPTY : ckpt ? DIR_CHECKPOINT : DIR_OTHER;
}

/* Keep the writer's lock held across the replacement: the new directory gets the same lock file
 * (a hard link, one inode), so the lock a running process holds is the one at the path after the swap. */
static int carry_lock(const char *from_dir, const char *to_dir) {
    char from[8192], to[8192];
    DS_TRY(ds_path_join(from, sizeof from, from_dir, DS_DIR_LOCK_NAME));
    DS_TRY(ds_path_join(to, sizeof to, to_dir, DS_DIR_LOCK_NAME));
    if (link(from, to) && errno != ENOENT)
        return ds_fail(DS_ERR, "checkpoint: cannot carry the lock file over: %s: %s", strerror(errno), to);
    return 0;
}

int ds_ckpt_check_out(const char *out, const char *in, int force, int resumable, const char *resume) {
    if (!out || ds_is_stdio(out) || !ds_path_exists(out)) return 0;
    if (ds_same_file(out, in)) {
        if (force) return 0;
        ds_fail(DS_ERR, "-o is the input checkpoint -m (give --force to replace the input): %s", out);
        ds_hint("write to another directory; the input stays as it is");
        return DS_ERR;
    }
    if (!ds_path_is_dir(out)) {
        if (!ends_with(out, ".safetensors")) return ds_fail(DS_ERR, "output exists and is not a directory: %s", out);
        if (force) return 0;
        ds_fail(DS_ERR, "output exists (give --force to replace it): %s", out);
        ds_hint("choose another -o");
        return DS_ERR;
    }
    switch (dir_contents(out)) {
    case DIR_EMPTY: return 0;
    case DIR_OTHER:
        ds_fail(DS_ERR, "output directory holds files that are not a checkpoint (not replaced, --force or not): %s", out);
        ds_hint("choose a new or empty directory for -o");
        return DS_ERR;
    default: break;
    }
    if (force) return 0;
    if (resume) { /* continuing the run saved here: the checkpoint --resume takes, or its directory */
        char latest[4096];
        if (ds_same_file(out, resume) || (!ds_ckpt_find_latest(resume, latest, sizeof latest) && ds_same_file(out, latest)))
            return 0;
        ds_err_clear();
    }
    if (resumable)
        ds_fail(DS_ERR, "output directory holds a checkpoint (give --force to replace it, or --resume %s to continue its run): %s",
                out, out);
    else
        ds_fail(DS_ERR, "output directory holds a checkpoint (give --force to replace it): %s", out);
    ds_hint("or choose another -o");
    return DS_ERR;
}

int ds_ckpt_out_is_dir(const char *path) {
    return !ds_is_stdio(path) && !(ends_with(path, ".safetensors") && !ds_path_is_dir(path));
}

int ds_ckpt_writer_begin(ds_ckpt_writer **out, const char *path, const ds_ckpt_write_opts *opts) {
    *out = NULL;
    ds_ckpt_writer *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(DS_ERR, "out of memory");
    if (opts) w->opts = *opts;
    w->to_stdout = ds_is_stdio(path);
    w->stream = w->opts.stream || !ds_ckpt_out_is_dir(path);
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    if (len >= sizeof w->path - 32) {
        free(w);
        return ds_fail(DS_ERR, "path too long: %s", path);
    }
    snprintf(w->path, sizeof w->path, "%.*s", (int)len, w->to_stdout ? "-" : path);
    if (w->stream) {
        *out = w;
        return 0;
    }
    /* directory form: refuse to replace anything that is not a checkpoint */
    int rc = 0;
    if (ds_path_exists(w->path)) {
        if (!ds_path_is_dir(w->path)) rc = ds_fail(DS_ERR, "checkpoint: exists and is not a directory: %s", w->path);
        else if (dir_contents(w->path) == DIR_OTHER) {
            rc = ds_fail(DS_ERR, "checkpoint: refusing to replace a directory that is not a checkpoint: %s", w->path);
            ds_hint("choose a new output directory");
        }
    }
    snprintf(w->parent, sizeof w->parent, "%s", w->path);
    char *slash = strrchr(w->parent, '/');
    const char *base = slash ? slash + 1 : w->path;
    if (!slash) snprintf(w->parent, sizeof w->parent, ".");
    else if (slash == w->parent) w->parent[1] = 0;
    else *slash = 0;
    if (!rc) rc = ds_mkdir_p(w->parent);
    if (!rc) {
        remove_stale_temps(w->parent, base + 0);
        snprintf(w->tmp, sizeof w->tmp, "%s.tmp-%ld", w->path, (long)getpid());
        if (ds_path_exists(w->tmp)) rc = remove_tree(w->tmp);
        if (!rc && mkdir(w->tmp, 0777)) rc = ds_fail(DS_ERR, "cannot create directory: %s: %s", strerror(errno), w->tmp);
        if (!rc && ds_path_is_dir(w->path)) rc = carry_lock(w->path, w->tmp);
    }
    if (rc) {
        w->tmp[0] = 0;
        ds_ckpt_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

static int check_open(ds_ckpt_writer *w, int meta) {
    if (w->failed) return ds_fail(DS_ERR, "checkpoint: writer used after an error: %s", w->path);
    if (meta && w->stream && w->st)
        return ds_fail(DS_ERR, "checkpoint: stream metadata set after tensor data was written: %s", w->path);
    return 0;
}

int ds_ckpt_writer_set_config(ds_ckpt_writer *w, const ds_config *cfg) {
    DS_TRY(check_open(w, 1));
    DS_TRY(ds_config_validate(cfg, w->path));
    if (w->have_cfg) ds_config_free(&w->cfg);
    w->have_cfg = 0;
    DS_TRY(ds_config_copy(&w->cfg, cfg));
    w->have_cfg = 1;
    return 0;
}

int ds_ckpt_writer_set_tokenizer(ds_ckpt_writer *w, const char *json, size_t len) {
    DS_TRY(check_open(w, 1));
    char *t = malloc(len + 1);
    if (!t) return ds_fail(DS_ERR, "out of memory");
    memcpy(t, json, len);
    t[len] = 0;
    free(w->tok);
    w->tok = t;
    w->tok_len = len;
    return 0;
}

static int write_text_file(const char *dir, const char *name, const void *data, size_t len) {
    char p[8192];
    DS_TRY(ds_path_join(p, sizeof p, dir, name));
    return ds_atomic_write_file(p, data, len);
}

static int remember_file(ds_ckpt_writer *w, const char *name, const void *data, size_t len, int keep_data) {
    for (int i = 0; i < w->n_files; i++)
        if (!strcmp(w->files[i].name, name)) {
            free(w->files[i].data);
            w->files[i].data = NULL;
            w->files[i].len = len;
            if (keep_data) {
                if (!(w->files[i].data = malloc(len + 1))) return ds_fail(DS_ERR, "out of memory");
                memcpy(w->files[i].data, data, len);
                w->files[i].data[len] = 0;
            }
            return 0;
        }
    cfile *nf = realloc(w->files, (size_t)(w->n_files + 1) * sizeof *nf);
    if (!nf) return ds_fail(DS_ERR, "out of memory");
    w->files = nf;
    cfile *f = &w->files[w->n_files];
    memset(f, 0, sizeof *f);
    f->name = strdup(name);
    f->len = len;
    if (keep_data && (f->data = malloc(len + 1))) {
        memcpy(f->data, data, len);
        f->data[len] = 0;
    }
    if (!f->name || (keep_data && !f->data)) {
        free(f->name);
        free(f->data);
        return ds_fail(DS_ERR, "out of memory");
    }
    w->n_files++;
    return 0;
}

int ds_ckpt_writer_add_file(ds_ckpt_writer *w, const char *name, const void *data, size_t len) {
    DS_TRY(check_open(w, 1));
    DS_TRY(check_file_name(name, w->path));
    if (!strcmp(name, "config.json") || !strcmp(name, "tokenizer.json") || !strncmp(name, "model.safetensors", 17) ||
        (!strncmp(name, "model-", 6) && ends_with(name, ".safetensors")))
        return ds_fail(DS_ERR, "checkpoint: %s is written by the checkpoint itself (use set_config / set_tokenizer / tensors): %s",
                       name, w->path);
    if (w->stream) {
        if (memchr(data, 0, len))
            return ds_fail(DS_ERR, "checkpoint: %s: the stream form carries text files only (found a NUL byte): %s", name,
                           w->path);
        return remember_file(w, name, data, len, 1);
    }
    DS_TRY(write_text_file(w->tmp, name, data, len));
    return remember_file(w, name, NULL, len, 0);
}

int ds_ckpt_writer_file_path(ds_ckpt_writer *w, const char *name, char *out, size_t n) {
    if (w->stream) return ds_fail(DS_ERR, "checkpoint: the stream form has no files: %s", w->path);
    DS_TRY(check_file_name(name, w->path));
    DS_TRY(ds_path_join(out, n, w->tmp, name));
    return remember_file(w, name, NULL, 0, 0);
}

static int add_tensor(ds_ckpt_writer *w, const char *name, ds_dtype dtype, int ndim, const int64_t *shape, const void *ptr,
                      int from_f32) {
    DS_TRY(check_open(w, 0));
    if (w->st) return ds_fail(DS_ERR, "checkpoint: tensor %.200s declared after tensor data was written: %s", name, w->path);
    if (ndim < 0 || ndim > DS_ST_MAX_DIMS || ds_dtype_size(dtype) == 0)
        return ds_fail(DS_ERR, "checkpoint: tensor %.200s: bad dtype or rank: %s", name, w->path);
    if (from_f32 && dtype != DS_F32 && dtype != DS_BF16 && dtype != DS_F16)
        return ds_fail(DS_ERR, "checkpoint: tensor %.200s: float32 data cannot be stored as %s: %s", name,
                       ds_dtype_name(dtype), w->path);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 256;
        ctensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) return ds_fail(DS_ERR, "out of memory");
        w->t = nt;
        w->cap = cap;
    }
    ctensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    uint64_t bytes = ds_dtype_size(dtype);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || __builtin_mul_overflow(bytes, (uint64_t)shape[d], &bytes))
            return ds_fail(DS_ERR, "checkpoint: tensor %.200s: bad shape: %s", name, w->path);
        t->shape[d] = shape[d];
    }
    if (!(t->name = strdup(name))) return ds_fail(DS_ERR, "out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    t->nbytes = bytes;
    t->ptr = ptr;
    t->from_f32 = from_f32;
    w->n++;
    return 0;
}

int ds_ckpt_writer_add_f32(ds_ckpt_writer *w, const char *name, int ndim, const int64_t *shape, const float *data,
                           ds_dtype store_as) {
    if (!data) return ds_fail(DS_ERR, "checkpoint: tensor %.200s: no data: %s", name, w->path);
    return add_tensor(w, name, store_as, ndim, shape, data, 1);
}

int ds_ckpt_writer_add_raw(ds_ckpt_writer *w, const char *name, ds_dtype dtype, int ndim, const int64_t *shape,
                           const void *bytes) {
    if (!bytes) return ds_fail(DS_ERR, "checkpoint: tensor %.200s: no data: %s", name, w->path);
    return add_tensor(w, name, dtype, ndim, shape, bytes, 0);
}

int ds_ckpt_writer_declare(ds_ckpt_writer *w, const char *name, ds_dtype dtype, int ndim, const int64_t *shape) {
    return add_tensor(w, name, dtype, ndim, shape, NULL, 0);
}

/* generation_config.json: the config's special tokens (pad: the eos token when the config has no pad
 * id, as DeepSeek-V3 pads) and ds-generate's sampling defaults, so transformers' generate samples as
 * ds-generate does by default. */
static void default_generation_config(const ds_config *c, char *buf, size_t n) {
    char bos[16] = "null", eos[16] = "null", pad[16] = "null";
    int pad_id = c->pad_token_id >= 0 ? c->pad_token_id : c->eos_token_id;
    if (c->bos_token_id >= 0) snprintf(bos, sizeof bos, "%d", c->bos_token_id);
    if (c->eos_token_id >= 0) snprintf(eos, sizeof eos, "%d", c->eos_token_id);
    if (pad_id >= 0) snprintf(pad, sizeof pad, "%d", pad_id);
    snprintf(buf, n,
             "{\n  \"_from_model_config\": true,\n  \"bos_token_id\": %s,\n  \"eos_token_id\": %s,\n  \"pad_token_id\": %s,\n"
             "  \"do_sample\": true,\n  \"temperature\": %.17g,\n  \"top_k\": %d,\n  \"top_p\": %.17g,\n  \"max_new_tokens\": %d\n}\n",
             bos, eos, pad, DS_GEN_TEMPERATURE, DS_GEN_TOP_K, DS_GEN_TOP_P, DS_GEN_MAX_NEW);
}

static int has_file(const ds_ckpt_writer *w, const char *name) {
    for (int i = 0; i < w->n_files; i++)
        if (!strcmp(w->files[i].name, name)) return 1;
    return 0;
}

/* Open the safetensors writer: metadata and every declaration. */
static int seal(ds_ckpt_writer *w) {
    if (w->stream && !w->have_cfg)
        return ds_fail(DS_ERR, "checkpoint: no config set before the tensor data: %s", w->path);
    char p[8192];
    ds_st_write_opts so = {.max_shard_bytes = w->stream ? 0 : w->opts.max_shard_bytes};
    if (w->stream) snprintf(p, sizeof p, "%s", w->path);
    else DS_TRY(ds_path_join(p, sizeof p, w->tmp, "model.safetensors"));
    DS_TRY(ds_st_writer_open(&w->st, p, &so));
    int rc = 0;
    if (w->stream) {
        char *cfg = NULL;
        rc = ds_config_to_json(&w->cfg, &cfg);
        if (!rc) rc = ds_st_writer_meta(w->st, "config", cfg);
        free(cfg);
        if (!rc && w->tok) rc = ds_st_writer_meta(w->st, "tokenizer", w->tok);
        if (!rc && !has_file(w, "generation_config.json")) {
            char gen[512];
            default_generation_config(&w->cfg, gen, sizeof gen);
            rc = ds_st_writer_meta(w->st, "file:generation_config.json", gen);
        }
        for (int i = 0; !rc && i < w->n_files; i++) {
            char key[1100];
            snprintf(key, sizeof key, "file:%s", w->files[i].name);
            rc = ds_st_writer_meta(w->st, key, w->files[i].data);
        }
    }
    for (int i = 0; !rc && i < w->n; i++) rc = ds_st_writer_declare(w->st, w->t[i].name, w->t[i].dtype, w->t[i].ndim, w->t[i].shape);
    w->cur = 0;
    w->cur_done = 0;
    return rc;
}

/* Write the data of tensors given by pointer at the current position; skip empty tensors. */
static int pump(ds_ckpt_writer *w) {
    while (w->cur < w->n) {
        ctensor *t = &w->t[w->cur];
        if (w->cur_done == t->nbytes) {
            w->cur++;
            w->cur_done = 0;
            continue;
        }
        if (!t->ptr) return 0; /* streamed: wait for data() */
        int rc = t->from_f32 ? ds_st_writer_data_f32(w->st, t->ptr, t->nbytes / ds_dtype_size(t->dtype))
                             : ds_st_writer_data(w->st, t->ptr, (size_t)t->nbytes);
        if (rc) return rc;
        w->cur_done = t->nbytes;
    }
    return 0;
}

static int begin_data(ds_ckpt_writer *w) {
    DS_TRY(check_open(w, 0));
    int rc = w->st ? 0 : seal(w);
    if (!rc) rc = pump(w);
    if (rc) w->failed = 1;
    return rc;
}

int ds_ckpt_writer_data(ds_ckpt_writer *w, const void *bytes, size_t n) {
    DS_TRY(begin_data(w));
    const unsigned char *p = bytes;
    int rc = 0;
    while (!rc && n) {
        if (w->cur >= w->n) {
            rc = ds_fail(DS_ERR, "checkpoint: %zu bytes of data beyond the declared tensors: %s", n, w->path);
            break;
        }
        ctensor *t = &w->t[w->cur];
        uint64_t room = t->nbytes - w->cur_done;
        size_t m = n < room ? n : (size_t)room;
        rc = ds_st_writer_data(w->st, p, m);
        w->cur_done += m;
        p += m;
        n -= m;
        if (!rc) rc = pump(w);
    }
    if (rc) w->failed = 1;
    return rc;
}

int ds_ckpt_writer_data_f32(ds_ckpt_writer *w, const float *src, size_t n) {
    DS_TRY(begin_data(w));
    if (w->cur >= w->n) return ds_fail(DS_ERR, "checkpoint: data beyond the declared tensors: %s", w->path);
    ctensor *t = &w->t[w->cur];
    size_t es = ds_dtype_size(t->dtype);
    int rc = ds_st_writer_data_f32(w->st, src, n); /* checks dtype and room */
    if (!rc) {
        w->cur_done += n * es;
        rc = pump(w);
    }
    if (rc) w->failed = 1;
    return rc;
}

static int fsync_tree_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return ds_fail(DS_ERR, "cannot open directory: %s: %s", strerror(errno), dir);
    struct dirent *e;
    char p[8192];
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.' || ds_path_join(p, sizeof p, dir, e->d_name)) continue;
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rc = ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), p);
            break;
        }
        if (fsync(fd) && errno != EINVAL) rc = ds_fail(DS_ERR, "fsync failed: %s: %s", strerror(errno), p);
        close(fd);
    }
    closedir(d);
    if (!rc) rc = ds_fsync_dir(dir);
    return rc;
}

/* Put the finished temporary directory in place of w->path. */
static int swap_into_place(ds_ckpt_writer *w) {
    if (!ds_path_exists(w->path)) {
        if (rename(w->tmp, w->path))
            return ds_fail(DS_ERR, "checkpoint: cannot rename into place: %s: %s", strerror(errno), w->path);
        return ds_fsync_dir(w->parent);
    }
    if (renameat2(AT_FDCWD, w->tmp, AT_FDCWD, w->path, RENAME_EXCHANGE) == 0) {
        /* w->tmp now holds the previous checkpoint */
        DS_TRY(ds_fsync_dir(w->parent));
        return remove_tree(w->tmp);
    }
    if (errno != EINVAL && errno != ENOSYS)
        return ds_fail(DS_ERR, "checkpoint: cannot replace: %s: %s", strerror(errno), w->path);
    /* A filesystem without RENAME_EXCHANGE: move the old one aside first. A crash between the two
     * renames leaves <path>.old-<pid> and no <path>; ds_ckpt_find_latest skips both names. */
    char old[4300];
    snprintf(old, sizeof old, "%s.old-%ld", w->path, (long)getpid());
    if (rename(w->path, old)) return ds_fail(DS_ERR, "checkpoint: cannot move aside: %s: %s", strerror(errno), w->path);
    if (rename(w->tmp, w->path)) {
        int err = errno;
        rename(old, w->path);
        return ds_fail(DS_ERR, "checkpoint: cannot rename into place: %s: %s", strerror(err), w->path);
    }
    DS_TRY(ds_fsync_dir(w->parent));
    return remove_tree(old);
}

static void writer_free(ds_ckpt_writer *w) {
    if (w->have_cfg) ds_config_free(&w->cfg);
    free(w->tok);
    for (int i = 0; i < w->n_files; i++) {
        free(w->files[i].name);
        free(w->files[i].data);
    }
    free(w->files);
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    free(w);
}

int ds_ckpt_writer_commit(ds_ckpt_writer *w) {
    int rc = check_open(w, 0);
    if (!rc && !w->have_cfg) rc = ds_fail(DS_ERR, "checkpoint: no config set: %s", w->path);
    if (!rc && !w->st) rc = seal(w);
    if (!rc) rc = pump(w);
    if (!rc && w->cur < w->n)
        rc = ds_fail(DS_ERR, "checkpoint: tensor %.200s got %llu of %llu bytes: %s", w->t[w->cur].name,
                     (unsigned long long)w->cur_done, (unsigned long long)w->t[w->cur].nbytes, w->path);
    if (!rc) {
        rc = ds_st_writer_close(w->st); /* frees it, also on error */
        w->st = NULL;
    }
    if (!rc && !w->stream) {
        char *text = NULL;
        char p[8192];
        rc = ds_config_to_json(&w->cfg, &text);
        if (!rc) rc = write_text_file(w->tmp, "config.json", text, strlen(text));
        free(text);
        if (!rc && w->tok) rc = write_text_file(w->tmp, "tokenizer.json", w->tok, w->tok_len);
        if (!rc && (ds_path_join(p, sizeof p, w->tmp, "generation_config.json") || !ds_path_exists(p))) {
            char gen[512];
            default_generation_config(&w->cfg, gen, sizeof gen);
            rc = write_text_file(w->tmp, "generation_config.json", gen, strlen(gen));
        }
        if (!rc) rc = fsync_tree_files(w->tmp);
        if (!rc) rc = swap_into_place(w);
    }
    if (rc) {
        ds_ckpt_writer_abort(w);
        return rc;
    }
    writer_free(w);
    return 0;
}

void ds_ckpt_writer_abort(ds_ckpt_writer *w) {
    if (!w) return;
    if (w->st) ds_st_writer_abort(w->st);
    if (!w->stream && w->tmp[0] && ds_path_exists(w->tmp)) {
        char keep[1024];
        snprintf(keep, sizeof keep, "%s", ds_errmsg());
        remove_tree(w->tmp);
        ds_fail(DS_ERR, "%s", keep); /* the message of the failure, not of the cleanup */
    }
    writer_free(w);
}
