#include "train/packed.h"

#include "core/err.h"
#include "core/rng.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- token readers ---- */

typedef struct {
    int32_t *tokens;
    int own;
} mem_reader;

static int mem_read(ds_token_reader *r, int64_t off, int64_t n, int32_t *dst) {
    const mem_reader *m = r->impl;
    if (off < 0 || n < 0 || off + n > r->n_tokens)
        return ds_fail(DS_ERR, "token read [%lld, +%lld) outside %lld tokens: %s", (long long)off, (long long)n,
                       (long long)r->n_tokens, r->where);
    memcpy(dst, m->tokens + off, (size_t)n * sizeof *dst);
    return 0;
}

static void mem_free(ds_token_reader *r) {
    mem_reader *m = r->impl;
    if (m && m->own) free(m->tokens);
    free(m);
    r->impl = NULL;
}

int ds_token_reader_memory(ds_token_reader *r, int32_t *tokens, int64_t n, int own, const char *where) {
    mem_reader *m = calloc(1, sizeof *m);
    if (!m) return ds_fail(DS_ERR, "out of memory: token reader");
    m->tokens = tokens;
    m->own = own;
    *r = (ds_token_reader){.n_tokens = n, .where = where ? where : "<memory>", .read = mem_read, .free = mem_free, .impl = m};
    return 0;
}

void ds_token_reader_free(ds_token_reader *r) {
    if (r && r->free) r->free(r);
}

/* ---- order ---- */

uint64_t ds_keyed_permute(uint64_t i, uint64_t n, uint64_t seed, uint64_t stream) {
    if (n <= 1) return 0;
    int bits = 64 - __builtin_clzll(n - 1);
    bits += bits & 1;
    if (bits < 2) bits = 2;
    const int h = bits / 2;
    const uint64_t mask = h == 32 ? 0xffffffffull : (1ull << h) - 1;
    uint64_t x = i;
    /* a balanced Feistel network is a bijection of [0, 2^bits); walking the cycle until we land
     * back inside [0, n) restricts it to a bijection of [0, n) (at most 4x the domain on average) */
    do {
        uint64_t l = x >> h, r = x & mask;
        for (uint64_t round = 0; round < 4; round++) {
            uint32_t w[4];
            ds_philox4x32(seed, stream, round << 40 | r, w);
            uint64_t f = ((uint64_t)w[1] << 32 | w[0]) & mask;
            uint64_t nl = r;
            r = l ^ f;
            l = nl;
        }
        x = l << h | r;
    } while (x >= n);
    return x;
}

/* ---- FIM ---- */

void ds_fim_row(int32_t *row, int len, int32_t *scratch, const ds_packed_opts *o, uint64_t stream) {
    ds_rng rng;
    ds_rng_init(&rng, o->seed, stream);
    int out = 0;
#define EMIT(tok)                                                                                                 \
    do {                                                                                                          \
        if (out < len) scratch[out++] = (tok);                                                                    \
    } while (0)
    for (int i = 0; i < len && out < len;) {
        if (row[i] == o->eos) {
            EMIT(o->eos);
            i++;
            continue;
        }
        int j = i;
        while (j < len && row[j] != o->eos) j++;
        int n = j - i;
        if (ds_rng_uniform(&rng) < o->fim_rate) {
            int a = (int)ds_rng_below(&rng, (uint64_t)n + 1), b = (int)ds_rng_below(&rng, (uint64_t)n + 1);
            if (a > b) {
                int t = a;
                a = b;
                b = t;
            }
            EMIT(o->fim_begin);
            for (int k = i; k < i + a; k++) EMIT(row[k]);
            EMIT(o->fim_hole);
            for (int k = i + b; k < j; k++) EMIT(row[k]);
            EMIT(o->fim_end);
            for (int k = i + a; k < i + b; k++) EMIT(row[k]);
        } else {
            for (int k = i; k < j; k++) EMIT(row[k]);
        }
        i = j;
    }
#undef EMIT
    memcpy(row, scratch, (size_t)len * sizeof *row);
}

/* ---- the source ---- */

typedef struct {
    ds_token_reader *rd;
    ds_packed_opts o;
    int64_t windows;     /* windows in this split */
    int64_t first;       /* index of this split's first window in the stream */
    int64_t rows_done;
    int is_val;
    int32_t *row, *scratch; /* T+1 each */
} packed;

static uint64_t order_stream(int64_t epoch) { return ds_stream_id("packed.order") + (uint64_t)epoch; }

static int packed_next(ds_data_source *s, ds_batch_buf *buf, int rows) {
    packed *p = s->impl;
    const int T = p->o.seq_len;
    if (buf->seq_len != T) return ds_fail(DS_ERR, "data: batch of %d tokens per row, source makes %d", buf->seq_len, T);
    if (buf->rows + rows > buf->cap_rows) return ds_fail(DS_ERR, "data: batch buffer full (%d rows)", buf->cap_rows);
    for (int k = 0; k < rows; k++) {
        int64_t r = p->rows_done++, idx = r % p->windows, epoch = r / p->windows;
        int64_t w = p->is_val ? idx : (int64_t)ds_keyed_permute((uint64_t)idx, (uint64_t)p->windows, p->o.seed, order_stream(epoch));
        DS_TRY(p->rd->read(p->rd, (p->first + w) * T, T + 1, p->row));
        if (!p->is_val && p->o.fim_rate > 0) ds_fim_row(p->row, T + 1, p->scratch, &p->o, ds_stream_id("packed.fim") + (uint64_t)r);
        size_t off = (size_t)buf->rows * T;
        memcpy(buf->tokens + off, p->row, (size_t)T * sizeof *p->row);
        memcpy(buf->targets + off, p->row + 1, (size_t)T * sizeof *p->row);
        buf->rows++;
    }
    buf->has_pos = buf->has_seg = buf->has_len = 0;
    return 0;
}

