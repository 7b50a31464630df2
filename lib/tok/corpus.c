/* corpus.c — documents from files into ordered, parallel encoding (see corpus.h). */
#include "tok/corpus.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include <unistd.h>
#include "tok/internal.h"
#include "tok/train.h"

static int tok_threads = 1;

void ds_tok_set_threads(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    tok_threads = n;
}

int ds_tok_threads(void) { return tok_threads; }

#define UNIT_BYTES (1u << 20) /* a long document is cut into units of about this size */

enum { UNIT_FIRST = 1, UNIT_LAST = 2 };

typedef struct {
    size_t off, len;
    uint64_t line; /* 1-based line number (lines / JSONL) for messages */
    int input;     /* index into paths */
    int flags;
    ds_ids ids;
    int rc;
    char err[320];
} unit;

/* The reader fills one growable buffer with whole units and keeps an unfinished tail for the next
 * round. */
typedef struct {
    const ds_corpus_opts *o;
    const char *const *paths;
    int npaths, cur;
    FILE *f;
    int eof_all;
    char *buf;
    size_t cap, len;   /* buffer holds len bytes: complete units first, then the tail */
    size_t tail;       /* start of the unfinished tail */
    int doc_open;      /* the tail continues a document whose first unit was already emitted */
    uint64_t line;     /* lines consumed in the current input */
    uint64_t in_bytes; /* bytes read from the current input */
    uint64_t bytes;
    size_t (*cut)(const char *, size_t); /* NULL: a whole-file document is never cut */
    unit *u;
    size_t nu, ucap;
} reader;

static const char *path_name(const reader *r, int i) {
    return r->npaths == 0 || ds_is_stdio(r->paths[i]) ? "<stdin>" : r->paths[i];
}

static int open_next(reader *r) {
    if (r->f) {
        if (r->f != stdin) fclose(r->f);
        r->f = NULL;
        r->cur++;
    }
    int n = r->npaths ? r->npaths : 1;
    if (r->cur >= n) {
        r->eof_all = 1;
        return 0;
    }
    const char *p = r->npaths ? r->paths[r->cur] : "-";
    if (ds_is_stdio(p)) r->f = stdin;
    else if (!(r->f = fopen(p, "rb"))) return ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), p);
    r->line = 0;
    r->in_bytes = 0;
    return 0;
}

static int add_unit(reader *r, size_t off, size_t len, int flags, uint64_t line) {
    if (r->nu == r->ucap) {
        size_t cap = r->ucap ? 2 * r->ucap : 256;
        unit *u = realloc(r->u, cap * sizeof *u);
        if (!u) return ds_fail(DS_ERR, "encode: out of memory");
        memset(u + r->ucap, 0, (cap - r->ucap) * sizeof *u);
        r->u = u;
        r->ucap = cap;
    }
    unit *u = &r->u[r->nu++];
    u->off = off, u->len = len, u->flags = flags, u->line = line, u->input = r->cur;
    u->ids.n = 0;
    u->rc = 0;
    return 0;
}

/* Turn buf[tail, len) into units; at_eof says the current input ended there. */
static int carve(reader *r, int at_eof) {
    size_t s = r->tail, e = r->len;
    if (r->o->doc_mode == DS_DOC_FILE) {
        if (!at_eof && !r->cut) return 0; /* whole document needed */
        while (s < e) {
            size_t end = e;
            if (e - s > UNIT_BYTES && r->cut) {
                size_t c = r->cut(r->buf + s, UNIT_BYTES);
                if (!c) c = r->cut(r->buf + s, e - s);
                end = c ? s + c : e;
            }
            if (end == e && !at_eof) break; /* keep the rest until more text or the end is known */
            int flags = (r->doc_open ? 0 : UNIT_FIRST) | (end == e && at_eof ? UNIT_LAST : 0);
            DS_TRY(add_unit(r, s, end - s, flags, 0));
            r->doc_open = !(flags & UNIT_LAST);
            s = end;
        }
        if (at_eof && s == e && (r->doc_open || r->in_bytes == 0)) { /* ended at a cut, or an empty file */
            DS_TRY(add_unit(r, s, 0, UNIT_LAST, 0));
            r->doc_open = 0;
        }
        r->tail = s;
        return 0;
    }
    while (s < e) {
        const char *nl = memchr(r->buf + s, '\n', e - s);
        if (!nl && !at_eof) break;
        size_t end = nl ? (size_t)(nl - r->buf) : e;
        r->line++;
        if (r->o->doc_mode == DS_DOC_LINES || end > s) /* blank JSONL lines are not documents */
            DS_TRY(add_unit(r, s, end - s, UNIT_FIRST | UNIT_LAST, r->line));
        s = nl ? end + 1 : e;
    }
    r->tail = s;
    return 0;
}

