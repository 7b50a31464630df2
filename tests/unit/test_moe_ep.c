/* Expert parallelism in the model (lib/model/moe_ep.c): under mpirun (tests/bats/ep.bats) every rank builds
 * the tiny MoE + MTP model twice, once whole (the one-process reference) and once holding only its EP rank's
 * experts, runs its own micro-batches through the EP model (ranks with fewer take part with empty ones) and
 * every micro-batch of every rank through the reference, then compares: log-probabilities, expert loads
 * (exact: the same experts are picked), replicated gradients summed over the data-parallel ranks and expert
 * gradients summed over the ranks holding the same experts, tensor by tensor (1e-5 of the tensor's largest
 * value, fp32). DS_TEST_EP sets the EP size (default: the world); DS_TEST_RPN the ranks per node;
 * DS_TEST_SLOTS=1 stores the forwards in activation slots as a pipeline stage does (below). Run alone it
 * checks the one-rank layout (no expert moves). */
#include "model_fixture.h"
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "dist/comm.h"
#include "dist/dp.h"
#include "dist/layout.h"
#include "fp8/linear.h"
#include "model/model.h"
#include "ops/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ds_comm comm;

#include "mpi_tap.h"

enum { B = 2, T = 8 };

/* micro-batch k: random tokens, next-token targets; odd ones have a padded second row */
typedef struct {
    int32_t tok[B * T], tgt[B * T], len[B];
    ds_batch b;
} mb;

static void make_mb(mb *x, int k, int V) {
    for (int i = 0; i < B * T; i++) {
        uint32_t w[4];
        ds_philox4x32(7, (uint64_t)k, (uint64_t)i, w);
        x->tok[i] = (int32_t)(w[0] % (uint32_t)V);
    }
    for (int r = 0; r < B; r++) x->len[r] = (k % 2 && r == 1) ? T - 3 : T;
    for (int i = 0; i < B * T; i++) {
        int r = i / T, t = i % T;
        x->tgt[i] = t + 1 < x->len[r] ? x->tok[i + 1] : -1;
    }
    x->b = (ds_batch){.B = B, .T = T, .tokens = x->tok, .targets = x->tgt, .len = x->len};
}

static void coefs(const mb *x, float *dlogp, float *dmtp) {
    for (int i = 0; i < B * T; i++) {
        dlogp[i] = x->tgt[i] >= 0 ? -1.0f / 16 : 0.0f;
        dmtp[i] = x->tgt[i] >= 0 ? -0.3f / 16 : 0.0f;
    }
}

static const ds_param *find(const ds_param *p, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(p[i].name, name)) return &p[i];
    return NULL;
}

/* largest |a - b| over a tensor relative to the largest |b| */
static double rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return s > 0 ? d / s : d;
}

