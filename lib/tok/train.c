/* train.c — BPE training: pre-token counting and the incremental merge loop (see train.h). */
#include "tok/train.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "tok/corpus.h"
#include "tok/internal.h"
#ifdef _OPENMP
#include <omp.h>
#endif

const char *const ds_tok_default_specials[] = {
    "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9c\xe2\x96\x81pad\xe2\x96\x81\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<\xef\xbd\x9cUser\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
    "<\xef\xbd\x9cSystem\xef\xbd\x9c>",
    "<think>",
    "</think>",
};
const int ds_tok_n_default_specials = (int)(sizeof ds_tok_default_specials / sizeof ds_tok_default_specials[0]);

/* ---- counting ----------------------------------------------------------------------------------- */

typedef struct {
    ds_strmap words; /* pre-token bytes -> entry index; the entry index is the word index */
    uint64_t *count;
    size_t cap;
    uint64_t total;
} word_table;

static int wt_init(word_table *w) {
    memset(w, 0, sizeof *w);
    return ds_strmap_init(&w->words, 1 << 12);
}

static void wt_free(word_table *w) {
    ds_strmap_free(&w->words);
    free(w->count);
}

static int wt_add(word_table *w, const char *s, size_t n, uint64_t c) {
    int64_t e = ds_strmap_insert(&w->words, s, n, 0, NULL);
    if (e < 0) return DS_ERR;
    if ((size_t)e >= w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 4096;
        uint64_t *v = realloc(w->count, cap * sizeof *v);
        if (!v) return ds_fail(DS_ERR, "train: out of memory counting pre-tokens");
        memset(v + w->cap, 0, (cap - w->cap) * sizeof *v);
        w->count = v;
        w->cap = cap;
    }
    w->count[e] += c;
    w->total += c;
    return 0;
}

static int on_word(void *ctx, const char *s, size_t n) { return wt_add(ctx, s, n, 1); }

struct ds_tok_trainer {
    ds_pretok pre;
    word_table wt;
    int finished;
};

static int deepseek_pretok(ds_pretok *p) {
    for (int i = 0; i < 3; i++)
        DS_TRY(ds_pretok_add_split(p, ds_pretok_deepseek_v3[i], strlen(ds_pretok_deepseek_v3[i]), 0, DS_SPLIT_ISOLATED, 0));
    return ds_pretok_add_bytelevel(p, 0, 0);
}

int ds_tok_trainer_new(ds_tok_trainer **out) {
    ds_tok_trainer *tr = calloc(1, sizeof *tr);
    if (!tr) return ds_fail(DS_ERR, "train: out of memory");
    int rc = deepseek_pretok(&tr->pre);
    if (!rc) rc = wt_init(&tr->wt);
    if (rc) {
        ds_tok_trainer_free(tr);
        return rc;
    }
    *out = tr;
    return 0;
}

void ds_tok_trainer_free(ds_tok_trainer *tr) {
    if (!tr) return;
    ds_pretok_free(&tr->pre);
    wt_free(&tr->wt);
    free(tr);
}

uint64_t ds_tok_trainer_words(const ds_tok_trainer *tr) { return tr->wt.words.n; }
uint64_t ds_tok_trainer_pretokens(const ds_tok_trainer *tr) { return tr->wt.total; }

size_t ds_tok_train_cut(const char *text, size_t len) {
    for (size_t i = len; i-- > 1;)
        if (text[i - 1] == '\n' && text[i] > ' ' && text[i] < 0x7f) return i;
    return 0;
}

static int merge_into(word_table *dst, word_table *src) {
    for (size_t e = 0; e < src->words.n; e++) {
        size_t n;
        const char *s = ds_strmap_key(&src->words, (int64_t)e, &n);
        DS_TRY(wt_add(dst, s, n, src->count[e]));
    }
    return 0;
}

static int count_serial(const ds_pretok *pre, word_table *wt, const char *text, size_t len) {
    ds_pretok_state *ps;
    DS_TRY(ds_pretok_state_new(&ps, pre));
    int rc = ds_pretok_run(ps, text, len, on_word, wt);
    ds_pretok_state_free(ps);
    return rc;
}

