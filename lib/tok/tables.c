/* tables.c — the byte-level alphabet, UTF-8 helpers, hash tables and buffers shared inside lib/tok. */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "tok/internal.h"

uint16_t ds_bl_byte_to_cp[256];
int16_t ds_bl_cp_to_byte[324];

static int printable_latin1(int b) { return (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff); }

void ds_bl_init(void) {
    static volatile int done;
    if (done) return;
    int next = 256;
    for (int i = 0; i < 324; i++) ds_bl_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int cp = printable_latin1(b) ? b : next++;
        ds_bl_byte_to_cp[b] = (uint16_t)cp;
        ds_bl_cp_to_byte[cp] = (int16_t)b;
    }
    done = 1;
}

int ds_utf8_encode(uint32_t cp, char *o) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    if (cp < 0x800) return o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 63)), 2;
    if (cp < 0x10000)
        return o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | ((cp >> 6) & 63)), o[2] = (char)(0x80 | (cp & 63)), 3;
    o[0] = (char)(0xf0 | cp >> 18), o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)), o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

int ds_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    uint32_t c = s[0];
    if (c < 0x80) return *cp = c, 1;
    int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    if (!len || (size_t)len > n || c > 0xf4) return 0;
    uint32_t v = c & (0x7f >> len);
    for (int k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80) return 0;
        v = v << 6 | (s[k] & 63u);
    }
    if ((len == 3 && (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))) || (len == 4 && (v < 0x10000 || v > 0x10ffff)))
        return 0;
    *cp = v;
    return len;
}

size_t ds_bl_encode(const uint8_t *in, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += (size_t)ds_utf8_encode(ds_bl_byte_to_cp[in[i]], out + o);
    return o;
}

long ds_bl_decode(const char *s, size_t n, uint8_t *out) {
    size_t i = 0;
    long o = 0;
    while (i < n) {
        uint32_t cp;
        int l = ds_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (!l || cp >= 324 || ds_bl_cp_to_byte[cp] < 0) return -1;
        out[o++] = (uint8_t)ds_bl_cp_to_byte[cp];
        i += (size_t)l;
    }
    return o;
}

/* ---- buffers -------------------------------------------------------------------------------------- */
int ds_ids_reserve(ds_ids *v, size_t n) {
    if (v->cap - v->n >= n) return 0;
    size_t cap = v->cap ? v->cap : 64;
    while (cap - v->n < n) cap *= 2;
    uint32_t *p = realloc(v->v, cap * sizeof *p);
    if (!p) return ds_fail(DS_ERR, "tokenizer: out of memory (%zu ids)", cap);
    v->v = p;
    v->cap = cap;
    return 0;
}

int ds_bytes_reserve(ds_bytes *b, size_t n) {
    if (b->cap - b->n >= n) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->n < n) cap *= 2;
    uint8_t *p = realloc(b->v, cap);
    if (!p) return ds_fail(DS_ERR, "tokenizer: out of memory (%zu bytes)", cap);
    b->v = p;
    b->cap = cap;
    return 0;
}

void ds_ids_free(ds_ids *v) {
    free(v->v);
    memset(v, 0, sizeof *v);
}

void ds_bytes_free(ds_bytes *b) {
    free(b->v);
    memset(b, 0, sizeof *b);
}

/* ---- hashing -------------------------------------------------------------------------------------- */
uint64_t ds_hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * 0x100000001b3ULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ ds_hash64(w)) * 0x100000001b3ULL;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    return ds_hash64(h ^ w ^ ((uint64_t)n << 56));
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

int ds_pairmap_init(ds_pairmap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    m->cap = pow2_at_least(expect * 2 + 1);
    m->keys = malloc(m->cap * sizeof *m->keys);
    m->rank = malloc(m->cap * sizeof *m->rank);
    m->merged = malloc(m->cap * sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged) {
        ds_pairmap_free(m);
        return ds_fail(DS_ERR, "tokenizer: out of memory (merge table)");
    }
    memset(m->keys, 0xff, m->cap * sizeof *m->keys);
    return 0;
}

