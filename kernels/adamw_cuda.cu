/* adamw_cuda.cu — see adamw_cuda.h. */
#include "cuda_check.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

extern "C" {
#include "adamw_cuda.h"
#include "core/dtype.h"
#include "cuda_rt.h"
}

struct ds_cuda_adamw {
    ds_cuda_adamw_opts o;
    size_t n;
    void *m, *v;                 /* float or bf16 */
    ds_cuda_adamw_seg *segs_d;   /* device copy */
    int nseg;
    size_t max_numel;
};

struct Scalars {
    float gs, b1, b2, one_b1, one_b2, step_size, bc2_sqrt, eps, decay_mul;
};

__device__ __forceinline__ float ld_m(const void *p, size_t i, int bf16) {
    return bf16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
__device__ __forceinline__ void st_m(void *p, size_t i, float x, int bf16) {
    if (bf16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(x);
    else ((float *)p)[i] = x;
}

/* blockIdx.y = tensor; the x dimension strides over its elements. Explicit _rn operations keep the
 * compiler from fusing multiply-adds, so the bits match the CPU's update. w16 (or NULL) gets the new
 * parameter in bf16, zero clears the gradient once read: the passes a training step would otherwise make
 * after the update (a shadow rebuild, the next step's zeroing), here at no extra read. */
__global__ void k_adamw(float *p, float *g, void *m, void *v, __nv_bfloat16 *w16, int zero, const ds_cuda_adamw_seg *segs,
                        Scalars s, int bf16) {
    const ds_cuda_adamw_seg sg = segs[blockIdx.y];
    const float dm = sg.decay ? s.decay_mul : 1.0f;
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < sg.numel; k += (size_t)gridDim.x * blockDim.x) {
        size_t i = sg.offset + k;
        float gi = __fmul_rn(g[i], s.gs);
        float mi = ld_m(m, i, bf16), vi = ld_m(v, i, bf16);
        mi = __fadd_rn(mi, __fmul_rn(s.one_b1, __fsub_rn(gi, mi)));
        vi = __fadd_rn(__fmul_rn(vi, s.b2), __fmul_rn(__fmul_rn(s.one_b2, gi), gi));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
        float pi = __fmul_rn(p[i], dm);
        float pn = __fadd_rn(pi, __fdiv_rn(__fmul_rn(-s.step_size, mi), denom));
        p[i] = pn;
        if (w16) w16[i] = __float2bfloat16_rn(pn); /* the rule of ops_cuda.cu's shadow conversion */
        if (zero) g[i] = 0.0f;
        st_m(m, i, mi, bf16);
        st_m(v, i, vi, bf16);
    }
}

extern "C" int ds_cuda_adamw_create(ds_cuda_adamw **out, const ds_cuda_adamw_opts *o, size_t n,
                                    const ds_cuda_adamw_seg *segs, int nseg) {
    *out = NULL;
    if (nseg < 1 || nseg > 65535) return ds_fail(DS_EUSAGE, "adamw (cuda): %d parameter tensors", nseg);
    ds_cuda_adamw *a = (ds_cuda_adamw *)calloc(1, sizeof *a);
    if (!a) return ds_fail(DS_ERR, "out of memory: adamw");
    a->o = *o;
    a->n = n;
    a->nseg = nseg;
    size_t esz = o->bf16_moments ? 2 : 4, covered = 0;
    for (int i = 0; i < nseg; i++) {
        if (segs[i].offset + segs[i].numel > n) {
            free(a);
            return ds_fail(DS_EUSAGE, "adamw (cuda): tensor %d runs past %zu parameters", i, n);
        }
        covered += segs[i].numel;
        if (segs[i].numel > a->max_numel) a->max_numel = segs[i].numel;
    }
    if (covered != n) {
        free(a);
        return ds_fail(DS_EUSAGE, "adamw (cuda): tensors cover %zu of %zu parameters", covered, n);
    }
    int rc = ds_cuda_alloc(&a->m, n * esz);
    if (!rc) rc = ds_cuda_alloc(&a->v, n * esz);
    if (!rc) rc = ds_cuda_alloc((void **)&a->segs_d, sizeof(ds_cuda_adamw_seg) * nseg);
    if (!rc) rc = ds_cuda_memset(a->m, 0, n * esz, NULL);
    if (!rc) rc = ds_cuda_memset(a->v, 0, n * esz, NULL);
    if (!rc) rc = ds_cuda_h2d(a->segs_d, segs, sizeof(ds_cuda_adamw_seg) * nseg);
    if (rc) {
        ds_cuda_adamw_free(a);
        return ds_fail_ctx(DS_ERR, "adamw (cuda) moments");
    }
    *out = a;
    return DS_OK;
}

extern "C" void ds_cuda_adamw_free(ds_cuda_adamw *a) {
    if (!a) return;
    ds_cuda_free(a->m);
    ds_cuda_free(a->v);
    ds_cuda_free(a->segs_d);
    free(a);
}

extern "C" int ds_cuda_adamw_step(ds_cuda_adamw *a, float *params, const float *grads, float grad_scale, double lr,
                                  int64_t t) {
    /* neither extra: the kernel only reads the gradients */
    return ds_cuda_adamw_step_fused(a, params, (float *)grads, grad_scale, lr, t, NULL, 0);
}

extern "C" int ds_cuda_adamw_step_fused(ds_cuda_adamw *a, float *params, float *grads, float grad_scale, double lr,
                                        int64_t t, uint16_t *params_bf16, int zero_grads) {
    const double bc1 = 1 - pow(a->o.beta1, (double)t), bc2 = 1 - pow(a->o.beta2, (double)t);
    Scalars s;
    s.gs = grad_scale;
    s.b1 = (float)a->o.beta1;
    s.b2 = (float)a->o.beta2;
    s.one_b1 = 1.0f - s.b1;
    s.one_b2 = 1.0f - s.b2;
    s.step_size = (float)(lr / bc1);
    s.bc2_sqrt = (float)sqrt(bc2);
    s.eps = (float)a->o.eps;
    s.decay_mul = (float)(1 - lr * a->o.weight_decay);
    size_t blocks = (a->max_numel + 255) / 256;
    dim3 grid((unsigned)(blocks > 1024 ? 1024 : (blocks ? blocks : 1)), a->nseg);
    k_adamw<<<grid, 256>>>(params, grads, a->m, a->v, (__nv_bfloat16 *)params_bf16, zero_grads != 0, a->segs_d, s,
                           a->o.bf16_moments);
    return DS_CUDA_LAUNCHED("adamw");
}

__global__ void k_moment_f32(float *dst, const void *src, size_t n, int bf16) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = ld_m(src, i, bf16);
}
__global__ void k_moment_set(void *dst, const float *src, size_t n, int bf16) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        st_m(dst, i, src[i], bf16);
}

