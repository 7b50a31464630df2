/* GPU test: the grouped expert GEMMs with device offsets (kernels/grouped_gemm.cu, ds_ops.gemm_rows_dev /
 * gemm_wgrad_dev) against their CPU references (ops/grouped.h) over ragged expert sizes: empty experts
 * (first, middle, last), sizes below, at and just past the 128-row tile, K and N no multiple of the tiles,
 * many small experts. Inputs are rounded to bf16 on the host, so the reference sees what the tensor cores
 * multiply and only the summation (order, the tensor cores' fp32 adds) differs: 1e-4 relative, where the
 * bf16 rounding the reference would otherwise miss is ~4e-3. Written outputs are poisoned (NaN) first:
 * rows past the last expert must stay NaN (untouched), every other output finite. Forward (tb = 1) and
 * activation gradient (tb = 0), each with fp32 weights and with the weights' bf16 copy (an announced
 * parameter buffer); weight gradient with beta 0 and 1; repeated runs give the same bits. Last, a timing of
 * one layer's expert GEMMs at bench-1b's shapes against the host-offset path (one cuBLASLt call per expert,
 * after a synchronisation), printed as a diagnostic. */
#include "gpu_test.h"

#include <vector>

extern "C" {
#include "core/log.h"
#include "ops/grouped.h"
#include "ops/ops.h"
#include "ops_cuda.h"
}

static const ds_ops *G;

static std::vector<float> bf16_rand(size_t n, uint64_t stream) {
    std::vector<float> x(n);
    ds_randn_fill(x.data(), n, gpu_test_seed, stream, 1.f);
    for (auto &v : x) v = ds_bf16_to_f32(ds_f32_to_bf16(v));
    return x;
}

template <typename T> static T *up(const std::vector<T> &h) {
    T *d = (T *)G->alloc(h.size() * sizeof(T) + 4);
    G->copy(d, h.data(), h.size() * sizeof(T), DS_COPY_H2D);
    return d;
}
static std::vector<float> down(const float *d, size_t n) {
    std::vector<float> h(n);
    G->sync();
    G->copy(h.data(), d, n * 4, DS_COPY_D2H);
    return h;
}

/* rows [0, rows) against ref (norm-wise relative), rows [rows, total) still NaN */
static void expect_rows(const char *what, const std::vector<float> &gpu, const std::vector<float> &ref, size_t row_elems,
                        size_t total_elems) {
    std::vector<double> r(ref.begin(), ref.begin() + row_elems);
    err_stats e = compare(gpu.data(), DS_F32, r.data(), row_elems);
    size_t touched = 0;
    for (size_t i = row_elems; i < total_elems; i++) touched += !isnan(gpu[i]);
    int st = ds_ops_cuda_status();
    CHECK(st == 0 && e.nonfinite == 0 && e.rel <= 1e-4 && touched == 0,
          "%s: rel err %.3g <= 1e-4, %zu non-finite, %zu elements past the last expert written%s%s", what, e.rel,
          e.nonfinite, touched, st ? ": " : "", st ? ds_errmsg() : "");
}

struct Case {
    const char *name;
    std::vector<int32_t> off;
    int N, K;
};

static std::vector<int32_t> offsets(const std::vector<int> &sizes) {
    std::vector<int32_t> o(1, 0);
    for (int s : sizes) o.push_back(o.back() + s);
    return o;
}

static std::vector<Case> cases() {
    std::vector<Case> c;
    c.push_back({"ragged (empty first/middle/last, 1, 127, 128, 129, 300 rows)", offsets({0, 1, 127, 0, 128, 129, 300, 45, 0}),
                 200, 136});
    std::vector<int> many;
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, 99);
    for (int e = 0; e < 64; e++) many.push_back(e % 7 == 3 ? 0 : (int)(ds_rng_u32(&r) % 90));
    c.push_back({"64 small experts, N < one tile", offsets(many), 72, 40});
    return c;
}

