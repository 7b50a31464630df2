/* The MoE layers' device-offset path (lib/model/ffn.c with ds_ops.gemm_rows_dev / gemm_wgrad_dev: no host
 * round trip for the expert offsets) run on the CPU through the references of ops/grouped.h: the same
 * log-probs, balance loss, expert loads and gradients, bit for bit, as the host-offset path, with padding
 * and an MTP module (slots left out of routing, so the device path runs its expert ops over the bound
 * rows*K and must not let the extra rows leak), with recomputation, and with the weight gradients deferred
 * and replayed (the B/W split). A counting table shows which path ran. */
#include "tap.h"

#include "core/err.h"
#include "model/model.h"
#include "model_fixture.h"
#include "ops/grouped.h"
#include "ops/ops.h"

#include <stdlib.h>
#include <string.h>

static ds_ops g_dev;
static int g_host_calls, g_dev_calls, g_d2h;
static void count_copy(void *dst, const void *src, size_t bytes, ds_copy_kind kind) {
    g_d2h += kind == DS_COPY_D2H;
    ds_ops_cpu()->copy(dst, src, bytes, kind);
}
static void count_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                       const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    g_host_calls++;
    ds_ops_cpu()->gemm_rows(ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
}
static void count_rows_dev(int ng, const int32_t *off, int max_rows, int tb, int N, int K, float alpha, const float *A,
                           int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    g_dev_calls++;
    ds_cpu_gemm_rows_dev(ng, off, max_rows, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
}

enum { B = 2, T = 12, N = B * T };

typedef struct {
    int32_t tok[N], tgt[N], len[B];
    float dlogp[N], dmtp[N];
    ds_batch b;
} batch_t;

static void batch_init(batch_t *t) {
    for (int i = 0; i < N; i++) t->tok[i] = (i * 13 + 5) % 64, t->tgt[i] = (i * 7 + 3) % 64;
    t->len[0] = T, t->len[1] = 7; /* row 1 padded: its last 5 positions are not routed */
    for (int i = 0; i < N; i++) {
        int pad = i % T >= t->len[i / T];
        if (pad) t->tok[i] = 1, t->tgt[i] = -1;
        t->dlogp[i] = pad ? 0.0f : -1.0f / N;
        t->dmtp[i] = pad ? 0.0f : -0.3f / N;
    }
    t->b = (ds_batch){.B = B, .T = T, .tokens = t->tok, .targets = t->tgt, .len = t->len};
}

static ds_model *make(const ds_ops *ops, int recompute) {
    ds_config c;
    fixture_tiny(&c);
    ds_model_opts o = {.max_batch = B, .max_seq = T, .train = 1, .recompute = recompute, .balance_alpha = 0.05,
                       .ops = ops};
    ds_model *m = NULL;
    if (ds_model_create(&m, &c, &o)) return NULL;
    fixture_generic_weights(m, 41, 0.2f, 1.0f);
    return m;
}

typedef struct {
    float logp[N], mtp[N];
    double bal;
    int32_t load[64];
    int n_load, d2h; /* d2h: device-to-host copies during the forward */
    float *grad;
} run_t;

/* forward and backward (split into B and W under a key when split) */
static int run(ds_model *m, batch_t *t, int split, run_t *r) {
    ds_fwd_out f;
    ds_model_zero_grad(m);
    g_d2h = 0;
    if (ds_model_forward(m, &t->b, &f)) return 1;
    r->d2h = g_d2h;
    memcpy(r->logp, f.logp, sizeof r->logp);
    memcpy(r->mtp, f.mtp_logp, sizeof r->mtp);
    r->bal = f.bal_loss;
    r->n_load = f.n_moe_layers * 8;
    memcpy(r->load, f.expert_load, sizeof(int32_t) * (size_t)r->n_load);
    if (split && ds_model_wgrad_defer(m, 4)) return 1;
    if (ds_model_backward(m, &t->b, t->dlogp, t->dmtp)) return 1;
    if (split && (ds_model_wgrad_defer(m, -1) || ds_model_wgrad_run(m, 4))) return 1;
    size_t np = ds_model_num_params(m);
    r->grad = malloc(sizeof(float) * np);
    memcpy(r->grad, ds_model_grads(m), sizeof(float) * np);
    return 0;
}

TEST(device_offsets_equal_host_offsets) {
    ds_ops_cpu_with_dev_offsets(&g_dev, ds_ops_cpu());
    g_dev.gemm_rows = count_rows, g_dev.gemm_rows_dev = count_rows_dev, g_dev.copy = count_copy;
    ds_ops host = g_dev;
    host.gemm_rows_dev = NULL, host.gemm_wgrad_dev = NULL;
    host.moe_ffn_fwd = NULL, host.moe_ffn_bwd = NULL; /* the host-offset grouped GEMMs, not the CPU's fused pass */
    batch_t t;
    batch_init(&t);
    for (int mode = 0; mode < 3; mode++) { /* plain, recompute, B/W split */
        int recompute = mode == 1, split = mode == 2;
        ds_model *a = make(&host, recompute), *b = make(&g_dev, recompute);
        CHECK(a && b, "models%s%s", a && b ? "" : ": ", a && b ? "" : ds_errmsg());
        if (!a || !b) return;
        run_t ra, rb;
        g_host_calls = g_dev_calls = 0;
        int rc = run(a, &t, split, &ra);
        int host_a = g_host_calls, dev_a = g_dev_calls;
        g_host_calls = g_dev_calls = 0;
        rc |= run(b, &t, split, &rb);
        CHECK(!rc, "mode %d: forward and backward%s%s", mode, rc ? ": " : "", rc ? ds_errmsg() : "");
        if (rc) return;
        /* 3 MoE layers (2 + MTP): 3 forward and 3 backward row products each (the wgrads apart) */
        CHECK(host_a == 18 && dev_a == 0 && g_host_calls == 0 && g_dev_calls == 18,
              "mode %d: host path %d host / %d device calls, device path %d / %d", mode, host_a, dev_a, g_host_calls,
              g_dev_calls);
        CHECK(ra.d2h == 6 && rb.d2h == 2,
              "mode %d: device-to-host copies in the forward: host path %d (offsets and balance terms per MoE "
              "layer), device path %d (all layers' at once after it)", mode, ra.d2h, rb.d2h);
        int total = 0;
        for (int i = 0; i < rb.n_load; i++) total += rb.load[i];
        CHECK(rb.n_load == 24 && !memcmp(ra.load, rb.load, sizeof(int32_t) * 24) && total == 2 * (2 * 19 + 17),
              "mode %d: expert loads read after the forward = the host path's (%d slots routed)", mode, total);
        CHECK(!memcmp(ra.logp, rb.logp, sizeof ra.logp) && !memcmp(ra.mtp, rb.mtp, sizeof ra.mtp) && ra.bal == rb.bal,
              "mode %d: log-probs, MTP log-probs and balance loss bit for bit", mode);
        size_t np = ds_model_num_params(a), bad = 0;
        for (size_t i = 0; i < np; i++) bad += memcmp(&ra.grad[i], &rb.grad[i], sizeof(float)) != 0;
        CHECK(bad == 0, "mode %d: gradients bit for bit (%zu of %zu differ)", mode, bad, np);
        free(ra.grad), free(rb.grad);
        ds_model_free(a), ds_model_free(b);
    }
}

/* The contract the device path leans on: the slots left out follow the sorted ones in order. */
TEST(bucket_order_tail) {
    const int n = 5, K = 2, E = 3;
    const int32_t idx[10] = {2, 0, -1, -1, 1, 2, 0, -1, 1, 1};
    int32_t off[4], order[10], where[10];
    ds_ops_cpu()->moe_bucket(off, order, where, idx, n, K, E);
    const int32_t want[10] = {1, 6, 4, 8, 9, 0, 5, 2, 3, 7};
    CHECK(off[3] == 7 && !memcmp(order, want, sizeof want) && where[2] == -1 && where[9] == 4,
          "order: experts 0, 1, 2, then the left-out slots 2, 3, 7");
}

TAP_MAIN()
