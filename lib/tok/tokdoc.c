/* tokdoc.c — documents out (id lines, shards) and back in (see tokdoc.h). */
#include "tok/tokdoc.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/file.h"
#include "io/kind.h"
#include "tok/internal.h"

/* Token shards come from io/; until that module is in the tree, shard output and input are refused
 * with a clear error rather than left out of the build. */
#if defined(__has_include)
#if __has_include("io/shard.h")
#include "io/shard.h"
#define HAVE_SHARDS 1
#endif
#endif
#ifndef HAVE_SHARDS
#define HAVE_SHARDS 0
#endif

#define BOS_DS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define EOS_DS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

int ds_tokdoc_special_ids(const ds_tokenizer *t, int64_t *bos, int64_t *eos) {
    static const char *const bos_names[] = {BOS_DS, "<|begin_of_text|>", "<s>", "<|endoftext|>", NULL};
    static const char *const eos_names[] = {EOS_DS, "<|end_of_text|>", "</s>", "<|endoftext|>", NULL};
    for (int which = 0; which < 2; which++) {
        int64_t *dst = which ? eos : bos;
        const char *const *names = which ? eos_names : bos_names;
        if (!dst) continue;
        *dst = -1;
        for (int i = 0; names[i] && *dst < 0; i++) *dst = ds_tok_token_id(t, names[i]);
        if (*dst < 0)
            return ds_fail(DS_ERR, "the tokenizer has no %s token (looked for %s, %s, %s, %s)", which ? "EOS" : "BOS",
                           names[0], names[1], names[2], names[3]);
    }
    return 0;
}

/* ---- output ------------------------------------------------------------------------------------- */

#if HAVE_SHARDS
static int shard_path(const ds_tokdoc_out *w, char *out, size_t n) {
    if (!w->shard_dir) return snprintf(out, n, "%s", w->shard_out) < (int)n ? 0 : ds_fail(DS_ERR, "path too long: %s", w->shard_out);
    char name[32];
    snprintf(name, sizeof name, "%06d.tok", w->shard_index);
    return ds_path_join(out, n, w->shard_out, name);
}

static int shard_open(ds_tokdoc_out *w) {
    char path[4096];
    DS_TRY(shard_path(w, path, sizeof path));
    ds_shard_meta meta = {.vocab_size = ds_tok_vocab_size(w->t), .eos_id = (uint32_t)w->eos_id};
    ds_shard_writer *sw;
    DS_TRY(ds_shard_writer_open(&sw, path, &meta));
    w->shard = sw;
    w->in_shard = 0;
    return 0;
}

static int shard_close(ds_tokdoc_out *w) {
    if (!w->shard) return 0;
    int rc = ds_shard_writer_close(w->shard);
    w->shard = NULL;
    w->shard_index++;
    return rc;
}

static int is_numbered_shard(const char *name) {
    return strlen(name) == 10 && !strcmp(name + 6, ".tok") && strspn(name, "0123456789") == 6;
}

/* A directory of shards must not hold numbered shards of an earlier run: a glob would mix them in.
 * --force replaces them: the old ones go before the first new one is written. */
static int check_dir(const char *dir, int force) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int clash = 0, rc = 0;
    char p[4200];
    while (!rc && (e = readdir(d))) {
        if (!is_numbered_shard(e->d_name)) continue;
        clash = 1;
        if (!force) break;
        if (!(rc = ds_path_join(p, sizeof p, dir, e->d_name)) && unlink(p))
            rc = ds_fail(DS_ERR, "cannot remove an old shard: %s: %s", strerror(errno), p);
    }
    closedir(d);
    if (rc || !clash || force) return rc;
    rc = ds_fail(DS_ERR, "output directory holds numbered shards of an earlier run (give --force to replace them): %s", dir);
    ds_hint("or choose another directory");
    return rc;
}
#endif

int ds_tokdoc_out_open(ds_tokdoc_out *w, const ds_tokenizer *t, const char *ids_path, const char *shard_out, int64_t eos_id,
                       uint64_t shard_tokens, int force) {
    memset(w, 0, sizeof *w);
    w->t = t;
    w->eos_id = eos_id;
    w->shard_tokens = shard_tokens;
    w->force = force;
    if (ids_path) w->ids = stdout;
    if (!shard_out) return 0;
#if HAVE_SHARDS
    if (eos_id < 0) return ds_fail(DS_ERR, "token shards separate documents by EOS, and the tokenizer has none");
    w->shard_out = shard_out;
    size_t n = strlen(shard_out);
    if (ds_is_stdio(shard_out)) {
        DS_TRY(ds_check_binary_stdout(force));
    } else if ((n && shard_out[n - 1] == '/') || ds_path_is_dir(shard_out)) {
        w->shard_dir = 1;
        DS_TRY(ds_dir_lock_take(&w->lock, shard_out)); /* one writer per directory; creates it */
        int rc = check_dir(shard_out, force);
        if (!rc) rc = shard_open(w);
        if (rc) ds_dir_lock_release(&w->lock);
        return rc;
    } else if (!force && ds_path_exists(shard_out)) {
        ds_fail(DS_ERR, "output exists (give --force to replace it): %s", shard_out);
        ds_hint("or choose another -o");
        return DS_ERR;
    }
    return shard_open(w);
#else
    return ds_fail(DS_ERR, "-o: token shards need io/shard.h, which this build lacks: %s", shard_out);
#endif
}

