/* Unit tests of the op layer's CPU backend (lib/ops): every op against a direct double-precision
 * implementation of its definition in ops.h, and every backward against central finite differences of the
 * forward (per element, 4-point stencil, losses accumulated in double). */
#include "tap.h"

#include "core/rng.h"
#include "model/layer.h"
#include "model_fixture.h"
#include "ops/cpu_math.h"
#include "ops/ops.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const ds_ops *O;

static float *randv(size_t n, uint64_t stream, float std) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    ds_randn_fill(x, n, 1234, stream, std);
    return x;
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static double rel_err(const double *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += (a[i] - b[i]) * (a[i] - b[i]), den += a[i] * a[i];
    return sqrt(num / (den > 0 ? den : 1e-300));
}

/* d/dx_i of f by the 4-point stencil, for every element of x */
typedef double (*loss_fn)(void *ctx);
static void finite_diff(double *fd, float *x, size_t n, loss_fn f, void *ctx, float h) {
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        double v[4];
        const float s[4] = {-2, -1, 1, 2};
        for (int k = 0; k < 4; k++) {
            x[i] = x0 + s[k] * h;
            v[k] = f(ctx);
        }
        x[i] = x0;
        fd[i] = (8.0 * (v[2] - v[1]) - (v[3] - v[0])) / (12.0 * h);
    }
}

/* ---- exp ---------------------------------------------------------------------------------------------- */

TEST(expf_accuracy) {
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * (float)i / 200000.0f;
        double e = exp((double)x), y = ds_expf(x);
        worst = fmax(worst, fabs(y - e) / e);
    }
    CHECK(worst < 2e-7, "ds_expf relative error %.2e over [-87, 88]", worst);
    CHECK(ds_expf(-INFINITY) == 0.0f && ds_expf(-100.0f) == 0.0f && isinf(ds_expf(100.0f)) && isnan(ds_expf(NAN)),
          "ds_expf edges: -inf -> 0, large -> inf, NaN -> NaN");
}

/* ---- GEMM --------------------------------------------------------------------------------------------- */

static void gemm_case(int M, int N, int K) {
    float *A = randv((size_t)M * K, 1, 1), *B = randv((size_t)K * N, 2, 1), *C = randv((size_t)M * N, 3, 1);
    float *C0 = malloc(sizeof(float) * M * N);
    memcpy(C0, C, sizeof(float) * M * N);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            memcpy(C, C0, sizeof(float) * M * N);
            O->gemm(ta, tb, M, N, K, 0.5f, A, ta ? M : K, B, tb ? K : N, 2.0f, C, N);
            double worst = 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
                    worst = fmax(worst, fabs(0.5 * s + 2.0 * C0[i * N + j] - C[i * N + j]) / (1 + sqrt(K)));
                }
            CHECK(worst < 1e-5, "gemm %dx%dx%d ta=%d tb=%d: max error %.2e", M, N, K, ta, tb, worst);
        }
    free(A), free(B), free(C), free(C0);
}

TEST(gemm_transposes_and_beta) {
    gemm_case(7, 5, 9);
    gemm_case(150, 61, 300); /* split across threads by rows */
    gemm_case(37, 170, 400); /* by columns */
    int M = 4, N = 3;
    float A[4], B[3], C[12];
    for (int i = 0; i < M * N; i++) C[i] = NAN;
    O->gemm(0, 0, M, N, 0, 1.0f, A, 1, B, N, 0.0f, C, N);
    int zero = 1;
    for (int i = 0; i < M * N; i++) zero &= C[i] == 0.0f;
    CHECK(zero, "K = 0 with beta = 0 clears C (NaN included)");
}

static void grouped_case(int ng, const int64_t *off, int N, int K) {
    int rows = (int)off[ng];
    float *A = randv(rows * K, 4, 1), *W = randv(ng * N * K, 5, 1), *C = malloc(sizeof(float) * rows * N);
    O->gemm_rows(ng, off, 1, N, K, 1.0f, A, K, W, (size_t)N * K, K, 0.0f, C, N);
    double worst = 0;
    for (int g = 0; g < ng; g++)
        for (int r = off[g]; r < off[g + 1]; r++)
            for (int j = 0; j < N; j++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += (double)A[r * K + k] * W[(size_t)g * N * K + j * K + k];
                worst = fmax(worst, fabs(s - C[r * N + j]) / (1 + fabs(s)));
            }
    CHECK(worst < 1e-5, "gemm_rows: max relative error %.2e", worst);
    float *G = calloc((size_t)ng * K * N, sizeof(float));
    O->gemm_wgrad(ng, off, K, N, 1.0f, A, K, C, N, 1.0f, G, (size_t)K * N, N);
    worst = 0;
    for (int g = 0; g < ng; g++)
        for (int a = 0; a < K; a++)
            for (int b = 0; b < N; b++) {
                double s = 0;
                for (int r = off[g]; r < off[g + 1]; r++) s += (double)A[r * K + a] * C[r * N + b];
                worst = fmax(worst, fabs(s - G[(size_t)g * K * N + a * N + b]) / (1 + fabs(s)));
            }
    CHECK(worst < 1e-4, "gemm_wgrad (an empty group included): max relative error %.2e", worst);
    free(A), free(W), free(C), free(G);
}

TEST(grouped_gemms) {
    int64_t off[5] = {0, 3, 3, 8, 10};
    grouped_case(4, off, 6, 5);
    int64_t skew[4] = {0, 2, 902, 910}; /* one group takes all threads, the others run side by side */
    grouped_case(3, skew, 40, 64);
}

/* ---- RMSNorm -------------------------------------------------------------------------------------------- */

