/* Unit tests for lib/train/sft: conversation checks and line-numbered reports, the loss mask against
 * the assistant text itself, packing (every sample once, rows within bounds, positions and sample ids),
 * resumable epochs, the validation split; and on the tiny model: the masked SFT loss of a packed row
 * equals the loss over the assistant tokens of each conversation run alone (values and gradients), and
 * changing one packed sample leaves every other sample's outputs unchanged. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/jsonw.h"
#include "core/rng.h"
#include "model/model.h"
#include "model_fixture.h"
#include "tap.h"
#include "tok/chat.h"
#include "tok/train.h"
#include "train/sft.h"
#include "train/trainer.h"

/* ---- fixtures ---- */

static ds_tokenizer *tiny_tokenizer(void) {
    static const char text[] = "You are a helpful assistant. What is two plus two? Two plus two is four. "
                               "Tell me a story about a fox. Once upon a time a quick brown fox jumped over the lazy dog.\n";
    ds_tok_trainer *tr;
    ds_tokenizer *t = NULL;
    if (ds_tok_trainer_new(&tr)) return NULL;
    ds_tok_trainer_feed(tr, text, sizeof text - 1);
    ds_tok_train_opts o = {.vocab_size = 400, .specials = ds_tok_default_specials, .n_specials = ds_tok_n_default_specials};
    if (ds_tok_trainer_finish(tr, &o, &t)) t = NULL;
    ds_tok_trainer_free(tr);
    return t;
}

static char *write_tmp(const char *name, const char *text) {
    static char path[256];
    snprintf(path, sizeof path, "sft_test_%d_%s", (int)getpid(), name);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

/* synthetic samples: lengths len[i], tokens from Philox, masks on one or two contiguous spans */
static void make_set(ds_sft_set *s, const int *len, int n, int vocab, uint64_t seed) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < n; i++) {
        int32_t tok[512];
        uint8_t m[512];
        ds_rng r;
        ds_rng_init(&r, seed, (uint64_t)i);
        for (int t = 0; t < len[i]; t++) tok[t] = (int32_t)ds_rng_below(&r, (uint64_t)vocab), m[t] = 0;
        int a = 1 + (int)ds_rng_below(&r, (uint64_t)(len[i] - 1)), b = a + (int)ds_rng_below(&r, (uint64_t)(len[i] - a)) + 1;
        for (int t = a; t < b; t++) m[t] = 1;
        if (len[i] > 8) m[len[i] - 1] = 1; /* a second span: the last token */
        ds_sft_set_add(s, tok, m, len[i], i + 1);
    }
}

/* ---- conversations ---- */

TEST(mask_is_exactly_the_assistant_text) {
    ds_tokenizer *tok = tiny_tokenizer();
    CHECK(tok != NULL, "tokenizer: %s", ds_errmsg());
    if (!tok) return;
    ds_chat_template tm;
    CHECK(!ds_chat_template_load(&tm, NULL), "built-in template");
    ds_sft_set s = {0};
    ds_sft_load_opts o = {.tok = tok, .tmpl = &tm, .seq_len = 256};
    const char *a1 = "Two plus two is four.", *a2 = "Once upon a time a fox <｜User｜> jumped.";
    ds_chat_msg msgs[] = {{DS_ROLE_SYSTEM, "You are a helpful assistant.", 28},
                          {DS_ROLE_USER, "What is two plus two?", 21},
                          {DS_ROLE_ASSISTANT, a1, strlen(a1)},
                          {DS_ROLE_USER, "Tell me a story.", 16},
                          {DS_ROLE_ASSISTANT, a2, strlen(a2)}};
    CHECK(!ds_sft_add_conversation(&s, msgs, 5, &o, 1), "add: %s", ds_errmsg());
    /* the masked tokens decode to the two assistant texts, each followed by the end-of-sentence token;
     * the unmasked ones to everything else, in order */
    ds_bytes trained = {0}, rest = {0};
    for (int64_t t = s.off[0]; t < s.off[1]; t++) {
        uint32_t id = (uint32_t)s.tokens[t];
        ds_tok_decode(tok, &id, 1, s.mask[t] ? &trained : &rest);
    }
    char want[256];
    snprintf(want, sizeof want, "%s<｜end▁of▁sentence｜>%s<｜end▁of▁sentence｜>", a1, a2);
    CHECK(trained.n == strlen(want) && !memcmp(trained.v, want, trained.n), "trained text: '%.*s'", (int)trained.n,
          (const char *)trained.v);
    const char *want_rest = "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is two plus two?"
                            "<｜Assistant｜><｜User｜>Tell me a story.<｜Assistant｜>";
    CHECK(rest.n == strlen(want_rest) && !memcmp(rest.v, want_rest, rest.n), "untrained text: '%.*s'", (int)rest.n,
          (const char *)rest.v);
    /* the special-token string inside assistant content stays literal text */
    int64_t user_id = ds_tok_token_id(tok, "<｜User｜>"), n_user = 0;
    for (int64_t t = s.off[0]; t < s.off[1]; t++) n_user += s.tokens[t] == user_id;
    CHECK(n_user == 2, "control token only where the template puts it (%lld)", (long long)n_user);
    CHECK(s.n_trained > 0 && s.mask[0] == 0, "first token never a target");
    ds_bytes_free(&trained), ds_bytes_free(&rest);
    ds_sft_set_free(&s);
    ds_chat_template_free(&tm);
    ds_tok_free(tok);
}

