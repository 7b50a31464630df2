/* tokenizer.c — tokenizer.json in and out, id <-> bytes tables, decoding and token lookups. */
#include "tok/tokenizer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "io/kind.h"
#include "tok/internal.h"

#define MAX_VOCAB (1u << 24) /* ids beyond this are surely a corrupt file; 16M is ~100x real vocabularies */

void ds_tok_free(ds_tokenizer *t) {
    if (!t) return;
    free(t->tok_off);
    free(t->tok_bytes);
    free(t->tok_kind);
    ds_pairmap_free(&t->merges);
    free(t->merge_list);
    ds_strmap_free(&t->vocab);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    ds_pretok_free(&t->pre);
    free(t->json);
    free(t);
}

uint32_t ds_tok_vocab_size(const ds_tokenizer *t) { return t->vocab_size; }
size_t ds_tok_n_merges(const ds_tokenizer *t) { return t->n_merges; }

int ds_tok_is_special(const ds_tokenizer *t, uint32_t id) { return id < t->vocab_size && t->tok_kind[id] == 3; }

const uint8_t *ds_tok_token_bytes(const ds_tokenizer *t, uint32_t id, size_t *len) {
    if (id >= t->vocab_size || !t->tok_kind[id]) return *len = 0, NULL;
    *len = (size_t)(t->tok_off[id + 1] - t->tok_off[id]);
    return t->tok_bytes + t->tok_off[id];
}

int64_t ds_tok_token_id(const ds_tokenizer *t, const char *text) {
    size_t n = strlen(text);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, text, n)) return t->added[i].id;
    char *bl = malloc(2 * n + 1);
    if (!bl) return -1;
    size_t m = ds_bl_encode((const uint8_t *)text, n, bl);
    int64_t e = ds_strmap_find(&t->vocab, bl, m);
    free(bl);
    return e >= 0 ? t->vocab.ent[e].val : -1;
}

int ds_tok_decode(const ds_tokenizer *t, const uint32_t *ids, size_t n, ds_bytes *out) {
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= t->vocab_size || !t->tok_kind[id])
            return ds_fail(DS_ERR, "decode: token id %u is not in the vocabulary (size %u)", id, t->vocab_size);
        size_t len = (size_t)(t->tok_off[id + 1] - t->tok_off[id]);
        DS_TRY(ds_bytes_reserve(out, len));
        memcpy(out->v + out->n, t->tok_bytes + t->tok_off[id], len);
        out->n += len;
    }
    return 0;
}

/* ---- derived tables ----------------------------------------------------------------------------- */

