/* shard.c — see shard.h; byte layout in docs/formats.md ("Token shards").
 *
 *   header  64 B   "DSTOKENS" version flags token_bytes vocab eos frame_tokens n_tokens n_docs n_frames crc
 *   frames         per frame: record 16 B ("DSFR" n_tokens csize crc32c(tokens)) + one zstd frame
 *   index          16 B ("DSIX" 0 n_frames) + 32 B per frame (offset first_token n_tokens csize n_eos crc)
 *   trailer 64 B   "DSTOKEND" n_tokens n_docs n_frames index_offset crc32c(index) ... crc
 */
#include "io/shard.h"
#include "io/kind.h"

#include "core/err.h"
#include "core/file.h"
#include "io/crc32c.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shard.c assumes a little-endian host"
#endif

enum { HEADER_BYTES = 64, TRAILER_BYTES = 64, RECORD_BYTES = 16, INDEX_HEAD_BYTES = 16, ENTRY_BYTES = 32 };
enum { FLAG_STREAMED = 1 };
static const char HEADER_MAGIC[8] = {'D', 'S', 'T', 'O', 'K', 'E', 'N', 'S'};
static const char TRAILER_MAGIC[8] = {'D', 'S', 'T', 'O', 'K', 'E', 'N', 'D'};
static const char FRAME_MAGIC[4] = {'D', 'S', 'F', 'R'};
static const char INDEX_MAGIC[4] = {'D', 'S', 'I', 'X'};

typedef struct {
    uint64_t offset, first_token;
    uint32_t n_tokens, csize, n_eos, crc;
} entry;

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

typedef struct {
    uint32_t version, flags, token_bytes, vocab, eos, frame_tokens;
    uint64_t n_tokens, n_docs, n_frames;
} header_t;

static void header_encode(unsigned char *b, const header_t *h) {
    memset(b, 0, HEADER_BYTES);
    memcpy(b, HEADER_MAGIC, 8);
    put32(b + 8, h->version);
    put32(b + 12, h->flags);
    put32(b + 16, h->token_bytes);
    put32(b + 20, h->vocab);
    put32(b + 24, h->eos);
    put32(b + 28, h->frame_tokens);
    put64(b + 32, h->n_tokens);
    put64(b + 40, h->n_docs);
    put64(b + 48, h->n_frames);
    put32(b + 60, ds_crc32c(0, b, 60));
}

static void entry_encode(unsigned char *b, const entry *e) {
    put64(b, e->offset);
    put64(b + 8, e->first_token);
    put32(b + 16, e->n_tokens);
    put32(b + 20, e->csize);
    put32(b + 24, e->n_eos);
    put32(b + 28, e->crc);
}

static void entry_decode(const unsigned char *b, entry *e) {
    e->offset = get64(b);
    e->first_token = get64(b + 8);
    e->n_tokens = get32(b + 16);
    e->csize = get32(b + 20);
    e->n_eos = get32(b + 24);
    e->crc = get32(b + 28);
}

static int width_for(uint32_t vocab) { return vocab <= 65536u ? 2 : 4; }

/* ---- writer ---------------------------------------------------------------------------------- */

struct ds_shard_writer {
    ds_atomic a;
    header_t h;
    int level, failed;
    unsigned char *buf; /* tokens of the frame being filled, token_bytes each */
    uint32_t buf_n, buf_eos;
    void *cbuf;
    size_t ccap;
    ZSTD_CCtx *cctx;
    uint64_t offset; /* bytes written */
    entry *idx;
    size_t n_idx, cap_idx;
};

static int wwrite(ds_shard_writer *w, const void *p, size_t n) {
    int rc = ds_write_all(w->a.f, p, n, w->a.path);
    w->offset += n;
    return rc;
}