static int moment_range(const ds_cuda_adamw *a, int which, size_t offset, size_t numel) {
    if (which < 0 || which > 1 || offset + numel > a->n)
        return ds_fail(DS_EUSAGE, "adamw (cuda): moment range [%zu, %zu) of %zu", offset, offset + numel, a->n);
    return DS_OK;
}

extern "C" int ds_cuda_adamw_get(const ds_cuda_adamw *a, int which, size_t offset, size_t numel, float *host) {
    DS_TRY(moment_range(a, which, offset, numel));
    if (!numel) return DS_OK;
    float *tmp;
    DS_TRY(ds_cuda_alloc((void **)&tmp, numel * 4));
    size_t esz = a->o.bf16_moments ? 2 : 4;
    const char *src = (const char *)(which ? a->v : a->m) + offset * esz;
    k_moment_f32<<<(unsigned)((numel + 255) / 256 > 4096 ? 4096 : (numel + 255) / 256), 256>>>(tmp, src, numel,
                                                                                               a->o.bf16_moments);
    int rc = DS_CUDA_LAUNCHED("adamw moments");
    if (!rc) rc = ds_cuda_d2h(host, tmp, numel * 4);
    ds_cuda_free(tmp);
    return rc;
}

extern "C" int ds_cuda_adamw_set(ds_cuda_adamw *a, int which, size_t offset, size_t numel, const float *host) {
    DS_TRY(moment_range(a, which, offset, numel));
    if (!numel) return DS_OK;
    float *tmp;
    DS_TRY(ds_cuda_alloc((void **)&tmp, numel * 4));
    int rc = ds_cuda_h2d(tmp, host, numel * 4);
    size_t esz = a->o.bf16_moments ? 2 : 4;
    char *dst = (char *)(which ? a->v : a->m) + offset * esz;
    if (!rc) {
        k_moment_set<<<(unsigned)((numel + 255) / 256 > 4096 ? 4096 : (numel + 255) / 256), 256>>>(dst, tmp, numel,
                                                                                                   a->o.bf16_moments);
        rc = DS_CUDA_LAUNCHED("adamw moments");
    }
    if (!rc) rc = ds_cuda_sync();
    ds_cuda_free(tmp);
    return rc;
}

/* a fixed grid: each block sums a fixed stride pattern in double, then the block partials in order */
#define NORM_BLOCKS 1024
__global__ void k_sumsq(double *part, const float *g, size_t n) {
    __shared__ double sh[256];
    double s = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)g[i] * g[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int w = 128; w; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

extern "C" int ds_cuda_grad_sumsq(const float *g, size_t n, double *sumsq) {
    static double *part; /* kept: a training step must not allocate */
    if (!part) DS_TRY(ds_cuda_alloc((void **)&part, NORM_BLOCKS * sizeof(double)));
    k_sumsq<<<NORM_BLOCKS, 256>>>(part, g, n);
    DS_TRY(DS_CUDA_LAUNCHED("grad norm"));
    double h[NORM_BLOCKS];
    DS_TRY(ds_cuda_d2h(h, part, sizeof h));
    double s = 0;
    for (int i = 0; i < NORM_BLOCKS; i++) s += h[i];
    *sumsq = s;
    return DS_OK;
}

extern "C" int ds_cuda_grad_norm(const float *g, size_t n, double *norm) {
    double s;
    DS_TRY(ds_cuda_grad_sumsq(g, n, &s));
    *norm = sqrt(s);
    return DS_OK;
}
