/* ops_attn.cu — CUDA causal attention with segment masking and per-row logsumexp (the op contract's
 * attn_fwd / attn_bwd), flash-style: no [T, T] tensor is ever stored.
 *
 * A warp owns one query row (forward, dq) or one key row (dk, dv); a block of 8 warps shares tiles of
 * the other side staged in shared memory. Lanes split the head dimensions (up to 256 for q/k and for v);
 * each score is a warp reduction, the softmax is online in fp32. Everything is a fixed-order reduction, so
 * results repeat bit for bit. This is the exact version (CUDA cores, fp32), used with fp32 and TF32 GEMMs;
 * with bf16 GEMMs (the default) the op runs on the tensor cores through ops_attn_tc.cu. */
#include "ops_cuda_internal.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define WARPS 8
#define TILE 32
#define MAXC 8 /* head dims up to 32 * MAXC */

/* start[b*T + i]: first position of i's segment; end[b*T + i]: last. One thread per sequence. */
__global__ void k_segments(int32_t *start, int32_t *end, const int32_t *seg, int B, int T) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const int32_t *s = seg ? seg + (size_t)b * T : nullptr;
    int32_t *st = start + (size_t)b * T, *en = end + (size_t)b * T;
    for (int i = 0; i < T; i++) st[i] = (s && i > 0 && s[i] == s[i - 1]) ? st[i - 1] : (s ? i : 0);
    for (int i = T - 1; i >= 0; i--) en[i] = (s && i < T - 1 && s[i] == s[i + 1]) ? en[i + 1] : (s ? i : T - 1);
}

static size_t ws_layout(int B, int T, int H, int32_t **start, int32_t **end, float **D, void *ws) {
    size_t a = ((size_t)B * T * sizeof(int32_t) + 255) & ~(size_t)255;
    if (ws) {
        *start = (int32_t *)ws;
        *end = (int32_t *)((char *)ws + a);
        *D = (float *)((char *)ws + 2 * a);
    }
    return 2 * a + (size_t)B * T * H * sizeof(float);
}

size_t cu_attn_ws_bytes(int B, int T, int H, int dqk, int dv) {
    return ws_layout(B, T, H, nullptr, nullptr, nullptr, nullptr);
}

/* rows r0.. of x (row stride ld floats, `dim` wide) into smem tile [TILE][dim] */
__device__ __forceinline__ void load_tile(float *tile, const float *x, size_t ld, int r0, int rows, int dim) {
    for (int t = threadIdx.x; t < TILE * dim; t += blockDim.x) {
        int r = t / dim, c = t % dim;
        tile[t] = r < rows ? x[(size_t)(r0 + r) * ld + c] : 0.f;
    }
}

__global__ void k_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *start,
                           int T, int H, int dqk, int dv, float scale) {
    extern __shared__ float sm[];
    float *ks = sm, *vs = sm + TILE * dqk;
    const int b = blockIdx.y / H, h = blockIdx.y % H, w = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int i0 = blockIdx.x * WARPS, i = i0 + w;
    const bool live = i < T;
    const size_t ldq = (size_t)H * dqk, ldv = (size_t)H * dv, row0 = (size_t)b * T;
    const float *kh = k + row0 * ldq + (size_t)h * dqk, *vh = v + row0 * ldv + (size_t)h * dv;
    float qr[MAXC], acc[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        int d = lane + 32 * c;
        qr[c] = live && d < dqk ? q[(row0 + i) * ldq + (size_t)h * dqk + d] : 0.f;
        acc[c] = 0.f;
    }
    const int st = live ? start[row0 + i] : 0;
    const int lo = start[row0 + i0], hi = min(i0 + WARPS - 1, T - 1);
    float m = -INFINITY, l = 0.f;
    for (int t0 = lo; t0 <= hi; t0 += TILE) {
        int rows = min(TILE, hi - t0 + 1);
        __syncthreads();
        load_tile(ks, kh, ldq, t0, rows, dqk);
        load_tile(vs, vh, ldv, t0, rows, dv);
        __syncthreads();
        if (!live) continue;
        int r_lo = max(0, st - t0), r_hi = min(rows - 1, i - t0);
        for (int r = r_lo; r <= r_hi; r++) {
            float s = 0.f;
#pragma unroll
            for (int c = 0; c < MAXC; c++)
                if (lane + 32 * c < dqk) s += qr[c] * ks[r * dqk + lane + 32 * c];
            s = warp_sum(s) * scale;
            float mn = fmaxf(m, s);
            float corr = m == -INFINITY ? 0.f : expf(m - mn), p = expf(s - mn);
            l = l * corr + p;
#pragma unroll
            for (int c = 0; c < MAXC; c++)
                if (lane + 32 * c < dv) acc[c] = acc[c] * corr + p * vs[r * dv + lane + 32 * c];
            m = mn;
        }
    }
    if (!live) return;
    float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < MAXC; c++)
        if (lane + 32 * c < dv) o[(row0 + i) * ldv + (size_t)h * dv + lane + 32 * c] = acc[c] * inv;
    if (lane == 0) lse[(row0 + i) * H + h] = m + logf(l);
}

