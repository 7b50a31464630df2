/* Unit tests of E5M6 (lib/fp8/e5m6.h): the codec bit for bit against the independent numpy reference
 * tests/ref/e5m6_ref.py (against_numpy: every float16, E5M6 boundaries and their neighbours, random float32;
 * every code's decoding; tiled quantization with its packing, scales and dequantization), and properties
 * that need no reference: round trips, idempotent quantization, the error bound, the byte counts.
 * The attention output kept in E5M6 in training (model.h attn_out_e5m6): o_proj's Fprop, Dgrad and Wgrad
 * through fp8/linear.h's stored table against the same numpy reference (oproj_against_numpy); inside the
 * network, what attention's forward wrote reaches o_proj's Fprop, its Wgrad and attention's backward as the
 * E5M6 values, bit for bit, on o_proj's own table (model_wiring); the tapes' bytes (model_memory). */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "fp8/e5m6.h"
#include "fp8/linear.h"
#include "model/model.h"
#include "model_fixture.h"
#include "ops/ops.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int rd(FILE *f, void *p, size_t bytes) { return fread(p, 1, bytes, f) == bytes; }

TEST(against_numpy) {
    const char *path = getenv("DS_E5M6_REF");
    if (!path || !*path) {
        tap_count++;
        printf("ok %d - against_numpy # skip DS_E5M6_REF not set (tests/ref/fp8.bats sets it)\n", tap_count);
        return;
    }
    FILE *f = fopen(path, "rb");
    char magic[8];
    uint64_t n = 0;
    int ok = f && rd(f, magic, 8) && !memcmp(magic, "DSE56RF1", 8) && rd(f, &n, 8) && n > 0 && n < (1u << 26);
    CHECK(ok, "reference file %s: %llu inputs", path, (unsigned long long)n);
    if (!ok) return;
    float *x = malloc(n * 4);
    uint16_t *e = malloc(n * 2), *es = malloc(n * 2);
    float dec[4096];
    ok = rd(f, x, n * 4) && rd(f, e, n * 2) && rd(f, es, n * 2) && rd(f, dec, sizeof dec);
    CHECK(ok, "reference arrays read");
    size_t bad = 0, bad_sat = 0, first = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (ds_f32_to_e5m6(x[i]) != e[i]) bad++, first = first == SIZE_MAX ? i : first;
        if (ds_f32_to_e5m6_sat(x[i]) != es[i]) bad_sat++;
    }
    CHECK(bad == 0, "ds_f32_to_e5m6 on %llu inputs (all 2^16 float16s first): %zu differ%s", (unsigned long long)n,
          bad, bad ? "" : "");
    if (bad) printf("#   first: x %08x ours %03x ref %03x\n", fbits(x[first]), ds_f32_to_e5m6(x[first]), e[first]);
    CHECK(bad_sat == 0, "ds_f32_to_e5m6_sat: %zu differ", bad_sat);
    int bad_dec = 0;
    for (int c = 0; c < 4096; c++) bad_dec += fbits(ds_e5m6_to_f32((uint16_t)c)) != fbits(dec[c]);
    CHECK(bad_dec == 0, "every one of the 4096 codes decodes to the reference's bits: %d differ", bad_dec);
    free(x), free(e), free(es);

    uint64_t nc = 0;
    ok = rd(f, &nc, 8) && nc > 0 && nc < 64;
    CHECK(ok, "%llu quantization cases", (unsigned long long)nc);
    for (uint64_t k = 0; ok && k < nc; k++) {
        uint64_t shape[2];
        if (!rd(f, shape, 16)) break;
        const int64_t rows = (int64_t)shape[0], cols = (int64_t)shape[1], m = rows * cols;
        const size_t cb = (size_t)rows * ds_e5m6_row_bytes(cols), sb = ds_e5m6_scale_bytes(rows, cols);
        float *xq = malloc(m * 4), *dq = malloc(m * 4), *ours = malloc(m * 4);
        uint8_t *codes = malloc(cb), *scales = malloc(sb), *oc = malloc(cb), *os = malloc(sb);
        ok = rd(f, xq, m * 4) && rd(f, codes, cb) && rd(f, scales, sb) && rd(f, dq, m * 4);
        CHECK(ok && ds_e5m6_quantize(oc, os, xq, rows, cols) == 0, "case %llu [%lld, %lld] quantized",
              (unsigned long long)k, (long long)rows, (long long)cols);
        CHECK(!memcmp(oc, codes, cb) && !memcmp(os, scales, sb),
              "case %llu: %zu packed code bytes and %zu UE8M0 scales identical", (unsigned long long)k, cb, sb);
        CHECK(ds_e5m6_dequantize(ours, oc, os, rows, cols) == 0 && !memcmp(ours, dq, m * 4),
              "case %llu: dequantization bit-identical", (unsigned long long)k);
        free(xq), free(dq), free(ours), free(codes), free(scales), free(oc), free(os);
    }
    fclose(f);
}

