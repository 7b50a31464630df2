/* test_bf16_generic.c — ops/bf16.h over a base that is not the CPU backend (what --bf16 --device cuda runs):
 * the base's own GEMMs on bf16 operands, their outputs and every other stored tensor rounded through the
 * base's round_bf16 entry. The base here is the CPU table with GEMMs that round copies of their operands to
 * bf16 and return fp32, as the CUDA backend's bf16 mode does (to_bf16, then cuBLASLt with an fp32 output),
 * so the whole path runs on this machine. Checked: the CPU table's round_bf16 is core/dtype.h's
 * ds_bf16_grid on edge values; the generic table calls the base's GEMMs and rounding; a few training steps
 * of a tiny model on it follow the AMX --bf16 path within summation-order tolerance, equal the sgemm
 * fallback's (DS_AMX=0: the same products) bit for bit, and differ from fp32. */
#include "tap.h"
#include "bf16_edges.h"
#include "model_fixture.h"
#include "core/dtype.h"
#include "core/err.h"
#include "core/rng.h"
#include "ops/bf16.h"
#include "ops/gemm_bf16.h"
#include "ops/ops.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

TEST(cpu_round_entry_edges) {
    enum { NC = BF16_EDGES };
    float x[NC];
    for (int i = 0; i < NC; i++) x[i] = ds_f32_from_bits(bf16_edges[i][0]);
    const ds_ops *cpu = ds_ops_cpu();
    CHECK(cpu->round_bf16 != NULL, "the CPU table has a round_bf16 entry");
    if (!cpu->round_bf16) return;
    cpu->round_bf16(x, NC, 1, NC);
    int ok = 1, grid = 1;
    for (int i = 0; i < NC; i++) {
        ok &= ds_f32_bits(x[i]) == bf16_edges[i][1];
        grid &= ds_f32_bits(x[i]) == ds_f32_bits(ds_bf16_grid(ds_f32_from_bits(bf16_edges[i][0])));
        if (ds_f32_bits(x[i]) != bf16_edges[i][1]) printf("# 0x%08x -> 0x%08x, want 0x%08x\n", bf16_edges[i][0], ds_f32_bits(x[i]), bf16_edges[i][1]);
    }
    CHECK(ok, "ties to even, NaN quiet with sign and payload top, Inf, overflow to Inf, denormals by value, -0");
    CHECK(grid, "the same bits as ds_bf16_grid");
    /* strided rows: the gap between them untouched; a long contiguous block (the flat threaded pass) = per element */
    enum { R = 5, C = 7, LD = 11, BIG = 300000 };
    float m[R * LD], m0[R * LD];
    ds_randn_fill(m, R * LD, 9, 0, 3.0f);
    memcpy(m0, m, sizeof m);
    cpu->round_bf16(m, LD, R, C);
    ok = 1;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < LD; c++)
            ok &= ds_f32_bits(m[r * LD + c]) == ds_f32_bits(c < C ? ds_bf16_grid(m0[r * LD + c]) : m0[r * LD + c]);
    CHECK(ok, "rows x cols at a stride: rounded inside, the gap left alone");
    float *big = malloc(sizeof(float) * BIG);
    ds_randn_fill(big, BIG, 10, 0, 100.0f);
    big[7] = ds_f32_from_bits(0x7f800001u), big[BIG - 1] = ds_f32_from_bits(0x00018000u);
    float *want = malloc(sizeof(float) * BIG);
    for (int i = 0; i < BIG; i++) want[i] = ds_bf16_grid(big[i]);
    cpu->round_bf16(big, 1000, BIG / 1000, 1000);
    CHECK(!memcmp(big, want, sizeof(float) * BIG), "300000 contiguous values (threaded flat pass) = ds_bf16_grid each");
    free(big), free(want);
}

/* ---- a foreign base: the CPU table with GEMMs on bf16-rounded operand copies and fp32 outputs ---- */

static int g_gemm_calls, g_round_calls;
static float *g_sa, *g_sb;
static size_t g_sa_n, g_sb_n;

/* a bf16-rounded copy of the n floats at src (the whole strided region: what lies between rows is harmless) */
static const float *rounded(float **buf, size_t *cap, const float *src, size_t n) {
    if (n > *cap) *buf = realloc(*buf, n * sizeof(float)), *cap = n;
    for (size_t i = 0; i < n; i++) (*buf)[i] = ds_bf16_grid(src[i]);
    return *buf;
}
static size_t span(int64_t rows, int64_t cols, int64_t ld) { return rows > 0 && cols > 0 ? (size_t)((rows - 1) * ld + cols) : 0; }

