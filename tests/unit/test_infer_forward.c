/* Unit tests for lib/infer/forward and lib/infer/generate on a small random DeepSeek-V3 (dense layer,
 * MoE layer with groups and bias, MTP module) built in memory:
 *  - the absorbed attention form equals the expanded (naive) form;
 *  - decoding token by token over the latent cache equals one forward over the whole sequence;
 *  - sequences decoded together equal each decoded alone (batch composition does not matter);
 *  - generated log-probabilities equal a full forward over prompt + completion at every step;
 *  - greedy decoding is deterministic, and MTP speculative decoding gives the same tokens;
 *  - sampling with MTP follows the plain sampler's distribution (rejection sampling);
 *  - bad steps and over-long prompts fail cleanly. */
#include "model_fixture.h"
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "infer/forward.h"
#include "infer/generate.h"
#include "infer/sampler.h"

#include <stdint.h>

/* ---- a random model ------------------------------------------------------------------------------ */

typedef struct {
    ds_config cfg;
    ds_weights w;
    ds_layer_w layers[3];
    float *bias[3];
    float *mem[128];
    int nmem;
} fixture;

static float *tensor(fixture *f, size_t n, float std, float mean) {
    float *p = malloc(n * sizeof *p);
    ds_randn_fill(p, n, 1234, (uint64_t)f->nmem + 1, std);
    for (size_t i = 0; i < n; i++) p[i] += mean;
    f->mem[f->nmem++] = p;
    return p;
}

/* model_fixture.h's tiny model in another shape: two layers, four heads, wider latents and RoPE. */
static void tiny_config(ds_config *c, int yarn) {
    fixture_tiny(c);
    c->vocab_size = 97;
    c->num_hidden_layers = 2;
    c->num_attention_heads = c->num_key_value_heads = 4;
    c->q_lora_rank = 24;
    c->kv_lora_rank = 16;
    c->qk_rope_head_dim = 8;
    c->v_head_dim = 12;
    if (yarn) fixture_yarn(c, 4, 16, 1, 1);
}

/* mimic = 1: layers add little to the residual stream and the MTP module passes the next token's
 * embedding through, so the MTP draft (head of the next token) mostly agrees with the main model's
 * next prediction: speculation then takes both its accept and its reject paths. mimic = 2 blurs the
 * draft with noise, so draft and target distributions differ clearly but overlap. */
static void fixture_init_mode(fixture *f, int yarn, int mimic);
static void fixture_init(fixture *f, int yarn) { fixture_init_mode(f, yarn, 0); }

