/* Inference against the training forward (lib/model), the independent reference inside libds:
 * on share/configs/tiny.json with random weights (and random expert biases), the log-probability
 * ds_generate reports for every generated token equals the one ds_model_forward computes for that
 * token over the whole prompt + completion, and the MTP module's drafts score the same targets as the
 * training forward's MTP head. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "infer/forward.h"
#include "infer/generate.h"
#include "infer/sampler.h"
#include "model/model.h"

#include <stdint.h>

enum { NP = 5, MAXN = 96 };

typedef struct {
    int32_t prompt[NP][MAXN], out[NP][MAXN];
    int len[NP], n_out[NP], next;
    float logp[NP][MAXN];
} io_t;

static int g_next(void *ctx, uint64_t *id, const int32_t **ids, int *n, int *got) {
    io_t *g = ctx;
    *got = g->next < NP;
    if (*got) {
        *id = (uint64_t)g->next;
        *ids = g->prompt[g->next];
        *n = g->len[g->next++];
    }
    return 0;
}
static int g_token(void *ctx, const ds_gen_seq *s, int *stop) {
    (void)ctx, (void)s;
    *stop = 0;
    return 0;
}
static int g_done(void *ctx, const ds_gen_seq *s) {
    io_t *g = ctx;
    memcpy(g->out[s->id], s->tokens, sizeof(int32_t) * s->n);
    memcpy(g->logp[s->id], s->logprobs, sizeof(float) * s->n);
    g->n_out[s->id] = s->n;
    return 0;
}

static ds_model *tiny_model(void) {
    const char *root = getenv("DS_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/share/configs/tiny.json", root ? root : ".");
    ds_config cfg;
    if (ds_config_load_file(&cfg, path)) {
        printf("# %s\n", ds_errmsg());
        return NULL;
    }
    cfg.ds_init_std = 0.08; /* larger than the default so the distributions are far from uniform */
    ds_model_opts o = {.max_batch = 1, .max_seq = MAXN * 2, .recompute = 1};
    ds_model *m = NULL;
    int rc = ds_model_create(&m, &cfg, &o);
    ds_config_free(&cfg);
    if (rc || ds_model_init(m, 42)) {
        printf("# %s\n", ds_errmsg());
        return NULL;
    }
    const ds_config *c = ds_model_config(m);
    for (int l = 0; l < c->num_hidden_layers + c->num_nextn_predict_layers; l++) {
        float *b = ds_model_expert_bias(m, l);
        if (b) ds_randn_fill(b, (size_t)c->n_routed_experts, 7, (uint64_t)l, 0.05f);
    }
    return m;
}

TEST(generated_logprobs_match_training_forward) {
    ds_model *m = tiny_model();
    CHECK(m != NULL, "tiny model");
    if (!m) return;
    const ds_config *c = ds_model_config(m);
    const int V = c->vocab_size;
    const float *bias[8];
    ds_infer_model im;
    ds_infer_model_of(m, &im, bias);
    for (int mtp = 0; mtp < 2; mtp++) {
        io_t g;
        memset(&g, 0, sizeof g);
        ds_rng r;
        ds_rng_init(&r, 99, 0);
        for (int p = 0; p < NP; p++) {
            g.len[p] = 2 + 7 * p;
            for (int i = 0; i < g.len[p]; i++) g.prompt[p][i] = (int32_t)ds_rng_below(&r, (uint64_t)V);
        }
        ds_infer_opts io = {.max_tokens = 64, .slots = 3, .max_len = 2 * MAXN, .mtp = mtp};
        ds_infer *e = NULL;
        int rc = ds_infer_create(&e, &im, NULL, &io);
        ds_gen_opts o = {.sampling = {.temperature = 1.0, .top_k = 40, .top_p = 0.9, .seed = 5}, .max_new = 40,
                         .eos_id = -1, .batch = 3, .prefill_chunk = 16, .prefill_form = DS_ATTN_NAIVE, .mtp = mtp};
        ds_gen_io cb = {.src = &g, .next = g_next, .sink = &g, .on_token = g_token, .on_done = g_done};
        ds_gen_stats st;
        if (!rc) rc = ds_generate(e, &o, &cb, &st);
        CHECK(rc == 0 && st.new_tokens == NP * 40, "mtp=%d: generate %lld tokens", mtp, (long long)st.new_tokens);
        double worst = 0;
        for (int p = 0; p < NP && !rc; p++) {
            int n = g.len[p] + g.n_out[p];
            int32_t seq[2 * MAXN], tgt[2 * MAXN];
            memcpy(seq, g.prompt[p], sizeof(int32_t) * g.len[p]);
            memcpy(seq + g.len[p], g.out[p], sizeof(int32_t) * g.n_out[p]);
            for (int i = 0; i < n; i++) tgt[i] = i + 1 < n ? seq[i + 1] : -1;
            ds_batch b = {.B = 1, .T = n, .tokens = seq, .targets = tgt};
            ds_fwd_out fo;
            rc = ds_model_forward(m, &b, &fo);
            for (int i = 0; i < g.n_out[p] - 1 && !rc; i++)
                worst = fmax(worst, fabs(fo.logp[g.len[p] - 1 + i] - g.logp[p][i]));
        }
        CHECK(rc == 0 && worst < 2e-4, "mtp=%d: generated log-probabilities vs the training forward: max abs diff %.3g",
              mtp, worst);
        if (mtp) CHECK(st.drafted > 0, "MTP drafted %lld tokens, accepted %lld", (long long)st.drafted,
                       (long long)st.accepted);
        ds_infer_free(e);
    }
    ds_model_free(m);
}

