/* Unit tests for lib/train/adamw and lib/train/balance: AdamW against the update written out in
 * double precision, weight-decay groups, bf16 moments, gradient norm and clipping, thread-count
 * independence; the sign rule of the bias update and the balance statistics.
 * tests/ref/train.bats compares the optimizer with torch.optim.AdamW + clip_grad_norm_. */
#include "tap.h"

#include "core/dtype.h"
#include "core/err.h"
#include "core/rng.h"
#include "core/threads.h"
#include "train/adamw.h"
#include "train/balance.h"
#include "train/optim.h"

/* Two tensors: a matrix (decays) and a norm (does not). */
static void two_tensors(ds_param info[2], size_t nm, size_t nn) {
    memset(info, 0, 2 * sizeof *info);
    snprintf(info[0].name, sizeof info[0].name, "w");
    info[0].offset = 0, info[0].numel = nm, info[0].kind = DS_PARAM_MATRIX;
    snprintf(info[1].name, sizeof info[1].name, "norm");
    info[1].offset = nm, info[1].numel = nn, info[1].kind = DS_PARAM_NORM;
}

TEST(adamw_matches_the_written_out_update) {
    enum { NM = 300, NN = 20, N = NM + NN, STEPS = 5 };
    ds_param info[2];
    two_tensors(info, NM, NN);
    ds_adamw_opts o;
    ds_adamw_defaults(&o);
    CHECK(o.beta1 == 0.9 && o.beta2 == 0.95 && o.weight_decay == 0.1 && o.eps == 1e-8, "V3 defaults");
    ds_adamw a;
    CHECK(ds_adamw_init(&a, &o, N, info, 2) == 0, "init");
    float p[N], g[N];
    double rp[N], rm[N] = {0}, rv[N] = {0};
    ds_randn_fill(p, N, 1, 1, 1.0f);
    for (int i = 0; i < N; i++) rp[i] = p[i];
    double maxerr = 0;
    for (int t = 1; t <= STEPS; t++) {
        ds_randn_fill(g, N, 2, (uint64_t)t, 0.1f);
        double lr = 1e-2 * t, scale = 0.5;
        ds_adamw_step(&a, p, g, (float)scale, lr);
        for (int i = 0; i < N; i++) {
            double gi = (double)(float)(g[i] * (float)scale);
            if (i < NM) rp[i] *= 1 - lr * 0.1;
            rm[i] = 0.9 * rm[i] + 0.1 * gi;
            rv[i] = 0.95 * rv[i] + 0.05 * gi * gi;
            double mh = rm[i] / (1 - pow(0.9, t)), vh = rv[i] / (1 - pow(0.95, t));
            rp[i] -= lr * mh / (sqrt(vh) + 1e-8);
            maxerr = fmax(maxerr, fabs(rp[i] - p[i]) / fmax(1e-3, fabs(rp[i])));
        }
    }
    CHECK(maxerr < 1e-5, "fp32 update within 1e-5 (relative) of the double reference: %.3g", maxerr);
    CHECK(a.t == STEPS, "step count");
    CHECK_NEAR(ds_adamw_moment(&a, 0, 7), rm[7], 1e-6, "first moment");
    CHECK_NEAR(ds_adamw_moment(&a, 1, 7), rv[7], 1e-8, "second moment");
    ds_adamw_free(&a);
}

TEST(norm_gains_do_not_decay) {
    ds_param info[2];
    two_tensors(info, 4, 4);
    ds_adamw_opts o;
    ds_adamw_defaults(&o);
    o.weight_decay = 0.5;
    ds_adamw a;
    ds_adamw_init(&a, &o, 8, info, 2);
    float p[8] = {1, 1, 1, 1, 1, 1, 1, 1}, g[8] = {0};
    ds_adamw_step(&a, p, g, 1.0f, 0.1);
    CHECK(p[0] == 0.95f && p[4] == 1.0f, "zero gradient: matrix decays to %.6g, norm stays %.6g", p[0], p[4]);
    ds_adamw_free(&a);
    /* a table that does not tile the buffer is refused */
    info[1].numel = 3;
    CHECK(ds_adamw_init(&a, &o, 8, info, 2) != 0 && strstr(ds_errmsg(), "covers 7 of 8"), "%s", ds_errmsg());
}