static void fixture_init_mode(fixture *f, int yarn, int mimic) {
    memset(f, 0, sizeof *f);
    tiny_config(&f->cfg, yarn);
    const ds_config *c = &f->cfg;
    const size_t D = c->hidden_size, H = c->num_attention_heads, Dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    const size_t Rq = c->q_lora_rank, Rkv = c->kv_lora_rank, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    const size_t E = c->n_routed_experts, Ie = c->moe_intermediate_size, I = c->intermediate_size, V = c->vocab_size;
    const float s = 0.15f;
    f->w.embed = tensor(f, V * D, 1.0f, 0);
    f->w.final_norm = tensor(f, D, 0.1f, 1);
    f->w.head = tensor(f, V * D, s, 0);
    f->w.layer = f->layers;
    for (int l = 0; l < 3; l++) {
        ds_layer_w *w = &f->layers[l];
        w->attn_norm = tensor(f, D, 0.1f, 1);
        w->q_a = tensor(f, Rq * D, s, 0);
        w->q_a_norm = tensor(f, Rq, 0.1f, 1);
        w->q_b = tensor(f, H * Dqk * Rq, 0.3f, 0);
        w->kv_a = tensor(f, (Rkv + Dr) * D, s, 0);
        w->kv_a_norm = tensor(f, Rkv, 0.1f, 1);
        w->kv_b = tensor(f, H * (c->qk_nope_head_dim + Dv) * Rkv, 0.3f, 0);
        w->o = tensor(f, D * H * Dv, mimic ? s / 20 : s, 0);
        w->ffn_norm = tensor(f, D, 0.1f, 1);
        if (l == 0) {
            w->w_gate = tensor(f, I * D, s, 0);
            w->w_up = tensor(f, I * D, s, 0);
            w->w_down = tensor(f, D * I, mimic ? s / 20 : s, 0);
        } else {
            w->router = tensor(f, E * D, 0.3f, 0);
            f->bias[l] = tensor(f, E, 0.05f, 0);
            w->exp_gate = tensor(f, E * Ie * D, s, 0);
            w->exp_up = tensor(f, E * Ie * D, s, 0);
            w->exp_down = tensor(f, E * D * Ie, mimic ? s / 20 : s, 0);
            w->sh_gate = tensor(f, Ie * D, s, 0);
            w->sh_up = tensor(f, Ie * D, s, 0);
            w->sh_down = tensor(f, D * Ie, mimic ? s / 20 : s, 0);
        }
        if (l == 2) {
            w->enorm = tensor(f, D, 0.1f, 1);
            w->hnorm = tensor(f, D, 0.1f, 1);
            w->eh_proj = tensor(f, D * 2 * D, mimic == 1 ? s / 20 : mimic == 2 ? 2 * s : s, 0);
            if (mimic)
                for (size_t i = 0; i < D; i++) w->eh_proj[i * 2 * D + i] += 1.0f; /* columns 0..D-1: the embedding */
            w->head_norm = tensor(f, D, 0.1f, 1);
        }
    }
}

static void fixture_free(fixture *f) {
    for (int i = 0; i < f->nmem; i++) free(f->mem[i]);
}

static ds_infer *engine(fixture *f, int slots, int max_len, int max_tokens, int mtp) {
    ds_infer_model m = {.cfg = &f->cfg, .w = &f->w, .expert_bias = (const float *const *)f->bias, .mtp_depth = 1};
    ds_infer_opts o = {.max_tokens = max_tokens, .slots = slots, .max_len = max_len, .mtp = mtp,
                       .max_out = max_tokens};
    ds_infer *e = NULL;
    if (ds_infer_create(&e, &m, ds_ops_cpu(), &o)) {
        printf("# create failed: %s\n", ds_errmsg());
        return NULL;
    }
    return e;
}

static void tokens(int32_t *t, int n, uint64_t seed, int V) {
    ds_rng r;
    ds_rng_init(&r, seed, 0);
    for (int i = 0; i < n; i++) t[i] = 2 + (int32_t)ds_rng_below(&r, (uint64_t)V - 2);
}

/* logits of every row of one sequence in slot `slot` from position p0 */
static int run(ds_infer *e, const int32_t *tok, int n, int slot, int p0, ds_attn_form form, float *logits) {
    int32_t sl[256], pos[256];
    for (int i = 0; i < n; i++) {
        sl[i] = slot;
        pos[i] = p0 + i;
    }
    ds_infer_step s = {.n = n, .tok = tok, .slot = sl, .pos = pos, .form = form, .n_out = n, .logits = logits};
    return ds_infer_forward(e, &s);
}

static double max_rel(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(a[i] - b[i]) / scale);
    return worst;
}

TEST(absorbed_equals_naive) {
    for (int yarn = 0; yarn < 2; yarn++) {
        fixture f;
        fixture_init(&f, yarn);
        enum { T = 40 };
        const int V = f.cfg.vocab_size;
        ds_infer *e = engine(&f, 2, 64, T, 0);
        int32_t t[T];
        tokens(t, T, 5, V);
        float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
        int rc = run(e, t, T, 0, 0, DS_ATTN_NAIVE, a) | run(e, t, T, 1, 0, DS_ATTN_ABSORBED, b);
        double err = max_rel(b, a, (size_t)T * V);
        CHECK(rc == 0 && err < 2e-5, "yarn=%d: absorbed vs naive prefill, max rel err %.3g", yarn, err);
        const ds_kvcache *c = ds_infer_cache(e);
        CHECK(!memcmp(ds_kvcache_row(c, 0, 0, 0), ds_kvcache_row(c, 0, 1, 0), sizeof(float) * c->width * T),
              "both forms write the same latent cache in layer 0");
        err = max_rel(ds_kvcache_row(c, 1, 1, 0), ds_kvcache_row(c, 1, 0, 0), (size_t)c->width * T);
        CHECK(err < 2e-5, "and to rounding in layer 1 (%.3g)", err);
        ds_infer_free(e);
        free(a);
        free(b);
        fixture_free(&f);
    }
}