static int cmp_added(const void *a, const void *b) {
    const ds_added_token *x = a, *y = b;
    unsigned char fx = (unsigned char)x->content[0], fy = (unsigned char)y->content[0];
    if (fx != fy) return fx < fy ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int ds_tok_finish(ds_tokenizer *t) {
    ds_bl_init();
    uint64_t max_id = 0;
    int any = 0;
    for (size_t e = 0; e < t->vocab.n; e++) max_id = t->vocab.ent[e].val > max_id ? t->vocab.ent[e].val : max_id, any = 1;
    for (int i = 0; i < t->n_added; i++) max_id = t->added[i].id > max_id ? t->added[i].id : max_id, any = 1;
    if (!any) return ds_fail(DS_ERR, "tokenizer has an empty vocabulary");
    t->vocab_size = (uint32_t)max_id + 1;
    /* the bytes each id decodes to: HF's ByteLevel decoder maps a token whose characters are all in the
     * byte alphabet back to bytes, and passes any other token (e.g. "<｜User｜>") through as UTF-8 */
    size_t total = t->vocab.blob_len;
    for (int i = 0; i < t->n_added; i++) total += t->added[i].len;
    free(t->tok_off), free(t->tok_bytes), free(t->tok_kind);
    t->tok_off = calloc((size_t)t->vocab_size + 1, sizeof *t->tok_off);
    t->tok_kind = calloc(t->vocab_size, 1);
    t->tok_bytes = malloc(total + 1);
    uint32_t *src = malloc((size_t)t->vocab_size * sizeof *src); /* entry index + 1, or added index | top bit */
    if (!t->tok_off || !t->tok_kind || !t->tok_bytes || !src) return free(src), ds_fail(DS_ERR, "tokenizer: out of memory");
    memset(src, 0, (size_t)t->vocab_size * sizeof *src);
    /* one id, one meaning: decode must be unambiguous */
    for (size_t e = 0; e < t->vocab.n; e++) {
        uint32_t id = t->vocab.ent[e].val;
        if (src[id]) {
            size_t n1, n2;
            const char *a = ds_strmap_key(&t->vocab, src[id] - 1, &n1), *b = ds_strmap_key(&t->vocab, (int64_t)e, &n2);
            free(src);
            return ds_fail(DS_ERR, "model.vocab: id %u is given to both '%.*s' and '%.*s'", id, (int)n1, a, (int)n2, b);
        }
        src[id] = (uint32_t)e + 1, t->tok_kind[id] = 1;
    }
    for (int i = 0; i < t->n_added; i++) {
        const ds_added_token *a = &t->added[i];
        if (src[a->id]) {
            size_t n;
            const char *k = (src[a->id] & 0x80000000u) ? NULL : ds_strmap_key(&t->vocab, src[a->id] - 1, &n);
            if (!k || n != a->len || memcmp(k, a->content, n)) {
                free(src);
                return ds_fail(DS_ERR, "added_tokens: id %u of '%s' already belongs to another token", a->id, a->content);
            }
        }
        src[a->id] = 0x80000000u | (uint32_t)i;
        t->tok_kind[a->id] = a->special ? 3 : 2;
    }
    uint64_t off = 0;
    for (uint32_t id = 0; id < t->vocab_size; id++) {
        t->tok_off[id] = off;
        if (!t->tok_kind[id]) continue;
        const char *s;
        size_t n;
        if (src[id] & 0x80000000u) {
            const ds_added_token *a = &t->added[src[id] & 0x7fffffffu];
            s = a->content, n = a->len;
        } else {
            s = ds_strmap_key(&t->vocab, src[id] - 1, &n);
        }
        long m = ds_bl_decode(s, n, t->tok_bytes + off);
        if (m < 0) memcpy(t->tok_bytes + off, s, n), m = (long)n;
        off += (uint64_t)m;
    }
    t->tok_off[t->vocab_size] = off;
    free(src);
    for (int b = 0; b < 256; b++) {
        char s[4];
        int n = ds_utf8_encode(ds_bl_byte_to_cp[b], s);
        int64_t e = ds_strmap_find(&t->vocab, s, (size_t)n);
        t->byte_id[b] = e >= 0 ? (int32_t)t->vocab.ent[e].val : -1;
    }
    if (t->n_added) qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    for (int b = 0; b < 256; b++) t->added_first[b] = -1;
    t->added_crosses_lines = 0;
    t->n_plain_added = 0;
    for (int i = 0; i < t->n_added; i++) t->n_plain_added += !t->added[i].special;
    for (int i = t->n_added - 1; i >= 0; i--) {
        t->added_first[(unsigned char)t->added[i].content[0]] = i;
        for (size_t k = 0; k + 1 < t->added[i].len; k++) {
            char c = t->added[i].content[k + 1];
            if (t->added[i].content[k] == '\n' && c > ' ' && c < 0x7f) t->added_crosses_lines = 1;
        }
    }
    return 0;
}

/* ---- loading ------------------------------------------------------------------------------------ */

static int is_null_or(json_t *v, int (*ok)(json_t *)) { return !v || json_is_null(v) || ok(v); }
static int zero_number(json_t *v) { return json_is_number(v) && json_number_value(v) == 0; }
static int empty_string(json_t *v) { return json_is_string(v) && json_string_length(v) == 0; }
static int is_false(json_t *v) { return json_is_false(v); }

static int get_id(json_t *v, uint32_t *id, const char *what) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (json_int_t)MAX_VOCAB)
        return ds_fail(DS_ERR, "%s: id must be an integer in [0, %u)", what, MAX_VOCAB);
    *id = (uint32_t)json_integer_value(v);
    return 0;
}

