/* V3's low-precision storage and communication in the MoE layers (model/moe_fp8.h, fp8/linear.h's pow2
 * table): the FP8 cache of the SwiGLU inputs against the numpy model tests/ref/moe_fp8.py (run by
 * tests/ref/fp8.bats), its bytes per token, the FP8 wire format of the dispatch and the GEMMs that consume
 * it. The expert-parallel runs against one process are in tests/unit/test_moe_ep.c and tests/bats/ep.bats. */
#include "tap.h"
#include "model_fixture.h"
#include "ref_arrays.h"

#include "core/rng.h"
#include "fp8/gemm.h"
#include "fp8/linear.h"
#include "fp8/quant.h"
#include "model/internal.h"
#include "model/moe.h"
#include "model/moe_fp8.h"
#include "ops/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ds_model *make_tiny(int cache, int n) {
    ds_config c;
    fixture_tiny(&c);
    ds_model_opts o = {.max_batch = 1, .max_seq = n, .train = 1, .recompute = 1, .moe_cache_fp8 = cache};
    ds_model *m = NULL;
    if (ds_model_create(&m, &c, &o)) return NULL;
    return m;
}

/* max |a - r| / max |r| */
static double rel_err(const float *a, const ref_array *r) {
    const float *b = r->data;
    double e = 0, s = 0;
    for (size_t i = 0; i < r->bytes / 4; i++) e = fmax(e, fabs((double)a[i] - b[i])), s = fmax(s, fabs(b[i]));
    return e / s;
}

TEST(cache_against_numpy) {
    const char *path = getenv("DS_MOE_FP8_REF");
    if (!path || !*path) {
        tap_count++;
        printf("ok %d - cache_against_numpy # skip DS_MOE_FP8_REF not set (tests/ref/fp8.bats sets it)\n", tap_count);
        return;
    }
    ref_array arr[32];
    int na = load_arrays(path, arr, 32);
    CHECK(na == 19, "reference file %s: %d arrays", path, na);
    if (na != 19) return;
    const int n = 16, K = 2, D = 32, Ie = 16, E = 8, l = 1;
    ds_model *m = make_tiny(1, n);
    CHECK(m != NULL, "tiny model with the FP8 cache");
    if (!m) return;
    const size_t mat = (size_t)Ie * D;
    memcpy(m->W.layer[l].exp_gate, find(arr, na, "Wg")->data, 4 * E * mat);
    memcpy(m->W.layer[l].exp_up, find(arr, na, "Wu")->data, 4 * E * mat);
    memcpy(m->W.layer[l].exp_down, find(arr, na, "Wd")->data, 4 * E * mat);
    const float *x = find(arr, na, "x")->data, *w = find(arr, na, "w")->data, *dy = find(arr, na, "dy")->data;
    const float *fidx = find(arr, na, "idx")->data;
    int32_t idx[32];
    for (int i = 0; i < n * K; i++) idx[i] = (int32_t)fidx[i];
    float y[16 * 32] = {0}, dx[16 * 32] = {0}, dw[32];
    ds_model_zero_grad(m);
    CHECK(!ds_moe_experts_fwd(m, l, 0, E, x, idx, w, n, y, NULL), "forward");
    ds_moe_experts_bwd(m, l, 0, E, x, idx, w, n, dy, dx, dw);
    const float *got[6] = {y, dx, dw, m->G.layer[l].exp_gate, m->G.layer[l].exp_up, m->G.layer[l].exp_down};
    static const char *names[6] = {"y", "dx", "dw", "gWg", "gWu", "gWd"};
    char key[16];
    for (int i = 0; i < 6; i++) {
        snprintf(key, sizeof key, "q.%s", names[i]);
        double eq = rel_err(got[i], find(arr, na, key));
        snprintf(key, sizeof key, "f.%s", names[i]);
        double ef = rel_err(got[i], find(arr, na, key));
        /* y is the forward's (exact g, u): the cache only reaches the backward */
        if (i == 0)
            CHECK(eq < 1e-6 && ef < 1e-6, "y from the exact gate/up outputs: %.1e", eq);
        else
            CHECK(eq < 2e-6 && ef > 1e-3, "%s = the numpy model's with the FP8 cache (%.1e), not without it (%.1e)",
                  names[i], eq, ef);
    }
    for (int i = 0; i < na; i++) free(arr[i].data);
    ds_model_free(m);
}

/* The activation arena shrinks by exactly the float32 copies turned into codes and 1x128 scales: per token
 * and MoE layer K rows of 2 Ie (routed) and 2 Is (shared); the float32 scratch they dequantize into is
 * taken once for all layers. */
TEST(cache_bytes_per_token) {
    ds_config c;
    fixture_tiny(&c);
    const int n = 64; /* every buffer a multiple of 64 bytes: the counts are exact */
    ds_model_opts o = {.max_batch = 1, .max_seq = n, .train = 1, .recompute = 1};
    ds_mem_plan p32, p8;
    CHECK(!ds_model_plan(&c, &o, &p32), "plan, float32 cache");
    o.moe_cache_fp8 = 1;
    CHECK(!ds_model_plan(&c, &o, &p8), "plan, FP8 cache");
    const int K = c.num_experts_per_tok, Ie = c.moe_intermediate_size, Is = c.n_shared_experts * Ie;
    const int moe_layers = c.num_hidden_layers - c.first_k_dense_replace + c.num_nextn_predict_layers;
    const int tiles_e = (Ie + 127) / 128, tiles_s = (Is + 127) / 128;
    const long f32 = 4L * (2 * K * Ie + 2 * Is), fp8 = 2L * K * (Ie + 4 * tiles_e) + 2L * (Is + 4 * tiles_s);
    long want = (long)n * (moe_layers * (f32 - fp8) - f32);
    long got = (long)p32.activation_bytes - (long)p8.activation_bytes;
    CHECK(got == want, "per MoE layer and token %ld -> %ld bytes; arena %zu -> %zu (saved %ld, formula %ld)", f32, fp8,
          p32.activation_bytes, p8.activation_bytes, got, want);
}

