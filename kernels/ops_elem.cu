/* ops_elem.cu — CUDA ops: elementwise arithmetic, RMSNorm, RoPE, SwiGLU, embedding lookup, log-softmax at
 * the targets, MLA key/value assembly. Row reductions use a warp or a block per row in a fixed tree order;
 * reductions over rows (the RMSNorm gain gradient) sum fixed chunks of rows, then the chunks in order. */
#include "ops_cuda_internal.cuh"

#define BLK 256

static unsigned gs_grid(size_t n) {
    size_t g = (n + BLK - 1) / BLK;
    return (unsigned)(g > 16384 ? 16384 : (g ? g : 1));
}
#define GRID_STRIDE(i, n) for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__global__ void k_add(float *y, const float *a, const float *b, size_t n) { GRID_STRIDE(i, n) y[i] = a[i] + b[i]; }
__global__ void k_axpy(float *y, float alpha, const float *x, size_t n) { GRID_STRIDE(i, n) y[i] += alpha * x[i]; }
__global__ void k_scale(float *y, float alpha, size_t n) { GRID_STRIDE(i, n) y[i] *= alpha; }
__global__ void k_copy2d(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    GRID_STRIDE(i, (size_t)rows * cols) dst[(i / cols) * ldd + i % cols] = src[(i / cols) * lds + i % cols];
}

void cu_add(float *y, const float *a, const float *b, size_t n) {
    if (!n) return;
    k_add<<<gs_grid(n), BLK>>>(y, a, b, n);
    OPS_LAUNCHED("add");
}
void cu_axpy(float *y, float alpha, const float *x, size_t n) {
    if (!n) return;
    k_axpy<<<gs_grid(n), BLK>>>(y, alpha, x, n);
    OPS_LAUNCHED("axpy");
}
void cu_scale(float *y, float alpha, size_t n) {
    if (!n) return;
    k_scale<<<gs_grid(n), BLK>>>(y, alpha, n);
    OPS_LAUNCHED("scale");
}
void cu_copy2d(float *dst, int ldd, const float *src, int lds, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    ds_cuda_params_touched(dst);
    k_copy2d<<<gs_grid((size_t)rows * cols), BLK>>>(dst, ldd, src, lds, rows, cols);
    OPS_LAUNCHED("copy2d");
}

/* ---- RMSNorm: a warp per row ---------------------------------------------------------------------------- */

__global__ void k_rmsnorm_fwd(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d,
                              float eps) {
    int row = blockIdx.x * (BLK / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= n) return;
    const float *xi = x + (size_t)row * ldx;
    float ss = 0.f;
    for (int j = lane; j < d; j += 32) ss += xi[j] * xi[j];
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)d + eps);
    if (rstd && lane == 0) rstd[row] = r;
    float *yi = y + (size_t)row * ldy;
    for (int j = lane; j < d; j += 32) yi[j] = w[j] * (xi[j] * r);
}

__global__ void k_rmsnorm_bwd_dx(float *dx, int lddx, const float *dy, int lddy, const float *x, int ldx,
                                 const float *w, const float *rstd, int n, int d) {
    int row = blockIdx.x * (BLK / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= n) return;
    const float *xi = x + (size_t)row * ldx, *dyi = dy + (size_t)row * lddy;
    float *dxi = dx + (size_t)row * lddx;
    float r = rstd[row], dot = 0.f;
    for (int j = lane; j < d; j += 32) dot += w[j] * dyi[j] * xi[j];
    dot = warp_sum(dot);
    float c = dot * r * r / (float)d;
    for (int j = lane; j < d; j += 32) dxi[j] += r * (w[j] * dyi[j] - xi[j] * c);
}

#define DW_CHUNK 64
__global__ void k_rmsnorm_dw_partial(float *part, const float *dy, int lddy, const float *x, int ldx,
                                     const float *rstd, int n, int d) {
    int j = blockIdx.x * BLK + threadIdx.x, i0 = blockIdx.y * DW_CHUNK;
    if (j >= d) return;
    float acc = 0.f;
    for (int i = i0; i < n && i < i0 + DW_CHUNK; i++)
        acc += dy[(size_t)i * lddy + j] * (x[(size_t)i * ldx + j] * rstd[i]);
    part[(size_t)blockIdx.y * d + j] = acc;
}
__global__ void k_sum_chunks(float *dst, const float *part, int chunks, int d) {
    int j = blockIdx.x * BLK + threadIdx.x;
    if (j >= d) return;
    float acc = 0.f;
    for (int c = 0; c < chunks; c++) acc += part[(size_t)c * d + j];
    dst[j] += acc;
}

void cu_rmsnorm_fwd(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d, float eps) {
    if (n <= 0) return;
    k_rmsnorm_fwd<<<grid1d(n, BLK / 32), BLK>>>(y, ldy, rstd, x, ldx, w, n, d, eps);
    OPS_LAUNCHED("rmsnorm_fwd");
}

