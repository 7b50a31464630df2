#include "train/adamw.h"

#include "core/dtype.h"
#include "core/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ds_adamw_defaults(ds_adamw_opts *o) {
    *o = (ds_adamw_opts){.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .bf16_moments = 0, .decay_embed = 1};
}

int ds_adamw_kind_decays(const ds_adamw_opts *o, ds_param_kind k) {
    switch (k) {
    case DS_PARAM_NORM: return 0;
    case DS_PARAM_EMBED: return o->decay_embed;
    default: return 1;
    }
}

int ds_adamw_check_table(size_t n, const ds_param *info, int n_info) {
    /* the table must tile [0, n) exactly, or some parameters would never be updated */
    size_t covered = 0;
    for (int i = 0; i < n_info; i++) {
        if (info[i].offset + info[i].numel > n || info[i].offset + info[i].numel < info[i].offset)
            return ds_fail(DS_ERR, "optimizer: parameter %s lies outside the buffer", info[i].name);
        covered += info[i].numel;
    }
    if (covered != n) return ds_fail(DS_ERR, "optimizer: parameter table covers %zu of %zu values", covered, n);
    return 0;
}

int ds_adamw_init(ds_adamw *a, const ds_adamw_opts *o, size_t n, const ds_param *info, int n_info) {
    memset(a, 0, sizeof *a);
    a->o = *o;
    a->n = n;
    a->info = info;
    a->n_info = n_info;
    DS_TRY(ds_adamw_check_table(n, info, n_info));
    a->decay = malloc(n_info ? (size_t)n_info : 1);
    if (o->bf16_moments) {
        a->m16 = calloc(n ? n : 1, sizeof *a->m16);
        a->v16 = calloc(n ? n : 1, sizeof *a->v16);
    } else {
        a->m32 = calloc(n ? n : 1, sizeof *a->m32);
        a->v32 = calloc(n ? n : 1, sizeof *a->v32);
    }
    if (!a->decay || (o->bf16_moments ? !a->m16 || !a->v16 : !a->m32 || !a->v32)) {
        ds_adamw_free(a);
        return ds_fail(DS_ERR, "out of memory: optimizer state for %zu parameters", n);
    }
    for (int i = 0; i < n_info; i++) a->decay[i] = (uint8_t)ds_adamw_kind_decays(o, info[i].kind);
    return 0;
}

void ds_adamw_free(ds_adamw *a) {
    free(a->m32), free(a->v32), free(a->m16), free(a->v16), free(a->decay);
    memset(a, 0, sizeof *a);
}

enum { NORM_CHUNK = 1 << 14 };

double ds_grad_sumsq(const float *g, size_t n) {
    size_t nchunks = (n + NORM_CHUNK - 1) / NORM_CHUNK;
    double stack[256], *part = nchunks <= 256 ? stack : malloc(nchunks * sizeof *part);
    if (!part) return NAN; /* out of memory: reported as a non-finite norm, which stops the run */
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t lo = c * NORM_CHUNK, hi = lo + NORM_CHUNK < n ? lo + NORM_CHUNK : n;
        double s = 0;
        for (size_t i = lo; i < hi; i++) s += (double)g[i] * g[i];
        part[c] = s;
    }
    double s = 0;
    for (size_t c = 0; c < nchunks; c++) s += part[c];
    if (part != stack) free(part);
    return s;
}

double ds_grad_norm(const float *g, size_t n) { return sqrt(ds_grad_sumsq(g, n)); }

float ds_clip_factor(double norm, double max_norm) {
    if (max_norm <= 0 || !isfinite(norm)) return 1.0f;
    double f = max_norm / (norm + 1e-6);
    return f < 1 ? (float)f : 1.0f;
}

/* The update of elements [lo, hi), fp32 arithmetic in the order PyTorch's AdamW uses. The body is written
 * once and inlined into one loop per combination of moment storage, bf16 output and zeroing (constant
 * arguments, restrict pointers), so that the compiler vectorizes each without a per-element test (a
 * per-element test of the storage kept the loop scalar: the optimizer was ~30% of a small-batch hidden-768
 * step). Each element's operations and their order are the same in every variant, so the results are bit
 * for bit those of the scalar loop (IEEE sqrt and division are correctly rounded in vector form too). The
 * Makefile builds this file with -fno-math-errno: with errno, GCC keeps sqrtf scalar (v >= 0, and a NaN
 * stays NaN either way). The fused extras (train/adamw.h ds_adamw_step_fused): w16 gets bf16(p_new), and
 * the gradient is set to 0 once read. */
static inline __attribute__((always_inline)) void
update_body(float *restrict p, float *restrict g, float *restrict m32, float *restrict v32, uint16_t *restrict m16,
            uint16_t *restrict v16, uint16_t *restrict w16, size_t n, float gs, float decay_mul, float b1, float b2,
            float step_size, float bc2_sqrt, float eps, const int bf16m, const int out16, const int zero) {
    const float one_b1 = 1.0f - b1, one_b2 = 1.0f - b2;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        float m = bf16m ? ds_bf16_to_f32(m16[i]) : m32[i], v = bf16m ? ds_bf16_to_f32(v16[i]) : v32[i];
        m = m + one_b1 * (gi - m);
        v = v * b2 + one_b2 * gi * gi;
        float denom = sqrtf(v) / bc2_sqrt + eps;
        float pi = p[i] * decay_mul;
        float pn = pi + (-step_size * m) / denom;
        p[i] = pn;
        if (out16) w16[i] = ds_f32_to_bf16(pn);
        if (zero) g[i] = 0.0f;
        if (bf16m) {
            m16[i] = ds_f32_to_bf16(m);
            v16[i] = ds_f32_to_bf16(v);
        } else {
            m32[i] = m;
            v32[i] = v;
        }
    }
}

