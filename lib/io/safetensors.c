/* safetensors.c — see safetensors.h. Layout: 8-byte little-endian header length N, N bytes of JSON
 * {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}, then the
 * data region; offsets are relative to its start. */
#include "io/safetensors.h"

#include "core/err.h"
#include "core/file.h"
#include "io/json.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* ---- name -> index hash (open addressing, FNV-1a) -------------------------------------------- */

typedef struct {
    const char **key; /* NULL: empty; keys point at names owned elsewhere */
    int *val;
    size_t mask, used;
} name_map;

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void map_free(name_map *m) {
    free(m->key);
    free(m->val);
    memset(m, 0, sizeof *m);
}

static int map_find(const name_map *m, const char *name) {
    if (!m->key) return -1;
    for (size_t j = fnv1a(name) & m->mask;; j = (j + 1) & m->mask) {
        if (!m->key[j]) return -1;
        if (!strcmp(m->key[j], name)) return m->val[j];
    }
}

/* Insert name -> val; returns 1 if the name was already present (nothing changed), 0, or DS_ERR. */
static int map_insert(name_map *m, const char *name, int val) {
    if (2 * (m->used + 1) > (m->key ? m->mask + 1 : 0)) {
        size_t cap = m->key ? 2 * (m->mask + 1) : 64;
        name_map g = {calloc(cap, sizeof *g.key), calloc(cap, sizeof *g.val), cap - 1, 0};
        if (!g.key || !g.val) {
            map_free(&g);
            return ds_fail(DS_ERR, "out of memory");
        }
        for (size_t j = 0; m->key && j <= m->mask; j++)
            if (m->key[j]) map_insert(&g, m->key[j], m->val[j]);
        map_free(m);
        *m = g;
    }
    size_t j = fnv1a(name) & m->mask;
    for (; m->key[j]; j = (j + 1) & m->mask)
        if (!strcmp(m->key[j], name)) return 1;
    m->key[j] = name;
    m->val[j] = val;
    m->used++;
    return 0;
}

static int map_build(name_map *m, const ds_st_tensor *t, int n) {
    for (int i = 0; i < n; i++)
        if (map_insert(m, t[i].name, i) == DS_ERR) return DS_ERR;
    return 0;
}

/* ---- header ---------------------------------------------------------------------------------- */

typedef struct {
    ds_st_tensor *t; /* file (JSON) order */
    int n;
    int *by_offset;  /* indices sorted by (offset, end) */
    char **meta;     /* key, value, key, value ... */
    int n_meta;
    uint64_t data_len; /* end of the last tensor */
    name_map map;
} st_header;

static void header_free(st_header *h) {
    for (int i = 0; i < h->n; i++) free((char *)h->t[i].name);
    for (int i = 0; i < 2 * h->n_meta; i++) free(h->meta[i]);
    free(h->t);
    free(h->by_offset);
    free(h->meta);
    map_free(&h->map);
    memset(h, 0, sizeof *h);
}

