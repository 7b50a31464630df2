/* Unit tests for lib/infer/passkey and the context extension (lib/train/extend) on a tiny model:
 * examples of exact length with the needle where asked; the grid's answer log-probabilities equal the
 * training forward's on the same examples (chunked prefill over the latent cache included); retrieval
 * by teacher-forced argmax equals an actual greedy decode; position log-likelihood; the table and heat
 * map; and the end-to-end claim: a tiny model pretrained on passkey documents at a short length fails
 * at 4x that length, and after a YaRN extension with a short training phase at 4x it retrieves. */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "core/rng.h"
#include "infer/passkey.h"
#include "model/model.h"
#include "ops/ops.h"
#include "tap.h"
#include "tok/train.h"
#include "train/extend.h"
#include "train/trainer.h"

/* byte-level tokenizer: DeepSeek's specials and the 256 bytes, no merges */
static ds_tokenizer *byte_tokenizer(void) {
    ds_tok_trainer *tr;
    ds_tokenizer *t = NULL;
    if (ds_tok_trainer_new(&tr)) return NULL;
    ds_tok_trainer_feed(tr, "a", 1);
    ds_tok_train_opts o = {.vocab_size = (uint32_t)ds_tok_n_default_specials + 256, .specials = ds_tok_default_specials,
                           .n_specials = ds_tok_n_default_specials};
    if (ds_tok_trainer_finish(tr, &o, &t)) t = NULL;
    ds_tok_trainer_free(tr);
    return t;
}

/* the compact task the tiny model learns: digits appear only in the needle and the answer */
static const ds_passkey_text tiny_text = {
    .intro = "",
    .filler = "the grass is green and the sky is blue. ",
    .needle = "key @{key}. ",
    .question = "\nwhat key? @",
    .answer = "{key}",
    .digits = 5,
};

static void tiny_config(ds_config *c, int vocab, int max_pos) {
    ds_config_defaults(c);
    c->vocab_size = vocab;
    c->hidden_size = 64;
    c->intermediate_size = 64;
    c->num_hidden_layers = 2;
    c->first_k_dense_replace = 2;
    c->n_routed_experts = 0;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 4;
    c->q_lora_rank = 0;
    c->kv_lora_rank = 32;
    c->qk_nope_head_dim = 16;
    c->qk_rope_head_dim = 16;
    c->v_head_dim = 16;
    c->max_position_embeddings = max_pos;
    c->num_nextn_predict_layers = 0;
    c->ds_init_std = 0.02;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
}

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

/* ---- the end-to-end claim ---- */

static int env_int(const char *k, int d) {
    const char *v = getenv(k);
    return v ? atoi(v) : d;
}

static double env_dbl(const char *k, double d) {
    const char *v = getenv(k);
    return v ? atof(v) : d;
}

/* the trainer's view of a ds_model */
static int net_fwd(void *impl, const ds_batch *b, ds_fwd_out *out) { return ds_model_forward(impl, b, out); }
static int net_bwd(void *impl, const ds_batch *b, const float *dlogp, const float *dmtp) {
    return ds_model_backward(impl, b, dlogp, dmtp);
}
static void net_zero(void *impl) { ds_model_zero_grad(impl); }
static ds_train_net net_of(ds_model *m) {
    ds_train_net n = {.impl = m, .params = ds_model_params(m), .grads = ds_model_grads(m), .n_params = ds_model_num_params(m),
                      .forward = net_fwd, .backward = net_bwd, .zero_grad = net_zero};
    n.info = ds_model_params_info(m, &n.n_info);
    return n;
}

/* rows of passkey documents: one example of seq_len + 1 tokens per row, depth uniform, a fresh key */
typedef struct {
    const ds_passkey *p;
    int T, answer_only;
    uint64_t seed, rows;
    ds_passkey_example ex;
} pk_source;

