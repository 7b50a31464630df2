/* GPU tests for FP8-resident Linear weights (lib/fp8/resident.h's device half, kernels/fp8_resident.cu):
 * a weight registered with ds_fp8_resident_add_device and multiplied through ds_fp8_resident_ops_device
 * (activation quantized 1x128 on the device, cuBLASLt's block-scaled E4M3 GEMM) against the CPU's W8A8
 * Linear on the same weight (lib/fp8/linear.h ds_fp8_linear_gemm: the same 1x128 and 128x128 quantization,
 * exact block sums), fresh random inputs every run. Tolerance 1e-3 relative (norm): the two differ only by
 * the tensor cores' accumulation inside each 128 block (~1.3e-4, kernels/blaslt.h). Covers M not a multiple
 * of 4 (padded rows), M = 1 (decode), a slice of rows starting at a 128 boundary, a partial last 128-row
 * block, alpha and beta with an ldc wider than N (the columns beyond N untouched), grouped expert rows with
 * an empty expert, and the refusal of a shape cuBLASLt does not take. */
#include "gpu_test.h"

#include <vector>

extern "C" {
#include "fp8/linear.h"
#include "fp8/quant.h"
#include "fp8/resident.h"
#include "ops_cuda.h"
}

struct rw { /* a resident weight: host codes, scales, their dequantized floats, device memory, its key */
    int64_t rows, cols;
    std::vector<uint8_t> q;
    std::vector<float> s, deq;
    dbuf dev;
};

static int make_weight(rw *w, int64_t rows, int64_t cols, const float *key, ds_rng *r) {
    std::vector<float> x((size_t)(rows * cols));
    rand_normal(x.data(), x.size(), r, 0.05f);
    w->rows = rows, w->cols = cols;
    w->q.resize(x.size());
    w->s.resize((size_t)(ds_fp8_nblocks(rows, 128) * ds_fp8_nblocks(cols, 128)));
    w->deq.resize(x.size());
    if (ds_fp8_quantize(w->q.data(), w->s.data(), x.data(), rows, cols, 128, 128, DS_FP8_SCALE_F32) ||
        ds_fp8_dequantize(w->deq.data(), w->q.data(), w->s.data(), rows, cols, 128, 128) ||
        dbuf_alloc(&w->dev, ds_fp8_resident_device_bytes(rows, cols)))
        return 1;
    return ds_fp8_resident_add_device(key, rows, cols, w->q.data(), w->s.data(), 128, 128, w->dev.p, ds_ops_cuda());
}

/* y = alpha x W[r0 .. r0+N)^T + beta C through the resident table, against ds_fp8_linear_gemm */
static void linear_case(const char *name, int M, int64_t rows, int K, int64_t r0, int N, float alpha, float beta,
                        int ldc) {
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, (uint64_t)(M * 7919 + K));
    std::vector<float> key((size_t)(rows * K)); /* host floats as the key range, never read */
    rw w;
    int rc = make_weight(&w, rows, K, key.data(), &r);
    CHECK_OK(rc, name);
    if (rc) return;
    ds_ops tab;
    rc = ds_fp8_resident_ops_device(&tab, ds_ops_cuda());
    std::vector<float> x((size_t)M * K), c0((size_t)M * ldc), out((size_t)M * ldc), ref((size_t)M * ldc);
    rand_normal(x.data(), x.size(), &r, 1.0f);
    rand_normal(c0.data(), c0.size(), &r, 1.0f);
    if (beta == 0)
        for (size_t i = 0; i < c0.size(); i++)
            if (i % ldc < (size_t)N) c0[i] = NAN; /* beta 0 must not read C */
    dbuf dx, dc;
    rc |= dbuf_up(&dx, x.data(), sizeof(float) * x.size()) || dbuf_up(&dc, c0.data(), sizeof(float) * c0.size());
    if (!rc) {
        tab.gemm(0, 1, M, N, K, alpha, (const float *)dx.p, K, key.data() + r0 * K, K, beta, (float *)dc.p, ldc);
        rc = ds_fp8_resident_status() || ds_cuda_sync() || ds_ops_cuda_status() ||
             ds_cuda_d2h(out.data(), dc.p, sizeof(float) * out.size());
    }
    CHECK_OK(rc, name);
    ref = c0;
    ds_fp8_linear_gemm(0, 1, M, N, K, alpha, x.data(), K, w.deq.data() + r0 * K, K, beta, ref.data(), ldc);
    std::vector<double> rd, od;
    size_t outside = 0;
    for (size_t i = 0; i < out.size(); i++) {
        if (i % ldc < (size_t)N) rd.push_back(ref[i]), od.push_back(out[i]);
        else outside += memcmp(&out[i], &c0[i], sizeof(float)) != 0;
    }
    std::vector<float> of(od.begin(), od.end());
    err_stats e = compare(of.data(), DS_F32, rd.data(), rd.size());
    CHECK(!rc && e.nonfinite == 0 && e.rel <= 1e-3 && outside == 0,
          "%s: M %d, N %d of %lld rows from %lld, K %d, alpha %g beta %g ldc %d: rel err %.3g vs the CPU's W8A8 "
          "(max abs %.3g), %zu non-finite, %zu columns past N changed",
          name, M, N, (long long)rows, (long long)r0, K, alpha, beta, ldc, e.rel, e.maxabs, e.nonfinite, outside);
    ds_fp8_resident_remove(key.data(), key.size());
    dbuf_free(&w.dev); dbuf_free(&dx); dbuf_free(&dc);
}