/* Read until the buffer holds about `want` bytes of units, or input ends. */
static int fill(reader *r, size_t want) {
    /* move the unfinished tail to the front */
    if (r->len > r->tail) memmove(r->buf, r->buf + r->tail, r->len - r->tail);
    r->len -= r->tail;
    r->tail = 0;
    r->nu = 0;
    while (!r->eof_all) {
        if (!r->f) {
            DS_TRY(open_next(r));
            if (r->eof_all) break;
            r->doc_open = 0;
        }
        size_t units_bytes = r->tail;
        if (units_bytes >= want && r->nu) break;
        if (r->cap - r->len < (1u << 20)) {
            size_t cap = r->cap ? 2 * r->cap : (size_t)16 << 20;
            char *b = realloc(r->buf, cap);
            if (!b) return ds_fail(DS_ERR, "encode: out of memory (document of %zu bytes)", r->len);
            r->buf = b, r->cap = cap;
        }
        size_t got = fread(r->buf + r->len, 1, r->cap - r->len, r->f);
        if (ferror(r->f)) return ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), path_name(r, r->cur));
        r->len += got;
        r->bytes += got;
        r->in_bytes += got;
        int at_eof = got == 0 && feof(r->f);
        if (got == 0 && !at_eof) continue;
        DS_TRY(carve(r, at_eof));
        if (at_eof) {
            if (r->tail != r->len) return ds_fail(DS_ERR, "encode: internal: unconsumed input");
            DS_TRY(open_next(r));
        }
    }
    return 0;
}

static void reader_free(reader *r) {
    if (r->f && r->f != stdin) fclose(r->f);
    for (size_t i = 0; i < r->ucap; i++) ds_ids_free(&r->u[i].ids);
    free(r->u);
    free(r->buf);
}

static void progress_total(const ds_corpus_opts *o, const char *const *paths, int npaths, ds_progress *p) {
    double total = 0;
    for (int i = 0; i < npaths; i++) {
        struct stat st;
        if (ds_is_stdio(paths[i]) || stat(paths[i], &st) || !S_ISREG(st.st_mode)) {
            total = 0;
            break;
        }
        total += (double)st.st_size;
    }
    if (npaths == 0) total = 0;
    if (o->progress) ds_progress_begin(p, "encode", "B", total);
}

static void unit_error(unit *u, const reader *r) {
    const char *name = path_name(r, u->input);
    if (u->line) snprintf(u->err, sizeof u->err, "%s: %s:%llu", ds_errmsg(), name, (unsigned long long)u->line);
    else snprintf(u->err, sizeof u->err, "%s: %s", ds_errmsg(), name);
}

/* ---- JSONL fast path: one pass over the line, decoding only the wanted string ------------------- */

typedef struct {
    const char *p, *end;
} jscan;

static void js_ws(jscan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n')) s->p++;
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int js_hex4(jscan *s, uint32_t *v) {
    if (s->end - s->p < 4) return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s->p[i]);
        if (h < 0) return -1;
        *v = *v << 4 | (uint32_t)h;
    }
    s->p += 4;
    return 0;
}

/* A string at s->p ('"'); decoded into out when out != NULL. Returns 0, or -1 when malformed. */
static int js_string(jscan *s, ds_bytes *out) {
    s->p++;
    for (;;) {
        const char *q = s->p;
        while (q < s->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
        if (out) {
            if (ds_bytes_reserve(out, (size_t)(q - s->p) + 4)) return -1;
            memcpy(out->v + out->n, s->p, (size_t)(q - s->p));
            out->n += (size_t)(q - s->p);
        }
        s->p = q;
        if (q >= s->end || (unsigned char)*q < 0x20) return -1;
        if (*q == '"') {
            s->p++;
            return 0;
        }
        if (++s->p >= s->end) return -1;
        char c = *s->p++, d = 0;
        uint32_t cp;
        switch (c) {
        case '"': case '\\': case '/': d = c; break;
        case 'b': d = '\b'; break;
        case 'f': d = '\f'; break;
        case 'n': d = '\n'; break;
        case 'r': d = '\r'; break;
        case 't': d = '\t'; break;
        case 'u':
            if (js_hex4(s, &cp)) return -1;
            if (cp >= 0xd800 && cp < 0xdc00) { /* a surrogate pair makes one code point */
                uint32_t lo;
                if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u') return -1;
                s->p += 2;
                if (js_hex4(s, &lo) || lo < 0xdc00 || lo > 0xdfff) return -1;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return -1;
            }
            if (out) out->n += (size_t)ds_utf8_encode(cp, (char *)out->v + out->n);
            continue;
        default: return -1;
        }
        if (out) out->v[out->n++] = (uint8_t)d;
    }
}

static int js_value(jscan *s, int depth);

static int js_container(jscan *s, int depth, char close) {
    s->p++;
    js_ws(s);
    if (s->p < s->end && *s->p == close) return s->p++, 0;
    for (;;) {
        js_ws(s);
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"' || js_string(s, NULL)) return -1;
            js_ws(s);
            if (s->p >= s->end || *s->p++ != ':') return -1;
        }
        if (js_value(s, depth + 1)) return -1;
        js_ws(s);
        if (s->p >= s->end) return -1;
        char c = *s->p++;
        if (c == close) return 0;
        if (c != ',') return -1;
    }
}