int ds_shard_writer_open(ds_shard_writer **out, const char *path, const ds_shard_meta *meta) {
    *out = NULL;
    const char *where = ds_is_stdio(path) ? "<stdout>" : path;
    if (meta->vocab_size == 0) return ds_fail(DS_ERR, "shard: vocab_size must be positive: %s", where);
    if (meta->eos_id >= meta->vocab_size)
        return ds_fail(DS_ERR, "shard: eos_id %u is not below vocab_size %u: %s", meta->eos_id, meta->vocab_size, where);
    uint32_t ft = meta->frame_tokens ? meta->frame_tokens : DS_SHARD_FRAME_TOKENS;
    if (ft > DS_SHARD_MAX_FRAME_TOKENS)
        return ds_fail(DS_ERR, "shard: frame_tokens %u above %u: %s", ft, DS_SHARD_MAX_FRAME_TOKENS, where);
    ds_shard_writer *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(DS_ERR, "out of memory");
    w->h = (header_t){.version = DS_SHARD_VERSION, .token_bytes = (uint32_t)width_for(meta->vocab_size),
                      .vocab = meta->vocab_size, .eos = meta->eos_id, .frame_tokens = ft};
    w->level = meta->level ? meta->level : 3;
    w->ccap = ZSTD_compressBound((size_t)ft * w->h.token_bytes);
    w->buf = malloc((size_t)ft * w->h.token_bytes);
    w->cbuf = malloc(w->ccap);
    w->cctx = ZSTD_createCCtx();
    if (!w->buf || !w->cbuf || !w->cctx) {
        ds_shard_writer_abort(w);
        return ds_fail(DS_ERR, "out of memory");
    }
    int rc = ds_atomic_open(&w->a, path);
    if (rc) {
        ZSTD_freeCCtx(w->cctx);
        free(w->buf);
        free(w->cbuf);
        free(w);
        return rc;
    }
    /* A pipe cannot be rewound: its header says "streamed" and the counts come in the trailer. A file
     * gets the same placeholder, rewritten with the counts at close. */
    if (w->a.is_stdout) w->h.flags = FLAG_STREAMED;
    unsigned char hb[HEADER_BYTES];
    header_encode(hb, &w->h);
    if ((rc = wwrite(w, hb, sizeof hb))) {
        ds_shard_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

static int flush_frame(ds_shard_writer *w) {
    if (w->buf_n == 0) return 0;
    size_t raw = (size_t)w->buf_n * w->h.token_bytes;
    size_t c = ZSTD_compressCCtx(w->cctx, w->cbuf, w->ccap, w->buf, raw, w->level);
    if (ZSTD_isError(c)) return ds_fail(DS_ERR, "shard: zstd: %s: %s", ZSTD_getErrorName(c), w->a.path);
    if (w->n_idx == w->cap_idx) {
        size_t cap = w->cap_idx ? 2 * w->cap_idx : 64;
        entry *ni = realloc(w->idx, cap * sizeof *ni);
        if (!ni) return ds_fail(DS_ERR, "out of memory");
        w->idx = ni;
        w->cap_idx = cap;
    }
    entry e = {.offset = w->offset, .first_token = w->h.n_tokens - w->buf_n, .n_tokens = w->buf_n,
               .csize = (uint32_t)c, .n_eos = w->buf_eos, .crc = ds_crc32c(0, w->buf, raw)};
    unsigned char rec[RECORD_BYTES];
    memcpy(rec, FRAME_MAGIC, 4);
    put32(rec + 4, e.n_tokens);
    put32(rec + 8, e.csize);
    put32(rec + 12, e.crc);
    DS_TRY(wwrite(w, rec, sizeof rec));
    DS_TRY(wwrite(w, w->cbuf, c));
    w->idx[w->n_idx++] = e;
    w->buf_n = w->buf_eos = 0;
    return 0;
}

static int push_token(ds_shard_writer *w, uint32_t id) {
    if (w->h.token_bytes == 2) {
        uint16_t v = (uint16_t)id;
        memcpy(w->buf + 2 * (size_t)w->buf_n, &v, 2);
    } else {
        memcpy(w->buf + 4 * (size_t)w->buf_n, &id, 4);
    }
    w->buf_n++;
    w->h.n_tokens++;
    if (id == w->h.eos) w->buf_eos++;
    return w->buf_n == w->h.frame_tokens ? flush_frame(w) : 0;
}

int ds_shard_writer_add_doc(ds_shard_writer *w, const uint32_t *ids, size_t n) {
    if (w->failed) return ds_fail(DS_ERR, "shard: writer used after an error: %s", w->a.path);
    for (size_t i = 0; i < n; i++) { /* check the whole document first: nothing of a bad one is written */
        if (ids[i] >= w->h.vocab)
            return ds_fail(DS_ERR, "shard: document %llu: token %u at position %zu is not below vocab_size %u: %s",
                           (unsigned long long)w->h.n_docs, ids[i], i, w->h.vocab, w->a.path);
        if (ids[i] == w->h.eos)
            return ds_fail(DS_ERR, "shard: document %llu: contains the EOS id %u at position %zu: %s",
                           (unsigned long long)w->h.n_docs, ids[i], i, w->a.path);
    }
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) rc = push_token(w, ids[i]);
    if (!rc) rc = push_token(w, w->h.eos);
    if (rc) w->failed = 1;
    else w->h.n_docs++;
    return rc;
}

uint64_t ds_shard_writer_tokens(const ds_shard_writer *w) { return w->h.n_tokens; }
uint64_t ds_shard_writer_docs(const ds_shard_writer *w) { return w->h.n_docs; }

static void writer_free(ds_shard_writer *w) {
    ZSTD_freeCCtx(w->cctx);
    free(w->buf);
    free(w->cbuf);
    free(w->idx);
    free(w);
}

int ds_shard_writer_close(ds_shard_writer *w) {
    int rc = w->failed ? ds_fail(DS_ERR, "shard: writer used after an error: %s", w->a.path) : flush_frame(w);
    w->h.n_frames = w->n_idx;
    uint64_t index_offset = w->offset;
    size_t ib = INDEX_HEAD_BYTES + ENTRY_BYTES * w->n_idx;
    unsigned char *index = malloc(ib);
    if (!index) rc = ds_fail(DS_ERR, "out of memory");
    if (!rc && index) {
        memset(index, 0, INDEX_HEAD_BYTES);
        memcpy(index, INDEX_MAGIC, 4);
        put64(index + 8, w->n_idx);
        for (size_t i = 0; i < w->n_idx; i++) entry_encode(index + INDEX_HEAD_BYTES + ENTRY_BYTES * i, &w->idx[i]);
        rc = wwrite(w, index, ib);
    }
    if (!rc) {
        unsigned char t[TRAILER_BYTES] = {0};
        memcpy(t, TRAILER_MAGIC, 8);
        put64(t + 8, w->h.n_tokens);
        put64(t + 16, w->h.n_docs);
        put64(t + 24, w->h.n_frames);
        put64(t + 32, index_offset);
        put32(t + 40, ds_crc32c(0, index, ib));
        put32(t + 60, ds_crc32c(0, t, 60));
        rc = wwrite(w, t, sizeof t);
    }
    free(index);
    if (!rc && !w->a.is_stdout) { /* fill in the header */
        unsigned char hb[HEADER_BYTES];
        header_encode(hb, &w->h);
        if (fflush(w->a.f) || pwrite(fileno(w->a.f), hb, sizeof hb, 0) != (ssize_t)sizeof hb)
            rc = ds_fail(DS_ERR, "write failed: %s: %s", strerror(errno), w->a.path);
    }
    if (rc) {
        ds_shard_writer_abort(w);
        return rc;
    }
    rc = ds_atomic_commit(&w->a);
    writer_free(w);
    return rc;
}

void ds_shard_writer_abort(ds_shard_writer *w) {
    if (!w) return;
    if (w->a.f) ds_atomic_abort(&w->a);
    writer_free(w);
}

/* ---- reader ---------------------------------------------------------------------------------- */

struct ds_shard {
    ds_shard_info_t info;
    header_t h;
    char where[4096];
    /* random access: the whole image */
    const unsigned char *base;
    size_t len;
    void *mapping;
    void *owned;
    entry *idx;
    /* decoded frame cache (random access) / the frame being served (pipe) */
    int64_t cached;
    unsigned char *frame;
    ZSTD_DCtx *dctx;
    uint64_t pos; /* next token for ds_shard_next */
    /* pipe */
    FILE *f;
    int is_pipe, pipe_done, pipe_last_short;
    uint64_t pipe_offset;
    uint32_t served, frame_n; /* tokens of the current pipe frame served / decoded */
    unsigned char *cbuf;
    size_t ccap;
    entry *seen;
    size_t n_seen, cap_seen;
    uint64_t seen_tokens, seen_eos;
};

static int check_header(const unsigned char *b, header_t *h, const char *where) {
    if (memcmp(b, HEADER_MAGIC, 8)) return ds_fail(DS_ERR, "shard header: bad magic: %s", where);
    h->version = get32(b + 8);
    if (h->version != DS_SHARD_VERSION)
        return ds_fail(DS_ERR, "shard header: unsupported version %u (this reader knows %d): %s", h->version,
                       DS_SHARD_VERSION, where);
    if (get32(b + 60) != ds_crc32c(0, b, 60)) return ds_fail(DS_ERR, "shard header: checksum mismatch: %s", where);
    h->flags = get32(b + 12);
    h->token_bytes = get32(b + 16);
    h->vocab = get32(b + 20);
    h->eos = get32(b + 24);
    h->frame_tokens = get32(b + 28);
    h->n_tokens = get64(b + 32);
    h->n_docs = get64(b + 40);
    h->n_frames = get64(b + 48);
    if (h->flags & ~(uint32_t)FLAG_STREAMED) return ds_fail(DS_ERR, "shard header: unknown flags 0x%x: %s", h->flags, where);
    if (h->token_bytes != 2 && h->token_bytes != 4)
        return ds_fail(DS_ERR, "shard header: token width %u (must be 2 or 4): %s", h->token_bytes, where);
    if (h->vocab == 0) return ds_fail(DS_ERR, "shard header: vocab_size must be positive: %s", where);
    if (h->token_bytes == 2 && h->vocab > 65536)
        return ds_fail(DS_ERR, "shard header: vocab_size %u does not fit 2-byte tokens: %s", h->vocab, where);
    if (h->eos >= h->vocab)
        return ds_fail(DS_ERR, "shard header: eos_id %u is not below vocab_size %u: %s", h->eos, h->vocab, where);
    if (h->frame_tokens == 0 || h->frame_tokens > DS_SHARD_MAX_FRAME_TOKENS)
        return ds_fail(DS_ERR, "shard header: frame_tokens %u out of range (1 to %u): %s", h->frame_tokens,
                       DS_SHARD_MAX_FRAME_TOKENS, where);
    return 0;
}

static void set_info(ds_shard *s) {
    s->info = (ds_shard_info_t){.vocab_size = s->h.vocab, .eos_id = s->h.eos, .token_bytes = (int)s->h.token_bytes,
                                .frame_tokens = s->h.frame_tokens};
}

static size_t frame_bound(const header_t *h) { return ZSTD_compressBound((size_t)h->frame_tokens * h->token_bytes); }

/* Check a trailer and the index block against each other; fills n_tokens/n_docs/n_frames/index_offset. */
static int check_trailer(const unsigned char *t, const unsigned char *index, size_t index_len, uint64_t *n_tokens,
                         uint64_t *n_docs, uint64_t *n_frames, uint64_t *index_offset, const char *where) {
    if (memcmp(t, TRAILER_MAGIC, 8)) return ds_fail(DS_ERR, "shard trailer: bad magic (truncated file?): %s", where);
    if (get32(t + 60) != ds_crc32c(0, t, 60)) return ds_fail(DS_ERR, "shard trailer: checksum mismatch: %s", where);
    *n_tokens = get64(t + 8);
    *n_docs = get64(t + 16);
    *n_frames = get64(t + 24);
    *index_offset = get64(t + 32);
    if (index && get32(t + 40) != ds_crc32c(0, index, index_len))
        return ds_fail(DS_ERR, "shard index: checksum mismatch: %s", where);
    return 0;
}

/* The frame entries must chain: contiguous records from byte 64, first_token running, every frame
 * full but the last, counts adding up to the trailer's. */
static int check_entries(const entry *e, uint64_t n, const header_t *h, uint64_t end_offset, uint64_t n_tokens,
                         uint64_t n_docs, const char *where) {
    uint64_t off = HEADER_BYTES, first = 0, docs = 0;
    size_t bound = frame_bound(h);
    for (uint64_t i = 0; i < n; i++) {
        if (e[i].offset != off || e[i].first_token != first)
            return ds_fail(DS_ERR, "shard index: frame %llu: offset %llu / first token %llu (expected %llu / %llu): %s",
                           (unsigned long long)i, (unsigned long long)e[i].offset, (unsigned long long)e[i].first_token,
                           (unsigned long long)off, (unsigned long long)first, where);
        if (e[i].n_tokens == 0 || e[i].n_tokens > h->frame_tokens || (i + 1 < n && e[i].n_tokens != h->frame_tokens))
            return ds_fail(DS_ERR, "shard index: frame %llu: %u tokens (frames hold %u, only the last may hold fewer): %s",
                           (unsigned long long)i, e[i].n_tokens, h->frame_tokens, where);
        if (e[i].csize == 0 || e[i].csize > bound)
            return ds_fail(DS_ERR, "shard index: frame %llu: compressed size %u out of range: %s", (unsigned long long)i,
                           e[i].csize, where);
        if (e[i].n_eos > e[i].n_tokens)
            return ds_fail(DS_ERR, "shard index: frame %llu: %u EOS in %u tokens: %s", (unsigned long long)i, e[i].n_eos,
                           e[i].n_tokens, where);
        off += RECORD_BYTES + (uint64_t)e[i].csize;
        first += e[i].n_tokens;
        docs += e[i].n_eos;
    }
    if (end_offset != UINT64_MAX && off != end_offset)
        return ds_fail(DS_ERR, "shard index: frames end at byte %llu but the index starts at %llu: %s",
                       (unsigned long long)off, (unsigned long long)end_offset, where);
    if (first != n_tokens || docs != n_docs)
        return ds_fail(DS_ERR, "shard index: frames hold %llu tokens and %llu documents, the trailer says %llu and %llu: %s",
                       (unsigned long long)first, (unsigned long long)docs, (unsigned long long)n_tokens,
                       (unsigned long long)n_docs, where);
    return 0;
}

/* Decode and check one frame: its record against the index entry, zstd, checksum, ids, and the EOS
 * count against the index (or, with eos_out, report it: a pipe has no index yet). dst holds
 * e->n_tokens * token_bytes bytes. dctx may be NULL (then a temporary context is used). */
static int decode_frame(const header_t *h, const entry *e, uint64_t k, const unsigned char *rec,
                        const unsigned char *payload, unsigned char *dst, ZSTD_DCtx *dctx, uint32_t *eos_out,
                        const char *where) {
    if (rec) {
        if (memcmp(rec, FRAME_MAGIC, 4) || get32(rec + 4) != e->n_tokens || get32(rec + 8) != e->csize ||
            get32(rec + 12) != e->crc)
            return ds_fail(DS_ERR, "shard: frame %llu: record does not match the index: %s", (unsigned long long)k, where);
    }
    size_t raw = (size_t)e->n_tokens * h->token_bytes;
    size_t got = dctx ? ZSTD_decompressDCtx(dctx, dst, raw, payload, e->csize) : ZSTD_decompress(dst, raw, payload, e->csize);
    if (ZSTD_isError(got))
        return ds_fail(DS_ERR, "shard: frame %llu: zstd: %s: %s", (unsigned long long)k, ZSTD_getErrorName(got), where);
    if (got != raw)
        return ds_fail(DS_ERR, "shard: frame %llu: decompressed to %zu bytes, expected %zu: %s", (unsigned long long)k, got,
                       raw, where);
    uint32_t crc = ds_crc32c(0, dst, raw);
    if (crc != e->crc)
        return ds_fail(DS_ERR, "shard: frame %llu: checksum mismatch (stored 0x%08x, computed 0x%08x): %s",
                       (unsigned long long)k, e->crc, crc, where);
    uint32_t eos = 0;
    for (uint32_t i = 0; i < e->n_tokens; i++) {
        uint32_t id;
        if (h->token_bytes == 2) {
            uint16_t v;
            memcpy(&v, dst + 2 * (size_t)i, 2);
            id = v;
        } else {
            memcpy(&id, dst + 4 * (size_t)i, 4);
        }
        if (id >= h->vocab)
            return ds_fail(DS_ERR, "shard: frame %llu: token %u at position %llu is not below vocab_size %u: %s",
                           (unsigned long long)k, id, (unsigned long long)(e->first_token + i), h->vocab, where);
        eos += id == h->eos;
    }
    if (eos_out) *eos_out = eos;
    else if (eos != e->n_eos)
        return ds_fail(DS_ERR, "shard: frame %llu: %u EOS tokens, the index says %u: %s", (unsigned long long)k, eos,
                       e->n_eos, where);
    return 0;
}

static int parse_image(ds_shard *s) {
    const char *where = s->where;
    if (s->len == 0) return ds_fail(DS_ERR, "shard: empty input: %s", where);
    if (s->len < HEADER_BYTES + INDEX_HEAD_BYTES + TRAILER_BYTES)
        return ds_fail(DS_ERR, "shard: truncated: %zu bytes, header, index and trailer alone take %d: %s", s->len,
                       HEADER_BYTES + INDEX_HEAD_BYTES + TRAILER_BYTES, where);
    DS_TRY(check_header(s->base, &s->h, where));
    const unsigned char *t = s->base + s->len - TRAILER_BYTES;
    uint64_t n_tokens = 0, n_docs = 0, n_frames = 0, index_offset = 0;
    DS_TRY(check_trailer(t, NULL, 0, &n_tokens, &n_docs, &n_frames, &index_offset, where));
    uint64_t index_room = s->len - TRAILER_BYTES;
    if (index_offset < HEADER_BYTES || index_offset > index_room || index_room - index_offset < INDEX_HEAD_BYTES ||
        (index_room - index_offset - INDEX_HEAD_BYTES) / ENTRY_BYTES != n_frames ||
        (index_room - index_offset - INDEX_HEAD_BYTES) % ENTRY_BYTES)
        return ds_fail(DS_ERR, "shard trailer: index offset %llu and %llu frames do not fit the file size %zu: %s",
                       (unsigned long long)index_offset, (unsigned long long)n_frames, s->len, where);
    const unsigned char *index = s->base + index_offset;
    size_t index_len = (size_t)(index_room - index_offset);
    DS_TRY(check_trailer(t, index, index_len, &n_tokens, &n_docs, &n_frames, &index_offset, where));
    if (memcmp(index, INDEX_MAGIC, 4) || get64(index + 8) != n_frames)
        return ds_fail(DS_ERR, "shard index: bad magic or frame count: %s", where);
    if (!(s->h.flags & FLAG_STREAMED) &&
        (s->h.n_tokens != n_tokens || s->h.n_docs != n_docs || s->h.n_frames != n_frames))
        return ds_fail(DS_ERR, "shard header: counts disagree with the trailer: %s", where);
    s->idx = malloc((n_frames ? n_frames : 1) * sizeof *s->idx);
    if (!s->idx) return ds_fail(DS_ERR, "out of memory");
    for (uint64_t i = 0; i < n_frames; i++) entry_decode(index + INDEX_HEAD_BYTES + ENTRY_BYTES * i, &s->idx[i]);
    s->h.n_tokens = n_tokens;
    s->h.n_docs = n_docs;
    s->h.n_frames = n_frames;
    DS_TRY(check_entries(s->idx, n_frames, &s->h, index_offset, n_tokens, n_docs, where));
    set_info(s);
    s->info.n_tokens = n_tokens;
    s->info.n_docs = n_docs;
    s->info.n_frames = n_frames;
    s->frame = malloc((size_t)s->h.frame_tokens * s->h.token_bytes);
    s->dctx = ZSTD_createDCtx();
    if (!s->frame || !s->dctx) return ds_fail(DS_ERR, "out of memory");
    return 0;
}

static ds_shard *shard_new(const char *where) {
    ds_shard *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    snprintf(s->where, sizeof s->where, "%s", where);
    s->cached = -1;
    return s;
}

int ds_shard_open_memory(ds_shard **out, const void *buf, size_t len, const char *where) {
    *out = NULL;
    ds_shard *s = shard_new(where);
    if (!s) return ds_fail(DS_ERR, "out of memory");
    s->base = buf;
    s->len = len;
    int rc = parse_image(s);
    if (rc) {
        ds_shard_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int open_pipe(ds_shard *s, FILE *f) {
    s->f = f;
    s->is_pipe = 1;
    unsigned char hb[HEADER_BYTES];
    size_t got = fread(hb, 1, sizeof hb, f);
    if (got == 0 && !ferror(f)) return ds_fail(DS_ERR, "shard: empty input: %s", s->where);
    if (got < sizeof hb)
        return ferror(f) ? ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), s->where)
                         : ds_fail(DS_ERR, "shard: truncated: %zu bytes, the header alone takes %d: %s", got, HEADER_BYTES,
                                   s->where);
    DS_TRY(check_header(hb, &s->h, s->where));
    set_info(s);
    s->info.streamed = 1;
    s->pipe_offset = HEADER_BYTES;
    s->ccap = frame_bound(&s->h);
    s->cbuf = malloc(s->ccap);
    s->frame = malloc((size_t)s->h.frame_tokens * s->h.token_bytes);
    s->dctx = ZSTD_createDCtx();
    if (!s->cbuf || !s->frame || !s->dctx) return ds_fail(DS_ERR, "out of memory");
    return 0;
}

int ds_shard_open(ds_shard **out, const char *path) {
    *out = NULL;
    const char *where = ds_is_stdio(path) ? "<stdin>" : path;
    ds_shard *s = shard_new(where);
    if (!s) return ds_fail(DS_ERR, "out of memory");
    int rc = 0;
    if (ds_is_stdio(path)) {
        rc = open_pipe(s, stdin);
    } else {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0) rc = ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), path);
        else if (fstat(fd, &st)) rc = ds_fail(DS_ERR, "cannot stat: %s: %s", strerror(errno), path);
        else if (S_ISDIR(st.st_mode)) rc = ds_fail(DS_ERR, "is a directory: %s", path);
        if (!rc && !S_ISREG(st.st_mode)) { /* a FIFO: sequential */
            FILE *f = fdopen(fd, "rb");
            if (!f) rc = ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), path);
            else {
                fd = -1;
                s->owned = f; /* closed with the handle */
                rc = open_pipe(s, f);
            }
        } else if (!rc) {
            s->len = (size_t)st.st_size;
            if (s->len) {
                void *m = mmap(NULL, s->len, PROT_READ, MAP_PRIVATE, fd, 0);
                if (m == MAP_FAILED) rc = ds_fail(DS_ERR, "cannot map: %s: %s", strerror(errno), path);
                else s->mapping = m, s->base = m;
            }
            if (!rc) rc = parse_image(s);
        }
        if (fd >= 0) close(fd);
    }
    if (rc) {
        ds_shard_close(s);
        static const ds_kind takes[] = {DS_KIND_SHARD, DS_KIND_EMPTY, DS_KIND_UNKNOWN};
        return ds_kind_explain(rc, path, "token shard", "a token shard", takes);
    }
    *out = s;
    return 0;
}

