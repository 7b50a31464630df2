#include "infer/kvstream.h"

#include "core/err.h"
#include "core/file.h"
#include "io/crc32c.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Arrays travel as the host holds them; the format is little-endian (docs/formats.md). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "kvstream: the prefill stream is little-endian; this host is not"
#endif

static const unsigned char MAGIC[8] = {'D', 'S', 'K', 'V', '\r', '\n', 0x1a, '\n'};
#define HEADER_BYTES 48
#define FIXED_BYTES 72 /* a record's fixed fields, before its arrays */
#define TAG_RECORD "PRMT"
#define TAG_END "DONE"
/* Limits of the reader (beyond them a header or record is refused as malformed). */
#define MAX_LAYERS 1024
#define MAX_WIDTH 65536
#define MAX_VOCAB (1 << 24)
#define MAX_PROMPT (1 << 26)
#define READ_CHUNK ((size_t)1 << 20)

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
static void put_f64(unsigned char *p, double x) {
    uint64_t v;
    memcpy(&v, &x, 8);
    put_u64(p, v);
}
static double get_f64(const unsigned char *p) {
    uint64_t v = get_u64(p);
    double x;
    memcpy(&x, &v, 8);
    return x;
}

int ds_kvs_fingerprint(const ds_config *cfg, uint64_t *out) {
    char *json = NULL;
    DS_TRY(ds_config_to_json(cfg, &json));
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)json; *p; p++) h = (h ^ *p) * 1099511628211ull;
    free(json);
    *out = h;
    return DS_OK;
}

/* ---- writing ------------------------------------------------------------------------------------- */

struct ds_kvs_writer {
    FILE *f;
    char where[256];
    int n_main, n_layers, width;
    int64_t records, bytes, tokens;
    float *scratch; /* rows copied from device memory */
    size_t scratch_cap;
};

static int wr(ds_kvs_writer *w, const void *p, size_t n, uint32_t *crc) {
    if (crc) *crc = ds_crc32c(*crc, p, n);
    w->bytes += (int64_t)n;
    return ds_write_all(w->f, p, n, w->where);
}

int ds_kvs_writer_open(ds_kvs_writer **out, FILE *f, const char *where, const ds_config *cfg, int mtp_layers) {
    *out = NULL;
    ds_kvs_writer *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(DS_ERR, "prefill stream: out of memory");
    w->f = f;
    snprintf(w->where, sizeof w->where, "%s", where);
    w->n_main = cfg->num_hidden_layers;
    w->n_layers = w->n_main + mtp_layers;
    w->width = cfg->kv_lora_rank + cfg->qk_rope_head_dim;
    uint64_t fp = 0;
    int rc = ds_kvs_fingerprint(cfg, &fp);
    unsigned char h[HEADER_BYTES] = {0};
    memcpy(h, MAGIC, 8);
    put_u32(h + 8, DS_KVS_VERSION);
    put_u32(h + 12, mtp_layers ? 1u : 0u);
    put_u64(h + 16, fp);
    put_u32(h + 24, (uint32_t)w->n_layers);
    put_u32(h + 28, (uint32_t)w->n_main);
    put_u32(h + 32, (uint32_t)w->width);
    put_u32(h + 36, (uint32_t)cfg->vocab_size);
    put_u32(h + 44, ds_crc32c(0, h, 44));
    if (!rc) rc = wr(w, h, sizeof h, NULL);
    if (rc) {
        free(w);
        return rc;
    }
    *out = w;
    return DS_OK;
}

