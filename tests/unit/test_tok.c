/* Unit tests for lib/tok: byte alphabet, pre-tokenizer pieces, BPE merging against a naive reference,
 * trainer order on a hand-computed case, JSON round trips, special tokens and clean errors. */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "tap.h"
#include "tok/internal.h"
#include "tok/pretok.h"
#include "tok/tokenizer.h"
#include "tok/train.h"

static const char *const text_en =
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!\n"
    "Numbers 12345 and 2024-01-01, code: if (x != y) { return x + y; }\n"
    "    indented line\twith tabs\n\nUnicode: café naïve 東京 ひらがな 😀 ünïcödé\n";

static ds_tokenizer *train_on(const char *text, uint32_t vocab, const char *const *specials, int nspecials) {
    ds_tok_trainer *tr;
    ds_tokenizer *t = NULL;
    if (ds_tok_trainer_new(&tr)) return NULL;
    ds_tok_trainer_feed(tr, text, strlen(text));
    ds_tok_train_opts o = {.vocab_size = vocab, .specials = specials, .n_specials = nspecials};
    if (ds_tok_trainer_finish(tr, &o, &t)) t = NULL;
    ds_tok_trainer_free(tr);
    return t;
}

TEST(byte_alphabet) {
    ds_bl_init();
    int seen[324] = {0}, ok = 1;
    for (int b = 0; b < 256; b++) {
        int cp = ds_bl_byte_to_cp[b];
        if (cp >= 324 || seen[cp]++ || ds_bl_cp_to_byte[cp] != b) ok = 0;
    }
    CHECK(ok, "256 bytes map to distinct code points and back");
    CHECK(ds_bl_byte_to_cp[' '] == 0x120 && ds_bl_byte_to_cp['\n'] == 0x10a && ds_bl_byte_to_cp['A'] == 'A',
          "GPT-2 mapping: space -> U+0120, newline -> U+010A, 'A' -> 'A'");
}

typedef struct {
    char out[64][32];
    int n;
} pieces;

static int collect(void *ctx, const char *p, size_t n) {
    pieces *ps = ctx;
    if (ps->n < 64 && n < 32) memcpy(ps->out[ps->n], p, n), ps->out[ps->n][n] = 0;
    ps->n++;
    return 0;
}

static void check_pieces(const ds_pretok *pre, const char *text, const char *const *want, int nwant) {
    ds_pretok_state *s;
    pieces ps = {0};
    CHECK(!ds_pretok_state_new(&s, pre), "state");
    CHECK(!ds_pretok_run(s, text, strlen(text), collect, &ps), "run");
    int ok = ps.n == nwant;
    for (int i = 0; ok && i < nwant; i++) ok = !strcmp(ps.out[i], want[i]);
    CHECK(ok, "pieces of \"%s\": got %d pieces, first '%s'", text, ps.n, ps.n ? ps.out[0] : "");
    ds_pretok_state_free(s);
}

TEST(pretokenizer_deepseek) {
    ds_pretok p = {0};
    for (int i = 0; i < 3; i++) ds_pretok_add_split(&p, ds_pretok_deepseek_v3[i], strlen(ds_pretok_deepseek_v3[i]), 0, DS_SPLIT_ISOLATED, 0);
    ds_pretok_add_bytelevel(&p, 0, 0);
    const char *w1[] = {"Hello", " world", " ", "123", "45"};
    check_pieces(&p, "Hello world 12345", w1, 5);
    const char *w2[] = {".Net", " is", "!\n", "  ", " x"};
    check_pieces(&p, ".Net is!\n   x", w2, 5);
    const char *w3[] = {"東京", "は", "ひらがな"}; /* は is hiragana: pattern 2 takes the whole kana/kanji run */
    (void)w3;
    const char *w4[] = {"東京はひらがな"};
    check_pieces(&p, "東京はひらがな", w4, 1);
    CHECK(ds_pretok_chunkable(&p), "the DeepSeek pre-tokenizer may be cut at newline+letter");
    ds_pretok_free(&p);
    ds_pretok g = {0};
    ds_pretok_add_bytelevel(&g, 0, 1);
    const char *w6[] = {"I", "'m", " fine", ",", "  ", " ok"};
    check_pieces(&g, "I'm fine,   ok", w6, 6);
    /* U+0085 is whitespace, as in Oniguruma: it joins the trailing space instead of standing alone */
    const char *w5[] = {"x", "\xc2\x85 "};
    check_pieces(&g, "x\xc2\x85 ", w5, 2);
    ds_pretok_free(&g);
    ds_pretok q = {0};
    CHECK(!ds_pretok_add_split(&q, "-", 1, 1, DS_SPLIT_MERGED_PREV, 0), "literal pattern: %s", ds_errmsg());
    ds_pretok_add_bytelevel(&q, 0, 0);
    const char *w7[] = {"the-", "final-", "-", "countdown"};
    check_pieces(&q, "the-final--countdown", w7, 4);
    ds_pretok_free(&q);
}

