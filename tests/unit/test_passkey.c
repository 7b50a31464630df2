/* Unit tests for lib/infer/passkey on a tiny model: examples of exact length with the needle where
 * asked; the grid's answer log-probabilities equal the training forward's on the same examples (chunked
 * prefill over the latent cache included); position log-likelihood; the table and heat map. The
 * end-to-end extension experiment (a tiny model fails beyond its training length, retrieves after an
 * extension) takes CPU-minutes: bench/passkey_extension.sh, results in docs/DESIGN.md. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/file.h"
#include "core/rng.h"
#include "infer/passkey.h"
#include "model/model.h"
#include "ops/ops.h"
#include "passkey_fixture.h"
#include "tap.h"
#include "tok/train.h"

static char *decode(const ds_tokenizer *tok, const int32_t *ids, int n) {
    ds_bytes b = {0};
    uint32_t *u = malloc((size_t)n * sizeof *u);
    for (int i = 0; i < n; i++) u[i] = (uint32_t)ids[i];
    ds_tok_decode(tok, u, (size_t)n, &b);
    free(u);
    char *s = malloc(b.n + 1);
    memcpy(s, b.v, b.n);
    s[b.n] = 0;
    ds_bytes_free(&b);
    return s;
}

TEST(examples) {
    ds_tokenizer *tok = byte_tokenizer();
    CHECK(tok != NULL, "tokenizer");
    ds_passkey *p;
    CHECK(!ds_passkey_prepare(&p, tok, &tiny_text, 0), "prepare: %s", ds_errmsg());
    ds_passkey_example ex = {0};
    int ok_len = 1, ok_answer = 1, ok_needle = 1, ok_depth0 = 1, ok_depth1 = 1, ok_mid = 1;
    const int lens[] = {40, 64, 100, 257};
    const double depths[] = {0, 0.25, 0.5, 1};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            CHECK_NEAR(0, ds_passkey_make(p, lens[i], depths[j], 3, (uint64_t)(i * 4 + j), &ex), 0, "make");
            ok_len &= ex.n == lens[i] && ex.tokens[0] == 0;
            char *ans = decode(tok, ex.tokens + ex.answer_start, ex.n - ex.answer_start);
            ok_answer &= !strcmp(ans, ex.key) && strlen(ex.key) == 5 && ex.key[0] != '0';
            char *nd = decode(tok, ex.tokens + ex.needle_start, ex.needle_len), want[32];
            snprintf(want, sizeof want, "key @%s. ", ex.key);
            ok_needle &= !strcmp(nd, want);
            char *all = decode(tok, ex.tokens + 1, ex.n - 1); /* after BOS: one byte per token */
            const char *q = strstr(all, "\nwhat key? @");
            if (depths[j] == 0) ok_depth0 &= ex.needle_start == 1;
            if (depths[j] == 1) ok_depth1 &= q && q - all + 1 == ex.needle_start + ex.needle_len;
            /* the text before the question ends with a whole filler sentence (or the needle); with room
             * for a few sentences, the needle sits between two */
            ok_mid &= q && (lens[i] < 64 || !strncmp(q - 6, "blue. ", 6) || depths[j] == 1);
            if (lens[i] >= 257 && ex.needle_start > 1)
                ok_mid &= !strncmp(all + ex.needle_start - 1 - 6, "blue. ", 6);
            free(ans), free(nd), free(all);
        }
    CHECK(ok_len, "examples have exactly the asked length and start with BOS");
    CHECK(ok_answer, "the answer decodes to the 5-digit key");
    CHECK(ok_needle, "the needle holds the key");
    CHECK(ok_depth0, "depth 0: needle right after the intro");
    CHECK(ok_depth1, "depth 1: needle right before the question");
    CHECK(ok_mid, "the filler ends on a whole sentence before the question and around the needle");
    ds_passkey_example ex2 = {0};
    ds_passkey_make(p, 64, 0.5, 3, 7, &ex);
    ds_passkey_make(p, 64, 0.5, 3, 7, &ex2);
    int same = !strcmp(ex.key, ex2.key) && !memcmp(ex.tokens, ex2.tokens, 64 * sizeof(int32_t));
    ds_passkey_make(p, 64, 0.5, 3, 8, &ex2);
    CHECK(same && strcmp(ex.key, ex2.key), "keys are a function of (seed, index)");
    CHECK(ds_passkey_make(p, 20, 0.5, 3, 0, &ex) == DS_ERR && strstr(ds_errmsg(), "no room for filler"), "too short: %s",
          ds_errmsg());
    ds_passkey_example_free(&ex), ds_passkey_example_free(&ex2);
    ds_passkey_free(p);
    ds_tok_free(tok);
}