static int flag(json_t *o, const char *key) { return json_is_true(json_object_get(o, key)); }

static int load_added(ds_tokenizer *t, json_t *arr) {
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return ds_fail(DS_ERR, "added_tokens: not an array");
    size_t n = json_array_size(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) return ds_fail(DS_ERR, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i), *c = json_object_get(o, "content");
        if (!json_is_object(o) || !json_is_string(c) || json_string_length(c) == 0)
            return ds_fail(DS_ERR, "added_tokens[%zu]: needs a non-empty string \"content\"", i);
        ds_added_token *a = &t->added[t->n_added];
        char what[64];
        snprintf(what, sizeof what, "added_tokens[%zu]", i);
        DS_TRY(get_id(json_object_get(o, "id"), &a->id, what));
        a->len = json_string_length(c);
        a->content = malloc(a->len + 1);
        if (!a->content) return ds_fail(DS_ERR, "tokenizer: out of memory");
        memcpy(a->content, json_string_value(c), a->len + 1);
        a->special = flag(o, "special");
        a->lstrip = flag(o, "lstrip");
        a->rstrip = flag(o, "rstrip");
        a->single_word = flag(o, "single_word");
        json_t *norm = json_object_get(o, "normalized");
        a->normalized = norm ? json_is_true(norm) : !a->special;
        t->n_added++;
    }
    return 0;
}

static int load_pretok_step(ds_tokenizer *t, json_t *o, int *saw_bytelevel) {
    const char *type = json_string_value(json_object_get(o, "type"));
    if (!type) return ds_fail(DS_ERR, "pre_tokenizer: step without a \"type\"");
    if (*saw_bytelevel) return ds_fail(DS_ERR, "pre_tokenizer: unsupported: a %s step after ByteLevel", type);
    if (!strcmp(type, "ByteLevel")) {
        json_t *ur = json_object_get(o, "use_regex");
        *saw_bytelevel = 1;
        return ds_pretok_add_bytelevel(&t->pre, flag(o, "add_prefix_space"), ur ? json_is_true(ur) : 1);
    }
    if (strcmp(type, "Split")) return ds_fail(DS_ERR, "pre_tokenizer: unsupported type '%s' (supported: Sequence, Split, ByteLevel)", type);
    json_t *pat = json_object_get(o, "pattern"), *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
    json_t *p = json_is_string(re) ? re : lit;
    if (!json_is_string(p)) return ds_fail(DS_ERR, "pre_tokenizer: Split needs a pattern {\"Regex\": ...} or {\"String\": ...}");
    static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    const char *b = json_string_value(json_object_get(o, "behavior"));
    int behavior = -1;
    for (int i = 0; b && i < 5; i++)
        if (!strcmp(b, names[i])) behavior = i;
    if (behavior < 0) return ds_fail(DS_ERR, "pre_tokenizer: Split: unknown behavior '%s'", b ? b : "(missing)");
    return ds_pretok_add_split(&t->pre, json_string_value(p), json_string_length(p), p == lit, behavior, flag(o, "invert"));
}

static int load_pretok(ds_tokenizer *t, json_t *pt) {
    int saw = 0;
    if (!pt || json_is_null(pt)) return ds_fail(DS_ERR, "not a byte-level BPE: pre_tokenizer is null (no ByteLevel step)");
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (type && !strcmp(type, "Sequence")) {
        json_t *steps = json_object_get(pt, "pretokenizers");
        if (!json_is_array(steps)) return ds_fail(DS_ERR, "pre_tokenizer: Sequence without a \"pretokenizers\" array");
        for (size_t i = 0; i < json_array_size(steps); i++) DS_TRY(load_pretok_step(t, json_array_get(steps, i), &saw));
    } else {
        DS_TRY(load_pretok_step(t, pt, &saw));
    }
    if (!saw) return ds_fail(DS_ERR, "not a byte-level BPE: pre_tokenizer has no ByteLevel step");
    return 0;
}