static int js_value(jscan *s, int depth) {
    js_ws(s);
    if (s->p >= s->end || depth > 64) return -1;
    char c = *s->p;
    if (c == '"') return js_string(s, NULL);
    if (c == '{') return js_container(s, depth, '}');
    if (c == '[') return js_container(s, depth, ']');
    const char *q = s->p;
    while (q < s->end && (isalnum((unsigned char)*q) || *q == '-' || *q == '+' || *q == '.')) q++;
    if (q == s->p) return -1;
    s->p = q;
    return 0;
}

/* The top-level string field `key` of a one-object line, decoded into out. Returns 1 found, 0 absent,
 * -1 when the line is not a JSON object the fast path understands (the caller then asks jansson). */
static int jsonl_field(const char *line, size_t len, const char *key, ds_bytes *out) {
    jscan s = {line, line + len};
    size_t klen = strlen(key);
    int found = 0;
    js_ws(&s);
    if (s.p >= s.end || *s.p != '{') return -1;
    s.p++;
    js_ws(&s);
    if (s.p < s.end && *s.p == '}') s.p++;
    else
        for (;;) {
            js_ws(&s);
            if (s.p >= s.end || *s.p != '"') return -1;
            const char *k0 = s.p + 1;
            if (js_string(&s, NULL)) return -1;
            int match = !found && (size_t)(s.p - 1 - k0) == klen && !memcmp(k0, key, klen); /* escaped keys: slow path */
            js_ws(&s);
            if (s.p >= s.end || *s.p++ != ':') return -1;
            js_ws(&s);
            if (match && s.p < s.end && *s.p == '"') {
                out->n = 0;
                if (js_string(&s, out)) return -1;
                found = 1;
            } else if (js_value(&s, 1)) {
                return -1;
            }
            js_ws(&s);
            if (s.p >= s.end) return -1;
            char c = *s.p++;
            if (c == '}') break;
            if (c != ',') return -1;
        }
    js_ws(&s);
    return s.p == s.end ? found : -1;
}

static int encode_unit(ds_tok_encoder *e, const ds_corpus_opts *o, const char *text, unit *u, ds_bytes *field) {
    if (o->doc_mode != DS_DOC_JSONL) return ds_tok_encoder_encode(e, text, u->len, o->flags, &u->ids);
    if (jsonl_field(text, u->len, o->jsonl_key, field) == 1)
        return ds_tok_encoder_encode(e, (const char *)field->v, field->n, o->flags, &u->ids);
    /* absent, or beyond the fast path: jansson decides, and words the error */
    json_error_t jerr;
    json_t *root = json_loadb(text, u->len, 0, &jerr);
    if (!root) return ds_fail(DS_ERR, "bad JSON line: %s", jerr.text);
    json_t *v = json_is_object(root) ? json_object_get(root, o->jsonl_key) : NULL;
    int rc = json_is_string(v) ? ds_tok_encoder_encode(e, json_string_value(v), json_string_length(v), o->flags, &u->ids)
                               : ds_fail(DS_ERR, "no string field \"%s\"", o->jsonl_key);
    json_decref(root);
    return rc;
}