static void raise_smem();

void cu_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg, int B, int T,
                 int H, int dqk, int dv, float scale, void *ws) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    if (dqk > 32 * MAXC || dv > 32 * MAXC) {
        ds_cuda_ops_note("attention: head dims above 256", cudaErrorInvalidValue);
        return;
    }
    int32_t *start = nullptr, *end = nullptr;
    float *D = nullptr;
    ws_layout(B, T, H, &start, &end, &D, ws);
    k_segments<<<grid1d(B, 64), 64>>>(start, end, seg, B, T);
    if (ds_ops_cuda_gemm() == DS_CUDA_GEMM_BF16 && cu_attn_tc_fits(T, dqk, dv)) {
        cu_attn_fwd_tc(o, lse, q, k, v, start, B, T, H, dqk, dv, scale);
        return;
    }
    size_t smem = (size_t)TILE * (dqk + dv) * sizeof(float);
    raise_smem();
    k_attn_fwd<<<dim3(grid1d(T, WARPS), B * H), WARPS * 32, smem>>>(o, lse, q, k, v, start, T, H, dqk, dv, scale);
    OPS_LAUNCHED("attn_fwd");
}

/* D[row, h] = dO · O */
__global__ void k_attn_D(float *D, const float *dout, const float *o, int n, int H, int dv) {
    int t = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (t >= n * H) return;
    const float *a = dout + (size_t)t * dv, *b = o + (size_t)t * dv;
    float s = 0.f;
    for (int c = lane; c < dv; c += 32) s += a[c] * b[c];
    s = warp_sum(s);
    if (lane == 0) D[t] = s;
}

/* dq: a warp per query row, key tiles in shared memory */
__global__ void k_attn_dq(float *dq, const float *dout, const float *q, const float *k, const float *v,
                          const float *lse, const float *D, const int32_t *start, int T, int H, int dqk, int dv,
                          float scale) {
    extern __shared__ float sm[];
    float *ks = sm, *vs = sm + TILE * dqk;
    const int b = blockIdx.y / H, h = blockIdx.y % H, w = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int i0 = blockIdx.x * WARPS, i = i0 + w;
    const bool live = i < T;
    const size_t ldq = (size_t)H * dqk, ldv = (size_t)H * dv, row0 = (size_t)b * T;
    const float *kh = k + row0 * ldq + (size_t)h * dqk, *vh = v + row0 * ldv + (size_t)h * dv;
    float qr[MAXC], dor[MAXC], g[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        int d = lane + 32 * c;
        qr[c] = live && d < dqk ? q[(row0 + i) * ldq + (size_t)h * dqk + d] : 0.f;
        dor[c] = live && d < dv ? dout[(row0 + i) * ldv + (size_t)h * dv + d] : 0.f;
        g[c] = 0.f;
    }
    const float L = live ? lse[(row0 + i) * H + h] : 0.f, Di = live ? D[(row0 + i) * H + h] : 0.f;
    const int st = live ? start[row0 + i] : 0;
    const int lo = start[row0 + i0], hi = min(i0 + WARPS - 1, T - 1);
    for (int t0 = lo; t0 <= hi; t0 += TILE) {
        int rows = min(TILE, hi - t0 + 1);
        __syncthreads();
        load_tile(ks, kh, ldq, t0, rows, dqk);
        load_tile(vs, vh, ldv, t0, rows, dv);
        __syncthreads();
        if (!live) continue;
        int r_lo = max(0, st - t0), r_hi = min(rows - 1, i - t0);
        for (int r = r_lo; r <= r_hi; r++) {
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int c = 0; c < MAXC; c++) {
                if (lane + 32 * c < dqk) s += qr[c] * ks[r * dqk + lane + 32 * c];
                if (lane + 32 * c < dv) dp += dor[c] * vs[r * dv + lane + 32 * c];
            }
            s = warp_sum(s) * scale;
            dp = warp_sum(dp);
            float ds = expf(s - L) * (dp - Di) * scale;
#pragma unroll
            for (int c = 0; c < MAXC; c++)
                if (lane + 32 * c < dqk) g[c] += ds * ks[r * dqk + lane + 32 * c];
        }
    }
    if (!live) return;
#pragma unroll
    for (int c = 0; c < MAXC; c++)
        if (lane + 32 * c < dqk) dq[(row0 + i) * ldq + (size_t)h * dqk + lane + 32 * c] = g[c];
}