/* Naive BPE: repeatedly find the lowest-rank adjacent pair by scanning, merge its leftmost occurrence. */
static size_t naive_bpe(const ds_tokenizer *t, const uint8_t *p, size_t n, uint32_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = (uint32_t)t->byte_id[p[i]];
    for (;;) {
        uint32_t best = UINT32_MAX, merged = 0;
        size_t at = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            int64_t k = ds_pairmap_find(&t->merges, DS_PAIR(out[i], out[i + 1]));
            if (k >= 0 && t->merges.rank[k] < best) best = t->merges.rank[k], merged = t->merges.merged[k], at = i;
        }
        if (best == UINT32_MAX) return n;
        out[at] = merged;
        memmove(out + at + 1, out + at + 2, (n - at - 2) * sizeof *out);
        n--;
    }
}

typedef struct {
    ds_tokenizer *t;
    ds_ids *ids;
    int bad;
} piece_check;

static int check_piece(void *ctx, const char *p, size_t n) {
    piece_check *c = ctx;
    uint32_t *ref = malloc(n * sizeof *ref);
    size_t m = naive_bpe(c->t, (const uint8_t *)p, n, ref);
    for (size_t i = 0; i < m; i++) c->ids->v[c->ids->n + i] = ref[i];
    c->ids->n += m;
    free(ref);
    return 0;
}

TEST(bpe_matches_naive_reference) {
    ds_tokenizer *t = train_on(text_en, 600, NULL, 0);
    CHECK(t != NULL, "trained");
    if (!t) return;
    /* random texts from the training alphabet plus long runs (heap path) and random bytes */
    uint64_t s = 12345;
    int mismatches = 0;
    for (int trial = 0; trial < 200; trial++) {
        size_t n = trial < 190 ? 1 + (size_t)(trial * 7 % 300) : 5000;
        char *buf = malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            buf[i] = trial >= 195 ? ' ' : trial >= 190 ? "ab"[i % 2] : trial % 3 == 0 ? (char)(s >> 56) : text_en[(s >> 33) % strlen(text_en)];
        }
        ds_ids got = {0}, want = {0};
        ds_tok_encode(t, buf, n, 0, &got);
        ds_ids_reserve(&want, 2 * n + 16);
        ds_pretok_state *ps;
        ds_pretok_state_new(&ps, &t->pre);
        piece_check c = {t, &want, 0};
        ds_pretok_run(ps, buf, n, check_piece, &c);
        ds_pretok_state_free(ps);
        if (got.n != want.n || memcmp(got.v, want.v, got.n * 4)) mismatches++;
        ds_bytes back = {0};
        ds_tok_decode(t, got.v, got.n, &back);
        if (back.n != n || memcmp(back.v, buf, n)) mismatches += 1000;
        ds_bytes_free(&back);
        ds_ids_free(&got), ds_ids_free(&want);
        free(buf);
    }
    CHECK(mismatches == 0, "200 texts (random bytes, long runs): encoder == naive BPE and decode round trips (%d bad)", mismatches);
    ds_tok_free(t);
}

/* Cutting at every point ds_tok_train_cut allows must not change the ids (what parallel encoding and
 * block-wise training rely on). */
TEST(safe_cuts_do_not_change_pieces) {
    ds_tokenizer *t = train_on(text_en, 700, NULL, 0);
    if (!t) return;
    static const char *const frags[] = {"word", " ", "\n", "\r\n", "!", "{x}", "12", "345", "\t", "  ", "\n\n", ".", "café",
                                        "東京", "\xc2\x85", "\xe3\x80\x80", "'s", "-", "\n ", "\xff"};
    uint64_t s = 99;
    int bad = 0;
    for (int trial = 0; trial < 300; trial++) {
        char buf[4096];
        size_t n = 0;
        while (n < 3000) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            const char *f = frags[(s >> 33) % (sizeof frags / sizeof *frags)];
            memcpy(buf + n, f, strlen(f));
            n += strlen(f);
        }
        ds_ids whole = {0}, parts = {0};
        ds_tok_encode(t, buf, n, 0, &whole);
        size_t start = 0;
        for (size_t i = 1; i < n; i++) {
            if (ds_tok_train_cut(buf + start, i - start + 1) == i - start) {
                ds_tok_encode(t, buf + start, i - start, 0, &parts);
                start = i;
            }
        }
        ds_tok_encode(t, buf + start, n - start, 0, &parts);
        bad += whole.n != parts.n || memcmp(whole.v, parts.v, whole.n * 4);
        ds_ids_free(&whole), ds_ids_free(&parts);
    }
    CHECK(bad == 0, "300 texts cut at every safe point encode like the whole (%d differ)", bad);
    ds_tok_free(t);
}