TEST(decode_equals_full_forward) {
    fixture f;
    fixture_init(&f, 1);
    enum { T = 48, P = 7 };
    const int V = f.cfg.vocab_size;
    ds_infer *e = engine(&f, 3, T, T, 0);
    int32_t t[T];
    tokens(t, T, 9, V);
    float *full = malloc(sizeof(float) * T * V), *inc = malloc(sizeof(float) * T * V);
    int rc = run(e, t, T, 0, 0, DS_ATTN_NAIVE, full);
    rc |= run(e, t, P, 1, 0, DS_ATTN_NAIVE, inc);
    for (int i = P; i < T; i++) rc |= run(e, t + i, 1, 1, i, DS_ATTN_ABSORBED, inc + (size_t)i * V);
    double err = max_rel(inc, full, (size_t)T * V);
    CHECK(rc == 0 && err < 2e-5, "prefill %d + %d single-token steps vs one forward: max rel err %.3g", P, T - P, err);
    /* chunked absorbed prefill: 3 chunks */
    rc = run(e, t, 10, 2, 0, DS_ATTN_ABSORBED, inc) | run(e, t + 10, 25, 2, 10, DS_ATTN_ABSORBED, inc + 10 * V) |
         run(e, t + 35, T - 35, 2, 35, DS_ATTN_ABSORBED, inc + 35 * V);
    err = max_rel(inc, full, (size_t)T * V);
    CHECK(rc == 0 && err < 2e-5, "chunked prefill: max rel err %.3g", err);
    ds_infer_free(e);
    free(full);
    free(inc);
    fixture_free(&f);
}

