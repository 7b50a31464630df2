/* ops_moe.cu — CUDA ops: MoE routing (scores, group-limited top-k and its backward, the sequence-wise
 * balance loss) and token movement (gather, combine, their backwards). A warp owns a token; choices are
 * made with the same comparisons as the CPU backend (ties to the lower index), so the same scores pick the
 * same experts. Sums over a token's K slots run in slot order. */
#include "ops_cuda_internal.cuh"

#define BLK 256
#define WPB (BLK / 32) /* warps (tokens) per block */
#define GRID_STRIDE(i, n) for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static unsigned gs_grid(size_t n) {
    size_t g = (n + BLK - 1) / BLK;
    return (unsigned)(g > 16384 ? 16384 : (g ? g : 1));
}

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void k_router_scores(float *scores, const float *logits, int n, int E, int softmax) {
    int t = blockIdx.x * WPB + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (t >= n) return;
    const float *z = logits + (size_t)t * E;
    float *s = scores + (size_t)t * E;
    if (!softmax) {
        for (int e = lane; e < E; e += 32) s[e] = sigm(z[e]);
        return;
    }
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, z[e]);
    mx = warp_max_f(mx);
    float sum = 0.f;
    for (int e = lane; e < E; e += 32) sum += expf(z[e] - mx);
    sum = warp_sum(sum);
    float inv = 1.0f / sum;
    for (int e = lane; e < E; e += 32) s[e] = expf(z[e] - mx) * inv;
}

void cu_router_scores(float *scores, const float *logits, int n, int E, ds_score_fn fn) {
    if (n <= 0) return;
    k_router_scores<<<grid1d(n, WPB), BLK>>>(scores, logits, n, E, fn == DS_SCORE_FN_SOFTMAX);
    OPS_LAUNCHED("router_scores");
}

/* best allowed (value, index) across the warp: larger value, then lower index */
__device__ __forceinline__ int warp_argmax(const float *v, const unsigned char *allowed, int n) {
    int lane = threadIdx.x & 31, bi = -1;
    float bv = 0.f;
    for (int i = lane; i < n; i += 32)
        if (allowed[i] && (bi < 0 || v[i] > bv)) { bv = v[i]; bi = i; }
    for (int o = 16; o; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
    }
    return bi;
}

struct RouteArgs {
    int E, K, G, gs, topk_group, rule, renorm;
    float route_scale;
};

