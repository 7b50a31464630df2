/* Unit tests of FP8 training numerics inside the network (ds_model_opts.linear_ops with lib/fp8/linear.h):
 *  - routing: every GEMM whose weight (or weight gradient) is a block Linear goes through the Linear table,
 *    in Fprop, Dgrad and Wgrad, and every other GEMM (output head, MoE router, MTP eh_proj) through the base
 *    backend; recorded by spying on both tables and mapping the operands back to parameter names;
 *  - a Linear table that computes exactly what the base does leaves forward and gradients bit-identical;
 *  - with the FP8 table, a layer's Linear outputs equal the FP8 scaled-GEMM reference (ds_fp8_linear_gemm,
 *    itself checked against numpy in tests/ref/fp8_block.py) bit for bit, while the router's logits and the
 *    head's logits equal the fp32 computation on the same inputs bit for bit;
 *  - FP8 training stays close to fp32: log-probs and every gradient tensor within the E4M3 error budget;
 *  - kv_b_on_ops keeps kv_b's products on the base backend (W8A8 scoring);
 *  - the inference engine's W8A8 (ds_infer_opts.linear_ops): the Linear projections' Fprop on the table, kv_b
 *    (absorbed and expanded), router, head and eh_proj never; its logits agree with the scoring model's
 *    W8A8 forward far closer than either agrees with fp32.
 */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "fp8/linear.h"
#include "infer/forward.h"
#include "model/layer.h"
#include "model/model.h"
#include "model_fixture.h"
#include "ops/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- a spying backend: records which parameter each GEMM multiplies by, then computes on the CPU ------- */

enum { PASS_FPROP = 1, PASS_DGRAD = 2, PASS_WGRAD = 4 };

typedef struct {
    const float *w, *g; /* parameter and gradient buffers of the model under test */
    size_t n;
    const ds_param *info;
    int n_info;
    int *seen;          /* [n_info] PASS_* bits seen through this table */
    int stray;          /* GEMMs whose weight operand is no parameter */
} spy_log;

static spy_log spy_lin, spy_base;

/* parameter index of a pointer into the parameter (or, grad = 1, gradient) buffer; -1 if none */
static int param_at(const spy_log *s, const float *p, int grad) {
    const float *base = grad ? s->g : s->w;
    if (!base || p < base || p >= base + s->n) return -1;
    size_t off = (size_t)(p - base);
    for (int i = 0; i < s->n_info; i++)
        if (off >= s->info[i].offset && off < s->info[i].offset + s->info[i].numel) return i;
    return -1;
}

static void spy_mark(spy_log *s, const float *p, int grad, int pass) {
    int i = param_at(s, p, grad);
    if (i < 0) s->stray++;
    else s->seen[i] |= pass;
}

/* The Linear conventions of linear.h: ta = 0 multiplies by B (tb = 1: Fprop, 0: Dgrad); ta = 1 is a Wgrad into C. */
static void spy_gemm(spy_log *s, int ta, int tb, const float *B, const float *C) {
    if (ta) spy_mark(s, C, 1, PASS_WGRAD);
    else spy_mark(s, B, 0, tb ? PASS_FPROP : PASS_DGRAD);
}

#define SPY_TABLE(tag, log)                                                                                   \
    static void tag##_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,         \
                           const float *B, int ldb, float beta, float *C, int ldc) {                          \
        spy_gemm(&log, ta, tb, B, C);                                                                         \
        ds_ops_cpu()->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);                             \
    }                                                                                                         \
    static void tag##_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A,      \
                           int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {  \
        for (int g = 0; g < ng; g++) spy_mark(&log, B + g * strideB, 0, tb ? PASS_FPROP : PASS_DGRAD);         \
        ds_ops_cpu()->gemm_rows(ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);              \
    }                                                                                                         \
    static void tag##_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,    \
                            const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {          \
        for (int g = 0; g < ng; g++) spy_mark(&log, C + g * strideC, 1, PASS_WGRAD);                           \
        ds_ops_cpu()->gemm_wgrad(ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);                \
    }                                                                                                         \
    static ds_ops tag##_table(void) {                                                                         \
        ds_ops t = *ds_ops_cpu();                                                                             \
        t.gemm = tag##_gemm, t.gemm_rows = tag##_rows, t.gemm_wgrad = tag##_wgrad;                            \
        return t;                                                                                             \
    }

