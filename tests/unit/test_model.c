/* Unit tests of the whole network (lib/model): gradients against central finite differences (every
 * parameter tensor, MTP and the balance loss included), recompute vs stored activations (identical
 * gradients, less memory), pipeline-stage pieces, sample masking, and the 671B memory plan. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "model/internal.h"
#include "model/moe.h"
#include "model_fixture.h"
#include "train/balance.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int B, T;
    int32_t *tok, *tgt, *seg, *pos, *len;
    float *cm, *cmtp; /* loss coefficients: d loss / d logp, d loss / d mtp_logp */
    ds_batch b;
} batch_t;

static void batch_make(batch_t *t, int B, int T, int V, int depth, uint64_t seed, int with_seg) {
    memset(t, 0, sizeof *t);
    int n = B * T;
    t->B = B, t->T = T;
    t->tok = malloc(sizeof(int32_t) * n);
    t->tgt = malloc(sizeof(int32_t) * n);
    t->cm = malloc(sizeof(float) * n);
    t->cmtp = malloc(sizeof(float) * (size_t)(depth > 0 ? depth : 1) * n);
    ds_rng r;
    ds_rng_init(&r, seed, 7);
    for (int i = 0; i < n; i++) {
        t->tok[i] = (int32_t)ds_rng_below(&r, V);
        t->tgt[i] = ds_rng_below(&r, 8) == 0 ? -1 : (int32_t)ds_rng_below(&r, V);
        t->cm[i] = (float)(ds_rng_uniform(&r) * 2 - 1) / n;
    }
    for (int i = 0; i < depth * n; i++) t->cmtp[i] = (float)(ds_rng_uniform(&r) * 2 - 1) * 0.3f / n;
    if (with_seg) {
        t->seg = malloc(sizeof(int32_t) * n);
        for (int i = 0; i < n; i++) t->seg[i] = (i / T) * 10 + (i % T >= T / 3) + (i % T >= T - 2);
    }
    t->b = (ds_batch){.B = B, .T = T, .tokens = t->tok, .targets = t->tgt, .pos = t->pos, .seg = t->seg};
}

static void batch_free(batch_t *t) {
    free(t->tok), free(t->tgt), free(t->seg), free(t->pos), free(t->len), free(t->cm), free(t->cmtp);
}

/* Row r keeps its first len tokens; the rest is padding (token 1, no targets, no loss), as SFT and RL pad. */
static void batch_pad(batch_t *t, int r, int len, int depth) {
    int n = t->B * t->T;
    if (!t->len) {
        t->len = malloc(sizeof(int32_t) * t->B);
        for (int i = 0; i < t->B; i++) t->len[i] = t->T;
    }
    t->len[r] = len;
    for (int p = len; p < t->T; p++) {
        int i = r * t->T + p;
        t->tok[i] = 1, t->tgt[i] = -1, t->cm[i] = 0;
        for (int k = 1; k <= depth; k++)
            if (i - k >= r * t->T) t->cmtp[(size_t)(k - 1) * n + i - k] = 0;
    }
    t->b.len = t->len;
}

/* model_fixture.h's generic weights (norm gains away from 1), and non-zero expert biases */
static void init_generic(ds_model *m, uint64_t seed) {
    fixture_generic_weights(m, seed, 0.2f, 1.0f);
    const ds_config *c = ds_model_config(m);
    for (int l = 0; l < c->num_hidden_layers + c->num_nextn_predict_layers; l++) {
        float *bias = ds_model_expert_bias(m, l);
        if (bias) ds_randn_fill(bias, c->n_routed_experts, seed + 3, (uint64_t)l, 0.1f);
    }
}

static double loss_of(ds_model *m, batch_t *t, int *rc) {
    ds_fwd_out out;
    *rc = ds_model_forward(m, &t->b, &out);
    if (*rc) return NAN;
    int n = t->B * t->T, depth = ds_model_mtp_depth(m);
    double L = out.bal_loss;
    for (int i = 0; i < n; i++) L += (double)t->cm[i] * out.logp[i];
    for (int i = 0; i < depth * n; i++) L += (double)t->cmtp[i] * out.mtp_logp[i];
    return L;
}

/* the routing decisions of every MoE layer, to detect a finite-difference step that flips a selection */
static size_t routing_snapshot(ds_model *m, int32_t *dst) {
    size_t k = 0, nK = (size_t)m->n * m->dims.K;
    for (int l = 0; l < m->n_layers_total; l++) {
        if (m->moe_slot[l] < 0) continue;
        if (dst) memcpy(dst + k, m->tape[l].idx, sizeof(int32_t) * nK);
        k += nK;
    }
    return k;
}

/* 1: gradcheck's analytic gradient comes from the backward split into B (weight gradients deferred under
 * a key) and W (the key run), instead of the whole backward */
static int g_split;

static int backward_split(ds_model *m, const ds_batch *b, const float *cm, const float *cmtp, int key) {
    int rc = ds_model_wgrad_defer(m, key);
    if (!rc) rc = ds_model_backward(m, b, cm, cmtp);
    ds_model_wgrad_defer(m, -1);
    if (!rc && ds_model_wgrad_pending(m, key) == 0) rc = ds_fail(DS_ERR, "B deferred no weight gradient");
    if (!rc) rc = ds_model_wgrad_run(m, key);
    return rc;
}

/* Directional derivative of the loss along a unit direction u of each parameter tensor, by the 4-point
 * central stencil (error O(h^4)), against the analytic gradient. u mixes the analytic gradient's direction
 * (the largest signal over fp32 rounding noise in the loss) with a random one (so an error orthogonal to the
 * gradient shows too). Returns the worst relative error. */