__global__ void k_moe_topk(int32_t *idx, float *w, const float *scores, const float *bias, const int32_t *keep, int n,
                           RouteArgs rp) {
    extern __shared__ unsigned char sm[];
    int wi = threadIdx.x / 32, lane = threadIdx.x & 31, t = blockIdx.x * WPB + wi;
    float *sb = (float *)sm + (size_t)wi * rp.E;
    unsigned char *allowed = sm + (size_t)WPB * rp.E * 4 + (size_t)wi * rp.E;
    if (t >= n) return;
    if (keep && !keep[t]) { /* not a token: no expert, no weight (the whole warp leaves together) */
        for (int k = lane; k < rp.K; k += 32) idx[(size_t)t * rp.K + k] = -1, w[(size_t)t * rp.K + k] = 0.f;
        return;
    }
    const float *s = scores + (size_t)t * rp.E;
    for (int e = lane; e < rp.E; e += 32) sb[e] = bias ? s[e] + bias[e] : s[e];
    __syncwarp();
    if (rp.G > 1) {
        if (lane == 0) { /* group scores and the kept groups, sequentially as on the CPU (G is small) */
            float gscore[64];
            unsigned char keep[64], chosen[64];
            for (int g = 0; g < rp.G; g++) {
                const float *v = sb + (size_t)g * rp.gs;
                if (rp.rule == DS_GROUP_MAX) {
                    float m = v[0];
                    for (int i = 1; i < rp.gs; i++) m = v[i] > m ? v[i] : m;
                    gscore[g] = m;
                } else {
                    float a = -INFINITY, b = -INFINITY;
                    for (int i = 0; i < rp.gs; i++) {
                        if (v[i] > a) { b = a; a = v[i]; }
                        else if (v[i] > b) b = v[i];
                    }
                    gscore[g] = rp.gs > 1 ? a + b : a;
                }
                keep[g] = 1;
                chosen[g] = 0;
            }
            for (int r = 0; r < rp.topk_group; r++) {
                int best = -1;
                for (int g = 0; g < rp.G; g++)
                    if (keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
                chosen[best] = 1;
                keep[best] = 0;
            }
            for (int e = 0; e < rp.E; e++) allowed[e] = chosen[e / rp.gs];
        }
    } else {
        for (int e = lane; e < rp.E; e += 32) allowed[e] = 1;
    }
    __syncwarp();
    int32_t *it = idx + (size_t)t * rp.K;
    float *wt = w + (size_t)t * rp.K;
    for (int k = 0; k < rp.K; k++) {
        int e = warp_argmax(sb, allowed, rp.E);
        __syncwarp();
        if (lane == 0) {
            allowed[e] = 0;
            it[k] = e;
        }
        __syncwarp();
    }
    if (lane == 0) {
        float sum = 0.f;
        for (int k = 0; k < rp.K; k++) {
            wt[k] = s[it[k]];
            sum += s[it[k]];
        }
        float f = rp.renorm ? rp.route_scale / (sum + DS_ROUTE_RENORM_EPS) : rp.route_scale;
        for (int k = 0; k < rp.K; k++) wt[k] *= f;
    }
}

static RouteArgs route_args(const ds_route_params *rp) {
    RouteArgs a;
    a.E = rp->n_experts;
    a.K = rp->top_k;
    a.G = (rp->group_rule == DS_GROUP_NONE || rp->n_group <= 1) ? 1 : rp->n_group;
    a.gs = a.E / a.G;
    a.topk_group = rp->topk_group;
    a.rule = rp->group_rule;
    a.renorm = rp->renorm;
    a.route_scale = rp->route_scale;
    return a;
}

void cu_moe_topk(int32_t *idx, float *w, const float *scores, const float *bias, const int32_t *keep, int n,
                 const ds_route_params *rp) {
    if (n <= 0) return;
    RouteArgs a = route_args(rp);
    if (a.G > 64) {
        ds_cuda_ops_note("moe_topk: more than 64 expert groups", cudaErrorInvalidValue);
        return;
    }
    size_t smem = (size_t)WPB * a.E * 5;
    k_moe_topk<<<grid1d(n, WPB), BLK, smem>>>(idx, w, scores, bias, keep, n, a);
    OPS_LAUNCHED("moe_topk");
}

/* dz += J_score(s)^T ds over a warp's token, given u = ds ⊙ s in shared memory (bounded where ds is not:
 * see the CPU's score_bwd) */
__device__ void score_bwd_warp(float *dz, const float *u, const float *s, int E, int softmax) {
    int lane = threadIdx.x & 31;
    if (!softmax) {
        for (int e = lane; e < E; e += 32) dz[e] += u[e] * (1.0f - s[e]);
        return;
    }
    float sum = 0.f;
    for (int e = lane; e < E; e += 32) sum += u[e];
    sum = warp_sum(sum);
    for (int e = lane; e < E; e += 32) dz[e] += u[e] - s[e] * sum;
}

__global__ void k_moe_topk_bwd(float *dlogits, const float *dw, const float *scores, const int32_t *idx, int n,
                               RouteArgs rp, int softmax) {
    extern __shared__ float dsm[];
    int wi = threadIdx.x / 32, lane = threadIdx.x & 31, t = blockIdx.x * WPB + wi;
    if (t >= n) return;
    float *u = dsm + (size_t)wi * rp.E;
    const float *s = scores + (size_t)t * rp.E, *g = dw + (size_t)t * rp.K;
    const int32_t *it = idx + (size_t)t * rp.K;
    if (it[0] < 0) return; /* not routed */
    for (int e = lane; e < rp.E; e += 32) u[e] = 0.f;
    __syncwarp();
    if (lane == 0) {
        if (rp.renorm) { /* as the CPU: u_j = c (g_j - r) (s_j / Z'), Z' = Σ s + eps, r = Σ g s / Z' */
            float Z = 0.f, r = 0.f;
            for (int k = 0; k < rp.K; k++) Z += s[it[k]];
            Z += DS_ROUTE_RENORM_EPS;
            for (int k = 0; k < rp.K; k++) r += g[k] * (s[it[k]] / Z);
            for (int k = 0; k < rp.K; k++) u[it[k]] += rp.route_scale * (g[k] - r) * (s[it[k]] / Z);
        } else {
            for (int k = 0; k < rp.K; k++) u[it[k]] += rp.route_scale * g[k] * s[it[k]];
        }
    }
    __syncwarp();
    score_bwd_warp(dlogits + (size_t)t * rp.E, u, s, rp.E, softmax);
}

void cu_moe_topk_bwd(float *dlogits, const float *dw, const float *scores, const int32_t *idx, int n,
                     const ds_route_params *rp) {
    if (n <= 0) return;
    RouteArgs a = route_args(rp);
    k_moe_topk_bwd<<<grid1d(n, WPB), BLK, (size_t)WPB * a.E * 4>>>(dlogits, dw, scores, idx, n, a,
                                                                    rp->score_fn == DS_SCORE_FN_SOFTMAX);
    OPS_LAUNCHED("moe_topk_bwd");
}

/* ---- balance loss: a block per sequence for f and the loss, then a warp per token for the gradient ---- */

/* f_out [B][E+1]: f_i of each sequence, then its routed token count T_b (as a float, exact below 2^24) */
__global__ void k_balance_loss(float *loss, float *f_out, const float *scores, const int32_t *idx, int T, int E, int K,
                               int sigmoid) {
    extern __shared__ float bsm[];
    int *cnt = (int *)bsm;
    float *f = bsm + E;
    __shared__ double red[BLK / 32];
    __shared__ int routed;
    int b = blockIdx.x;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
    if (threadIdx.x == 0) routed = 0;
    __syncthreads();
    const int32_t *ib = idx + (size_t)b * T * K;
    int mine = 0; /* integer counts: exact; tokens not routed (idx -1) are left out */
    for (int i = threadIdx.x; i < T * K; i += blockDim.x) {
        if (ib[i - i % K] < 0) continue;
        atomicAdd(&cnt[ib[i]], 1);
        mine += i % K == 0;
    }
    atomicAdd(&routed, mine);
    __syncthreads();
    const int Tb = routed;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        f[e] = Tb ? (float)cnt[e] * ((float)E / ((float)K * (float)Tb)) : 0.f;
        f_out[(size_t)b * (E + 1) + e] = f[e];
    }
    if (threadIdx.x == 0) f_out[(size_t)b * (E + 1) + E] = (float)Tb;
    __syncthreads();
    double acc = 0.0;
    for (int t = threadIdx.x; t < T; t += blockDim.x) {
        if (ib[(size_t)t * K] < 0) continue;
        const float *s = scores + ((size_t)b * T + t) * E;
        float z = 0.f, fs = 0.f;
        for (int e = 0; e < E; e++) z += s[e], fs += f[e] * s[e];
        acc += sigmoid ? fs / (z + DS_ROUTE_RENORM_EPS) : fs;
    }
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += red[w];
        loss[b] = Tb ? (float)(s / Tb) : 0.f;
    }
}