SPY_TABLE(lin, spy_lin)
SPY_TABLE(base, spy_base)

/* ---- fixtures ----------------------------------------------------------------------------------------- */

/* fixture_tiny with widths past one 128-wide FP8 tile and not multiples of it (tails), so block boundaries
 * inside rows and columns are exercised */
static void fp8_config(ds_config *c) {
    fixture_tiny(c);
    c->hidden_size = 160;
    c->intermediate_size = 272;
    c->moe_intermediate_size = 136;
    c->q_lora_rank = 144;
    c->kv_lora_rank = 136;
    c->qk_nope_head_dim = 32;
    c->qk_rope_head_dim = 16;
    c->v_head_dim = 32;
    c->vocab_size = 300;
}

typedef struct {
    int B, T;
    int32_t tok[2 * 40], tgt[2 * 40];
    float dlogp[2 * 40], dmtp[2 * 40];
    ds_batch b;
} batch_t;

static void batch_make(batch_t *t, int V, uint64_t seed) {
    t->B = 2, t->T = 40;
    ds_rng r;
    ds_rng_init(&r, seed, 3);
    int n = t->B * t->T;
    for (int i = 0; i < n; i++) {
        t->tok[i] = (int32_t)ds_rng_below(&r, V);
        t->tgt[i] = (int32_t)ds_rng_below(&r, V);
        t->dlogp[i] = -1.0f / n;
        t->dmtp[i] = -0.3f / n;
    }
    t->b = (ds_batch){.B = t->B, .T = t->T, .tokens = t->tok, .targets = t->tgt};
}

static ds_model *make_model(const ds_config *c, const ds_ops *ops, const ds_ops *lin, int kv_b_on_ops, int train,
                            float scale) {
    ds_model_opts o = {.ops = ops, .linear_ops = lin, .kv_b_on_ops = kv_b_on_ops, .max_batch = 2, .max_seq = 40,
                       .train = train, .recompute = 1, .keep_logits = 1, .balance_alpha = 1e-3};
    ds_model *m = NULL;
    if (ds_model_create(&m, c, &o)) return NULL;
    fixture_generic_weights(m, 11, 0.1f, scale);
    return m;
}

static int run_step(ds_model *m, batch_t *t, ds_fwd_out *out) {
    ds_model_zero_grad(m);
    int rc = ds_model_forward(m, &t->b, out);
    if (!rc) rc = ds_model_backward(m, &t->b, t->dlogp, t->dmtp);
    return rc;
}

/* ---- which table each GEMM goes through ---------------------------------------------------------------- */

/* A block Linear in a decoder layer (MTP modules' included): everything with a weight matrix except the
 * router and eh_proj (spec 10: gating and the output head stay in high precision; eh_proj is BF16 in
 * DeepSeek's checkpoint). */
static int is_block_linear(const ds_param *p) {
    return p->kind == DS_PARAM_MATRIX && p->layer >= 0 && !strstr(p->name, "eh_proj");
}

static void spy_attach(spy_log *s, ds_model *m) {
    free(s->seen);
    memset(s, 0, sizeof *s);
    s->w = ds_model_params(m);
    s->g = ds_model_grads(m);
    s->n = ds_model_num_params(m);
    s->info = ds_model_params_info(m, &s->n_info);
    s->seen = calloc((size_t)s->n_info, sizeof(int));
}