TEST(trainer_order_hand_computed) {
    /* no specials: ids 0..255 are the byte alphabet sorted by code point, so 'a'=64 'b'=65 'c'=66 'd'=67,
     * space (U+0120) = 220. Pairs: (a,b), (Ġ,c), (c,d), each once: ties go to the smallest id pair. */
    ds_tokenizer *t = train_on("ab cd", 259, NULL, 0);
    CHECK(t && t->n_merges == 3, "three merges");
    if (!t) return;
    CHECK(t->merge_list[0] == DS_PAIR(64, 65), "first merge a+b");
    CHECK(t->merge_list[1] == DS_PAIR(66, 67), "second merge c+d");
    CHECK(t->merge_list[2] == DS_PAIR(220, 257), "third merge Ġ+cd (new id 257)");
    ds_tok_free(t);
}

TEST(specials_and_json_round_trip) {
    ds_tokenizer *t = train_on(text_en, 700, ds_tok_default_specials, ds_tok_n_default_specials);
    CHECK(t != NULL, "trained with specials");
    if (!t) return;
    CHECK(ds_tok_token_id(t, ds_tok_default_specials[0]) == 0 && ds_tok_token_id(t, ds_tok_default_specials[1]) == 1,
          "BOS id 0, EOS id 1");
    CHECK(ds_tok_is_special(t, 6) && !ds_tok_is_special(t, 300), "special flags");
    const char *chat = "<\xef\xbd\x9cUser\xef\xbd\x9c>hi<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";
    int64_t user = ds_tok_token_id(t, "<\xef\xbd\x9cUser\xef\xbd\x9c>");
    ds_ids a = {0}, b = {0};
    ds_tok_encode(t, chat, strlen(chat), DS_TOK_SPECIAL, &a);
    ds_tok_encode(t, chat, strlen(chat), 0, &b);
    CHECK(a.n >= 3 && a.v[0] == (uint32_t)user, "with DS_TOK_SPECIAL the chat token is one id");
    int leaked = 0;
    for (size_t i = 0; i < b.n; i++) leaked |= ds_tok_is_special(t, b.v[i]);
    CHECK(!leaked && b.n > a.n, "without it no special id appears");
    ds_bytes d1 = {0}, d2 = {0};
    ds_tok_decode(t, a.v, a.n, &d1);
    ds_tok_decode(t, b.v, b.n, &d2);
    CHECK(d1.n == strlen(chat) && !memcmp(d1.v, chat, d1.n) && d2.n == d1.n && !memcmp(d2.v, chat, d2.n), "both decode to the text");
    char *json;
    size_t len;
    CHECK(!ds_tok_to_json(t, &json, &len), "to json");
    ds_tokenizer *u;
    CHECK(!ds_tok_from_json(&u, json, len, "mem"), "reload: %s", ds_errmsg());
    ds_ids c = {0};
    ds_tok_encode(u, text_en, strlen(text_en), 0, &c);
    ds_ids e = {0};
    ds_tok_encode(t, text_en, strlen(text_en), 0, &e);
    CHECK(c.n == e.n && !memcmp(c.v, e.v, c.n * 4) && ds_tok_vocab_size(u) == ds_tok_vocab_size(t), "reloaded tokenizer encodes identically");
    ds_ids bad = {0};
    uint32_t big = 99999;
    CHECK(ds_tok_decode(t, &big, 1, (ds_bytes *)&bad) == DS_ERR && strstr(ds_errmsg(), "99999"), "unknown id: %s", ds_errmsg());
    free(json);
    ds_ids_free(&a), ds_ids_free(&b), ds_ids_free(&c), ds_ids_free(&e);
    ds_bytes_free(&d1), ds_bytes_free(&d2);
    ds_tok_free(u);
    ds_tok_free(t);
}

static void expect_error(const char *json, const char *needle) {
    ds_tokenizer *t = NULL;
    int rc = ds_tok_from_json(&t, json, strlen(json), "x.json");
    CHECK(rc == DS_ERR && !t && strstr(ds_errmsg(), needle), "error '%s': %s", needle, ds_errmsg());
}

TEST(load_errors) {
    expect_error("{", "tokenizer.json");
    expect_error("[1,2]", "not a JSON object");
    expect_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "unknown model type 'WordPiece'");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "merges is empty");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}", "not in the vocabulary");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]},\"pre_tokenizer\":null}",
                 "no ByteLevel");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[[\"a\",\"b\"]]},"
                 "\"pre_tokenizer\":{\"type\":\"ByteLevel\"}}",
                 "byte 0x00 has no token");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-4},\"merges\":[\"a b\"]}}", "id must be an integer");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xff\":0},\"merges\":[\"a b\"]}}", "tokenizer.json");
    expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]},"
                 "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}}",
                 "bad regex");
}

TAP_MAIN()