int ds_kvs_on_prefilled(void *ctx, ds_infer *e, const ds_gen_seq *s, const ds_gen_seq_opts *so, const ds_gen_handoff *h) {
    ds_kvs_writer *w = ctx;
    const ds_kvcache *c = ds_infer_cache(e);
    if (c->n_layers < w->n_layers)
        return ds_fail(DS_ERR, "prefill stream: the engine holds %d cache layers, the stream %d", c->n_layers, w->n_layers);
    const int L = s->prompt_len, qn = h->has_draft ? h->q->n : 0;
    const size_t row_floats = (size_t)L * (size_t)w->width;
    const uint64_t len = FIXED_BYTES + 4ull * (uint64_t)L + 12ull * (uint64_t)qn + 4ull * (uint64_t)w->n_layers * row_floats;
    unsigned char head[12], fx[FIXED_BYTES];
    memcpy(head, TAG_RECORD, 4);
    put_u64(head + 4, len);
    put_u64(fx, s->id);
    put_u64(fx + 8, so->stream);
    put_f64(fx + 16, so->sampling.temperature);
    put_u32(fx + 24, (uint32_t)so->sampling.top_k);
    put_f64(fx + 28, so->sampling.top_p);
    put_u64(fx + 36, so->sampling.seed);
    put_u32(fx + 44, (uint32_t)L);
    put_u32(fx + 48, (uint32_t)h->truncated);
    put_u32(fx + 52, (uint32_t)h->token);
    float lp = h->logprob;
    uint32_t lpu;
    memcpy(&lpu, &lp, 4);
    put_u32(fx + 56, lpu);
    put_u32(fx + 60, (uint32_t)h->has_draft);
    put_u32(fx + 64, (uint32_t)(h->has_draft ? h->draft : 0));
    put_u32(fx + 68, (uint32_t)qn);
    uint32_t crc = 0;
    DS_TRY(wr(w, head, sizeof head, NULL));
    DS_TRY(wr(w, fx, sizeof fx, &crc));
    for (int i = 0; i < qn; i++) DS_TRY(wr(w, &h->q->p[h->q->ids[i]], 8, &crc));
    if (qn) DS_TRY(wr(w, h->q->ids, 4 * (size_t)qn, &crc));
    DS_TRY(wr(w, s->prompt, 4 * (size_t)L, &crc));
    for (int l = 0; l < w->n_layers; l++) {
        const float *rows = ds_kvcache_row(c, l, h->slot, 0);
        if (c->ops) { /* device memory: through a host copy */
            if (row_floats > w->scratch_cap) {
                float *p = realloc(w->scratch, row_floats * sizeof(float));
                if (!p) return ds_fail(DS_ERR, "prefill stream: out of memory for %d cache rows", L);
                w->scratch = p;
                w->scratch_cap = row_floats;
            }
            c->ops->copy(w->scratch, rows, row_floats * sizeof(float), DS_COPY_D2H);
            c->ops->sync();
            rows = w->scratch;
        }
        DS_TRY(wr(w, rows, row_floats * sizeof(float), &crc));
    }
    unsigned char tail[4];
    put_u32(tail, crc);
    DS_TRY(wr(w, tail, 4, NULL));
    if (fflush(w->f)) return ds_fail(DS_ERR, "write failed: %s", w->where); /* the decoder may be waiting */
    w->records++;
    w->tokens += L;
    return DS_OK;
}

void ds_kvs_writer_counts(const ds_kvs_writer *w, int64_t *records, int64_t *bytes, int64_t *tokens) {
    *records = w->records;
    *bytes = w->bytes;
    *tokens = w->tokens;
}

int ds_kvs_writer_close(ds_kvs_writer *w, int ok) {
    if (!w) return DS_OK;
    int rc = DS_OK;
    if (ok) {
        unsigned char t[16];
        memcpy(t, TAG_END, 4);
        put_u64(t + 4, (uint64_t)w->records);
        put_u32(t + 12, ds_crc32c(0, t, 12));
        rc = wr(w, t, sizeof t, NULL);
        if (!rc && fflush(w->f)) rc = ds_fail(DS_ERR, "write failed: %s", w->where);
    }
    free(w->scratch);
    free(w);
    return rc;
}

/* ---- reading ------------------------------------------------------------------------------------- */

struct ds_kvs_reader {
    FILE *f;
    char where[256];
    int n_main, n_layers, width, vocab, done;
    int64_t records;
    unsigned char *buf; /* the current record's payload */
    size_t cap;
    ds_kvs_record rec;
    int have; /* rec holds a record not yet restored */
};

static int bad(const ds_kvs_reader *r, const char *what) {
    return ds_fail(DS_ERR, "prefill stream: %s: %s", what, r->where);
}

/* Read exactly n bytes; *short_read = 1 (and DS_OK) when the stream ends first. */
static int rd(ds_kvs_reader *r, void *p, size_t n, int *short_read) {
    size_t got = fread(p, 1, n, r->f);
    *short_read = 0;
    if (got == n) return DS_OK;
    if (ferror(r->f)) return ds_fail(DS_ERR, "read failed: %s", r->where);
    *short_read = 1;
    return DS_OK;
}