static const char jsonl[] =
    "{\"messages\": [{\"role\": \"user\", \"content\": \"What is two plus two?\"}, {\"role\": \"assistant\", \"content\": \"Four.\"}]}\n"
    "\n"
    "{\"messages\": [{\"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"Four.\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"\"}, {\"role\": \"assistant\", \"content\": \"Four.\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"only a question\"}]}\n"
    "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Tell me a story about a fox, a long one.\"}, {\"role\": "
    "\"assistant\", \"content\": \"Once upon a time a quick brown fox jumped over the lazy dog, and then again, and again, "
    "and again, over the lazy dog, until the story was far too long for a row.\"}]}\n"
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Story?\"}, "
    "{\"role\": \"assistant\", \"content\": \"A fox.\"}]}\n"
    "{\"messages\": [1, 2]\n"
    "[1, 2]\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": 7}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n"
    "{\"messages\": []}\n";

TEST(bad_conversations_reported_by_line) {
    ds_tokenizer *tok = tiny_tokenizer();
    ds_chat_template tm;
    ds_chat_template_load(&tm, NULL);
    const char *path = write_tmp("chat.jsonl", jsonl);
    ds_sft_load_opts o = {.tok = tok, .tmpl = &tm, .seq_len = 40, .on_bad = DS_SFT_SKIP_BAD, .max_warnings = 0};
    ds_sft_set s = {0};
    int rc = ds_sft_load(&s, path, &o);
    CHECK(rc == 0, "skip mode loads: %s", ds_errmsg());
    CHECK(s.n == 2 && s.line[0] == 1 && s.line[1] == 8, "kept lines 1 and 8 (got %lld samples, lines %lld %lld)",
          (long long)s.n, (long long)(s.n > 0 ? s.line[0] : 0), (long long)(s.n > 1 ? s.line[1] : 0));
    CHECK(s.bad == 9 && s.lines == 11, "9 bad of 11 non-blank lines (%lld, %lld)", (long long)s.bad, (long long)s.lines);
    ds_sft_set_free(&s);

    /* reject mode: the first bad line fails the load, naming line, problem and file */
    static const struct {
        const char *text, *msg;
    } cases[] = {
        {"{\"messages\": [{\"content\": \"hi\"}]}", "line 1: messages[0].role: must be"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}",
         "line 1: messages[0].content: empty"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"\"}]}",
         "line 1: messages[1].content: empty"},
        {"{\"messages\": [{\"role\": \"user\"}]}", "line 1: messages[0].content: must be a string"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}", "line 1: \"messages\" has no assistant message"},
        {"{\"messages\": [{\"role\": \"bot\", \"content\": \"q\"}]}", "line 1: messages[0].role: must be"},
        {"{\"messages\": 3}", "line 1: \"messages\" must be a non-empty array"},
        {"{\"text\": \"x\"}", "line 1: needs \"messages\""},
        {"{\"messages\": [", "line 1: bad JSON"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"q\", \"content\": \"r\"}]}", "line 1: bad JSON"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char text[512];
        snprintf(text, sizeof text, "%s\n", cases[k].text);
        path = write_tmp("bad.jsonl", text);
        o.on_bad = DS_SFT_REJECT_BAD;
        ds_sft_set b = {0};
        rc = ds_sft_load(&b, path, &o);
        char want[512];
        snprintf(want, sizeof want, "jsonl: %s", cases[k].msg);
        CHECK(rc == DS_ERR && !strncmp(ds_errmsg(), want, strlen(want)) && strstr(ds_errmsg(), path), "rejects: %s",
              ds_errmsg());
        ds_sft_set_free(&b);
        remove(path);
    }
    /* too long: the message gives the token count and the row */
    path = write_tmp("long.jsonl", "\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", "
                                   "\"content\": \"Once upon a time a quick brown fox jumped over the lazy dog.\"}]}\n");
    o.seq_len = 8;
    ds_sft_set b = {0};
    rc = ds_sft_load(&b, path, &o);
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), "jsonl: line 2: ") && strstr(ds_errmsg(), "tokens: longer than a row of 8"),
          "too long: %s", ds_errmsg());
    ds_sft_set_free(&b);
    remove(path);
    CHECK(ds_sft_load(&b, "no/such/file.jsonl", &o) == DS_ERR && strstr(ds_errmsg(), "no/such/file.jsonl"), "missing file: %s",
          ds_errmsg());
    ds_sft_set_free(&b);
    remove(write_tmp("chat.jsonl", ""));
    ds_chat_template_free(&tm);
    ds_tok_free(tok);
}

