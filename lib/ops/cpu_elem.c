/* CPU ops: elementwise arithmetic, RMSNorm, RoPE, SwiGLU, embedding, MLA key/value assembly.
 * Parallel loops run over rows; reductions over rows (parameter gradients) run over column blocks with the
 * rows in order, so they do not depend on the thread count. */
#include "ops/cpu_internal.h"
#include "ops/cpu_math.h"

#include <math.h>
#include <string.h>

/* below this many elements a parallel region costs more than it saves */
#define PAR_MIN 16384

void ds_cpu_add(float *y, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void ds_cpu_axpy(float *y, float alpha, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

void ds_cpu_scale(float *y, float alpha, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] *= alpha;
}

void ds_cpu_copy2d(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > PAR_MIN)
    for (int i = 0; i < rows; i++) memcpy(dst + (size_t)i * ldd, src + (size_t)i * lds, sizeof(float) * cols);
}

void ds_cpu_rmsnorm_fwd(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d,
                        float eps) {
#pragma omp parallel for schedule(static) if ((size_t)n * d > PAR_MIN)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * ldx;
        float *yi = y + (size_t)i * ldy;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int j = 0; j < d; j++) ss += xi[j] * xi[j];
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        if (rstd) rstd[i] = r;
#pragma omp simd
        for (int j = 0; j < d; j++) yi[j] = w[j] * (xi[j] * r);
    }
}

void ds_cpu_rmsnorm_bwd(float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx,
                        const float *w, const float *rstd, int n, int d) {
    if (dx) {
#pragma omp parallel for schedule(static) if ((size_t)n * d > PAR_MIN)
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * ldx, *dyi = dy + (size_t)i * lddy;
            float *dxi = dx + (size_t)i * lddx;
            float r = rstd[i], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int j = 0; j < d; j++) dot += w[j] * dyi[j] * xi[j];
            float c = dot * r * r / (float)d; /* mean(w⊙dy⊙x̂) * r, folded */
#pragma omp simd
            for (int j = 0; j < d; j++) dxi[j] += r * (w[j] * dyi[j] - xi[j] * c);
        }
    }
    if (dw) {
        int nb = (d + DS_CPU_COLBLOCK - 1) / DS_CPU_COLBLOCK;
#pragma omp parallel for schedule(static) if ((size_t)n * d > PAR_MIN)
        for (int b = 0; b < nb; b++) {
            int j0 = b * DS_CPU_COLBLOCK, j1 = j0 + DS_CPU_COLBLOCK < d ? j0 + DS_CPU_COLBLOCK : d;
            float acc[DS_CPU_COLBLOCK];
            for (int j = j0; j < j1; j++) acc[j - j0] = 0.0f;
            for (int i = 0; i < n; i++) {
                const float *xi = x + (size_t)i * ldx, *dyi = dy + (size_t)i * lddy;
                float r = rstd[i];
                for (int j = j0; j < j1; j++) acc[j - j0] += dyi[j] * (xi[j] * r);
            }
            for (int j = j0; j < j1; j++) dw[j] += acc[j - j0];
        }
    }
}

void ds_cpu_rope_table(float *cs, const int32_t *pos, int n, const float *inv_freq, int half, float mscale) {
#pragma omp parallel for schedule(static) if ((size_t)n * half > PAR_MIN)
    for (int i = 0; i < n; i++) {
        float p = (float)pos[i];
        float *c = cs + (size_t)i * half * 2;
        for (int j = 0; j < half; j++) {
            float a = p * inv_freq[j];
            c[2 * j] = cosf(a) * mscale;
            c[2 * j + 1] = sinf(a) * mscale;
        }
    }
}