/* Fold the threads' tables (and their statuses) into the trainer's, freeing them. */
static int merge_locals(ds_tok_trainer *tr, word_table *local, int *rcs, int nt) {
    int rc = 0;
    for (int k = 0; k < nt; k++) {
        if (!rc && rcs[k]) rc = ds_fail(DS_ERR, "train: counting failed");
        if (!rc) rc = merge_into(&tr->wt, &local[k]);
        wt_free(&local[k]);
    }
    free(local);
    free(rcs);
    return rc;
}

int ds_tok_trainer_feed(ds_tok_trainer *tr, const char *text, size_t len) {
    if (tr->finished) return ds_fail(DS_ERR, "train: fed after finish");
    int nt = ds_tok_threads();
    if (nt <= 1 || len < (1u << 20)) return count_serial(&tr->pre, &tr->wt, text, len);
    /* cut into one piece per thread at safe points; each thread counts into its own table */
    if (nt > 64) nt = 64;
    size_t cut[65];
    cut[0] = 0;
    for (int k = 1; k < nt; k++) {
        size_t want = len / (size_t)nt * (size_t)k;
        size_t c = want > cut[k - 1] ? ds_tok_train_cut(text + cut[k - 1], want - cut[k - 1]) : 0;
        cut[k] = c ? cut[k - 1] + c : cut[k - 1];
    }
    cut[nt] = len;
    word_table *local = calloc((size_t)nt, sizeof *local);
    int *rcs = calloc((size_t)nt, sizeof *rcs);
    if (!local || !rcs) return free(local), free(rcs), ds_fail(DS_ERR, "train: out of memory");
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int k = 0; k < nt; k++) {
        rcs[k] = wt_init(&local[k]);
        if (!rcs[k]) rcs[k] = count_serial(&tr->pre, &local[k], text + cut[k], cut[k + 1] - cut[k]);
    }
    return merge_locals(tr, local, rcs, nt);
}

int ds_tok_trainer_feed_many(void *ctx, const char *const *texts, const size_t *lens, size_t n) {
    ds_tok_trainer *tr = ctx;
    int nt = ds_tok_threads();
    size_t small = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] >= (1u << 20) || nt <= 1) DS_TRY(ds_tok_trainer_feed(tr, texts[i], lens[i]));
        else small++;
    }
    if (!small) return 0;
    if (nt > 64) nt = 64;
    word_table *local = calloc((size_t)nt, sizeof *local);
    int *rcs = calloc((size_t)nt, sizeof *rcs);
    if (!local || !rcs) return free(local), free(rcs), ds_fail(DS_ERR, "train: out of memory");
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int k = omp_get_thread_num();
#else
        int k = 0;
#endif
        ds_pretok_state *ps = NULL;
        rcs[k] = wt_init(&local[k]);
        if (!rcs[k]) rcs[k] = ds_pretok_state_new(&ps, &tr->pre);
#pragma omp for schedule(dynamic, 1)
        for (size_t i = 0; i < n; i++) {
            if (lens[i] >= (1u << 20) || rcs[k]) continue;
            rcs[k] = ds_pretok_run(ps, texts[i], lens[i], on_word, &local[k]);
        }
        ds_pretok_state_free(ps);
    }
    return merge_locals(tr, local, rcs, nt);
}

/* ---- merging ------------------------------------------------------------------------------------ */

typedef struct {
    uint32_t *v;
    uint32_t n, cap;
} u32vec;

typedef struct {
    uint64_t count, pair;
} heap_ent;

typedef struct {
    /* words */
    size_t nw;
    uint32_t *sym;
    uint64_t *off, *wcount;
    uint32_t *len, *wmark;
    /* pairs: open addressing DS_PAIR -> index */
    uint64_t *pkey;
    uint32_t *pslot;
    size_t pcap, np, pvcap;
    int64_t *pcount;
    u32vec *where;
    uint64_t *pkey_of; /* index -> pair */
    uint32_t *pstamp;
    uint32_t *touched;
    size_t ntouched, touched_cap;
    /* heap */
    heap_ent *heap;
    size_t hn, hcap;
    uint32_t stamp;
} merge_state;

static int heap_less(heap_ent a, heap_ent b) { /* a ranks below b */
    return a.count != b.count ? a.count < b.count : a.pair > b.pair;
}

