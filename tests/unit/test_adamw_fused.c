/* Unit tests for train/adamw.h ds_adamw_step_fused, the CPU reference of the one-pass optimizer step on the
 * GPU (kernels/adamw_cuda.h ds_cuda_adamw_step_fused): bit for bit the composition it replaces, that is
 * AdamW's rule written out element by element (PyTorch's order, fp32, no contraction), then ds_bf16_grid over
 * the new parameters, then the gradients zeroed. fp32 and bf16 moments, decayed and undecayed tensors, a
 * tensor longer than the update's chunk (several threads), a clipping scale != 1, several steps; every
 * combination of the two extras; and the optimizer seam (train/optim.h) zeroing the gradients it read. */
#include "tap.h"

#include "core/dtype.h"
#include "core/rng.h"
#include "core/threads.h"
#include "train/adamw.h"
#include "train/optim.h"

#include <stdlib.h>

/* today's rule, one element at a time; volatile keeps every intermediate a rounded float */
static void written_out_step(const ds_adamw_opts *o, const ds_param *info, int n_info, int64_t t, float *p,
                             const float *g, float *m, float *v, float gs, double lr) {
    const double bc1 = 1 - pow(o->beta1, (double)t), bc2 = 1 - pow(o->beta2, (double)t);
    const float step = (float)(lr / bc1), bc2s = (float)sqrt(bc2), eps = (float)o->eps;
    const float b1 = (float)o->beta1, b2 = (float)o->beta2, ob1 = 1.0f - b1, ob2 = 1.0f - b2;
    const float dmul = (float)(1 - lr * o->weight_decay);
    for (int k = 0; k < n_info; k++) {
        const int decays = ds_adamw_kind_decays(o, info[k].kind);
        for (size_t i = info[k].offset; i < info[k].offset + info[k].numel; i++) {
            volatile float gi = g[i] * gs;
            volatile float mi = m[i] + ob1 * (gi - m[i]);
            volatile float t1 = v[i] * b2, t2 = ob2 * gi;
            volatile float vi = t1 + t2 * gi;
            volatile float den = sqrtf(vi) / bc2s + eps;
            volatile float pi = p[i] * (decays ? dmul : 1.0f);
            volatile float upd = (-step * mi) / den;
            p[i] = pi + upd;
            m[i] = o->bf16_moments ? ds_bf16_grid(mi) : mi;
            v[i] = o->bf16_moments ? ds_bf16_grid(vi) : vi;
        }
    }
}

static size_t differing(const void *a, const void *b, size_t n, size_t esz) {
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += memcmp((const char *)a + i * esz, (const char *)b + i * esz, esz) != 0;
    return d;
}

/* A matrix longer than the update's chunk (1 << 15), a norm gain, a small matrix, the embedding. */
enum { NT = 4 };
static const size_t numel[NT] = {70001, 37, 1000, 3000};
static const ds_param_kind kinds[NT] = {DS_PARAM_MATRIX, DS_PARAM_NORM, DS_PARAM_MATRIX, DS_PARAM_EMBED};

static size_t table(ds_param *info) {
    size_t off = 0;
    memset(info, 0, NT * sizeof *info);
    for (int k = 0; k < NT; k++) {
        snprintf(info[k].name, sizeof info[k].name, "t%d", k);
        info[k].offset = off, info[k].numel = numel[k], info[k].kind = kinds[k];
        off += numel[k];
    }
    return off;
}