struct rms_ctx {
    float *x, *w, *dy, *y;
    int n, d, ld;
};
static double rms_loss(void *p) {
    struct rms_ctx *c = p;
    O->rmsnorm_fwd(c->y, c->d, NULL, c->x, c->ld, c->w, c->n, c->d, 1e-6f);
    return dot(c->y, c->dy, (size_t)c->n * c->d);
}

TEST(rmsnorm) {
    int n = 5, d = 24, ld = 30; /* a column slice of a wider matrix */
    struct rms_ctx c = {randv(n * ld, 6, 1), randv(d, 7, 0.3f), randv(n * d, 8, 1), malloc(sizeof(float) * n * d), n, d, ld};
    for (int j = 0; j < d; j++) c.w[j] += 1.0f;
    float rstd[5];
    O->rmsnorm_fwd(c.y, d, rstd, c.x, ld, c.w, n, d, 1e-6f);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)c.x[i * ld + j] * c.x[i * ld + j];
        double r = 1.0 / sqrt(ss / d + 1e-6);
        worst = fmax(worst, fabs(r - rstd[i]) / r);
        for (int j = 0; j < d; j++) worst = fmax(worst, fabs(c.w[j] * c.x[i * ld + j] * r - c.y[i * d + j]));
    }
    CHECK(worst < 1e-6, "forward and rstd: max error %.2e", worst);
    float *dx = calloc(n * ld, sizeof(float)), *dw = calloc(d, sizeof(float));
    O->rmsnorm_bwd(dx, ld, dw, c.dy, d, c.x, ld, c.w, rstd, n, d);
    double *fd = malloc(sizeof(double) * n * ld), *fdw = malloc(sizeof(double) * d);
    finite_diff(fd, c.x, (size_t)n * ld, rms_loss, &c, 1e-2f);
    finite_diff(fdw, c.w, d, rms_loss, &c, 1e-2f);
    CHECK(rel_err(fd, dx, (size_t)n * ld) < 1e-4, "dx vs finite differences: %.2e", rel_err(fd, dx, (size_t)n * ld));
    CHECK(rel_err(fdw, dw, d) < 1e-4, "dw vs finite differences: %.2e", rel_err(fdw, dw, d));
    free(c.x), free(c.w), free(c.dy), free(c.y), free(dx), free(dw), free(fd), free(fdw);
}

/* ---- RoPE and YaRN ------------------------------------------------------------------------------------- */

/* Both pair layouts against the rotation written out: pair j of the rope slice is (2j, 2j+1) interleaved
 * (DeepSeek's layout), (j, j+half) otherwise (transformers' rotate_half with rope_interleave false). */
TEST(rope_rotation_and_inverse) {
    int n = 6, nh = 3, dqk = 10, off = 4, half = 3;
    int32_t pos[6] = {0, 1, 2, 7, 100, 4095};
    float inv[3] = {1.0f, 0.1f, 0.01f}, cs[6 * 3 * 2];
    O->rope_table(cs, pos, n, inv, half, 1.0f);
    for (int interleaved = 1; interleaved >= 0; interleaved--) {
        float *x = randv(n * nh * dqk, 9, 1), *x0 = malloc(sizeof(float) * n * nh * dqk);
        memcpy(x0, x, sizeof(float) * n * nh * dqk);
        O->rope(x, n, nh, nh * dqk, dqk, off, half, interleaved, cs, 0);
        double worst = 0;
        for (int i = 0; i < n; i++)
            for (int h = 0; h < nh; h++)
                for (int c = 0; c < dqk; c++) {
                    const float *p = x0 + (i * nh + h) * dqk + off;
                    double want = p[c - off];
                    if (c >= off) {
                        int r = c - off, j = interleaved ? r / 2 : r % half;
                        int second = interleaved ? r % 2 : r >= half; /* the pair's second element */
                        double a = (double)((float)pos[i] * inv[j]), co = cos(a), si = sin(a);
                        double e = interleaved ? p[2 * j] : p[j], o = interleaved ? p[2 * j + 1] : p[j + half];
                        want = second ? e * si + o * co : e * co - o * si;
                    }
                    worst = fmax(worst, fabs(want - x[(i * nh + h) * dqk + c]));
                }
        CHECK(worst < 2e-5, "%s rotate by pos*inv_freq[j], the rest untouched: %.2e",
              interleaved ? "pairs (2j, 2j+1)" : "pairs (j, j+half)", worst);
        O->rope(x, n, nh, nh * dqk, dqk, off, half, interleaved, cs, 1);
        worst = 0;
        for (int i = 0; i < n * nh * dqk; i++) worst = fmax(worst, fabs(x[i] - x0[i]));
        CHECK(worst < 1e-5, "inverse undoes the rotation (interleaved %d): %.2e", interleaved, worst);
        free(x), free(x0);
    }
}