static void f_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc) {
    g_gemm_calls++;
    const float *a = rounded(&g_sa, &g_sa_n, A, span(ta ? K : M, ta ? M : K, lda));
    const float *b = rounded(&g_sb, &g_sb_n, B, span(tb ? N : K, tb ? K : N, ldb));
    ds_ops_cpu()->gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
}
static void f_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                        const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    g_gemm_calls++;
    const float *a = rounded(&g_sa, &g_sa_n, A, span(off[ng], K, lda));
    const float *b = rounded(&g_sb, &g_sb_n, B, (size_t)(ng - 1) * strideB + span(tb ? N : K, tb ? K : N, ldb));
    ds_ops_cpu()->gemm_rows(ng, off, tb, N, K, alpha, a, lda, b, strideB, ldb, beta, C, ldc);
}
static void f_gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda, const float *B,
                         int ldb, float beta, float *C, size_t strideC, int ldc) {
    g_gemm_calls++;
    const float *a = rounded(&g_sa, &g_sa_n, A, span(off[ng], M, lda));
    const float *b = rounded(&g_sb, &g_sb_n, B, span(off[ng], N, ldb));
    ds_ops_cpu()->gemm_wgrad(ng, off, M, N, alpha, a, lda, b, ldb, beta, C, strideC, ldc);
}
static void f_round(float *x, int64_t ld, int64_t rows, int64_t cols) {
    g_round_calls++;
    ds_ops_cpu()->round_bf16(x, ld, rows, cols);
}

static ds_ops foreign(void) {
    ds_ops f = *ds_ops_cpu();
    f.gemm = f_gemm, f.gemm_rows = f_gemm_rows, f.gemm_wgrad = f_gemm_wgrad, f.round_bf16 = f_round;
    return f;
}

TEST(generic_table_uses_the_base) {
    ds_ops f = foreign();
    const ds_ops *o = ds_bf16_ops(&f);
    enum { M = 6, N = 5, K = 40 };
    float a[M * K], b[N * K], c[M * N], dw[N * K];
    ds_randn_fill(a, M * K, 1, 0, 1.0f), ds_randn_fill(b, N * K, 2, 0, 1.0f);
    g_gemm_calls = g_round_calls = 0;
    o->gemm(0, 1, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
    CHECK(g_gemm_calls == 1 && g_round_calls == 1, "the base's GEMM, then its rounding (%d, %d calls)", g_gemm_calls,
          g_round_calls);
    int grid = 1;
    for (int i = 0; i < M * N; i++) grid &= c[i] == ds_bf16_grid(c[i]);
    CHECK(grid, "the product is stored in bf16");
    memset(dw, 0, sizeof dw);
    o->gemm(1, 0, N, K, M, 1.0f, c, N, a, K, 1.0f, dw, K);
    grid = 1;
    for (int i = 0; i < N * K; i++) grid &= dw[i] == ds_bf16_grid(dw[i]);
    CHECK(g_gemm_calls == 2 && g_round_calls == 1 && !grid, "a weight gradient (ta = 1) stays fp32");
    o->add(c, c, c, M * N);
    CHECK(g_round_calls == 2, "elementwise outputs through the base's rounding");
    CHECK(o->gemm != f.gemm && o->round_bf16 == f.round_bf16 && !o->gemm_rows_dev, "a table of its own around the base");
    ds_ops nr = f;
    nr.round_bf16 = NULL;
    CHECK(ds_bf16_ops(&nr) == NULL && strstr(ds_errmsg(), "no bf16 rounding"), "a base without rounding is refused: %s",
          ds_errmsg());
}

/* ---- training: the same steps on three tables ---- */

enum { B = 2, T = 32, STEPS = 4 };

static void config(ds_config *c) {
    fixture_tiny(c);
    c->vocab_size = 256, c->hidden_size = 64, c->intermediate_size = 128, c->moe_intermediate_size = 32;
    c->q_lora_rank = 32, c->kv_lora_rank = 16, c->qk_nope_head_dim = 16, c->qk_rope_head_dim = 8, c->v_head_dim = 16;
}

/* STEPS steps of SGD (lr 0.02) on the mean next-token loss (main head, the MTP module's at 0.3), from the same
 * weights and batch every time; loss[s] = the main loss before step s's update */
static int train(const ds_ops *ops, double *loss) {
    ds_config c;
    config(&c);
    ds_model_opts mo;
    memset(&mo, 0, sizeof mo);
    mo.ops = ops, mo.max_batch = B, mo.max_seq = T, mo.train = 1, mo.recompute = 1, mo.balance_alpha = 0.001;
    ds_model *m = NULL;
    if (ds_model_create(&m, &c, &mo) || ds_model_init(m, 5)) return 1;
    const size_t np = ds_model_num_params(m);
    float *p = ds_model_params(m);
    for (size_t i = 0; i < np; i++) p[i] *= 2.0f; /* weights large enough for bf16 to show at step 1 */
    ops->params_changed(p, np);
    int32_t tok[B * T], tgt[B * T];
    float cm[B * T], cmtp[B * T];
    ds_rng r;
    ds_rng_init(&r, 5, 1);
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)ds_rng_below(&r, 64) * 3 % c.vocab_size;
    for (int i = 0; i < B * T; i++) tgt[i] = i % T == T - 1 ? -1 : tok[i + 1], cm[i] = -1.0f / (B * T), cmtp[i] = -0.3f / (B * T);
    ds_batch b = {.B = B, .T = T, .tokens = tok, .targets = tgt};
    int rc = 0;
    for (int s = 0; s < STEPS && !rc; s++) {
        ds_fwd_out out;
        if ((rc = ds_model_forward(m, &b, &out))) break;
        double l = 0;
        for (int i = 0; i < B * T; i++) l -= out.logp[i];
        loss[s] = l / (B * T - B);
        ds_model_zero_grad(m);
        if ((rc = ds_model_backward(m, &b, cm, cmtp))) break;
        ops->axpy(p, -0.02f, ds_model_grads(m), np);
        ops->params_changed(p, np);
    }
    ds_model_free(m);
    return rc;
}