void ds_pairmap_free(ds_pairmap *m) {
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

static int pairmap_grow(ds_pairmap *m) {
    ds_pairmap g;
    DS_TRY(ds_pairmap_init(&g, m->cap));
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i] != UINT64_MAX) ds_pairmap_put(&g, m->keys[i], m->rank[i], m->merged[i]);
    ds_pairmap_free(m);
    *m = g;
    return 0;
}

int ds_pairmap_put(ds_pairmap *m, uint64_t key, uint32_t rank, uint32_t merged) {
    if ((m->n + 1) * 2 > m->cap) DS_TRY(pairmap_grow(m));
    size_t mask = m->cap - 1, i = ds_hash64(key) & mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & mask;
    if (m->keys[i] == UINT64_MAX) m->n++;
    m->keys[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
    return 0;
}

int ds_strmap_init(ds_strmap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    m->cap = pow2_at_least(expect * 2 + 1);
    m->slot_ref = calloc(m->cap, sizeof *m->slot_ref);
    if (!m->slot_ref) return ds_fail(DS_ERR, "tokenizer: out of memory (string table)");
    return 0;
}

void ds_strmap_free(ds_strmap *m) {
    free(m->slot_ref);
    free(m->ent);
    free(m->blob);
    memset(m, 0, sizeof *m);
}

int64_t ds_strmap_find(const ds_strmap *m, const char *s, size_t n) {
    if (!m->cap) return -1;
    uint64_t h = ds_hash_bytes(s, n);
    size_t mask = m->cap - 1, i = h & mask;
    for (;;) {
        uint32_t r = m->slot_ref[i];
        if (!r) return -1;
        const struct ds_strent *e = &m->ent[r - 1];
        if (e->hash == h && e->len == n && !memcmp(m->blob + e->off, s, n)) return (int64_t)(r - 1);
        i = (i + 1) & mask;
    }
}

static int strmap_grow(ds_strmap *m) {
    size_t cap = m->cap * 2;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots) return ds_fail(DS_ERR, "tokenizer: out of memory (string table)");
    for (size_t e = 0; e < m->n; e++) {
        size_t i = m->ent[e].hash & (cap - 1);
        while (slots[i]) i = (i + 1) & (cap - 1);
        slots[i] = (uint32_t)(e + 1);
    }
    free(m->slot_ref);
    m->slot_ref = slots;
    m->cap = cap;
    return 0;
}

int64_t ds_strmap_insert(ds_strmap *m, const char *s, size_t n, uint32_t val, int *found) {
    int64_t e = ds_strmap_find(m, s, n);
    if (found) *found = e >= 0;
    if (e >= 0) return e;
    if (n > UINT32_MAX || m->n >= UINT32_MAX - 1) return ds_fail(DS_ERR, "tokenizer: string table full"), -1;
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    if (m->n == m->ent_cap) {
        size_t cap = m->ent_cap ? m->ent_cap * 2 : 256;
        struct ds_strent *v = realloc(m->ent, cap * sizeof *v);
        if (!v) return ds_fail(DS_ERR, "tokenizer: out of memory (string table)"), -1;
        m->ent = v;
        m->ent_cap = cap;
    }
    if (m->blob_cap - m->blob_len < n) {
        size_t cap = m->blob_cap ? m->blob_cap : 4096;
        while (cap - m->blob_len < n) cap *= 2;
        char *b = realloc(m->blob, cap);
        if (!b) return ds_fail(DS_ERR, "tokenizer: out of memory (string table)"), -1;
        m->blob = b;
        m->blob_cap = cap;
    }
    uint64_t h = ds_hash_bytes(s, n);
    memcpy(m->blob + m->blob_len, s, n);
    m->ent[m->n] = (struct ds_strent){m->blob_len, (uint32_t)n, val, h};
    m->blob_len += n;
    size_t mask = m->cap - 1, i = h & mask;
    while (m->slot_ref[i]) i = (i + 1) & mask;
    m->slot_ref[i] = (uint32_t)(m->n + 1);
    return (int64_t)m->n++;
}