TEST(yarn_matches_deepseek_v3_numbers) {
    ds_config c;
    fixture_671b(&c);
    ds_rope r;
    CHECK(ds_rope_init(&r, &c) == 0, "init");
    /* spec 3.3/7: m = 0.1 ln 40 + 1 = 1.368888, scale = 192^-1/2 m^2 = 0.1352338; cos/sin factor 1 */
    CHECK(fabs(r.softmax_scale - 0.1352338) < 2e-7, "softmax scale %.7f", r.softmax_scale);
    CHECK(r.cos_scale == 1.0f, "cos/sin factor %g", r.cos_scale);
    /* ramp [10, 23]: j <= 10 unchanged, j >= 23 divided by 40, linear in between */
    double worst = 0;
    for (int j = 0; j < 32; j++) {
        double f = pow(10000.0, -2.0 * j / 64), ramp = fmin(fmax((j - 10) / 13.0, 0), 1);
        double want = f / 40 * ramp + f * (1 - ramp);
        worst = fmax(worst, fabs(r.inv_freq[j] - want) / want);
    }
    CHECK(worst < 1e-6, "inv_freq with the YaRN ramp [10, 23]: %.2e", worst);
    /* transformers' rule with one mscale absent: cos/sin by m(s, 1) = 1.368888 whatever the other is (DeepSeek's
     * remote code: 1.260804 with mscale 0.707 alone, 1.085728 with mscale_all_dim 0.707 alone); the softmax
     * scale by m(s, mscale_all_dim)^2 */
    double m1 = 0.1 * log(40) + 1, m707 = 0.1 * 0.707 * log(40) + 1;
    c.rope_scaling.mscale_all_dim = 0;
    c.rope_scaling.mscale = 0.707;
    ds_rope_init(&r, &c);
    CHECK(fabs(r.cos_scale - m1) < 1e-6 && fabs(r.softmax_scale - 1 / sqrt(192.0)) < 1e-8,
          "mscale only: cos factor %.6f, softmax scale %.7f", r.cos_scale, r.softmax_scale);
    c.rope_scaling.mscale_all_dim = 0.707;
    c.rope_scaling.mscale = 0;
    ds_rope_init(&r, &c);
    CHECK(fabs(r.cos_scale - m1) < 1e-6 && fabs(r.softmax_scale - m707 * m707 / sqrt(192.0)) < 1e-7,
          "mscale_all_dim only: cos factor %.6f, softmax scale %.7f", r.cos_scale, r.softmax_scale);
    c.rope_scaling.mscale = 0.5;
    ds_rope_init(&r, &c);
    CHECK(fabs(r.cos_scale - (0.1 * 0.5 * log(40) + 1) / m707) < 1e-6, "both: the ratio %.6f", r.cos_scale);
    c.rope_scaling.enabled = 0;
    ds_rope_init(&r, &c);
    CHECK(r.cos_scale == 1.0f && fabs(r.inv_freq[31] - pow(10000.0, -62.0 / 64)) < 1e-9,
          "no rope_scaling: plain RoPE");
}

/* ---- attention ------------------------------------------------------------------------------------------ */

struct attn_ctx {
    float *q, *k, *v, *o, *lse, *dout;
    const int32_t *seg;
    int B, T, H, dqk, dv;
    float scale;
    void *ws;
};
static double attn_loss(void *p) {
    struct attn_ctx *c = p;
    O->attn_fwd(c->o, c->lse, c->q, c->k, c->v, c->seg, c->B, c->T, c->H, c->dqk, c->dv, c->scale, c->ws);
    return dot(c->o, c->dout, (size_t)c->B * c->T * c->H * c->dv);
}

static void attn_case(int B, int T, int H, int dqk, int dv, const int32_t *seg, const char *what, int grad) {
    size_t n = (size_t)B * T;
    struct attn_ctx c = {randv(n * H * dqk, 10, 1), randv(n * H * dqk, 11, 1), randv(n * H * dv, 12, 1),
                         malloc(sizeof(float) * n * H * dv), malloc(sizeof(float) * n * H), randv(n * H * dv, 13, 1),
                         seg, B, T, H, dqk, dv, 0.4f, NULL};
    c.ws = malloc(O->attn_ws_bytes(B, T, H, dqk, dv));
    attn_loss(&c);
    double worst = 0, worst_lse = 0;
    double *p = malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                size_t qi = (size_t)b * T + i;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    int vis = j <= i;
                    /* same segment: equal ids on the whole run from j to i */
                    for (int t = j; vis && seg && t < i; t++) vis = seg[b * T + t] == seg[b * T + t + 1];
                    p[j] = -INFINITY;
                    if (!vis) continue;
                    p[j] = c.scale * dot(c.q + (qi * H + h) * dqk, c.k + (((size_t)b * T + j) * H + h) * dqk, dqk);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < T; j++) sum += p[j] == -INFINITY ? 0 : exp(p[j] - mx);
                worst_lse = fmax(worst_lse, fabs(mx + log(sum) - c.lse[qi * H + h]));
                for (int e = 0; e < dv; e++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        if (p[j] != -INFINITY) o += exp(p[j] - mx) / sum * c.v[(((size_t)b * T + j) * H + h) * dv + e];
                    worst = fmax(worst, fabs(o - c.o[(qi * H + h) * dv + e]));
                }
            }
    CHECK(worst < 2e-6 && worst_lse < 2e-6, "%s: forward vs direct softmax attention: %.2e, lse %.2e", what, worst,
          worst_lse);
    if (grad) {
        float *dq = malloc(sizeof(float) * n * H * dqk), *dk = malloc(sizeof(float) * n * H * dqk),
              *dvv = malloc(sizeof(float) * n * H * dv);
        O->attn_bwd(dq, dk, dvv, c.dout, c.q, c.k, c.v, c.o, c.lse, seg, B, T, H, dqk, dv, c.scale, c.ws);
        double *fd = malloc(sizeof(double) * n * H * dqk);
        finite_diff(fd, c.q, n * H * dqk, attn_loss, &c, 1e-2f);
        double eq = rel_err(fd, dq, n * H * dqk);
        finite_diff(fd, c.k, n * H * dqk, attn_loss, &c, 1e-2f);
        double ek = rel_err(fd, dk, n * H * dqk);
        finite_diff(fd, c.v, n * H * dv, attn_loss, &c, 1e-2f);
        double ev = rel_err(fd, dvv, n * H * dv);
        CHECK(eq < 1e-4 && ek < 1e-4 && ev < 1e-4, "%s: dq %.1e, dk %.1e, dv %.1e vs finite differences", what, eq, ek,
              ev);
        free(dq), free(dk), free(dvv), free(fd);
    }
    free(p), free(c.q), free(c.k), free(c.v), free(c.o), free(c.lse), free(c.dout), free(c.ws);
}