void cu_rmsnorm_bwd(float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx, const float *w,
                    const float *rstd, int n, int d) {
    if (n <= 0) return;
    if (dx) {
        k_rmsnorm_bwd_dx<<<grid1d(n, BLK / 32), BLK>>>(dx, lddx, dy, lddy, x, ldx, w, rstd, n, d);
        OPS_LAUNCHED("rmsnorm_bwd dx");
    }
    if (dw) {
        int chunks = (n + DW_CHUNK - 1) / DW_CHUNK;
        float *part = (float *)ds_cuda_scratch(SCR_PARTIAL, sizeof(float) * (size_t)chunks * d);
        if (!part) return;
        k_rmsnorm_dw_partial<<<dim3(grid1d(d, BLK), chunks), BLK>>>(part, dy, lddy, x, ldx, rstd, n, d);
        k_sum_chunks<<<grid1d(d, BLK), BLK>>>(dw, part, chunks, d);
        OPS_LAUNCHED("rmsnorm_bwd dw");
    }
}

/* ---- RoPE ------------------------------------------------------------------------------------------------ */

__global__ void k_rope_table(float *cs, const int32_t *pos, int n, const float *inv_freq, int half, float mscale) {
    GRID_STRIDE(t, (size_t)n * half) {
        int i = (int)(t / half), j = (int)(t % half);
        float a = (float)pos[i] * inv_freq[j];
        cs[2 * t] = cosf(a) * mscale;
        cs[2 * t + 1] = sinf(a) * mscale;
    }
}

/* pair j of a row's rope slice is (p[j*step], p[j*step + gap]): (2, 1) interleaved, (1, half) halves */
__global__ void k_rope(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int step, int gap,
                       const float *cs, float sgn) {
    GRID_STRIDE(t, (size_t)n * nh * half) {
        int j = (int)(t % half), h = (int)(t / half % nh), i = (int)(t / half / nh);
        const float *c = cs + ((size_t)i * half + j) * 2;
        float co = c[0], si = sgn * c[1];
        float *p = x + (size_t)i * ld_row + (size_t)h * ld_head + off + (size_t)j * step;
        float a = p[0], b = p[gap];
        p[0] = a * co - b * si;
        p[gap] = b * co + a * si;
    }
}

void cu_rope_table(float *cs, const int32_t *pos, int n, const float *inv_freq, int half, float mscale) {
    if (n <= 0 || half <= 0) return;
    k_rope_table<<<gs_grid((size_t)n * half), BLK>>>(cs, pos, n, inv_freq, half, mscale);
    OPS_LAUNCHED("rope_table");
}

void cu_rope(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved, const float *cs,
             int inverse) {
    if (n <= 0 || nh <= 0 || half <= 0) return;
    k_rope<<<gs_grid((size_t)n * nh * half), BLK>>>(x, n, nh, ld_row, ld_head, off, half, interleaved ? 2 : 1,
                                                    interleaved ? 1 : half, cs, inverse ? -1.f : 1.f);
    OPS_LAUNCHED("rope");
}

/* ---- SwiGLU, embedding --------------------------------------------------------------------------------- */

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void k_swiglu_fwd(float *h, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) h[i] = g[i] * sigmoidf_(g[i]) * u[i];
}
__global__ void k_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    GRID_STRIDE(i, n) {
        float s = sigmoidf_(g[i]), d = dh[i], gi = g[i], ui = u[i];
        du[i] = d * gi * s;
        dg[i] = d * ui * s * (1.0f + gi * (1.0f - s));
    }
}
__global__ void k_embed_fwd(float *x, const float *table, const int32_t *tok, int n, int d) {
    GRID_STRIDE(t, (size_t)n * d) {
        int i = (int)(t / d), j = (int)(t % d);
        x[t] = tok[i] >= 0 ? table[(size_t)tok[i] * d + j] : 0.f;
    }
}

void cu_swiglu_fwd(float *h, const float *g, const float *u, size_t n) {
    if (!n) return;
    k_swiglu_fwd<<<gs_grid(n), BLK>>>(h, g, u, n);
    OPS_LAUNCHED("swiglu_fwd");
}
void cu_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    if (!n) return;
    k_swiglu_bwd<<<gs_grid(n), BLK>>>(dg, du, dh, g, u, n);
    OPS_LAUNCHED("swiglu_bwd");
}
void cu_embed_fwd(float *x, const float *table, const int32_t *tok, int n, int d) {
    if (n <= 0) return;
    k_embed_fwd<<<gs_grid((size_t)n * d), BLK>>>(x, table, tok, n, d);
    OPS_LAUNCHED("embed_fwd");
}

/* ---- log-softmax at the targets: a block per row ------------------------------------------------------ */