static int pk_next(ds_data_source *s, ds_batch_buf *buf, int rows) {
    pk_source *q = s->impl;
    buf->has_pos = buf->has_seg = 0;
    for (int r = 0; r < rows; r++, q->rows++) {
        ds_rng g;
        ds_rng_init(&g, q->seed, 0x5eed00 + q->rows);
        DS_TRY(ds_passkey_make(q->p, q->T + 1, ds_rng_uniform(&g), q->seed, q->rows, &q->ex));
        int32_t *tk = buf->tokens + (size_t)buf->rows * q->T, *tg = buf->targets + (size_t)buf->rows * q->T;
        memcpy(tk, q->ex.tokens, (size_t)q->T * sizeof *tk);
        memcpy(tg, q->ex.tokens + 1, (size_t)q->T * sizeof *tg);
        if (q->answer_only)
            for (int t = 0; t + 1 < q->ex.answer_start; t++) tg[t] = -1;
        buf->rows++;
    }
    return 0;
}
static int64_t pk_rows(const ds_data_source *s) { return -1; }
static void pk_rewind(ds_data_source *s) { ((pk_source *)s->impl)->rows = 0; }
static void pk_state_write(const ds_data_source *s, ds_jsonw *w) { ds_jsonw_int(w, (int64_t)((pk_source *)s->impl)->rows); }
static int pk_state_read(ds_data_source *s, const void *json, const char *where) { return 0; }

static int train_on_passkeys(ds_model *m, const ds_passkey *p, int T, int steps, int batch, const char *lr, double peak,
                             uint64_t seed) {
    pk_source q = {.p = p, .T = T, .seed = seed, .answer_only = env_int("PK_ANSWER_ONLY", 1)};
    ds_data_source src = {.kind = "passkey", .seq_len = T, .next = pk_next, .rows_per_pass = pk_rows, .rewind = pk_rewind,
                          .state_write = pk_state_write, .state_read = pk_state_read, .impl = &q};
    ds_train_opts o;
    ds_train_opts_defaults(&o);
    o.total_steps = steps, o.seq_len = T, o.micro_batch = batch, o.seed = seed, o.log_every = 0;
    o.adamw.weight_decay = 0.0;
    char b[16];
    snprintf(b, sizeof b, "%d", batch);
    int rc = ds_sched_parse(&o.lr, lr, peak, steps, "lr");
    if (!rc) rc = ds_sched_parse(&o.batch, b, NAN, steps, "batch");
    if (!rc) rc = ds_sched_parse(&o.gamma, "0", NAN, steps, "gamma");
    if (!rc) rc = ds_sched_parse(&o.lambda, "0", NAN, steps, "lambda");
    ds_train_net net = net_of(m);
    ds_trainer *t = NULL;
    o.log_every = env_int("PK_LOG", 0);
    if (!rc) rc = ds_trainer_create(&t, &o, &net, &src, NULL, &ds_loss_pretrain, NULL);
    ds_train_end end;
    if (!rc) rc = ds_trainer_run(t, &end);
    if (!rc) printf("# trained %d steps at %d tokens: loss %.4f\n", steps, T, ds_trainer_last(t)->terms[0]);
    ds_trainer_free(t);
    ds_passkey_example_free(&q.ex);
    return rc;
}

static double mean_row(const ds_passkey_grid *g, int i) {
    double s = 0;
    for (int j = 0; j < g->cols; j++) s += g->accuracy[i * g->cols + j];
    return s / g->cols;
}