static double gradcheck(ds_model *m, batch_t *t, double h, double tol, const char *what) {
    int rc, np, depth = ds_model_mtp_depth(m);
    double L0 = loss_of(m, t, &rc);
    CHECK(rc == 0 && isfinite(L0), "%s: forward%s%s", what, rc ? ": " : "", rc ? ds_errmsg() : "");
    ds_model_zero_grad(m);
    rc = g_split ? backward_split(m, &t->b, t->cm, depth ? t->cmtp : NULL, 3)
                 : ds_model_backward(m, &t->b, t->cm, depth ? t->cmtp : NULL);
    CHECK(rc == 0, "%s: backward%s%s", what, rc ? ": " : "", rc ? ds_errmsg() : "");
    size_t nr = routing_snapshot(m, NULL);
    int32_t *r0 = malloc(sizeof(int32_t) * (nr + 1)), *r1 = malloc(sizeof(int32_t) * (nr + 1));
    routing_snapshot(m, r0);
    const ds_param *p = ds_model_params_info(m, &np);
    float *w = ds_model_params(m), *g = ds_model_grads(m);
    double worst = 0.0;
    int checked = 0, skipped = 0, candidates = 0;
    for (int i = 0; i < np; i++) {
        /* every tensor except most routed experts (their code path is shared; check the first two) */
        if (p[i].expert >= 2) continue;
        candidates++;
        size_t nel = p[i].numel;
        float *x = w + p[i].offset, *gx = g + p[i].offset;
        float *save = malloc(sizeof(float) * nel), *u = malloc(sizeof(float) * nel);
        memcpy(save, x, sizeof(float) * nel);
        double fd = 0, an = 0;
        int ok = 0;
        double hs = h;
        for (int attempt = 0; attempt < 8 && !ok; attempt++) {
            /* a routing flip: halve the step, and from the fourth try also take a new direction */
            if (attempt) hs *= 0.5;
            ds_randn_fill(u, nel, 99 + (attempt >= 3 ? attempt : 0), ds_stream_id(p[i].name), 1.0f);
            double nu = 0, ng = 0, nrm = 0;
            for (size_t j = 0; j < nel; j++) nu += (double)u[j] * u[j], ng += (double)gx[j] * gx[j];
            nu = sqrt(nu), ng = sqrt(ng);
            for (size_t j = 0; j < nel; j++) u[j] = (float)(u[j] / nu + (ng > 0 ? gx[j] / ng : 0.0));
            for (size_t j = 0; j < nel; j++) nrm += (double)u[j] * u[j];
            nrm = sqrt(nrm);
            an = 0;
            for (size_t j = 0; j < nel; j++) an += (double)gx[j] * u[j] / nrm;
            double f[4];
            const double steps[4] = {-2, -1, 1, 2};
            ok = 1;
            for (int s = 0; s < 4 && ok; s++) {
                for (size_t j = 0; j < nel; j++) x[j] = (float)(save[j] + steps[s] * hs * u[j] / nrm);
                f[s] = loss_of(m, t, &rc);
                routing_snapshot(m, r1);
                if (memcmp(r0, r1, sizeof(int32_t) * nr)) ok = 0; /* a selection flipped: not differentiable */
            }
            memcpy(x, save, sizeof(float) * nel);
            fd = (8.0 * (f[2] - f[1]) - (f[3] - f[0])) / (12.0 * hs);
            if (!ok) skipped++;
        }
        if (ok) {
            double err = fabs(fd - an) / fmax(fabs(an), 1e-3);
            if (err > worst) worst = err;
            if (err > tol) CHECK(0, "%s: %s: finite difference %.8g vs backward %.8g", what, p[i].name, fd, an);
            checked++;
        }
        free(save), free(u);
    }
    /* restore the forward of the unperturbed weights */
    loss_of(m, t, &rc);
    CHECK(checked == candidates, "%s: %d of %d tensors checked (%d steps retried for routing flips)", what, checked,
          candidates, skipped);
    CHECK(worst <= tol, "%s: worst relative error %.2e over %d tensors (tol %.0e)", what, worst, checked, tol);
    free(r0), free(r1);
    return worst;
}

static ds_model *make(const ds_config *c, int B, int T, int recompute, double alpha) {
    ds_model_opts o = {.max_batch = B, .max_seq = T, .train = 1, .recompute = recompute, .balance_alpha = alpha};
    ds_model *m = NULL;
    int rc = ds_model_create(&m, c, &o);
    CHECK(rc == 0, "create%s%s", rc ? ": " : "", rc ? ds_errmsg() : "");
    return m;
}

TEST(gradcheck_full_model) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *m = make(&c, 2, 12, 1, 0.05);
    if (!m) return;
    init_generic(m, 11);
    batch_t t;
    batch_make(&t, 2, 12, c.vocab_size, 1, 5, 0);
    gradcheck(m, &t, 2e-3, 5e-3, "q_lora, MTP, balance loss");
    batch_pad(&t, 1, 7, 1);
    gradcheck(m, &t, 2e-3, 5e-3, "a row padded after 7 tokens");
    batch_free(&t);
    ds_model_free(m);
}