static void check_routing(int kv_b_on_ops) {
    ds_config c;
    fp8_config(&c);
    ds_ops lin = lin_table(), base = base_table();
    ds_model *m = make_model(&c, &base, &lin, kv_b_on_ops, 1, 1.0f);
    CHECK(m != NULL, "model with a spying Linear table (kv_b_on_ops %d)", kv_b_on_ops);
    if (!m) return;
    spy_attach(&spy_lin, m);
    spy_attach(&spy_base, m);
    batch_t t;
    batch_make(&t, c.vocab_size, 5);
    ds_fwd_out out;
    CHECK(run_step(m, &t, &out) == 0, "forward and backward");
    int wrong = 0, linear = 0, high = 0;
    const int all = PASS_FPROP | PASS_DGRAD | PASS_WGRAD;
    for (int i = 0; i < spy_lin.n_info; i++) {
        const ds_param *p = &spy_lin.info[i];
        int on_lin = spy_lin.seen[i], on_base = spy_base.seen[i];
        int kvb = kv_b_on_ops && strstr(p->name, "kv_b_proj");
        if (is_block_linear(p) && !kvb) {
            linear++;
            if (on_lin != all || on_base) {
                wrong++;
                printf("# %s: Linear table passes %d, base %d\n", p->name, on_lin, on_base);
            }
        } else if (p->kind != DS_PARAM_NORM && p->kind != DS_PARAM_EMBED) {
            high++; /* head, router, eh_proj (and kv_b with kv_b_on_ops) */
            if (on_lin || on_base != all) {
                wrong++;
                printf("# %s: Linear table passes %d, base %d\n", p->name, on_lin, on_base);
            }
        } else if (on_lin || on_base) {
            wrong++;
            printf("# %s: a norm or the embedding in a GEMM\n", p->name);
        }
    }
    CHECK(wrong == 0 && linear > 20 && high >= 5,
          "%d block Linears in Fprop+Dgrad+Wgrad on the Linear table only; %d head/router/eh_proj%s on the base only",
          linear, high, kv_b_on_ops ? "/kv_b" : "");
    CHECK(spy_lin.stray == 0, "no Linear-table GEMM outside the parameters (%d)", spy_lin.stray);
    ds_model_free(m);
}

TEST(routing_fp8_tables) {
    check_routing(0);
    check_routing(1);
    free(spy_lin.seen), free(spy_base.seen);
    spy_lin.seen = spy_base.seen = NULL;
}

/* A Linear table computing exactly what the base does changes nothing: routing is the only difference. */
TEST(identity_linear_table_is_bit_identical) {
    ds_config c;
    fp8_config(&c);
    ds_ops lin = lin_table();
    ds_model *a = make_model(&c, NULL, NULL, 0, 1, 1.0f), *b = make_model(&c, NULL, &lin, 0, 1, 1.0f);
    CHECK(a && b, "two models");
    if (!a || !b) return;
    spy_attach(&spy_lin, b);
    batch_t t;
    batch_make(&t, c.vocab_size, 6);
    ds_fwd_out oa, ob;
    int n = t.B * t.T;
    CHECK(run_step(a, &t, &oa) == 0, "fp32 step");
    float *lpa = malloc(sizeof(float) * n), *mtpa = malloc(sizeof(float) * n);
    memcpy(lpa, oa.logp, sizeof(float) * n);
    memcpy(mtpa, oa.mtp_logp, sizeof(float) * n);
    CHECK(run_step(b, &t, &ob) == 0, "step with the Linear table");
    CHECK(!memcmp(lpa, ob.logp, sizeof(float) * n) && !memcmp(mtpa, ob.mtp_logp, sizeof(float) * n),
          "log-probs bit-identical");
    CHECK(!memcmp(ds_model_grads(a), ds_model_grads(b), sizeof(float) * ds_model_num_params(a)),
          "all %zu gradients bit-identical", ds_model_num_params(a));
    free(lpa), free(mtpa);
    free(spy_lin.seen);
    spy_lin.seen = NULL;
    ds_model_free(a);
    ds_model_free(b);
}

/* ---- FP8 numerics of one layer and the high-precision pieces around it ---------------------------------- */

static float *randn(size_t n, uint64_t seed, float std) {
    float *x = malloc(sizeof(float) * n);
    ds_randn_fill(x, n, seed, 1, std);
    return x;
}

