/* GPU test: FP8 block quantization kernels, bit-exact against two host references of the same
 * semantics (fp8_quant.h): CUDA's own host-side __nv_cvt_float_to_fp8 (satfinite) and a brute-force
 * nearest-E4M3 encoder written here (ties to even), on fresh random inputs whose tiles span many
 * magnitudes (down to gradient-sized 2^-36, plus an all-zero tile, where the 2^-126 scale bound applies). All three tilings, both scale layouts,
 * power-of-two scales, ragged edges, and the transposed outputs. */
#include "gpu_test.h"

#include <cuda_fp8.h>

#include <vector>

extern "C" {
#include "fp8/quant.h"
#include "fp8_quant.h"
}

/* Value of each E4M3 code (NaN for 0x7F/0xFF). */
static float e4m3_value(int code) {
    int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + m / 8.0f, e - 7);
    return s ? -v : v;
}

/* Nearest finite E4M3 code, ties to the even code, saturating to +-448; NaN -> 0x7F. */
static uint8_t e4m3_brute(float x) {
    if (isnan(x)) return 0x7F;
    float ax = fabsf(x);
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c < 0x7F; c++) {
        double d = fabs((double)e4m3_value(c) - ax);
        if (d < bd || (d == bd && (c & 1) == 0)) { bd = d; best = c; }
    }
    if (ax > 448.0f) best = 0x7E;
    return (uint8_t)(best | (signbit(x) ? 0x80 : 0));
}

static float host_scale(float amax, int pow2) {
    float s = fmaxf(amax / 448.0f, 0x1p-126f); /* the tile's own amax (lib/fp8/quant.h) */
    if (pow2) {
        uint32_t b;
        memcpy(&b, &s, 4);
        if (b & 0x7fffffu) b = (b & 0x7f800000u) + 0x800000u;
        memcpy(&s, &b, 4);
    }
    return s;
}

static uint8_t host_q(float x, float s) { return (uint8_t)__nv_cvt_float_to_fp8(x / s, __NV_SATFINITE, __NV_E4M3); }

/* Random matrix whose 32x32 patches have magnitudes 2^-36 (gradient-sized, ~1.5e-11) .. 2^10, one patch all zero. */
static void make_input(std::vector<float> &x, int rows, int cols, ds_rng *r) {
    x.resize((size_t)rows * cols);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            int patch = (i / 32) * 7 + (j / 32);
            float mag = ldexpf(1.0f, (patch * 5) % 47 - 36);
            x[(size_t)i * cols + j] = patch == 3 ? 0.f : (float)ds_rng_normal(r) * mag;
        }
}

struct Layout {
    const char *name;
    ds_dtype xt;
    int rows, cols, rows_contig, pow2;
};

static void upload_x(dbuf *d, std::vector<float> &x, ds_dtype t) {
    if (t == DS_F32) {
        dbuf_up(d, x.data(), x.size() * 4);
    } else {
        std::vector<uint16_t> h(x.size());
        round_bf16(x.data(), h.data(), x.data(), x.size()); /* host reference sees the bf16 values */
        dbuf_up(d, h.data(), h.size() * 2);
    }
}