/* The wire row: D codes then one exponent byte per 1x128 tile; the codes are ue8m0 quantization's, and
 * unpacking gives its dequantization bit for bit. */
TEST(wire_format) {
    enum { R = 5, D = 300 };
    float x[R * D], back[R * D], dq[R * D], s[R * 3];
    uint8_t wire[R * (D + 3)], q[R * D];
    ds_randn_fill(x, R * D, 4, 1, 1.0f);
    for (int i = 0; i < D; i++) x[2 * D + i] *= 1e-30f; /* tiny and zero tiles keep their scales */
    for (int i = 0; i < D; i++) x[3 * D + i] = 0;
    CHECK(ds_moe_fp8_row_bytes(D) == D + 3, "row bytes: %zu", ds_moe_fp8_row_bytes(D));
    ds_moe_fp8_pack(wire, x, R, D);
    ds_moe_fp8_unpack(back, wire, R, D);
    ds_fp8_quantize(q, s, x, R, D, 1, 128, DS_FP8_SCALE_UE8M0);
    ds_fp8_dequantize(dq, q, s, R, D, 1, 128);
    int codes = 1, exps = 1;
    for (int r = 0; r < R; r++) {
        codes &= !memcmp(wire + r * (D + 3), q + r * D, D);
        for (int t = 0; t < 3; t++) exps &= ldexpf(1.0f, wire[r * (D + 3) + D + t] - 127) == s[r * 3 + t];
    }
    CHECK(codes && exps, "codes and power-of-two scales of ue8m0 1x128 quantization");
    CHECK(!memcmp(back, dq, sizeof back), "unpacked = dequantized, bit for bit");
}

/* The GEMMs on the pow2 table read a dispatched operand as its codes: Fprop of unpacked rows equals the
 * scaled GEMM on the wire's codes and scales directly (the process-wide table, with float32 scales,
 * requantizes them and differs); the same for Dgrad's gradient rows. */
TEST(pow2_table_consumes_the_codes) {
    enum { M = 6, N = 40, D = 300, KB = 3 };
    float x[M * D], xd[M * D], W[N * D], Wd[D * N], c[M * N], cr[M * N], cf[M * N], sa[M * KB], sw[KB], sd[KB * KB];
    uint8_t wire[M * (D + KB)], aq[M * D], wq[N * D], dq[D * N], dqt[D * N];
    ds_randn_fill(x, M * D, 5, 1, 1.0f);
    ds_randn_fill(W, N * D, 5, 2, 0.05f);
    ds_randn_fill(Wd, D * N, 5, 3, 0.05f);
    ds_moe_fp8_pack(wire, x, M, D);
    ds_moe_fp8_unpack(xd, wire, M, D);
    for (int r = 0; r < M; r++) {
        memcpy(aq + r * D, wire + r * (D + KB), D);
        for (int t = 0; t < KB; t++) sa[r * KB + t] = ldexpf(1.0f, wire[r * (D + KB) + D + t] - 127);
    }
    ds_ops pow2, plain;
    ds_fp8_linear_ops_pow2(&pow2, ds_ops_cpu());
    ds_fp8_linear_ops(&plain, ds_ops_cpu());
    void *ws = malloc(ds_fp8_gemm_workspace(M, D, D));
    /* Fprop y = x W^T, W [N, D] in 128x128 blocks */
    ds_fp8_quantize(wq, sw, W, N, D, 128, 128, DS_FP8_SCALE_F32);
    ds_fp8_mat A = {aq, sa, 1, 0}, B = {wq, sw, 128, 0};
    CHECK(!ds_fp8_gemm(cr, &A, &B, M, N, D, 0, ws), "scaled GEMM on the codes");
    pow2.gemm(0, 1, M, N, D, 1.0f, xd, D, W, D, 0.0f, c, N);
    plain.gemm(0, 1, M, N, D, 1.0f, xd, D, W, D, 0.0f, cf, N);
    CHECK(!memcmp(c, cr, sizeof c), "Fprop on the pow2 table = the GEMM on the dispatched codes, bit for bit");
    CHECK(memcmp(cf, cr, sizeof c), "the float32-scale table requantizes them (differs)");
    /* Dgrad dx = dy Wd with Wd stored [N2 = D... ]: dy [M, D] gradient rows, weight [D, N] transposed exactly */
    ds_fp8_quantize(dq, sd, Wd, D, N, 128, 128, DS_FP8_SCALE_F32);
    float sdt[KB * KB];
    ds_fp8_transpose_blocks(dqt, sdt, dq, sd, D, N, 128);
    ds_fp8_mat Bt = {dqt, sdt, 128, 0};
    CHECK(!ds_fp8_gemm(cr, &A, &Bt, M, N, D, 0, ws), "scaled GEMM of the gradient codes");
    pow2.gemm(0, 0, M, N, D, 1.0f, xd, D, Wd, N, 0.0f, c, N);
    CHECK(!memcmp(c, cr, sizeof c), "Dgrad on the pow2 table = the GEMM on the dispatched gradient codes");
    free(ws);
}

TAP_MAIN()