static int cmp_offset(const void *a, const void *b, void *ctx) {
    const ds_st_tensor *t = ctx, *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

static int parse_entry(ds_st_tensor *t, const char *name, const json_t *v, const char *where) {
#define BAD(...) return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": " __VA_ARGS__)
    if (!json_is_object(v)) BAD("entry must be an object: %s", name, where);
    const json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
                 *off = json_object_get(v, "data_offsets");
    if (!json_is_string(dt)) BAD("dtype must be a string: %s", name, where);
    t->dtype = ds_dtype_from_name(json_string_value(dt));
    if (t->dtype == DS_DTYPE_INVALID) BAD("unknown dtype \"%.40s\": %s", name, json_string_value(dt), where);
    if (!json_is_array(sh)) BAD("shape must be an array of non-negative integers: %s", name, where);
    if (json_array_size(sh) > DS_ST_MAX_DIMS) BAD("more than %d dimensions: %s", name, DS_ST_MAX_DIMS, where);
    t->ndim = (int)json_array_size(sh);
    int64_t numel = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++) {
        const json_t *x = json_array_get(sh, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            BAD("shape must be an array of non-negative integers: %s", name, where);
        t->shape[d] = json_integer_value(x);
        if (__builtin_mul_overflow(numel, t->shape[d], &numel)) overflow = 1;
    }
    uint64_t need;
    if (overflow || __builtin_mul_overflow((uint64_t)numel, (uint64_t)ds_dtype_size(t->dtype), &need))
        BAD("shape overflows (element count or byte size above 2^63): %s", name, where);
    t->numel = numel;
    if (!json_is_array(off) || json_array_size(off) != 2 || !json_is_integer(json_array_get(off, 0)) ||
        !json_is_integer(json_array_get(off, 1)) || json_integer_value(json_array_get(off, 0)) < 0 ||
        json_integer_value(json_array_get(off, 1)) < json_integer_value(json_array_get(off, 0)))
        BAD("data_offsets must be [begin, end] with 0 <= begin <= end: %s", name, where);
    t->offset = (uint64_t)json_integer_value(json_array_get(off, 0));
    t->nbytes = (uint64_t)json_integer_value(json_array_get(off, 1)) - t->offset;
    if (t->nbytes != need) {
        char shape[160];
        ds_st_shape_str(t, shape, sizeof shape);
        BAD("data_offsets span %llu bytes but shape %s of %s needs %llu: %s", name, (unsigned long long)t->nbytes,
            shape, ds_dtype_name(t->dtype), (unsigned long long)need, where);
    }
    return 0;
#undef BAD
}

/* Parse and validate the JSON header. data_len: the size of the data region, or UINT64_MAX when
 * unknown (a pipe); then the tensors must tile [0, end of the last one). */
static int header_parse(st_header *h, const char *text, size_t len, uint64_t data_len, const char *where) {
    memset(h, 0, sizeof *h);
    if (len == 0 || text[0] != '{') return ds_fail(DS_ERR, "safetensors: header does not start with '{': %s", where);
    json_t *root = ds_json_parse(text, len, "safetensors: header", where);
    if (!root) return DS_ERR;
    int rc = 0;
    if (!json_is_object(root)) {
        rc = ds_fail(DS_ERR, "safetensors: header is not a JSON object: %s", where);
        goto out;
    }
    size_t n = json_object_size(root);
    h->t = calloc(n ? n : 1, sizeof *h->t);
    h->by_offset = calloc(n ? n : 1, sizeof *h->by_offset);
    if (!h->t || !h->by_offset) {
        rc = ds_fail(DS_ERR, "out of memory reading %s", where);
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) {
                rc = ds_fail(DS_ERR, "safetensors: __metadata__ must be an object of strings: %s", where);
                goto out;
            }
            h->meta = calloc(2 * json_object_size(v) + 1, sizeof *h->meta);
            if (!h->meta) { rc = ds_fail(DS_ERR, "out of memory reading %s", where); goto out; }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = ds_fail(DS_ERR, "safetensors: __metadata__: value of \"%.200s\" must be a string: %s", mk, where);
                    goto out;
                }
                h->meta[2 * h->n_meta] = strdup(mk);
                h->meta[2 * h->n_meta + 1] = strdup(json_string_value(mv));
                h->n_meta++;
                if (!h->meta[2 * h->n_meta - 2] || !h->meta[2 * h->n_meta - 1]) {
                    rc = ds_fail(DS_ERR, "out of memory reading %s", where);
                    goto out;
                }
            }
            continue;
        }
        ds_st_tensor *t = &h->t[h->n];
        if ((rc = parse_entry(t, key, v, where))) goto out;
        if (!(t->name = strdup(key))) { rc = ds_fail(DS_ERR, "out of memory reading %s", where); goto out; }
        h->by_offset[h->n] = h->n;
        h->n++;
    }
    for (int i = 0; i < h->n; i++) {
        const ds_st_tensor *t = &h->t[i];
        if (data_len != UINT64_MAX && (t->offset > data_len || t->nbytes > data_len - t->offset)) {
            rc = ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": data_offsets [%llu, %llu] past the end of the data (%llu bytes): %s",
                         t->name, (unsigned long long)t->offset, (unsigned long long)(t->offset + t->nbytes),
                         (unsigned long long)data_len, where);
            goto out;
        }
    }
    qsort_r(h->by_offset, (size_t)h->n, sizeof *h->by_offset, cmp_offset, h->t);
    uint64_t pos = 0;
    for (int i = 0; i < h->n; i++) {
        const ds_st_tensor *t = &h->t[h->by_offset[i]];
        if (t->offset < pos) {
            rc = ds_fail(DS_ERR, "safetensors: tensors \"%.200s\" and \"%.200s\" overlap: %s", h->t[h->by_offset[i - 1]].name,
                         t->name, where);
            goto out;
        }
        if (t->offset > pos) {
            rc = ds_fail(DS_ERR, "safetensors: gap in the data before tensor \"%.200s\" (bytes %llu to %llu unused): %s",
                         t->name, (unsigned long long)pos, (unsigned long long)t->offset, where);
            goto out;
        }
        pos = t->offset + t->nbytes;
    }
    if (data_len != UINT64_MAX && pos != data_len) {
        rc = ds_fail(DS_ERR, "safetensors: %llu bytes after the last tensor: %s", (unsigned long long)(data_len - pos), where);
        goto out;
    }
    h->data_len = pos;
    if ((rc = map_build(&h->map, h->t, h->n))) goto out;
out:
    json_decref(root);
    if (rc) header_free(h);
    return rc;
}

static uint64_t le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ---- whole files ----------------------------------------------------------------------------- */

struct ds_st_file {
    st_header h;
    const unsigned char *base;
    size_t len;
    void *owned;    /* malloc'd image */
    void *mapping;  /* mmap'd image */
    char where[4096];
};

static int parse_image(ds_st_file *f, const char *where) {
    snprintf(f->where, sizeof f->where, "%s", where);
    if (f->len == 0) return ds_fail(DS_ERR, "safetensors: empty input: %s", where);
    if (f->len < 8)
        return ds_fail(DS_ERR, "safetensors: truncated: %zu bytes, the header length alone takes 8: %s", f->len, where);
    uint64_t n = le64(f->base);
    if (n > DS_ST_MAX_HEADER)
        return ds_fail(DS_ERR, "safetensors: header too large: %llu bytes (limit %u): %s", (unsigned long long)n,
                       DS_ST_MAX_HEADER, where);
    if (n > f->len - 8)
        return ds_fail(DS_ERR, "safetensors: header length %llu past the end of the file (%zu bytes): %s",
                       (unsigned long long)n, f->len, where);
    DS_TRY(header_parse(&f->h, (const char *)f->base + 8, (size_t)n, f->len - 8 - n, where));
    for (int i = 0; i < f->h.n; i++) f->h.t[i].data = f->base + 8 + n + f->h.t[i].offset;
    return 0;
}