static int load_normalizer(json_t *n) {
    if (!n || json_is_null(n)) return 0;
    const char *type = json_string_value(json_object_get(n, "type"));
    json_t *list = json_object_get(n, "normalizers");
    if (type && !strcmp(type, "Sequence") && json_is_array(list) && json_array_size(list) == 0) return 0;
    return ds_fail(DS_ERR, "unsupported normalizer '%s' (byte-level BPE takes none)", type ? type : "?");
}

static int merge_parts(json_t *m, size_t i, const char **a, size_t *na, const char **b, size_t *nb) {
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0)), *na = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1)), *nb = json_string_length(json_array_get(m, 1));
        return 0;
    }
    if (json_is_string(m)) {
        const char *s = json_string_value(m), *sp = memchr(s, ' ', json_string_length(m));
        if (sp && !memchr(sp + 1, ' ', json_string_length(m) - (size_t)(sp + 1 - s))) {
            *a = s, *na = (size_t)(sp - s), *b = sp + 1, *nb = json_string_length(m) - *na - 1;
            return 0;
        }
    }
    return ds_fail(DS_ERR, "model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", i);
}

static int load_model(ds_tokenizer *t, json_t *model) {
    if (!json_is_object(model)) return ds_fail(DS_ERR, "no \"model\" object");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (type && strcmp(type, "BPE")) return ds_fail(DS_ERR, "unknown model type '%s' (only BPE is supported)", type);
    if (!type && !merges) return ds_fail(DS_ERR, "unknown model type (no \"type\" and no merges)");
    if (!json_is_object(vocab)) return ds_fail(DS_ERR, "model.vocab: not an object");
    if (!json_is_array(merges)) return ds_fail(DS_ERR, "model.merges: not an array");
    if (json_array_size(merges) == 0) return ds_fail(DS_ERR, "model.merges is empty: a BPE without merges is not a tokenizer");
    if (!is_null_or(json_object_get(model, "dropout"), zero_number)) return ds_fail(DS_ERR, "model.dropout is set: BPE dropout is not supported");
    if (!is_null_or(json_object_get(model, "continuing_subword_prefix"), empty_string) ||
        !is_null_or(json_object_get(model, "end_of_word_suffix"), empty_string))
        return ds_fail(DS_ERR, "model: continuing_subword_prefix / end_of_word_suffix are not supported in byte-level BPE");
    (void)is_false;
    t->ignore_merges = flag(model, "ignore_merges");
    t->fuse_unk = flag(model, "fuse_unk");
    DS_TRY(ds_strmap_init(&t->vocab, json_object_size(vocab)));
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        uint32_t id = 0;
        char what[48];
        snprintf(what, sizeof what, "model.vocab entry %zu", t->vocab.n);
        DS_TRY(get_id(val, &id, what));
        int found;
        if (ds_strmap_insert(&t->vocab, key, strlen(key), id, &found) < 0) return DS_ERR;
    }
    t->unk_id = -1;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) {
        int64_t e = ds_strmap_find(&t->vocab, unk, strlen(unk));
        if (e >= 0) t->unk_id = t->vocab.ent[e].val;
    }
    size_t nm = json_array_size(merges);
    t->merge_list = malloc(nm * sizeof *t->merge_list);
    if (!t->merge_list) return ds_fail(DS_ERR, "tokenizer: out of memory");
    DS_TRY(ds_pairmap_init(&t->merges, nm));
    char *cat = NULL;
    size_t catcap = 0;
    for (size_t i = 0; i < nm; i++) {
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (merge_parts(json_array_get(merges, i), i, &a, &na, &b, &nb)) return free(cat), DS_ERR;
        int64_t ea = ds_strmap_find(&t->vocab, a, na), eb = ds_strmap_find(&t->vocab, b, nb);
        if (na + nb > catcap) {
            catcap = 2 * (na + nb);
            char *c = realloc(cat, catcap);
            if (!c) return free(cat), ds_fail(DS_ERR, "tokenizer: out of memory");
            cat = c;
        }
        memcpy(cat, a, na), memcpy(cat + na, b, nb);
        int64_t ec = ds_strmap_find(&t->vocab, cat, na + nb);
        if (ea < 0 || eb < 0 || ec < 0) {
            free(cat);
            return ds_fail(DS_ERR, "model.merges[%zu]: '%.*s' + '%.*s': %s not in the vocabulary", i, (int)na, a, (int)nb, b,
                           ea < 0 || eb < 0 ? "a part is" : "the merged token is");
        }
        uint64_t key2 = DS_PAIR(t->vocab.ent[ea].val, t->vocab.ent[eb].val);
        t->merge_list[i] = key2;
        if (ds_pairmap_put(&t->merges, key2, (uint32_t)i, t->vocab.ent[ec].val)) return free(cat), DS_ERR;
    }
    free(cat);
    t->n_merges = nm;
    return 0;
}