TEST(batch_composition_does_not_matter) {
    fixture f;
    fixture_init(&f, 0);
    const int V = f.cfg.vocab_size;
    enum { S = 3, L = 20 };
    const int len[S] = {5, 11, 8};
    int32_t t[S][L];
    for (int s = 0; s < S; s++) tokens(t[s], L, 100 + s, V);
    ds_infer *e = engine(&f, S, 32, 64, 0);
    /* alone: prefill then one step each */
    float alone[S][97], together[S][97];
    int rc = 0;
    for (int s = 0; s < S; s++) {
        float *tmp = malloc(sizeof(float) * L * V);
        rc |= run(e, t[s], len[s], s, 0, DS_ATTN_NAIVE, tmp);
        rc |= run(e, &t[s][len[s]], 1, s, len[s], DS_ATTN_ABSORBED, alone[s]);
        free(tmp);
    }
    /* together: one step over the three sequences (their caches hold the prompts already) */
    int32_t tok[S], sl[S], pos[S];
    for (int s = 0; s < S; s++) {
        tok[s] = t[s][len[s]];
        sl[s] = s;
        pos[s] = len[s];
    }
    ds_infer_step st = {.n = S, .tok = tok, .slot = sl, .pos = pos, .form = DS_ATTN_ABSORBED, .n_out = S,
                        .logits = &together[0][0]};
    rc |= ds_infer_forward(e, &st);
    double err = 0;
    for (int s = 0; s < S; s++) err = fmax(err, max_rel(together[s], alone[s], (size_t)V));
    CHECK(rc == 0 && err < 1e-5, "three sequences in one step vs alone: max rel err %.3g", err);
    /* malformed steps */
    int32_t bad_pos[2] = {4, 6}, two_sl[2] = {0, 0}, two_tok[2] = {3, 4};
    ds_infer_step b1 = {.n = 2, .tok = two_tok, .slot = two_sl, .pos = bad_pos, .n_out = 0};
    CHECK(ds_infer_forward(e, &b1) == DS_ERR && strstr(ds_errmsg(), "consecutive positions"), "gap: %s", ds_errmsg());
    int32_t big_tok[1] = {97}, z[1] = {0};
    ds_infer_step b2 = {.n = 1, .tok = big_tok, .slot = z, .pos = z};
    CHECK(ds_infer_forward(e, &b2) == DS_ERR && strstr(ds_errmsg(), "outside the vocabulary"), "bad id: %s", ds_errmsg());
    int32_t p40[1] = {40};
    ds_infer_step b3 = {.n = 1, .tok = two_tok, .slot = z, .pos = p40};
    CHECK(ds_infer_forward(e, &b3) == DS_ERR && strstr(ds_errmsg(), "outside the context of 32"), "position: %s",
          ds_errmsg());
    int32_t p3[1] = {3};
    ds_infer_step b4 = {.n = 1, .tok = two_tok, .slot = z, .pos = p3, .form = DS_ATTN_NAIVE};
    CHECK(ds_infer_forward(e, &b4) == DS_ERR && strstr(ds_errmsg(), "start at position 0"), "naive: %s", ds_errmsg());
    ds_infer_free(e);
    /* the logits buffer holds max_out rows (default: two per slot), not a prefill chunk's worth */
    ds_infer_model m = {.cfg = &f.cfg, .w = &f.w, .expert_bias = (const float *const *)f.bias, .mtp_depth = 1};
    ds_infer_opts o = {.max_tokens = 16, .slots = 2, .max_len = 32};
    CHECK(ds_infer_create(&e, &m, NULL, &o) == 0 && ds_infer_max_out(e) == 4, "default max_out = 2 x slots");
    int32_t t16[16], s16[16], p16[16];
    float lg[5 * 97];
    for (int i = 0; i < 16; i++) t16[i] = 3 + i, s16[i] = 0, p16[i] = i;
    ds_infer_step b5 = {.n = 16, .tok = t16, .slot = s16, .pos = p16, .n_out = 5, .logits = lg};
    CHECK(ds_infer_forward(e, &b5) == DS_ERR && strstr(ds_errmsg(), "logits for 5 rows: at most 4"), "5 rows: %s",
          ds_errmsg());
    b5.n_out = 4;
    CHECK(ds_infer_forward(e, &b5) == 0, "4 rows");
    ds_infer_free(e);
    fixture_free(&f);
}

TEST(mtp_incremental_equals_one_call) {
    fixture f;
    fixture_init(&f, 0);
    const int V = f.cfg.vocab_size, D = f.cfg.hidden_size;
    enum { T = 12 };
    ds_infer *e = engine(&f, 2, 32, 32, 1);
    int32_t t[T + 1], sl[T], pos[T];
    tokens(t, T + 1, 77, V);
    float *h = malloc(sizeof(float) * T * D), *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    for (int i = 0; i < T; i++) {
        sl[i] = 0;
        pos[i] = i;
    }
    ds_infer_step st = {.n = T, .tok = t, .slot = sl, .pos = pos, .form = DS_ATTN_NAIVE, .hidden = h};
    int rc = ds_infer_forward(e, &st);
    rc |= ds_infer_mtp(e, T, t + 1, h, sl, pos, T, NULL, a);
    int32_t one = 1;
    for (int i = 0; i < T; i++) rc |= ds_infer_mtp(e, 1, t + 1 + i, h + (size_t)i * D, &one, &pos[i], 1, NULL, b + (size_t)i * V);
    double err = max_rel(b, a, (size_t)T * V);
    CHECK(rc == 0 && err < 2e-5, "MTP over %d positions at once vs one at a time: %.3g", T, err);
    ds_infer_free(e);
    free(h);
    free(a);
    free(b);
    fixture_free(&f);
}

