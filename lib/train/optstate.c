#include "train/optstate.h"

#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "io/safetensors.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const MOMENT[2] = {"exp_avg", "exp_avg_sq"};

int ds_optstate_sharded(const ds_zero *z, int world) { return world > 1 && (z->n > 1 || z->g[0].sharded); }

void ds_optstate_shard_name(int r, int world, char *buf, size_t n) {
    snprintf(buf, n, "optimizer-%05d-of-%05d.safetensors", r, world);
}

/* The part of [offset, offset+numel) this rank writes to its shard: what it holds of a sharded group, a
 * replicated group's range only on that group's rank 0 (so every element is written once). */
static void written(const ds_zero *z, size_t offset, size_t numel, size_t *lo, size_t *hi) {
    *lo = *hi = offset;
    for (int i = 0; i < z->n; i++) {
        const ds_zero_group *q = &z->g[i];
        if (!q->opt || !(q->sharded || q->rank == 0)) continue;
        size_t a = offset > q->held_lo ? offset : q->held_lo, b = offset + numel < q->held_hi ? offset + numel : q->held_hi;
        if (a < b) {
            *lo = a, *hi = b;
            return;
        }
    }
}

static size_t biggest(const ds_param *info, int n_info) {
    size_t b = 1;
    for (int i = 0; i < n_info; i++)
        if (info[i].numel > b) b = info[i].numel;
    return b;
}

/* whole: the one file (every tensor whole, in its shape); else a shard (1-D pieces with their ranges). */
static int write_moments(const ds_zero *z, const ds_param *info, int n_info, const char *path, int whole) {
    float *buf = malloc(biggest(info, n_info) * sizeof *buf);
    size_t *range = malloc(2 * (size_t)(n_info > 0 ? n_info : 1) * sizeof *range);
    ds_st_writer *w = NULL;
    int rc = buf && range ? ds_st_writer_open(&w, path, NULL) : ds_fail(DS_ERR, "out of memory: saving the optimizer");
    char name[160], val[96];
    snprintf(val, sizeof val, "%lld", (long long)z->t);
    if (!rc) rc = ds_st_writer_meta(w, "optimizer", "adamw");
    if (!rc) rc = ds_st_writer_meta(w, "step", val);
    for (int i = 0; !rc && i < n_info; i++) {
        size_t *r = range + 2 * i;
        if (whole) r[0] = info[i].offset, r[1] = info[i].offset + info[i].numel;
        else written(z, info[i].offset, info[i].numel, &r[0], &r[1]);
        if (whole || r[0] == r[1]) continue;
        snprintf(name, sizeof name, "range.%s", info[i].name);
        snprintf(val, sizeof val, "%zu %zu %zu", r[0] - info[i].offset, r[1] - info[i].offset, info[i].numel);
        rc = ds_st_writer_meta(w, name, val);
    }
    /* bf16 moments are stored as bf16 (exact); fp32 ones as fp32 */
    const ds_dtype dt = z->g[0].opt && z->g[0].opt->o.bf16_moments ? DS_BF16 : DS_F32;
    for (int i = 0; !rc && i < n_info; i++)
        for (int k = 0; !rc && k < 2 && range[2 * i] < range[2 * i + 1]; k++) {
            snprintf(name, sizeof name, "%s.%s", info[i].name, MOMENT[k]);
            int64_t len[1] = {(int64_t)(range[2 * i + 1] - range[2 * i])};
            rc = whole ? ds_st_writer_declare(w, name, dt, info[i].ndim, info[i].shape) : ds_st_writer_declare(w, name, dt, 1, len);
        }
    for (int i = 0; !rc && i < n_info; i++)
        for (int k = 0; !rc && k < 2 && range[2 * i] < range[2 * i + 1]; k++) {
            size_t n = range[2 * i + 1] - range[2 * i];
            rc = ds_zero_get(z, k, range[2 * i], n, buf);
            if (!rc) rc = ds_st_writer_data_f32(w, buf, n);
        }
    free(buf);
    free(range);
    if (rc) {
        if (w) ds_st_writer_abort(w);
        return rc;
    }
    return ds_st_writer_close(w);
}

int ds_optstate_write_file(const ds_zero *z, const ds_param *info, int n_info, const char *path) {
    return write_moments(z, info, n_info, path, 1);
}

int ds_optstate_write_shard(const ds_zero *z, const ds_param *info, int n_info, const char *path) {
    return write_moments(z, info, n_info, path, 0);
}

/* ---- the index ---- */

typedef struct {
    char *name;
    size_t start, end, numel;
    int file;
} piece;

static int piece_cmp(const void *a, const void *b) {
    const piece *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : x->start < y->start ? -1 : x->start > y->start;
}

static void pieces_free(piece *p, size_t n) {
    for (size_t i = 0; i < n; i++) free(p[i].name);
    free(p);
}