TEST(round_trips) {
    int bad = 0, bad_sat = 0;
    for (int c = 0; c < 4096; c++) {
        const int e = (c >> 6) & 31, nan = e == 31 && (c & 63);
        const uint16_t want = nan ? (uint16_t)((c & 0x800) | 0x7e0) : (uint16_t)c;
        const float v = ds_e5m6_to_f32((uint16_t)c);
        bad += ds_f32_to_e5m6(v) != want;
        const int inf = e == 31 && !(c & 63);
        bad_sat += ds_f32_to_e5m6_sat(v) != (inf ? (uint16_t)((c & 0x800) | 0x7bf) : want);
    }
    CHECK(bad == 0, "decode then encode gives every code back (NaNs canonical): %d differ", bad);
    CHECK(bad_sat == 0, "the saturating encoder too, Inf clamped to 65024: %d differ", bad_sat);
    CHECK(ds_e5m6_to_f32(0x7bf) == DS_E5M6_MAX && ds_e5m6_to_f32(0x001) == 0x1p-20f && ds_e5m6_to_f32(0x040) == 0x1p-14f,
          "65024, 2^-20, 2^-14 at their codes");
    CHECK(ds_f32_to_e5m6(65279.99f) == 0x7bf && ds_f32_to_e5m6(65280.0f) == 0x7c0 && ds_f32_to_e5m6_sat(1e30f) == 0x7bf &&
              ds_f32_to_e5m6(-INFINITY) == 0xfc0 && ds_f32_to_e5m6(-NAN) == 0xfe0,
          "overflow: below the tie 65024, at it Inf; saturation; -Inf; -NaN keeps its sign");

    ds_rng rng;
    ds_rng_init(&rng, 7, 0);
    uint16_t c[11], back[11];
    uint8_t buf[18];
    int bad_pack = 0;
    for (int n = 0; n <= 11; n++) {
        for (int i = 0; i < n; i++) c[i] = (uint16_t)(ds_rng_u32(&rng) & 0xfff);
        memset(buf, 0xa5, sizeof buf);
        ds_e5m6_pack(buf, c, n);
        ds_e5m6_unpack(back, buf, n);
        bad_pack += memcmp(c, back, (size_t)n * 2) != 0 || buf[ds_e5m6_row_bytes(n)] != 0xa5;
    }
    CHECK(bad_pack == 0, "pack/unpack of 0..11 codes round-trips and writes exactly ceil(1.5 n) bytes");
}

TEST(scale_rule) {
    CHECK(ds_e5m6_scale_exp(0) == -126 && ds_e5m6_scale_exp(1e-40f) == -126, "zero and subnormal amax: 2^-126");
    int bad = 0;
    for (int k = -110; k <= 112; k++) {
        const float b = ldexpf(DS_E5M6_MAX, k);
        bad += ds_e5m6_scale_exp(b) != k || ds_e5m6_scale_exp(nextafterf(b, INFINITY)) != k + 1 ||
               ds_e5m6_scale_exp(ldexpf(1, k + 15)) != k; /* 2^(k+15) <= 65024 2^k < 2^(k+16) */
    }
    CHECK(bad == 0, "amax = 65024 2^k gives k, one ulp more k + 1, for k in [-110, 112]: %d wrong", bad);
}

