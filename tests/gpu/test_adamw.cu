/* GPU test: the AdamW step and gradient norm of kernels/adamw_cuda against a host implementation of the
 * rule in adamw_cuda.h (PyTorch's order, fp32, unfused): parameters and moments must match bit for bit over
 * several steps, with fp32 and bf16 moments, decayed and undecayed tensors, clipping scale; the norm to
 * double rounding. The fused step (bf16 working copy written and gradients zeroed in the same pass) against
 * its CPU reference train/adamw.h ds_adamw_step_fused, bit for bit; and through the optimizer seam, the CUDA
 * backend's bf16 shadow written by the update (no conversion pass after it) when the update covers the whole
 * buffer, and rebuilt by the conversion pass when it covers part of it (ZeRO-1's shard). */
#include "gpu_test.h"

#include <vector>

extern "C" {
#include "adamw_cuda.h"
#include "ops_cuda.h"
#include "train/adamw.h"
#include "train/optim.h"
}
#include "ops_cuda_internal.cuh" /* ds_cuda_shadow_of: the copy a bf16 GEMM would read */

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

static size_t bits_differ(const void *a, const void *b, size_t n, size_t esz) {
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += memcmp((const char *)a + i * esz, (const char *)b + i * esz, esz) != 0;
    return d;
}

TEST(adamw_fused_matches_the_cpu_reference) {
    const size_t n = 100003;
    const ds_cuda_adamw_seg segs[] = {{0, 40000, 1}, {40000, 3, 0}, {40003, 50000, 1}, {90003, 10000, 0}};
    ds_param info[4];
    memset(info, 0, sizeof info);
    for (int k = 0; k < 4; k++) {
        snprintf(info[k].name, sizeof info[k].name, "t%d", k);
        info[k].offset = segs[k].offset, info[k].numel = segs[k].numel;
        info[k].kind = segs[k].decay ? DS_PARAM_MATRIX : DS_PARAM_NORM;
    }
    for (int bf = 0; bf < 2; bf++)
        for (int extras = 1; extras < 4; extras++) {
            const int out16 = extras & 1, zero = extras >> 1;
            ds_adamw_opts ho;
            ds_adamw_defaults(&ho);
            ho.bf16_moments = bf;
            ds_cuda_adamw_opts o = {ho.beta1, ho.beta2, ho.eps, ho.weight_decay, bf};
            ds_adamw h;
            ds_cuda_adamw *a;
            CHECK_OK(ds_adamw_init(&h, &ho, n, info, 4), "host init");
            int rc = ds_cuda_adamw_create(&a, &o, n, segs, 4);
            CHECK_OK(rc, "create");
            if (rc) return;
            std::vector<float> p(n), g(n), hg(n), gp(n), gg(n), hm(n), gm(n);
            std::vector<uint16_t> w16(n), gw16(n);
            ds_randn_fill(p.data(), n, gpu_test_seed, 1, 0.02f);
            dbuf dp, dg, dw;
            dbuf_up(&dp, p.data(), n * 4);
            dbuf_alloc(&dg, n * 4);
            dbuf_alloc(&dw, n * 2);
            size_t bp = 0, bm = 0, bw = 0, bg = 0;
            for (int t = 1; t <= 3; t++) {
                ds_randn_fill(g.data(), n, gpu_test_seed, 10 + t, 1e-3f);
                hg = g;
                ds_cuda_h2d(dg.p, g.data(), n * 4);
                ds_cuda_memset(dw.p, 0xff, n * 2, NULL);
                std::fill(w16.begin(), w16.end(), (uint16_t)0xffff);
                const float gs = 0.75f;
                const double lr = 3e-4 * t;
                rc |= ds_cuda_adamw_step_fused(a, (float *)dp.p, (float *)dg.p, gs, lr, t, out16 ? (uint16_t *)dw.p : NULL, zero);
                ds_adamw_step_fused(&h, p.data(), hg.data(), gs, lr, out16 ? w16.data() : NULL, zero);
                rc |= ds_cuda_d2h(gp.data(), dp.p, n * 4);
                rc |= ds_cuda_d2h(gg.data(), dg.p, n * 4);
                rc |= ds_cuda_d2h(gw16.data(), dw.p, n * 2);
                bp += bits_differ(gp.data(), p.data(), n, 4);
                bg += bits_differ(gg.data(), hg.data(), n, 4);
                bw += bits_differ(gw16.data(), w16.data(), n, 2);
                for (int which = 0; which < 2; which++) {
                    rc |= ds_cuda_adamw_get(a, which, 0, n, gm.data());
                    ds_adamw_get(&h, which, 0, n, hm.data());
                    bm += bits_differ(gm.data(), hm.data(), n, 4);
                }
            }
            CHECK(rc == 0 && bp == 0 && bm == 0 && bw == 0 && bg == 0,
                  "%s moments, bf16 copy %s, zeroing %s, 3 steps: params/moments/bf16 copy/gradients bit-identical to "
                  "ds_adamw_step_fused (%zu/%zu/%zu/%zu differ) %s",
                  bf ? "bf16" : "fp32", out16 ? "on" : "off", zero ? "on" : "off", bp, bm, bw, bg, rc ? ds_errmsg() : "");
            dbuf_free(&dp), dbuf_free(&dg), dbuf_free(&dw);
            ds_cuda_adamw_free(a);
            ds_adamw_free(&h);
        }
}