static int64_t packed_rows_per_pass(const ds_data_source *s) {
    const packed *p = s->impl;
    return p->is_val ? p->windows : -1;
}

static void packed_rewind(ds_data_source *s) { ((packed *)s->impl)->rows_done = 0; }

static void packed_state_write(const ds_data_source *s, ds_jsonw *w) {
    const packed *p = s->impl;
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "kind", "packed");
    ds_jsonw_kint(w, "rows", p->rows_done);
    ds_jsonw_kint(w, "windows", p->windows);
    ds_jsonw_kint(w, "seq_len", p->o.seq_len);
    ds_jsonw_obj_end(w);
}

static int packed_state_read(ds_data_source *s, const void *json, const char *where) {
    packed *p = s->impl;
    const json_t *o = json;
    json_t *rows = json_object_get(o, "rows"), *win = json_object_get(o, "windows"), *sl = json_object_get(o, "seq_len");
    if (!json_is_integer(rows) || json_integer_value(rows) < 0 || !json_is_integer(win) || !json_is_integer(sl))
        return ds_fail(DS_ERR, "trainer state: data: bad cursor: %s", where);
    if (json_integer_value(sl) != p->o.seq_len || json_integer_value(win) != p->windows) {
        ds_fail(DS_ERR, "data changed since the checkpoint: %lld windows of %d tokens now, %lld of %lld then: %s",
                (long long)p->windows, p->o.seq_len, (long long)json_integer_value(win), (long long)json_integer_value(sl), where);
        ds_hint("resume with the same --data, --seq-len and validation split");
        return DS_ERR;
    }
    p->rows_done = json_integer_value(rows);
    return 0;
}

static void packed_free(ds_data_source *s) {
    packed *p = s->impl;
    if (p) free(p->row), free(p->scratch);
    free(p);
    free(s);
}

static int make_source(ds_data_source **out, ds_token_reader *rd, const ds_packed_opts *o, int64_t first, int64_t windows, int is_val) {
    ds_data_source *s = calloc(1, sizeof *s);
    packed *p = calloc(1, sizeof *p);
    if (p) {
        p->row = malloc(((size_t)o->seq_len + 1) * sizeof *p->row);
        p->scratch = malloc(((size_t)o->seq_len + 1) * sizeof *p->scratch);
    }
    if (!s || !p || !p->row || !p->scratch) {
        if (p) free(p->row), free(p->scratch);
        free(p), free(s);
        return ds_fail(DS_ERR, "out of memory: data source");
    }
    p->rd = rd;
    p->o = *o;
    p->first = first;
    p->windows = windows;
    p->is_val = is_val;
    *s = (ds_data_source){.kind = "packed", .seq_len = o->seq_len, .next = packed_next, .rows_per_pass = packed_rows_per_pass,
                          .rewind = packed_rewind, .state_write = packed_state_write, .state_read = packed_state_read,
                          .free = packed_free, .impl = p};
    *out = s;
    return 0;
}

int ds_packed_create(ds_data_source **train, ds_data_source **val, ds_token_reader *rd, const ds_packed_opts *o) {
    *train = NULL;
    if (val) *val = NULL;
    if (o->seq_len <= 0) return ds_fail(DS_ERR, "data: sequence length %d", o->seq_len);
    if (!(o->val_frac >= 0 && o->val_frac < 1)) return ds_fail(DS_ERR, "data: validation share %g is not in [0, 1)", o->val_frac);
    if (!(o->fim_rate >= 0 && o->fim_rate <= 1)) return ds_fail(DS_ERR, "data: FIM rate %g is not in [0, 1]", o->fim_rate);
    if (o->fim_rate > 0 && (o->fim_begin < 0 || o->fim_hole < 0 || o->fim_end < 0))
        return ds_fail(DS_ERR, "data: FIM needs the ids of the fim_begin, fim_hole and fim_end tokens");
    int64_t total = rd->n_tokens > 0 ? (rd->n_tokens - 1) / o->seq_len : 0;
    int64_t nval = val && o->val_frac > 0 ? (int64_t)ceil(o->val_frac * (double)total) : 0;
    if (total - nval < 1) {
        ds_fail(DS_ERR, "data: %lld tokens make %lld training sequences of %d+1 tokens: %s", (long long)rd->n_tokens,
                (long long)(total - nval), o->seq_len, rd->where);
        ds_hint("give more data, a shorter --seq-len or a smaller --val-frac");
        return DS_ERR;
    }
    DS_TRY(make_source(train, rd, o, 0, total - nval, 0));
    if (nval > 0) {
        int rc = make_source(val, rd, o, total - nval, nval, 1);
        if (rc) {
            ds_data_source_free(*train);
            *train = NULL;
            return rc;
        }
    }
    return 0;
}