TEST(rows_forward_and_dgrad) {
    for (const Case &cs : cases()) {
        const int ng = (int)cs.off.size() - 1, rows = cs.off[ng], max_rows = rows + 50, N = cs.N, K = cs.K;
        int32_t *off_d = up(cs.off);
        for (int tb = 1; tb >= 0; tb--) {
            const int ldb = tb ? K : N;
            const size_t strideB = (size_t)N * K;
            std::vector<float> A = bf16_rand((size_t)max_rows * K, 1), B = bf16_rand(strideB * ng, 2);
            std::vector<float> C0 = bf16_rand((size_t)max_rows * N, 3);
            float *a = up(A), *b = up(B), *c = (float *)G->alloc(C0.size() * 4);
            for (int shadow = 0; shadow < 2; shadow++) {
                if (shadow) G->params_changed(b, B.size()); /* the bf16 copy is read from now on */
                /* beta 0 on poisoned C */
                ds_cuda_poison(c, C0.size() * 4);
                G->gemm_rows_dev(ng, off_d, max_rows, tb, N, K, 1.5f, a, K, b, strideB, ldb, 0.f, c, N);
                std::vector<float> ref(C0.size(), 0.f), got = down(c, C0.size());
                ds_cpu_gemm_rows_dev(ng, cs.off.data(), max_rows, tb, N, K, 1.5f, A.data(), K, B.data(), strideB, ldb,
                                     0.f, ref.data(), N);
                char what[256];
                snprintf(what, sizeof what, "%s: %s, %s weights, beta 0", cs.name, tb ? "forward (tb 1)" : "dgrad (tb 0)",
                         shadow ? "bf16 copy of the" : "fp32");
                expect_rows(what, got, ref, (size_t)rows * N, C0.size());
                /* the same bits again */
                ds_cuda_poison(c, C0.size() * 4);
                G->gemm_rows_dev(ng, off_d, max_rows, tb, N, K, 1.5f, a, K, b, strideB, ldb, 0.f, c, N);
                std::vector<float> again = down(c, C0.size());
                CHECK(!memcmp(again.data(), got.data(), (size_t)rows * N * 4), "%s: repeated, the same bits", what);
                /* beta 1 accumulates */
                std::vector<float> acc = C0;
                G->copy(c, acc.data(), acc.size() * 4, DS_COPY_H2D);
                G->gemm_rows_dev(ng, off_d, max_rows, tb, N, K, 1.f, a, K, b, strideB, ldb, 1.f, c, N);
                ds_cpu_gemm_rows_dev(ng, cs.off.data(), max_rows, tb, N, K, 1.f, A.data(), K, B.data(), strideB, ldb,
                                     1.f, acc.data(), N);
                got = down(c, C0.size());
                size_t tail_changed = 0;
                for (size_t i = (size_t)rows * N; i < C0.size(); i++) tail_changed += got[i] != C0[i];
                std::vector<double> r(acc.begin(), acc.end());
                err_stats e = compare(got.data(), DS_F32, r.data(), acc.size());
                CHECK(e.nonfinite == 0 && e.rel <= 1e-4 && tail_changed == 0,
                      "%s, beta 1: rel err %.3g <= 1e-4, rows past the last expert unchanged (%zu changed)", what, e.rel,
                      tail_changed);
            }
            G->free(a), G->free(b), G->free(c);
        }
        G->free(off_d);
    }
}

TEST(wgrad) {
    for (const Case &cs : cases()) {
        const int ng = (int)cs.off.size() - 1, rows = cs.off[ng], M = cs.K + 7, N = cs.N;
        int32_t *off_d = up(cs.off);
        std::vector<float> A = bf16_rand((size_t)rows * M + 1, 4), B = bf16_rand((size_t)rows * N + 1, 5);
        const size_t strideC = (size_t)M * N, nc = strideC * ng;
        std::vector<float> C0 = bf16_rand(nc, 6);
        float *a = up(A), *b = up(B), *c = (float *)G->alloc(nc * 4);
        for (int beta1 = 0; beta1 < 2; beta1++) {
            std::vector<float> ref = beta1 ? C0 : std::vector<float>(nc, 0.f);
            if (beta1) G->copy(c, C0.data(), nc * 4, DS_COPY_H2D);
            else ds_cuda_poison(c, nc * 4);
            G->gemm_wgrad_dev(ng, off_d, M, N, 0.5f, a, M, b, N, beta1 ? 1.f : 0.f, c, strideC, N);
            ds_cpu_gemm_wgrad_dev(ng, cs.off.data(), M, N, 0.5f, A.data(), M, B.data(), N, beta1 ? 1.f : 0.f, ref.data(),
                                  strideC, N);
            std::vector<float> got = down(c, nc);
            char what[256];
            snprintf(what, sizeof what, "%s: wgrad, beta %d (empty experts: %s)", cs.name, beta1,
                     beta1 ? "C kept" : "zeros");
            expect_rows(what, got, ref, nc, nc);
            if (beta1) {
                size_t kept = 0, empty = 0;
                for (int g = 0; g < ng; g++)
                    if (cs.off[g + 1] == cs.off[g]) {
                        empty++;
                        kept += !memcmp(got.data() + g * strideC, C0.data() + g * strideC, strideC * 4);
                    }
                CHECK(kept == empty, "%s: every empty expert's C untouched bit for bit (%zu of %zu)", what, kept, empty);
            }
        }
        G->free(a), G->free(b), G->free(c), G->free(off_d);
    }
}