/* Every "range.<name>" of shard file r. */
static int read_ranges(const char *dir, int r, int world, piece **p, size_t *n, size_t *cap) {
    char fname[64], path[8300];
    ds_optstate_shard_name(r, world, fname, sizeof fname);
    DS_TRY(ds_path_join(path, sizeof path, dir, fname));
    ds_st_file *f;
    DS_TRY(ds_st_open(&f, path));
    int rc = 0;
    for (int m = 0; !rc && m < ds_st_meta_count(f); m++) {
        const char *key, *val;
        ds_st_meta_at(f, m, &key, &val);
        if (strncmp(key, "range.", 6)) continue;
        piece q = {.file = r};
        if (sscanf(val, "%zu %zu %zu", &q.start, &q.end, &q.numel) != 3 || q.start >= q.end || q.end > q.numel) {
            rc = ds_fail(DS_ERR, "optimizer shard: bad range '%s' for %s: %s", val, key + 6, path);
            break;
        }
        if (*n == *cap) {
            piece *np = realloc(*p, (*cap ? 2 * *cap : 256) * sizeof *np);
            if (!np) {
                rc = ds_fail(DS_ERR, "out of memory: optimizer index");
                break;
            }
            *p = np, *cap = *cap ? 2 * *cap : 256;
        }
        if (!(q.name = strdup(key + 6))) rc = ds_fail(DS_ERR, "out of memory: optimizer index");
        else (*p)[(*n)++] = q;
    }
    ds_st_close(f);
    return rc;
}

int ds_optstate_index(const char *dir, int world, char **json) {
    *json = NULL;
    piece *p = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int r = 0; !rc && r < world; r++) rc = read_ranges(dir, r, world, &p, &n, &cap);
    if (!rc) qsort(p, n, sizeof *p, piece_cmp);
    /* the pieces of every tensor must tile it: each element written exactly once */
    for (size_t i = 0; !rc && i < n; i++) {
        int first = i == 0 || strcmp(p[i].name, p[i - 1].name);
        int last = i + 1 == n || strcmp(p[i].name, p[i + 1].name);
        size_t want = first ? 0 : p[i - 1].end;
        if (p[i].start != want || (!first && p[i].numel != p[i - 1].numel) || (last && p[i].end != p[i].numel))
            rc = ds_fail(DS_ERR, "optimizer shards: %s: the pieces do not tile its %zu values (piece [%zu, %zu) of file %d): %s",
                         p[i].name, p[i].numel, p[i].start, p[i].end, p[i].file, dir);
    }
    if (rc) {
        pieces_free(p, n);
        return rc;
    }
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "format", "ds-optimizer-shards");
    ds_jsonw_kint(&w, "version", 1);
    ds_jsonw_kstr(&w, "optimizer", "adamw");
    ds_jsonw_key(&w, "files");
    ds_jsonw_arr_begin(&w);
    char fname[64];
    for (int r = 0; r < world; r++) {
        ds_optstate_shard_name(r, world, fname, sizeof fname);
        ds_jsonw_str(&w, fname);
    }
    ds_jsonw_arr_end(&w);
    ds_jsonw_key(&w, "tensors");
    ds_jsonw_obj_begin(&w);
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || strcmp(p[i].name, p[i - 1].name)) {
            ds_jsonw_key(&w, p[i].name);
            ds_jsonw_obj_begin(&w);
            ds_jsonw_kint(&w, "numel", (int64_t)p[i].numel);
            ds_jsonw_key(&w, "pieces");
            ds_jsonw_arr_begin(&w);
        }
        ds_jsonw_arr_begin(&w); /* [file, start, end] */
        ds_jsonw_int(&w, p[i].file);
        ds_jsonw_int(&w, (int64_t)p[i].start);
        ds_jsonw_int(&w, (int64_t)p[i].end);
        ds_jsonw_arr_end(&w);
        if (i + 1 == n || strcmp(p[i].name, p[i + 1].name)) {
            ds_jsonw_arr_end(&w);
            ds_jsonw_obj_end(&w);
        }
    }
    ds_jsonw_obj_end(&w);
    ds_jsonw_obj_end(&w);
    pieces_free(p, n);
    if (!(*json = malloc(w.len + 2))) rc = ds_fail(DS_ERR, "out of memory: optimizer index");
    else memcpy(*json, w.buf, w.len), memcpy(*json + w.len, "\n", 2);
    ds_jsonw_free(&w);
    return rc;
}

/* ---- loading ---- */

typedef struct {
    const char *dir;
    json_t *index;      /* NULL: the one file */
    ds_st_file **files; /* opened as needed */
    int n_files;
    float *buf;
} reader;