TEST(gradcheck_no_q_lora_softmax_segments) {
    ds_config c;
    fixture_tiny(&c);
    c.q_lora_rank = 0;
    c.scoring_func = DS_SCORE_SOFTMAX;
    strcpy(c.topk_method, "group_limited_greedy");
    c.norm_topk_prob = 0;
    c.routed_scaling_factor = 1.5;
    c.num_nextn_predict_layers = 2;
    fixture_yarn(&c, 4.0, 8, 0.8, 0.8);
    ds_model *m = make(&c, 2, 8, 0, 0.05);
    if (!m) return;
    init_generic(m, 12);
    batch_t t;
    batch_make(&t, 2, 8, c.vocab_size, 2, 6, 1);
    gradcheck(m, &t, 2e-3, 5e-3, "q_proj, softmax routing, YaRN, 2 MTP modules, segments");
    batch_free(&t);
    ds_model_free(m);
}

static int same_floats(const float *a, const float *b, size_t n) { return !memcmp(a, b, sizeof(float) * n); }

TEST(recompute_gives_identical_gradients_with_less_memory) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *a = make(&c, 2, 16, 1, 0.01), *b = make(&c, 2, 16, 0, 0.01);
    if (!a || !b) return;
    init_generic(a, 3);
    init_generic(b, 3);
    batch_t t;
    batch_make(&t, 2, 16, c.vocab_size, 1, 9, 0);
    float bias_before[8];
    memcpy(bias_before, ds_model_expert_bias(a, 1), sizeof bias_before);
    ds_fwd_out oa, ob;
    CHECK(!ds_model_forward(a, &t.b, &oa) && !ds_model_forward(b, &t.b, &ob), "forwards");
    CHECK(same_floats(oa.logp, ob.logp, 32) && same_floats(oa.mtp_logp, ob.mtp_logp, 32), "same log-probs");
    CHECK(!ds_model_backward(a, &t.b, t.cm, t.cmtp) && !ds_model_backward(b, &t.b, t.cm, t.cmtp), "backwards");
    CHECK(same_floats(ds_model_grads(a), ds_model_grads(b), ds_model_num_params(a)),
          "recomputed and stored activations give bit-identical gradients (%zu)", ds_model_num_params(a));
    int np, bias_entries = 0;
    const ds_param *p = ds_model_params_info(a, &np);
    for (int i = 0; i < np; i++) bias_entries += strstr(p[i].name, "e_score_correction_bias") != NULL;
    CHECK(bias_entries == 0 && same_floats(bias_before, ds_model_expert_bias(a, 1), 8) &&
              ds_model_expert_bias(a, 0) == NULL,
          "the expert biases are outside the trainable parameters and untouched by backward");
    ds_mem_plan pa, pb;
    ds_model_opts oa_ = {.max_batch = 2, .max_seq = 16, .train = 1, .recompute = 1};
    ds_model_opts ob_ = oa_;
    ob_.recompute = 0;
    CHECK(!ds_model_plan(&c, &oa_, &pa) && !ds_model_plan(&c, &ob_, &pb), "plans");
    CHECK(pa.activation_bytes < pb.activation_bytes, "recompute keeps %zu activation bytes, storing %zu",
          pa.activation_bytes, pb.activation_bytes);
    CHECK(pa.activation_bytes == a->act.used && pb.activation_bytes == b->act.used,
          "the plan equals what create allocated (%zu, %zu)", a->act.used, b->act.used);
    batch_free(&t);
    ds_model_free(a);
    ds_model_free(b);
}

TEST(stage_pieces_equal_the_whole) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *a = make(&c, 2, 16, 1, 0.01), *b = make(&c, 2, 16, 1, 0.01);
    if (!a || !b) return;
    init_generic(a, 4);
    init_generic(b, 4);
    batch_t t;
    batch_make(&t, 2, 16, c.vocab_size, 1, 10, 0);
    ds_fwd_out oa, ob;
    CHECK(!ds_model_forward(a, &t.b, &oa), "whole forward");
    CHECK(!ds_model_prepare(b, &t.b) && !ds_model_embed_fwd(b) && !ds_model_layers_fwd(b, 0, 1) &&
              !ds_model_layers_fwd(b, 1, 3) && !ds_model_head_fwd(b, &ob),
          "forward in stages");
    CHECK(same_floats(oa.logp, ob.logp, 32) && oa.bal_loss == ob.bal_loss, "same outputs");
    CHECK(!memcmp(oa.expert_load, ob.expert_load, sizeof(int32_t) * oa.n_moe_layers * c.n_routed_experts),
          "same expert loads");
    int sum = 0;
    for (int e = 0; e < c.n_routed_experts; e++) sum += oa.expert_load[e];
    CHECK(oa.n_moe_layers == 3 && sum == 32 * c.num_experts_per_tok, "%d MoE layers, %d routed tokens in layer 1",
          oa.n_moe_layers, sum);
    CHECK(!ds_model_backward(a, &t.b, t.cm, t.cmtp), "whole backward");
    CHECK(!ds_model_head_bwd(b, t.cm, t.cmtp) && !ds_model_layers_bwd(b, 1, 3) && !ds_model_layers_bwd(b, 0, 1) &&
              !ds_model_embed_bwd(b),
          "backward in stages");
    CHECK(same_floats(ds_model_grads(a), ds_model_grads(b), ds_model_num_params(a)), "same gradients");
    CHECK(ds_model_layers_fwd(b, 2, 4) != 0 && strstr(ds_errmsg(), "layer range"), "bad range: %s", ds_errmsg());
    batch_free(&t);
    ds_model_free(a);
    ds_model_free(b);
}

/* The backward split into B and W: B alone leaves every GEMM weight gradient (Linear, router, experts, head,
 * eh_proj, embedding) untouched and the norm gains done; W completes it to the whole backward's gradients bit
 * for bit; finite differences agree with the split path; two micro-batches held in activation slots with
 * their Ws run late give the gradients of the two run one after the other. */