TEST(layer_linears_are_fp8_router_and_head_fp32) {
    ds_config c;
    fp8_config(&c);
    ds_ops fp8;
    ds_fp8_linear_ops(&fp8, ds_ops_cpu());
    ds_model *m = make_model(&c, NULL, &fp8, 0, 1, 1.0f);
    CHECK(m != NULL, "model with the FP8 Linear table");
    if (!m) return;
    const ds_weights *W = ds_model_weights(m);
    ds_dims d;
    ds_dims_from_config(&d, &c);
    const int n = 37, la = d.Rkv + d.dr, qdim = d.H * d.dqk;
    const ds_layer_w *lw = &W->layer[1]; /* an MoE layer */
    float *xn = randn((size_t)n * d.D, 21, 1.0f), *cs = calloc((size_t)n * d.dr, sizeof(float));
    for (int i = 0; i < n * d.dr / 2; i++) cs[2 * i] = 1.0f; /* RoPE by angle 0: identity */
    float *cq = malloc(sizeof(float) * n * d.Rq), *cqn = malloc(sizeof(float) * n * d.Rq), *rq = malloc(sizeof(float) * n);
    float *q = malloc(sizeof(float) * n * qdim), *kva = malloc(sizeof(float) * n * la), *ckv = malloc(sizeof(float) * n * d.Rkv);
    float *rkv = malloc(sizeof(float) * n), *kpe = malloc(sizeof(float) * n * d.dr);
    float *ref = malloc(sizeof(float) * n * (qdim > la ? qdim : la));
    ds_layer_ctx ctx = {.ops = ds_ops_cpu(), .lin = &fp8, .d = &d, .B = 1, .T = n, .n = n, .cs = cs};
    ds_mla_query(&ctx, lw, xn, cq, rq, cqn, q);
    ds_mla_latent(&ctx, lw, xn, kva, rkv, ckv, kpe);
    ds_fp8_linear_gemm(0, 1, n, d.Rq, d.D, 1, xn, d.D, lw->q_a, d.D, 0, ref, d.Rq);
    CHECK(!memcmp(cq, ref, sizeof(float) * n * d.Rq), "q_a output = FP8 reference (1x128 x 128x128), bit for bit");
    ds_fp8_linear_gemm(0, 1, n, qdim, d.Rq, 1, cqn, d.Rq, lw->q_b, d.Rq, 0, ref, qdim);
    CHECK(!memcmp(q, ref, sizeof(float) * n * qdim), "q_b output = FP8 reference (RoPE at angle 0)");
    ds_fp8_linear_gemm(0, 1, n, la, d.D, 1, xn, d.D, lw->kv_a, d.D, 0, ref, la);
    CHECK(!memcmp(kva, ref, sizeof(float) * n * la), "kv_a output = FP8 reference");
    ds_ops_cpu()->gemm(0, 1, n, la, d.D, 1, xn, d.D, lw->kv_a, d.D, 0, ref, la);
    double diff = 0, norm = 0;
    for (int i = 0; i < n * la; i++) diff += (kva[i] - ref[i]) * (double)(kva[i] - ref[i]), norm += (double)ref[i] * ref[i];
    CHECK(diff > 0 && sqrt(diff / norm) < 0.08, "and it differs from fp32 by the E4M3 error: %.4f relative", sqrt(diff / norm));

    /* the router stays fp32, whatever the Linear table */
    float *logits = malloc(sizeof(float) * n * d.E), *scores = malloc(sizeof(float) * n * d.E);
    float *wts = malloc(sizeof(float) * n * d.K);
    int32_t *idx = malloc(sizeof(int32_t) * n * d.K);
    ds_moe_route(&ctx, lw, NULL, xn, logits, scores, idx, wts);
    ds_ops_cpu()->gemm(0, 1, n, d.E, d.D, 1, xn, d.D, lw->router, d.D, 0, ref, d.E);
    CHECK(!memcmp(logits, ref, sizeof(float) * n * d.E), "router logits = the fp32 GEMM, bit for bit");

    /* the head: logits of a whole FP8 forward = fp32 head on the last layer's output */
    batch_t t;
    batch_make(&t, c.vocab_size, 7);
    ds_fwd_out out;
    CHECK(ds_model_forward(m, &t.b, &out) == 0 && out.logits, "FP8 forward keeping logits");
    const int nt = t.B * t.T, V = c.vocab_size;
    float *h = malloc(sizeof(float) * nt * d.D), *hl = malloc(sizeof(float) * nt * V), *rs = malloc(sizeof(float) * nt);
    ds_ops_cpu()->rmsnorm_fwd(h, d.D, rs, ds_model_hidden(m, c.num_hidden_layers), d.D, W->final_norm, nt, d.D, d.eps);
    ds_ops_cpu()->gemm(0, 1, nt, V, d.D, 1, h, d.D, W->head, d.D, 0, hl, V);
    CHECK(!memcmp(hl, out.logits, sizeof(float) * nt * V), "head logits = fp32 head of the final hidden state, bit for bit");
    CHECK(ds_fp8_linear_status() == 0, "no FP8 failure recorded");
    free(h), free(hl), free(rs);
    free(logits), free(scores), free(wts), free(idx);
    free(xn), free(cs), free(cq), free(cqn), free(rq), free(q), free(kva), free(ckv), free(rkv), free(kpe), free(ref);
    ds_model_free(m);
}