TEST(attention) {
    attn_case(2, 9, 2, 6, 4, NULL, "causal", 1);
    int32_t seg[2 * 9] = {0, 0, 0, 1, 1, 1, 1, 2, 2, 5, 5, 5, 5, 5, 5, 5, 5, 6};
    attn_case(2, 9, 2, 6, 4, seg, "segments", 1);
    /* longer than one query block, with a segment boundary inside a block */
    int32_t *seg2 = malloc(sizeof(int32_t) * 150);
    for (int i = 0; i < 150; i++) seg2[i] = i < 70 ? 1 : (i < 140 ? 2 : 3);
    attn_case(1, 150, 2, 12, 8, seg2, "150 tokens, 3 segments", 0);
    free(seg2);
}

/* ---- SwiGLU, embedding, log-softmax --------------------------------------------------------------------- */

struct sw_ctx {
    float *g, *u, *h, *dh;
    size_t n;
};
static double sw_loss(void *p) {
    struct sw_ctx *c = p;
    O->swiglu_fwd(c->h, c->g, c->u, c->n);
    return dot(c->h, c->dh, c->n);
}

TEST(swiglu) {
    size_t n = 40;
    struct sw_ctx c = {randv(n, 14, 2), randv(n, 15, 1), malloc(sizeof(float) * n), randv(n, 16, 1), n};
    sw_loss(&c);
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(c.g[i] / (1 + exp(-c.g[i])) * c.u[i] - c.h[i]));
    CHECK(worst < 1e-6, "forward: %.2e", worst);
    float *dg = malloc(sizeof(float) * n), *du = malloc(sizeof(float) * n);
    O->swiglu_bwd(dg, du, c.dh, c.g, c.u, n);
    double fd[40];
    finite_diff(fd, c.g, n, sw_loss, &c, 1e-2f);
    double eg = rel_err(fd, dg, n);
    finite_diff(fd, c.u, n, sw_loss, &c, 1e-2f);
    CHECK(eg < 1e-4 && rel_err(fd, du, n) < 1e-4, "backward vs finite differences: %.1e, %.1e", eg, rel_err(fd, du, n));
    memcpy(dg, c.dh, sizeof(float) * n);
    O->swiglu_bwd(dg, du, dg, c.g, c.u, n);
    finite_diff(fd, c.g, n, sw_loss, &c, 1e-2f);
    CHECK(rel_err(fd, dg, n) < 1e-4, "in place (dg == dh)");
    free(c.g), free(c.u), free(c.h), free(c.dh), free(dg), free(du);
}

TEST(embedding) {
    int V = 5, d = 70, n = 6;
    int32_t tok[6] = {3, 0, 3, -1, 4, 3};
    float *T = randv(V * d, 17, 1), *x = malloc(sizeof(float) * n * d), *dx = randv(n * d, 18, 1);
    O->embed_fwd(x, T, tok, n, d);
    int ok = 1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) ok &= x[i * d + j] == (tok[i] >= 0 ? T[tok[i] * d + j] : 0.0f);
    CHECK(ok, "forward: rows of the table, zeros for negative ids");
    float *dT = calloc(V * d, sizeof(float));
    O->embed_bwd(dT, dx, tok, n, d);
    ok = 1;
    for (int j = 0; j < d; j++) {
        ok &= dT[3 * d + j] == (dx[0 * d + j] + dx[2 * d + j]) + dx[5 * d + j];
        ok &= dT[0 * d + j] == dx[1 * d + j] && dT[4 * d + j] == dx[4 * d + j] && dT[1 * d + j] == 0.0f;
    }
    CHECK(ok, "backward: rows summed per id in order, negative ids skipped");
    free(T), free(x), free(dx), free(dT);
}

struct ls_ctx {
    float *z, *logp, *lse, *c;
    const int32_t *t;
    int n, V;
};
static double ls_loss(void *p) {
    struct ls_ctx *c = p;
    O->logsoftmax_fwd(c->logp, c->lse, NULL, c->z, c->t, c->n, c->V);
    return dot(c->logp, c->c, c->n);
}

TEST(logsoftmax) {
    int n = 4, V = 37;
    int32_t t[4] = {5, -1, 36, 0};
    struct ls_ctx c = {randv(n * V, 19, 3), malloc(sizeof(float) * n), malloc(sizeof(float) * n), randv(n, 20, 1), t, n, V};
    float ent[4];
    O->logsoftmax_fwd(c.logp, c.lse, ent, c.z, t, n, V);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double mx = -INFINITY, s = 0, h = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, c.z[i * V + j]);
        for (int j = 0; j < V; j++) s += exp(c.z[i * V + j] - mx);
        double lse = mx + log(s);
        for (int j = 0; j < V; j++) h -= exp(c.z[i * V + j] - lse) * (c.z[i * V + j] - lse);
        worst = fmax(worst, fabs(lse - c.lse[i]));
        worst = fmax(worst, fabs((t[i] >= 0 ? c.z[i * V + t[i]] - lse : 0.0) - c.logp[i]));
        worst = fmax(worst, fabs(h - ent[i]));
    }
    CHECK(worst < 2e-6, "lse, log p(target) (0 without target), entropy: %.2e", worst);
    float *dz = malloc(sizeof(float) * n * V);
    O->logsoftmax_bwd(dz, c.z, c.lse, t, c.c, n, V);
    double *fd = malloc(sizeof(double) * n * V);
    finite_diff(fd, c.z, (size_t)n * V, ls_loss, &c, 1e-2f);
    CHECK(rel_err(fd, dz, (size_t)n * V) < 1e-4, "backward vs finite differences: %.2e", rel_err(fd, dz, (size_t)n * V));
    free(c.z), free(c.logp), free(c.lse), free(c.c), free(dz), free(fd);
}

/* ---- MoE routing ---------------------------------------------------------------------------------------- */