TEST(backward_split_b_w) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *a = make(&c, 2, 12, 1, 0.05), *b = make(&c, 2, 12, 1, 0.05);
    if (!a || !b) return;
    init_generic(a, 21);
    init_generic(b, 21);
    batch_t t, t2;
    batch_make(&t, 2, 12, c.vocab_size, 1, 31, 0);
    batch_make(&t2, 2, 12, c.vocab_size, 1, 32, 1);
    ds_fwd_out oa, ob;
    size_t np = ds_model_num_params(a);
    CHECK(!ds_model_forward(a, &t.b, &oa) && !ds_model_backward(a, &t.b, t.cm, t.cmtp), "whole backward");
    CHECK(!ds_model_forward(b, &t.b, &ob) && !ds_model_wgrad_defer(b, 5) && !ds_model_backward(b, &t.b, t.cm, t.cmtp),
          "B");
    int ninfo;
    const ds_param *p = ds_model_params_info(b, &ninfo);
    const float *ga = ds_model_grads(a), *gb = ds_model_grads(b);
    int gemm_zero = 1, norms_done = 1, n_gemm = 0;
    for (int i = 0; i < ninfo; i++) {
        int norm = p[i].kind == DS_PARAM_NORM;
        size_t nz = 0;
        for (size_t j = 0; j < p[i].numel; j++) nz += gb[p[i].offset + j] != 0.0f;
        if (norm) norms_done &= !memcmp(ga + p[i].offset, gb + p[i].offset, sizeof(float) * p[i].numel);
        else gemm_zero &= nz == 0, n_gemm++;
    }
    int pending = ds_model_wgrad_pending(b, 5);
    CHECK(gemm_zero && n_gemm > 20, "B leaves all %d GEMM weight gradients at zero", n_gemm);
    CHECK(norms_done, "B computes the RMSNorm gains' gradients");
    CHECK(pending >= 20 && ds_model_wgrad_pending(b, 6) == 0, "%d weight-gradient products deferred under key 5",
          pending);
    CHECK(same_floats(ds_model_hidden_grad(a), ds_model_hidden_grad(b), 24 * c.hidden_size),
          "B gives the input gradient of the whole backward");
    CHECK(!ds_model_wgrad_defer(b, -1) && !ds_model_wgrad_run(b, 5) && ds_model_wgrad_pending(b, -1) == 0, "W");
    CHECK(same_floats(ga, gb, np), "B + W = the whole backward, bit for bit (%zu gradients)", np);

    /* two micro-batches in flight: F0 F1 B1 B0 W0 W1 against F0 B0 F1 B1 */
    CHECK(!ds_model_forward(a, &t2.b, &oa) && !ds_model_backward(a, &t2.b, t2.cm, t2.cmtp), "second micro-batch");
    ds_model_zero_grad(a), ds_model_zero_grad(b);
    CHECK(!ds_model_forward(a, &t.b, &oa) && !ds_model_backward(a, &t.b, t.cm, t.cmtp) &&
              !ds_model_forward(a, &t2.b, &oa) && !ds_model_backward(a, &t2.b, t2.cm, t2.cmtp),
          "one after the other");
    CHECK(!ds_model_act_slots(b, 3), "three activation slots");
    CHECK(!ds_model_act_select(b, 1) && !ds_model_forward(b, &t.b, &ob), "F0 in slot 1");
    float logp0[24];
    memcpy(logp0, ob.logp, sizeof logp0);
    CHECK(!ds_model_act_select(b, 2) && !ds_model_forward(b, &t2.b, &ob) && same_floats(ob.logp, oa.logp, 24),
          "F1 in slot 2 gives the log-probs of the second micro-batch");
    CHECK(!ds_model_wgrad_defer(b, 1) && !ds_model_backward(b, &t2.b, t2.cm, t2.cmtp), "B1");
    CHECK(!ds_model_act_select(b, 1) && !ds_model_wgrad_defer(b, 0) && !ds_model_backward(b, &t.b, t.cm, t.cmtp),
          "B0 from slot 1");
    CHECK(!ds_model_wgrad_defer(b, -1) && !ds_model_wgrad_run(b, 0) && !ds_model_wgrad_run(b, 1), "W0 W1");
    double worst = 0;
    for (size_t j = 0; j < np; j++) {
        double e = fabs((double)ga[j] - gb[j]) / fmax(fabs((double)ga[j]), 1e-6);
        if (e > worst) worst = e;
    }
    CHECK(worst < 1e-5, "interleaved micro-batches: gradients within %.1e relative of sequential ones", worst);
    CHECK(ds_model_act_select(b, 3) != 0 && strstr(ds_errmsg(), "slot 3 of 3"), "slot out of range: %s", ds_errmsg());
    batch_free(&t2);
    /* finite differences through the split path */
    ds_model_act_select(b, 0);
    g_split = 1;
    gradcheck(b, &t, 2e-3, 5e-3, "B then W");
    g_split = 0;
    batch_free(&t);
    ds_model_free(a);
    ds_model_free(b);
}