#if HAVE_SHARDS
/* EOS inside a document (text encoded with --allow-special) ends a document in the shard. */
static int shard_doc(ds_tokdoc_out *w, const uint32_t *ids, size_t n) {
    if (n == 0) return 0; /* an empty document would be a bare EOS */
    if (w->shard_dir && w->in_shard > 0 && w->in_shard + n + 1 > w->shard_tokens) {
        DS_TRY(shard_close(w));
        DS_TRY(shard_open(w));
    }
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && ids[i] != (uint32_t)w->eos_id) continue;
        if (i == n && start == n && n > 0) break; /* the document ended with its own EOS */
        DS_TRY(ds_shard_writer_add_doc(w->shard, ids + start, i - start));
        w->in_shard += i - start + 1;
        start = i + 1;
    }
    return 0;
}
#endif

static char *put_u32(char *p, uint32_t v) {
    char tmp[10];
    int n = 0;
    do tmp[n++] = (char)('0' + v % 10), v /= 10;
    while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

int ds_tokdoc_out_doc(void *ctx, const uint32_t *ids, size_t n) {
    ds_tokdoc_out *w = ctx;
    if (w->ids) {
        if (w->line_cap < 11 * n + 2) {
            size_t cap = 11 * n + 64;
            char *l = realloc(w->line, cap);
            if (!l) return ds_fail(DS_ERR, "encode: out of memory");
            w->line = l, w->line_cap = cap;
        }
        char *p = w->line;
        for (size_t i = 0; i < n; i++) {
            if (i) *p++ = ' ';
            p = put_u32(p, ids[i]);
        }
        *p++ = '\n';
        DS_TRY(ds_write_all(w->ids, w->line, (size_t)(p - w->line), "<stdout>"));
    }
#if HAVE_SHARDS
    if (w->shard) DS_TRY(shard_doc(w, ids, n));
#endif
    return 0;
}

int ds_tokdoc_out_close(ds_tokdoc_out *w) {
    int rc = 0;
#if HAVE_SHARDS
    rc = shard_close(w);
    ds_dir_lock_release(&w->lock);
#endif
    if (w->ids && fflush(w->ids)) rc = ds_fail(DS_ERR, "write failed: %s: <stdout>", strerror(errno));
    free(w->line);
    w->line = NULL;
    return rc;
}

void ds_tokdoc_out_abort(ds_tokdoc_out *w) {
#if HAVE_SHARDS
    if (w->shard) ds_shard_writer_abort(w->shard);
    w->shard = NULL;
    ds_dir_lock_release(&w->lock);
#endif
    if (w->ids) fflush(w->ids);
    free(w->line);
    w->line = NULL;
}

/* ---- decoding ----------------------------------------------------------------------------------- */

typedef struct {
    const ds_tokenizer *t;
    FILE *out;
    const char *out_name;
    int lines;
    ds_bytes text;
    ds_ids doc;
    ds_corpus_stats *st;
} decoder;

static int emit_doc(decoder *d) {
    d->text.n = 0;
    DS_TRY(ds_tok_decode(d->t, d->doc.v, d->doc.n, &d->text));
    if (!d->lines && d->st->docs > 0) DS_TRY(ds_write_all(d->out, "\n", 1, d->out_name));
    DS_TRY(ds_write_all(d->out, d->text.v, d->text.n, d->out_name));
    if (d->lines) DS_TRY(ds_write_all(d->out, "\n", 1, d->out_name));
    d->st->docs++;
    d->st->tokens += d->doc.n;
    d->st->bytes += d->text.n;
    d->doc.n = 0;
    return 0;
}

static int emit_at(decoder *d, const char *name, uint64_t line) {
    int rc = emit_doc(d);
    if (!rc) return 0;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ds_errmsg());
    return ds_fail(rc, "%s: %s:%llu", msg, name, (unsigned long long)line);
}