static int hpush(merge_state *m, uint64_t count, uint64_t pair) {
    if (m->hn == m->hcap) {
        size_t cap = m->hcap ? 2 * m->hcap : 1024;
        heap_ent *h = realloc(m->heap, cap * sizeof *h);
        if (!h) return ds_fail(DS_ERR, "train: out of memory (pair heap)");
        m->heap = h;
        m->hcap = cap;
    }
    heap_ent v = {count, pair};
    size_t i = m->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(m->heap[p], v)) break;
        m->heap[i] = m->heap[p];
        i = p;
    }
    m->heap[i] = v;
    return 0;
}

static heap_ent hpop(merge_state *m) {
    heap_ent top = m->heap[0], v = m->heap[--m->hn];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m->hn) break;
        if (c + 1 < m->hn && heap_less(m->heap[c], m->heap[c + 1])) c++;
        if (!heap_less(v, m->heap[c])) break;
        m->heap[i] = m->heap[c];
        i = c;
    }
    m->heap[i] = v;
    return top;
}

static int pair_grow(merge_state *m) {
    size_t cap = m->pcap ? 2 * m->pcap : 1 << 16;
    uint64_t *keys = malloc(cap * sizeof *keys);
    uint32_t *slot = malloc(cap * sizeof *slot);
    if (!keys || !slot) return free(keys), free(slot), ds_fail(DS_ERR, "train: out of memory (pair table)");
    memset(keys, 0xff, cap * sizeof *keys);
    for (size_t i = 0; i < m->pcap; i++) {
        if (m->pkey[i] == UINT64_MAX) continue;
        size_t j = ds_hash64(m->pkey[i]) & (cap - 1);
        while (keys[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
        keys[j] = m->pkey[i];
        slot[j] = m->pslot[i];
    }
    free(m->pkey), free(m->pslot);
    m->pkey = keys, m->pslot = slot, m->pcap = cap;
    return 0;
}

/* index of a pair, created with count 0 when new; -1 on allocation failure */
static int64_t pair_index(merge_state *m, uint64_t key) {
    if ((m->np + 1) * 2 > m->pcap && pair_grow(m)) return -1;
    size_t i = ds_hash64(key) & (m->pcap - 1);
    while (m->pkey[i] != UINT64_MAX) {
        if (m->pkey[i] == key) return m->pslot[i];
        i = (i + 1) & (m->pcap - 1);
    }
    if (m->np == m->pvcap) {
        size_t cap = m->pvcap ? 2 * m->pvcap : 1 << 15;
        int64_t *c = realloc(m->pcount, cap * sizeof *c);
        if (c) m->pcount = c;
        u32vec *w = realloc(m->where, cap * sizeof *w);
        if (w) m->where = w;
        uint64_t *k = realloc(m->pkey_of, cap * sizeof *k);
        if (k) m->pkey_of = k;
        uint32_t *s = realloc(m->pstamp, cap * sizeof *s);
        if (s) m->pstamp = s;
        if (!c || !w || !k || !s) return ds_fail(DS_ERR, "train: out of memory (pair table)"), -1;
        m->pvcap = cap;
    }
    uint32_t idx = (uint32_t)m->np++;
    m->pkey[i] = key;
    m->pslot[i] = idx;
    m->pcount[idx] = 0;
    m->where[idx] = (u32vec){0};
    m->pkey_of[idx] = key;
    m->pstamp[idx] = 0;
    return idx;
}

static int vec_push(u32vec *v, uint32_t x) {
    if (v->n && v->v[v->n - 1] == x) return 0;
    if (v->n == v->cap) {
        uint32_t cap = v->cap ? 2 * v->cap : 4;
        uint32_t *p = realloc(v->v, cap * sizeof *p);
        if (!p) return ds_fail(DS_ERR, "train: out of memory (pair positions)");
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 0;
}

/* count[pair] += delta; a pair that gained occurrences remembers the word and is queued for the heap */
static int change(merge_state *m, uint32_t a, uint32_t b, int64_t delta, uint32_t w) {
    int64_t p = pair_index(m, DS_PAIR(a, b));
    if (p < 0) return DS_ERR;
    m->pcount[p] += delta;
    if (delta <= 0) return 0;
    DS_TRY(vec_push(&m->where[p], w));
    if (m->pstamp[p] != m->stamp) {
        m->pstamp[p] = m->stamp;
        if (m->ntouched == m->touched_cap) {
            size_t cap = m->touched_cap ? 2 * m->touched_cap : 1024;
            uint32_t *t = realloc(m->touched, cap * sizeof *t);
            if (!t) return ds_fail(DS_ERR, "train: out of memory");
            m->touched = t;
            m->touched_cap = cap;
        }
        m->touched[m->ntouched++] = (uint32_t)p;
    }
    return 0;
}

static int merge_word(merge_state *m, uint32_t w, uint32_t a, uint32_t b, uint32_t c) {
    uint32_t *s = m->sym + m->off[w];
    uint32_t n = m->len[w], o = 0, r = 0;
    int64_t cnt = (int64_t)m->wcount[w];
    while (r < n) {
        if (s[r] == a && r + 1 < n && s[r + 1] == b) {
            /* the left neighbour is already updated, the right one not yet: HF's order */
            if (o > 0) {
                DS_TRY(change(m, s[o - 1], a, -cnt, w));
                DS_TRY(change(m, s[o - 1], c, cnt, w));
            }
            if (r + 2 < n) {
                DS_TRY(change(m, b, s[r + 2], -cnt, w));
                DS_TRY(change(m, c, s[r + 2], cnt, w));
            }
            s[o++] = c;
            r += 2;
        } else {
            s[o++] = s[r++];
        }
    }
    m->len[w] = o;
    return 0;
}

static void merge_state_free(merge_state *m) {
    free(m->sym), free(m->off), free(m->wcount), free(m->len), free(m->wmark);
    free(m->pkey), free(m->pslot), free(m->pcount), free(m->pkey_of), free(m->pstamp), free(m->touched);
    for (size_t i = 0; i < m->np; i++) free(m->where[i].v);
    free(m->where);
    free(m->heap);
}

/* token strings: raw bytes per id, plus byte-level spelling -> id for merges that recreate a token */
typedef struct {
    uint8_t *bytes;
    uint64_t *off; /* id -> offset; off[id + 1] ends it */
    size_t n, cap, blen, bcap;
    ds_strmap names; /* byte-level string (or special content) -> id */
    uint32_t n_specials;
} token_list;

static int tl_add(token_list *tl, const uint8_t *b, size_t n) {
    if (tl->n + 2 > tl->cap) {
        size_t cap = tl->cap ? 2 * tl->cap : 1024;
        uint64_t *o = realloc(tl->off, cap * sizeof *o);
        if (!o) return ds_fail(DS_ERR, "train: out of memory");
        tl->off = o, tl->cap = cap;
    }
    if (tl->bcap - tl->blen < n) {
        size_t cap = tl->bcap ? tl->bcap : 4096;
        while (cap - tl->blen < n) cap *= 2;
        uint8_t *p = realloc(tl->bytes, cap);
        if (!p) return ds_fail(DS_ERR, "train: out of memory");
        tl->bytes = p, tl->bcap = cap;
    }
    memcpy(tl->bytes + tl->blen, b, n);
    tl->off[tl->n] = tl->blen;
    tl->blen += n;
    tl->off[++tl->n] = tl->blen;
    return 0;
}

static int build_tokenizer(const ds_tok_train_opts *o, token_list *tl, const uint64_t *merges, size_t nm,
                           ds_tokenizer **out) {
    ds_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ds_fail(DS_ERR, "train: out of memory");
    int rc = ds_strmap_init(&t->vocab, tl->n);
    if (!rc) rc = ds_pairmap_init(&t->merges, nm);
    t->merge_list = malloc((nm ? nm : 1) * sizeof *t->merge_list);
    t->added = calloc((size_t)o->n_specials + 1, sizeof *t->added);
    if (!rc && (!t->merge_list || !t->added)) rc = ds_fail(DS_ERR, "train: out of memory");
    char *bl = NULL;
    size_t blcap = 0;
    for (uint32_t id = 0; !rc && id < tl->n; id++) {
        size_t n = (size_t)(tl->off[id + 1] - tl->off[id]);
        if (id < tl->n_specials) {
            ds_added_token *a = &t->added[t->n_added++];
            a->content = malloc(n + 1);
            if (!a->content) { rc = ds_fail(DS_ERR, "train: out of memory"); break; }
            memcpy(a->content, tl->bytes + tl->off[id], n);
            a->content[n] = 0;
            a->len = n, a->id = id, a->special = 1;
            /* HF's trainer also lists special tokens in the model vocabulary */
            if (ds_strmap_insert(&t->vocab, a->content, n, id, NULL) < 0) rc = DS_ERR;
            continue;
        }
        if (2 * n + 1 > blcap) {
            blcap = 4 * n + 16;
            char *p = realloc(bl, blcap);
            if (!p) { rc = ds_fail(DS_ERR, "train: out of memory"); break; }
            bl = p;
        }
        size_t m = ds_bl_encode(tl->bytes + tl->off[id], n, bl);
        if (ds_strmap_insert(&t->vocab, bl, m, id, NULL) < 0) rc = DS_ERR;
    }
    free(bl);
    for (size_t i = 0; !rc && i < nm; i++) {
        t->merge_list[i] = merges[2 * i];
        rc = ds_pairmap_put(&t->merges, merges[2 * i], (uint32_t)i, (uint32_t)merges[2 * i + 1]);
    }
    t->n_merges = nm;
    t->unk_id = -1;
    if (!rc) rc = deepseek_pretok(&t->pre);
    if (!rc) rc = ds_tok_finish(t);
    if (rc) {
        ds_tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int ds_tok_trainer_finish(ds_tok_trainer *tr, const ds_tok_train_opts *o, ds_tokenizer **out) {
    ds_bl_init();
    tr->finished = 1;
    token_list tl = {0};
    merge_state m = {0};
    uint64_t *merges = NULL; /* (pair, new id) per merge */
    size_t nm = 0, mcap = 0;
    int rc = ds_strmap_init(&tl.names, o->vocab_size + 1024);
    /* 1. vocabulary: specials, then the byte alphabet sorted by code point */
    for (int i = 0; !rc && i < o->n_specials; i++) {
        size_t n = strlen(o->specials[i]);
        int found;
        if (!n) rc = ds_fail(DS_ERR, "train: empty special token");
        else if (ds_strmap_insert(&tl.names, o->specials[i], n, (uint32_t)tl.n, &found) < 0) rc = DS_ERR;
        else if (found) rc = ds_fail(DS_ERR, "train: special token '%s' given twice", o->specials[i]);
        else rc = tl_add(&tl, (const uint8_t *)o->specials[i], n);
    }
    tl.n_specials = (uint32_t)tl.n;
    uint32_t byte_id[256];
    for (uint32_t cp = 0; !rc && cp < 324; cp++) {
        int b = ds_bl_cp_to_byte[cp];
        if (b < 0) continue;
        char s[4];
        int n = ds_utf8_encode(cp, s);
        int found;
        byte_id[b] = (uint32_t)tl.n;
        if (ds_strmap_insert(&tl.names, s, (size_t)n, (uint32_t)tl.n, &found) < 0) rc = DS_ERR;
        else if (found) rc = ds_fail(DS_ERR, "train: special token '%.*s' collides with a byte token", n, s);
        else {
            uint8_t byte = (uint8_t)b;
            rc = tl_add(&tl, &byte, 1);
        }
    }
    /* 2. words as symbol arrays */
    word_table *wt = &tr->wt;
    m.nw = wt->words.n;
    m.off = malloc((m.nw + 1) * sizeof *m.off);
    m.len = malloc((m.nw + 1) * sizeof *m.len);
    m.wmark = calloc(m.nw + 1, sizeof *m.wmark);
    m.wcount = wt->count; /* borrowed */
    m.sym = malloc((wt->words.blob_len + 1) * sizeof *m.sym);
    if (!rc && (!m.off || !m.len || !m.wmark || !m.sym)) rc = ds_fail(DS_ERR, "train: out of memory (%zu words)", m.nw);
    uint64_t pos = 0;
    for (size_t w = 0; !rc && w < m.nw; w++) {
        size_t n;
        const uint8_t *s = (const uint8_t *)ds_strmap_key(&wt->words, (int64_t)w, &n);
        m.off[w] = pos;
        m.len[w] = (uint32_t)n;
        for (size_t i = 0; i < n; i++) m.sym[pos + i] = byte_id[s[i]];
        pos += n;
    }
    /* 3. initial pair counts and positions */
    for (size_t w = 0; !rc && w < m.nw; w++) {
        const uint32_t *s = m.sym + m.off[w];
        for (uint32_t i = 0; !rc && i + 1 < m.len[w]; i++) rc = change(&m, s[i], s[i + 1], (int64_t)m.wcount[w], (uint32_t)w);
    }
    for (size_t p = 0; !rc && p < m.np; p++)
        if (m.pcount[p] > 0) rc = hpush(&m, (uint64_t)m.pcount[p], m.pkey_of[p]);
    m.ntouched = 0;
    /* 4. the merge loop */
    ds_progress prog;
    if (o->progress) ds_progress_begin(&prog, "merges", "merges", o->vocab_size > tl.n ? o->vocab_size - tl.n : 0);
    uint32_t target0 = (uint32_t)tl.n;
    uint8_t *cat = NULL;
    char *blcat = NULL;
    size_t catcap = 0;
    while (!rc && tl.n < o->vocab_size && m.hn) {
        heap_ent top = hpop(&m);
        int64_t p = pair_index(&m, top.pair);
        if (p < 0) { rc = DS_ERR; break; }
        if ((uint64_t)(m.pcount[p] > 0 ? m.pcount[p] : 0) != top.count) {
            if (m.pcount[p] > 0) rc = hpush(&m, (uint64_t)m.pcount[p], top.pair);
            continue;
        }
        if (top.count < 1 || top.count < o->min_frequency) break;
        uint32_t a = (uint32_t)(top.pair >> 32), b = (uint32_t)top.pair;
        size_t na = (size_t)(tl.off[a + 1] - tl.off[a]), nb = (size_t)(tl.off[b + 1] - tl.off[b]);
        if (na + nb > catcap) {
            catcap = 2 * (na + nb);
            uint8_t *c1 = realloc(cat, catcap);
            char *c2 = c1 ? realloc(blcat, 2 * catcap) : NULL;
            if (c1) cat = c1;
            if (c2) blcat = c2;
            if (!c1 || !c2) { rc = ds_fail(DS_ERR, "train: out of memory"); break; }
        }
        memcpy(cat, tl.bytes + tl.off[a], na);
        memcpy(cat + na, tl.bytes + tl.off[b], nb);
        size_t nbl = ds_bl_encode(cat, na + nb, blcat);
        int found;
        int64_t e = ds_strmap_insert(&tl.names, blcat, nbl, (uint32_t)tl.n, &found);
        if (e < 0) { rc = DS_ERR; break; }
        uint32_t c = tl.names.ent[e].val;
        if (found && c < tl.n_specials) {
            /* the merge would spell a special token: refuse it, so plain text can never produce one */
            m.pcount[p] = 0;
            continue;
        }
        if (!found && (rc = tl_add(&tl, cat, na + nb))) break;
        if (nm == mcap) {
            mcap = mcap ? 2 * mcap : 4096;
            uint64_t *v = realloc(merges, 2 * mcap * sizeof *v);
            if (!v) { rc = ds_fail(DS_ERR, "train: out of memory"); break; }
            merges = v;
        }
        merges[2 * nm] = top.pair;
        merges[2 * nm + 1] = c;
        nm++;
        /* apply it in every word that holds the pair, updating neighbour pair counts */
        m.stamp++;
        m.ntouched = 0;
        u32vec where = m.where[p];
        m.where[p] = (u32vec){0};
        for (uint32_t k = 0; !rc && k < where.n; k++) {
            uint32_t w = where.v[k];
            if (m.wmark[w] == m.stamp) continue;
            m.wmark[w] = m.stamp;
            rc = merge_word(&m, w, a, b, c);
        }
        free(where.v);
        m.pcount[p] = 0;
        for (size_t k = 0; !rc && k < m.ntouched; k++) {
            uint32_t q = m.touched[k];
            if (m.pcount[q] > 0) rc = hpush(&m, (uint64_t)m.pcount[q], m.pkey_of[q]);
        }
        if (o->progress) ds_progress_update(&prog, tl.n - target0);
    }
    if (o->progress) ds_progress_end(&prog);
    free(cat);
    free(blcat);
    if (!rc) rc = build_tokenizer(o, &tl, merges, nm, out);
    free(merges);
    m.wcount = NULL;
    merge_state_free(&m);
    free(tl.bytes), free(tl.off);
    ds_strmap_free(&tl.names);
    return rc;
}