/* Two samples packed into one row with segment ids give the log-probs of the samples run alone. */
TEST(sample_masking_equals_separate_rows) {
    ds_config c;
    fixture_tiny(&c);
    c.num_nextn_predict_layers = 1;
    ds_model_opts o = {.max_batch = 2, .max_seq = 20, .train = 0};
    ds_model *m = NULL;
    CHECK(!ds_model_create(&m, &c, &o), "create inference model (%s)", ds_errmsg());
    if (!m) return;
    init_generic(m, 5);
    int32_t tok[20], tgt[20], seg[20];
    for (int i = 0; i < 20; i++) tok[i] = (i * 13 + 5) % 64, tgt[i] = (i * 7 + 3) % 64, seg[i] = i < 12 ? 4 : 9;
    ds_batch packed = {.B = 1, .T = 20, .tokens = tok, .targets = tgt, .seg = seg};
    ds_fwd_out out;
    CHECK(!ds_model_forward(m, &packed, &out), "packed forward");
    float lp[20], mtp[20];
    memcpy(lp, out.logp, sizeof lp);
    memcpy(mtp, out.mtp_logp, sizeof mtp);
    double worst = 0;
    int mtp_ok = 1;
    for (int part = 0; part < 2; part++) {
        int off = part ? 12 : 0, len = part ? 8 : 12;
        ds_batch alone = {.B = 1, .T = len, .tokens = tok + off, .targets = tgt + off};
        CHECK(!ds_model_forward(m, &alone, &out), "sample %d alone", part);
        for (int i = 0; i < len; i++) {
            worst = fmax(worst, fabs(out.logp[i] - lp[off + i]));
            /* MTP: the last position of a sample has no next token in its segment */
            float want = i + 1 < len ? out.mtp_logp[i] : 0.0f;
            if (fabs(want - mtp[off + i]) > 1e-5) mtp_ok = 0;
        }
    }
    CHECK(worst < 1e-5, "packed vs alone: max |dlogp| %.2e", worst);
    CHECK(mtp_ok && mtp[11] == 0.0f && mtp[19] == 0.0f, "MTP log-probs masked at segment ends and equal elsewhere");
    ds_model_free(m);
}

/* The routing statistics of one forward: expert loads of every MoE layer (MTP's included) and the balance
 * loss; and, with dlogp = dmtp = 0, the gradient of the balance loss alone. */
typedef struct {
    int32_t load[64];
    double bal;
    float *grad;
} route_stats;

static int route_stats_of(ds_model *m, const ds_batch *b, route_stats *s) {
    ds_fwd_out out;
    int rc = ds_model_forward(m, b, &out);
    if (rc) return rc;
    memcpy(s->load, out.expert_load, sizeof(int32_t) * (size_t)out.n_moe_layers * m->dims.E);
    s->bal = out.bal_loss;
    size_t n = (size_t)b->B * b->T, np = ds_model_num_params(m);
    float *zero = calloc(2 * n, sizeof(float));
    ds_model_zero_grad(m);
    rc = ds_model_backward(m, b, zero, zero);
    s->grad = malloc(sizeof(float) * np);
    memcpy(s->grad, ds_model_grads(m), sizeof(float) * np);
    free(zero);
    return rc;
}

/* Padding (SFT's and RL's rows) and MTP positions with no next token in their sample are not routed: a
 * padded batch has the expert loads, balance loss, balance-loss gradient and bias update of the same rows
 * without their padding, and a packed row's MTP module counts no position across its samples. */
TEST(padding_is_not_routed) {
    ds_config c;
    fixture_tiny(&c);
    const int T = 16, E = c.n_routed_experts, K = c.num_experts_per_tok, nl = 3; /* 2 MoE layers + MTP */
    ds_model *m = make(&c, 2, T, 1, 0.05);
    if (!m) return;
    init_generic(m, 21);
    int32_t tok[32], tgt[32], len[2] = {T, 10};
    for (int i = 0; i < 32; i++) tok[i] = (i * 13 + 5) % 64, tgt[i] = (i * 7 + 3) % 64;
    for (int i = T + 10; i < 2 * T; i++) tok[i] = 1, tgt[i] = -1; /* padding: EOS tokens, no targets */
    ds_batch padded = {.B = 2, .T = T, .tokens = tok, .targets = tgt, .len = len};
    ds_batch row0 = {.B = 1, .T = T, .tokens = tok, .targets = tgt};
    ds_batch row1 = {.B = 1, .T = 10, .tokens = tok + T, .targets = tgt + T};
    route_stats sp, s0, s1;
    int rc = route_stats_of(m, &padded, &sp) || route_stats_of(m, &row0, &s0) || route_stats_of(m, &row1, &s1);
    CHECK(!rc, "forward and backward run%s%s", rc ? ": " : "", rc ? ds_errmsg() : "");
    int same = 1, total_ok = 1;
    for (int l = 0; l < nl; l++) {
        int total = 0;
        for (int e = 0; e < E; e++) same &= sp.load[l * E + e] == s0.load[l * E + e] + s1.load[l * E + e];
        for (int e = 0; e < E; e++) total += sp.load[l * E + e];
        total_ok &= total == K * (l < 2 ? T + 10 : T - 1 + 9);
    }
    CHECK(same && total_ok, "expert loads = the rows' without padding (%d tokens routed in a MoE layer)",
          (int)(sp.load[E] + sp.load[E + 1] + sp.load[E + 2] + sp.load[E + 3] + sp.load[E + 4] + sp.load[E + 5] +
                sp.load[E + 6] + sp.load[E + 7]) / K);
    /* the balance loss is a mean over the batch's rows; each row's over its own tokens */
    double want = (s0.bal + s1.bal) / 2;
    CHECK(fabs(sp.bal - want) <= 1e-6 * want, "balance loss %.9g = mean of the rows' %.9g", sp.bal, want);
    size_t np = ds_model_num_params(m);
    double num = 0, den = 0;
    for (size_t i = 0; i < np; i++) {
        double d = sp.grad[i] - 0.5 * ((double)s0.grad[i] + s1.grad[i]);
        num += d * d, den += (double)sp.grad[i] * sp.grad[i];
    }
    CHECK(den > 0 && sqrt(num / den) < 1e-5, "its gradient = the mean of the rows' (rel err %.2e)", sqrt(num / den));
    /* the auxiliary-loss-free bias update sees the same counts */
    ds_balance bp, bs;
    ds_balance_init(&bp, nl, E), ds_balance_init(&bs, nl, E);
    ds_balance_add(&bp, sp.load), ds_balance_add(&bs, s0.load), ds_balance_add(&bs, s1.load);
    float bias_p[3][8] = {{0}}, bias_s[3][8] = {{0}};
    float *vp[3] = {bias_p[0], bias_p[1], bias_p[2]}, *vs[3] = {bias_s[0], bias_s[1], bias_s[2]};
    ds_balance_update_bias(&bp, vp, 1e-3), ds_balance_update_bias(&bs, vs, 1e-3);
    CHECK(!memcmp(bias_p, bias_s, sizeof bias_p), "bias update identical");
    ds_balance_free(&bp), ds_balance_free(&bs);
    free(sp.grad), free(s0.grad), free(s1.grad);

    /* packed samples: the MTP module at a sample's last position has no next token there */
    int32_t seg[T], plen[1] = {13};
    for (int i = 0; i < T; i++) seg[i] = i < 7 ? 0 : i < 13 ? 1 : 2;
    ds_batch packed = {.B = 1, .T = T, .tokens = tok, .targets = tgt, .seg = seg, .len = plen};
    ds_batch a = {.B = 1, .T = 7, .tokens = tok, .targets = tgt}, b = {.B = 1, .T = 6, .tokens = tok + 7, .targets = tgt + 7};
    route_stats sk, sa, sb;
    rc = route_stats_of(m, &packed, &sk) || route_stats_of(m, &a, &sa) || route_stats_of(m, &b, &sb);
    CHECK(!rc, "packed and alone run%s%s", rc ? ": " : "", rc ? ds_errmsg() : "");
    same = 1;
    for (int i = 0; i < nl * E; i++) same &= sk.load[i] == sa.load[i] + sb.load[i];
    CHECK(same, "packed samples + padding: expert loads (MTP's included) = the samples' alone");
    free(sk.grad), free(sa.grad), free(sb.grad);
    ds_model_free(m);
}