int ds_tok_from_json(ds_tokenizer **out, const char *json, size_t len, const char *where) {
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) return ds_fail(DS_ERR, "tokenizer.json: %s (line %d, column %d): %s", jerr.text, jerr.line, jerr.column, where);
    ds_tokenizer *t = calloc(1, sizeof *t);
    int rc = t ? 0 : ds_fail(DS_ERR, "tokenizer: out of memory");
    if (!rc && !json_is_object(root)) rc = ds_fail(DS_ERR, "tokenizer.json: not a JSON object");
    if (!rc) rc = load_model(t, json_object_get(root, "model"));
    if (!rc) rc = load_added(t, json_object_get(root, "added_tokens"));
    if (!rc) rc = load_normalizer(json_object_get(root, "normalizer"));
    if (!rc) rc = load_pretok(t, json_object_get(root, "pre_tokenizer"));
    if (!rc) rc = ds_tok_finish(t);
    if (!rc) {
        for (int b = 0; b < 256 && !rc; b++)
            if (t->byte_id[b] < 0 && t->unk_id < 0)
                rc = ds_fail(DS_ERR, "not a byte-level BPE: byte 0x%02x has no token in the vocabulary", b);
    }
    if (!rc) {
        t->json = malloc(len + 1);
        if (!t->json) rc = ds_fail(DS_ERR, "tokenizer: out of memory");
        else memcpy(t->json, json, len), t->json[len] = 0, t->json_len = len;
    }
    json_decref(root);
    if (rc) {
        ds_tok_free(t);
        return ds_fail_ctx(rc, "%s", where);
    }
    *out = t;
    return 0;
}

int ds_tok_explain_kind(int rc, const char *path) {
    static const ds_kind takes[] = {DS_KIND_TOKENIZER, DS_KIND_JSON, DS_KIND_UNKNOWN};
    return ds_kind_explain(rc, path, "tokenizer.json", "a tokenizer.json", takes);
}

int ds_tok_load(ds_tokenizer **out, const char *path) {
    char *data;
    size_t len;
    int rc = ds_read_file(path, &data, &len, (size_t)4 << 30);
    if (!rc) {
        rc = ds_tok_from_json(out, data, len, ds_is_stdio(path) ? "<stdin>" : path);
        free(data);
    }
    return ds_tok_explain_kind(rc, path);
}

/* ---- writing ------------------------------------------------------------------------------------ */

static void write_model_token(ds_jsonw *w, const ds_tokenizer *t, uint32_t id) {
    size_t n;
    const uint8_t *b = ds_tok_token_bytes(t, id, &n);
    char *s = malloc(2 * n + 1);
    if (!s) return;
    size_t m = ds_bl_encode(b, n, s);
    ds_jsonw_strn(w, s, m);
    free(s);
}