/* ---- packing ---- */

static void check_rows(const ds_sft_set *s, const ds_sft_plan *p, int T, int64_t n_samples, const char *what) {
    int32_t tok[256], tgt[256], pos[256], seg[256];
    int ok_fill = 1, ok_once = 1, ok_bounds = 1;
    char *seen = calloc((size_t)s->n, 1);
    for (int64_t r = 0; r < p->n_rows; r++) {
        int used = 0;
        for (int64_t j = p->row_off[r]; j < p->row_off[r + 1]; j++) {
            if (seen[p->idx[j]]++) ok_once = 0;
            used += (int)(ds_sft_len(s, p->idx[j]) - 1);
        }
        if (used > T) ok_bounds = 0;
        const int len = ds_sft_fill_row(s, p, r, T, 99, tok, tgt, pos, seg);
        /* the row against the definition, slot by slot */
        int slot = 0, id = 0;
        for (int64_t j = p->row_off[r]; j < p->row_off[r + 1]; j++, id++) {
            const int64_t i = p->idx[j];
            const int32_t *x = s->tokens + s->off[i];
            const uint8_t *m = s->mask + s->off[i];
            for (int t = 0; t + 1 < ds_sft_len(s, i); t++, slot++)
                if (tok[slot] != x[t] || tgt[slot] != (m[t + 1] ? x[t + 1] : -1) || pos[slot] != t || seg[slot] != id) ok_fill = 0;
        }
        if (len != slot) ok_fill = 0; /* the row's length: where its padding starts */
        for (int t = 0; slot < T; slot++, t++)
            if (tok[slot] != 99 || tgt[slot] != -1 || seg[slot] != id || pos[slot] != t) ok_fill = 0;
    }
    int64_t total = 0;
    for (int64_t i = 0; i < s->n; i++) total += seen[i];
    free(seen);
    CHECK(ok_once && total == n_samples && p->row_off[p->n_rows] == n_samples, "%s: every sample exactly once", what);
    CHECK(ok_bounds, "%s: rows within %d slots", what, T);
    CHECK(ok_fill, "%s: tokens, targets, positions, sample ids, padding and the returned length as defined", what);
}