TEST(quant_1x128) {
    const Layout ls[] = {{"f32 rows-contig", DS_F32, 96, 512, 1, 0},
                         {"bf16 row-major", DS_BF16, 33, 384, 0, 0},
                         {"f32 pow2", DS_F32, 64, 256, 1, 1}};
    for (const Layout &L : ls) {
        ds_rng r;
        ds_rng_init(&r, gpu_test_seed, ds_stream_id(L.name));
        std::vector<float> x;
        make_input(x, L.rows, L.cols, &r);
        dbuf dx, dq, ds;
        upload_x(&dx, x, L.xt);
        int nb = L.cols / 128, sld = L.rows_contig ? L.rows : nb;
        dbuf_alloc(&dq, (size_t)L.rows * L.cols);
        dbuf_alloc(&ds, (size_t)L.rows * nb * 4);
        ds_cuda_poison(dq.p, dq.bytes);
        ds_cuda_poison(ds.p, ds.bytes);
        ds_quant_args a;
        memset(&a, 0, sizeof a);
        a.x = dx.p; a.x_type = L.xt; a.rows = L.rows; a.cols = L.cols; a.ldx = L.cols;
        a.q = (uint8_t *)dq.p; a.ldq = L.cols; a.scale = (float *)ds.p; a.scale_ld = sld;
        a.scale_rows_contig = L.rows_contig; a.pow2 = L.pow2;
        int rc = ds_cuda_quant_1x128(&a);
        rc |= ds_cuda_sync();
        std::vector<uint8_t> q(dq.bytes);
        std::vector<float> s((size_t)L.rows * nb);
        rc |= ds_cuda_d2h(q.data(), dq.p, q.size());
        rc |= ds_cuda_d2h(s.data(), ds.p, s.size() * 4);
        CHECK_OK(rc, L.name);
        size_t bad_s = 0, bad_q = 0, bad_brute = 0;
        for (int i = 0; i < L.rows; i++)
            for (int cb = 0; cb < nb; cb++) {
                float amax = 0;
                for (int j = 0; j < 128; j++) amax = fmaxf(amax, fabsf(x[(size_t)i * L.cols + cb * 128 + j]));
                float hs = host_scale(amax, L.pow2);
                float gs = s[L.rows_contig ? (size_t)cb * sld + i : (size_t)i * sld + cb];
                if (memcmp(&hs, &gs, 4)) bad_s++;
                for (int j = 0; j < 128; j++) {
                    size_t k = (size_t)i * L.cols + cb * 128 + j;
                    uint8_t h = host_q(x[k], hs);
                    if (q[k] != h) bad_q++;
                    if (e4m3_brute(x[k] / hs) != h) bad_brute++;
                }
            }
        CHECK(bad_s == 0, "1x128 %s: scales bit-exact (%zu differ)", L.name, bad_s);
        CHECK(bad_q == 0, "1x128 %s: codes bit-exact vs __nv_cvt_float_to_fp8 (%zu differ)", L.name, bad_q);
        CHECK(bad_brute == 0, "1x128 %s: host references agree (%zu differ from the brute-force encoder)", L.name,
              bad_brute);

        /* dequantization: y = q * s exactly in f32 */
        dbuf dy;
        dbuf_alloc(&dy, (size_t)L.rows * L.cols * 4);
        ds_cuda_poison(dy.p, dy.bytes);
        rc = ds_cuda_dequant((const uint8_t *)dq.p, L.rows, L.cols, L.cols, (const float *)ds.p, sld, L.rows_contig,
                             0, dy.p, DS_F32, L.cols, NULL);
        rc |= ds_cuda_sync();
        std::vector<float> y((size_t)L.rows * L.cols);
        rc |= ds_cuda_d2h(y.data(), dy.p, y.size() * 4);
        size_t bad_y = 0;
        for (int i = 0; i < L.rows; i++)
            for (int j = 0; j < L.cols; j++) {
                float sc = s[L.rows_contig ? (size_t)(j / 128) * sld + i : (size_t)i * sld + j / 128];
                float want = e4m3_value(q[(size_t)i * L.cols + j]) * sc;
                if (memcmp(&want, &y[(size_t)i * L.cols + j], 4)) bad_y++;
            }
        CHECK(rc == 0 && bad_y == 0, "1x128 %s: dequant exact (%zu differ)", L.name, bad_y);
        dbuf_free(&dx); dbuf_free(&dq); dbuf_free(&ds); dbuf_free(&dy);
    }
}

TEST(quant_128x1_transposed) {
    const Layout ls[] = {{"f32 300x100 rows-contig", DS_F32, 300, 100, 1, 0},
                         {"bf16 256x64 row-major pow2", DS_BF16, 256, 64, 0, 1}};
    for (const Layout &L : ls) {
        ds_rng r;
        ds_rng_init(&r, gpu_test_seed, ds_stream_id(L.name));
        std::vector<float> x;
        make_input(x, L.rows, L.cols, &r);
        dbuf dx, dq, ds;
        upload_x(&dx, x, L.xt);
        int rb = (L.rows + 127) / 128, sld = L.rows_contig ? L.cols : rb;
        dbuf_alloc(&dq, (size_t)L.cols * L.rows);
        dbuf_alloc(&ds, (size_t)L.cols * rb * 4);
        ds_cuda_poison(dq.p, dq.bytes);
        ds_cuda_poison(ds.p, ds.bytes);
        ds_quant_args a;
        memset(&a, 0, sizeof a);
        a.x = dx.p; a.x_type = L.xt; a.rows = L.rows; a.cols = L.cols; a.ldx = L.cols;
        a.q = (uint8_t *)dq.p; a.ldq = L.rows; a.scale = (float *)ds.p; a.scale_ld = sld;
        a.scale_rows_contig = L.rows_contig; a.pow2 = L.pow2;
        int rc = ds_cuda_quant_128x1_t(&a);
        rc |= ds_cuda_sync();
        std::vector<uint8_t> q(dq.bytes);
        std::vector<float> s((size_t)L.cols * rb);
        rc |= ds_cuda_d2h(q.data(), dq.p, q.size());
        rc |= ds_cuda_d2h(s.data(), ds.p, s.size() * 4);
        CHECK_OK(rc, L.name);
        size_t bad_s = 0, bad_q = 0;
        for (int c = 0; c < L.cols; c++)
            for (int b = 0; b < rb; b++) {
                float amax = 0;
                for (int i = b * 128; i < L.rows && i < b * 128 + 128; i++) amax = fmaxf(amax, fabsf(x[(size_t)i * L.cols + c]));
                float hs = host_scale(amax, L.pow2);
                float gs = s[L.rows_contig ? (size_t)b * sld + c : (size_t)c * sld + b];
                if (memcmp(&hs, &gs, 4)) bad_s++;
                for (int i = b * 128; i < L.rows && i < b * 128 + 128; i++)
                    if (q[(size_t)c * L.rows + i] != host_q(x[(size_t)i * L.cols + c], hs)) bad_q++;
            }
        CHECK(bad_s == 0, "128x1 %s: scales bit-exact (%zu differ)", L.name, bad_s);
        CHECK(bad_q == 0, "128x1 %s: transposed codes bit-exact (%zu differ)", L.name, bad_q);
        dbuf_free(&dx); dbuf_free(&dq); dbuf_free(&ds);
    }
}