/* The seam: an optimizer over the whole announced buffer writes the backend's bf16 shadow; one over a part
 * of it (ZeRO-1's shard, last: its announcement adds a shadow slot for the part) leaves the shadow to its
 * conversion pass. A poisoned shadow tells which happened:
 * poison written after the update survives the next read only if no conversion pass runs. */
TEST(fused_optimizer_writes_the_bf16_shadow) {
    const ds_ops *ops = ds_ops_cuda();
    CHECK(ops != NULL, "CUDA backend: %s", ops ? "" : ds_errmsg());
    if (!ops) return;
    const size_t n = 300007, lo = 1000, part = 200000;
    ds_param info[2];
    memset(info, 0, sizeof info);
    snprintf(info[0].name, sizeof info[0].name, "w");
    info[0].numel = n - 7, info[0].kind = DS_PARAM_MATRIX;
    snprintf(info[1].name, sizeof info[1].name, "norm");
    info[1].offset = n - 7, info[1].numel = 7, info[1].kind = DS_PARAM_NORM;
    ds_param pinfo[1];
    memset(pinfo, 0, sizeof pinfo);
    snprintf(pinfo[0].name, sizeof pinfo[0].name, "w");
    pinfo[0].numel = part, pinfo[0].kind = DS_PARAM_MATRIX;
    ds_adamw_opts ao;
    ds_adamw_defaults(&ao);
    std::vector<float> p(n), g(n), back(n), gback(n);
    std::vector<uint16_t> sh(n);
    ds_randn_fill(p.data(), n, gpu_test_seed, 40, 0.02f);
    ds_randn_fill(g.data(), n, gpu_test_seed, 41, 1e-3f);
    float *dp = (float *)ops->alloc(n * 4), *dg = (float *)ops->alloc(n * 4);
    ops->copy(dp, p.data(), n * 4, DS_COPY_H2D);
    ops->params_changed(dp, n);
    const __nv_bfloat16 *s0 = ds_cuda_shadow_of(dp); /* what a bf16 GEMM's first read does: allocate, convert */
    CHECK(s0 != NULL && (const void *)ds_ops_cuda_shadow_target(dp, n) == (const void *)s0 &&
              !ds_ops_cuda_shadow_target(dp + lo, part) && !ds_ops_cuda_shadow_target(dp, n - 1),
          "the shadow is the target of the whole buffer only");
    for (int whole = 1; whole >= 0; whole--)
        for (int fused = 1; fused >= 0; fused--) {
            ds_optim *q = NULL;
            if (!fused) setenv("DS_FUSED_OPTIM", "0", 1);
            int rc = whole ? ds_optim_create(&q, ops, &ao, n, info, 2) : ds_optim_create(&q, ops, &ao, part, pinfo, 1);
            unsetenv("DS_FUSED_OPTIM");
            CHECK_OK(rc, "optimizer");
            if (rc) return;
            ops->copy(dg, g.data(), n * 4, DS_COPY_H2D);
            float *at = whole ? dp : dp + lo;
            const size_t cnt = whole ? n : part;
            rc = ds_optim_step(q, at, dg, 1.0f, 1e-3, 1);
            /* ZeRO-1 all-gathers the other slices, then announces the whole buffer (train/zero.c) */
            if (!whole) ops->params_changed(dp, n);
            const uint16_t *target = (const uint16_t *)s0;
            ops->sync();
            /* the shadow right after the update (no read in between) */
            rc |= ds_cuda_d2h(sh.data(), target, n * 2);
            rc |= ds_cuda_d2h(back.data(), dp, n * 4);
            rc |= ds_cuda_d2h(gback.data(), dg, n * 4);
            size_t fresh = 0, zeroed = 0;
            for (size_t i = 0; i < n; i++) fresh += sh[i] == ds_f32_to_bf16(back[i]);
            for (size_t i = 0; i < cnt; i++) zeroed += gback[i] == 0.0f;
            /* poison, then read as a GEMM would: a stale shadow is rebuilt (poison gone), a fresh one is not */
            ds_cuda_memset((void *)target, 0x7f, n * 2, NULL);
            const __nv_bfloat16 *s1 = ds_cuda_shadow_of(at);
            rc |= ds_cuda_d2h(sh.data(), target, n * 2);
            size_t poisoned = 0;
            for (size_t i = 0; i < n; i++) poisoned += sh[i] == 0x7f7f;
            rc |= ops->status();
            const int writes = fused && whole;
            CHECK(rc == 0 && s1 != NULL && fresh == (writes ? n : fresh) && zeroed == (fused ? cnt : 0) &&
                      poisoned == (writes ? n : 0),
                  "%s update, %s: bf16 shadow %s (%zu of %zu current after the update), %zu of %zu gradients zeroed, "
                  "conversion pass %s (%zu poisoned values kept) %s",
                  whole ? "whole-buffer" : "partial", fused ? "fused" : "DS_FUSED_OPTIM=0",
                  writes ? "written in the pass" : "left to the conversion pass", fresh, n, zeroed, cnt,
                  writes ? "skipped" : "ran", poisoned, rc ? ds_errmsg() : "");
            /* leave the shadow current for the next case */
            ops->params_changed(dp, n);
            ds_cuda_shadow_of(dp);
            ds_optim_free(q);
        }
    ops->free(dp);
    ops->free(dg);
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
