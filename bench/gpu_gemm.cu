/* bench/gpu_gemm — FP8 (block-scaled, cuBLASLt) against bf16 (cuBLASLt) matrix products on
 * DeepSeek-V3's GEMM shapes, y[M,N] = x[M,K] W[N,K]^T with M = 4096 tokens, plus 8192^3.
 *
 * For each shape: the median time of bf16 and FP8 products (each after trying the heuristic's top
 * algorithms), the FP8 activation quantization (1x128) that a Linear adds, TFLOP/s (2MNK / time), the
 * FP8/bf16 speed ratio, and the FP8 result's error ||y - ref|| / ||ref|| against an fp32 product of the
 * dequantized operands (the block-scaled semantics in fp32) and against the bf16 product.
 * Output: one TSV row per shape on stdout (bench/gpu_gemm.sh joins it with PyTorch's numbers).
 * Usage: gpu_gemm [reps]
 */
#include "gpu_test.h"

#include <algorithm>
#include <vector>

extern "C" {
#include "blaslt.h"
#include "fp8_quant.h"
}

struct Shape {
    const char *name;
    int m, n, k;
};

static const Shape shapes[] = {
    {"q_a", 4096, 1536, 7168},        {"q_b", 4096, 24576, 1536},   {"kv_a", 4096, 576, 7168},
    {"kv_b", 4096, 32768, 512},       {"o", 4096, 7168, 16384},     {"dense_up", 4096, 18432, 7168},
    {"dense_down", 4096, 7168, 18432}, {"expert_up", 4096, 2048, 7168}, {"expert_down", 4096, 7168, 2048},
    {"square", 8192, 8192, 8192},
};