/* Lines of space-separated ids, streamed. */
static int decode_id_lines(decoder *d, FILE *f, const char *name) {
    char buf[1 << 16];
    uint64_t line = 1, v = 0;
    int in_num = 0, line_open = 0;
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < got; i++) {
            char c = buf[i];
            if (c >= '0' && c <= '9') {
                v = v * 10 + (uint64_t)(c - '0');
                if (v > UINT32_MAX) return ds_fail(DS_ERR, "token id too large: %s:%llu", name, (unsigned long long)line);
                in_num = line_open = 1;
                continue;
            }
            if (in_num) {
                DS_TRY(ds_ids_reserve(&d->doc, 1));
                d->doc.v[d->doc.n++] = (uint32_t)v;
                v = 0, in_num = 0;
            }
            if (c == '\n') {
                DS_TRY(emit_at(d, name, line));
                line++;
                line_open = 0;
            } else if (c == ' ' || c == '\t' || c == '\r') {
                line_open = 1;
            } else {
                return ds_fail(DS_ERR, "expected token ids, found byte 0x%02x: %s:%llu", (unsigned char)c, name,
                               (unsigned long long)line);
            }
        }
    }
    if (ferror(f)) return ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), name);
    if (in_num) {
        DS_TRY(ds_ids_reserve(&d->doc, 1));
        d->doc.v[d->doc.n++] = (uint32_t)v;
    }
    if (line_open || d->doc.n) DS_TRY(emit_at(d, name, line));
    return 0;
}

#if HAVE_SHARDS
static int decode_shard(decoder *d, ds_shard *sh, const char *name) {
    uint32_t eos = ds_shard_info(sh)->eos_id;
    uint32_t *buf = malloc((1u << 20) * sizeof *buf);
    if (!buf) return ds_fail(DS_ERR, "decode: out of memory");
    int rc = 0;
    size_t got;
    while (!rc && !(rc = ds_shard_next(sh, buf, 1u << 20, &got)) && got) {
        for (size_t i = 0; !rc && i < got; i++) {
            if (buf[i] == eos) {
                rc = emit_doc(d);
                continue;
            }
            if (!(rc = ds_ids_reserve(&d->doc, 1))) d->doc.v[d->doc.n++] = buf[i];
        }
    }
    if (!rc && d->doc.n) rc = emit_doc(d); /* a shard always ends with EOS; tolerate one that does not */
    free(buf);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ds_errmsg());
        if (!strstr(msg, name)) return ds_fail(rc, "%s: %s", msg, name);
    }
    return rc;
}
#endif

int ds_tokdoc_decode(const ds_tokenizer *t, const char *const *paths, int npaths, const char *out, int lines,
                     ds_corpus_stats *st) {
    memset(st, 0, sizeof *st);
    decoder d = {.t = t, .lines = lines, .st = st, .out_name = ds_is_stdio(out) ? "<stdout>" : out};
    ds_atomic a;
    DS_TRY(ds_atomic_open(&a, out));
    d.out = a.f;
    int rc = 0, n = npaths ? npaths : 1;
    uint64_t in_bytes = 0;
    for (int i = 0; !rc && i < n; i++) {
        const char *p = npaths ? paths[i] : "-";
        const char *name = ds_is_stdio(p) ? "<stdin>" : p;
        FILE *f = ds_is_stdio(p) ? stdin : fopen(p, "rb");
        if (!f) {
            rc = ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), p);
            break;
        }
        int c = getc(f);
        if (c != EOF) {
            in_bytes++;
            ungetc(c, f);
            /* id lines start with a digit or white space; anything else must be a shard */
            if ((c >= '0' && c <= '9') || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                static const ds_kind takes[] = {DS_KIND_TEXT, DS_KIND_EMPTY, DS_KIND_UNKNOWN};
                rc = decode_id_lines(&d, f, name);
                if (rc && f != stdin) rc = ds_kind_explain(rc, p, "token ids", "token shards or id lines", takes);
            } else {
#if HAVE_SHARDS
                ds_shard *sh = NULL;
                char *mem = NULL;
                size_t len = 0;
                if (f == stdin) { /* a pipe cannot be peeked and reopened: take it whole */
                    rc = ds_read_stream(f, name, &mem, &len, 0);
                    if (!rc) rc = ds_shard_open_memory(&sh, mem, len, name);
                } else {
                    rc = ds_shard_open(&sh, p);
                }
                if (!rc) rc = decode_shard(&d, sh, name);
                if (sh) ds_shard_close(sh);
                free(mem);
#else
                rc = ds_fail(DS_ERR, "not lines of token ids (and this build cannot read shards): %s", name);
#endif
            }
        }
        if (f != stdin) fclose(f);
    }
    if (!rc && in_bytes == 0) rc = ds_fail(DS_ERR, "empty input: nothing to decode");
    if (!rc) rc = ds_atomic_commit(&a);
    else ds_atomic_abort(&a);
    ds_bytes_free(&d.text);
    ds_ids_free(&d.doc);
    return rc;
}