/* Spec 4.1/4.2 written out directly: biased scores select, groups by top-2 sum or max, -inf elsewhere. */
static void route_reference(const float *s, const float *bias, const ds_route_params *rp, int32_t *idx, double *w) {
    int E = rp->n_experts, G = rp->group_rule == DS_GROUP_NONE ? 1 : rp->n_group, gs = E / G;
    double sb[256], gsc[64];
    int keep[64] = {0};
    for (int e = 0; e < E; e++) sb[e] = s[e] + (bias ? bias[e] : 0);
    for (int g = 0; g < G; g++) {
        double a = -INFINITY, b = -INFINITY;
        for (int i = 0; i < gs; i++) {
            double v = sb[g * gs + i];
            if (v > a) b = a, a = v;
            else if (v > b) b = v;
        }
        gsc[g] = rp->group_rule == DS_GROUP_MAX ? a : a + b;
    }
    for (int r = 0; r < (G > 1 ? rp->topk_group : 1); r++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!keep[g] && (best < 0 || gsc[g] > gsc[best])) best = g;
        keep[best] = 1;
    }
    for (int e = 0; e < E; e++)
        if (G > 1 && !keep[e / gs]) sb[e] = -INFINITY;
    double sum = 0;
    for (int k = 0; k < rp->top_k; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (sb[e] != -HUGE_VAL - 1 && (best < 0 || sb[e] > sb[best])) best = e;
        idx[k] = best;
        w[k] = s[best];
        sum += s[best];
        sb[best] = -HUGE_VAL - 1; /* taken */
    }
    for (int k = 0; k < rp->top_k; k++) w[k] = w[k] / (rp->renorm ? sum : 1.0) * rp->route_scale;
}

static void route_case(ds_route_params rp, int use_bias, const char *what) {
    int n = 64, E = rp.n_experts, K = rp.top_k;
    float *z = randv((size_t)n * E, 21, 2), *s = malloc(sizeof(float) * n * E), *bias = use_bias ? randv(E, 22, 0.3f) : NULL;
    O->router_scores(s, z, n, E, rp.score_fn);
    int32_t *idx = malloc(sizeof(int32_t) * n * K);
    float *w = malloc(sizeof(float) * n * K);
    O->moe_topk(idx, w, s, bias, NULL, n, &rp);
    int same = 1, bias_changed = 0;
    double worst = 0;
    for (int t = 0; t < n; t++) {
        int32_t ri[16];
        double rw[16];
        route_reference(s + t * E, bias, &rp, ri, rw);
        for (int k = 0; k < K; k++) {
            same &= ri[k] == idx[t * K + k];
            worst = fmax(worst, fabs(rw[k] - w[t * K + k]));
        }
        if (bias) {
            int32_t ni[16];
            double nw[16];
            route_reference(s + t * E, NULL, &rp, ni, nw);
            for (int k = 0; k < K; k++) bias_changed |= ni[k] != ri[k];
        }
    }
    CHECK(same && worst < 1e-6, "%s: selection and weights equal the spec's algorithm (max |dw| %.1e)", what, worst);
    if (bias) CHECK(bias_changed, "%s: the bias changes the selection of some tokens", what);
    if (rp.score_fn == DS_SCORE_FN_SIGMOID && rp.renorm) {
        double dev = 0;
        for (int t = 0; t < n; t++) {
            double sum = 0;
            for (int k = 0; k < K; k++) sum += w[t * K + k];
            dev = fmax(dev, fabs(sum - rp.route_scale));
        }
        CHECK(dev < 1e-5, "%s: weights of a token sum to routed_scaling_factor (from unbiased scores)", what);
    }
    free(z), free(s), free(bias), free(idx), free(w);
}

TEST(routing_selection) {
    ds_route_params v3 = {.n_experts = 32, .top_k = 4, .n_group = 8, .topk_group = 3, .group_rule = DS_GROUP_TOP2SUM,
                          .score_fn = DS_SCORE_FN_SIGMOID, .renorm = 1, .route_scale = 2.5f};
    route_case(v3, 1, "V3 sigmoid, top-2-sum groups, bias");
    route_case(v3, 0, "V3 without bias");
    ds_route_params v2 = {.n_experts = 32, .top_k = 6, .n_group = 8, .topk_group = 3, .group_rule = DS_GROUP_MAX,
                          .score_fn = DS_SCORE_FN_SOFTMAX, .renorm = 0, .route_scale = 16.0f};
    route_case(v2, 0, "V2 softmax, max groups, no renorm");
    ds_route_params greedy = {.n_experts = 16, .top_k = 6, .n_group = 1, .topk_group = 1, .group_rule = DS_GROUP_NONE,
                              .score_fn = DS_SCORE_FN_SOFTMAX, .renorm = 0, .route_scale = 1.0f};
    route_case(greedy, 0, "V2-Lite softmax, no groups");
    /* ties go to the lower index, and excluded groups are -inf even when every score is negative */
    float s[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.1f, 0.1f, 0.9f, 0.9f}, bias[8] = {-2, -2, -2, -2, -2, -2, -2, -2};
    ds_route_params rp = {.n_experts = 8, .top_k = 3, .n_group = 4, .topk_group = 2, .group_rule = DS_GROUP_TOP2SUM,
                          .score_fn = DS_SCORE_FN_SIGMOID, .renorm = 1, .route_scale = 1.0f};
    int32_t idx[3];
    float w[3];
    O->moe_topk(idx, w, s, bias, NULL, 1, &rp);
    CHECK(idx[0] == 6 && idx[1] == 7 && idx[2] == 0, "ties and negative biased scores: chose %d %d %d", idx[0], idx[1],
          idx[2]);
}

