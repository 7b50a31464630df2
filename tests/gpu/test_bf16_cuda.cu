/* GPU test: --bf16 over the CUDA backend (ops/bf16.h's generic path). The CUDA table's round_bf16 against the
 * CPU table's bit for bit (the edge values of tests/unit/bf16_edges.h, 4M random bit patterns of every class,
 * a strided layout whose gaps stay untouched); the bf16 table around ds_ops_cuda(): products on bf16 operands
 * stored in bf16 (weight gradients fp32) against a double reference, the other outputs on the bf16 grid, the
 * base's name and memory kept; ds_ops_check_bf16_gemm refuses a CUDA backend whose GEMMs are not bf16.
 * tests/gpu/test_tools.sh trains --bf16 --device cuda against --bf16 --device cpu through the tool. */
#include "gpu_test.h"

#include <vector>

#include "bf16_edges.h"

extern "C" {
#include "ops/bf16.h"
#include "ops/device.h"
#include "ops/ops.h"
#include "ops_cuda.h"
}

static const ds_ops *G;

/* x (host) through the CUDA entry as rows x cols at stride ld: the result downloaded */
static std::vector<float> gpu_round(const std::vector<float> &x, int64_t ld, int64_t rows, int64_t cols) {
    float *d = (float *)G->alloc(x.size() * sizeof(float));
    G->copy(d, x.data(), x.size() * sizeof(float), DS_COPY_H2D);
    G->round_bf16(d, ld, rows, cols);
    std::vector<float> y(x.size());
    G->sync();
    G->copy(y.data(), d, y.size() * sizeof(float), DS_COPY_D2H);
    G->free(d);
    return y;
}

static size_t bit_diffs(const std::vector<float> &a, const std::vector<float> &b) {
    size_t n = 0;
    for (size_t i = 0; i < a.size(); i++) n += ds_f32_bits(a[i]) != ds_f32_bits(b[i]);
    return n;
}

TEST(round_entry_bit_for_bit) {
    CHECK(G->round_bf16 != NULL, "the CUDA table has a round_bf16 entry");
    std::vector<float> e(BF16_EDGES);
    for (int i = 0; i < BF16_EDGES; i++) e[i] = ds_f32_from_bits(bf16_edges[i][0]);
    std::vector<float> g = gpu_round(e, BF16_EDGES, 1, BF16_EDGES);
    size_t wrong = 0;
    for (int i = 0; i < BF16_EDGES; i++)
        if (ds_f32_bits(g[i]) != bf16_edges[i][1])
            wrong++, printf("# 0x%08x -> 0x%08x, want 0x%08x\n", bf16_edges[i][0], ds_f32_bits(g[i]), bf16_edges[i][1]);
    CHECK(wrong == 0, "edge values: ties to even, NaN quiet, Inf, overflow, denormals by value, -0 (%zu wrong)", wrong);
    /* every class of value: random bit patterns (NaNs, denormals, Infs among them) */
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, 1);
    std::vector<float> x(1 << 22);
    for (auto &v : x) v = ds_f32_from_bits(ds_rng_u32(&r));
    std::vector<float> c = x;
    ds_ops_cpu()->round_bf16(c.data(), (int64_t)c.size(), 1, (int64_t)c.size());
    g = gpu_round(x, (int64_t)x.size(), 1, (int64_t)x.size());
    CHECK(bit_diffs(g, c) == 0, "4M random bit patterns: the CPU's bits (%zu differ)", bit_diffs(g, c));
    /* rows x cols at a stride: the gaps untouched */
    const int64_t R = 999, C = 333, LD = 517;
    std::vector<float> s((size_t)R * LD);
    for (auto &v : s) v = ds_f32_from_bits(ds_rng_u32(&r));
    c = s;
    ds_ops_cpu()->round_bf16(c.data(), LD, R, C);
    g = gpu_round(s, LD, R, C);
    size_t gap = 0;
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = C; j < LD; j++) gap += ds_f32_bits(g[i * LD + j]) != ds_f32_bits(s[i * LD + j]);
    CHECK(bit_diffs(g, c) == 0 && gap == 0, "999 x 333 at stride 517: the CPU's bits, gaps untouched (%zu differ)",
          bit_diffs(g, c));
}

static int on_grid(const std::vector<float> &x) {
    for (float v : x)
        if (ds_f32_bits(v) != ds_f32_bits(ds_bf16_grid(v))) return 0;
    return 1;
}

static float *up(const std::vector<float> &x) {
    float *d = (float *)G->alloc(x.size() * sizeof(float));
    G->copy(d, x.data(), x.size() * sizeof(float), DS_COPY_H2D);
    return d;
}
static std::vector<float> down(const float *d, size_t n) {
    std::vector<float> y(n);
    G->sync();
    G->copy(y.data(), d, n * sizeof(float), DS_COPY_D2H);
    return y;
}