int ds_kvs_reader_open(ds_kvs_reader **out, FILE *f, const char *where, const ds_config *cfg) {
    *out = NULL;
    ds_kvs_reader *r = calloc(1, sizeof *r);
    if (!r) return ds_fail(DS_ERR, "prefill stream: out of memory");
    r->f = f;
    snprintf(r->where, sizeof r->where, "%s", where);
    unsigned char h[HEADER_BYTES];
    int sh, rc = rd(r, h, sizeof h, &sh);
    char msg[160];
    if (!rc && sh) rc = bad(r, "truncated: no complete header (empty input?)");
    if (!rc && memcmp(h, MAGIC, 8)) rc = bad(r, "not a prefill stream (bad magic)");
    if (!rc && get_u32(h + 8) != DS_KVS_VERSION) {
        snprintf(msg, sizeof msg, "version %u, this build reads version %d", get_u32(h + 8), DS_KVS_VERSION);
        rc = bad(r, msg);
    }
    if (!rc && get_u32(h + 44) != ds_crc32c(0, h, 44)) rc = bad(r, "header checksum mismatch (corrupted)");
    if (!rc) {
        const uint32_t flags = get_u32(h + 12), nl = get_u32(h + 24), nm = get_u32(h + 28), wd = get_u32(h + 32),
                       voc = get_u32(h + 36);
        if (nl < 1 || nl > MAX_LAYERS || nm < 1 || nm > nl || nl - nm > 1 || flags != (nl > nm ? 1u : 0u) || wd < 1 ||
            wd > MAX_WIDTH || voc < 1 || voc > MAX_VOCAB || get_u32(h + 40))
            rc = bad(r, "malformed header");
        r->n_layers = (int)nl;
        r->n_main = (int)nm;
        r->width = (int)wd;
        r->vocab = (int)voc;
    }
    if (!rc && cfg) {
        uint64_t fp = 0;
        rc = ds_kvs_fingerprint(cfg, &fp);
        if (!rc && fp != get_u64(h + 16)) {
            snprintf(msg, sizeof msg, "from another model (config fingerprint %016llx, this model's %016llx)",
                     (unsigned long long)get_u64(h + 16), (unsigned long long)fp);
            rc = bad(r, msg);
        }
        /* a fingerprint collision would still be caught here */
        if (!rc && (r->n_main != cfg->num_hidden_layers || r->width != cfg->kv_lora_rank + cfg->qk_rope_head_dim ||
                    r->vocab != cfg->vocab_size))
            rc = bad(r, "from another model (layers, cache width or vocabulary differ)");
    }
    if (rc) {
        free(r);
        return rc;
    }
    *out = r;
    return DS_OK;
}

void ds_kvs_reader_free(ds_kvs_reader *r) {
    if (!r) return;
    free(r->buf);
    free(r);
}

int ds_kvs_reader_mtp_layers(const ds_kvs_reader *r) { return r->n_layers - r->n_main; }

/* The payload's bytes [from, to) into r->buf, growing it as data arrives (a header claiming more than
 * the stream holds costs no more memory than the stream). */
static int read_payload(ds_kvs_reader *r, size_t from, size_t to, int *short_read) {
    while (from < to) {
        size_t step = to - from < READ_CHUNK ? to - from : READ_CHUNK;
        if (from + step > r->cap) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < from + step) cap *= 2;
            unsigned char *p = realloc(r->buf, cap);
            if (!p) return ds_fail(DS_ERR, "prefill stream: out of memory for a record of %zu bytes: %s", to, r->where);
            r->buf = p;
            r->cap = cap;
        }
        DS_TRY(rd(r, r->buf + from, step, short_read));
        if (*short_read) return DS_OK;
        from += step;
    }
    return DS_OK;
}

static int check_record(ds_kvs_reader *r, ds_kvs_record *x) {
    char msg[160];
#define RBAD(...)                                                                                                  \
    do {                                                                                                           \
        int o_ = snprintf(msg, sizeof msg, "record %lld: ", (long long)r->records + 1);                           \
        snprintf(msg + o_, sizeof msg - (size_t)o_, __VA_ARGS__);                                                  \
        return bad(r, msg);                                                                                        \
    } while (0)
    const ds_sampling *sp = &x->sampling;
    if (!(sp->temperature >= 0 && sp->temperature <= 1e6) || sp->top_k < 0 || !(sp->top_p > 0 && sp->top_p <= 1))
        RBAD("sampling settings out of range");
    if (x->truncated < 0) RBAD("negative truncation");
    for (int i = 0; i < x->prompt_len; i++)
        if (x->prompt[i] < 0 || x->prompt[i] >= r->vocab) RBAD("prompt token %d outside the vocabulary of %d", i, r->vocab);
    if (x->token < 0 || x->token >= r->vocab) RBAD("first token outside the vocabulary of %d", r->vocab);
    if (isnan(x->logprob) || x->logprob > 0) RBAD("log-probability not a log-probability");
    if (x->has_draft != 0 && x->has_draft != 1) RBAD("malformed draft flag");
    if (x->has_draft && r->n_layers == r->n_main) RBAD("an MTP draft in a stream without MTP cache rows");
    if (!x->has_draft) return x->q_n ? bad(r, "malformed record: a draft distribution without a draft") : DS_OK;
    if (x->draft < 0 || x->draft >= r->vocab) RBAD("draft outside the vocabulary of %d", r->vocab);
    if (x->q_n < 1 || x->q_n > r->vocab) RBAD("draft distribution of %d tokens", x->q_n);
    int found = 0;
    for (int i = 0; i < x->q_n; i++) {
        if (x->q_ids[i] < 0 || x->q_ids[i] >= r->vocab || (i && x->q_ids[i] <= x->q_ids[i - 1]))
            RBAD("draft distribution ids not ascending within the vocabulary");
        if (!(x->q_p[i] >= 0 && x->q_p[i] <= 1)) RBAD("draft probability out of [0, 1]");
        found |= x->q_ids[i] == x->draft && x->q_p[i] > 0;
    }
    if (!found) RBAD("the draft has no probability in its distribution");
#undef RBAD
    return DS_OK;
}