int ds_st_open_memory(ds_st_file **out, const void *buf, size_t len, int copy, const char *where) {
    *out = NULL;
    ds_st_file *f = calloc(1, sizeof *f);
    if (!f) return ds_fail(DS_ERR, "out of memory reading %s", where);
    if (copy && len) {
        if (!(f->owned = malloc(len))) {
            free(f);
            return ds_fail(DS_ERR, "out of memory reading %s", where);
        }
        memcpy(f->owned, buf, len);
        buf = f->owned;
    }
    f->base = buf;
    f->len = len;
    int rc = parse_image(f, where);
    if (rc) {
        ds_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int ds_st_open(ds_st_file **out, const char *path) {
    *out = NULL;
    const char *where = ds_is_stdio(path) ? "<stdin>" : path;
    int fd = ds_is_stdio(path) ? -1 : open(path, O_RDONLY | O_CLOEXEC);
    if (!ds_is_stdio(path) && fd < 0) return ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), path);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st)) {
        close(fd);
        return ds_fail(DS_ERR, "cannot stat: %s: %s", strerror(errno), path);
    }
    if (fd >= 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        return ds_fail(DS_ERR, "is a directory: %s", path);
    }
    if (fd < 0 || !S_ISREG(st.st_mode) || st.st_size == 0) { /* stdin, pipes, FIFOs: read it all */
        FILE *in = fd < 0 ? stdin : fdopen(fd, "rb");
        if (!in) {
            close(fd);
            return ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), path);
        }
        char *buf;
        size_t len;
        int rc = ds_read_stream(in, where, &buf, &len, 0);
        if (fd >= 0) fclose(in);
        if (rc) return rc;
        ds_st_file *f = calloc(1, sizeof *f);
        if (!f) {
            free(buf);
            return ds_fail(DS_ERR, "out of memory reading %s", where);
        }
        f->owned = buf;
        f->base = (const unsigned char *)buf;
        f->len = len;
        if ((rc = parse_image(f, where))) {
            ds_st_close(f);
            return rc;
        }
        *out = f;
        return 0;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (m == MAP_FAILED) return ds_fail(DS_ERR, "cannot map: %s: %s", strerror(err), path);
    ds_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        munmap(m, (size_t)st.st_size);
        return ds_fail(DS_ERR, "out of memory reading %s", path);
    }
    f->mapping = m;
    f->base = m;
    f->len = (size_t)st.st_size;
    int rc = parse_image(f, where);
    if (rc) {
        ds_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void ds_st_close(ds_st_file *f) {
    if (!f) return;
    header_free(&f->h);
    if (f->mapping) munmap(f->mapping, f->len);
    free(f->owned);
    free(f);
}

int ds_st_count(const ds_st_file *f) { return f->h.n; }
const ds_st_tensor *ds_st_tensor_at(const ds_st_file *f, int i) { return i >= 0 && i < f->h.n ? &f->h.t[i] : NULL; }
const ds_st_tensor *ds_st_find(const ds_st_file *f, const char *name) {
    int i = map_find(&f->h.map, name);
    return i < 0 ? NULL : &f->h.t[i];
}
int ds_st_meta_count(const ds_st_file *f) { return f->h.n_meta; }
void ds_st_meta_at(const ds_st_file *f, int i, const char **key, const char **value) {
    *key = f->h.meta[2 * i];
    *value = f->h.meta[2 * i + 1];
}
static const char *meta_get(const st_header *h, const char *key) {
    for (int i = 0; i < h->n_meta; i++)
        if (!strcmp(h->meta[2 * i], key)) return h->meta[2 * i + 1];
    return NULL;
}
const char *ds_st_meta(const ds_st_file *f, const char *key) { return meta_get(&f->h, key); }
const char *ds_st_where(const ds_st_file *f) { return f->where; }

/* ---- streams --------------------------------------------------------------------------------- */

struct ds_st_stream {
    st_header h;
    ds_st_tensor *order; /* copies of the tensors in offset order */
    FILE *f;
    int next;
    unsigned char *buf;
    size_t cap;
    char where[4096];
};

static int read_exact(FILE *f, void *buf, size_t n, size_t *got) {
    *got = fread(buf, 1, n, f);
    return *got == n ? 0 : ferror(f) ? -1 : 1;
}

int ds_st_stream_open(ds_st_stream **out, FILE *f, const char *where) {
    *out = NULL;
    ds_st_stream *s = calloc(1, sizeof *s);
    if (!s) return ds_fail(DS_ERR, "out of memory reading %s", where);
    s->f = f;
    snprintf(s->where, sizeof s->where, "%s", where);
    unsigned char lenbuf[8];
    size_t got;
    int rc = 0;
    int r = read_exact(f, lenbuf, 8, &got);
    if (r < 0) rc = ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), where);
    else if (r && got == 0) rc = ds_fail(DS_ERR, "safetensors: empty input: %s", where);
    else if (r) rc = ds_fail(DS_ERR, "safetensors: truncated: %zu bytes, the header length alone takes 8: %s", got, where);
    uint64_t n = rc ? 0 : le64(lenbuf);
    if (!rc && n > DS_ST_MAX_HEADER)
        rc = ds_fail(DS_ERR, "safetensors: header too large: %llu bytes (limit %u): %s", (unsigned long long)n,
                     DS_ST_MAX_HEADER, where);
    char *text = NULL;
    if (!rc && !(text = malloc(n + 1))) rc = ds_fail(DS_ERR, "out of memory reading %s", where);
    if (!rc) {
        r = read_exact(f, text, (size_t)n, &got);
        if (r < 0) rc = ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), where);
        else if (r)
            rc = ds_fail(DS_ERR, "safetensors: header length %llu past the end of the input (%zu header bytes): %s",
                         (unsigned long long)n, got, where);
    }
    if (!rc) rc = header_parse(&s->h, text, (size_t)n, UINT64_MAX, where);
    free(text);
    if (!rc && !(s->order = calloc(s->h.n ? (size_t)s->h.n : 1, sizeof *s->order)))
        rc = ds_fail(DS_ERR, "out of memory reading %s", where);
    if (rc) {
        ds_st_stream_close(s);
        return rc;
    }
    for (int i = 0; i < s->h.n; i++) s->order[i] = s->h.t[s->h.by_offset[i]];
    *out = s;
    return 0;
}