static void write_pretok(ds_jsonw *w, const ds_pretok *p) {
    static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    ds_jsonw_key(w, "pre_tokenizer");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "type", "Sequence");
    ds_jsonw_key(w, "pretokenizers");
    ds_jsonw_arr_begin(w);
    for (int i = 0; i < p->n; i++) {
        const ds_pretok_step *st = &p->step[i];
        ds_jsonw_obj_begin(w);
        if (st->kind == DS_PRE_SPLIT) {
            ds_jsonw_kstr(w, "type", "Split");
            ds_jsonw_key(w, "pattern");
            ds_jsonw_obj_begin(w);
            ds_jsonw_kstr(w, st->literal ? "String" : "Regex", st->source);
            ds_jsonw_obj_end(w);
            ds_jsonw_kstr(w, "behavior", names[st->behavior]);
            ds_jsonw_kbool(w, "invert", st->invert);
        } else {
            ds_jsonw_kstr(w, "type", "ByteLevel");
            ds_jsonw_kbool(w, "add_prefix_space", st->add_prefix_space);
            ds_jsonw_kbool(w, "trim_offsets", 0);
            ds_jsonw_kbool(w, "use_regex", st->use_regex);
        }
        ds_jsonw_obj_end(w);
    }
    ds_jsonw_arr_end(w);
    ds_jsonw_obj_end(w);
}

/* A trained tokenizer in HF's layout; the post-processor prepends BOS (id of the first special token
 * named like DeepSeek's BOS) as DeepSeek-V3's tokenizer.json does. */