TEST(extension_retrieves_beyond_original_length) {
    const int L0 = env_int("PK_L0", 64), S = env_int("PK_S", 4), L1 = L0 * S;
    const int steps0 = env_int("PK_STEPS0", 600), steps1 = env_int("PK_STEPS1", 150);
    const int b0 = env_int("PK_B0", 16), b1 = env_int("PK_B1", 4);
    ds_tokenizer *tok = byte_tokenizer();
    ds_passkey *p;
    ds_passkey_text tt = tiny_text;
    tt.digits = env_int("PK_DIGITS", 5);
    ds_passkey_prepare(&p, tok, &tt, 0);
    ds_config c;
    tiny_config(&c, (int)ds_tok_vocab_size(tok), L0);
    c.intermediate_size = env_int("PK_FFN", 64);
    double t0 = ds_now();
    ds_model *base = model_for(&c, b0, L0, 1, 1);
    const size_t np = ds_model_num_params(base);
    if (getenv("PK_LOAD")) { /* exploration: start from saved base weights */
        FILE *f = fopen(getenv("PK_LOAD"), "rb");
        CHECK(f && fread(ds_model_params(base), sizeof(float), np, f) == np, "load %s", getenv("PK_LOAD"));
        if (f) fclose(f);
    } else {
        CHECK(base && !train_on_passkeys(base, p, L0, steps0, b0, "cosine:warmup=5%,min=10%", env_dbl("PK_LR0", 3e-3), 11),
              "pretrain at %d: %s", L0, ds_errmsg());
    }
    if (getenv("PK_SAVE")) {
        FILE *f = fopen(getenv("PK_SAVE"), "wb");
        fwrite(ds_model_params(base), sizeof(float), np, f);
        fclose(f);
    }
    double t1 = ds_now();
    const int lens[] = {L0, L1};
    const double depths[] = {0, 0.25, 0.5, 0.75, 1};
    ds_passkey_opts o = {.lengths = lens, .n_lengths = 2, .depths = depths, .n_depths = 5, .trials = env_int("PK_TRIALS", 4), .seed = 2024};
    ds_infer_model im;
    const float *bias[8];
    ds_infer_model_of(base, &im, bias);
    ds_passkey_grid g0, g1;
    CHECK(!ds_passkey_eval(&im, ds_ops_cpu(), p, &o, &g0), "evaluate the base model: %s", ds_errmsg());
    char *tab;
    ds_passkey_table(&g0, &tab);
    printf("# base model (trained at %d):\n# %s", L0, tab);
    free(tab);

    /* the extension: YaRN config, same weights, a short phase at L1 */
    ds_config ce;
    ds_config_copy(&ce, &c);
    ds_extend_opts eo;
    ds_extend_opts_defaults(&eo);
    eo.factor = S;
    eo.beta_fast = env_dbl("PK_BF", 0), eo.beta_slow = env_dbl("PK_BS", 0);
    if (!env_int("PK_NOYARN", 0))
        CHECK(!ds_extend_config(&ce, &eo) && ce.rope_scaling.enabled && ce.max_position_embeddings == L1, "extended config");
    ds_model *ext = model_for(&ce, b1, L1, 1, 0);
    memcpy(ds_model_params(ext), ds_model_params(base), ds_model_num_params(base) * sizeof(float));
    double t2 = ds_now();
    CHECK(!train_on_passkeys(ext, p, L1, steps1, b1, "cosine:warmup=0,min=10%", env_dbl("PK_LR1", 1e-3), 12), "extend to %d: %s", L1,
          ds_errmsg());
    double t3 = ds_now();
    ds_infer_model_of(ext, &im, bias);
    CHECK(!ds_passkey_eval(&im, ds_ops_cpu(), p, &o, &g1), "evaluate the extended model: %s", ds_errmsg());
    ds_passkey_table(&g1, &tab);
    printf("# extended model (YaRN s=%d, %d steps at %d):\n# %s", S, steps1, L1, tab);
    free(tab);
    printf("# times: pretrain %.1f s, extension %.1f s, evaluations %.1f s\n", t1 - t0, t3 - t2, ds_now() - t3 + t2 - t1);
    CHECK(mean_row(&g0, 0) >= 0.9, "base model retrieves at its training length %d (%.0f%%)", L0, 100 * mean_row(&g0, 0));
    CHECK(mean_row(&g0, 1) <= 0.3, "base model fails at %d (%.0f%%)", L1, 100 * mean_row(&g0, 1));
    CHECK(mean_row(&g1, 1) >= 0.9, "extended model retrieves at %d (%.0f%%)", L1, 100 * mean_row(&g1, 1));
    ds_passkey_grid_free(&g0), ds_passkey_grid_free(&g1);
    ds_config_free(&ce);
    ds_model_free(base), ds_model_free(ext);
    ds_passkey_free(p);
    ds_tok_free(tok);
}

TAP_MAIN()