struct rt_ctx {
    float *z, *s, *w, *dw;
    int32_t *idx, *idx0;
    const int32_t *keep;
    const ds_route_params *rp;
    int n, B, T;
    float *loss;
    int balance;
};
static double rt_loss(void *p) {
    struct rt_ctx *c = p;
    int E = c->rp->n_experts, K = c->rp->top_k;
    O->router_scores(c->s, c->z, c->n, E, c->rp->score_fn);
    if (c->balance) {
        O->moe_balance(c->loss, NULL, 0, c->s, c->idx0, c->B, c->T, c->rp);
        double L = 0;
        for (int b = 0; b < c->B; b++) L += c->loss[b];
        return L;
    }
    O->moe_topk(c->idx, c->w, c->s, NULL, c->keep, c->n, c->rp);
    if (memcmp(c->idx, c->idx0, sizeof(int32_t) * c->n * K)) return NAN; /* a selection flipped */
    return dot(c->w, c->dw, (size_t)c->n * K);
}

/* Tokens 3 and 9 are padding (keep 0): not routed, no gradient, left out of the balance loss, whose f and
 * P are normalised by each sequence's routed tokens. */
TEST(routing_backward_and_balance_loss) {
    for (int fn = 0; fn < 2; fn++) {
        ds_route_params rp = {.n_experts = 8, .top_k = 3, .n_group = 4, .topk_group = 2, .group_rule = DS_GROUP_TOP2SUM,
                              .score_fn = fn ? DS_SCORE_FN_SOFTMAX : DS_SCORE_FN_SIGMOID, .renorm = !fn,
                              .route_scale = 2.5f};
        enum { B = 2, T = 5, n = B * T, E = 8, K = 3 };
        static const int32_t keep[n] = {1, 1, 1, 0, 1, 1, 1, 1, 1, 0};
        struct rt_ctx c = {randv(n * E, 23, 2), malloc(sizeof(float) * n * E), malloc(sizeof(float) * n * K),
                           randv(n * K, 24, 1), malloc(sizeof(int32_t) * n * K), malloc(sizeof(int32_t) * n * K),
                           keep, &rp, n, B, T, malloc(sizeof(float) * B), 0};
        const char *name = fn ? "softmax" : "sigmoid";
        O->router_scores(c.s, c.z, n, E, rp.score_fn);
        O->moe_topk(c.idx0, c.w, c.s, NULL, keep, n, &rp);
        int unrouted = 1;
        for (int k = 0; k < K; k++) unrouted &= c.idx0[3 * K + k] == -1 && c.w[3 * K + k] == 0 && c.idx0[9 * K + k] == -1;
        CHECK(unrouted && c.idx0[0] >= 0 && c.idx0[4 * K] >= 0, "%s: tokens with keep 0: experts -1, weights 0", name);
        float *dz = calloc(n * E, sizeof(float));
        O->moe_topk_bwd(dz, c.dw, c.s, c.idx0, n, &rp);
        double *fd = malloc(sizeof(double) * n * E);
        finite_diff(fd, c.z, (size_t)n * E, rt_loss, &c, 1e-3f);
        int flipped = 0;
        for (int i = 0; i < n * E; i++) flipped |= isnan(fd[i]);
        CHECK(!flipped && rel_err(fd, dz, (size_t)n * E) < 1e-3, "%s: routing weights to logits: %.2e", name,
              rel_err(fd, dz, (size_t)n * E));
        /* balance loss: value by its definition over the routed tokens, gradient (f constant) by finite
         * differences (zero for the padding) */
        O->moe_balance(c.loss, NULL, 0, c.s, c.idx0, B, T, &rp);
        double worst = 0;
        for (int b = 0; b < B; b++) {
            double f[8] = {0}, P[8] = {0}, L = 0;
            int Tb = 0;
            for (int t = 0; t < T; t++) Tb += keep[b * T + t];
            for (int t = 0; t < T; t++)
                for (int k = 0; k < K && keep[b * T + t]; k++) f[c.idx0[(b * T + t) * K + k]] += (double)E / (K * Tb);
            for (int t = 0; t < T; t++) {
                double z = 0;
                for (int e = 0; e < E && keep[b * T + t]; e++) z += c.s[(b * T + t) * E + e];
                for (int e = 0; e < E && keep[b * T + t]; e++) P[e] += c.s[(b * T + t) * E + e] / (fn ? 1.0 : z) / Tb;
            }
            for (int e = 0; e < E; e++) L += f[e] * P[e];
            worst = fmax(worst, fabs(L - c.loss[b]));
        }
        CHECK(worst < 1e-6, "%s: balance loss by its definition over the routed tokens: %.2e", name, worst);
        /* the same as the batch without its padding: sequences of 4 tokens */
        float sc[8 * E], lc[B];
        int32_t ic[8 * K];
        for (int i = 0, o = 0; i < n; i++)
            if (keep[i]) memcpy(sc + o * E, c.s + i * E, sizeof(float) * E), memcpy(ic + o * K, c.idx0 + i * K, 4 * K), o++;
        O->moe_balance(lc, NULL, 0, sc, ic, B, T - 1, &rp);
        CHECK(lc[0] == c.loss[0] && lc[1] == c.loss[1], "%s: equals the loss of the batch without the padding (%g %g)",
              name, lc[0], lc[1]);
        memset(dz, 0, sizeof(float) * n * E);
        O->moe_balance(c.loss, dz, 1.0f, c.s, c.idx0, B, T, &rp);
        c.balance = 1; /* a smooth function of small gradients: a larger step keeps rounding noise down */
        finite_diff(fd, c.z, (size_t)n * E, rt_loss, &c, 5e-2f);
        int pad_zero = 1;
        for (int e = 0; e < E; e++) pad_zero &= dz[3 * E + e] == 0 && dz[9 * E + e] == 0;
        CHECK(pad_zero && rel_err(fd, dz, (size_t)n * E) < 1e-3, "%s: balance loss gradient: %.2e", name,
              rel_err(fd, dz, (size_t)n * E));
        free(c.z), free(c.s), free(c.w), free(c.dw), free(c.idx), free(c.idx0), free(c.loss), free(dz), free(fd);
    }
}