/* A batch smaller than the model's maximum: outputs are laid out by the batch's own B*T. */
TEST(smaller_batch_layout) {
    ds_config c;
    fixture_tiny(&c);
    c.num_nextn_predict_layers = 2;
    ds_model_opts big = {.max_batch = 2, .max_seq = 16}, exact = {.max_batch = 1, .max_seq = 10};
    ds_model *a = NULL, *b = NULL;
    CHECK(!ds_model_create(&a, &c, &big) && !ds_model_create(&b, &c, &exact), "create");
    if (!a || !b) return;
    init_generic(a, 6);
    init_generic(b, 6);
    batch_t t;
    batch_make(&t, 1, 10, c.vocab_size, 2, 3, 0);
    ds_fwd_out oa, ob;
    CHECK(!ds_model_forward(a, &t.b, &oa) && !ds_model_forward(b, &t.b, &ob), "forwards");
    CHECK(same_floats(oa.logp, ob.logp, 10) && same_floats(oa.mtp_logp, ob.mtp_logp, 20), "same [B*T] and [D][B*T] outputs");
    int ok = 1;
    for (int k = 1; k <= 2; k++)
        for (int i = 0; i < 10; i++) ok &= (oa.mtp_logp[(k - 1) * 10 + i] != 0.0f) == (i + k < 10 && t.tgt[i + k] >= 0);
    CHECK(ok, "module k scores position t iff t+k < T and targets[t+k] >= 0");
    batch_free(&t);
    ds_model_free(a);
    ds_model_free(b);
}

/* Expert parallelism's seam (moe.h): experts split over two "ranks", each seeing only its own expert
 * ids (-1 elsewhere), give the outputs and gradients of all experts at once. */
TEST(experts_split_like_expert_parallelism) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *m = make(&c, 1, 16, 1, 0);
    if (!m) return;
    init_generic(m, 8);
    int n = 16, K = 2, D = c.hidden_size, E = 8, l = 1;
    float *x = malloc(sizeof(float) * n * D), *dy = malloc(sizeof(float) * n * D), w[32];
    ds_randn_fill(x, (size_t)n * D, 1, 1, 1.0f);
    ds_randn_fill(dy, (size_t)n * D, 1, 2, 1.0f);
    ds_randn_fill(w, 32, 1, 3, 1.0f);
    int32_t idx[32], ia[32], ib[32];
    for (int r = 0; r < n; r++) idx[r * K] = (r * 5) % E, idx[r * K + 1] = (r * 5 + 1 + r % 3) % E;
    for (int s = 0; s < n * K; s++) ia[s] = idx[s] < 4 ? idx[s] : -1, ib[s] = idx[s] >= 4 ? idx[s] - 4 : -1;
    size_t P = ds_model_num_params(m), nD = (size_t)n * D;
    float *y = calloc(nD, 4), *dx = calloc(nD, 4), dw[32], *g = malloc(4 * P);
    float *y2 = calloc(nD, 4), *dx2 = calloc(nD, 4), dwa[32], dwb[32];
    int32_t load[8], la[4], lb[4];
    ds_model_zero_grad(m);
    CHECK(!ds_moe_experts_fwd(m, l, 0, E, x, idx, w, n, y, load), "all experts");
    ds_moe_experts_bwd(m, l, 0, E, x, idx, w, n, dy, dx, dw);
    memcpy(g, ds_model_grads(m), 4 * P);
    ds_model_zero_grad(m);
    CHECK(!ds_moe_experts_fwd(m, l, 0, 4, x, ia, w, n, y2, la), "rank 0: experts 0-3");
    ds_moe_experts_bwd(m, l, 0, 4, x, ia, w, n, dy, dx2, dwa);
    CHECK(!ds_moe_experts_fwd(m, l, 4, 4, x, ib, w, n, y2, lb), "rank 1: experts 4-7");
    ds_moe_experts_bwd(m, l, 4, 4, x, ib, w, n, dy, dx2, dwb);
    double ey = 0, ex = 0, ew = 0, eg = 0;
    for (size_t i = 0; i < nD; i++) ey = fmax(ey, fabs(y[i] - y2[i])), ex = fmax(ex, fabs(dx[i] - dx2[i]));
    for (int s = 0; s < n * K; s++) ew = fmax(ew, fabs(dw[s] - (idx[s] < 4 ? dwa[s] : dwb[s])));
    for (size_t i = 0; i < P; i++) eg = fmax(eg, fabs(g[i] - ds_model_grads(m)[i]));
    int lok = 1;
    for (int e = 0; e < 4; e++) lok &= load[e] == la[e] && load[4 + e] == lb[e];
    CHECK(ey < 1e-5 && ex < 1e-5 && ew < 1e-5 && eg < 1e-5 && lok,
          "split = whole: y %.1e, dx %.1e, dw %.1e, weight grads %.1e, loads", ey, ex, ew, eg);
    free(x), free(dy), free(y), free(dx), free(g), free(y2), free(dx2);
    ds_model_free(m);
}