TEST(ep_model_matches_the_one_process_model) {
    const char *eps = getenv("DS_TEST_EP"), *rpns = getenv("DS_TEST_RPN");
    int ep = eps ? atoi(eps) : comm.size, rpn = rpns ? atoi(rpns) : 1;
    ds_layout L;
    int rc = ds_layout_make(&L, &comm, 1, comm.size, ep, rpn);
    CHECK(rc == 0, "layout: %s", ds_errmsg());
    if (rc) return;
    ds_config cfg;
    fixture_tiny(&cfg);
    int node[64];
    for (int e = 0; e < ep; e++) node[e] = ds_layout_node_of_ep_rank(&L, e);
    ds_model_opts ro = {.max_batch = B, .max_seq = T, .train = 1, .recompute = 1, .balance_alpha = 0.01};
    /* DS_TEST_FP8=1: both models train with --fp8's numerics and V3's MoE storage and communication
     * (model/moe_fp8.h): the one-process model quantizes the experts' inputs and the gradients before the
     * down projection where the dispatch is, so the two see the same FP8 values; the EP model's combine
     * rounds each rank's returned rows to bf16, the one difference left */
    const char *f8s = getenv("DS_TEST_FP8");
    const int fp8 = f8s && atoi(f8s) > 0;
    ds_ops lin8, pow2;
    ds_fp8_linear_ops(&lin8, ds_ops_cpu());
    ds_fp8_linear_ops_pow2(&pow2, ds_ops_cpu());
    if (fp8) ro.linear_ops = &lin8, ro.linear_ops_pow2 = &pow2, ro.moe_cache_fp8 = ro.moe_dispatch_fp8 = 1;
    /* and ref0: the one-process FP8 model without the dispatch's quantization, to show what it changes */
    ds_model_opts ro0 = ro;
    ro0.moe_dispatch_fp8 = 0;
    ds_model_opts eo = ro;
    eo.ep_size = ep, eo.ep_rank = L.ep_rank, eo.ep_comm = &L.ep_comm, eo.ep_node = node;
    ds_model *ref = NULL, *m = NULL, *ref0 = NULL;
    rc = ds_model_create(&ref, &cfg, &ro);
    if (!rc && fp8) rc = ds_model_create(&ref0, &cfg, &ro0);
    if (!rc && fp8) rc = ds_model_init(ref0, 5);
    if (ref0) ds_model_zero_grad(ref0);
    if (!rc) rc = ds_model_create(&m, &cfg, &eo);
    if (!rc) rc = ds_model_init(ref, 5);
    if (!rc) rc = ds_model_init(m, 5);
    CHECK(rc == 0, "models: %s", ds_errmsg());
    if (rc) return;

    size_t eoff, en;
    int e0, ne;
    ds_model_expert_range(m, &eoff, &en, &e0, &ne);
    const int E = cfg.n_routed_experts;
    CHECK(e0 == L.ep_rank * E / ep && ne == E / ep, "rank %d holds experts [%d, %d)", comm.rank, e0, e0 + ne);
    /* parameters: the whole model less the experts held elsewhere, in fp32 */
    size_t per_expert = 3 * (size_t)cfg.moe_intermediate_size * cfg.hidden_size;
    int n_moe = cfg.num_hidden_layers - cfg.first_k_dense_replace + cfg.num_nextn_predict_layers;
    CHECK(ds_model_num_params(m) == ds_model_num_params(ref) - (size_t)n_moe * (E - ne) * per_expert &&
              en == (ep > 1 ? (size_t)n_moe * ne * per_expert : 0),
          "%zu parameters (%zu in the expert range), whole model %zu", ds_model_num_params(m), en, ds_model_num_params(ref));

    /* every rank but 0 has one micro-batch fewer: the last round it runs empty. DS_TEST_SLOTS=1: as a
     * pipeline stage runs them, every round's forward stored in its own activation slot, then the backwards
     * in reverse order with their weight gradients deferred (B), then the Ws in forward order: each
     * backward must exchange by its own forward's plan. */
    const char *sls = getenv("DS_TEST_SLOTS");
    const int slots = sls && atoi(sls) > 0;
    const int P = comm.size, NB = slots ? 2 * P + 1 : P + 1, rounds = (NB + P - 1) / P;
    if (slots) {
        rc = ds_model_act_slots(m, rounds);
        CHECK(rc == 0, "%d activation slots with expert parallelism: %s", rounds, rc ? ds_errmsg() : "ok");
        if (rc) return;
    }
    ds_model_zero_grad(ref);
    ds_model_zero_grad(m);
    float dlogp[B * T], dmtp[B * T];
    double worst_logp = 0, worst_logp0 = 0;
    int load_bad = 0;
    size_t n_load = (size_t)n_moe * E;
    int32_t *load_ref = calloc(n_load, sizeof(int32_t));
    for (int k = 0; k < NB; k++) { /* the reference: every micro-batch, in order */
        mb x;
        make_mb(&x, k, cfg.vocab_size);
        ds_fwd_out f;
        rc |= ds_model_forward(ref, &x.b, &f);
        coefs(&x, dlogp, dmtp);
        rc |= ds_model_backward(ref, &x.b, dlogp, dmtp);
        if (ref0) rc |= ds_model_forward(ref0, &x.b, &f) || ds_model_backward(ref0, &x.b, dlogp, dmtp);
    }
    ds_moe_ep_stats st;
    ds_model_ep_stats(m, NULL, 1);
    for (int i = 0; !rc && i < rounds; i++) {
        int k = i * P + comm.rank;
        if (slots) rc = ds_model_act_select(m, i);
        if (!rc && k >= NB) {
            rc = ds_model_ep_idle_fwd(m, T);
            if (!rc && !slots) rc = ds_model_ep_idle_bwd(m, T, 1);
            continue;
        }
        mb x;
        make_mb(&x, k, cfg.vocab_size);
        ds_fwd_out fr, f;
        /* the reference's forward of the same batch, for its log-probs and loads (its grads are already in) */
        ds_model *probe = NULL;
        rc = ds_model_create(&probe, &cfg, &ro);
        if (!rc) rc = ds_model_init(probe, 5);
        if (!rc) rc = ds_model_forward(probe, &x.b, &fr);
        if (!rc) rc = ds_model_forward(m, &x.b, &f);
        if (rc) {
            ds_model_free(probe);
            break;
        }
        worst_logp = fmax(worst_logp, rel_diff(f.logp, fr.logp, B * T));
        worst_logp = fmax(worst_logp, rel_diff(f.mtp_logp, fr.mtp_logp, B * T));
        if (!rc && fp8) { /* the same batch through ref0's weights (ref0 is ref's copy without the quantization) */
            ds_model_free(probe);
            probe = NULL;
            rc = ds_model_create(&probe, &cfg, &ro0);
            if (!rc) rc = ds_model_init(probe, 5);
            if (!rc) rc = ds_model_forward(probe, &x.b, &fr);
            if (!rc) worst_logp0 = fmax(worst_logp0, rel_diff(f.logp, fr.logp, B * T));
        }
        load_bad += memcmp(f.expert_load, fr.expert_load, n_load * sizeof(int32_t)) != 0;
        ds_model_free(probe);
        coefs(&x, dlogp, dmtp);
        if (!slots) rc = ds_model_backward(m, &x.b, dlogp, dmtp);
    }
    for (int i = rounds - 1; slots && !rc && i >= 0; i--) { /* B, last stored first */
        int k = i * P + comm.rank;
        rc = ds_model_act_select(m, i);
        if (!rc) rc = ds_model_wgrad_defer(m, i);
        if (!rc && k >= NB) {
            rc = ds_model_ep_idle_bwd(m, T, 1);
        } else if (!rc) {
            mb x;
            make_mb(&x, k, cfg.vocab_size);
            coefs(&x, dlogp, dmtp);
            rc = ds_model_backward(m, &x.b, dlogp, dmtp);
        }
        int rc2 = ds_model_wgrad_defer(m, -1);
        if (!rc) rc = rc2;
    }
    for (int i = 0; slots && !rc && i < rounds; i++) rc = ds_model_wgrad_run(m, i); /* W */
    CHECK(rc == 0, "EP forward/backward: %s", ds_errmsg());
    ds_model_ep_stats(m, &st, 0);
    if (!fp8)
        CHECK(worst_logp < 1e-5, "log-probs (main and MTP) within %.2g of the one-process model's", worst_logp);
    else /* bf16 combine: each rank's rows rounded (2^-9 relative) before the sum; the quantization moves them more */
        CHECK(worst_logp < 1e-6 && worst_logp0 > 10 * worst_logp,
              "FP8 dispatch, bf16 combine: log-probs within %.2g of the one-process model quantizing at the same point "
              "(%.2g of one that does not)", worst_logp, worst_logp0);
    CHECK(load_bad == 0, "expert loads identical to the one-process model's in every micro-batch");
    free(load_ref);

    /* gradients: replicated part over the DP group, experts over expert_dp */
    float *g = ds_model_grads(m);
    rc = ds_dp_allreduce_f32(&L.dp_comm, g, eoff);
    if (!rc && en) rc = ds_dp_allreduce_f32(&L.expert_dp_comm, g + eoff, en);
    CHECK(rc == 0, "reductions: %s", ds_errmsg());
    int n_m, n_r;
    const ds_param *pm = ds_model_params_info(m, &n_m), *pr = ds_model_params_info(ref, &n_r);
    double worst = 0, e2 = 0, e02 = 0, n2 = 0;
    const char *worst_name = "";
    int missing = 0;
    for (int i = 0; i < n_m; i++) {
        const ds_param *q = find(pr, n_r, pm[i].name);
        if (!q || q->numel != pm[i].numel) {
            missing++;
            continue;
        }
        double d = rel_diff(g + pm[i].offset, ds_model_grads(ref) + q->offset, q->numel);
        if (d > worst) worst = d, worst_name = pm[i].name;
        for (size_t j = 0; fp8 && j < q->numel; j++) {
            double a = g[pm[i].offset + j], r = ds_model_grads(ref)[q->offset + j], r0 = ds_model_grads(ref0)[q->offset + j];
            e2 += (a - r) * (a - r), e02 += (a - r0) * (a - r0), n2 += r * r;
        }
    }
    if (!fp8)
        CHECK(missing == 0 && worst < 1e-5,
              "gradients within %.2g of the one-process model's (worst %s; %d tensors unmatched)", worst, worst_name,
              missing);
    else /* the bf16 roundings reach FP8 codes near their rounding ties downstream: a few elements move by a code */
        CHECK(missing == 0 && sqrt(e2 / n2) < 5e-4 && e02 > 9 * e2,
              "FP8: gradients within %.2g (Frobenius; worst tensor %.2g, %s) of the one-process model quantizing at "
              "the same point, %.2g of one that does not", sqrt(e2 / n2), worst, worst_name, sqrt(e02 / n2));
    /* the same parameter values where both have them */
    int wbad = 0;
    for (int i = 0; i < n_m; i++) {
        const ds_param *q = find(pr, n_r, pm[i].name);
        if (q) wbad += memcmp(ds_model_params(m) + pm[i].offset, ds_model_params(ref) + q->offset, q->numel * 4) != 0;
    }
    CHECK(wbad == 0, "initial weights identical by tensor name");
    /* bytes of the forward exchanges (one hop), summed over the ranks (a rank sends back the rows it
     * received): per row that went to another rank, D floats both ways, or with the FP8 dispatch D codes +
     * ceil(D/128) exponents out and D bf16 back */
    const double D = cfg.hidden_size, out_b = fp8 ? D + ceil(D / 128) : 4 * D, back_b = fp8 ? 2 * D : 4 * D;
    double tot[3] = {(double)st.dispatch_rows, (double)st.dispatch_bytes, (double)st.combine_bytes};
    CHECK(!ds_comm_allreduce_sum_f64(&comm, tot, 3) && tot[1] == tot[0] * out_b && tot[2] == tot[0] * back_b,
          "%.0f rows sent: dispatch %.0f B = rows x %.0f, combine %.0f B = rows x %.0f", tot[0], tot[1], out_b, tot[2],
          back_b);
    /* node-limited routing: experts of a group sit on one node, a token reaches at most topk_group */
    if (L.ep_nodes == cfg.n_group)
        CHECK(st.nodes_max <= cfg.topk_group && st.tokens > 0, "at most %d nodes per token (max %d over %lld tokens)",
              cfg.topk_group, st.nodes_max, (long long)st.tokens);
    ds_model_free(m);
    ds_model_free(ref);
    ds_model_free(ref0);
    ds_layout_free(&L);
}

MPI_TAP_MAIN()
