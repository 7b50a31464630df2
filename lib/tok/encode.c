/* encode.c — text -> ids: added-token splitting, pre-tokenization, byte-pair merging, pre-token cache.
 *
 * Merging follows HF's BPE model exactly: repeatedly merge the adjacent pair of lowest merge rank,
 * leftmost first. Short pre-tokens (nearly all) use a flat scan over a (rank, merged id) array, which is
 * cache-friendly and allocation-free; long ones (whitespace or symbol runs) use a linked list with a
 * binary heap so a 1 MB run is O(n log n), not O(n^2). Results for pre-tokens up to CACHE_MAX_LEN
 * bytes are kept in a per-encoder cache, which real text hits most of the time.
 */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "tok/internal.h"

#define CACHE_SLOTS (1u << 15)      /* power of two; 32K slots of 24 bytes stay in L2 */
#define CACHE_MAX_LEN 16            /* keys live inside the slot; longer pre-tokens are rare */
#define CACHE_IDS (1u << 20)        /* ids stored before the cache is cleared */
#define CACHE_AFTER 1024
#define FLAT_MAX 128                /* up to this many symbols, merge with the flat scan */

typedef struct {
    uint64_t k0, k1;          /* the key bytes, zero-padded */
    uint32_t ids_off;
    uint8_t len, n_ids, pad[2]; /* len 0 marks an empty slot */
} cache_slot;

struct ds_tok_encoder {
    const ds_tokenizer *t;
    ds_pretok_state *ps;
    ds_ids *out;
    /* cache */
    cache_slot *slot; /* allocated once the encoder has seen CACHE_AFTER pre-tokens: short calls
                         (a prompt) stay cheap */
    uint32_t used, seen;
    uint32_t *ids;
    uint32_t ids_len;
    /* merge scratch */
    uint32_t *sym;
    uint64_t *pr; /* rank << 32 | merged id; UINT64_MAX when the pair does not merge */
    int32_t *prev, *next;
    uint64_t *heap;
    size_t cap;
    char *blbuf; /* byte-level text for ignore_merges lookups */
    size_t blcap;
};

int ds_tok_encoder_new(ds_tok_encoder **out, const ds_tokenizer *t) {
    ds_tok_encoder *e = calloc(1, sizeof *e);
    if (!e) return ds_fail(DS_ERR, "tokenizer: out of memory");
    e->t = t;
    int rc = ds_pretok_state_new(&e->ps, &t->pre);
    if (rc) {
        ds_tok_encoder_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void ds_tok_encoder_free(ds_tok_encoder *e) {
    if (!e) return;
    ds_pretok_state_free(e->ps);
    free(e->slot), free(e->ids);
    free(e->sym), free(e->pr), free(e->prev), free(e->next), free(e->heap), free(e->blbuf);
    free(e);
}

static int reserve_scratch(ds_tok_encoder *e, size_t n) {
    if (n <= e->cap) return 0;
    size_t cap = e->cap ? e->cap : 256;
    while (cap < n) cap *= 2;
    uint32_t *sym = realloc(e->sym, cap * sizeof *sym);
    if (sym) e->sym = sym;
    uint64_t *pr = realloc(e->pr, cap * sizeof *pr);
    if (pr) e->pr = pr;
    int32_t *pv = realloc(e->prev, cap * sizeof *pv);
    if (pv) e->prev = pv;
    int32_t *nx = realloc(e->next, cap * sizeof *nx);
    if (nx) e->next = nx;
    uint64_t *hp = realloc(e->heap, 2 * cap * sizeof *hp);
    if (hp) e->heap = hp;
    if (!sym || !pr || !pv || !nx || !hp) return ds_fail(DS_ERR, "tokenizer: out of memory (pre-token of %zu bytes)", n);
    e->cap = cap;
    return 0;
}

static inline uint64_t pair_rank(const ds_tokenizer *t, uint32_t a, uint32_t b) {
    int64_t i = ds_pairmap_find(&t->merges, DS_PAIR(a, b));
    return i < 0 ? UINT64_MAX : ((uint64_t)t->merges.rank[i] << 32 | t->merges.merged[i]);
}

static size_t merge_flat(const ds_tokenizer *t, uint32_t *sym, uint64_t *pr, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) pr[i] = pair_rank(t, sym[i], sym[i + 1]);
    while (n > 1) {
        uint64_t best = UINT64_MAX;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (pr[i] < best) best = pr[i], bi = i;
        if (best == UINT64_MAX) break;
        sym[bi] = (uint32_t)best;
        memmove(sym + bi + 1, sym + bi + 2, (n - bi - 2) * sizeof *sym);
        if (n >= bi + 3) memmove(pr + bi + 1, pr + bi + 2, (n - bi - 3) * sizeof *pr);
        n--;
        if (bi > 0) pr[bi - 1] = pair_rank(t, sym[bi - 1], sym[bi]);
        if (bi + 1 < n) pr[bi] = pair_rank(t, sym[bi], sym[bi + 1]);
    }
    return n;
}

/* min-heap of (rank << 32 | position) */
static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

static size_t merge_heap(ds_tok_encoder *e, size_t n) {
    const ds_tokenizer *t = e->t;
    uint32_t *sym = e->sym;
    int32_t *prev = e->prev, *next = e->next;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) prev[i] = (int32_t)i - 1, next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    for (size_t i = 0; i + 1 < n; i++) {
        uint64_t r = pair_rank(t, sym[i], sym[i + 1]);
        if (r != UINT64_MAX) heap_push(e->heap, &hn, (r & 0xffffffff00000000ULL) | i);
    }
    while (hn) {
        uint64_t top = heap_pop(e->heap, &hn);
        uint32_t pos = (uint32_t)top, rank = (uint32_t)(top >> 32);
        if (sym[pos] == UINT32_MAX || next[pos] < 0) continue; /* merged away */
        uint32_t nx = (uint32_t)next[pos];
        uint64_t r = pair_rank(t, sym[pos], sym[nx]);
        if (r == UINT64_MAX || (uint32_t)(r >> 32) != rank) continue; /* stale: a neighbour changed */
        sym[pos] = (uint32_t)r;
        sym[nx] = UINT32_MAX;
        next[pos] = next[nx];
        if (next[nx] >= 0) prev[next[nx]] = (int32_t)pos;
        if (prev[pos] >= 0) {
            uint64_t rp = pair_rank(t, sym[prev[pos]], sym[pos]);
            if (rp != UINT64_MAX) heap_push(e->heap, &hn, (rp & 0xffffffff00000000ULL) | (uint32_t)prev[pos]);
        }
        if (next[pos] >= 0) {
            uint64_t rn = pair_rank(t, sym[pos], sym[next[pos]]);
            if (rn != UINT64_MAX) heap_push(e->heap, &hn, (rn & 0xffffffff00000000ULL) | pos);
        }
    }
    size_t m = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) sym[m++] = sym[i];
    return m;
}