int ds_corpus_encode(const ds_tokenizer *t, const ds_corpus_opts *o, const char *const *paths, int npaths,
                     ds_doc_sink sink, void *ctx, ds_corpus_stats *st) {
    memset(st, 0, sizeof *st);
    double t0 = ds_now();
    int nt = ds_tok_threads();
    if (nt < 1) nt = 1;
    reader r = {.o = o, .paths = paths, .npaths = npaths};
    r.cut = ds_pretok_chunkable(&t->pre) && !t->added_crosses_lines ? ds_tok_train_cut : NULL;
    ds_tok_encoder **enc = calloc((size_t)nt, sizeof *enc);
    ds_bytes *field = calloc((size_t)nt, sizeof *field);
    ds_ids doc = {0};
    int rc = enc && field ? 0 : ds_fail(DS_ERR, "encode: out of memory");
    for (int i = 0; !rc && i < nt; i++) rc = ds_tok_encoder_new(&enc[i], t);
    ds_progress prog;
    progress_total(o, paths, npaths, &prog);
    size_t want = (size_t)nt * (4u << 20);
    int empty = 1;
    while (!rc) {
        rc = fill(&r, want);
        if (rc || r.nu == 0) break;
        empty = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
        for (size_t i = 0; i < r.nu; i++) {
#ifdef _OPENMP
            int k = omp_get_thread_num();
#else
            int k = 0;
#endif
            unit *u = &r.u[i];
            u->rc = encode_unit(enc[k], o, r.buf + u->off, u, &field[k]);
            if (u->rc) unit_error(u, &r);
        }
        for (size_t i = 0; !rc && i < r.nu; i++) {
            unit *u = &r.u[i];
            if (u->rc) {
                rc = ds_fail(u->rc, "%s", u->err);
                break;
            }
            if ((u->flags & UNIT_FIRST) && o->bos_id >= 0) {
                if ((rc = ds_ids_reserve(&doc, 1))) break;
                doc.v[doc.n++] = (uint32_t)o->bos_id;
            }
            if ((rc = ds_ids_reserve(&doc, u->ids.n + 1))) break;
            if (u->ids.n) memcpy(doc.v + doc.n, u->ids.v, u->ids.n * sizeof *doc.v);
            doc.n += u->ids.n;
            if (u->flags & UNIT_LAST) {
                if (o->eos_id >= 0) doc.v[doc.n++] = (uint32_t)o->eos_id;
                st->docs++;
                st->tokens += doc.n;
                rc = sink(ctx, doc.v, doc.n);
                doc.n = 0;
            }
        }
        if (o->progress) ds_progress_update(&prog, (double)r.bytes);
    }
    if (o->progress) ds_progress_end(&prog);
    st->bytes = r.bytes;
    st->seconds = ds_now() - t0;
    if (!rc && (empty || r.bytes == 0)) rc = ds_fail(DS_ERR, "empty input: no text to encode");
    for (int i = 0; enc && i < nt; i++) ds_tok_encoder_free(enc[i]);
    free(enc);
    for (int i = 0; field && i < nt; i++) ds_bytes_free(&field[i]);
    free(field);
    ds_ids_free(&doc);
    reader_free(&r);
    return rc;
}

int ds_corpus_read(const ds_corpus_opts *o, const char *const *paths, int npaths, size_t block,
                   size_t (*cut)(const char *, size_t), ds_text_sink sink, void *ctx, ds_corpus_stats *st) {
    memset(st, 0, sizeof *st);
    double t0 = ds_now();
    reader r = {.o = o, .paths = paths, .npaths = npaths, .cut = cut};
    const char **texts = NULL;
    size_t *lens = NULL, span_cap = 0;
    ds_progress prog;
    progress_total(o, paths, npaths, &prog);
    int rc = 0;
    while (!rc) {
        rc = fill(&r, block);
        if (rc || r.nu == 0) break;
        /* consecutive units of one document are contiguous: hand them over as one span */
        size_t nspan = 0;
        for (size_t i = 0; !rc && i < r.nu;) {
            size_t j = i, end = r.u[i].off + r.u[i].len;
            while (!(r.u[j].flags & UNIT_LAST) && j + 1 < r.nu && r.u[j + 1].off == end) end += r.u[++j].len;
            if (nspan == span_cap) {
                span_cap = span_cap ? 2 * span_cap : 256;
                const char **t2 = realloc(texts, span_cap * sizeof *texts);
                size_t *l2 = realloc(lens, span_cap * sizeof *lens);
                if (t2) texts = t2;
                if (l2) lens = l2;
                if (!t2 || !l2) rc = ds_fail(DS_ERR, "out of memory");
            }
            if (rc) break;
            texts[nspan] = r.buf + r.u[i].off;
            lens[nspan++] = end - r.u[i].off;
            if (r.u[j].flags & UNIT_LAST) st->docs++;
            i = j + 1;
        }
        if (!rc) rc = sink(ctx, texts, lens, nspan);
        if (o->progress) ds_progress_update(&prog, (double)r.bytes);
    }
    if (o->progress) ds_progress_end(&prog);
    st->bytes = r.bytes;
    st->seconds = ds_now() - t0;
    if (!rc && r.bytes == 0) rc = ds_fail(DS_ERR, "empty input: no text");
    free(texts);
    free(lens);
    reader_free(&r);
    return rc;
}