TEST(quantize_properties) {
    enum { R = 9, C = 300 };
    static float x[R * C], y[R * C], z[R * C];
    static uint8_t q[R * 450], s[R * 3], q2[R * 450], s2[R * 3];
    ds_rng rng;
    ds_rng_init(&rng, 11, 0);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < C; i++) x[r * C + i] = ds_rng_normal(&rng) * ldexpf(1, 4 * r - 16);
    ds_e5m6_quantize(q, s, x, R, C);
    ds_e5m6_dequantize(y, q, s, R, C);
    double worst = 0;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 3; j++) {
            float amax = 0;
            for (int i = j * 128; i < C && i < j * 128 + 128; i++) amax = fmaxf(amax, fabsf(x[r * C + i]));
            for (int i = j * 128; i < C && i < j * 128 + 128; i++) {
                const float a = fabsf(x[r * C + i]);
                /* normal range of the tile: relative error <= 2^-7 (half an ulp of 6 mantissa bits) */
                if (a >= amax * 0x1p-29f) worst = fmax(worst, fabs(x[r * C + i] - y[r * C + i]) / a);
            }
        }
    CHECK(worst <= 0x1p-7, "relative error within a tile's normal range <= 2^-7: %.3g", worst);
    CHECK(worst > 0x1p-9, "and the rounding is real (not exact): %.3g", worst);
    ds_e5m6_quantize(q2, s2, y, R, C);
    ds_e5m6_dequantize(z, q2, s2, R, C);
    CHECK(!memcmp(q, q2, sizeof q) && !memcmp(s, s2, sizeof s) && !memcmp(y, z, sizeof y),
          "quantizing the dequantized values gives the same codes, scales and values");
    int pow2_ok = 1;
    for (int i = 0; i < R * 3; i++) pow2_ok &= s[i] >= 1 && s[i] <= 253;
    CHECK(pow2_ok, "UE8M0 scale bytes in [1, 253] (exponents in [-126, 126])");
}

TEST(cache_bytes) {
    CHECK(ds_e5m6_cache_bytes(64, 256) == 64 * 384 + 64 * 2, "[64, 256]: 1.5 bytes per element + one byte per tile");
    CHECK(ds_e5m6_cache_bytes(3, 5) == 3 * 8 + 3 && ds_e5m6_row_bytes(1) == 2 && ds_e5m6_row_bytes(0) == 0,
          "an odd row ends in two bytes");
    CHECK(ds_e5m6_cache_bytes(1000, 1024) * 128 == (size_t)1000 * 1024 * (12 * 16 + 1),
          "12 bits + 1/128 byte per element at width 1024");
}