/* BPE of one pre-token, appended to e->out. */
static int bpe_piece(ds_tok_encoder *e, const uint8_t *p, size_t len) {
    const ds_tokenizer *t = e->t;
    if (t->ignore_merges) { /* a pre-token that is itself a token is emitted whole */
        if (e->blcap < 2 * len) {
            char *b = realloc(e->blbuf, 2 * len);
            if (!b) return ds_fail(DS_ERR, "tokenizer: out of memory");
            e->blbuf = b, e->blcap = 2 * len;
        }
        size_t m = ds_bl_encode(p, len, e->blbuf);
        int64_t ent = ds_strmap_find(&t->vocab, e->blbuf, m);
        if (ent >= 0) {
            DS_TRY(ds_ids_reserve(e->out, 1));
            e->out->v[e->out->n++] = t->vocab.ent[ent].val;
            return 0;
        }
    }
    DS_TRY(reserve_scratch(e, len));
    size_t n = 0;
    int last_unk = 0;
    for (size_t i = 0; i < len; i++) {
        int32_t id = t->byte_id[p[i]];
        if (id >= 0) {
            e->sym[n++] = (uint32_t)id, last_unk = 0;
        } else if (t->unk_id >= 0) { /* only for vocabularies missing some bytes; as HF does */
            if (!(t->fuse_unk && last_unk)) e->sym[n++] = (uint32_t)t->unk_id;
            last_unk = 1;
        }
    }
    n = n <= FLAT_MAX ? merge_flat(t, e->sym, e->pr, n) : merge_heap(e, n);
    DS_TRY(ds_ids_reserve(e->out, n));
    memcpy(e->out->v + e->out->n, e->sym, n * sizeof *e->sym);
    e->out->n += n;
    return 0;
}

static void cache_clear(ds_tok_encoder *e) {
    memset(e->slot, 0, CACHE_SLOTS * sizeof *e->slot);
    e->used = e->ids_len = 0;
}

static int on_piece(void *ctx, const char *piece, size_t len) {
    ds_tok_encoder *e = ctx;
    const ds_tokenizer *t = e->t;
    const uint8_t *p = (const uint8_t *)piece;
    if (len == 1 && t->byte_id[p[0]] >= 0) {
        DS_TRY(ds_ids_reserve(e->out, 1));
        e->out->v[e->out->n++] = (uint32_t)t->byte_id[p[0]];
        return 0;
    }
    if (len > CACHE_MAX_LEN) return bpe_piece(e, p, len);
    if (!e->slot) {
        if (++e->seen < CACHE_AFTER) return bpe_piece(e, p, len);
        e->slot = calloc(CACHE_SLOTS, sizeof *e->slot);
        e->ids = malloc(CACHE_IDS * sizeof *e->ids);
        if (!e->slot || !e->ids) return ds_fail(DS_ERR, "tokenizer: out of memory (pre-token cache)");
    }
    uint64_t k[2] = {0, 0};
    memcpy(k, p, len);
    uint64_t h = ds_hash64(k[0] * 0x9e3779b97f4a7c15ULL ^ k[1] * 0xc2b2ae3d27d4eb4fULL ^ len);
    uint32_t mask = CACHE_SLOTS - 1, i = (uint32_t)h & mask;
    for (;;) {
        cache_slot *s = &e->slot[i];
        if (!s->len) break;
        if (s->k0 == k[0] && s->k1 == k[1] && s->len == len) {
            DS_TRY(ds_ids_reserve(e->out, s->n_ids));
            memcpy(e->out->v + e->out->n, e->ids + s->ids_off, s->n_ids * sizeof(uint32_t));
            e->out->n += s->n_ids;
            return 0;
        }
        i = (i + 1) & mask;
    }
    size_t before = e->out->n;
    DS_TRY(bpe_piece(e, p, len));
    size_t nids = e->out->n - before;
    if (e->used * 2 >= CACHE_SLOTS || e->ids_len + nids > CACHE_IDS) {
        cache_clear(e);
        i = (uint32_t)h & mask;
    }
    cache_slot *s = &e->slot[i];
    s->k0 = k[0], s->k1 = k[1];
    s->len = (uint8_t)len;
    s->n_ids = (uint8_t)nids;
    s->ids_off = e->ids_len;
    memcpy(e->ids + e->ids_len, e->out->v + before, nids * sizeof(uint32_t));
    e->ids_len += (uint32_t)nids;
    e->used++;
    return 0;
}