const ds_shard_info_t *ds_shard_info(const ds_shard *s) { return &s->info; }

/* Put tokens [a, b) of a decoded frame (raw bytes) into out as uint32. */
static void widen(const header_t *h, const unsigned char *raw, uint32_t a, uint32_t b, uint32_t *out) {
    if (h->token_bytes == 4) {
        memcpy(out, raw + 4 * (size_t)a, 4 * (size_t)(b - a));
        return;
    }
    for (uint32_t i = a; i < b; i++) {
        uint16_t v;
        memcpy(&v, raw + 2 * (size_t)i, 2);
        out[i - a] = v;
    }
}

static int decode_cached(ds_shard *s, uint64_t k) {
    if (s->cached == (int64_t)k) return 0;
    s->cached = -1;
    const entry *e = &s->idx[k];
    DS_TRY(decode_frame(&s->h, e, k, s->base + e->offset, s->base + e->offset + RECORD_BYTES, s->frame, s->dctx, NULL, s->where));
    s->cached = (int64_t)k;
    return 0;
}

int ds_shard_read(ds_shard *s, uint64_t start, size_t n, uint32_t *out) {
    if (s->is_pipe) return ds_fail(DS_ERR, "shard: random access needs a file, not a pipe: %s", s->where);
    if (start > s->h.n_tokens || n > s->h.n_tokens - start)
        return ds_fail(DS_ERR, "shard: tokens [%llu, %llu) past the end (%llu tokens): %s", (unsigned long long)start,
                       (unsigned long long)(start + n), (unsigned long long)s->h.n_tokens, s->where);
    if (n == 0) return 0;
    uint64_t ft = s->h.frame_tokens, f0 = start / ft, f1 = (start + n - 1) / ft;
    if (f0 == f1) { /* one frame: through the cache */
        DS_TRY(decode_cached(s, f0));
        widen(&s->h, s->frame, (uint32_t)(start - f0 * ft), (uint32_t)(start - f0 * ft + n), out);
        return 0;
    }
    /* Several frames: decode in parallel, each into the part of out it covers. The first error in
     * frame order is reported, so the message does not depend on the thread count. A last frame
     * that is only partly read goes through the cache afterwards: the next sequential read starts there. */
    const entry *last = &s->idx[f1];
    int last_partial = start + n < last->first_token + last->n_tokens;
    int64_t nf = (int64_t)(f1 - f0 + 1) - last_partial, bad = -1;
    char first_err[1024] = "";
#pragma omp parallel if (nf > 1)
    {
        unsigned char *tmp = NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < nf; j++) {
            uint64_t k = f0 + (uint64_t)j;
            const entry *e = &s->idx[k];
            uint64_t a = start > e->first_token ? start - e->first_token : 0;
            uint64_t b = start + n < e->first_token + e->n_tokens ? start + n - e->first_token : e->n_tokens;
            uint32_t *dst = out + (e->first_token + a - start);
            int rc;
            if ((int64_t)k == s->cached) {
                widen(&s->h, s->frame, (uint32_t)a, (uint32_t)b, dst);
                continue;
            }
            if (s->h.token_bytes == 4 && a == 0 && b == e->n_tokens) { /* whole frame straight into out */
                rc = decode_frame(&s->h, e, k, s->base + e->offset, s->base + e->offset + RECORD_BYTES,
                                  (unsigned char *)dst, NULL, NULL, s->where);
            } else {
                if (!tmp) tmp = malloc((size_t)s->h.frame_tokens * s->h.token_bytes);
                rc = tmp ? decode_frame(&s->h, e, k, s->base + e->offset, s->base + e->offset + RECORD_BYTES, tmp, NULL,
                                        NULL, s->where)
                         : ds_fail(DS_ERR, "out of memory");
                if (!rc) widen(&s->h, tmp, (uint32_t)a, (uint32_t)b, dst);
            }
            if (rc) {
#pragma omp critical(ds_shard_err)
                if (bad < 0 || j < bad) {
                    bad = j;
                    snprintf(first_err, sizeof first_err, "%s", ds_errmsg());
                }
            }
        }
        free(tmp);
    }
    if (bad >= 0) return ds_fail(DS_ERR, "%s", first_err);
    if (last_partial) {
        DS_TRY(decode_cached(s, f1));
        widen(&s->h, s->frame, 0, (uint32_t)(start + n - last->first_token), out + (last->first_token - start));
    }
    return 0;
}