TEST(bf16_table_over_cuda) {
    const ds_ops *o = ds_bf16_ops(G);
    CHECK(o && !strcmp(o->name, "cuda") && o->alloc == G->alloc && o->gemm != G->gemm && !o->gemm_rows_dev,
          "a table around the CUDA backend: its name and memory, GEMMs wrapped, the host-offset expert path");
    if (!o) return;
    enum { M = 37, N = 45, K = 700 };
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, 2);
    std::vector<float> a((size_t)M * K), b((size_t)N * K);
    rand_normal(a.data(), a.size(), &r, 1.0f), rand_normal(b.data(), b.size(), &r, 1.0f);
    float *da = up(a), *db = up(b), *dc = (float *)G->alloc(sizeof(float) * M * N),
          *dw = (float *)G->alloc(sizeof(float) * N * K);
    o->gemm(0, 1, M, N, K, 1.0f, da, K, db, K, 0.0f, dc, N); /* Fprop-shaped: c = a b^T */
    std::vector<float> c = down(dc, (size_t)M * N);
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                const double p = (double)ds_bf16_grid(a[(size_t)m * K + k]) * ds_bf16_grid(b[(size_t)n * K + k]);
                s += p, sa += fabs(p);
            }
            /* bf16 output rounding (2^-8 of |c|) plus fp32 accumulation (K 2^-24 of the sum of |products|) */
            worst = fmax(worst, fabs(c[(size_t)m * N + n] - s) / (0x1p-8 * fabs(s) + K * 0x1p-24 * sa));
        }
    CHECK(worst <= 1.0 && on_grid(c), "a b^T of the bf16 operands, stored in bf16 (%.3f of the bound)", worst);
    G->zero(dw, sizeof(float) * N * K);
    o->gemm(1, 0, N, K, M, 1.0f, dc, N, da, K, 1.0f, dw, K); /* Wgrad-shaped: fp32 */
    std::vector<float> w = down(dw, (size_t)N * K);
    double we = 0;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double s = 0, sa = 0;
            for (int m = 0; m < M; m++) {
                const double p = (double)c[(size_t)m * N + n] * ds_bf16_grid(a[(size_t)m * K + k]);
                s += p, sa += fabs(p);
            }
            we = fmax(we, fabs(w[(size_t)n * K + k] - s) / (M * 0x1p-24 * sa + 1e-30));
        }
    CHECK(we <= 1.0 && !on_grid(w), "weight gradients: bf16 operands, an fp32 result (%.3f of the bound)", we);
    /* expert rows (host offsets): every group's output rows in bf16 */
    const int64_t off[4] = {0, 10, 10, M};
    o->gemm_rows(3, off, 1, N / 3, K, 1.0f, da, K, db, (size_t)(N / 3) * K, K, 0.0f, dc, N / 3);
    CHECK(on_grid(down(dc, (size_t)M * (N / 3))), "gemm_rows: the groups' outputs stored in bf16");
    /* an elementwise op: computed in fp32 by the base, stored in bf16 */
    std::vector<float> gain(K, 1.0f);
    float *dg = up(gain), *dr = (float *)G->alloc(sizeof(float) * M);
    o->rmsnorm_fwd(dw, K, dr, da, K, dg, M, K, 1e-6f);
    std::vector<float> y = down(dw, (size_t)M * K), yr(y.size());
    ds_ops_cpu()->rmsnorm_fwd(yr.data(), K, NULL, a.data(), K, gain.data(), M, K, 1e-6f);
    double ye = 0;
    for (size_t i = 0; i < y.size(); i++) ye = fmax(ye, fabs(y[i] - yr[i]) / (fabs(yr[i]) + 1e-30));
    CHECK(on_grid(y) && ye <= 0x1p-8 + 1e-5, "RMSNorm's output stored in bf16 (rel %.2e of fp32's)", ye);
    CHECK(ds_ops_cuda_status() == 0, "no CUDA error (%s)", ds_errmsg());
    G->free(da), G->free(db), G->free(dc), G->free(dw), G->free(dg), G->free(dr);
}

TEST(gemm_mode_must_be_bf16) {
    CHECK(ds_ops_check_bf16_gemm(G) == 0, "the default bf16 GEMM mode is what --bf16 needs");
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_F32);
    CHECK(ds_ops_check_bf16_gemm(G) == DS_EUSAGE && strstr(ds_errmsg(), "DS_CUDA_GEMM=f32"), "fp32 GEMMs refused: %s",
          ds_errmsg());
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_BF16);
}

int main(int argc, char **argv) {
    gpu_test_begin("test_bf16_cuda");
    if (!(G = ds_ops_cuda())) {
        printf("Bail out! %s\n", ds_errmsg());
        return 1;
    }
    return tap_run(argc, argv);
}
