/* internal.h — shared internals of the tok module (not a public header).
 *
 * Owns: the GPT-2 byte-level alphabet (byte <-> code point), the open-addressing hash tables the
 * encoder and trainer use (pair -> merge, bytes -> id), growable id/byte buffers, and the layout of
 * struct ds_tokenizer. Everything here is private to lib/tok; other modules use tok/tokenizer.h.
 */
#ifndef DS_TOK_INTERNAL_H
#define DS_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "tok/pretok.h"
#include "tok/tokenizer.h"

/* ---- byte-level alphabet (GPT-2 bytes_to_unicode) ------------------------------------------- */
/* The printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100.. in byte order. */
extern uint16_t ds_bl_byte_to_cp[256];
extern int16_t ds_bl_cp_to_byte[324]; /* code point < 324 -> byte, -1 otherwise */
void ds_bl_init(void);                /* idempotent, thread-safe after the first call */

/* Byte-level string (UTF-8 of mapped code points) of raw bytes; out must hold 2*n bytes. */
size_t ds_bl_encode(const uint8_t *in, size_t n, char *out);
/* Inverse; returns -1 when `s` is not entirely made of alphabet code points. out holds n bytes. */
long ds_bl_decode(const char *s, size_t n, uint8_t *out);

/* UTF-8 decode of one code point at s[0..n); returns its length, 0 when invalid. */
int ds_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
int ds_utf8_encode(uint32_t cp, char *out);

/* ---- growable buffers ------------------------------------------------------------------------- */
int ds_ids_reserve(ds_ids *v, size_t n); /* capacity for n more */
int ds_bytes_reserve(ds_bytes *b, size_t n);

/* ---- hashing ------------------------------------------------------------------------------------ */
static inline uint64_t ds_hash64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}
uint64_t ds_hash_bytes(const void *p, size_t n);

/* pair (a, b) -> (rank, merged id); keys never equal UINT64_MAX (ids < 2^32 - 1). */
typedef struct {
    uint64_t *keys;
    uint32_t *rank, *merged;
    size_t cap, n; /* cap is a power of two */
} ds_pairmap;

#define DS_PAIR(a, b) (((uint64_t)(a) << 32) | (uint32_t)(b))
int ds_pairmap_init(ds_pairmap *m, size_t expect);
void ds_pairmap_free(ds_pairmap *m);
/* insert or overwrite */
int ds_pairmap_put(ds_pairmap *m, uint64_t key, uint32_t rank, uint32_t merged);
static inline int64_t ds_pairmap_find(const ds_pairmap *m, uint64_t key) {
    size_t mask = m->cap - 1, i = ds_hash64(key) & mask;
    for (;;) {
        uint64_t k = m->keys[i];
        if (k == key) return (int64_t)i;
        if (k == UINT64_MAX) return -1;
        i = (i + 1) & mask;
    }
}

/* byte string -> uint32 value; strings live in the table's own blob. */
typedef struct {
    uint32_t *slot_ref; /* index+1 into entries, 0 = empty */
    struct ds_strent {
        uint64_t off;
        uint32_t len, val;
        uint64_t hash;
    } *ent;
    char *blob;
    size_t cap, n, ent_cap, blob_len, blob_cap;
} ds_strmap;

int ds_strmap_init(ds_strmap *m, size_t expect);
void ds_strmap_free(ds_strmap *m);
/* Returns the entry index; *found says whether it already existed (its value is then unchanged). */
int64_t ds_strmap_insert(ds_strmap *m, const char *s, size_t n, uint32_t val, int *found);
int64_t ds_strmap_find(const ds_strmap *m, const char *s, size_t n);
static inline const char *ds_strmap_key(const ds_strmap *m, int64_t e, size_t *n) {
    *n = m->ent[e].len;
    return m->blob + m->ent[e].off;
}

/* ---- the tokenizer ------------------------------------------------------------------------------ */
typedef struct {
    char *content;
    size_t len;
    uint32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} ds_added_token;

struct ds_tokenizer {
    uint32_t vocab_size; /* max id + 1 */
    /* id -> the bytes it decodes to (tok_off has vocab_size + 1 entries); kind: 0 hole, 1 model, 2 added,
     * 3 special added */
    uint64_t *tok_off;
    uint8_t *tok_bytes, *tok_kind;
    /* BPE model */
    int32_t byte_id[256]; /* raw byte -> initial symbol id, -1 when the vocabulary lacks it */
    ds_pairmap merges;
    uint64_t *merge_list; /* DS_PAIR(a, b) in rank order, for writing tokenizer.json */
    size_t n_merges;
    ds_strmap vocab; /* byte-level string -> id (model vocabulary) */
    int ignore_merges, fuse_unk;
    int64_t unk_id; /* -1 none */
    /* added tokens, sorted by first byte then by length descending (leftmost-longest matching) */
    ds_added_token *added;
    int n_added, n_plain_added; /* all added tokens / those not special */
    int32_t added_first[256]; /* first index in `added` with that first byte, -1 none */
    int added_crosses_lines;  /* some added token contains '\n' followed by printable ASCII */
    ds_pretok pre;
    char *json; /* the source text, kept so it can be copied into checkpoints unchanged */
    size_t json_len;
};

/* Build the derived tables (bytes per id, byte_id, added token order) after the vocabulary, merges and
 * added tokens are in place. Shared by the JSON loader and the trainer. */
int ds_tok_finish(ds_tokenizer *t);

#endif