TEST(oproj_against_numpy) {
    const char *path = getenv("DS_E5M6_OPROJ_REF");
    if (!path || !*path) {
        tap_count++;
        printf("ok %d - oproj_against_numpy # skip DS_E5M6_OPROJ_REF not set (tests/ref/fp8.bats sets it)\n", tap_count);
        return;
    }
    enum { N = 200, C = 200, O = 160 };
    const size_t cb = N * ds_e5m6_row_bytes(C), sb = ds_e5m6_scale_bytes(N, C);
    float *o = malloc(N * C * 4), *w = malloc(O * C * 4), *dy = malloc(N * O * 4), *oq = malloc(N * C * 4);
    float *y = malloc(N * O * 4), *dx = malloc(N * C * 4), *dw = malloc(O * C * 4);
    float *r_oq = malloc(N * C * 4), *r_y = malloc(N * O * 4), *r_dx = malloc(N * C * 4), *r_dw = malloc(O * C * 4);
    uint8_t *codes = malloc(cb), *scales = malloc(sb), *r_codes = malloc(cb), *r_scales = malloc(sb);
    FILE *f = fopen(path, "rb");
    char magic[8];
    int ok = f && rd(f, magic, 8) && !memcmp(magic, "DSE56OP1", 8) && rd(f, o, N * C * 4) && rd(f, w, O * C * 4) &&
             rd(f, dy, N * O * 4) && rd(f, r_codes, cb) && rd(f, r_scales, sb) && rd(f, r_oq, N * C * 4) &&
             rd(f, r_y, N * O * 4) && rd(f, r_dx, N * C * 4) && rd(f, r_dw, O * C * 4);
    if (f) fclose(f);
    CHECK(ok, "reference file %s read", path);
    if (ok) {
        /* what the network does with o_proj under --fp8 (lib/model/mla.c) */
        ds_e5m6_quantize(codes, scales, o, N, C);
        ds_e5m6_dequantize(oq, codes, scales, N, C);
        CHECK(!memcmp(codes, r_codes, cb) && !memcmp(scales, r_scales, sb) && !memcmp(oq, r_oq, N * C * 4),
              "the kept attention output: codes, scales and values identical");
        ds_ops t;
        ds_fp8_linear_ops_stored(&t, ds_ops_cpu());
        t.gemm(0, 1, N, O, C, 1, oq, C, w, C, 0, y, O);
        CHECK(!memcmp(y, r_y, N * O * 4), "Fprop y = oq W^T (oq in E4M3 1x128 tiles) identical");
        t.gemm(0, 0, N, C, O, 1, dy, O, w, C, 0, dx, C);
        CHECK(!memcmp(dx, r_dx, N * C * 4), "Dgrad dx = dy W identical");
        memset(dw, 0, O * C * 4);
        t.gemm(1, 0, O, C, N, 1, dy, O, oq, C, 1, dw, C);
        CHECK(!memcmp(dw, r_dw, O * C * 4), "Wgrad dW += dy^T oq, oq re-tiled straight to 128x1, identical");
        memset(dw, 0, O * C * 4);
        ds_fp8_linear_gemm(1, 0, O, C, N, 1, dy, O, oq, C, 1, dw, C);
        CHECK(memcmp(dw, r_dw, O * C * 4) != 0,
              "while the plain Linear table's Wgrad (an E4M3 1x128 cache in between) differs");
        CHECK(ds_fp8_linear_status() == 0, "no sticky error");
    }
    free(o), free(w), free(dy), free(oq), free(y), free(dx), free(dw), free(r_oq), free(r_y), free(r_dx), free(r_dw);
    free(codes), free(scales), free(r_codes), free(r_scales);
}

/* ---- inside the network -------------------------------------------------------------------------------- */

/* Copies of the attention outputs seen by the spies, in call order. */
enum { MAXREC = 16 };
typedef struct {
    float *x[MAXREC];
    int n[MAXREC];
    int count;
} rec_list;
static rec_list rec_fwd, rec_bwd, rec_fprop, rec_wgrad;
static int64_t spy_C;              /* H dv */
static const float *spy_wo[8];     /* the o_proj weights of the layers (and their gradients: spy_go) */
static const float *spy_go[8];
static int spy_nwo, spy_stray_o, spy_o_on_lin;

static void rec_add(rec_list *r, const float *x, int rows, int64_t ld) {
    if (r->count >= MAXREC) return;
    float *c = malloc((size_t)rows * spy_C * 4);
    for (int i = 0; i < rows; i++) memcpy(c + (size_t)i * spy_C, x + i * ld, spy_C * 4);
    r->x[r->count] = c, r->n[r->count++] = rows;
}
static void rec_clear(rec_list *r) {
    for (int i = 0; i < r->count; i++) free(r->x[i]);
    r->count = 0;
}
static int is_wo(const float *p, int grad) {
    for (int i = 0; i < spy_nwo; i++)
        if (p == (grad ? spy_go[i] : spy_wo[i])) return 1;
    return 0;
}