int ds_kvs_read(ds_kvs_reader *r, const ds_kvs_record **rec, int *got) {
    *got = 0;
    *rec = NULL;
    if (r->done) return DS_OK;
    char msg[160];
    unsigned char tag[12];
    int sh;
    DS_TRY(rd(r, tag, 4, &sh));
    if (sh) {
        snprintf(msg, sizeof msg, "truncated: ends after %lld records without the trailer", (long long)r->records);
        return bad(r, msg);
    }
    if (!memcmp(tag, TAG_END, 4)) {
        unsigned char t[16];
        memcpy(t, tag, 4);
        DS_TRY(rd(r, t + 4, 12, &sh));
        if (sh) return bad(r, "truncated inside the trailer");
        if (get_u32(t + 12) != ds_crc32c(0, t, 12)) return bad(r, "trailer checksum mismatch (corrupted)");
        if (get_u64(t + 4) != (uint64_t)r->records) {
            snprintf(msg, sizeof msg, "the trailer counts %llu records, the stream held %lld",
                     (unsigned long long)get_u64(t + 4), (long long)r->records);
            return bad(r, msg);
        }
        if (fgetc(r->f) != EOF) return bad(r, "data after the trailer");
        r->done = 1;
        return DS_OK;
    }
    if (memcmp(tag, TAG_RECORD, 4)) {
        snprintf(msg, sizeof msg, "record %lld: unknown block (corrupted)", (long long)r->records + 1);
        return bad(r, msg);
    }
    DS_TRY(rd(r, tag + 4, 8, &sh));
    const uint64_t len = sh ? 0 : get_u64(tag + 4);
    if (!sh) DS_TRY(read_payload(r, 0, FIXED_BYTES, &sh));
    if (sh) {
        snprintf(msg, sizeof msg, "truncated inside record %lld", (long long)r->records + 1);
        return bad(r, msg);
    }
    const unsigned char *b = r->buf;
    ds_kvs_record *x = &r->rec;
    memset(x, 0, sizeof *x);
    x->id = get_u64(b);
    x->stream = get_u64(b + 8);
    x->sampling.temperature = get_f64(b + 16);
    x->sampling.top_k = (int32_t)get_u32(b + 24);
    x->sampling.top_p = get_f64(b + 28);
    x->sampling.seed = get_u64(b + 36);
    const uint32_t L = get_u32(b + 44), qn = get_u32(b + 68);
    x->truncated = (int32_t)get_u32(b + 48);
    x->token = (int32_t)get_u32(b + 52);
    uint32_t lpu = get_u32(b + 56);
    memcpy(&x->logprob, &lpu, 4);
    x->has_draft = (int)get_u32(b + 60);
    x->draft = (int32_t)get_u32(b + 64);
    if (L < 1 || L > MAX_PROMPT || qn > (uint32_t)r->vocab) {
        snprintf(msg, sizeof msg, "record %lld: malformed lengths", (long long)r->records + 1);
        return bad(r, msg);
    }
    const uint64_t expect = FIXED_BYTES + 4ull * L + 12ull * qn + 4ull * (uint64_t)r->n_layers * L * (uint64_t)r->width;
    if (len != expect) {
        snprintf(msg, sizeof msg, "record %lld: length %llu does not match its fields (%llu)", (long long)r->records + 1,
                 (unsigned long long)len, (unsigned long long)expect);
        return bad(r, msg);
    }
    if (expect > SIZE_MAX / 2) return bad(r, "record too large for this host");
    unsigned char crcb[4];
    DS_TRY(read_payload(r, FIXED_BYTES, (size_t)expect, &sh));
    if (!sh) DS_TRY(rd(r, crcb, 4, &sh));
    if (sh) {
        snprintf(msg, sizeof msg, "truncated inside record %lld", (long long)r->records + 1);
        return bad(r, msg);
    }
    if (get_u32(crcb) != ds_crc32c(0, r->buf, (size_t)expect)) {
        snprintf(msg, sizeof msg, "record %lld: checksum mismatch (corrupted)", (long long)r->records + 1);
        return bad(r, msg);
    }
    /* fixed fields (72 bytes), q_p (f64), q_ids, prompt (i32), rows (f32): each array aligned to its type */
    b = r->buf;
    x->prompt_len = (int)L;
    x->q_n = (int)qn;
    x->q_p = (const double *)(b + FIXED_BYTES);
    x->q_ids = (const int32_t *)(x->q_p + qn);
    x->prompt = x->q_ids + qn;
    x->rows = (const float *)(x->prompt + L);
    DS_TRY(check_record(r, x));
    r->records++;
    r->have = 1;
    *rec = x;
    *got = 1;
    return DS_OK;
}