TEST(bf16_moments_are_rounded_fp32_ones) {
    enum { N = 1000 };
    ds_param info[2];
    two_tensors(info, N - 10, 10);
    ds_adamw_opts o;
    ds_adamw_defaults(&o);
    ds_adamw a32, a16;
    ds_adamw_init(&a32, &o, N, info, 2);
    o.bf16_moments = 1;
    ds_adamw_init(&a16, &o, N, info, 2);
    float p32[N], p16[N], g[N];
    ds_randn_fill(p32, N, 3, 0, 1.0f);
    memcpy(p16, p32, sizeof p32);
    ds_randn_fill(g, N, 3, 1, 1.0f);
    ds_adamw_step(&a32, p32, g, 1.0f, 1e-3);
    ds_adamw_step(&a16, p16, g, 1.0f, 1e-3);
    int same = 1;
    for (int i = 0; i < N; i++) {
        same &= ds_adamw_moment(&a16, 0, i) == ds_bf16_to_f32(ds_f32_to_bf16(ds_adamw_moment(&a32, 0, i)));
        same &= ds_adamw_moment(&a16, 1, i) == ds_bf16_to_f32(ds_f32_to_bf16(ds_adamw_moment(&a32, 1, i)));
    }
    CHECK(same, "after one step the bf16 moments are the fp32 ones rounded to nearest even");
    CHECK(!memcmp(p32, p16, sizeof p32), "the first update itself is computed in fp32 either way");
    /* get/set round trip */
    float buf[N];
    ds_adamw_get(&a16, 1, 0, N, buf);
    ds_adamw_set(&a16, 1, 0, N, buf);
    int rt = 1;
    for (int i = 0; i < N; i++) rt &= ds_adamw_moment(&a16, 1, i) == buf[i];
    CHECK(rt, "moments survive get/set exactly");
    ds_adamw_free(&a32);
    ds_adamw_free(&a16);
}

TEST(grad_norm_and_clipping) {
    enum { N = 100003 };
    float *g = malloc(N * sizeof *g);
    ds_randn_fill(g, N, 9, 9, 1.0f);
    double ref = 0;
    for (int i = 0; i < N; i++) ref += (double)g[i] * g[i];
    ref = sqrt(ref);
    ds_threads_set(1);
    double n1 = ds_grad_norm(g, N);
    ds_threads_set(2);
    double n2 = ds_grad_norm(g, N);
    CHECK_REL(n1, ref, 1e-12, "norm");
    CHECK(n1 == n2, "bit-identical with 1 and 2 threads");
    CHECK(ds_clip_factor(0.5, 1.0) == 1.0f, "below the threshold: no clipping");
    CHECK_REL(ds_clip_factor(4.0, 1.0), 1.0 / (4.0 + 1e-6), 1e-7, "clip factor = max / (norm + 1e-6)");
    CHECK(ds_clip_factor(4.0, 0) == 1.0f, "clipping off");
    g[5] = NAN;
    CHECK(isnan(ds_grad_norm(g, N)), "a NaN gradient makes the norm NaN");
    free(g);
}

TEST(adamw_is_thread_count_independent) {
    enum { N = 200000 };
    ds_param info[2];
    two_tensors(info, N - 100, 100);
    ds_adamw_opts o;
    ds_adamw_defaults(&o);
    float *p1 = malloc(N * 4), *p2 = malloc(N * 4), *g = malloc(N * 4);
    ds_randn_fill(p1, N, 4, 0, 1.0f);
    memcpy(p2, p1, N * 4);
    ds_adamw a1, a2;
    ds_adamw_init(&a1, &o, N, info, 2);
    ds_adamw_init(&a2, &o, N, info, 2);
    for (int t = 0; t < 3; t++) {
        ds_randn_fill(g, N, 4, 1 + t, 1.0f);
        ds_threads_set(1);
        ds_adamw_step(&a1, p1, g, 1.0f, 1e-3);
        ds_threads_set(2);
        ds_adamw_step(&a2, p2, g, 1.0f, 1e-3);
    }
    CHECK(!memcmp(p1, p2, N * 4), "same parameters with 1 and 2 threads");
    ds_adamw_free(&a1);
    ds_adamw_free(&a2);
    free(p1), free(p2), free(g);
}