/* sum_k g_k w_k of one token in double, w = c σ(z_k) / (Σ_k σ(z_k) + 1e-20) over the fixed selection it */
static double renorm_loss_d(const double *z, const int32_t *it, const float *g, int K, double c) {
    double s[16], Z = 0, L = 0;
    for (int k = 0; k < K; k++) s[k] = 1.0 / (1.0 + exp(-z[it[k]])), Z += s[k];
    for (int k = 0; k < K; k++) L += g[k] * c * s[k] / (Z + 1e-20);
    return L;
}

/* Renormalised sigmoid weights when the selected scores underflow (issue 16): all to 0 (logits -120),
 * tiny but normal (logits near -80: Σ s ~ 1e-35, far below the epsilon) and ordinary. Weights and their
 * backward are finite; the all-zero token gets 0 weights and 0 gradient; the others equal the function
 * with transformers' epsilon in double, weights directly and the backward by central differences. */
TEST(routing_renorm_underflow) {
    ds_route_params rp = {.n_experts = 8, .top_k = 3, .n_group = 4, .topk_group = 2, .group_rule = DS_GROUP_TOP2SUM,
                          .score_fn = DS_SCORE_FN_SIGMOID, .renorm = 1, .route_scale = 2.5f};
    enum { n = 3, E = 8, K = 3 };
    float *z = randv(n * E, 25, 0.5f), *g = randv(n * K, 26, 1), s[n * E], w[n * K], dz[n * E] = {0}, loss[n];
    for (int e = 0; e < E; e++) z[e] -= 120.0f, z[E + e] -= 80.0f, z[2 * E + e] *= 4.0f;
    int32_t idx[n * K];
    O->router_scores(s, z, n, E, rp.score_fn);
    int zero = 1;
    for (int e = 0; e < E; e++) zero &= s[e] == 0.0f && s[E + e] > 1e-37f && s[E + e] < 1e-33f;
    CHECK(zero, "scores: token 0 all exactly 0, token 1 all between 1e-37 and 1e-33");
    O->moe_topk(idx, w, s, NULL, NULL, n, &rp);
    O->moe_topk_bwd(dz, g, s, idx, n, &rp);
    int finite = 1, zero_w = 1, zero_g = 1;
    for (int i = 0; i < n * K; i++) finite &= isfinite(w[i]);
    for (int i = 0; i < n * E; i++) finite &= isfinite(dz[i]);
    for (int k = 0; k < K; k++) zero_w &= w[k] == 0.0f;
    for (int e = 0; e < E; e++) zero_g &= dz[e] == 0.0f;
    CHECK(finite, "weights and their backward are finite");
    CHECK(zero_w && zero_g, "every selected score 0: weights 0 and no gradient to the logits");
    for (int t = 1; t < n; t++) {
        double Z = 0, werr = 0, num = 0, den = 0, zd[E];
        for (int k = 0; k < K; k++) Z += s[t * E + idx[t * K + k]];
        for (int k = 0; k < K; k++) {
            double ref = 2.5 * s[t * E + idx[t * K + k]] / (Z + 1e-20);
            werr = fmax(werr, fabs(w[t * K + k] - ref) / ref);
        }
        for (int e = 0; e < E; e++) zd[e] = z[t * E + e];
        for (int e = 0; e < E; e++) {
            const double h = 1e-4, x0 = zd[e];
            zd[e] = x0 + h;
            double lp = renorm_loss_d(zd, idx + t * K, g + t * K, K, 2.5);
            zd[e] = x0 - h;
            double lm = renorm_loss_d(zd, idx + t * K, g + t * K, K, 2.5);
            zd[e] = x0;
            double fd = (lp - lm) / (2 * h);
            num += (fd - dz[t * E + e]) * (fd - dz[t * E + e]), den += fd * fd;
        }
        CHECK(werr < 1e-6 && den > 0 && sqrt(num / den) < 1e-5,
              "%s scores: weights = c s / (sum + 1e-20) (rel err %.1e), backward vs central differences %.1e (|g| %.1e)",
              t == 1 ? "tiny" : "ordinary", werr, sqrt(num / den), sqrt(den));
    }
    /* the balance loss normalises all E scores the same way: finite, and nothing from token 0 */
    memset(dz, 0, sizeof dz);
    O->moe_balance(loss, dz, 1.0f, s, idx, n, 1, &rp);
    finite = isfinite(loss[0]) && isfinite(loss[1]) && isfinite(loss[2]);
    for (int i = 0; i < n * E; i++) finite &= isfinite(dz[i]);
    CHECK(finite && loss[0] == 0.0f, "balance loss of underflowed scores: finite (token 0's loss %g)", loss[0]);
    free(z), free(g);
}

/* ---- dispatch / combine ------------------------------------------------------------------------------- */