int ds_st_stream_next(ds_st_stream *s, const ds_st_tensor **t) {
    *t = NULL;
    if (s->next >= s->h.n) return 0;
    ds_st_tensor *x = &s->order[s->next];
    if (x->nbytes > s->cap) {
        size_t cap = (size_t)x->nbytes;
        unsigned char *nb = realloc(s->buf, cap);
        if (!nb) return ds_fail(DS_ERR, "out of memory: tensor \"%.200s\" (%llu bytes): %s", x->name,
                                (unsigned long long)x->nbytes, s->where);
        s->buf = nb;
        s->cap = cap;
    }
    size_t got;
    int r = read_exact(s->f, s->buf, (size_t)x->nbytes, &got);
    if (r < 0) return ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), s->where);
    if (r)
        return ds_fail(DS_ERR, "safetensors: truncated: tensor \"%.200s\" needs %llu bytes, got %zu: %s", x->name,
                       (unsigned long long)x->nbytes, got, s->where);
    if (s->next > 0) s->order[s->next - 1].data = NULL;
    x->data = s->buf;
    s->next++;
    *t = x;
    return 0;
}

int ds_st_stream_count(const ds_st_stream *s) { return s->h.n; }
const ds_st_tensor *ds_st_stream_tensor_at(const ds_st_stream *s, int i) {
    return i >= 0 && i < s->h.n ? &s->order[i] : NULL;
}
int ds_st_stream_meta_count(const ds_st_stream *s) { return s->h.n_meta; }
void ds_st_stream_meta_at(const ds_st_stream *s, int i, const char **key, const char **value) {
    *key = s->h.meta[2 * i];
    *value = s->h.meta[2 * i + 1];
}
const char *ds_st_stream_meta(const ds_st_stream *s, const char *key) { return meta_get(&s->h, key); }

void ds_st_stream_close(ds_st_stream *s) {
    if (!s) return;
    header_free(&s->h);
    free(s->order);
    free(s->buf);
    free(s);
}

/* ---- conversion ------------------------------------------------------------------------------ */

static ds_st_fp8_decoder fp8_decoder;
void ds_st_set_fp8_decoder(ds_st_fp8_decoder fn) { fp8_decoder = fn; }

int ds_st_read_f32(const ds_st_tensor *t, float *out, const char *where) {
    if (!t->data && t->numel) return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\" has no data loaded: %s", t->name, where);
    int fp8 = t->dtype == DS_F8_E4M3 || t->dtype == DS_F8_E5M2;
    if (fp8 && !fp8_decoder)
        return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": %s to float32 needs the fp8 decoder (ds_st_set_fp8_decoder): %s",
                       t->name, ds_dtype_name(t->dtype), where);
    enum { CHUNK = 4096 };
    size_t es = ds_dtype_size(t->dtype), n = (size_t)t->numel, nchunks = (n + CHUNK - 1) / CHUNK;
    int aligned = ((uintptr_t)t->data % es) == 0;
    int failed = 0;
    /* Conversion runs at memory speed: threads only pay off for large tensors (embeddings, fused
     * experts); for a few MiB, waking a team costs more than it saves, badly so on a busy machine. */
#pragma omp parallel for schedule(static) if (n > (1u << 24)) reduction(| : failed)
    for (size_t c = 0; c < nchunks; c++) {
        _Alignas(8) unsigned char tmp[CHUNK * 8];
        size_t i0 = c * CHUNK, m = n - i0 < CHUNK ? n - i0 : CHUNK;
        const unsigned char *src = (const unsigned char *)t->data + i0 * es;
        if (!aligned) {
            memcpy(tmp, src, m * es);
            src = tmp;
        }
        int r = fp8 ? fp8_decoder(out + i0, src, t->dtype, m) : ds_convert_to_f32(out + i0, src, t->dtype, m);
        failed |= r != 0;
    }
    if (failed) return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": cannot convert %s to float32: %s", t->name,
                               ds_dtype_name(t->dtype), where);
    return 0;
}