TEST(mtp_module_matches_training_forward) {
    ds_model *m = tiny_model();
    if (!m) return;
    const ds_config *c = ds_model_config(m);
    const int V = c->vocab_size, D = c->hidden_size;
    enum { T = 30 };
    const float *bias[8];
    ds_infer_model im;
    ds_infer_model_of(m, &im, bias);
    ds_infer_opts io = {.max_tokens = T, .slots = 1, .max_len = T, .mtp = 1, .max_out = T};
    ds_infer *e = NULL;
    int rc = ds_infer_create(&e, &im, NULL, &io);
    int32_t tok[T], tgt[T], sl[T], pos[T];
    ds_rng r;
    ds_rng_init(&r, 3, 0);
    for (int i = 0; i < T; i++) {
        tok[i] = (int32_t)ds_rng_below(&r, (uint64_t)V);
        sl[i] = 0;
        pos[i] = i;
    }
    for (int i = 0; i < T; i++) tgt[i] = i + 1 < T ? tok[i + 1] : -1;
    float *h = malloc(sizeof(float) * T * D), *lg = malloc(sizeof(float) * T * V), *ml = malloc(sizeof(float) * T * V);
    ds_infer_step st = {.n = T, .tok = tok, .slot = sl, .pos = pos, .form = DS_ATTN_NAIVE, .n_out = T, .logits = lg,
                        .hidden = h};
    if (!rc) rc = ds_infer_forward(e, &st);
    /* MTP row t: (h_t, token t+1) scores token t+2 */
    if (!rc) rc = ds_infer_mtp(e, T - 1, tok + 1, h, sl, pos, T - 1, NULL, ml);
    ds_batch b = {.B = 1, .T = T, .tokens = tok, .targets = tgt};
    ds_fwd_out fo;
    if (!rc) rc = ds_model_forward(m, &b, &fo);
    double wm = 0, wt = 0;
    for (int t = 0; t + 2 < T && !rc; t++) {
        wt = fmax(wt, fabs(ds_logprob(ml + (size_t)t * V, V, tok[t + 2]) - fo.mtp_logp[t]));
        wm = fmax(wm, fabs(ds_logprob(lg + (size_t)t * V, V, tok[t + 1]) - fo.logp[t]));
    }
    CHECK(rc == 0 && wm < 1e-4, "main head over the cache vs training forward: %.3g", wm);
    CHECK(rc == 0 && wt < 1e-4, "MTP module over its cache vs the training forward's MTP head: %.3g", wt);
    free(h);
    free(lg);
    free(ml);
    ds_infer_free(e);
    ds_model_free(m);
}

TAP_MAIN()