/* ---- FP8 training against fp32 ------------------------------------------------------------------------- */

/* One step of fp32 and FP8 on the same weights and batch: the loss, and the gradient as a whole (cosine and
 * relative norm of the difference) and per tensor. A dense model without MTP, because with routed experts a
 * token whose top-k flips under a 1e-3 perturbation already moves its gradients by tens of percent; random
 * targets make the gradients a sum of nearly cancelling terms, which is why per-tensor errors are several
 * times the ~3.6% E4M3 error of one product (a deterministic ±2% perturbation of every Linear operand gives
 * 8-20% here). */
static void compare_step(const ds_config *c, float scale, double loss_tol, double cos_min, double tensor_tol) {
    ds_ops fp8;
    ds_fp8_linear_ops(&fp8, ds_ops_cpu());
    ds_model *a = make_model(c, NULL, NULL, 0, 1, scale), *b = make_model(c, NULL, &fp8, 0, 1, scale);
    CHECK(a && b, "fp32 and FP8 models");
    if (!a || !b) return;
    batch_t t;
    batch_make(&t, c->vocab_size, 8);
    ds_fwd_out oa, ob;
    const int n = t.B * t.T;
    CHECK(run_step(a, &t, &oa) == 0, "fp32 step");
    double la = 0, lb = 0;
    for (int i = 0; i < n; i++) la -= oa.logp[i];
    CHECK(run_step(b, &t, &ob) == 0, "FP8 step");
    for (int i = 0; i < n; i++) lb -= ob.logp[i];
    CHECK(la != lb && fabs(lb - la) / la < loss_tol, "loss %.6f vs fp32 %.6f: %.3f%% apart (< %.2g%%)", lb / n, la / n,
          100 * fabs(lb - la) / la, 100 * loss_tol);
    int np;
    const ds_param *p = ds_model_params_info(a, &np);
    const float *ga = ds_model_grads(a), *gb = ds_model_grads(b);
    double worst = 0, dot = 0, na = 0, nb = 0, dd = 0;
    const char *worst_name = "";
    for (int i = 0; i < np; i++) {
        double d2 = 0, n2 = 0;
        for (size_t j = 0; j < p[i].numel; j++) {
            double x = ga[p[i].offset + j], y = gb[p[i].offset + j];
            d2 += (x - y) * (x - y), n2 += x * x;
            dot += x * y, na += x * x, nb += y * y;
        }
        dd += d2;
        double rel = n2 > 0 ? sqrt(d2 / n2) : 0;
        if (getenv("FP8_DEBUG")) printf("# %-60s %.4f\n", p[i].name, rel);
        if (rel > worst) worst = rel, worst_name = p[i].name;
    }
    double cosine = dot / sqrt(na * nb);
    CHECK(cosine > cos_min && cosine < 1, "gradient cosine to fp32 %.5f (> %.3g), relative difference %.4f", cosine,
          cos_min, sqrt(dd / na));
    if (tensor_tol > 0)
        CHECK(worst > 0 && worst < tensor_tol, "every tensor's gradient within %.2g of fp32 (worst %.3f: %s)", tensor_tol,
          worst, worst_name);
    CHECK(ds_fp8_linear_status() == 0, "no FP8 failure recorded");
    ds_model_free(a);
    ds_model_free(b);
}

TEST(fp8_step_close_to_fp32_dense) {
    ds_config c;
    fp8_config(&c);
    c.n_routed_experts = 0, c.first_k_dense_replace = c.num_hidden_layers, c.num_nextn_predict_layers = 0;
    compare_step(&c, 0.5f, 0.003, 0.98, 0.4);
}