__device__ float block_reduce(float v, float *sh, bool is_max) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = is_max ? warp_max_f(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh[lane] : (is_max ? -INFINITY : 0.f);
        v = is_max ? warp_max_f(v) : warp_sum(v);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

__global__ void k_logsoftmax_fwd(float *logp, float *lse, float *ent, const float *logits, const int32_t *tgt,
                                 int V) {
    __shared__ float sh[32];
    int i = blockIdx.x;
    const float *z = logits + (size_t)i * V;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, z[j]);
    mx = block_reduce(mx, sh, true);
    float s = 0.f, sz = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float e = expf(z[j] - mx);
        s += e;
        sz += e * (z[j] - mx);
    }
    s = block_reduce(s, sh, false);
    sz = block_reduce(sz, sh, false);
    if (threadIdx.x == 0) {
        float l = mx + logf(s);
        lse[i] = l;
        logp[i] = tgt[i] >= 0 ? z[tgt[i]] - l : 0.f;
        if (ent) ent[i] = logf(s) - sz / s;
    }
}

__global__ void k_logsoftmax_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *tgt,
                                 const float *dlogp, int n, int V) {
    GRID_STRIDE(t, (size_t)n * V) {
        int i = (int)(t / V), j = (int)(t % V);
        float g = tgt[i] >= 0 ? dlogp[i] : 0.f;
        float v = g == 0.f ? 0.f : -g * expf(logits[t] - lse[i]);
        if (g != 0.f && j == tgt[i]) v += g;
        dlogits[t] = v;
    }
}

void cu_logsoftmax_fwd(float *logp, float *lse, float *ent, const float *logits, const int32_t *tgt, int n, int V) {
    if (n <= 0) return;
    k_logsoftmax_fwd<<<n, 512>>>(logp, lse, ent, logits, tgt, V);
    OPS_LAUNCHED("logsoftmax_fwd");
}
void cu_logsoftmax_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *tgt, const float *dlogp,
                       int n, int V) {
    if (n <= 0) return;
    k_logsoftmax_bwd<<<gs_grid((size_t)n * V), BLK>>>(dlogits, logits, lse, tgt, dlogp, n, V);
    OPS_LAUNCHED("logsoftmax_bwd");
}

/* ---- MLA key/value assembly ------------------------------------------------------------------------------ */

__global__ void k_kv_expand(float *k, float *v, const float *kvb, const float *kpe, int ld_kpe, int n, int H, int dn,
                            int dr, int dv) {
    int dqk = dn + dr, dkv = dn + dv;
    GRID_STRIDE(t, (size_t)n * H * dqk) {
        int c = (int)(t % dqk);
        size_t ih = t / dqk, i = ih / H;
        k[t] = c < dn ? kvb[ih * dkv + c] : kpe[i * ld_kpe + (c - dn)];
    }
    GRID_STRIDE(t, (size_t)n * H * dv) {
        size_t ih = t / dv;
        v[t] = kvb[ih * dkv + dn + t % dv];
    }
}

__global__ void k_kv_expand_bwd(float *dkvb, float *dkpe, int ld_dkpe, const float *dk, const float *dv, int n, int H,
                                int dn, int dr, int dvd) {
    int dqk = dn + dr, dkv = dn + dvd;
    GRID_STRIDE(t, (size_t)n * H * dkv) {
        int c = (int)(t % dkv);
        size_t ih = t / dkv;
        dkvb[t] = c < dn ? dk[ih * dqk + c] : dv[ih * dvd + (c - dn)];
    }
    GRID_STRIDE(t, (size_t)n * dr) {
        size_t i = t / dr;
        int j = (int)(t % dr);
        float acc = 0.f;
        for (int h = 0; h < H; h++) acc += dk[(i * H + h) * dqk + dn + j];
        dkpe[i * ld_dkpe + j] = acc;
    }
}

void cu_mla_kv_expand(float *k, float *v, const float *kvb, const float *kpe, int ld_kpe, int n, int H, int dn, int dr,
                      int dv) {
    if (n <= 0) return;
    k_kv_expand<<<gs_grid((size_t)n * H * (dn + dr)), BLK>>>(k, v, kvb, kpe, ld_kpe, n, H, dn, dr, dv);
    OPS_LAUNCHED("mla_kv_expand");
}
void cu_mla_kv_expand_bwd(float *dkvb, float *dkpe, int ld_dkpe, const float *dk, const float *dv, int n, int H,
                          int dn, int dr, int dv_dim) {
    if (n <= 0) return;
    k_kv_expand_bwd<<<gs_grid((size_t)n * H * (dn + dv_dim)), BLK>>>(dkvb, dkpe, ld_dkpe, dk, dv, n, H, dn, dr,
                                                                      dv_dim);
    OPS_LAUNCHED("mla_kv_expand_bwd");
}