/* One MoE layer's routed-expert GEMMs at bench-1b's shapes (64 experts, hidden 1024, expert width 512,
 * 8 x 1024 tokens top-6): forward gate, up, down; dgrad of the three; wgrad of the three. Host-offset path
 * (offsets read back, one cuBLASLt call per expert) vs this kernel. A diagnostic: it always passes. */
TEST(timing_bench1b_layer) {
    const int E = 64, D = 1024, I = 512, rows = 8 * 1024 * 6;
    std::vector<int> sizes;
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, 7);
    int left = rows;
    for (int e = 0; e < E; e++) { /* uneven loads, as routing gives */
        int s = e == E - 1 ? left : (int)(ds_rng_u32(&r) % (2 * rows / E));
        s = s > left ? left : s;
        sizes.push_back(s);
        left -= s;
    }
    std::vector<int32_t> off = offsets(sizes);
    std::vector<int64_t> off64(off.begin(), off.end());
    int32_t *off_d = up(off);
    std::vector<float> x = bf16_rand((size_t)rows * D, 8), w = bf16_rand((size_t)E * I * D, 9);
    float *xd = up(x), *wd = up(w), *h = (float *)G->alloc((size_t)rows * I * 4), *y = (float *)G->alloc((size_t)rows * D * 4);
    float *gw = (float *)G->alloc((size_t)E * I * D * 4);
    G->params_changed(wd, w.size());
    int32_t *host_off = (int32_t *)malloc(sizeof(int32_t) * (E + 1));
    double t_host = 0, t_dev = 0;
    for (int it = 0; it < 4; it++)
        for (int dev = 0; dev < 2; dev++) {
            G->sync();
            double t0 = ds_now();
            for (int p = 0; p < 3; p++) {
                if (dev) {
                    G->gemm_rows_dev(E, off_d, rows, 1, I, D, 1.f, xd, D, wd, (size_t)I * D, D, 0.f, h, I);
                    G->gemm_rows_dev(E, off_d, rows, 0, D, I, 1.f, h, I, wd, (size_t)I * D, D, 0.f, y, D);
                    G->gemm_wgrad_dev(E, off_d, I, D, 1.f, h, I, xd, D, 1.f, gw, (size_t)I * D, D);
                } else {
                    G->copy(host_off, off_d, sizeof(int32_t) * (E + 1), DS_COPY_D2H); /* the old per-layer sync */
                    G->sync();
                    for (int e = 0; e <= E; e++) off64[e] = host_off[e];
                    G->gemm_rows(E, off64.data(), 1, I, D, 1.f, xd, D, wd, (size_t)I * D, D, 0.f, h, I);
                    G->gemm_rows(E, off64.data(), 0, D, I, 1.f, h, I, wd, (size_t)I * D, D, 0.f, y, D);
                    G->gemm_wgrad(E, off64.data(), I, D, 1.f, h, I, xd, D, 1.f, gw, (size_t)I * D, D);
                }
            }
            G->sync();
            double dt = ds_now() - t0;
            if (it > 0) (dev ? t_dev : t_host) += dt; /* the first round warms up */
        }
    double flops = 9 * 2.0 * rows * (double)I * D; /* one round: 3 x (forward, dgrad, wgrad) */
    printf("# bench-1b layer expert GEMMs (3 x fwd, dgrad, wgrad; %d rows, %d experts): host offsets + cuBLASLt per "
           "expert %.2f ms, device offsets grouped kernel %.2f ms (%.2fx), grouped %.0f TFLOP/s\n",
           rows, E, t_host / 3 * 1e3, t_dev / 3 * 1e3, t_host / t_dev, flops / (t_dev / 3) / 1e12);
    CHECK(ds_ops_cuda_status() == 0, "timing run without a CUDA error");
    free(host_off);
    G->free(off_d), G->free(xd), G->free(wd), G->free(h), G->free(y), G->free(gw);
}

int main(int argc, char **argv) {
    gpu_test_begin("test_grouped_gemm");
    G = ds_ops_cuda();
    if (!G) {
        printf("Bail out! %s\n", ds_errmsg());
        return 1;
    }
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_BF16);
    if (!G->gemm_rows_dev || !G->gemm_wgrad_dev) {
        printf("Bail out! the CUDA table has no device-offset grouped GEMMs (DS_CUDA_GROUPED=0?)\n");
        return 1;
    }
    return tap_run(argc, argv);
}