/* ---- sequential reading ---------------------------------------------------------------------- */

static int pipe_read(ds_shard *s, void *buf, size_t n, const char *what) {
    size_t got = fread(buf, 1, n, s->f);
    s->pipe_offset += got;
    if (got == n) return 0;
    if (ferror(s->f)) return ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), s->where);
    return ds_fail(DS_ERR, "shard: truncated: %s at byte %llu: %s", what, (unsigned long long)(s->pipe_offset - got), s->where);
}

/* The index and trailer at the end of a pipe, checked against the frames seen. */
static int pipe_finish(ds_shard *s, uint64_t index_offset) {
    unsigned char head[INDEX_HEAD_BYTES - 4];
    DS_TRY(pipe_read(s, head, sizeof head, "index"));
    uint64_t n = get64(head + 4);
    if (n != s->n_seen)
        return ds_fail(DS_ERR, "shard index: %llu frames listed, %zu in the stream: %s", (unsigned long long)n, s->n_seen,
                       s->where);
    size_t len = INDEX_HEAD_BYTES + ENTRY_BYTES * s->n_seen;
    unsigned char *index = malloc(len);
    if (!index) return ds_fail(DS_ERR, "out of memory");
    memcpy(index, INDEX_MAGIC, 4);
    memcpy(index + 4, head, sizeof head);
    int rc = s->n_seen ? pipe_read(s, index + INDEX_HEAD_BYTES, len - INDEX_HEAD_BYTES, "index") : 0;
    for (size_t i = 0; !rc && i < s->n_seen; i++) {
        entry e;
        entry_decode(index + INDEX_HEAD_BYTES + ENTRY_BYTES * i, &e);
        if (memcmp(&e, &s->seen[i], sizeof e))
            rc = ds_fail(DS_ERR, "shard index: frame %zu does not match the stream: %s", i, s->where);
    }
    unsigned char t[TRAILER_BYTES];
    if (!rc) rc = pipe_read(s, t, sizeof t, "trailer");
    uint64_t n_tokens = 0, n_docs = 0, n_frames = 0, off = 0;
    if (!rc) rc = check_trailer(t, index, len, &n_tokens, &n_docs, &n_frames, &off, s->where);
    free(index);
    DS_TRY(rc);
    if (off != index_offset || n_frames != s->n_seen || n_tokens != s->seen_tokens || n_docs != s->seen_eos)
        return ds_fail(DS_ERR, "shard trailer: counts disagree with the stream: %s", s->where);
    if (!(s->h.flags & FLAG_STREAMED) && (s->h.n_tokens != n_tokens || s->h.n_docs != n_docs || s->h.n_frames != n_frames))
        return ds_fail(DS_ERR, "shard header: counts disagree with the trailer: %s", s->where);
    s->info.n_tokens = n_tokens;
    s->info.n_docs = n_docs;
    s->info.n_frames = n_frames;
    s->pipe_done = 1;
    return 0;
}