/* The tolerance is lowprec.bats's for the AMX path against DS_AMX=0 (the same bf16 operands, fp32 sums in
 * another order; only outputs within that of a rounding boundary move by one bf16 step): step 1 within
 * 1e-6, every step within u/16 = 2^-12; fp32 is at least 10 times farther at step 1. */
TEST(training_steps_follow_the_amx_path) {
    double amx[STEPS], gen[STEPS], f32[STEPS];
    ds_ops f = foreign();
    CHECK(!train(ds_bf16_ops(ds_ops_cpu()), amx), "--bf16 over the CPU table (%s) trains", ds_gemm_bf16_kernel());
    g_gemm_calls = g_round_calls = 0;
    CHECK(!train(ds_bf16_ops(&f), gen), "--bf16 over the foreign base trains");
    CHECK(g_gemm_calls > 0 && g_round_calls > 0, "on the base's GEMMs (%d calls) and rounding (%d calls)", g_gemm_calls,
          g_round_calls);
    CHECK(!train(ds_ops_cpu(), f32), "fp32 trains");
    /* DS_AMX=0's products are this base's: sgemm on the operands rounded to bf16, the output rounded after */
    double sg[STEPS];
    const int had_amx = ds_gemm_bf16_use_amx(0);
    CHECK(!train(ds_bf16_ops(ds_ops_cpu()), sg), "--bf16 over the CPU table with the sgemm fallback trains");
    ds_gemm_bf16_use_amx(had_amx);
    CHECK(!memcmp(sg, gen, sizeof sg), "the generic path = the CPU table's sgemm fallback, bit for bit");
    double worst = 0;
    for (int s = 0; s < STEPS; s++) {
        const double rel = fabs(gen[s] - amx[s]) / amx[s];
        printf("# step %d: bf16 AMX path %.9f, generic %.9f (rel %.2e), fp32 %.9f\n", s + 1, amx[s], gen[s], rel, f32[s]);
        if (rel > worst) worst = rel;
    }
    const double rel1 = fabs(gen[0] - amx[0]) / amx[0], f1 = fabs(f32[0] - amx[0]) / amx[0];
    CHECK(amx[STEPS - 1] < 0.97 * amx[0], "the steps learn (%.4f -> %.4f)", amx[0], amx[STEPS - 1]);
    CHECK(rel1 < 1e-6, "step 1: summation order only (%.2e)", rel1);
    CHECK(worst < 0x1p-12, "every step within u/16 of the AMX path (%.2e)", worst);
    CHECK(f1 > 10 * rel1 && f1 > 0, "and both are bf16, not fp32 (fp32 %.2e away at step 1)", f1);
}

TAP_MAIN()