static int render_json(const ds_tokenizer *t, ds_jsonw *w) {
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "version", "1.0");
    ds_jsonw_key(w, "truncation"), ds_jsonw_null(w);
    ds_jsonw_key(w, "padding"), ds_jsonw_null(w);
    ds_jsonw_key(w, "added_tokens");
    ds_jsonw_arr_begin(w);
    /* in id order, as HF writes them */
    for (uint32_t id = 0; id < t->vocab_size; id++) {
        for (int i = 0; i < t->n_added; i++) {
            const ds_added_token *a = &t->added[i];
            if (a->id != id) continue;
            ds_jsonw_obj_begin(w);
            ds_jsonw_kint(w, "id", a->id);
            ds_jsonw_key(w, "content"), ds_jsonw_strn(w, a->content, a->len);
            ds_jsonw_kbool(w, "single_word", a->single_word);
            ds_jsonw_kbool(w, "lstrip", a->lstrip);
            ds_jsonw_kbool(w, "rstrip", a->rstrip);
            ds_jsonw_kbool(w, "normalized", a->normalized);
            ds_jsonw_kbool(w, "special", a->special);
            ds_jsonw_obj_end(w);
        }
    }
    ds_jsonw_arr_end(w);
    ds_jsonw_key(w, "normalizer"), ds_jsonw_null(w);
    write_pretok(w, &t->pre);
    int64_t bos = ds_tok_token_id(t, "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    ds_jsonw_key(w, "post_processor");
    if (bos >= 0) {
        const char *bos_s = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
        ds_jsonw_obj_begin(w);
        ds_jsonw_kstr(w, "type", "TemplateProcessing");
        for (int pair = 0; pair < 2; pair++) {
            ds_jsonw_key(w, pair ? "pair" : "single");
            ds_jsonw_arr_begin(w);
            for (int k = 0; k < (pair ? 4 : 2); k++) {
                ds_jsonw_obj_begin(w);
                if (k % 2 == 0) {
                    ds_jsonw_key(w, "SpecialToken"), ds_jsonw_obj_begin(w), ds_jsonw_kstr(w, "id", bos_s);
                } else {
                    ds_jsonw_key(w, "Sequence"), ds_jsonw_obj_begin(w), ds_jsonw_kstr(w, "id", k == 1 ? "A" : "B");
                }
                ds_jsonw_kint(w, "type_id", k >= 2);
                ds_jsonw_obj_end(w);
                ds_jsonw_obj_end(w);
            }
            ds_jsonw_arr_end(w);
        }
        ds_jsonw_key(w, "special_tokens");
        ds_jsonw_obj_begin(w);
        ds_jsonw_key(w, bos_s);
        ds_jsonw_obj_begin(w);
        ds_jsonw_kstr(w, "id", bos_s);
        ds_jsonw_key(w, "ids"), ds_jsonw_arr_begin(w), ds_jsonw_int(w, bos), ds_jsonw_arr_end(w);
        ds_jsonw_key(w, "tokens"), ds_jsonw_arr_begin(w), ds_jsonw_str(w, bos_s), ds_jsonw_arr_end(w);
        ds_jsonw_obj_end(w);
        ds_jsonw_obj_end(w);
        ds_jsonw_obj_end(w);
    } else {
        ds_jsonw_null(w);
    }
    ds_jsonw_key(w, "decoder");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "type", "ByteLevel");
    ds_jsonw_kbool(w, "add_prefix_space", 1);
    ds_jsonw_kbool(w, "trim_offsets", 1);
    ds_jsonw_kbool(w, "use_regex", 1);
    ds_jsonw_obj_end(w);
    ds_jsonw_key(w, "model");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "type", "BPE");
    ds_jsonw_key(w, "dropout"), ds_jsonw_null(w);
    ds_jsonw_key(w, "unk_token"), ds_jsonw_null(w);
    ds_jsonw_key(w, "continuing_subword_prefix"), ds_jsonw_null(w);
    ds_jsonw_key(w, "end_of_word_suffix"), ds_jsonw_null(w);
    ds_jsonw_kbool(w, "fuse_unk", 0);
    ds_jsonw_kbool(w, "byte_fallback", 0);
    ds_jsonw_kbool(w, "ignore_merges", 0);
    ds_jsonw_key(w, "vocab");
    ds_jsonw_obj_begin(w);
    /* HF keeps added tokens in the model vocabulary too (the trainer puts special tokens first) */
    for (uint32_t id = 0; id < t->vocab_size; id++) {
        if (t->tok_kind[id] == 1) {
            size_t n;
            const uint8_t *b = ds_tok_token_bytes(t, id, &n);
            char *s = malloc(2 * n + 1);
            if (!s) return ds_fail(DS_ERR, "tokenizer: out of memory");
            size_t m = ds_bl_encode(b, n, s);
            s[m] = 0;
            ds_jsonw_key(w, s);
            free(s);
            ds_jsonw_int(w, id);
        } else if (t->tok_kind[id]) {
            for (int i = 0; i < t->n_added; i++)
                if (t->added[i].id == id) ds_jsonw_key(w, t->added[i].content), ds_jsonw_int(w, id);
        }
    }
    ds_jsonw_obj_end(w);
    ds_jsonw_key(w, "merges");
    ds_jsonw_arr_begin(w);
    for (size_t i = 0; i < t->n_merges; i++) {
        ds_jsonw_arr_begin(w);
        write_model_token(w, t, (uint32_t)(t->merge_list[i] >> 32));
        write_model_token(w, t, (uint32_t)t->merge_list[i]);
        ds_jsonw_arr_end(w);
    }
    ds_jsonw_arr_end(w);
    ds_jsonw_obj_end(w);
    ds_jsonw_obj_end(w);
    return 0;
}

int ds_tok_to_json(const ds_tokenizer *t, char **json, size_t *len) {
    if (t->json) {
        *json = malloc(t->json_len + 1);
        if (!*json) return ds_fail(DS_ERR, "tokenizer: out of memory");
        memcpy(*json, t->json, t->json_len + 1);
        *len = t->json_len;
        return 0;
    }
    ds_jsonw w;
    ds_jsonw_init(&w);
    int rc = render_json(t, &w);
    if (rc) return ds_jsonw_free(&w), rc;
    *json = w.buf;
    *len = w.len;
    return 0;
}

int ds_tok_save(const ds_tokenizer *t, const char *path) {
    char *json = NULL;
    size_t len = 0;
    DS_TRY(ds_tok_to_json(t, &json, &len));
    ds_atomic a;
    int rc = ds_atomic_open(&a, path);
    if (!rc) rc = ds_write_all(a.f, json, len, path);
    if (!rc) rc = ds_write_all(a.f, "\n", 1, path);
    if (!rc) rc = ds_atomic_commit(&a);
    else ds_atomic_abort(&a);
    free(json);
    return rc;
}