void ds_cpu_rope(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved,
                 const float *cs, int inverse) {
    float sgn = inverse ? -1.0f : 1.0f;
    /* pair j is (p[j*step], p[j*step + gap]) */
    const int step = interleaved ? 2 : 1, gap = interleaved ? 1 : half;
#pragma omp parallel for schedule(static) if ((size_t)n * nh * half > PAR_MIN)
    for (int i = 0; i < n; i++) {
        const float *c = cs + (size_t)i * half * 2;
        for (int h = 0; h < nh; h++) {
            float *p = x + (size_t)i * ld_row + (size_t)h * ld_head + off;
            for (int j = 0; j < half; j++) {
                float co = c[2 * j], si = sgn * c[2 * j + 1];
                float *e = p + j * step, *o = e + gap;
                float a = *e, b = *o;
                *e = a * co - b * si;
                *o = b * co + a * si;
            }
        }
    }
}

void ds_cpu_swiglu_fwd(float *h, const float *g, const float *u, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) h[i] = ds_swiglu(g[i], u[i]);
}

void ds_cpu_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) ds_swiglu_grad(dg + i, du + i, dh[i], g[i], u[i]);
}

void ds_cpu_embed_fwd(float *x, const float *table, const int32_t *tok, int n, int d) {
#pragma omp parallel for schedule(static) if ((size_t)n * d > PAR_MIN)
    for (int i = 0; i < n; i++) {
        float *xi = x + (size_t)i * d;
        if (tok[i] >= 0)
            memcpy(xi, table + (size_t)tok[i] * d, sizeof(float) * d);
        else
            memset(xi, 0, sizeof(float) * d);
    }
}

void ds_cpu_embed_bwd(float *dtable, const float *dx, const int32_t *tok, int n, int d) {
    int nb = (d + DS_CPU_COLBLOCK - 1) / DS_CPU_COLBLOCK;
#pragma omp parallel for schedule(static) if ((size_t)n * d > PAR_MIN)
    for (int b = 0; b < nb; b++) {
        int j0 = b * DS_CPU_COLBLOCK, j1 = j0 + DS_CPU_COLBLOCK < d ? j0 + DS_CPU_COLBLOCK : d;
        for (int i = 0; i < n; i++) {
            if (tok[i] < 0) continue;
            float *t = dtable + (size_t)tok[i] * d;
            const float *g = dx + (size_t)i * d;
            for (int j = j0; j < j1; j++) t[j] += g[j];
        }
    }
}

void ds_cpu_mla_kv_expand(float *k, float *v, const float *kvb, const float *kpe, int ld_kpe, int n, int H, int dn,
                          int dr, int dv) {
    int dqk = dn + dr, dkv = dn + dv;
#pragma omp parallel for schedule(static) if ((size_t)n * H * dkv > PAR_MIN)
    for (int i = 0; i < n; i++) {
        const float *pe = kpe + (size_t)i * ld_kpe;
        for (int h = 0; h < H; h++) {
            const float *src = kvb + ((size_t)i * H + h) * dkv;
            float *ki = k + ((size_t)i * H + h) * dqk;
            memcpy(ki, src, sizeof(float) * dn);
            memcpy(ki + dn, pe, sizeof(float) * dr);
            memcpy(v + ((size_t)i * H + h) * dv, src + dn, sizeof(float) * dv);
        }
    }
}

void ds_cpu_mla_kv_expand_bwd(float *dkvb, float *dkpe, int ld_dkpe, const float *dk, const float *dv, int n, int H,
                              int dn, int dr, int dv_dim) {
    int dqk = dn + dr, dkv = dn + dv_dim;
#pragma omp parallel for schedule(static) if ((size_t)n * H * dkv > PAR_MIN)
    for (int i = 0; i < n; i++) {
        float *pe = dkpe + (size_t)i * ld_dkpe;
        for (int j = 0; j < dr; j++) pe[j] = 0.0f;
        for (int h = 0; h < H; h++) {
            const float *ki = dk + ((size_t)i * H + h) * dqk;
            float *dst = dkvb + ((size_t)i * H + h) * dkv;
            memcpy(dst, ki, sizeof(float) * dn);
            memcpy(dst + dn, dv + ((size_t)i * H + h) * dv_dim, sizeof(float) * dv_dim);
            for (int j = 0; j < dr; j++) pe[j] += ki[dn + j];
        }
    }
}