/* keep_logits: the logits are there (their log-softmax at the targets is logp), and the backward that
 * reuses them instead of recomputing gives the same gradients. */
TEST(keep_logits) {
    ds_config c;
    fixture_tiny(&c);
    ds_model_opts o = {.max_batch = 2, .max_seq = 12, .train = 1, .recompute = 1, .keep_logits = 1};
    ds_model *a = NULL, *b = make(&c, 2, 12, 1, 0);
    CHECK(!ds_model_create(&a, &c, &o), "create with keep_logits");
    if (!a || !b) return;
    init_generic(a, 9);
    init_generic(b, 9);
    batch_t t;
    batch_make(&t, 2, 12, c.vocab_size, 1, 4, 0);
    ds_fwd_out oa, ob;
    CHECK(!ds_model_forward(a, &t.b, &oa) && !ds_model_forward(b, &t.b, &ob), "forwards");
    double worst = 0;
    for (int i = 0; i < 24; i++) {
        const float *z = oa.logits + (size_t)i * c.vocab_size;
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < c.vocab_size; j++) mx = fmax(mx, z[j]);
        for (int j = 0; j < c.vocab_size; j++) s += exp(z[j] - mx);
        double want = t.tgt[i] >= 0 ? z[t.tgt[i]] - mx - log(s) : 0.0;
        worst = fmax(worst, fabs(want - oa.logp[i]));
    }
    CHECK(worst < 2e-6 && ob.logits == NULL, "logits kept: log-softmax at the targets = logp (%.1e); NULL otherwise",
          worst);
    CHECK(!ds_model_backward(a, &t.b, t.cm, t.cmtp) && !ds_model_backward(b, &t.b, t.cm, t.cmtp), "backwards");
    double eg = 0, ng = 0;
    for (size_t i = 0; i < ds_model_num_params(a); i++) {
        double x = ds_model_grads(a)[i], y = ds_model_grads(b)[i];
        eg += (x - y) * (x - y), ng += y * y;
    }
    CHECK(sqrt(eg / ng) < 1e-6, "same gradients without the head's recomputation (rel %.1e)", sqrt(eg / ng));
    batch_free(&t);
    ds_model_free(a), ds_model_free(b);
}

/* RoPE makes attention depend on position differences only: explicit positions equal to the defaults give
 * the same outputs, and shifting every position by a constant changes them by rounding only. */
TEST(explicit_positions) {
    ds_config c;
    fixture_tiny(&c);
    fixture_yarn(&c, 4.0, 32, 1.0, 1.0);
    ds_model_opts o = {.max_batch = 2, .max_seq = 12};
    ds_model *m = NULL;
    CHECK(!ds_model_create(&m, &c, &o), "create");
    if (!m) return;
    init_generic(m, 10);
    batch_t t;
    batch_make(&t, 2, 12, c.vocab_size, 1, 6, 0);
    ds_fwd_out out;
    float base[24], mtp[24];
    CHECK(!ds_model_forward(m, &t.b, &out), "default positions");
    memcpy(base, out.logp, sizeof base), memcpy(mtp, out.mtp_logp, sizeof mtp);
    int32_t pos[24];
    for (int i = 0; i < 24; i++) pos[i] = i % 12;
    t.b.pos = pos;
    CHECK(!ds_model_forward(m, &t.b, &out) && same_floats(base, out.logp, 24) && same_floats(mtp, out.mtp_logp, 24),
          "explicit 0..T-1 = default");
    for (int i = 0; i < 24; i++) pos[i] = i % 12 + 1000;
    CHECK(!ds_model_forward(m, &t.b, &out), "shifted by 1000");
    double worst = 0;
    for (int i = 0; i < 24; i++) worst = fmax(worst, fabs(out.logp[i] - base[i]));
    CHECK(worst < 2e-4, "a constant shift changes log-probs by rounding only: %.1e", worst);
    pos[5] = -1;
    CHECK(ds_model_forward(m, &t.b, &out) == DS_ERR && strstr(ds_errmsg(), "negative position -1"), "%s", ds_errmsg());
    t.b.pos = NULL;
    batch_free(&t);
    ds_model_free(m);
}