TEST(fused_step_is_the_composition_bit_for_bit) {
    ds_param info[NT];
    const size_t n = table(info);
    ds_threads_set(2);
    for (int bf = 0; bf < 2; bf++)
        for (int extras = 0; extras < 4; extras++) {
            const int out16 = extras & 1, zero = extras >> 1;
            ds_adamw_opts o;
            ds_adamw_defaults(&o);
            o.bf16_moments = bf;
            o.decay_embed = 0; /* the embedding in the undecayed group: two tensors of each */
            ds_adamw a, plain;
            if (ds_adamw_init(&a, &o, n, info, NT) || ds_adamw_init(&plain, &o, n, info, NT)) {
                CHECK(0, "init");
                return;
            }
            float *p = malloc(n * 4), *pp = malloc(n * 4), *rp = malloc(n * 4), *g = malloc(n * 4), *rg = malloc(n * 4);
            float *rm = calloc(n, 4), *rv = calloc(n, 4), *m = malloc(n * 4), *v = malloc(n * 4), *w = malloc(n * 4);
            uint16_t *w16 = malloc(n * 2);
            ds_randn_fill(p, n, 5, 1, 0.02f);
            memcpy(pp, p, n * 4), memcpy(rp, p, n * 4);
            size_t bad_p = 0, bad_m = 0, bad_w = 0, bad_g = 0, bad_plain = 0;
            for (int t = 1; t <= 3; t++) {
                ds_randn_fill(rg, n, 5, (uint64_t)(10 + t), 1e-3f);
                rg[7] = 0.0f, rg[n - 1] = -0.0f; /* a zero gradient: the update is the decay alone */
                memcpy(g, rg, n * 4);
                memset(w16, 0xff, n * 2);
                const float gs = 0.75f;
                const double lr = 3e-4 * t;
                ds_adamw_step_fused(&a, p, g, gs, lr, out16 ? w16 : NULL, zero);
                ds_adamw_step(&plain, pp, rg, gs, lr);
                written_out_step(&o, info, NT, t, rp, rg, rm, rv, gs, lr);
                ds_adamw_get(&a, 0, 0, n, m);
                ds_adamw_get(&a, 1, 0, n, v);
                bad_p += differing(p, rp, n, 4);
                bad_plain += differing(p, pp, n, 4);
                bad_m += differing(m, rm, n, 4) + differing(v, rv, n, 4);
                for (size_t i = 0; i < n; i++) w[i] = ds_bf16_grid(rp[i]);
                if (out16)
                    for (size_t i = 0; i < n; i++) bad_w += ds_bf16_to_f32(w16[i]) != w[i] || ((w16[i] ^ ds_f32_to_bf16(rp[i])) != 0);
                else
                    for (size_t i = 0; i < n; i++) bad_w += w16[i] != 0xffff; /* NULL: nothing written */
                for (size_t i = 0; i < n; i++) bad_g += zero ? memcmp(&g[i], &(float){0.0f}, 4) != 0 : memcmp(&g[i], &rg[i], 4) != 0;
            }
            CHECK(bad_p == 0 && bad_m == 0 && bad_plain == 0 && bad_w == 0 && bad_g == 0 && a.t == 3,
                  "%s moments, bf16 output %s, zeroing %s, 3 steps: params %zu / moments %zu / ds_adamw_step %zu / bf16 copy "
                  "%zu / gradients %zu elements differ from the composition",
                  bf ? "bf16" : "fp32", out16 ? "on" : "off", zero ? "on" : "off", bad_p, bad_m, bad_plain, bad_w, bad_g);
            free(p), free(pp), free(rp), free(g), free(rg), free(rm), free(rv), free(m), free(v), free(w), free(w16);
            ds_adamw_free(&a);
            ds_adamw_free(&plain);
        }
    ds_threads_set(0);
}

TEST(optimizer_seam_zeroes_the_gradients_it_read) {
    ds_param info[NT];
    const size_t n = table(info);
    ds_adamw_opts o;
    ds_adamw_defaults(&o);
    ds_optim *q = NULL;
    ds_adamw a;
    CHECK(ds_optim_create(&q, NULL, &o, n, info, NT) == 0 && ds_adamw_init(&a, &o, n, info, NT) == 0, "create");
    if (!q) return;
    CHECK(q->fused == 1, "fused by default (DS_FUSED_OPTIM unset)");
    float *p = malloc(n * 4), *pp = malloc(n * 4), *g = malloc(n * 4), *rg = malloc(n * 4);
    ds_randn_fill(p, n, 6, 1, 0.02f);
    memcpy(pp, p, n * 4);
    size_t left = 0, kept = 0;
    for (int t = 1; t <= 2; t++) {
        ds_randn_fill(rg, n, 6, (uint64_t)(20 + t), 1e-3f);
        memcpy(g, rg, n * 4);
        /* without the caller's leave, the gradients stay */
        CHECK(ds_optim_step(q, p, g, 0.5f, 1e-3, 0) == 0, "step %d, gradients kept", t);
        kept += differing(g, rg, n, 4);
        ds_adamw_step(&a, pp, rg, 0.5f, 1e-3);
    }
    ds_randn_fill(rg, n, 6, 30, 1e-3f);
    memcpy(g, rg, n * 4);
    CHECK(ds_optim_step(q, p, g, 0.5f, 1e-3, 1) == 0, "step 3, gradients zeroed in the pass");
    ds_adamw_step(&a, pp, rg, 0.5f, 1e-3);
    for (size_t i = 0; i < n; i++) left += g[i] != 0.0f;
    CHECK(kept == 0 && left == 0 && differing(p, pp, n, 4) == 0,
          "the seam: gradients kept when asked (%zu changed), zeroed when allowed (%zu left), parameters those of "
          "ds_adamw_step", kept, left);
    q->fused = 0; /* DS_FUSED_OPTIM=0: the separate passes */
    memcpy(g, rg, n * 4);
    CHECK(ds_optim_step(q, p, g, 0.5f, 1e-3, 1) == 0 && differing(g, rg, n, 4) == 0,
          "unfused: the gradients are left for the caller's zeroing pass");
    free(p), free(pp), free(g), free(rg);
    ds_optim_free(q);
    ds_adamw_free(&a);
}

TAP_MAIN()