TEST(bias_update_is_the_sign_rule) {
    ds_balance b;
    CHECK(ds_balance_init(&b, 2, 4) == 0, "init");
    int32_t load1[8] = {10, 0, 5, 5, /* layer 1 */ 3, 3, 3, 3};
    int32_t load2[8] = {2, 0, 1, 1, 1, 1, 1, 1};
    ds_balance_add(&b, load1);
    ds_balance_add(&b, load2);
    /* layer 0 counts 12 0 6 6: mean 6 -> signs -1 +1 0 0; layer 1: 4 4 4 4 balanced */
    float b0[4] = {0}, b1[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    float *bias[2] = {b0, b1};
    ds_balance_update_bias(&b, bias, 0.001);
    CHECK(b0[0] == -0.001f && b0[1] == 0.001f && b0[2] == 0 && b0[3] == 0, "layer 0: %g %g %g %g", b0[0], b0[1], b0[2], b0[3]);
    CHECK(b1[0] == 0.5f && b1[3] == 0.5f, "balanced layer unchanged");
    ds_balance_stats st;
    ds_balance_layer_stats(&b, 0, &st);
    CHECK(st.min_load == 0 && st.max_load == 12 && st.max_vio == 1.0, "MaxVio = 12/6 - 1 = %g", st.max_vio);
    ds_balance_layer_stats(&b, 1, &st);
    CHECK(st.max_vio == 0 && st.min_load == 4 && st.max_load == 4, "balanced layer MaxVio 0");
    ds_balance_update_bias(&b, bias, 0);
    CHECK(b0[0] == -0.001f, "gamma 0 freezes the bias");
    ds_balance_reset(&b);
    ds_balance_layer_stats(&b, 0, &st);
    CHECK(st.max_vio == 0 && st.max_load == 0, "reset");
    ds_balance_free(&b);
}

/* For tests/ref/train.bats: when DS_TRAIN_REF_DIR is set, run 6 clipped AdamW steps on random data and
 * write everything torch needs to redo them: sizes, hyper-parameters, initial parameters, per step
 * the learning rate and raw gradients, then our final parameters and moments (all little-endian). */
TEST(adamw_trace_for_reference) {
    const char *dir = getenv("DS_TRAIN_REF_DIR");
    if (!dir || strlen(dir) > 400) {
        CHECK(1, "# SKIP DS_TRAIN_REF_DIR not set");
        return;
    }
    enum { NM = 5000, NN = 64, N = NM + NN, STEPS = 6 };
    for (int bf16 = 0; bf16 < 2; bf16++) {
        char path[512];
        snprintf(path, sizeof path, "%s/adamw%s.bin", dir, bf16 ? "_bf16" : "");
        FILE *f = fopen(path, "wb");
        ds_param info[2];
        two_tensors(info, NM, NN);
        ds_adamw_opts o;
        ds_adamw_defaults(&o);
        o.bf16_moments = bf16;
        ds_adamw a;
        ds_adamw_init(&a, &o, N, info, 2);
        static float p[N], g[N];
        ds_randn_fill(p, N, 11, 0, 0.02f);
        int32_t hdr[3] = {NM, NN, STEPS};
        double hp[5] = {o.beta1, o.beta2, o.eps, o.weight_decay, 1.0 /* clip */};
        fwrite(hdr, sizeof hdr, 1, f);
        fwrite(hp, sizeof hp, 1, f);
        fwrite(p, sizeof p, 1, f);
        for (int t = 0; t < STEPS; t++) {
            /* the gradient scale varies so some steps clip (norm > 1) and some do not */
            ds_randn_fill(g, N, 12, (uint64_t)t, t % 2 ? 0.05f : 0.002f);
            double lr = 3e-3 * (t + 1) / STEPS;
            fwrite(&lr, sizeof lr, 1, f);
            fwrite(g, sizeof g, 1, f);
            ds_adamw_step(&a, p, g, ds_clip_factor(ds_grad_norm(g, N), 1.0), lr);
        }
        fwrite(p, sizeof p, 1, f);
        static float mo[N];
        ds_adamw_get(&a, 0, 0, N, mo);
        fwrite(mo, sizeof mo, 1, f);
        ds_adamw_get(&a, 1, 0, N, mo);
        fwrite(mo, sizeof mo, 1, f);
        CHECK(fclose(f) == 0, "wrote adamw%s.bin", bf16 ? "_bf16" : "");
        ds_adamw_free(&a);
    }
}

TEST(optimizer_seam_on_the_host_is_adamw) {
    enum { NM = 200, NN = 10, N = NM + NN };
    ds_param info[2];
    two_tensors(info, NM, NN);
    ds_adamw_opts o;
    ds_adamw_defaults(&o);
    ds_adamw a;
    ds_optim *q = NULL;
    CHECK(ds_adamw_init(&a, &o, N, info, 2) == 0 && ds_optim_create(&q, NULL, &o, N, info, 2) == 0, "create");
    if (!q) return;
    CHECK(!strcmp(q->device, "cpu"), "host parameters keep host moments");
    float p1[N], p2[N], g[N];
    ds_randn_fill(p1, N, 3, 1, 1.0f);
    memcpy(p2, p1, sizeof p1);
    for (int t = 1; t <= 3; t++) {
        ds_randn_fill(g, N, 3, (uint64_t)(10 + t), 0.1f);
        double n1 = ds_grad_norm(g, N), n2 = -1;
        CHECK(ds_optim_grad_norm(q, g, &n2) == 0 && n1 == n2, "step %d: the same gradient norm", t);
        ds_adamw_step(&a, p1, g, 0.5f, 1e-2);
        CHECK(ds_optim_step(q, p2, g, 0.5f, 1e-2, 0) == 0, "step %d", t);
    }
    CHECK(!memcmp(p1, p2, sizeof p1) && q->t == 3, "three updates: the same parameter bits as ds_adamw, t = %lld", (long long)q->t);
    float m[N], v[N];
    CHECK(ds_optim_get(q, 0, 0, N, m) == 0 && ds_optim_get(q, 1, 0, N, v) == 0, "moments out");
    CHECK(m[5] == ds_adamw_moment(&a, 0, 5) && v[NM + 1] == ds_adamw_moment(&a, 1, NM + 1), "moments equal");
    CHECK(ds_optim_get(q, 0, NM, NN + 1, m) != 0 && strstr(ds_errmsg(), "moments [200, +11) of 210"),
          "a range past the end is refused: %s", ds_errmsg());
    m[0] = 0.25f;
    CHECK(ds_optim_set(q, 0, 0, 1, m) == 0 && ds_optim_get(q, 0, 0, 1, v) == 0 && v[0] == 0.25f, "moments in");
    ds_optim_free(q);
    ds_adamw_free(&a);
}

TAP_MAIN()