int ds_st_shape_is(const ds_st_tensor *t, int ndim, const int64_t *shape) {
    if (t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

void ds_st_shape_str(const ds_st_tensor *t, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* ---- writing --------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_ST_MAX_DIMS];
    uint64_t nbytes;
    int shard;
} wtensor;

struct ds_st_writer {
    ds_st_write_opts opts;
    char path[4096], dir[4096], stem[1024];
    int is_stdout;
    char **meta; /* key, value pairs */
    int n_meta;
    wtensor *t;
    int n, cap;
    name_map map;   /* declared names, for duplicate checks */
    int sealed;     /* header(s) planned; data may flow */
    int n_shards;
    int cur;        /* tensor receiving data */
    uint64_t cur_done;
    int shard_open; /* index of the shard being written, -1 none */
    ds_atomic a;
    char **done_paths; /* shards already renamed into place (removed on abort) */
    int n_done;
    int failed;
};

int ds_st_writer_open(ds_st_writer **out, const char *path, const ds_st_write_opts *opts) {
    *out = NULL;
    ds_st_writer *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(DS_ERR, "out of memory");
    if (opts) w->opts = *opts;
    w->shard_open = -1;
    w->is_stdout = ds_is_stdio(path);
    if (strlen(path) >= sizeof w->path) {
        free(w);
        return ds_fail(DS_ERR, "path too long: %s", path);
    }
    snprintf(w->path, sizeof w->path, "%s", w->is_stdout ? "<stdout>" : path);
    if (!w->is_stdout) {
        const char *slash = strrchr(path, '/');
        const char *base = slash ? slash + 1 : path;
        if (slash) snprintf(w->dir, sizeof w->dir, "%.*s", (int)(slash - path), path);
        else snprintf(w->dir, sizeof w->dir, ".");
        if (slash == path) snprintf(w->dir, sizeof w->dir, "/");
        size_t bl = strlen(base);
        const char *ext = ".safetensors";
        size_t el = strlen(ext);
        if (bl > el && !strcmp(base + bl - el, ext)) snprintf(w->stem, sizeof w->stem, "%.*s", (int)(bl - el), base);
        else snprintf(w->stem, sizeof w->stem, "%s", base);
    }
    if (!w->opts.no_format_pt && ds_st_writer_meta(w, "format", "pt")) {
        ds_st_writer_abort(w);
        return DS_ERR;
    }
    *out = w;
    return 0;
}

int ds_st_writer_meta(ds_st_writer *w, const char *key, const char *value) {
    if (w->sealed) return ds_fail(DS_ERR, "safetensors: metadata \"%.200s\" set after data was written: %s", key, w->path);
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[2 * i], key)) {
            char *v = strdup(value);
            if (!v) return ds_fail(DS_ERR, "out of memory");
            free(w->meta[2 * i + 1]);
            w->meta[2 * i + 1] = v;
            return 0;
        }
    char **nm = realloc(w->meta, (size_t)(2 * w->n_meta + 2) * sizeof *nm);
    if (!nm) return ds_fail(DS_ERR, "out of memory");
    w->meta = nm;
    nm[2 * w->n_meta] = strdup(key);
    nm[2 * w->n_meta + 1] = strdup(value);
    w->n_meta++;
    if (!nm[2 * w->n_meta - 2] || !nm[2 * w->n_meta - 1]) return ds_fail(DS_ERR, "out of memory");
    return 0;
}

int ds_st_writer_declare(ds_st_writer *w, const char *name, ds_dtype dtype, int ndim, const int64_t *shape) {
    if (w->sealed) return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\" declared after data was written: %s", name, w->path);
    if (!strcmp(name, "__metadata__")) return ds_fail(DS_ERR, "safetensors: \"__metadata__\" is not a tensor name: %s", w->path);
    if (ds_dtype_size(dtype) == 0) return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": invalid dtype: %s", name, w->path);
    if (ndim < 0 || ndim > DS_ST_MAX_DIMS)
        return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": %d dimensions (0 to %d): %s", name, ndim, DS_ST_MAX_DIMS, w->path);
    uint64_t bytes = ds_dtype_size(dtype);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || __builtin_mul_overflow(bytes, (uint64_t)shape[d], &bytes) || bytes > INT64_MAX)
            return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": bad shape: %s", name, w->path);
    if (map_find(&w->map, name) >= 0) return ds_fail(DS_ERR, "safetensors: duplicate tensor \"%.200s\": %s", name, w->path);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        wtensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) return ds_fail(DS_ERR, "out of memory");
        w->t = nt;
        w->cap = cap;
    }
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return ds_fail(DS_ERR, "out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->nbytes = bytes;
    if (map_insert(&w->map, t->name, w->n)) {
        free(t->name);
        return DS_ERR;
    }
    w->n++;
    return 0;
}

static void shard_name(const ds_st_writer *w, int k, char *buf, size_t n) {
    if (w->n_shards <= 1) snprintf(buf, n, "%s.safetensors", w->stem);
    else snprintf(buf, n, "%s-%05d-of-%05d.safetensors", w->stem, k + 1, w->n_shards);
}

/* Header JSON for shard k: __metadata__ first, then its tensors in declaration order, contiguous. */
static int write_header(ds_st_writer *w, int k) {
    json_t *root = json_object(), *meta = json_object();
    int rc = 0;
    if (!root || !meta) rc = ds_fail(DS_ERR, "out of memory");
    for (int i = 0; !rc && i < w->n_meta; i++) json_object_set_new(meta, w->meta[2 * i], json_string(w->meta[2 * i + 1]));
    if (!rc && w->n_meta) json_object_set(root, "__metadata__", meta);
    uint64_t off = 0;
    for (int i = 0; !rc && i < w->n; i++) {
        const wtensor *t = &w->t[i];
        if (t->shard != k) continue;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *e = json_pack("{s:s,s:o,s:[I,I]}", "dtype", ds_dtype_name(t->dtype), "shape", shape, "data_offsets",
                              (json_int_t)off, (json_int_t)(off + t->nbytes));
        if (!e || json_object_set_new(root, t->name, e)) rc = ds_fail(DS_ERR, "out of memory");
        off += t->nbytes;
    }
    char *text = NULL;
    if (!rc) rc = ds_json_dump(root, 0, &text);
    json_decref(meta);
    json_decref(root);
    if (rc) return rc;
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    unsigned char lenbuf[8];
    uint64_t n64 = padded;
    memcpy(lenbuf, &n64, 8);
    rc = ds_write_all(w->a.f, lenbuf, 8, w->a.path);
    if (!rc) rc = ds_write_all(w->a.f, text, len, w->a.path);
    if (!rc && padded > len) rc = ds_write_all(w->a.f, "       ", padded - len, w->a.path);
    free(text);
    return rc;
}