TEST(linear_decode_one_row) { linear_case("decode", 1, 256, 512, 0, 256, 1.0f, 0.0f, 256); }
TEST(linear_padded_rows_slice) { linear_case("rows 128.. of 384", 7, 384, 1024, 128, 256, 1.0f, 0.0f, 256); }
TEST(linear_partial_block_beta) { linear_case("partial block, beta", 33, 260, 384, 0, 260, 0.5f, 1.0f, 268); }
TEST(linear_prefill) { linear_case("prefill", 200, 576, 2048, 0, 576, 1.0f, 0.0f, 576); }

TEST(gemm_rows_experts) {
    const int E = 3, N = 128, K = 256;
    const int64_t off[E + 1] = {0, 5, 5, 12}; /* expert 1 has no rows */
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, 77);
    std::vector<float> key((size_t)E * N * K);
    rw w[E];
    int rc = 0;
    for (int e = 0; e < E && !rc; e++) rc = make_weight(&w[e], N, K, key.data() + (size_t)e * N * K, &r);
    ds_ops tab;
    if (!rc) rc = ds_fp8_resident_ops_device(&tab, ds_ops_cuda());
    const int M = (int)off[E];
    std::vector<float> x((size_t)M * K), out((size_t)M * N), ref((size_t)M * N, 0.0f);
    rand_normal(x.data(), x.size(), &r, 1.0f);
    dbuf dx, dc;
    rc |= dbuf_up(&dx, x.data(), sizeof(float) * x.size()) || dbuf_alloc(&dc, sizeof(float) * out.size()) ||
          ds_cuda_poison(dc.p, dc.bytes);
    if (!rc) {
        tab.gemm_rows(E, off, 1, N, K, 1.0f, (const float *)dx.p, K, key.data(), (size_t)N * K, K, 0.0f,
                      (float *)dc.p, N);
        rc = ds_fp8_resident_status() || ds_cuda_sync() || ds_ops_cuda_status() ||
             ds_cuda_d2h(out.data(), dc.p, sizeof(float) * out.size());
    }
    CHECK_OK(rc, "grouped experts");
    for (int e = 0; e < E; e++)
        if (off[e + 1] > off[e])
            ds_fp8_linear_gemm(0, 1, (int)(off[e + 1] - off[e]), N, K, 1.0f, x.data() + off[e] * K, K, w[e].deq.data(),
                               K, 0.0f, ref.data() + off[e] * N, N);
    std::vector<double> rd(ref.begin(), ref.end());
    err_stats es = compare(out.data(), DS_F32, rd.data(), rd.size());
    CHECK(!rc && es.nonfinite == 0 && es.rel <= 1e-3, "3 experts (one empty), 12 rows: rel err %.3g, %zu non-finite",
          es.rel, es.nonfinite);
    ds_fp8_resident_remove(key.data(), key.size());
    for (int e = 0; e < E; e++) dbuf_free(&w[e].dev);
    dbuf_free(&dx); dbuf_free(&dc);
}

TEST(refusals) {
    std::vector<uint8_t> q(64 * 192);
    std::vector<float> s(2), key(64 * 192);
    dbuf d;
    int rc = dbuf_alloc(&d, ds_fp8_resident_device_bytes(64, 192));
    CHECK_OK(rc, "device memory");
    rc = ds_fp8_resident_add_device(key.data(), 64, 192, q.data(), s.data(), 128, 128, d.p, ds_ops_cuda());
    CHECK(rc != 0 && strstr(ds_errmsg(), "columns a multiple of 128"), "K = 192 refused: %s", ds_errmsg());
    CHECK(!ds_fp8_resident_device_ok(64, 256, 64, 128) && ds_fp8_resident_device_ok(68, 256, 128, 128) &&
              !ds_fp8_resident_device_ok(66, 256, 128, 128),
          "device shapes: 128x128 blocks only, rows a multiple of 4");
    dbuf_free(&d);
}

int main(int argc, char **argv) {
    gpu_test_begin("test_fp8_resident");
    if (!ds_ops_cuda()) {
        printf("Bail out! the CUDA backend: %s\n", ds_errmsg());
        return 1;
    }
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_F32);
    return tap_run(argc, argv);
}