#define UPDATE_VARIANT(name, bf16m, out16, zero)                                                                    \
    static void name(float *restrict p, float *restrict g, float *restrict m32, float *restrict v32,             \
                     uint16_t *restrict m16, uint16_t *restrict v16, uint16_t *restrict w16, size_t n, float gs, \
                     float dm, float b1, float b2, float ss, float bc2s, float eps) {                            \
        update_body(p, g, m32, v32, m16, v16, w16, n, gs, dm, b1, b2, ss, bc2s, eps, bf16m, out16, zero);        \
    }
UPDATE_VARIANT(update_f32, 0, 0, 0)
UPDATE_VARIANT(update_f32_z, 0, 0, 1)
UPDATE_VARIANT(update_f32_w, 0, 1, 0)
UPDATE_VARIANT(update_f32_wz, 0, 1, 1)
UPDATE_VARIANT(update_bf16, 1, 0, 0)
UPDATE_VARIANT(update_bf16_z, 1, 0, 1)
UPDATE_VARIANT(update_bf16_w, 1, 1, 0)
UPDATE_VARIANT(update_bf16_wz, 1, 1, 1)
#undef UPDATE_VARIANT

typedef void (*update_fn)(float *restrict, float *restrict, float *restrict, float *restrict, uint16_t *restrict,
                          uint16_t *restrict, uint16_t *restrict, size_t, float, float, float, float, float, float,
                          float);
/* [bf16 moments][bf16 output][zeroing] */
static const update_fn update_variants[2][2][2] = {{{update_f32, update_f32_z}, {update_f32_w, update_f32_wz}},
                                                   {{update_bf16, update_bf16_z}, {update_bf16_w, update_bf16_wz}}};

void ds_adamw_step_fused(ds_adamw *a, float *params, float *grads, float grad_scale, double lr, uint16_t *params_bf16,
                         int zero_grads) {
    a->t++;
    const double bc1 = 1 - pow(a->o.beta1, (double)a->t), bc2 = 1 - pow(a->o.beta2, (double)a->t);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2), eps = (float)a->o.eps;
    const float b1 = (float)a->o.beta1, b2 = (float)a->o.beta2;
    const float decay_mul = (float)(1 - lr * a->o.weight_decay);
    const int bf16m = a->m16 != NULL;
    const update_fn fn = update_variants[bf16m][params_bf16 != NULL][zero_grads != 0];
    /* tensors are split into chunks so one large embedding does not serialize the loop */
    enum { CHUNK = 1 << 15 };
    for (int t = 0; t < a->n_info; t++) {
        const ds_param *pi = &a->info[t];
        size_t nchunks = (pi->numel + CHUNK - 1) / CHUNK;
        float dm = a->decay[t] ? decay_mul : 1.0f;
#pragma omp parallel for schedule(static) if (nchunks > 1)
        for (size_t c = 0; c < nchunks; c++) {
            size_t lo = pi->offset + c * CHUNK, hi = lo + CHUNK < pi->offset + pi->numel ? lo + CHUNK : pi->offset + pi->numel;
            fn(params + lo, grads + lo, bf16m ? NULL : a->m32 + lo, bf16m ? NULL : a->v32 + lo, bf16m ? a->m16 + lo : NULL,
               bf16m ? a->v16 + lo : NULL, params_bf16 ? params_bf16 + lo : NULL, hi - lo, grad_scale, dm, b1, b2,
               step_size, bc2_sqrt, eps);
        }
    }
}

void ds_adamw_step(ds_adamw *a, float *params, const float *grads, float grad_scale, double lr) {
    /* neither output nor zeroing: the gradients are only read (the variant never writes through g) */
    ds_adamw_step_fused(a, params, (float *)grads, grad_scale, lr, NULL, 0);
}

float ds_adamw_moment(const ds_adamw *a, int which, size_t i) {
    if (a->m32) return which ? a->v32[i] : a->m32[i];
    return ds_bf16_to_f32(which ? a->v16[i] : a->m16[i]);
}

void ds_adamw_get(const ds_adamw *a, int which, size_t offset, size_t numel, float *out) {
    for (size_t i = 0; i < numel; i++) out[i] = ds_adamw_moment(a, which, offset + i);
}

void ds_adamw_set(ds_adamw *a, int which, size_t offset, size_t numel, const float *in) {
    for (size_t i = 0; i < numel; i++) {
        size_t k = offset + i;
        if (a->m32)
            (which ? a->v32 : a->m32)[k] = in[i];
        else
            (which ? a->v16 : a->m16)[k] = ds_f32_to_bf16(in[i]);
    }
}