static int encode_plain(ds_tok_encoder *e, const char *text, size_t len) {
    return ds_pretok_run(e->ps, text, len, on_piece, e);
}

/* ---- added tokens ------------------------------------------------------------------------------- */

static int is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
           c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static int is_word_byte(const uint8_t *s, size_t n) { /* the character starting at s is alphanumeric or '_' */
    uint32_t c;
    if (!ds_utf8_decode(s, n, &c)) return 0;
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (c >= 0x80 && !is_ws(c));
}

/* Leftmost-longest match of an eligible added token in text[from..len) (pass 0: not normalized, pass 1:
 * normalized — HF splits the two sets in that order). Returns 1 with the matched span (after lstrip /
 * rstrip) and the token id. */
static int find_added(const ds_tokenizer *t, const uint8_t *s, size_t len, size_t from, int pass, int flags, size_t *ms,
                      size_t *me, uint32_t *id) {
    for (size_t i = from; i < len; i++) {
        int32_t k = t->added_first[s[i]];
        if (k < 0) continue;
        for (; k < t->n_added && (uint8_t)t->added[k].content[0] == s[i]; k++) {
            const ds_added_token *a = &t->added[k];
            if (a->normalized != pass || (a->special && !(flags & DS_TOK_SPECIAL))) continue;
            if (a->len > len - i || memcmp(s + i, a->content, a->len)) continue;
            if (a->single_word) {
                size_t b = i;
                while (b > 0 && (s[b - 1] & 0xc0) == 0x80) b--;
                if (i > 0 && b > 0 && is_word_byte(s + b - 1, len - b + 1)) continue;
                if (i + a->len < len && is_word_byte(s + i + a->len, len - i - a->len)) continue;
            }
            size_t st = i, en = i + a->len;
            while (a->lstrip && st > from) {
                size_t b = st - 1;
                while (b > from && (s[b] & 0xc0) == 0x80) b--;
                uint32_t c;
                if (!ds_utf8_decode(s + b, st - b, &c) || !is_ws(c)) break;
                st = b;
            }
            while (a->rstrip && en < len) {
                uint32_t c;
                int l = ds_utf8_decode(s + en, len - en, &c);
                if (!l || !is_ws(c)) break;
                en += (size_t)l;
            }
            *ms = st, *me = en, *id = a->id;
            return 1;
        }
    }
    return 0;
}

static int split_added(ds_tok_encoder *e, const char *text, size_t len, int pass, int flags) {
    if (pass == 2) return encode_plain(e, text, len);
    size_t pos = 0, ms, me;
    uint32_t id;
    while (pos < len && find_added(e->t, (const uint8_t *)text, len, pos, pass, flags, &ms, &me, &id)) {
        if (ms > pos) DS_TRY(split_added(e, text + pos, ms - pos, pass + 1, flags));
        DS_TRY(ds_ids_reserve(e->out, 1));
        e->out->v[e->out->n++] = id;
        pos = me;
    }
    if (pos < len) DS_TRY(split_added(e, text + pos, len - pos, pass + 1, flags));
    return 0;
}

int ds_tok_encoder_encode(ds_tok_encoder *e, const char *text, size_t len, int flags, ds_ids *out) {
    e->out = out;
    int any = (flags & DS_TOK_SPECIAL) ? e->t->n_added > 0 : e->t->n_plain_added > 0;
    int rc = any ? split_added(e, text, len, 0, flags) : encode_plain(e, text, len);
    e->out = NULL;
    return rc;
}

int ds_tok_encode(const ds_tokenizer *t, const char *text, size_t len, int flags, ds_ids *out) {
    ds_tok_encoder *e = NULL;
    DS_TRY(ds_tok_encoder_new(&e, t));
    int rc = ds_tok_encoder_encode(e, text, len, flags, out);
    ds_tok_encoder_free(e);
    return rc;
}