int ds_kvs_next_cb(void *ctx, uint64_t *id, const int32_t **ids, int *n, int *got) {
    ds_kvs_reader *r = ctx;
    const ds_kvs_record *x;
    DS_TRY(ds_kvs_read(r, &x, got));
    if (!*got) return DS_OK;
    *id = x->id;
    *ids = x->prompt;
    *n = x->prompt_len;
    return DS_OK;
}

int ds_kvs_seq_opts_cb(void *ctx, uint64_t id, ds_gen_seq_opts *so) {
    ds_kvs_reader *r = ctx;
    if (!r->have || r->rec.id != id) return ds_fail(DS_ERR, "prefill stream: sequence %llu not current", (unsigned long long)id);
    so->sampling = r->rec.sampling;
    so->stream = r->rec.stream;
    return DS_OK;
}

int ds_kvs_restore_cb(void *ctx, ds_infer *e, ds_gen_handoff *h) {
    ds_kvs_reader *r = ctx;
    if (!r->have) return ds_fail(DS_ERR, "prefill stream: no record to restore");
    const ds_kvs_record *x = &r->rec;
    ds_kvcache *c = ds_infer_cache(e);
    if (c->n_main != r->n_main || c->width != r->width)
        return ds_fail(DS_ERR, "prefill stream: the engine's cache (%d layers x %d) is not the stream's (%d x %d): %s",
                       c->n_main, c->width, r->n_main, r->width, r->where);
    if (x->prompt_len > c->max_len)
        return ds_fail(DS_ERR, "prefill stream: record %lld: %d prompt tokens exceed the context of %d: %s",
                       (long long)r->records, x->prompt_len, c->max_len, r->where);
    const size_t row_floats = (size_t)x->prompt_len * (size_t)r->width;
    const int layers = c->n_layers < r->n_layers ? c->n_layers : r->n_layers;
    for (int l = 0; l < layers; l++) {
        float *dst = ds_kvcache_row(c, l, h->slot, 0);
        const float *src = x->rows + (size_t)l * row_floats;
        if (c->ops) c->ops->copy(dst, src, row_floats * sizeof(float), DS_COPY_H2D);
        else memcpy(dst, src, row_floats * sizeof(float));
    }
    h->truncated = x->truncated;
    h->token = x->token;
    h->logprob = x->logprob;
    h->has_draft = x->has_draft && c->n_layers > c->n_main; /* an engine without MTP decodes plainly */
    h->draft = x->draft;
    if (h->has_draft) {
        ds_dist *q = h->q;
        if (q->V != r->vocab) return ds_fail(DS_ERR, "prefill stream: vocabulary mismatch: %s", r->where);
        for (int i = 0; i < q->n; i++) q->p[q->ids[i]] = 0;
        for (int i = 0; i < x->q_n; i++) {
            q->ids[i] = x->q_ids[i];
            q->p[x->q_ids[i]] = x->q_p[i];
        }
        q->n = x->q_n;
    }
    r->have = 0;
    return DS_OK;
}

void ds_kvs_io_prefill(ds_gen_io *io, ds_kvs_writer *w) {
    io->on_prefilled = ds_kvs_on_prefilled;
    io->sink = w;
}

void ds_kvs_io_decode(ds_gen_io *io, ds_kvs_reader *r) {
    io->src = r;
    io->next = ds_kvs_next_cb;
    io->seq_opts = ds_kvs_seq_opts_cb;
    io->restore = ds_kvs_restore_cb;
}