static int open_shard(ds_st_writer *w, int k) {
    char name[1200], path[8192];
    shard_name(w, k, name, sizeof name);
    if (w->is_stdout) snprintf(path, sizeof path, "-");
    else DS_TRY(ds_path_join(path, sizeof path, w->dir, name));
    DS_TRY(ds_atomic_open(&w->a, path));
    w->shard_open = k;
    return write_header(w, k);
}

static int close_shard(ds_st_writer *w) {
    int k = w->shard_open;
    w->shard_open = -1;
    DS_TRY(ds_atomic_commit(&w->a));
    if (w->is_stdout) return 0;
    char **nd = realloc(w->done_paths, (size_t)(w->n_done + 1) * sizeof *nd);
    if (!nd) return ds_fail(DS_ERR, "out of memory");
    w->done_paths = nd;
    nd[w->n_done++] = strdup(w->a.path);
    (void)k;
    return 0;
}

static int seal(ds_st_writer *w) {
    w->sealed = 1;
    uint64_t max = w->is_stdout ? 0 : w->opts.max_shard_bytes, fill = 0;
    int k = 0;
    for (int i = 0; i < w->n; i++) {
        if (max && fill > 0 && fill + w->t[i].nbytes > max) {
            k++;
            fill = 0;
        }
        w->t[i].shard = k;
        fill += w->t[i].nbytes;
    }
    w->n_shards = k + 1;
    if (w->n_shards > 99999) return ds_fail(DS_ERR, "safetensors: more than 99999 shards: %s", w->path);
    w->cur = 0;
    w->cur_done = 0;
    return open_shard(w, 0);
}

/* Move past finished tensors (and zero-byte ones), switching shards as needed. */
static int advance(ds_st_writer *w) {
    while (w->cur < w->n && w->cur_done == w->t[w->cur].nbytes) {
        w->cur++;
        w->cur_done = 0;
        if (w->cur < w->n && w->t[w->cur].shard != w->shard_open) {
            DS_TRY(close_shard(w));
            DS_TRY(open_shard(w, w->t[w->cur].shard));
        }
    }
    return 0;
}

int ds_st_writer_data(ds_st_writer *w, const void *bytes, size_t n) {
    if (w->failed) return ds_fail(DS_ERR, "safetensors: writer used after an error: %s", w->path);
    int rc = 0;
    if (!w->sealed) rc = seal(w);
    if (!rc) rc = advance(w);
    const unsigned char *p = bytes;
    while (!rc && n > 0) {
        if (w->cur >= w->n) {
            rc = ds_fail(DS_ERR, "safetensors: %zu bytes of data beyond the declared tensors: %s", n, w->path);
            break;
        }
        uint64_t room = w->t[w->cur].nbytes - w->cur_done;
        size_t m = n < room ? n : (size_t)room;
        rc = ds_write_all(w->a.f, p, m, w->a.path);
        w->cur_done += m;
        p += m;
        n -= m;
        if (!rc) rc = advance(w);
    }
    if (rc) w->failed = 1;
    return rc;
}

int ds_st_writer_data_f32(ds_st_writer *w, const float *src, size_t n) {
    int rc = 0;
    if (!w->sealed && (rc = seal(w))) return w->failed = 1, rc;
    if ((rc = advance(w))) return w->failed = 1, rc;
    if (w->cur >= w->n) return ds_fail(DS_ERR, "safetensors: data beyond the declared tensors: %s", w->path);
    const wtensor *t = &w->t[w->cur];
    size_t es = ds_dtype_size(t->dtype);
    if (t->dtype != DS_F32 && t->dtype != DS_F16 && t->dtype != DS_BF16)
        return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": float32 data cannot be stored as %s: %s", t->name,
                       ds_dtype_name(t->dtype), w->path);
    if (w->cur_done % es || n > (t->nbytes - w->cur_done) / es)
        return ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": %zu float32 values do not fit the rest of the tensor: %s",
                       t->name, n, w->path);
    if (t->dtype == DS_F32) return ds_st_writer_data(w, src, n * 4);
    enum { CHUNK = 8192 };
    uint16_t buf[CHUNK];
    for (size_t i = 0; !rc && i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        ds_convert_from_f32(buf, t->dtype, src + i, m);
        rc = ds_st_writer_data(w, buf, m * 2);
    }
    return rc;
}

