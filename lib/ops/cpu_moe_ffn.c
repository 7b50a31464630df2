/* CPU ops: the routed experts' SwiGLU FFN in one pass over the experts (ops.h moe_ffn_fwd, moe_ffn_bwd).
 *
 * The unfused sequence runs each step (gate GEMM, up GEMM, SwiGLU, down GEMM; the backward's eight steps)
 * over all experts before the next: a parallel region and its end-of-loop wait per step, and every
 * intermediate [rows, I] block goes out to memory and comes back. Here each expert's rows go through all
 * of the steps on one thread while they are in its cache, and the experts are handed out largest first,
 * so the threads run out of work together. Every step is the same call on the same operands as in the
 * sequence (ds_cpu_gemm1 per expert, the shared SwiGLU and combine-backward element code), so the results
 * are the same bit for bit. An expert too large to share the threads (ds_cpu_group_alone) runs after the
 * others on all of them, as gemm_rows runs it. */
#include "ops/cpu_internal.h"
#include "ops/cpu_math.h"

#include <stdlib.h>

typedef void gemm_fn(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc);

/* the experts that share the threads, most rows first (ties: lower index), into ord; returns how many */
static int shared_by_rows(int *ord, const int64_t *off, int ne) {
    int n = 0;
    for (int e = 0; e < ne; e++) {
        if (off[e + 1] <= off[e] || ds_cpu_group_alone(off, e, ne)) continue;
        int64_t r = off[e + 1] - off[e];
        int i = n++;
        for (; i > 0 && off[ord[i - 1] + 1] - off[ord[i - 1]] < r; i--) ord[i] = ord[i - 1];
        ord[i] = e;
    }
    return n;
}

static void ffn_fwd_one(gemm_fn *gemm, int e, const int64_t *off, int D, int I, const float *x, const float *Wg,
                        const float *Wu, const float *Wd, size_t stride, float *g, float *u, float *act, float *y) {
    int64_t r0 = off[e];
    int R = (int)(off[e + 1] - r0);
    const float *xe = x + (size_t)r0 * D;
    float *ge = g + (size_t)r0 * I, *ue = u + (size_t)r0 * I, *ae = act + (size_t)r0 * I;
    gemm(0, 1, R, I, D, 1.0f, xe, D, Wg + e * stride, D, 0.0f, ge, I);
    gemm(0, 1, R, I, D, 1.0f, xe, D, Wu + e * stride, D, 0.0f, ue, I);
    size_t n = (size_t)R * I;
#pragma omp simd
    for (size_t i = 0; i < n; i++) ae[i] = ds_swiglu(ge[i], ue[i]);
    gemm(0, 1, R, D, I, 1.0f, ae, I, Wd + e * stride, I, 0.0f, y + (size_t)r0 * D, D);
}

void ds_cpu_moe_ffn_fwd(int ne, const int64_t *off, int D, int I, const float *x, const float *Wg, const float *Wu,
                        const float *Wd, size_t stride, float *g, float *u, float *act, float *y) {
    int ord[ne > 0 ? ne : 1], n = shared_by_rows(ord, off, ne);
    ds_cpu_blas_single();
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) ffn_fwd_one(ds_cpu_gemm1, ord[i], off, D, I, x, Wg, Wu, Wd, stride, g, u, act, y);
    for (int e = 0; e < ne; e++)
        if (off[e + 1] > off[e] && ds_cpu_group_alone(off, e, ne))
            ffn_fwd_one(ds_cpu_gemm, e, off, D, I, x, Wg, Wu, Wd, stride, g, u, act, y);
}

typedef struct {
    int D, I;
    const float *x, *dy, *w, *Wg, *Wu, *Wd, *g, *u;
    const int32_t *order;
    size_t stride;
    float *act, *dg, *du, *dw, *dx, *gWg, *gWu, *gWd;
} ffn_bwd_args;

static void ffn_bwd_one(gemm_fn *gemm, int e, const int64_t *off, const ffn_bwd_args *a) {
    const int D = a->D, I = a->I;
    const int64_t r0 = off[e];
    const int R = (int)(off[e + 1] - r0);
    const size_t n = (size_t)R * I, so = e * a->stride;
    const float *xe = a->x + (size_t)r0 * D, *dye = a->dy + (size_t)r0 * D;
    const float *ge = a->g + (size_t)r0 * I, *ue = a->u + (size_t)r0 * I;
    float *ae = a->act + (size_t)r0 * I, *dge = a->dg + (size_t)r0 * I, *due = a->du + (size_t)r0 * I;
    /* the activations again, dy through W_down, the routing weights' gradient, then act scaled by them */
#pragma omp simd
    for (size_t i = 0; i < n; i++) ae[i] = ds_swiglu(ge[i], ue[i]);
    gemm(0, 0, R, I, D, 1.0f, dye, D, a->Wd + so, I, 0.0f, dge, I);
    for (int r = 0; r < R; r++) {
        int32_t s = a->order[r0 + r];
        ds_cpu_moe_combine_bwd_row(dge + (size_t)r * I, a->dw + s, dge + (size_t)r * I, ae + (size_t)r * I, a->w[s], I);
        float ws = a->w[s], *ar = ae + (size_t)r * I;
#pragma omp simd
        for (int j = 0; j < I; j++) ar[j] *= ws;
    }
    if (a->gWd) gemm(1, 0, D, I, R, 1.0f, dye, D, ae, I, 1.0f, a->gWd + so, I);
#pragma omp simd
    for (size_t i = 0; i < n; i++) ds_swiglu_grad(dge + i, due + i, dge[i], ge[i], ue[i]);
    if (a->gWg) gemm(1, 0, I, D, R, 1.0f, dge, I, xe, D, 1.0f, a->gWg + so, D);
    if (a->gWu) gemm(1, 0, I, D, R, 1.0f, due, I, xe, D, 1.0f, a->gWu + so, D);
    float *dxe = a->dx + (size_t)r0 * D;
    gemm(0, 0, R, D, I, 1.0f, dge, I, a->Wg + so, D, 0.0f, dxe, D);
    gemm(0, 0, R, D, I, 1.0f, due, I, a->Wu + so, D, 1.0f, dxe, D);
}

void ds_cpu_moe_ffn_bwd(int ne, const int64_t *off, int D, int I, const float *x, const float *dy, const float *w,
                        const int32_t *order, const float *Wg, const float *Wu, const float *Wd, size_t stride,
                        const float *g, const float *u, float *act, float *dg, float *du, float *dw, float *dx,
                        float *gWg, float *gWu, float *gWd) {
    const ffn_bwd_args a = {.D = D, .I = I, .x = x, .dy = dy, .w = w, .Wg = Wg, .Wu = Wu, .Wd = Wd, .g = g, .u = u,
                            .order = order, .stride = stride, .act = act, .dg = dg, .du = du, .dw = dw, .dx = dx,
                            .gWg = gWg, .gWu = gWu, .gWd = gWd};
    int ord[ne > 0 ? ne : 1], n = shared_by_rows(ord, off, ne);
    ds_cpu_blas_single();
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) ffn_bwd_one(ds_cpu_gemm1, ord[i], off, &a);
    for (int e = 0; e < ne; e++)
        if (off[e + 1] > off[e] && ds_cpu_group_alone(off, e, ne)) ffn_bwd_one(ds_cpu_gemm, e, off, &a);
}