/* the model, with forward scratch for B x T */
static ds_model *model_for(const ds_config *c, int B, int T, int train, uint64_t seed) {
    ds_model_opts mo = {.max_batch = B, .max_seq = T, .train = train, .recompute = 1};
    ds_model *m;
    if (ds_model_create(&m, c, &mo)) return NULL;
    if (seed && ds_model_init(m, seed)) {
        ds_model_free(m);
        return NULL;
    }
    return m;
}

TEST(grid_matches_training_forward) {
    ds_tokenizer *tok = byte_tokenizer();
    ds_passkey *p;
    ds_passkey_prepare(&p, tok, &tiny_text, 0);
    ds_config c;
    tiny_config(&c, (int)ds_tok_vocab_size(tok), 128);
    ds_model *m = model_for(&c, 1, 128, 0, 5);
    CHECK(m != NULL, "model: %s", ds_errmsg());
    ds_infer_model im;
    const float *bias[4];
    ds_infer_model_of(m, &im, bias);
    const int lens[] = {48, 128};
    const double depths[] = {0, 0.5, 1};
    ds_passkey_opts o = {.lengths = lens, .n_lengths = 2, .depths = depths, .n_depths = 3, .trials = 2, .seed = 9, .chunk = 0};
    ds_passkey_grid g1, g2;
    CHECK(!ds_passkey_eval(&im, ds_ops_cpu(), p, &o, &g1), "eval: %s", ds_errmsg());
    o.chunk = 17; /* prefill in pieces over the cache, answers split across calls */
    CHECK(!ds_passkey_eval(&im, ds_ops_cpu(), p, &o, &g2), "eval, chunks of 17: %s", ds_errmsg());
    /* the same examples through the training forward */
    double worst = 0, worst_chunk = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) {
            double lp = 0;
            for (int k = 0; k < 2; k++) {
                ds_passkey_example ex = {0};
                uint64_t index = ((uint64_t)lens[i] << 24) ^ ((uint64_t)llround(depths[j] * 1e4) << 8) ^ (uint64_t)k;
                ds_passkey_make(p, lens[i], depths[j], 9, index, &ex);
                int32_t tgt[128];
                for (int t = 0; t < ex.n; t++) tgt[t] = t + 1 < ex.n && t + 1 >= ex.answer_start ? ex.tokens[t + 1] : -1;
                ds_batch b = {.B = 1, .T = ex.n, .tokens = ex.tokens, .targets = tgt};
                ds_fwd_out f;
                ds_model_forward(m, &b, &f);
                double s = 0;
                for (int t = 0; t < ex.n; t++) s += tgt[t] >= 0 ? f.logp[t] : 0;
                lp += s / (ex.n - ex.answer_start);
                ds_passkey_example_free(&ex);
            }
            worst = fmax(worst, fabs(lp / 2 - g1.answer_logp[i * 3 + j]));
            worst_chunk = fmax(worst_chunk, fabs(g2.answer_logp[i * 3 + j] - g1.answer_logp[i * 3 + j]));
        }
    CHECK(worst < 1e-4, "answer log-probs = training forward's (max diff %.3g)", worst);
    CHECK(worst_chunk < 1e-4, "chunked prefill gives the same (max diff %.3g)", worst_chunk);
    char *table;
    CHECK(!ds_passkey_table(&g1, &table), "table");
    CHECK(strstr(table, "length       0%    50%   100%   mean\n") && strstr(table, "\n48  ") && strstr(table, "\n128 "),
          "table layout:\n%s", table);
    free(table);
    char png[64];
    snprintf(png, sizeof png, "passkey_%d.png", (int)getpid());
    CHECK(!ds_passkey_heatmap(&g1, png, NULL) && ds_path_exists(png), "heat map written");
    remove(png);

    /* position log-likelihood = the training forward's per-token log-probs, bucketed */
    int32_t docs[2 * 96];
    ds_rng r;
    ds_rng_init(&r, 1, 0);
    for (int i = 0; i < 2 * 96; i++) docs[i] = (int32_t)ds_rng_below(&r, (uint64_t)c.vocab_size);
    double lp[5], want[5] = {0};
    int end[5], cnt[5] = {0};
    CHECK(!ds_position_logp(&im, ds_ops_cpu(), docs, 2, 96, 5, 40, lp, end), "position log-likelihood: %s", ds_errmsg());
    for (int d = 0; d < 2; d++) {
        int32_t tgt[96];
        for (int t = 0; t < 96; t++) tgt[t] = t + 1 < 96 ? docs[d * 96 + t + 1] : -1;
        ds_batch b = {.B = 1, .T = 96, .tokens = docs + d * 96, .targets = tgt};
        ds_fwd_out f;
        ds_model_forward(m, &b, &f);
        for (int t = 1; t < 96; t++) {
            int k = 0;
            while (end[k] < t) k++;
            want[k] += f.logp[t - 1], cnt[k]++;
        }
    }
    double wp = 0;
    for (int k = 0; k < 5; k++) wp = fmax(wp, fabs(lp[k] - want[k] / cnt[k]));
    CHECK(end[4] == 95 && cnt[0] == 2 * 19, "buckets end at %d (first holds %d)", end[4], cnt[0] / 2);
    CHECK(wp < 1e-4, "bucket means = training forward's (max diff %.3g)", wp);
    ds_passkey_grid_free(&g1), ds_passkey_grid_free(&g2);
    ds_model_free(m);
    ds_passkey_free(p);
    ds_tok_free(tok);
}