__global__ void k_balance_grad(float *dlogits, const float *f, const float *scores, const int32_t *idx, float coef, int B,
                               int T, int E, int K, int softmax) {
    extern __shared__ float gsm[];
    int wi = threadIdx.x / 32, lane = threadIdx.x & 31, tok = blockIdx.x * WPB + wi;
    if (tok >= B * T) return;
    int b = tok / T;
    if (idx[(size_t)tok * K] < 0) return; /* not routed */
    float *g = gsm + (size_t)wi * E;
    const float *s = scores + (size_t)tok * E, *fb = f + (size_t)b * (E + 1);
    for (int e = lane; e < E; e += 32) g[e] = coef * fb[e] / fb[E];
    __syncwarp();
    if (!softmax) { /* as the CPU: u = (g - Σ g s') s', s' = s / (Σ s + eps) */
        float z = 0.f;
        for (int e = lane; e < E; e += 32) z += s[e];
        z = warp_sum(z) + DS_ROUTE_RENORM_EPS;
        float gsp = 0.f;
        for (int e = lane; e < E; e += 32) gsp += g[e] * (s[e] / z);
        gsp = warp_sum(gsp);
        for (int e = lane; e < E; e += 32) g[e] = (g[e] - gsp) * (s[e] / z);
    } else {
        for (int e = lane; e < E; e += 32) g[e] *= s[e];
    }
    __syncwarp();
    score_bwd_warp(dlogits + (size_t)tok * E, g, s, E, softmax);
}