/* With experts, routers and MTP the loss still agrees closely; the gradient as a whole still points the same way. */
TEST(fp8_step_close_to_fp32_moe) {
    ds_config c;
    fp8_config(&c);
    compare_step(&c, 1.0f, 0.03, 0.6, 0);
}

/* ---- W8A8 inference ------------------------------------------------------------------------------------ */

static int32_t *test_tokens(int n, int V, uint64_t seed) {
    int32_t *t = malloc(sizeof(int32_t) * n);
    ds_rng r;
    ds_rng_init(&r, seed, 0);
    for (int i = 0; i < n; i++) t[i] = (int32_t)ds_rng_below(&r, (uint64_t)V);
    return t;
}

/* prefill (naive form) of n tokens into slot 0, logits of every row; then one absorbed decode step and one
 * MTP step when the engine has the module */
static int engine_run(ds_model *m, const ds_ops *lin, const int32_t *tok, int n, float *logits) {
    const float *bias[16];
    ds_infer_model im;
    ds_infer_model_of(m, &im, bias);
    ds_infer_opts o = {.max_tokens = n + 1, .slots = 1, .max_len = n + 2, .max_out = n + 1, .mtp = im.mtp_depth > 0,
                       .linear_ops = lin};
    ds_infer *e = NULL;
    int rc = ds_infer_create(&e, &im, ds_ops_cpu(), &o);
    const int D = ds_model_config(m)->hidden_size, V = ds_model_config(m)->vocab_size;
    int32_t *slot = calloc((size_t)n + 1, sizeof(int32_t)), *pos = malloc(sizeof(int32_t) * (n + 1));
    float *hidden = malloc(sizeof(float) * (size_t)(n + 1) * D), *one = malloc(sizeof(float) * V);
    for (int i = 0; i <= n; i++) pos[i] = i;
    ds_infer_step s = {.n = n, .tok = tok, .slot = slot, .pos = pos, .form = DS_ATTN_NAIVE, .n_out = n,
                       .logits = logits, .hidden = hidden};
    if (!rc) rc = ds_infer_forward(e, &s);
    ds_infer_step d = {.n = 1, .tok = tok, .slot = slot, .pos = pos + n, .form = DS_ATTN_ABSORBED, .n_out = 1,
                       .logits = one};
    if (!rc) rc = ds_infer_forward(e, &d);
    if (!rc && o.mtp) rc = ds_infer_mtp(e, n - 1, tok + 1, hidden, slot, pos, 1, NULL, one);
    ds_infer_free(e);
    free(slot), free(pos), free(hidden), free(one);
    return rc;
}