static int reader_file(reader *rd, int i, ds_st_file **f) {
    if (i < 0 || i >= rd->n_files) return ds_fail(DS_ERR, "optimizer index: no file %d: %s", i, rd->dir);
    if (!rd->files[i]) {
        char path[8300];
        const char *name = rd->index ? json_string_value(json_array_get(json_object_get(rd->index, "files"), (size_t)i)) : DS_OPTSTATE_FILE;
        if (!name || strchr(name, '/')) return ds_fail(DS_ERR, "optimizer index: bad file name at %d: %s", i, rd->dir);
        DS_TRY(ds_path_join(path, sizeof path, rd->dir, name));
        DS_TRY(ds_st_open(&rd->files[i], path));
    }
    *f = rd->files[i];
    return 0;
}

/* Moments [a, b) of tensor p (tensor-local elements) from the piece [start, end) in file `file`. */
static int load_piece(reader *rd, ds_zero *z, const ds_param *p, int file, size_t start, size_t end, size_t a, size_t b) {
    ds_st_file *f;
    DS_TRY(reader_file(rd, file, &f));
    char name[160];
    for (int k = 0; k < 2; k++) {
        snprintf(name, sizeof name, "%s.%s", p->name, MOMENT[k]);
        const ds_st_tensor *t = ds_st_find(f, name);
        int ok = t && (rd->index ? t->ndim == 1 && (size_t)t->numel == end - start : ds_st_shape_is(t, p->ndim, p->shape));
        if (!ok) return ds_fail(DS_ERR, "optimizer state: %s %s: %s", t ? "wrong shape for" : "missing", name, ds_st_where(f));
        DS_TRY(ds_st_read_f32(t, rd->buf, ds_st_where(f)));
        DS_TRY(ds_zero_set(z, k, p->offset + a, b - a, rd->buf + (a - start)));
    }
    return 0;
}

static int load_tensor(reader *rd, ds_zero *z, const ds_param *p) {
    size_t lo, hi;
    ds_zero_held(z, p->offset, p->numel, &lo, &hi);
    if (lo == hi) return 0;
    const size_t a = lo - p->offset, b = hi - p->offset;
    if (!rd->index) return load_piece(rd, z, p, 0, 0, p->numel, a, b);
    json_t *e = json_object_get(json_object_get(rd->index, "tensors"), p->name);
    json_t *pieces = json_object_get(e, "pieces");
    if (!json_is_array(pieces) || json_integer_value(json_object_get(e, "numel")) != (json_int_t)p->numel)
        return ds_fail(DS_ERR, "optimizer state: %s %s (%zu values): %s/" DS_OPTSTATE_INDEX, e ? "another size for" : "no moments for",
                       p->name, p->numel, rd->dir);
    size_t got = 0;
    for (size_t i = 0; i < json_array_size(pieces); i++) {
        json_t *q = json_array_get(pieces, i);
        json_int_t file = json_integer_value(json_array_get(q, 0)), s = json_integer_value(json_array_get(q, 1)),
                   t = json_integer_value(json_array_get(q, 2));
        if (s < 0 || t <= s || (size_t)t > p->numel)
            return ds_fail(DS_ERR, "optimizer index: bad piece %zu of %s: %s", i, p->name, rd->dir);
        size_t x = (size_t)s > a ? (size_t)s : a, y = (size_t)t < b ? (size_t)t : b;
        if (x >= y) continue;
        DS_TRY(load_piece(rd, z, p, (int)file, (size_t)s, (size_t)t, x, y));
        got += y - x;
    }
    if (got != b - a)
        return ds_fail(DS_ERR, "optimizer state: the pieces of %s give %zu of values [%zu, %zu): %s", p->name, got, a, b, rd->dir);
    return 0;
}

int ds_optstate_load(ds_zero *z, const ds_param *info, int n_info, const char *dir) {
    char path[8300];
    reader rd = {.dir = dir, .n_files = 1};
    DS_TRY(ds_path_join(path, sizeof path, dir, DS_OPTSTATE_INDEX));
    if (ds_path_exists(path)) {
        json_error_t je;
        rd.index = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        json_t *fmt = rd.index ? json_object_get(rd.index, "format") : NULL;
        if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "ds-optimizer-shards") ||
            !json_is_array(json_object_get(rd.index, "files")) || !json_is_object(json_object_get(rd.index, "tensors"))) {
            json_decref(rd.index);
            return ds_fail(DS_ERR, "optimizer index: not a ds-optimizer-shards index: %s", path);
        }
        rd.n_files = (int)json_array_size(json_object_get(rd.index, "files"));
    }
    rd.files = calloc((size_t)(rd.n_files > 0 ? rd.n_files : 1), sizeof *rd.files);
    rd.buf = malloc(biggest(info, n_info) * sizeof *rd.buf);
    int rc = rd.files && rd.buf ? 0 : ds_fail(DS_ERR, "out of memory: loading the optimizer");
    for (int i = 0; !rc && i < n_info; i++) rc = load_tensor(&rd, z, &info[i]);
    for (int i = 0; rd.files && i < rd.n_files; i++)
        if (rd.files[i]) ds_st_close(rd.files[i]);
    free(rd.files);
    free(rd.buf);
    json_decref(rd.index);
    return rc;
}