#define TRY(x)                                                                                         \
    do {                                                                                               \
        if (x) {                                                                                       \
            fprintf(stderr, "gpu_gemm: %s: %s\n", #x, ds_errmsg());                                    \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

static double median_ms(ds_blaslt *lt, const ds_gemm *g, int reps, int (*pre)(void *), void *pre_arg) {
    ds_cuda_timer *t;
    TRY(ds_cuda_timer_create(&t));
    std::vector<double> v;
    for (int i = 0; i < 3; i++) TRY(ds_blaslt_gemm(lt, g));
    for (int i = 0; i < reps; i++) {
        double ms;
        TRY(ds_cuda_timer_start(t, NULL));
        if (pre) TRY(pre(pre_arg));
        TRY(ds_blaslt_gemm(lt, g));
        TRY(ds_cuda_timer_stop(t, NULL, &ms));
        v.push_back(ms);
    }
    ds_cuda_timer_free(t);
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

static int run_quant(void *a) { return ds_cuda_quant_1x128((const ds_quant_args *)a); }

/* ||a - b|| / ||b|| over n f32/bf16 device values, on the host */
static double rel_err_dev(const void *a, ds_dtype at, const float *b_dev, size_t n) {
    std::vector<unsigned char> ha(n * ds_dtype_size(at));
    std::vector<float> hb(n);
    TRY(ds_cuda_d2h(ha.data(), a, ha.size()));
    TRY(ds_cuda_d2h(hb.data(), b_dev, n * 4));
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double x = elem(ha.data(), at, i), y = hb[i];
        if (!isfinite(x)) return INFINITY;
        num += (x - y) * (x - y);
        den += y * y;
    }
    return sqrt(num / den);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    char why[256];
    if (!ds_cuda_device_count(why, sizeof why)) {
        printf("gpu_gemm: no GPU present (%s)\n", why);
        return 0;
    }
    ds_cuda_info info;
    TRY(ds_cuda_init(0, &info));
    fprintf(stderr, "gpu_gemm: %s, %d SMs, %d reps per point (median)\n", info.name, info.sm_count, reps);
    ds_blaslt *lt;
    TRY(ds_blaslt_create(&lt, NULL, 0));
    printf("shape\tM\tN\tK\tbf16_ms\tbf16_tflops\tfp8_ms\tfp8_tflops\tfp8_over_bf16\tquant_ms\tfp8_with_quant_tflops\t"
           "fp8_err_vs_fp32_blockscaled\tfp8_err_vs_bf16\tbf16_algo\tfp8_algo\n");
    for (const Shape &s : shapes) {
        const size_t mk = (size_t)s.m * s.k, nk = (size_t)s.n * s.k, mn = (size_t)s.m * s.n;
        std::vector<float> hx(mk), hw(nk);
        ds_randn_fill(hx.data(), mk, 20261123, 2 * (&s - shapes), 1.0f); /* Philox, all host threads */
        ds_randn_fill(hw.data(), nk, 20261123, 2 * (&s - shapes) + 1, 0.02f);
        std::vector<uint16_t> bx(mk), bw(nk);
        round_bf16(hx.data(), bx.data(), NULL, mk);
        round_bf16(hw.data(), bw.data(), NULL, nk);
        hx.clear(); hx.shrink_to_fit(); hw.clear(); hw.shrink_to_fit();
        dbuf dx, dw, dy16, dy8, qx, sx, qw, sw, fx, fw, yref;
        TRY(dbuf_up(&dx, bx.data(), mk * 2));
        TRY(dbuf_up(&dw, bw.data(), nk * 2));
        TRY(dbuf_alloc(&dy16, mn * 2));
        TRY(dbuf_alloc(&dy8, mn * 2));
        TRY(dbuf_alloc(&qx, mk));
        TRY(dbuf_alloc(&sx, (size_t)s.m * (s.k / 128) * 4));
        TRY(dbuf_alloc(&qw, nk));
        TRY(dbuf_alloc(&sw, (size_t)((s.n + 127) / 128) * ds_blockscale_ld(s.k) * 4));
        ds_cuda_poison(dy16.p, dy16.bytes);
        ds_cuda_poison(dy8.p, dy8.bytes);

        ds_quant_args qa;
        memset(&qa, 0, sizeof qa);
        qa.x = dx.p; qa.x_type = DS_BF16; qa.rows = s.m; qa.cols = s.k; qa.ldx = s.k;
        qa.q = (uint8_t *)qx.p; qa.ldq = s.k; qa.scale = (float *)sx.p; qa.scale_ld = s.m; qa.scale_rows_contig = 1;
        ds_quant_args qb = qa;
        qb.x = dw.p; qb.rows = s.n; qb.q = (uint8_t *)qw.p; qb.scale = (float *)sw.p; qb.scale_ld = ds_blockscale_ld(s.k);
        qb.scale_rows_contig = 0;
        TRY(ds_cuda_quant_1x128(&qa));
        TRY(ds_cuda_quant_128x128(&qb));

        ds_gemm g16;
        memset(&g16, 0, sizeof g16);
        g16.m = s.m; g16.n = s.n; g16.k = s.k;
        g16.a = dx.p; g16.a_type = DS_BF16; g16.lda = s.k;
        g16.b = dw.p; g16.b_type = DS_BF16; g16.ldb = s.k; g16.b_trans = 1;
        g16.c = dy16.p; g16.c_type = DS_BF16; g16.ldc = s.n; g16.alpha = 1.f;
        ds_gemm g8 = g16;
        g8.a = qx.p; g8.a_type = DS_F8_E4M3; g8.b = qw.p; g8.b_type = DS_F8_E4M3; g8.c = dy8.p;
        g8.a_scale_mode = DS_SCALE_1X128; g8.b_scale_mode = DS_SCALE_128X128;
        g8.a_scale = (const float *)sx.p; g8.b_scale = (const float *)sw.p;
        TRY(ds_blaslt_autotune(lt, &g16, 8, 3));
        TRY(ds_blaslt_autotune(lt, &g8, 8, 3));
        double t16 = median_ms(lt, &g16, reps, NULL, NULL);
        double t8 = median_ms(lt, &g8, reps, NULL, NULL);
        double t8q = median_ms(lt, &g8, reps, run_quant, &qa);
        double flop = 2.0 * s.m * s.n * s.k;

        /* reference: fp32 product of the dequantized FP8 operands (exact fp32 arithmetic, no TF32) */
        TRY(dbuf_alloc(&fx, mk * 4));
        TRY(dbuf_alloc(&fw, nk * 4));
        TRY(dbuf_alloc(&yref, mn * 4));
        TRY(ds_cuda_dequant((const uint8_t *)qx.p, s.m, s.k, s.k, (const float *)sx.p, s.m, 1, 0, fx.p, DS_F32, s.k, NULL));
        TRY(ds_cuda_dequant((const uint8_t *)qw.p, s.n, s.k, s.k, (const float *)sw.p, ds_blockscale_ld(s.k), 0, 2, fw.p, DS_F32, s.k,
                            NULL));
        ds_gemm gr = g16;
        gr.a = fx.p; gr.a_type = DS_F32; gr.b = fw.p; gr.b_type = DS_F32; gr.c = yref.p; gr.c_type = DS_F32;
        TRY(ds_blaslt_gemm(lt, &gr));
        TRY(ds_cuda_sync());
        double e8 = rel_err_dev(dy8.p, DS_BF16, (const float *)yref.p, mn);
        /* the bf16 product as a second reference (includes the quantization error of FP8) */
        gr = g16;
        gr.c = yref.p; gr.c_type = DS_F32;
        TRY(ds_blaslt_gemm(lt, &gr));
        TRY(ds_cuda_sync());
        double e16 = rel_err_dev(dy8.p, DS_BF16, (const float *)yref.p, mn);
        double tq = t8q - t8;
        printf("%s\t%d\t%d\t%d\t%.4f\t%.1f\t%.4f\t%.1f\t%.3f\t%.4f\t%.1f\t%.2e\t%.2e\t%s\t%s\n", s.name, s.m, s.n, s.k,
               t16, flop / t16 / 1e9, t8, flop / t8 / 1e9, t16 / t8, tq, flop / t8q / 1e9, e8, e16,
               ds_blaslt_algo_desc(lt, &g16), ds_blaslt_algo_desc(lt, &g8));
        fflush(stdout);
        dbuf *all[] = {&dx, &dw, &dy16, &dy8, &qx, &sx, &qw, &sw, &fx, &fw, &yref};
        for (dbuf *b : all) dbuf_free(b);
    }
    ds_blaslt_free(lt);
    return 0;
}