/* dk, dv: a warp per key row, query tiles (q, dO, lse, D) in shared memory */
__global__ void k_attn_dkdv(float *dk, float *dvo, const float *dout, const float *q, const float *k, const float *v,
                            const float *lse, const float *D, const int32_t *end, int T, int H, int dqk, int dv,
                            float scale) {
    extern __shared__ float sm[];
    float *qs = sm, *ds_ = sm + TILE * dqk, *ls = ds_ + TILE * dv, *Ds = ls + TILE;
    const int b = blockIdx.y / H, h = blockIdx.y % H, w = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int j0 = blockIdx.x * WARPS, j = j0 + w;
    const bool live = j < T;
    const size_t ldq = (size_t)H * dqk, ldv = (size_t)H * dv, row0 = (size_t)b * T;
    const float *qh = q + row0 * ldq + (size_t)h * dqk, *doh = dout + row0 * ldv + (size_t)h * dv;
    float kr[MAXC], vr[MAXC], gk[MAXC], gv[MAXC];
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        int d = lane + 32 * c;
        kr[c] = live && d < dqk ? k[(row0 + j) * ldq + (size_t)h * dqk + d] : 0.f;
        vr[c] = live && d < dv ? v[(row0 + j) * ldv + (size_t)h * dv + d] : 0.f;
        gk[c] = gv[c] = 0.f;
    }
    const int en = live ? end[row0 + j] : 0;
    int hi = 0;
    for (int x = 0; x < WARPS && j0 + x < T; x++) hi = max(hi, end[row0 + j0 + x]);
    for (int t0 = j0; t0 <= hi; t0 += TILE) {
        int rows = min(TILE, hi - t0 + 1);
        __syncthreads();
        load_tile(qs, qh, ldq, t0, rows, dqk);
        load_tile(ds_, doh, ldv, t0, rows, dv);
        for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
            ls[r] = r < rows ? lse[(row0 + t0 + r) * H + h] : 0.f;
            Ds[r] = r < rows ? D[(row0 + t0 + r) * H + h] : 0.f;
        }
        __syncthreads();
        if (!live) continue;
        int r_lo = max(0, j - t0), r_hi = min(rows - 1, en - t0);
        for (int r = r_lo; r <= r_hi; r++) {
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int c = 0; c < MAXC; c++) {
                if (lane + 32 * c < dqk) s += kr[c] * qs[r * dqk + lane + 32 * c];
                if (lane + 32 * c < dv) dp += vr[c] * ds_[r * dv + lane + 32 * c];
            }
            s = warp_sum(s) * scale;
            dp = warp_sum(dp);
            float p = expf(s - ls[r]), dsv = p * (dp - Ds[r]) * scale;
#pragma unroll
            for (int c = 0; c < MAXC; c++) {
                if (lane + 32 * c < dqk) gk[c] += dsv * qs[r * dqk + lane + 32 * c];
                if (lane + 32 * c < dv) gv[c] += p * ds_[r * dv + lane + 32 * c];
            }
        }
    }
    if (!live) return;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        if (lane + 32 * c < dqk) dk[(row0 + j) * ldq + (size_t)h * dqk + lane + 32 * c] = gk[c];
        if (lane + 32 * c < dv) dvo[(row0 + j) * ldv + (size_t)h * dv + lane + 32 * c] = gv[c];
    }
}

/* tiles of head dims up to 256 need more than the default 48 KB of shared memory */
static void raise_smem() {
    static bool done = false;
    if (done) return;
    int bytes = TILE * (2 * 32 * MAXC + 2) * sizeof(float);
    cudaFuncSetAttribute(k_attn_fwd, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    cudaFuncSetAttribute(k_attn_dq, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    cudaFuncSetAttribute(k_attn_dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    done = true;
}

void cu_attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                 const float *o, const float *lse, const int32_t *seg, int B, int T, int H, int dqk, int dv_dim,
                 float scale, void *ws) {
    if (B <= 0 || T <= 0 || H <= 0) return;
    if (dqk > 32 * MAXC || dv_dim > 32 * MAXC) {
        ds_cuda_ops_note("attention: head dims above 256", cudaErrorInvalidValue);
        return;
    }
    int32_t *start = nullptr, *end = nullptr;
    float *D = nullptr;
    ws_layout(B, T, H, &start, &end, &D, ws);
    k_segments<<<grid1d(B, 64), 64>>>(start, end, seg, B, T);
    k_attn_D<<<grid1d((size_t)B * T * H, WARPS), WARPS * 32>>>(D, dout, o, B * T, H, dv_dim);
    if (ds_ops_cuda_gemm() == DS_CUDA_GEMM_BF16 && cu_attn_tc_fits(T, dqk, dv_dim)) {
        cu_attn_bwd_tc(dq, dk, dv, dout, q, k, v, lse, D, start, B, T, H, dqk, dv_dim, scale);
        return;
    }
    size_t smem = (size_t)TILE * (dqk + dv_dim) * sizeof(float);
    raise_smem();
    dim3 grid(grid1d(T, WARPS), B * H);
    k_attn_dq<<<grid, WARPS * 32, smem>>>(dq, dout, q, k, v, lse, D, start, T, H, dqk, dv_dim, scale);
    k_attn_dkdv<<<grid, WARPS * 32, smem + 2 * TILE * sizeof(float)>>>(dk, dv, dout, q, k, v, lse, D, end, T, H, dqk,
                                                                        dv_dim, scale);
    OPS_LAUNCHED("attn_bwd");
}