TEST(dispatch_and_combine) {
    int n = 7, K = 2, E = 4, d = 5, m = n * K;
    int32_t idx[14] = {1, 3, 0, 1, 3, 2, 1, 0, 2, 3, 1, 2, 0, 3};
    int32_t off[5], order[14], where[14];
    O->moe_bucket(off, order, where, idx, n, K, E);
    int ok = off[0] == 0 && off[E] == m;
    for (int e = 0; e < E; e++)
        for (int r = off[e]; r < off[e + 1]; r++) ok &= idx[order[r]] == e && (r == off[e] || order[r] > order[r - 1]);
    for (int s = 0; s < m; s++) ok &= order[where[s]] == s;
    CHECK(ok, "counting sort: expert ranges, stable order, inverse");
    /* slots routed elsewhere (-1) are left out of the sort, the gather backward and the combine */
    int32_t part[14], poff[5], porder[14], pwhere[14];
    for (int s = 0; s < m; s++) part[s] = idx[s] < 2 ? idx[s] : -1;
    O->moe_bucket(poff, porder, pwhere, part, n, K, E);
    ok = poff[2] == 7 && poff[4] == 7;
    for (int s = 0; s < m; s++) ok &= part[s] < 0 ? pwhere[s] == -1 : porder[pwhere[s]] == s;
    float pw[14], py[35] = {0}, pye[35], pdx[35] = {0};
    for (int i = 0; i < 14; i++) pw[i] = 1.0f;
    for (int i = 0; i < 35; i++) pye[i] = 1.0f;
    O->moe_combine(py, pye, pw, pwhere, n, K, d);
    O->moe_gather_bwd(pdx, pye, pwhere, n, K, d);
    for (int t = 0; t < n; t++) ok &= py[t * d] == (float)((part[2 * t] >= 0) + (part[2 * t + 1] >= 0)) && pdx[t * d] == py[t * d];
    CHECK(ok, "empty slots (-1) are skipped");
    float *x = randv(n * d, 25, 1), *xg = malloc(sizeof(float) * m * d), *w = randv(m, 26, 1);
    O->moe_gather(xg, x, order, m, K, d);
    ok = 1;
    for (int r = 0; r < m; r++)
        for (int j = 0; j < d; j++) ok &= xg[r * d + j] == x[(order[r] / K) * d + j];
    CHECK(ok, "gather");
    float *y = calloc(n * d, sizeof(float));
    O->moe_combine(y, xg, w, where, n, K, d);
    double worst = 0;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < d; j++) {
            double want = 0;
            for (int k = 0; k < K; k++) want += (double)w[t * K + k] * x[t * d + j];
            worst = fmax(worst, fabs(want - y[t * d + j]));
        }
    CHECK(worst < 1e-6, "combine of the gathered rows gives sum_k w_k x: %.2e", worst);
    /* gather_bwd is the adjoint of gather: <gather(x), g> = <x, gather_bwd(g)> */
    float *g = randv(m * d, 27, 1), *dx = calloc(n * d, sizeof(float));
    O->moe_gather_bwd(dx, g, where, n, K, d);
    CHECK(fabs(dot(xg, g, (size_t)m * d) - dot(x, dx, (size_t)n * d)) < 1e-5, "gather backward is its adjoint");
    /* combine_bwd: dw = z·act, dact = w z; scale_rows */
    int I = 3;
    float *z = randv(m * I, 28, 1), *act = randv(m * I, 29, 1), *dact = malloc(sizeof(float) * m * I), dw[14];
    O->moe_combine_bwd(dact, dw, z, act, w, order, m, I);
    worst = 0;
    for (int r = 0; r < m; r++) {
        worst = fmax(worst, fabs(dot(z + r * I, act + r * I, I) - dw[order[r]]));
        for (int j = 0; j < I; j++) worst = fmax(worst, fabs(w[order[r]] * z[r * I + j] - dact[r * I + j]));
    }
    CHECK(worst < 1e-6, "combine backward: %.2e", worst);
    float *act0 = malloc(sizeof(float) * m * I);
    memcpy(act0, act, sizeof(float) * m * I);
    O->moe_scale_rows(act, w, order, m, I);
    ok = 1;
    for (int r = 0; r < m; r++)
        for (int j = 0; j < I; j++) ok &= act[r * I + j] == w[order[r]] * act0[r * I + j];
    CHECK(ok, "scale_rows by each row's routing weight");
    free(act0);
    free(x), free(xg), free(w), free(y), free(g), free(dx), free(z), free(act), free(dact);
}

TEST(mla_kv_expand_adjoint) {
    int n = 3, H = 2, dn = 4, dr = 2, dv = 3, ld = 5;
    float *kvb = randv(n * H * (dn + dv), 30, 1), *kpe = randv(n * ld, 31, 1);
    float *k = malloc(sizeof(float) * n * H * (dn + dr)), *v = malloc(sizeof(float) * n * H * dv);
    O->mla_kv_expand(k, v, kvb, kpe, ld, n, H, dn, dr, dv);
    int ok = 1;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            for (int c = 0; c < dn; c++) ok &= k[(i * H + h) * (dn + dr) + c] == kvb[(i * H + h) * (dn + dv) + c];
            for (int c = 0; c < dr; c++) ok &= k[(i * H + h) * (dn + dr) + dn + c] == kpe[i * ld + c];
            for (int c = 0; c < dv; c++) ok &= v[(i * H + h) * dv + c] == kvb[(i * H + h) * (dn + dv) + dn + c];
        }
    CHECK(ok, "k = [k_nope_h | k_pe shared], v from each head's second part");
    float *gk = randv(n * H * (dn + dr), 32, 1), *gv = randv(n * H * dv, 33, 1);
    float *gkvb = malloc(sizeof(float) * n * H * (dn + dv)), *gpe = calloc(n * ld, sizeof(float));
    O->mla_kv_expand_bwd(gkvb, gpe, ld, gk, gv, n, H, dn, dr, dv);
    double lhs = dot(k, gk, (size_t)n * H * (dn + dr)) + dot(v, gv, (size_t)n * H * dv);
    double rhs = dot(kvb, gkvb, (size_t)n * H * (dn + dv)) + dot(kpe, gpe, (size_t)n * ld);
    CHECK(fabs(lhs - rhs) < 1e-5, "backward is the adjoint (k_pe summed over heads): %.3g vs %.3g", lhs, rhs);
    free(kvb), free(kpe), free(k), free(v), free(gk), free(gv), free(gkvb), free(gpe);
}

int main(int argc, char **argv) {
    O = ds_ops_cpu();
    return tap_run(argc, argv);
}