static int cmp_name(const void *a, const void *b, void *ctx) {
    const wtensor *t = ctx;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

static int write_index(ds_st_writer *w) {
    json_t *root = json_object(), *map = json_object();
    uint64_t total = 0;
    /* weight_map sorted by name, as huggingface_hub writes it */
    int *order = malloc((size_t)(w->n ? w->n : 1) * sizeof *order);
    if (!root || !map || !order) {
        json_decref(root);
        json_decref(map);
        free(order);
        return ds_fail(DS_ERR, "out of memory");
    }
    for (int i = 0; i < w->n; i++) order[i] = i;
    qsort_r(order, (size_t)w->n, sizeof *order, cmp_name, w->t);
    for (int i = 0; i < w->n; i++) {
        char name[1200];
        shard_name(w, w->t[order[i]].shard, name, sizeof name);
        json_object_set_new(map, w->t[order[i]].name, json_string(name));
        total += w->t[order[i]].nbytes;
    }
    free(order);
    json_object_set_new(root, "metadata", json_pack("{s:I}", "total_size", (json_int_t)total));
    json_object_set_new(root, "weight_map", map);
    char *text = NULL;
    int rc = ds_json_dump(root, 2, &text);
    json_decref(root);
    if (rc) return rc;
    char fname[1200], path[8192];
    snprintf(fname, sizeof fname, "%s.safetensors.index.json", w->stem);
    rc = ds_path_join(path, sizeof path, w->dir, fname);
    if (!rc) rc = ds_atomic_write_file(path, text, strlen(text));
    free(text);
    return rc;
}

static void writer_free(ds_st_writer *w) {
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    for (int i = 0; i < 2 * w->n_meta; i++) free(w->meta[i]);
    for (int i = 0; i < w->n_done; i++) free(w->done_paths[i]);
    free(w->done_paths);
    free(w->t);
    free(w->meta);
    map_free(&w->map);
    free(w);
}

int ds_st_writer_close(ds_st_writer *w) {
    int rc = w->failed ? ds_fail(DS_ERR, "safetensors: writer used after an error: %s", w->path) : 0;
    if (!rc && !w->sealed) rc = seal(w);
    if (!rc) rc = advance(w);
    if (!rc && w->cur < w->n)
        rc = ds_fail(DS_ERR, "safetensors: tensor \"%.200s\" got %llu of %llu bytes: %s", w->t[w->cur].name,
                     (unsigned long long)w->cur_done, (unsigned long long)w->t[w->cur].nbytes, w->path);
    if (!rc) rc = close_shard(w);
    if (!rc && w->n_shards > 1) rc = write_index(w);
    if (rc) {
        ds_st_writer_abort(w);
        return rc;
    }
    writer_free(w);
    return 0;
}

void ds_st_writer_abort(ds_st_writer *w) {
    if (!w) return;
    if (w->shard_open >= 0) ds_atomic_abort(&w->a);
    for (int i = 0; i < w->n_done; i++) unlink(w->done_paths[i]);
    writer_free(w);
}

int ds_st_save(const char *path, const ds_st_tensor *t, int n, const char *const *meta_kv, int n_meta,
               const ds_st_write_opts *opts) {
    ds_st_writer *w;
    DS_TRY(ds_st_writer_open(&w, path, opts));
    int rc = 0;
    for (int i = 0; !rc && i < n_meta; i++) rc = ds_st_writer_meta(w, meta_kv[2 * i], meta_kv[2 * i + 1]);
    for (int i = 0; !rc && i < n; i++) rc = ds_st_writer_declare(w, t[i].name, t[i].dtype, t[i].ndim, t[i].shape);
    for (int i = 0; !rc && i < n; i++) {
        size_t bytes = (size_t)t[i].numel * ds_dtype_size(t[i].dtype);
        if (t[i].numel < 0) rc = ds_fail(DS_ERR, "safetensors: tensor \"%.200s\": numel not set: %s", t[i].name, path);
        else rc = ds_st_writer_data(w, t[i].data, bytes);
    }
    if (rc) {
        ds_st_writer_abort(w);
        return rc;
    }
    return ds_st_writer_close(w);
}

/* ---- sets: one file or shards ---------------------------------------------------------------- */

struct ds_st_set {
    ds_st_file **shard;
    char **shard_name;
    int n_shards;
    ds_st_tensor *t; /* copies (name pointers into the shards' headers) */
    int *t_shard;
    int n;
    name_map map;
};

void ds_st_set_close(ds_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_shards; i++) {
        ds_st_close(s->shard[i]);
        free(s->shard_name[i]);
    }
    free(s->shard);
    free(s->shard_name);
    free(s->t);
    free(s->t_shard);
    map_free(&s->map);
    free(s);
}

static int set_add_shard(ds_st_set *s, const char *dir, const char *name) {
    for (int i = 0; i < s->n_shards; i++)
        if (!strcmp(s->shard_name[i], name)) return i;
    char path[8192];
    DS_TRY(ds_path_join(path, sizeof path, dir, name));
    ds_st_file **ns = realloc(s->shard, (size_t)(s->n_shards + 1) * sizeof *ns);
    if (ns) s->shard = ns;
    char **nn = realloc(s->shard_name, (size_t)(s->n_shards + 1) * sizeof *nn);
    if (nn) s->shard_name = nn;
    if (!ns || !nn) return -ds_fail(DS_ERR, "out of memory");
    ds_st_file *f;
    if (ds_st_open(&f, path)) return -DS_ERR;
    s->shard[s->n_shards] = f;
    s->shard_name[s->n_shards] = strdup(name);
    return s->n_shards++;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int set_from_index(ds_st_set *s, const char *index_path) {
    char *text;
    size_t len;
    DS_TRY(ds_read_file(index_path, &text, &len, 1u << 30));
    json_t *root = ds_json_parse(text, len, "safetensors index", index_path);
    free(text);
    if (!root) return DS_ERR;
    int rc = 0;
    json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        json_decref(root);
        return ds_fail(DS_ERR, "safetensors index: weight_map must be an object: %s", index_path);
    }
    char dir[4096];
    const char *slash = strrchr(index_path, '/');
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - index_path), index_path);
    else snprintf(dir, sizeof dir, ".");
    if (slash == index_path) snprintf(dir, sizeof dir, "/");
    size_t n = json_object_size(map);
    int *which = malloc((n ? n : 1) * sizeof *which);
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!which || !names) rc = ds_fail(DS_ERR, "out of memory");
    const char *key;
    json_t *v;
    size_t i = 0;
    /* shards are opened in name order (model-00001-of-... first), whatever the weight_map order */
    const char **files = malloc((n ? n : 1) * sizeof *files);
    if (!files) rc = ds_fail(DS_ERR, "out of memory");
    json_object_foreach(map, key, v) {
        if (rc) break;
        const char *file = json_string_value(v);
        if (!file || !*file || strchr(file, '/') || !strcmp(file, ".") || !strcmp(file, "..")) {
            rc = ds_fail(DS_ERR, "safetensors index: weight_map: \"%.200s\": shard must be a file name in the index's directory: %s",
                         key, index_path);
            break;
        }
        files[i++] = file;
    }
    if (!rc) qsort(files, i, sizeof *files, cmp_str);
    for (size_t j = 0; !rc && j < i; j++)
        if ((j == 0 || strcmp(files[j], files[j - 1])) && set_add_shard(s, dir, files[j]) < 0) rc = DS_ERR;
    free(files);
    i = 0;
    json_object_foreach(map, key, v) {
        if (rc) break;
        names[i] = key;
        which[i++] = set_add_shard(s, dir, json_string_value(v)); /* already open: a lookup */
    }
    if (!rc) {
        s->t = calloc(n ? n : 1, sizeof *s->t);
        s->t_shard = calloc(n ? n : 1, sizeof *s->t_shard);
        if (!s->t || !s->t_shard) rc = ds_fail(DS_ERR, "out of memory");
    }
    /* the set lists tensors shard by shard, in each shard's file order */
    for (int k = 0; !rc && k < s->n_shards; k++) {
        for (size_t j = 0; !rc && j < n; j++) {
            if (which[j] != k) continue;
            const ds_st_tensor *t = ds_st_find(s->shard[k], names[j]);
            if (!t) {
                rc = ds_fail(DS_ERR, "safetensors index: tensor \"%.200s\" not found in %s: %s", names[j], s->shard_name[k],
                             index_path);
                break;
            }
        }
        for (int j = 0; !rc && j < ds_st_count(s->shard[k]); j++) {
            const ds_st_tensor *t = ds_st_tensor_at(s->shard[k], j);
            const json_t *mapped = json_object_get(map, t->name);
            if (!mapped || strcmp(json_string_value(mapped), s->shard_name[k])) continue; /* not indexed here */
            s->t[s->n] = *t;
            s->t_shard[s->n++] = k;
        }
    }
    free(which);
    free(names);
    json_decref(root);
    return rc;
}