TEST(quant_128x128_with_transpose) {
    const Layout ls[] = {{"f32 300x200", DS_F32, 300, 200, 0, 0}, {"bf16 256x384 pow2", DS_BF16, 256, 384, 0, 1}};
    for (const Layout &L : ls) {
        ds_rng r;
        ds_rng_init(&r, gpu_test_seed, ds_stream_id(L.name));
        std::vector<float> x;
        make_input(x, L.rows, L.cols, &r);
        dbuf dx, dq, ds, dqt, dst;
        upload_x(&dx, x, L.xt);
        int rb = (L.rows + 127) / 128, cb = (L.cols + 127) / 128;
        dbuf_alloc(&dq, (size_t)L.rows * L.cols);
        dbuf_alloc(&dqt, (size_t)L.rows * L.cols);
        dbuf_alloc(&ds, (size_t)rb * cb * 4);
        dbuf_alloc(&dst, (size_t)rb * cb * 4);
        ds_cuda_poison(dq.p, dq.bytes); ds_cuda_poison(dqt.p, dqt.bytes);
        ds_cuda_poison(ds.p, ds.bytes); ds_cuda_poison(dst.p, dst.bytes);
        ds_quant_args a;
        memset(&a, 0, sizeof a);
        a.x = dx.p; a.x_type = L.xt; a.rows = L.rows; a.cols = L.cols; a.ldx = L.cols;
        a.q = (uint8_t *)dq.p; a.ldq = L.cols; a.scale = (float *)ds.p; a.scale_ld = cb; a.pow2 = L.pow2;
        a.q_t = (uint8_t *)dqt.p; a.ldq_t = L.rows; a.scale_t = (float *)dst.p; a.scale_t_ld = rb;
        int rc = ds_cuda_quant_128x128(&a);
        rc |= ds_cuda_sync();
        std::vector<uint8_t> q(dq.bytes), qt(dqt.bytes);
        std::vector<float> s((size_t)rb * cb), st((size_t)rb * cb);
        rc |= ds_cuda_d2h(q.data(), dq.p, q.size());
        rc |= ds_cuda_d2h(qt.data(), dqt.p, qt.size());
        rc |= ds_cuda_d2h(s.data(), ds.p, s.size() * 4);
        rc |= ds_cuda_d2h(st.data(), dst.p, st.size() * 4);
        CHECK_OK(rc, L.name);
        size_t bad_s = 0, bad_q = 0, bad_t = 0;
        for (int i0 = 0; i0 < rb; i0++)
            for (int j0 = 0; j0 < cb; j0++) {
                float amax = 0;
                for (int i = i0 * 128; i < L.rows && i < i0 * 128 + 128; i++)
                    for (int j = j0 * 128; j < L.cols && j < j0 * 128 + 128; j++)
                        amax = fmaxf(amax, fabsf(x[(size_t)i * L.cols + j]));
                float hs = host_scale(amax, L.pow2);
                if (memcmp(&hs, &s[(size_t)i0 * cb + j0], 4) || memcmp(&hs, &st[(size_t)j0 * rb + i0], 4)) bad_s++;
                for (int i = i0 * 128; i < L.rows && i < i0 * 128 + 128; i++)
                    for (int j = j0 * 128; j < L.cols && j < j0 * 128 + 128; j++) {
                        uint8_t h = host_q(x[(size_t)i * L.cols + j], hs);
                        if (q[(size_t)i * L.cols + j] != h) bad_q++;
                        if (qt[(size_t)j * L.rows + i] != h) bad_t++;
                    }
            }
        CHECK(bad_s == 0, "128x128 %s: scales (and transposed scales) bit-exact (%zu differ)", L.name, bad_s);
        CHECK(bad_q == 0, "128x128 %s: codes bit-exact (%zu differ)", L.name, bad_q);
        CHECK(bad_t == 0, "128x128 %s: transposed codes bit-exact (%zu differ)", L.name, bad_t);
        dbuf_free(&dx); dbuf_free(&dq); dbuf_free(&ds); dbuf_free(&dqt); dbuf_free(&dst);
    }
}