/* Read the next record: a frame (decoded into s->frame) or the index (then finish). */
static int pipe_next_frame(ds_shard *s) {
    uint64_t at = s->pipe_offset;
    unsigned char rec[RECORD_BYTES];
    DS_TRY(pipe_read(s, rec, 4, "frame record"));
    if (!memcmp(rec, INDEX_MAGIC, 4)) return pipe_finish(s, at);
    if (memcmp(rec, FRAME_MAGIC, 4))
        return ds_fail(DS_ERR, "shard: bad frame record magic at byte %llu: %s", (unsigned long long)at, s->where);
    DS_TRY(pipe_read(s, rec + 4, RECORD_BYTES - 4, "frame record"));
    entry e = {.offset = at, .first_token = s->seen_tokens, .n_tokens = get32(rec + 4), .csize = get32(rec + 8),
               .crc = get32(rec + 12)};
    uint64_t k = s->n_seen;
    if (s->pipe_last_short || e.n_tokens == 0 || e.n_tokens > s->h.frame_tokens)
        return ds_fail(DS_ERR, "shard: frame %llu: %u tokens (frames hold %u, only the last may hold fewer): %s",
                       (unsigned long long)k, e.n_tokens, s->h.frame_tokens, s->where);
    if (e.csize == 0 || e.csize > s->ccap)
        return ds_fail(DS_ERR, "shard: frame %llu: compressed size %u out of range: %s", (unsigned long long)k, e.csize,
                       s->where);
    DS_TRY(pipe_read(s, s->cbuf, e.csize, "frame data"));
    uint32_t eos;
    DS_TRY(decode_frame(&s->h, &e, k, NULL, s->cbuf, s->frame, s->dctx, &eos, s->where));
    e.n_eos = eos;
    if (s->n_seen == s->cap_seen) {
        size_t cap = s->cap_seen ? 2 * s->cap_seen : 64;
        entry *ns = realloc(s->seen, cap * sizeof *ns);
        if (!ns) return ds_fail(DS_ERR, "out of memory");
        s->seen = ns;
        s->cap_seen = cap;
    }
    s->seen[s->n_seen++] = e;
    s->seen_tokens += e.n_tokens;
    s->seen_eos += eos;
    s->pipe_last_short = e.n_tokens < s->h.frame_tokens;
    s->frame_n = e.n_tokens;
    s->served = 0;
    return 0;
}