/* ---- generation -------------------------------------------------------------------------------- */

typedef struct {
    int n_prompts;
    int32_t prompts[8][64];
    int len[8];
    int next;
    /* results */
    int32_t out[8][64];
    float logp[8][64];
    int n_out[8];
    ds_finish finish[8];
    int stop_at; /* on_token asks to stop after this many tokens (0: never) */
} gen_io;

static int g_next(void *ctx, uint64_t *id, const int32_t **ids, int *n, int *got) {
    gen_io *g = ctx;
    *got = g->next < g->n_prompts;
    if (*got) {
        *id = (uint64_t)g->next;
        *ids = g->prompts[g->next];
        *n = g->len[g->next];
        g->next++;
    }
    return 0;
}
static int g_token(void *ctx, const ds_gen_seq *s, int *stop) {
    gen_io *g = ctx;
    *stop = g->stop_at && s->n >= g->stop_at;
    return 0;
}
static int g_done(void *ctx, const ds_gen_seq *s) {
    gen_io *g = ctx;
    memcpy(g->out[s->id], s->tokens, sizeof(int32_t) * s->n);
    memcpy(g->logp[s->id], s->logprobs, sizeof(float) * s->n);
    g->n_out[s->id] = s->n;
    g->finish[s->id] = s->finish;
    return 0;
}

static int generate(fixture *f, gen_io *g, const ds_gen_opts *o, ds_gen_stats *st) {
    ds_infer *e = engine(f, 4, 64, 64, o->mtp);
    if (e && o->batch == 3) ds_infer_set_serial_flops(e, 1e12); /* every step on one thread */
    ds_gen_io io = {.src = g, .next = g_next, .sink = g, .on_token = g_token, .on_done = g_done};
    g->next = 0;
    int rc = ds_generate(e, o, &io, st);
    ds_infer_free(e);
    return rc;
}

static void prompts(fixture *f, gen_io *g, int n) {
    memset(g, 0, sizeof *g);
    g->n_prompts = n;
    for (int i = 0; i < n; i++) {
        g->len[i] = 3 + 4 * i;
        tokens(g->prompts[i], g->len[i], 500 + i, f->cfg.vocab_size);
    }
}

TEST(generated_logprobs_equal_full_forward) {
    fixture f;
    fixture_init(&f, 1);
    gen_io g;
    prompts(&f, &g, 6);
    ds_gen_opts o = {.sampling = {.temperature = 0.9, .top_p = 0.95, .seed = 3}, .max_new = 20, .eos_id = -1,
                     .batch = 3, .prefill_chunk = 16, .prefill_form = DS_ATTN_NAIVE};
    ds_gen_stats st;
    int rc = generate(&f, &g, &o, &st);
    CHECK(rc == 0 && st.prompts == 6 && st.new_tokens == 120, "6 prompts x 20 tokens in batches of 3");
    const int V = f.cfg.vocab_size;
    ds_infer *e = engine(&f, 1, 64, 64, 0);
    double worst = 0;
    for (int p = 0; p < 6; p++) {
        int32_t seq[64];
        int n = g.len[p] + g.n_out[p];
        memcpy(seq, g.prompts[p], sizeof(int32_t) * g.len[p]);
        memcpy(seq + g.len[p], g.out[p], sizeof(int32_t) * g.n_out[p]);
        float *lg = malloc(sizeof(float) * n * V);
        rc |= run(e, seq, n, 0, 0, DS_ATTN_NAIVE, lg);
        for (int i = 0; i < g.n_out[p]; i++) {
            double ref = ds_logprob(lg + (size_t)(g.len[p] - 1 + i) * V, V, g.out[p][i]);
            worst = fmax(worst, fabs(ref - g.logp[p][i]));
        }
        free(lg);
    }
    CHECK(rc == 0 && worst < 1e-4, "every generated log-probability equals the full forward's: max abs err %.3g", worst);
    ds_infer_free(e);
    fixture_free(&f);
}