/* The same quantization through lib/fp8 (the fp8 stream's CPU reference) must give the same bytes. */
TEST(agrees_with_lib_fp8) {
    const int rows = 300, cols = 384;
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, 77);
    std::vector<float> x;
    make_input(x, rows, cols, &r);
    dbuf dx;
    dbuf_up(&dx, x.data(), x.size() * 4);
    for (int pow2 = 0; pow2 < 2; pow2++) {
        ds_fp8_scale_fmt fmt = pow2 ? DS_FP8_SCALE_UE8M0 : DS_FP8_SCALE_F32;
        /* 1x128, row-major scales [rows, cols/128] */
        std::vector<uint8_t> qc(x.size()), qg(x.size());
        std::vector<float> sc((size_t)rows * 3), sg(sc.size());
        int rc = ds_fp8_quantize(qc.data(), sc.data(), x.data(), rows, cols, 1, 128, fmt);
        dbuf dq, ds;
        dbuf_alloc(&dq, x.size());
        dbuf_alloc(&ds, (size_t)rows * 3 * 4);
        ds_quant_args a;
        memset(&a, 0, sizeof a);
        a.x = dx.p; a.x_type = DS_F32; a.rows = rows; a.cols = cols; a.ldx = cols;
        a.q = (uint8_t *)dq.p; a.ldq = cols; a.scale = (float *)ds.p; a.scale_ld = 3; a.pow2 = pow2;
        rc |= ds_cuda_quant_1x128(&a);
        rc |= ds_cuda_sync();
        rc |= ds_cuda_d2h(qg.data(), dq.p, qg.size());
        rc |= ds_cuda_d2h(sg.data(), ds.p, sg.size() * 4);
        CHECK(rc == 0 && qc == qg && !memcmp(sc.data(), sg.data(), sc.size() * 4),
              "1x128%s: identical codes and scales to ds_fp8_quantize", pow2 ? " ue8m0" : "");
        /* 128x128 */
        std::vector<float> sbc(3 * 3), sbg(9);
        rc = ds_fp8_quantize(qc.data(), sbc.data(), x.data(), rows, cols, 128, 128, fmt);
        a.scale_ld = 3;
        rc |= ds_cuda_quant_128x128(&a);
        rc |= ds_cuda_sync();
        rc |= ds_cuda_d2h(qg.data(), dq.p, qg.size());
        rc |= ds_cuda_d2h(sbg.data(), ds.p, 9 * 4);
        CHECK(rc == 0 && qc == qg && !memcmp(sbc.data(), sbg.data(), 9 * 4),
              "128x128%s: identical codes and scales to ds_fp8_quantize", pow2 ? " ue8m0" : "");
        /* 128x1 transposed: scale_t [cols, ceil(rows/128)] */
        std::vector<float> stc((size_t)cols * 3), stg(stc.size());
        rc = ds_fp8_quantize_transposed(qc.data(), stc.data(), x.data(), rows, cols, fmt);
        a.ldq = rows; a.scale_ld = 3; a.scale_rows_contig = 0;
        dbuf_free(&ds);
        dbuf_alloc(&ds, stc.size() * 4);
        a.scale = (float *)ds.p;
        rc |= ds_cuda_quant_128x1_t(&a);
        rc |= ds_cuda_sync();
        rc |= ds_cuda_d2h(qg.data(), dq.p, qg.size());
        rc |= ds_cuda_d2h(stg.data(), ds.p, stg.size() * 4);
        CHECK(rc == 0 && qc == qg && !memcmp(stc.data(), stg.data(), stc.size() * 4),
              "128x1 transposed%s: identical codes and scales to ds_fp8_quantize_transposed", pow2 ? " ue8m0" : "");
        dbuf_free(&dq); dbuf_free(&ds);
    }
    dbuf_free(&dx);
}

TEST(brute_force_encoder_sanity) {
    /* the brute-force encoder itself: every code round-trips, midpoints go to the even code */
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        float v = e4m3_value(c);
        if (isnan(v) || c == 0x80) continue;
        if (e4m3_brute(v) != c) bad++;
    }
    CHECK(bad == 0, "every finite code round-trips (%d fail)", bad);
    CHECK(e4m3_brute(1.0625f) == 0x38 && e4m3_brute(1.1875f) == 0x3A && e4m3_brute(500.f) == 0x7E &&
              e4m3_brute(-500.f) == 0xFE,
          "ties to even and saturation");
    CHECK(host_q(1.0625f, 1.0f) == 0x38 && host_q(1e9f, 1.0f) == 0x7E, "__nv_cvt_float_to_fp8 agrees on ties and saturates");
}

GPU_TAP_MAIN("test_fp8_quant")
