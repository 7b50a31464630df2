/* tokdoc.c — documents out (id lines, shards) and back in (see tokdoc.h). */
#include "tok/tokdoc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/file.h"
#include "tok/internal.h"

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

int ds_tokdoc_out_open(ds_tokdoc_out *w, const ds_tokenizer *t, const char *ids_path, const char *shard_out, int64_t eos_id,
                       uint64_t shard_tokens, int force) {
    memset(w, 0, sizeof *w);
    w->t = t;
    w->eos_id = eos_id;
    w->shard_tokens = shard_tokens;
    w->force = force;
    if (ids_path) w->ids = stdout;
    if (shard_out) return ds_fail(DS_ERR, "-o: token shard output is not available yet (io/shard.h): %s", shard_out);
    return 0;
}

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
    return 0;
}

int ds_tokdoc_out_close(ds_tokdoc_out *w) {
    int rc = 0;
    if (w->ids && fflush(w->ids)) rc = ds_fail(DS_ERR, "write failed: %s: <stdout>", strerror(errno));
    free(w->line);
    w->line = NULL;
    return rc;
}

void ds_tokdoc_out_abort(ds_tokdoc_out *w) {
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
            rc = decode_id_lines(&d, f, name);
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