TEST(greedy_is_deterministic_and_mtp_identical) {
    fixture f;
    fixture_init_mode(&f, 0, 1);
    gen_io a, b, c;
    prompts(&f, &a, 5);
    prompts(&f, &b, 5);
    prompts(&f, &c, 5);
    ds_gen_opts o = {.sampling = {.temperature = 0, .top_p = 1}, .max_new = 24, .eos_id = -1, .batch = 2,
                     .prefill_chunk = 8, .prefill_form = DS_ATTN_ABSORBED};
    ds_gen_stats sa, sb, sc;
    int rc = generate(&f, &a, &o, &sa);
    o.batch = 4;
    o.prefill_form = DS_ATTN_NAIVE;
    o.prefill_chunk = 32;
    rc |= generate(&f, &b, &o, &sb);
    o.mtp = 1;
    rc |= generate(&f, &c, &o, &sc);
    CHECK(rc == 0, "three runs");
    int same_ab = 1, same_ac = 1;
    for (int p = 0; p < 5; p++) {
        same_ab &= a.n_out[p] == b.n_out[p] && !memcmp(a.out[p], b.out[p], sizeof(int32_t) * a.n_out[p]);
        same_ac &= a.n_out[p] == c.n_out[p] && !memcmp(a.out[p], c.out[p], sizeof(int32_t) * a.n_out[p]);
    }
    CHECK(same_ab, "greedy output does not depend on batch size, prefill form or chunking");
    CHECK(same_ac, "MTP speculative greedy output is identical to plain greedy decoding");
    CHECK(sc.accepted > sc.drafted / 4 && sc.accepted < sc.drafted && sc.decode_steps < sb.decode_steps,
          "MTP drafts both accepted and rejected: %lld of %lld; decode steps %lld vs %lld", (long long)sc.accepted,
          (long long)sc.drafted, (long long)sc.decode_steps, (long long)sb.decode_steps);
    double lp = 0;
    for (int p = 0; p < 5; p++)
        for (int i = 0; i < a.n_out[p]; i++) lp = fmax(lp, fabs(a.logp[p][i] - c.logp[p][i]));
    CHECK(lp < 1e-4, "and the same log-probabilities (max diff %.3g)", lp);
    fixture_free(&f);
}

TEST(finish_rules_and_context) {
    fixture f;
    fixture_init(&f, 0);
    gen_io g;
    prompts(&f, &g, 3);
    ds_gen_opts o = {.sampling = {.temperature = 0, .top_p = 1}, .max_new = 10, .eos_id = -1, .batch = 2,
                     .prefill_chunk = 16};
    ds_gen_stats st;
    g.stop_at = 4;
    int rc = generate(&f, &g, &o, &st);
    CHECK(rc == 0 && g.n_out[0] == 4 && g.finish[0] == DS_FINISH_STOP, "caller stop after 4 tokens");
    g.stop_at = 0;
    generate(&f, &g, &o, &st);
    int32_t eos = g.out[1][2]; /* make the third greedy token of prompt 1 the EOS */
    int first = 0;
    while (g.out[1][first] != eos) first++;
    o.eos_id = eos;
    rc = generate(&f, &g, &o, &st);
    CHECK(rc == 0 && g.finish[1] == DS_FINISH_EOS && g.n_out[1] == first + 1 && g.out[1][first] == eos,
          "EOS ends the sequence and is kept as its last token");
    CHECK(g.finish[2] == DS_FINISH_LENGTH || g.finish[2] == DS_FINISH_EOS, "others end by length or EOS");
    /* context 64: a 60-token prompt + 10 new tokens does not fit */
    o.eos_id = -1;
    g.len[0] = 60;
    tokens(g.prompts[0], 60, 1, f.cfg.vocab_size);
    rc = generate(&f, &g, &o, &st);
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), "prompt 0: 60 tokens + 10 new exceed the context of 64 tokens"),
          "over-long prompt: %s", ds_errmsg());
    o.truncate = 1;
    rc = generate(&f, &g, &o, &st);
    CHECK(rc == 0 && g.n_out[0] == 10, "--truncate keeps the last 54 prompt tokens and generates");
    g.prompts[1][0] = 500;
    rc = generate(&f, &g, &o, &st);
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), "prompt 1: token 0: id 500 outside the vocabulary"), "bad id: %s",
          ds_errmsg());
    fixture_free(&f);
}