TEST(packing_plan) {
    enum { N = 200, T = 64 };
    int len[N];
    ds_rng r;
    ds_rng_init(&r, 7, 0);
    for (int i = 0; i < N; i++) len[i] = 2 + (int)ds_rng_below(&r, T);
    ds_sft_set s;
    make_set(&s, len, N, 50, 1);
    int64_t order[N];
    for (int i = 0; i < N; i++) order[i] = i;
    ds_sft_plan seq, ff;
    CHECK(!ds_sft_plan_build(&seq, &s, order, N, T, 1), "sequential plan");
    CHECK(!ds_sft_plan_build(&ff, &s, order, N, T, 8), "first-fit plan");
    check_rows(&s, &seq, T, N, "window 1");
    check_rows(&s, &ff, T, N, "window 8");
    /* window 1 keeps the order and closes a row only when the next sample does not fit */
    int ok = 1;
    for (int64_t j = 0; j < N; j++) ok &= seq.idx[j] == j;
    for (int64_t rr = 0; rr + 1 < seq.n_rows; rr++) {
        int used = 0;
        for (int64_t j = seq.row_off[rr]; j < seq.row_off[rr + 1]; j++) used += len[seq.idx[j]] - 1;
        ok &= used + len[seq.idx[seq.row_off[rr + 1]]] - 1 > T;
    }
    CHECK(ok, "window 1: order kept, greedy rows");
    CHECK(ff.n_rows < seq.n_rows, "first fit needs fewer rows (%lld vs %lld)", (long long)ff.n_rows, (long long)seq.n_rows);
    ds_sft_plan_free(&seq), ds_sft_plan_free(&ff);
    /* a sample longer than a row is refused */
    int big[] = {T + 2};
    ds_sft_set b;
    make_set(&b, big, 1, 50, 2);
    int64_t o0 = 0;
    CHECK(ds_sft_plan_build(&seq, &b, &o0, 1, T, 4) == DS_ERR, "sample of T + 2 tokens refused: %s", ds_errmsg());
    ds_sft_set_free(&b);
    ds_sft_set_free(&s);
}

static int next_rows(ds_data_source *src, ds_batch_buf *buf, int rows) {
    buf->rows = 0;
    return src->next(src, buf, rows);
}