void cu_moe_balance(float *loss, float *dlogits, float coef, const float *scores, const int32_t *idx, int B, int T,
                    const ds_route_params *rp) {
    if (B <= 0 || T <= 0) return;
    int E = rp->n_experts, K = rp->top_k, softmax = rp->score_fn == DS_SCORE_FN_SOFTMAX;
    float *f = (float *)ds_cuda_scratch(SCR_SMALL, sizeof(float) * (size_t)B * (E + 1));
    if (!f) return;
    k_balance_loss<<<B, BLK, (size_t)E * 8>>>(loss, f, scores, idx, T, E, K, !softmax);
    OPS_LAUNCHED("moe_balance loss");
    if (!dlogits) return;
    k_balance_grad<<<grid1d((size_t)B * T, WPB), BLK, (size_t)WPB * E * 4>>>(dlogits, f, scores, idx, coef, B, T, E, K,
                                                                             softmax);
    OPS_LAUNCHED("moe_balance grad");
}

/* ---- token movement ----------------------------------------------------------------------------------- */

__global__ void k_gather(float *dst, const float *src, const int32_t *order, int m, int K, int d) {
    GRID_STRIDE(t, (size_t)m * d) dst[t] = src[(size_t)(order[t / d] / K) * d + t % d];
}
__global__ void k_gather_bwd(float *dsrc, const float *ddst, const int32_t *where, int n, int K, int d) {
    GRID_STRIDE(t, (size_t)n * d) {
        size_t i = t / d, j = t % d;
        float acc = dsrc[t];
        for (int k = 0; k < K; k++)
            if (where[i * K + k] >= 0) acc += ddst[(size_t)where[i * K + k] * d + j]; /* -1: slot left out */
        dsrc[t] = acc;
    }
}
__global__ void k_combine(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d) {
    GRID_STRIDE(t, (size_t)n * d) {
        size_t i = t / d, j = t % d;
        float acc = y[t];
        for (int k = 0; k < K; k++)
            if (where[i * K + k] >= 0) acc += w[i * K + k] * ye[(size_t)where[i * K + k] * d + j];
        y[t] = acc;
    }
}
__global__ void k_scale_rows(float *x, const float *w, const int32_t *order, int m, int d) {
    GRID_STRIDE(t, (size_t)m * d) x[t] *= w[order[t / d]];
}
__global__ void k_combine_bwd(float *dact, float *dw, const float *z, const float *act, const float *w,
                              const int32_t *order, int m, int I) {
    int r = blockIdx.x * WPB + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (r >= m) return;
    const float *zr = z + (size_t)r * I, *ar = act + (size_t)r * I;
    float dot = 0.f;
    for (int j = lane; j < I; j += 32) dot += zr[j] * ar[j];
    dot = warp_sum(dot); /* every lane has read all it needs before dact (maybe == z) is written */
    int o = order[r];
    float a = w[o];
    if (lane == 0) dw[o] = dot;
    float *dr = dact + (size_t)r * I;
    for (int j = lane; j < I; j += 32) dr[j] = a * zr[j];
}

void cu_moe_gather(float *dst, const float *src, const int32_t *order, int m, int K, int d) {
    if (m <= 0) return;
    k_gather<<<gs_grid((size_t)m * d), BLK>>>(dst, src, order, m, K, d);
    OPS_LAUNCHED("moe_gather");
}
void cu_moe_gather_bwd(float *dsrc, const float *ddst, const int32_t *where, int n, int K, int d) {
    if (n <= 0) return;
    k_gather_bwd<<<gs_grid((size_t)n * d), BLK>>>(dsrc, ddst, where, n, K, d);
    OPS_LAUNCHED("moe_gather_bwd");
}
void cu_moe_combine(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d) {
    if (n <= 0) return;
    k_combine<<<gs_grid((size_t)n * d), BLK>>>(y, ye, w, where, n, K, d);
    OPS_LAUNCHED("moe_combine");
}
void cu_moe_scale_rows(float *x, const float *w, const int32_t *order, int m, int d) {
    if (m <= 0) return;
    k_scale_rows<<<gs_grid((size_t)m * d), BLK>>>(x, w, order, m, d);
    OPS_LAUNCHED("moe_scale_rows");
}
void cu_moe_combine_bwd(float *dact, float *dw, const float *z, const float *act, const float *w,
                        const int32_t *order, int m, int I) {
    if (m <= 0) return;
    k_combine_bwd<<<grid1d(m, WPB), BLK>>>(dact, dw, z, act, w, order, m, I);
    OPS_LAUNCHED("moe_combine_bwd");
}