/* Sampling with MTP: the second token comes out of verifying the MTP draft against the main model.
 * Conditioned on the first token, it must follow the plain sampler's distribution exactly (computed
 * here from a full forward), not the draft's. */
TEST(mtp_sampling_keeps_the_distribution) {
    fixture f;
    fixture_init_mode(&f, 0, 2);
    const int V = f.cfg.vocab_size;
    enum { N = 4000, B = 8 };
    const ds_sampling sp = {.temperature = 2.0, .top_k = 6, .top_p = 1, .seed = 0};
    ds_infer *spec = engine(&f, B, 16, 16, 1);
    int32_t *first = malloc(sizeof(int32_t) * N), *second = malloc(sizeof(int32_t) * N);
    long drafted = 0, accepted = 0;
    gen_io g;
    memset(&g, 0, sizeof g);
    for (int rep = 0; rep < N / B; rep++) {
        ds_gen_opts o = {.sampling = sp, .max_new = 2, .eos_id = -1, .batch = B, .prefill_chunk = 16, .mtp = 1};
        o.sampling.seed = 11 + (uint64_t)rep;
        g.n_prompts = B;
        g.next = 0;
        for (int i = 0; i < B; i++) {
            g.len[i] = 3;
            g.prompts[i][0] = 5;
            g.prompts[i][1] = 9;
            g.prompts[i][2] = 13;
        }
        ds_gen_stats st;
        ds_gen_io io = {.src = &g, .next = g_next, .sink = &g, .on_token = g_token, .on_done = g_done};
        ds_generate(spec, &o, &io, &st);
        drafted += st.drafted;
        accepted += st.accepted;
        for (int i = 0; i < B; i++) {
            first[rep * B + i] = g.out[i][0];
            second[rep * B + i] = g.out[i][1];
        }
    }
    /* the most frequent first token, and the exact distribution after it */
    static long cnt[97];
    memset(cnt, 0, sizeof cnt);
    for (int i = 0; i < N; i++) cnt[first[i]]++;
    int a = 0;
    for (int t = 1; t < V; t++)
        if (cnt[t] > cnt[a]) a = t;
    ds_infer *ref = engine(&f, 1, 16, 16, 0);
    int32_t seq[4] = {5, 9, 13, a};
    float lg[4 * 97];
    run(ref, seq, 4, 0, 0, DS_ATTN_NAIVE, lg);
    ds_sampler smp;
    ds_dist p;
    ds_sampler_init(&smp, V);
    ds_dist_init(&p, V);
    ds_sampler_dist(&smp, lg + 3 * V, &sp, &p);
    static long c2[97];
    memset(c2, 0, sizeof c2);
    long na = 0;
    for (int i = 0; i < N; i++)
        if (first[i] == a) {
            c2[second[i]]++;
            na++;
        }
    double x2 = 0;
    int outside = 0;
    for (int t = 0; t < V; t++) {
        if (p.p[t] > 0) x2 += (c2[t] - na * p.p[t]) * (c2[t] - na * p.p[t]) / (na * p.p[t]);
        else outside += c2[t] > 0;
    }
    CHECK(accepted > drafted / 5 && accepted < drafted, "drafts accepted: %ld of %ld", accepted, drafted);
    /* 5 degrees of freedom: 30 is beyond the 1e-5 tail */
    CHECK(!outside && x2 < 30, "second token after %d (%ld cases) follows the target: chi-square %.1f", a, na, x2);
    ds_sampler_free(&smp);
    ds_dist_free(&p);
    ds_infer_free(ref);
    ds_infer_free(spec);
    free(first);
    free(second);
    fixture_free(&f);
}

TAP_MAIN()
