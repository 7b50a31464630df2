/* GPU test: the AdamW step and gradient norm of kernels/adamw_cuda against a host implementation of the
 * rule in adamw_cuda.h (PyTorch's order, fp32, unfused): parameters and moments must match bit for bit over
 * several steps, with fp32 and bf16 moments, decayed and undecayed tensors, clipping scale; the norm to
 * double rounding. */
#include "gpu_test.h"

#include <vector>

extern "C" {
#include "adamw_cuda.h"
}

static float bf16_round(float x) { return ds_bf16_to_f32(ds_f32_to_bf16(x)); }

TEST(adamw_bit_exact) {
    const size_t n = 100003;
    const ds_cuda_adamw_seg segs[] = {{0, 40000, 1}, {40000, 3, 0}, {40003, 50000, 1}, {90003, 10000, 0}};
    for (int bf = 0; bf < 2; bf++) {
        ds_cuda_adamw_opts o = {0.9, 0.95, 1e-8, 0.1, bf};
        ds_cuda_adamw *a;
        int rc = ds_cuda_adamw_create(&a, &o, n, segs, 4);
        CHECK_OK(rc, "create");
        std::vector<float> p(n), g(n), m(n, 0.f), v(n, 0.f);
        ds_randn_fill(p.data(), n, gpu_test_seed, 1, 0.02f);
        dbuf dp, dg;
        dbuf_up(&dp, p.data(), n * 4);
        dbuf_alloc(&dg, n * 4);
        for (int t = 1; t <= 3; t++) {
            ds_randn_fill(g.data(), n, gpu_test_seed, 10 + t, 1e-3f);
            ds_cuda_h2d(dg.p, g.data(), n * 4);
            const float gs = 0.75f;
            const double lr = 3e-4 * t;
            rc = ds_cuda_adamw_step(a, (float *)dp.p, (const float *)dg.p, gs, lr, t);
            /* host rule */
            const double bc1 = 1 - pow(o.beta1, (double)t), bc2 = 1 - pow(o.beta2, (double)t);
            const float step = (float)(lr / bc1), bc2s = (float)sqrt(bc2), eps = (float)o.eps;
            const float b1 = (float)o.beta1, b2 = (float)o.beta2, ob1 = 1.0f - b1, ob2 = 1.0f - b2;
            const float dmul = (float)(1 - lr * o.weight_decay);
            for (const auto &sg : segs)
                for (size_t i = sg.offset; i < sg.offset + sg.numel; i++) {
                    volatile float gi = g[i] * gs;
                    volatile float mi = m[i] + ob1 * (gi - m[i]);
                    volatile float t1 = v[i] * b2, t2 = ob2 * gi;
                    volatile float vi = t1 + t2 * gi;
                    volatile float den = sqrtf(vi) / bc2s + eps;
                    volatile float pi = p[i] * (sg.decay ? dmul : 1.0f);
                    volatile float upd = (-step * mi) / den;
                    p[i] = pi + upd;
                    m[i] = bf ? bf16_round(mi) : mi;
                    v[i] = bf ? bf16_round(vi) : vi;
                }
        }
        std::vector<float> gp(n), gm(n), gv(n);
        rc |= ds_cuda_d2h(gp.data(), dp.p, n * 4);
        rc |= ds_cuda_adamw_get(a, 0, 0, n, gm.data());
        rc |= ds_cuda_adamw_get(a, 1, 0, n, gv.data());
        size_t bp = 0, bm = 0, bv = 0;
        for (size_t i = 0; i < n; i++) {
            bp += memcmp(&gp[i], &p[i], 4) != 0;
            bm += memcmp(&gm[i], &m[i], 4) != 0;
            bv += memcmp(&gv[i], &v[i], 4) != 0;
        }
        CHECK(rc == 0 && bp == 0 && bm == 0 && bv == 0,
              "%s moments, 3 steps: params/m/v bit-identical to the host rule (%zu/%zu/%zu differ) %s",
              bf ? "bf16" : "fp32", bp, bm, bv, rc ? ds_errmsg() : "");
        /* moments round trip through set/get */
        rc = ds_cuda_adamw_set(a, 0, 5, 10, p.data());
        rc |= ds_cuda_adamw_get(a, 0, 5, 10, gm.data());
        int same = 1;
        for (int i = 0; i < 10; i++) same &= gm[i] == (bf ? bf16_round(p[i]) : p[i]);
        CHECK(rc == 0 && same, "%s moments: set then get", bf ? "bf16" : "fp32");
        CHECK(ds_cuda_adamw_get(a, 1, n - 5, 10, gm.data()) == DS_EUSAGE, "out-of-range moment read refused: %s",
              ds_errmsg());
        dbuf_free(&dp);
        dbuf_free(&dg);
        ds_cuda_adamw_free(a);
    }
    ds_cuda_adamw *bad;
    ds_cuda_adamw_opts o = {0.9, 0.95, 1e-8, 0.1, 0};
    const ds_cuda_adamw_seg gap[] = {{0, 10, 1}, {11, 5, 1}};
    CHECK(ds_cuda_adamw_create(&bad, &o, 16, gap, 2) == DS_EUSAGE && strstr(ds_errmsg(), "cover 15 of 16"),
          "a table that misses an element is refused: %s", ds_errmsg());
}

TEST(grad_norm) {
    const size_t n = 3000017;
    std::vector<float> g(n);
    ds_randn_fill(g.data(), n, gpu_test_seed, 3, 0.1f);
    double ref = 0;
    for (size_t i = 0; i < n; i++) ref += (double)g[i] * g[i];
    ref = sqrt(ref);
    dbuf dg;
    dbuf_up(&dg, g.data(), n * 4);
    double got = 0, again = 0;
    int rc = ds_cuda_grad_norm((const float *)dg.p, n, &got);
    rc |= ds_cuda_grad_norm((const float *)dg.p, n, &again);
    CHECK(rc == 0 && fabs(got - ref) <= 1e-12 * ref, "norm %.17g vs %.17g", got, ref);
    CHECK(got == again, "same bits twice");
    g[n / 2] = NAN;
    ds_cuda_h2d(dg.p, g.data(), n * 4);
    rc = ds_cuda_grad_norm((const float *)dg.p, n, &got);
    CHECK(rc == 0 && isnan(got), "a NaN gradient gives a NaN norm");
    dbuf_free(&dg);
}

GPU_TAP_MAIN("test_adamw")