/* s has no shards yet: make f its only one. */
static int set_adopt_file(ds_st_set *s, ds_st_file *f, const char *name) {
    s->shard = malloc(sizeof *s->shard);
    s->shard_name = malloc(sizeof *s->shard_name);
    s->t = calloc((size_t)ds_st_count(f) + 1, sizeof *s->t);
    s->t_shard = calloc((size_t)ds_st_count(f) + 1, sizeof *s->t_shard);
    char *nm = strdup(name);
    if (!s->shard || !s->shard_name || !s->t || !s->t_shard || !nm) {
        ds_st_close(f);
        free(nm);
        return ds_fail(DS_ERR, "out of memory");
    }
    s->shard[0] = f;
    s->shard_name[0] = nm;
    s->n_shards = 1;
    for (int i = 0; i < ds_st_count(f); i++) s->t[s->n++] = *ds_st_tensor_at(f, i);
    return 0;
}

int ds_st_set_from_file(ds_st_set **out, ds_st_file *f, const char *name) {
    *out = NULL;
    ds_st_set *s = calloc(1, sizeof *s);
    if (!s) {
        ds_st_close(f);
        return ds_fail(DS_ERR, "out of memory");
    }
    int rc = set_adopt_file(s, f, name);
    if (!rc) rc = map_build(&s->map, s->t, s->n);
    if (rc) {
        ds_st_set_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int ds_st_set_open(ds_st_set **out, const char *path) {
    *out = NULL;
    ds_st_set *s = calloc(1, sizeof *s);
    if (!s) return ds_fail(DS_ERR, "out of memory");
    char buf[8192];
    int rc = 0;
    const char *file = path;
    if (!ds_is_stdio(path) && ds_path_is_dir(path)) {
        rc = ds_path_join(buf, sizeof buf, path, "model.safetensors.index.json");
        if (!rc && !ds_path_exists(buf)) rc = ds_path_join(buf, sizeof buf, path, "model.safetensors");
        if (!rc && !ds_path_exists(buf))
            rc = ds_fail(DS_ERR, "safetensors: no model.safetensors or model.safetensors.index.json in the directory: %s", path);
        file = buf;
    }
    size_t fl = strlen(file);
    if (!rc && fl > 5 && !strcmp(file + fl - 5, ".json")) {
        rc = set_from_index(s, file);
    } else if (!rc) {
        ds_st_file *f;
        rc = ds_st_open(&f, file);
        if (!rc) {
            const char *slash = strrchr(file, '/');
            rc = set_adopt_file(s, f, slash ? slash + 1 : file);
        }
    }
    if (!rc) rc = map_build(&s->map, s->t, s->n);
    if (rc) {
        ds_st_set_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int ds_st_set_count(const ds_st_set *s) { return s->n; }
int ds_st_set_shard_count(const ds_st_set *s) { return s->n_shards; }
const ds_st_tensor *ds_st_set_tensor_at(const ds_st_set *s, int i) { return i >= 0 && i < s->n ? &s->t[i] : NULL; }
const ds_st_tensor *ds_st_set_find(const ds_st_set *s, const char *name) {
    int i = map_find(&s->map, name);
    return i < 0 ? NULL : &s->t[i];
}
const char *ds_st_set_file_of(const ds_st_set *s, const char *name) {
    int i = map_find(&s->map, name);
    return i < 0 ? NULL : s->shard_name[s->t_shard[i]];
}
const char *ds_st_set_meta(const ds_st_set *s, const char *key) {
    return s->n_shards ? ds_st_meta(s->shard[0], key) : NULL;
}