TEST(w8a8_engine_routing) {
    ds_config c;
    fp8_config(&c);
    ds_model *m = make_model(&c, NULL, NULL, 0, 0, 1.0f);
    CHECK(m != NULL, "model");
    if (!m) return;
    spy_attach(&spy_lin, m);
    spy_attach(&spy_base, m);
    ds_ops lin = lin_table(), base = base_table();
    const int n = 24;
    int32_t *tok = test_tokens(n, c.vocab_size, 3);
    float *logits = malloc(sizeof(float) * n * c.vocab_size);
    /* the spying base table serves as the engine's backend through the Linear table's copy of it: record
     * the base's GEMMs by running the engine on it */
    const float *bias[16];
    ds_infer_model im;
    ds_infer_model_of(m, &im, bias);
    ds_infer_opts o = {.max_tokens = n + 1, .slots = 1, .max_len = n + 2, .max_out = n + 1, .mtp = 1, .linear_ops = &lin};
    ds_infer *e = NULL;
    lin.name = base.name;
    int rc = ds_infer_create(&e, &im, &base, &o);
    int32_t slot[32] = {0}, pos[32];
    for (int i = 0; i <= n; i++) pos[i] = i;
    float *hidden = malloc(sizeof(float) * n * c.hidden_size);
    ds_infer_step s = {.n = n, .tok = tok, .slot = slot, .pos = pos, .form = DS_ATTN_NAIVE, .n_out = n, .logits = logits,
                       .hidden = hidden};
    if (!rc) rc = ds_infer_forward(e, &s);
    ds_infer_step d = {.n = 1, .tok = tok, .slot = slot, .pos = pos + n, .form = DS_ATTN_ABSORBED, .n_out = 1, .logits = logits};
    if (!rc) rc = ds_infer_forward(e, &d);
    if (!rc) rc = ds_infer_mtp(e, n - 1, tok + 1, hidden, slot, pos, 1, NULL, logits);
    CHECK(rc == 0, "naive prefill, an absorbed decode step and an MTP step with a spying Linear table");
    int wrong = 0, linear = 0, high = 0;
    for (int i = 0; i < spy_lin.n_info; i++) {
        const ds_param *p = &spy_lin.info[i];
        int on_lin = spy_lin.seen[i], on_base = spy_base.seen[i];
        if (is_block_linear(p) && !strstr(p->name, "kv_b_proj")) {
            linear++;
            if (on_lin != PASS_FPROP || on_base) wrong++, printf("# %s: Linear %d, base %d\n", p->name, on_lin, on_base);
        } else if (p->kind != DS_PARAM_NORM && p->kind != DS_PARAM_EMBED) {
            high++;
            if (on_lin || !on_base) wrong++, printf("# %s: Linear %d, base %d\n", p->name, on_lin, on_base);
        }
    }
    CHECK(wrong == 0 && linear > 20 && high >= 9,
          "%d Linear projections on the Linear table (Fprop only); kv_b, router, head, eh_proj (%d) on the backend",
          linear, high);
    ds_infer_free(e);
    free(tok), free(logits), free(hidden);
    free(spy_lin.seen), free(spy_base.seen);
    spy_lin.seen = spy_base.seen = NULL;
    ds_model_free(m);
}

TEST(w8a8_engine_matches_scoring_model) {
    ds_config c;
    fp8_config(&c);
    ds_ops fp8;
    ds_fp8_linear_ops(&fp8, ds_ops_cpu());
    ds_model *m = make_model(&c, NULL, &fp8, 1, 0, 0.7f); /* the scoring model: kv_b on the backend */
    CHECK(m != NULL, "scoring model with W8A8 Linear layers");
    if (!m) return;
    const int n = 40, V = c.vocab_size;
    int32_t *tok = test_tokens(n, V, 4), *tgt = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) tgt[i] = -1;
    ds_batch b = {.B = 1, .T = n, .tokens = tok, .targets = tgt};
    ds_fwd_out out;
    float *e8 = malloc(sizeof(float) * n * V), *e32 = malloc(sizeof(float) * n * V);
    CHECK(ds_model_forward(m, &b, &out) == 0 && out.logits, "model forward");
    CHECK(engine_run(m, &fp8, tok, n, e8) == 0 && engine_run(m, NULL, tok, n, e32) == 0, "engine W8A8 and fp32");
    double d_model = 0, d_fp32 = 0, norm = 0;
    for (int i = 0; i < n * V; i++) {
        d_model += (e8[i] - out.logits[i]) * (double)(e8[i] - out.logits[i]);
        d_fp32 += (e8[i] - e32[i]) * (double)(e8[i] - e32[i]);
        norm += (double)e32[i] * e32[i];
    }
    d_model = sqrt(d_model / norm), d_fp32 = sqrt(d_fp32 / norm);
    CHECK(d_fp32 > 1e-3 && d_model < d_fp32 / 20,
          "engine W8A8 vs scoring W8A8 logits %.2g relative; vs fp32 %.2g (the FP8 error)", d_model, d_fp32);
    CHECK(ds_fp8_linear_status() == 0, "no FP8 failure recorded");
    free(tok), free(tgt), free(e8), free(e32);
    ds_model_free(m);
}

TEST(linear_table_must_share_memory) {
    ds_config c;
    fp8_config(&c);
    ds_ops other = *ds_ops_cpu();
    other.name = "cuda";
    ds_model_opts o = {.linear_ops = &other, .max_batch = 1, .max_seq = 8};
    ds_model *m = NULL;
    int rc = ds_model_create(&m, &c, &o);
    CHECK(rc != 0 && m == NULL && strstr(ds_errmsg(), "must share memory"), "refused: %s", ds_errmsg());
}

TAP_MAIN()