TEST(source_epochs_resume_and_split) {
    enum { N = 60, T = 48 };
    int len[N];
    ds_rng r;
    ds_rng_init(&r, 9, 0);
    for (int i = 0; i < N; i++) len[i] = 3 + (int)ds_rng_below(&r, 30);
    ds_sft_set s;
    make_set(&s, len, N, 50, 3);
    ds_sft_source_opts o = {.seq_len = T, .seed = 5, .val_frac = 0.1, .pad_id = 0};
    ds_data_source *tr, *va;
    CHECK(!ds_sft_source_create(&tr, &va, &s, &o), "create: %s", ds_errmsg());
    ds_sft_stats st;
    CHECK(!ds_sft_source_stats(tr, va, 2, &st), "stats");
    CHECK(st.samples == 54 && st.val_samples == 6, "54 training and 6 held-out samples (%lld, %lld)", (long long)st.samples,
          (long long)st.val_samples);
    CHECK(st.fill > 0.8 && st.fill <= 1.0, "rows %.1f%% full", 100 * st.fill);

    /* one epoch of rows trains every assistant token of the training samples once and none of the
     * held-out ones; the validation pass holds the rest */
    ds_sft_stats st1;
    ds_sft_source_stats(tr, va, 1, &st1);
    const int64_t rows_e0 = st1.rows;
    CHECK(st.rows > rows_e0 && rows_e0 > 0, "two epochs %lld rows, one %lld", (long long)st.rows, (long long)rows_e0);
    ds_batch_buf buf;
    ds_batch_buf_init(&buf, (int)rows_e0, T);
    CHECK(!next_rows(tr, &buf, (int)rows_e0), "one epoch of rows: %s", ds_errmsg());
    int64_t e, row;
    ds_sft_source_position(tr, &e, &row);
    CHECK(e == 0 && row == rows_e0, "position after one epoch: epoch %lld row %lld", (long long)e, (long long)row);
    const int64_t tok_train = ds_batch_buf_count_targets(&buf, 0, (int)rows_e0);
    ds_batch view = ds_batch_buf_view(&buf, 1, 2);
    int pad_ok = view.len == buf.len + 1;
    for (int64_t q = 0; q < rows_e0; q++)
        for (int t = buf.len[q] - 1; t < T; t++) /* the last token of the row's last sample, then padding */
            pad_ok &= t < 0 || (t >= buf.len[q] ? buf.tokens[q * T + t] == 0 && buf.targets[q * T + t] == -1
                                                : buf.seg[q * T + t] != buf.seg[q * T + T - 1] || buf.len[q] == T);
    CHECK(pad_ok, "rows' lengths: padding after them, the batch view carries them");
    const int64_t vrows = va->rows_per_pass(va);
    CHECK(vrows == st.val_rows && vrows >= 1, "validation rows %lld", (long long)vrows);
    ds_batch_buf vb, vb2;
    ds_batch_buf_init(&vb, (int)vrows, T), ds_batch_buf_init(&vb2, (int)vrows, T);
    next_rows(va, &vb, (int)vrows);
    const int64_t tok_val = ds_batch_buf_count_targets(&vb, 0, (int)vrows);
    int64_t all = 0;
    for (int64_t i = 0; i < N; i++)
        for (int64_t t = s.off[i] + 1; t < s.off[i + 1]; t++) all += s.mask[t];
    CHECK(tok_train + tok_val == all && tok_val > 0, "training %lld + validation %lld targets = all %lld", (long long)tok_train,
          (long long)tok_val, (long long)all);
    va->rewind(va);
    next_rows(va, &vb2, (int)vrows);
    CHECK(!memcmp(vb.tokens, vb2.tokens, sizeof(int32_t) * vrows * T), "validation rewinds to the same rows");
    CHECK(va->next(va, &vb2, 1) == DS_ERR, "validation is one pass");
    ds_batch_buf_free(&vb), ds_batch_buf_free(&vb2);

    /* resume: state after k rows, restored into a fresh source, continues with the same rows, across
     * the epoch boundary */
    ds_data_source *tr2;
    ds_sft_source_create(&tr2, NULL, &s, &o);
    tr->rewind(tr);
    const int k = (int)rows_e0 - 3;
    next_rows(tr, &buf, k);
    ds_jsonw w;
    ds_jsonw_init(&w);
    tr->state_write(tr, &w);
    json_error_t je;
    json_t *js = json_loadb(w.buf, w.len, 0, &je);
    CHECK(js && !tr2->state_read(tr2, js, "state"), "state round trip: %s", ds_errmsg());
    ds_batch_buf a, b;
    ds_batch_buf_init(&a, 8, T), ds_batch_buf_init(&b, 8, T);
    next_rows(tr, &a, 8), next_rows(tr2, &b, 8);
    size_t bytes = sizeof(int32_t) * 8 * T;
    CHECK(!memcmp(a.tokens, b.tokens, bytes) && !memcmp(a.targets, b.targets, bytes) && !memcmp(a.seg, b.seg, bytes) &&
              !memcmp(a.pos, b.pos, bytes),
          "resumed source reads the same 8 rows (across the epoch boundary)");
    ds_sft_source_position(tr, &e, &row);
    CHECK(e == 1 && row == 5, "position epoch %lld row %lld", (long long)e, (long long)row);
    /* the second epoch is in another order */
    tr->rewind(tr);
    ds_batch_buf e0, e1;
    ds_batch_buf_init(&e0, (int)rows_e0, T), ds_batch_buf_init(&e1, (int)rows_e0, T);
    next_rows(tr, &e0, (int)rows_e0);
    ds_sft_source_position(tr, &e, &row);
    next_rows(tr, &e1, 1);
    CHECK(memcmp(e0.tokens, e1.tokens, sizeof(int32_t) * T) != 0, "epoch 1 starts with another row");
    /* a state from a different set is refused */
    json_object_set_new(js, "samples", json_integer(3));
    CHECK(tr2->state_read(tr2, js, "state.json") == DS_ERR && strstr(ds_errmsg(), "state.json"), "foreign state refused: %s",
          ds_errmsg());
    json_decref(js);
    ds_jsonw_free(&w);
    ds_batch_buf_free(&a), ds_batch_buf_free(&b), ds_batch_buf_free(&e0), ds_batch_buf_free(&e1), ds_batch_buf_free(&buf);
    ds_data_source_free(tr), ds_data_source_free(va), ds_data_source_free(tr2);
    ds_sft_set_free(&s);
}

/* ---- the masked loss on the model ---- */

typedef struct {
    ds_model *m;
    ds_config cfg;
} tiny;

static int tiny_make(tiny *t, int T, int want_entropy) {
    ds_err_clear();
    fixture_tiny(&t->cfg);
    ds_model_opts mo = {.max_batch = 1, .max_seq = T, .train = 1, .recompute = 1, .want_entropy = want_entropy};
    if (ds_model_create(&t->m, &t->cfg, &mo)) return DS_ERR;
    return ds_model_init(t->m, 11);
}