/* share/configs/deepseek-v3-671b.json (io's) loads, plans, and its counts agree with io's. */
TEST(plan_671b_from_share_config) {
    const char *root = getenv("DS_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/share/configs/deepseek-v3-671b.json", root ? root : ".");
    ds_config c;
    if (ds_config_load_file(&c, path)) {
        CHECK(0, "load share/configs/deepseek-v3-671b.json: %s", ds_errmsg());
        return;
    }
    ds_model_opts o = {.max_batch = 1, .max_seq = 4096, .train = 1, .recompute = 1};
    ds_mem_plan p;
    ds_param_counts pc;
    ds_config_counts(&c, &pc);
    int rc = ds_model_plan(&c, &o, &p);
    CHECK(rc == 0, "plan%s%s", rc ? ": " : "", rc ? ds_errmsg() : "");
    int64_t mtp_bias = (int64_t)c.num_nextn_predict_layers * c.n_routed_experts;
    CHECK(pc.total == p.n_params_main + p.n_expert_bias - mtp_bias && pc.mtp == p.n_params_mtp + mtp_bias,
          "config counts (total %lld, mtp %lld) = the parameter table's", (long long)pc.total, (long long)pc.mtp);
    CHECK(p.total_bytes == p.params_bytes + p.grads_bytes + p.optimizer_bytes + p.activation_bytes &&
              p.total_bytes > (size_t)10000 << 30,
          "%.1f TiB to train on one device", p.total_bytes / 1099511627776.0);
    ds_config_free(&c);
}

/* The V3 shape: plans memory and counts parameters without allocating them. */
TEST(plan_671b) {
    ds_config c;
    fixture_671b(&c);
    ds_model_opts o = {.max_batch = 1, .max_seq = 4096, .train = 1, .recompute = 1};
    ds_mem_plan p;
    int prc = ds_model_plan(&c, &o, &p);
    CHECK(prc == 0, "plan%s%s", prc ? ": " : "", prc ? ds_errmsg() : "");
    /* spec 1.3: main model 671.03B (its gate biases included), MTP module 11.61B unique parameters */
    double main_b = (p.n_params_main + p.n_expert_bias - 256.0) / 1e9, mtp_b = (p.n_params_mtp + 256.0) / 1e9;
    CHECK(fabs(main_b - 671.03) < 0.01, "main model %.3fB parameters", main_b);
    CHECK(fabs(mtp_b - 11.61) < 0.01, "MTP module %.3fB parameters", mtp_b);
    /* the released checkpoint's 91,991 tensors (spec 9.2) are ours, the 59 gate biases, the MTP layer's copies
     * of embedding and head, and one weight_scale_inv per FP8 matrix: 5 attention matrices x 62 layers,
     * 3 x 3 dense, (256 x 3 + 3) x 59 MoE */
    int scales = 5 * 62 + 3 * 3 + (256 * 3 + 3) * 59;
    CHECK(p.n_tensors + p.n_expert_bias / 256 + 2 + scales == 91991, "%d tensors, %lld gate biases", p.n_tensors,
          (long long)p.n_expert_bias / 256);
    CHECK(p.params_bytes == 4 * (size_t)(p.n_params + p.n_expert_bias) && p.grads_bytes == 4 * (size_t)p.n_params &&
              p.optimizer_bytes == 8 * (size_t)p.n_params,
          "bytes: params %zu, grads %zu, optimizer %zu", p.params_bytes, p.grads_bytes, p.optimizer_bytes);
    CHECK(p.activation_bytes > (size_t)61 * 4096 * 7168 * 4, "activations for 4096 tokens: %.1f GiB",
          p.activation_bytes / 1073741824.0);
    ds_model *m = NULL;
    int rc = ds_model_create(&m, &c, &o);
    CHECK(rc != 0 && m == NULL && strstr(ds_errmsg(), "out of memory"), "create fails cleanly: %s", ds_errmsg());
}

TEST(bad_input_is_an_error) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *m = make(&c, 1, 8, 1, 0);
    if (!m) return;
    ds_model_init(m, 1);
    int32_t tok[8] = {1, 2, 3, 64, 5, 6, 7, 8}, tgt[8] = {0};
    ds_batch b = {.B = 1, .T = 8, .tokens = tok, .targets = tgt};
    ds_fwd_out out;
    CHECK(ds_model_forward(m, &b, &out) == DS_ERR && strstr(ds_errmsg(), "token 64 outside [0, 64)"), "%s",
          ds_errmsg());
    tok[3] = 4;
    tgt[2] = -2;
    CHECK(ds_model_forward(m, &b, &out) == DS_ERR && strstr(ds_errmsg(), "target -2"), "%s", ds_errmsg());
    tgt[2] = 0;
    b.T = 9;
    CHECK(ds_model_forward(m, &b, &out) == DS_ERR && strstr(ds_errmsg(), "outside the model"), "%s", ds_errmsg());
    b.T = 8;
    float d[8] = {0};
    ds_model *m2 = make(&c, 1, 8, 1, 0);
    CHECK(ds_model_backward(m2, &b, d, NULL) == DS_ERR && strstr(ds_errmsg(), "forward"), "%s", ds_errmsg());
    ds_config bad = c;
    bad.n_group = 3;
    ds_model *m3 = NULL;
    ds_model_opts o = {.max_batch = 1, .max_seq = 8};
    CHECK(ds_model_create(&m3, &bad, &o) == DS_ERR && strstr(ds_errmsg(), "n_group"), "%s", ds_errmsg());
    ds_model_free(m);
    ds_model_free(m2);
}

TAP_MAIN()
