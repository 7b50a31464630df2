/* Unit tests of the fused expert FFN of the CPU backend (ops.h moe_ffn_fwd / moe_ffn_bwd, cpu_moe_ffn.c):
 * every output bit for bit the unfused sequence of the same table's ops (gemm_rows, swiglu, combine's
 * backward, scale_rows, gemm_wgrad), over ragged experts with empty ones, with balanced routing (every
 * expert on a thread of its own) and with one expert holding most rows (it runs alone on all threads);
 * the weight gradients accumulate into what is there, or are left to the caller. */
#include "tap.h"

#include "core/rng.h"
#include "ops/ops.h"

#include <stdlib.h>
#include <string.h>

enum { NE = 7, D = 72, I = 40, ROWS = 300 };

static float *randv(size_t n, uint64_t stream, float scale) {
    float *x = malloc(sizeof(float) * n);
    ds_randn_fill(x, n, 91, stream, scale);
    return x;
}

static float *copyv(const float *x, size_t n) {
    float *y = malloc(sizeof(float) * n);
    memcpy(y, x, sizeof(float) * n);
    return y;
}

static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, sizeof(float) * n); }

/* one routing: expert offsets off; rows r carry slot order[r] (a permutation of the ROWS slots) */
static void run_case(const char *what, const int64_t *off) {
    const ds_ops *O = ds_ops_cpu();
    const size_t stride = (size_t)I * D + 5, nrows = (size_t)off[NE];
    float *x = randv(nrows * D, 1, 1.0f), *dy = randv(nrows * D, 2, 1.0f), *w = randv(ROWS, 3, 0.5f);
    float *Wg = randv(stride * NE, 4, 0.2f), *Wu = randv(stride * NE, 5, 0.2f), *Wd = randv(stride * NE, 6, 0.2f);
    int32_t order[ROWS];
    for (int r = 0; r < ROWS; r++) order[r] = (int32_t)((r * 37 + 11) % ROWS); /* 37 is prime to 300 */

    /* forward: fused against gemm_rows, swiglu_fwd, gemm_rows */
    float *g = calloc(nrows * I, 4), *u = calloc(nrows * I, 4), *act = calloc(nrows * I, 4), *y = calloc(nrows * D, 4);
    float *g1 = calloc(nrows * I, 4), *u1 = calloc(nrows * I, 4), *a1 = calloc(nrows * I, 4), *y1 = calloc(nrows * D, 4);
    O->gemm_rows(NE, off, 1, I, D, 1.0f, x, D, Wg, stride, D, 0.0f, g, I);
    O->gemm_rows(NE, off, 1, I, D, 1.0f, x, D, Wu, stride, D, 0.0f, u, I);
    O->swiglu_fwd(act, g, u, nrows * I);
    O->gemm_rows(NE, off, 1, D, I, 1.0f, act, I, Wd, stride, I, 0.0f, y, D);
    O->moe_ffn_fwd(NE, off, D, I, x, Wg, Wu, Wd, stride, g1, u1, a1, y1);
    CHECK(same(g, g1, nrows * I) && same(u, u1, nrows * I), "%s: fwd gate and up outputs bit for bit", what);
    CHECK(same(act, a1, nrows * I) && same(y, y1, nrows * D), "%s: fwd activations and outputs bit for bit", what);

    /* backward, the sequence of ffn.c */
    float *gW0 = randv(stride * NE, 7, 0.1f); /* weight gradients accumulate into this */
    float *gWg = copyv(gW0, stride * NE), *gWu = copyv(gW0, stride * NE), *gWd = copyv(gW0, stride * NE);
    float *dg = calloc(nrows * I, 4), *du = calloc(nrows * I, 4), *dx = calloc(nrows * D, 4), *dw = calloc(ROWS, 4);
    O->swiglu_fwd(act, g, u, nrows * I);
    O->gemm_rows(NE, off, 0, I, D, 1.0f, dy, D, Wd, stride, I, 0.0f, dg, I);
    O->moe_combine_bwd(dg, dw, dg, act, w, order, (int)nrows, I);
    O->moe_scale_rows(act, w, order, (int)nrows, I);
    O->gemm_wgrad(NE, off, D, I, 1.0f, dy, D, act, I, 1.0f, gWd, stride, I);
    O->swiglu_bwd(dg, du, dg, g, u, nrows * I);
    O->gemm_wgrad(NE, off, I, D, 1.0f, dg, I, x, D, 1.0f, gWg, stride, D);
    O->gemm_wgrad(NE, off, I, D, 1.0f, du, I, x, D, 1.0f, gWu, stride, D);
    O->gemm_rows(NE, off, 0, D, I, 1.0f, dg, I, Wg, stride, D, 0.0f, dx, D);
    O->gemm_rows(NE, off, 0, D, I, 1.0f, du, I, Wu, stride, D, 1.0f, dx, D);

    for (int with_wgrad = 1; with_wgrad >= 0; with_wgrad--) {
        float *hg = copyv(gW0, stride * NE), *hu = copyv(gW0, stride * NE), *hd = copyv(gW0, stride * NE);
        float *a2 = calloc(nrows * I, 4), *dg2 = calloc(nrows * I, 4), *du2 = calloc(nrows * I, 4);
        float *dx2 = calloc(nrows * D, 4), *dw2 = calloc(ROWS, 4);
        O->moe_ffn_bwd(NE, off, D, I, x, dy, w, order, Wg, Wu, Wd, stride, g, u, a2, dg2, du2, dw2, dx2,
                       with_wgrad ? hg : NULL, with_wgrad ? hu : NULL, with_wgrad ? hd : NULL);
        const char *mode = with_wgrad ? "with weight gradients" : "weight gradients left to the caller";
        CHECK(same(act, a2, nrows * I) && same(dg, dg2, nrows * I) && same(du, du2, nrows * I),
              "%s, %s: bwd scaled activations, dg, du bit for bit", what, mode);
        CHECK(same(dx, dx2, nrows * D) && same(dw, dw2, ROWS), "%s, %s: bwd dx and routing-weight gradients bit for bit",
              what, mode);
        if (with_wgrad)
            CHECK(same(gWg, hg, stride * NE) && same(gWu, hu, stride * NE) && same(gWd, hd, stride * NE),
                  "%s: weight gradients accumulated bit for bit", what);
        else
            CHECK(same(gW0, hg, stride * NE) && same(gW0, hu, stride * NE) && same(gW0, hd, stride * NE),
                  "%s: weight gradients untouched when not passed", what);
        free(hg), free(hu), free(hd), free(a2), free(dg2), free(du2), free(dx2), free(dw2);
    }
    free(x), free(dy), free(w), free(Wg), free(Wu), free(Wd), free(g), free(u), free(act), free(y);
    free(g1), free(u1), free(a1), free(y1), free(gW0), free(gWg), free(gWu), free(gWd);
    free(dg), free(du), free(dx), free(dw);
}

TEST(ragged_experts) {
    /* empty experts first, inside and last; sizes that are no multiple of any tile */
    static const int64_t off[NE + 1] = {0, 0, 41, 41, 120, 170, 300, 300};
    run_case("ragged", off);
}

TEST(one_expert_runs_alone) {
    /* expert 2 holds 250 of 300 rows: more than a fair share of the threads, so it runs on all of them */
    static const int64_t off[NE + 1] = {0, 10, 20, 270, 280, 290, 300, 300};
    run_case("one large expert", off);
}

TEST(table_entries) {
    CHECK(ds_ops_cpu()->moe_ffn_fwd && ds_ops_cpu()->moe_ffn_bwd, "the CPU table has the fused expert FFN");
}

TAP_MAIN()