/* one packed row of three samples and its padding */
enum { PT = 48 };
static const int plen[3] = {13, 17, 11};

TEST(masked_loss_equals_assistant_loss_alone) {
    tiny tm;
    CHECK(!tiny_make(&tm, PT, 0), "model: %s", ds_errmsg());
    ds_sft_set s;
    make_set(&s, plen, 3, tm.cfg.vocab_size, 21);
    int64_t order[3] = {0, 1, 2};
    ds_sft_plan p;
    ds_sft_plan_build(&p, &s, order, 3, PT, 1);
    CHECK(p.n_rows == 1, "one row");
    int32_t tok[PT], tgt[PT], pos[PT], seg[PT];
    ds_sft_fill_row(&s, &p, 0, PT, 0, tok, tgt, pos, seg);
    const int D = ds_model_mtp_depth(tm.m);
    const size_t np = ds_model_num_params(tm.m);

    /* packed: the trainer's loss hook over the row */
    ds_batch b = {.B = 1, .T = PT, .tokens = tok, .targets = tgt, .pos = pos, .seg = seg};
    ds_fwd_out f;
    CHECK(!ds_model_forward(tm.m, &b, &f), "packed forward: %s", ds_errmsg());
    int64_t N = 0;
    for (int t = 0; t < PT; t++) N += tgt[t] >= 0;
    ds_loss_ctx lc = {.lambda = 0.3, .mtp_depth = D, .n_targets = N, .n_rows = 1};
    double terms[DS_LOSS_MAX_TERMS] = {0};
    float dlogp[PT], dmtp[4 * PT];
    ds_loss_pretrain.micro(NULL, &lc, &b, &f, dlogp, dmtp, terms);
    float packed_logp[PT];
    memcpy(packed_logp, f.logp, sizeof packed_logp);
    ds_model_zero_grad(tm.m);
    CHECK(!ds_model_backward(tm.m, &b, dlogp, D ? dmtp : NULL), "packed backward: %s", ds_errmsg());
    float *g_packed = malloc(np * sizeof *g_packed);
    memcpy(g_packed, ds_model_grads(tm.m), np * sizeof *g_packed);

    /* alone: each conversation as its own sequence (positions from 0, no other tokens), loss summed over
     * its assistant tokens only, normalised by the same count; gradients accumulated */
    double sum = 0, sum_mtp = 0, max_dlp = 0;
    int64_t count = 0;
    ds_model_zero_grad(tm.m);
    int slot0 = 0;
    for (int i = 0; i < 3; i++) {
        const int n = plen[i] - 1;
        const int32_t *x = s.tokens + s.off[i];
        const uint8_t *m = s.mask + s.off[i];
        int32_t at[PT];
        for (int t = 0; t < n; t++) at[t] = m[t + 1] ? x[t + 1] : -1;
        ds_batch a = {.B = 1, .T = n, .tokens = x, .targets = at};
        ds_fwd_out fa;
        CHECK(!ds_model_forward(tm.m, &a, &fa), "alone forward %d: %s", i, ds_errmsg());
        float dl[PT], dm[4 * PT];
        for (int t = 0; t < n; t++) {
            dl[t] = at[t] >= 0 ? (float)(-1.0 / N) : 0.0f;
            if (at[t] >= 0) sum += fa.logp[t], count++;
            max_dlp = fmax(max_dlp, fabs(fa.logp[t] - packed_logp[slot0 + t]));
        }
        for (int k = 1; k <= D; k++)
            for (int t = 0; t < n; t++) {
                int valid = t + k < n && at[t + k] >= 0;
                if (valid) sum_mtp += fa.mtp_logp[(size_t)(k - 1) * n + t];
                dm[(k - 1) * n + t] = valid ? (float)(-0.3 / D / N) : 0.0f;
            }
        CHECK(!ds_model_backward(tm.m, &a, dl, D ? dm : NULL), "alone backward %d", i);
        slot0 += n;
    }
    CHECK(count == N, "same number of assistant targets (%lld)", (long long)N);
    CHECK_REL(terms[0], -sum / N, 1e-5, "masked SFT loss of the packed row = mean assistant-token loss alone");
    CHECK(D == 0 || fabs(terms[1] - (-sum_mtp / N / D)) <= 1e-5 * fabs(terms[1]), "MTP term: %.9g vs %.9g", terms[1],
          -sum_mtp / N / D);
    CHECK(max_dlp < 2e-5, "per-token log-probs equal (max diff %.3g)", max_dlp);
    const float *g_alone = ds_model_grads(tm.m);
    double diff = 0, mag = 0;
    for (size_t i = 0; i < np; i++) diff = fmax(diff, fabs(g_packed[i] - g_alone[i])), mag = fmax(mag, fabs(g_alone[i]));
    CHECK(mag > 0 && diff <= 1e-4 * mag, "gradients: packed = sum over samples alone (max diff %.3g of %.3g)", diff, mag);
    free(g_packed);
    ds_sft_plan_free(&p);
    ds_sft_set_free(&s);
    ds_model_free(tm.m);
}