static void s_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg, int B,
                       int T, int H, int dqk, int dv, float scale, void *ws) {
    ds_ops_cpu()->attn_fwd(o, lse, q, k, v, seg, B, T, H, dqk, dv, scale, ws);
    rec_add(&rec_fwd, o, B * T, spy_C);
}
static void s_attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                       const float *v, const float *o, const float *lse, const int32_t *seg, int B, int T, int H,
                       int dqk, int dv_dim, float scale, void *ws) {
    rec_add(&rec_bwd, o, B * T, spy_C);
    ds_ops_cpu()->attn_bwd(dq, dk, dv, dout, q, k, v, o, lse, seg, B, T, H, dqk, dv_dim, scale, ws);
}
/* o_proj's GEMMs, on whichever table: Fprop (ta 0, tb 1) records x = A, Wgrad (ta 1) records x = B */
static void record_o(int ta, int tb, int M, int K, const float *A, int lda, const float *B, int ldb) {
    if (ta) rec_add(&rec_wgrad, B, K, ldb);
    else if (tb) rec_add(&rec_fprop, A, M, lda);
}
/* o_proj's own table: every GEMM must be o_proj's */
static void s_o_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc) {
    if (ta ? is_wo(C, 1) : is_wo(B, 0)) record_o(ta, tb, M, K, A, lda, B, ldb);
    else spy_stray_o++;
    ds_ops_cpu()->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
/* the other Linears' table: o_proj's GEMMs counted */
static void s_lin_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc) {
    if (ta ? is_wo(C, 1) : is_wo(B, 0)) spy_o_on_lin++, record_o(ta, tb, M, K, A, lda, B, ldb);
    ds_ops_cpu()->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void wiring_config(ds_config *c) {
    fixture_tiny(c);
    c->v_head_dim = 96; /* H dv = 192: two tiles a token, the last one short */
}

/* which recorded x equals r (rows, bits) */
static int find_rec(const rec_list *l, const float *r, int rows) {
    for (int i = 0; i < l->count; i++)
        if (l->n[i] == rows && !memcmp(l->x[i], r, (size_t)rows * spy_C * 4)) return i;
    return -1;
}

static void run_wiring(int e5m6) {
    ds_config c;
    wiring_config(&c);
    ds_ops base = *ds_ops_cpu(), lin = *ds_ops_cpu(), oproj = *ds_ops_cpu();
    base.attn_fwd = s_attn_fwd, base.attn_bwd = s_attn_bwd;
    lin.gemm = s_lin_gemm, oproj.gemm = s_o_gemm;
    ds_model_opts o = {.ops = &base, .linear_ops = &lin, .max_batch = 2, .max_seq = 40, .train = 1, .recompute = 1,
                       .attn_out_e5m6 = e5m6, .o_proj_ops = &oproj};
    ds_model *m = NULL;
    CHECK(ds_model_create(&m, &c, &o) == 0, "model (e5m6 %d)", e5m6);
    if (!m) return;
    fixture_generic_weights(m, 11, 0.1f, 1.0f);
    spy_C = (int64_t)c.num_attention_heads * c.v_head_dim;
    int ni = 0;
    const ds_param *info = ds_model_params_info(m, &ni);
    spy_nwo = spy_stray_o = spy_o_on_lin = 0;
    for (int i = 0; i < ni && spy_nwo < 8; i++)
        if (strstr(info[i].name, "self_attn.o_proj.weight")) {
            spy_wo[spy_nwo] = ds_model_params(m) + info[i].offset;
            spy_go[spy_nwo++] = ds_model_grads(m) + info[i].offset;
        }
    int32_t tok[80], tgt[80];
    float dlogp[80], dmtp[80];
    ds_rng r;
    ds_rng_init(&r, 5, 3);
    for (int i = 0; i < 80; i++) {
        tok[i] = (int32_t)ds_rng_below(&r, c.vocab_size), tgt[i] = (int32_t)ds_rng_below(&r, c.vocab_size);
        dlogp[i] = -1.0f / 80, dmtp[i] = -0.3f / 80;
    }
    ds_batch b = {.B = 2, .T = 40, .tokens = tok, .targets = tgt};
    ds_fwd_out out;
    ds_model_zero_grad(m);
    int rc = ds_model_forward(m, &b, &out);
    if (!rc) rc = ds_model_backward(m, &b, dlogp, dmtp);
    const int layers = c.num_hidden_layers + c.num_nextn_predict_layers;
    CHECK(rc == 0 && rec_fwd.count == layers && rec_bwd.count == layers && rec_fprop.count == layers &&
              rec_wgrad.count == layers && spy_nwo == layers,
          "forward and backward: %d attention forwards, %d backwards, %d o_proj Fprops, %d Wgrads (%d layers)",
          rec_fwd.count, rec_bwd.count, rec_fprop.count, rec_wgrad.count, layers);
    CHECK(spy_stray_o == 0 && spy_o_on_lin == (e5m6 ? 0 : 3 * layers),
          "o_proj's Fprop, Dgrad and Wgrad on %s (%d others on o_proj's, %d on the Linear table)",
          e5m6 ? "its own table, only they" : "the Linear table", spy_stray_o, spy_o_on_lin);
    /* the forward's attention output as the network keeps it: E5M6 of what attention wrote, or itself */
    int fprop_ok = 1, bwd_ok = 1, wgrad_ok = 1, rounded = 0;
    uint8_t *q = malloc(ds_e5m6_cache_bytes(80, spy_C));
    for (int l = 0; l < rec_fwd.count && rc == 0; l++) {
        const int rows = rec_fwd.n[l];
        float *kept = malloc((size_t)rows * spy_C * 4);
        memcpy(kept, rec_fwd.x[l], (size_t)rows * spy_C * 4);
        if (e5m6) {
            ds_e5m6_quantize(q, q + rows * ds_e5m6_row_bytes(spy_C), kept, rows, spy_C);
            ds_e5m6_dequantize(kept, q, q + rows * ds_e5m6_row_bytes(spy_C), rows, spy_C);
        }
        rounded += memcmp(kept, rec_fwd.x[l], (size_t)rows * spy_C * 4) != 0;
        fprop_ok &= rec_fprop.n[l] == rows && !memcmp(rec_fprop.x[l], kept, (size_t)rows * spy_C * 4);
        bwd_ok &= find_rec(&rec_bwd, kept, rows) >= 0;
        wgrad_ok &= find_rec(&rec_wgrad, kept, rows) >= 0;
        free(kept);
    }
    free(q);
    CHECK(fprop_ok, "o_proj's Fprop reads the %s attention output bit for bit", e5m6 ? "E5M6" : "float32");
    CHECK(bwd_ok, "attention's backward reads it too");
    CHECK(wgrad_ok, "and o_proj's Wgrad");
    CHECK(rounded == (e5m6 ? layers : 0), "E5M6 rounds every layer's output (%d of %d differ from float32)", rounded, layers);
    rec_clear(&rec_fwd), rec_clear(&rec_bwd), rec_clear(&rec_fprop), rec_clear(&rec_wgrad);
    ds_model_free(m);
}

TEST(model_wiring) {
    run_wiring(1);
    run_wiring(0);
}

/* The loss -mean(logp) of the batch in double. */
static double mean_nll(ds_model *m, const ds_batch *b) {
    ds_fwd_out out;
    if (ds_model_forward(m, b, &out)) return NAN;
    double s = 0;
    for (int i = 0; i < b->B * b->T; i++) s -= out.logp[i];
    return s / (b->B * b->T);
}

/* The last layer's o_proj weight gradient is the exact derivative of the loss the E5M6 forward computes (the
 * kept values do not depend on that W_o, and nothing rounded to E5M6 lies downstream of it in a dense model):
 * central differences along the gradient g itself, (L(W + t g) - L(W - t g)) / 2t, give |g|^2 (measured
 * within 4e-5 relative; 1e-3 allowed). Earlier layers' W_o reach later layers' kept outputs, whose rounding
 * is a step function (its derivative 0 almost everywhere; V3's backward, like this one, passes gradients
 * through it as the identity), so finite differences do not apply there: with steps of 1e-4..1e-2 of W
 * they miss by 1-30%. Bit-level wiring is model_wiring's. */
TEST(oproj_gradient_check) {
    ds_config c;
    wiring_config(&c);
    c.first_k_dense_replace = c.num_hidden_layers; /* no routing: its top-k is a step function too */
    ds_model_opts o = {.max_batch = 2, .max_seq = 40, .train = 1, .recompute = 1, .attn_out_e5m6 = 1};
    ds_model *m = NULL;
    CHECK(ds_model_create(&m, &c, &o) == 0, "fp32 model keeping the attention output in E5M6");
    if (!m) return;
    fixture_generic_weights(m, 11, 0.1f, 1.0f);
    int32_t tok[80], tgt[80];
    float dlogp[80], dmtp[80] = {0};
    ds_rng r;
    ds_rng_init(&r, 9, 3);
    for (int i = 0; i < 80; i++) {
        tok[i] = (int32_t)ds_rng_below(&r, c.vocab_size), tgt[i] = (int32_t)ds_rng_below(&r, c.vocab_size);
        dlogp[i] = -1.0f / 80;
    }
    ds_batch b = {.B = 2, .T = 40, .tokens = tok, .targets = tgt};
    ds_model_zero_grad(m);
    ds_fwd_out out;
    CHECK(ds_model_forward(m, &b, &out) == 0 && ds_model_backward(m, &b, dlogp, dmtp) == 0, "forward and backward");
    int ni = 0;
    const ds_param *info = ds_model_params_info(m, &ni);
    float *w = ds_model_params(m), *g = ds_model_grads(m);
    for (int i = 0; i < ni; i++) {
        if (!strstr(info[i].name, "self_attn.o_proj.weight") || info[i].layer != c.num_hidden_layers - 1) continue;
        float *wi = w + info[i].offset, *gi = g + info[i].offset, *w0 = malloc(info[i].numel * 4);
        double gg = 0, ww = 0;
        for (size_t k = 0; k < info[i].numel; k++) gg += (double)gi[k] * gi[k], ww += (double)wi[k] * wi[k];
        const double t = 1e-3 * sqrt(ww / gg); /* moves W_o by 0.1% */
        memcpy(w0, wi, info[i].numel * 4);
        double L[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            for (size_t k = 0; k < info[i].numel; k++) wi[k] = (float)(w0[k] + (sgn ? -t : t) * gi[k]);
            L[sgn] = mean_nll(m, &b);
        }
        memcpy(wi, w0, info[i].numel * 4);
        free(w0);
        CHECK_REL((L[0] - L[1]) / (2 * t), gg, 1e-3, info[i].name);
    }
    ds_model_free(m);
}

TEST(model_memory) {
    ds_config c;
    wiring_config(&c);
    /* 128 tokens x 192: every buffer a multiple of 64 bytes, so the alignment of the rest does not move */
    ds_model_opts o = {.max_batch = 2, .max_seq = 64, .train = 1, .recompute = 1};
    ds_mem_plan f32, e5;
    CHECK(ds_model_plan(&c, &o, &f32) == 0, "plan with a float32 attention output");
    o.attn_out_e5m6 = 1;
    CHECK(ds_model_plan(&c, &o, &e5) == 0, "plan with E5M6");
    const size_t n = 128, C = 192, layers = 4, f = n * C * 4, cache = ds_e5m6_cache_bytes(n, C);
    CHECK(cache == n * C * 3 / 2 + n * 2, "a tape's cache: 1.5 bytes an element + a scale byte per 128 (%zu)", cache);
    CHECK(e5.activation_bytes == f32.activation_bytes - layers * f + layers * cache + f,
          "activations: %zu -> %zu bytes: each of the %zu tapes keeps %zu bytes instead of %zu, plus one float32 scratch",
          f32.activation_bytes, e5.activation_bytes, layers, cache, f);
    o.train = 0;
    CHECK(ds_model_plan(&c, &o, &e5) == 0 && (o.attn_out_e5m6 = 0, ds_model_plan(&c, &o, &f32) == 0) &&
              e5.activation_bytes == f32.activation_bytes,
          "without train nothing is kept: the same plan");
    ds_ops gpu = *ds_ops_cpu();
    gpu.name = "cuda";
    ds_model_opts og = {.ops = &gpu, .max_batch = 2, .max_seq = 64, .train = 1, .attn_out_e5m6 = 1};
    ds_model *m = NULL;
    CHECK(ds_model_create(&m, &c, &og) != 0 && strstr(ds_errmsg(), "E5M6 attention-output cache runs on the CPU"),
          "a non-CPU backend is refused: %s", ds_errmsg());
}

TAP_MAIN()