/* greedy decoding, one token per forward over the cache, against the teacher-forced check */
TEST(check_equals_greedy_decoding) {
    ds_tokenizer *tok = byte_tokenizer();
    ds_passkey *p;
    ds_passkey_prepare(&p, tok, &tiny_text, 0);
    ds_config c;
    tiny_config(&c, (int)ds_tok_vocab_size(tok), 128);
    ds_model *m = model_for(&c, 1, 128, 0, 7);
    ds_infer_model im;
    const float *bias[4];
    ds_infer_model_of(m, &im, bias);
    ds_passkey_example ex = {0};
    ds_passkey_make(p, 80, 0.5, 1, 0, &ex);
    const int np = ex.answer_start, na = ex.n - ex.answer_start;
    ds_infer *e;
    ds_infer_opts io = {.max_tokens = 128, .slots = 1, .max_len = 128};
    CHECK(!ds_infer_create(&e, &im, ds_ops_cpu(), &io), "engine: %s", ds_errmsg());
    int32_t seq[128], slot[128] = {0}, pos[128], last = np - 1;
    float *z = malloc((size_t)c.vocab_size * sizeof *z);
    memcpy(seq, ex.tokens, (size_t)np * sizeof *seq);
    for (int i = 0; i < np; i++) pos[i] = i;
    ds_infer_step st = {.n = np, .tok = seq, .slot = slot, .pos = pos, .form = DS_ATTN_NAIVE, .n_out = 1, .out_rows = &last, .logits = z};
    int rc = ds_infer_forward(e, &st);
    for (int k = 0; !rc && k < na; k++) {
        int best = 0;
        for (int j = 1; j < c.vocab_size; j++)
            if (z[j] > z[best]) best = j;
        seq[np + k] = best;
        int32_t p1 = np + k, zero = 0;
        ds_infer_step d = {.n = 1, .tok = seq + np + k, .slot = slot, .pos = &p1, .form = DS_ATTN_ABSORBED, .n_out = 1,
                           .out_rows = &zero, .logits = z};
        rc = ds_infer_forward(e, &d);
    }
    CHECK(!rc, "greedy decode of %d tokens: %s", na, ds_errmsg());
    int right;
    double lp;
    CHECK(!ds_passkey_check(&im, ds_ops_cpu(), seq, np + na, np, 0, &right, &lp) && right,
          "the model's own greedy continuation passes the check");
    CHECK(!ds_passkey_check(&im, ds_ops_cpu(), seq, np + na, np, 7, &right, &lp) && right, "also with chunks of 7");
    int first_wrong = np + na / 2;
    seq[first_wrong] = (seq[first_wrong] + 1) % c.vocab_size;
    CHECK(!ds_passkey_check(&im, ds_ops_cpu(), seq, np + na, np, 0, &right, &lp) && !right, "one token off fails it");
    CHECK(!ds_passkey_check(&im, ds_ops_cpu(), ex.tokens, ex.n, np, 0, &right, &lp) && !right,
          "the true key fails on an untrained model");
    free(z);
    ds_infer_free(e);
    ds_passkey_example_free(&ex);
    ds_model_free(m);
    ds_passkey_free(p);
    ds_tok_free(tok);
}

TAP_MAIN()