TEST(changing_one_sample_leaves_the_others) {
    tiny tm;
    CHECK(!tiny_make(&tm, PT, 1), "model: %s", ds_errmsg());
    ds_sft_set s, s2;
    make_set(&s, plen, 3, tm.cfg.vocab_size, 31);
    make_set(&s2, plen, 3, tm.cfg.vocab_size, 32); /* other tokens for every sample; we take sample 1 */
    int64_t order[3] = {0, 1, 2};
    ds_sft_plan p;
    ds_sft_plan_build(&p, &s, order, 3, PT, 1);
    int32_t tok[PT], tgt[PT], pos[PT], seg[PT], tok2[PT], tgt2[PT];
    ds_sft_fill_row(&s, &p, 0, PT, 0, tok, tgt, pos, seg);
    memcpy(s.tokens + s.off[1], s2.tokens + s2.off[1], sizeof(int32_t) * plen[1]);
    ds_sft_fill_row(&s, &p, 0, PT, 0, tok2, tgt2, pos, seg);
    int changed = 0;
    for (int t = 0; t < PT; t++) changed += tok[t] != tok2[t];
    CHECK(changed > 8, "sample 1 changed in %d slots", changed);
    /* score every slot with a target so every position's output is visible */
    int32_t all[PT], all2[PT];
    for (int t = 0; t < PT; t++) all[t] = t + 1 < PT ? tok[t + 1] : 0, all2[t] = t + 1 < PT ? tok2[t + 1] : 0;
    float lp1[PT], ent1[PT], mtp1[PT];
    ds_batch b = {.B = 1, .T = PT, .tokens = tok, .targets = all, .pos = pos, .seg = seg};
    ds_fwd_out f;
    CHECK(!ds_model_forward(tm.m, &b, &f), "forward");
    memcpy(lp1, f.logp, sizeof lp1), memcpy(ent1, f.entropy, sizeof ent1);
    memcpy(mtp1, f.mtp_logp, sizeof mtp1);
    b.tokens = tok2, b.targets = all2;
    CHECK(!ds_model_forward(tm.m, &b, &f), "forward, sample 1 changed");
    const int s1a = plen[0] - 1, s1b = s1a + plen[1] - 1; /* sample 1's slots */
    int same = 1, diff_inside = 0, compared = 0;
    double worst = 0;
    for (int t = 0; t < PT; t++) {
        if (t >= s1a && t < s1b) {
            diff_inside += lp1[t] != f.logp[t];
            continue;
        }
        /* outside sample 1, every output whose own target is unchanged (the slot before sample 1 scores
         * its first token) */
        if (all[t] == all2[t]) {
            if (lp1[t] != f.logp[t] || ent1[t] != f.entropy[t]) same = 0;
            worst = fmax(worst, fabs(lp1[t] - f.logp[t]));
            compared++;
        }
        if (t + 1 < PT && all[t + 1] == all2[t + 1] && tok[t + 1] == tok2[t + 1] && mtp1[t] != f.mtp_logp[t]) same = 0;
    }
    CHECK(diff_inside > 0, "sample 1's own outputs changed (%d slots)", diff_inside);
    CHECK(same, "samples 0 and 2 and the padding (%d slots): log-probs, entropies and MTP outputs bit-identical (max diff %.3g)", compared, worst);
    ds_sft_plan_free(&p);
    ds_sft_set_free(&s), ds_sft_set_free(&s2);
    ds_model_free(tm.m);
}

TAP_MAIN()