int ds_shard_next(ds_shard *s, uint32_t *out, size_t cap, size_t *got) {
    *got = 0;
    if (!s->is_pipe) {
        uint64_t left = s->h.n_tokens - s->pos;
        size_t n = cap < left ? cap : (size_t)left;
        /* stay within the current frame so the cache serves consecutive calls */
        uint64_t frame_end = (s->pos / s->h.frame_tokens + 1) * s->h.frame_tokens;
        if (n > frame_end - s->pos && cap < s->h.frame_tokens) n = (size_t)(frame_end - s->pos);
        DS_TRY(ds_shard_read(s, s->pos, n, out));
        s->pos += n;
        *got = n;
        return 0;
    }
    while (*got < cap) {
        if (s->served == s->frame_n) {
            if (s->pipe_done) break;
            DS_TRY(pipe_next_frame(s));
            continue;
        }
        uint32_t m = s->frame_n - s->served;
        if (m > cap - *got) m = (uint32_t)(cap - *got);
        widen(&s->h, s->frame, s->served, s->served + m, out + *got);
        s->served += m;
        *got += m;
        s->pos += m;
    }
    return 0;
}

void ds_shard_close(ds_shard *s) {
    if (!s) return;
    if (s->mapping) munmap(s->mapping, s->len);
    if (s->owned) fclose(s->owned);
    ZSTD_freeDCtx(s->dctx);
    free(s->idx);
    free(s->frame);
    free(s->cbuf);
    free(s->seen);
    free(s);
}
