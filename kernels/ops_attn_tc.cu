/* ops_attn_tc.cu — causal attention with segment masks on the tensor cores (the op contract's attn_fwd /
 * attn_bwd when the backend's GEMMs run in bf16, the default).
 *
 * Per (sequence, head) the scores are a [T, T] matrix built by cuBLASLt from bf16 copies of q and k (fp32
 * accumulation), masked and normalised row by row in fp32 (the per-row logsumexp is the contract's lse),
 * and the products with the probabilities (rounded to bf16, as flash attention does) run on the tensor
 * cores too. The backward recomputes the scores, forms dS = P (dP - D) in fp32 and rounds it to bf16 for
 * its two GEMMs (dq = scale dS k, dk = scale dS^T q; dv = P^T dO). Heads go in chunks, each GEMM one strided
 * batched cuBLASLt call over the chunk's heads (one by one if cuBLASLt refuses the batch), so a call costs
 * ~7 launches per chunk rather than per head. The [T, T] matrices live only inside one call, in backend
 * scratch (10 bytes per score element and head of a chunk: fp32 S and dP, bf16 P; chunks sized to 512 MB):
 * nothing is kept between forward and backward, as the contract asks. No atomics: results repeat bit for
 * bit. Past T = 8192 the exact flash kernel of ops_attn.cu takes over.
 * Numerics: those of bf16 autocast attention (PyTorch's SDPA in bf16): ~3e-3 relative.
 */
#include "ops_cuda_internal.cuh"

#include <math.h>

enum { ROW_THREADS = 256, TC_MAX_T = 8192 };

bool cu_attn_tc_fits(int T, int dqk, int dv) { return T <= TC_MAX_T && dqk > 0 && dv > 0; }

__device__ __forceinline__ float block_reduce(float v, bool is_max, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = is_max ? warp_max_f(v) : warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous reduction */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float r = sh[0];
    for (int w = 1; w < ROW_THREADS / 32; w++) r = is_max ? fmaxf(r, sh[w]) : r + sh[w];
    return r;
}

/* Forward, one block per (query row i, head h0 + blockIdx.y) of sequence b: keys j in [start_i, i] are
 * visible. The P row (bf16, zeros where masked, so the next GEMM can run over all T keys) and lse. */
__global__ void k_softmax_rows(__nv_bfloat16 *P, float *lse, const float *S, const int32_t *start, int T, int H,
                               int b, int h0) {
    __shared__ float sh[ROW_THREADS / 32];
    const int i = blockIdx.x, h = h0 + blockIdx.y;
    const size_t base = ((size_t)blockIdx.y * T + i) * T;
    const float *s = S + base;
    const int j0 = start[(size_t)b * T + i];
    float m = -INFINITY;
    for (int j = j0 + threadIdx.x; j <= i; j += ROW_THREADS) m = fmaxf(m, s[j]);
    m = block_reduce(m, true, sh);
    float l = 0.f;
    for (int j = j0 + threadIdx.x; j <= i; j += ROW_THREADS) l += expf(s[j] - m);
    l = block_reduce(l, false, sh);
    const float ls = m + logf(l);
    __nv_bfloat16 *p = P + base;
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        p[j] = __float2bfloat16_rn(j >= j0 && j <= i ? expf(s[j] - ls) : 0.f);
    if (threadIdx.x == 0) lse[((size_t)b * T + i) * H + h] = ls;
}

/* Backward, the probabilities again from the recomputed scores and the forward's lse. */
__global__ void k_probs(__nv_bfloat16 *P, const float *S, const float *lse, const int32_t *start, int T, int H, int b,
                        int h0) {
    const int i = blockIdx.x, h = h0 + blockIdx.y, j0 = start[(size_t)b * T + i];
    const size_t base = ((size_t)blockIdx.y * T + i) * T;
    const float ls = lse[((size_t)b * T + i) * H + h];
    const float *s = S + base;
    __nv_bfloat16 *p = P + base;
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        p[j] = __float2bfloat16_rn(j >= j0 && j <= i ? expf(s[j] - ls) : 0.f);
}

/* dS[i, j] = P_ij (dP_ij - D_i), P in fp32 from S and lse; rounded to bf16 for the GEMMs. */
__global__ void k_dscores(__nv_bfloat16 *dS, const float *S, const float *dP, const float *lse, const float *D,
                          const int32_t *start, int T, int H, int b, int h0) {
    const int i = blockIdx.x, h = h0 + blockIdx.y, j0 = start[(size_t)b * T + i];
    const size_t base = ((size_t)blockIdx.y * T + i) * T, row = (size_t)b * T + i;
    const float ls = lse[row * H + h], d = D[row * H + h];
    const float *s = S + base, *dp = dP + base;
    __nv_bfloat16 *o = dS + base;
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        o[j] = __float2bfloat16_rn(j >= j0 && j <= i ? expf(s[j] - ls) * (dp[j] - d) : 0.f);
}

/* Row-major [B*T, H, d] fp32 -> the same layout in bf16 (scratch slot). */
static const __nv_bfloat16 *bf16_copy(int slot, const float *x, int B, int T, int H, int d) {
    return ds_cuda_to_bf16(slot, x, 1, B * T * H, d, d, 0);
}

/* Heads per chunk: 10 bytes per score element and head (backward: S, dP, P), at most 512 MB. */
static int head_chunk(int T, int H) {
    size_t per = (size_t)T * T * 10, hc = ((size_t)512 << 20) / per;
    return hc < 1 ? 1 : hc > (size_t)H ? H : (int)hc;
}

/* One product per head of the chunk: head i's operands at A + i*sa, B + i*sb, C + i*sc. */
static void heads_gemm(int ta, int tb, int M, int N, int K, float alpha, const __nv_bfloat16 *A, int lda, long long sa,
                       const __nv_bfloat16 *B, int ldb, long long sb, float *C, int ldc, long long sc, int n) {
    if (n > 1 && ds_cuda_gemm_bf16_batched(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, 0.f, C, ldc, sc, n)) return;
    for (int i = 0; i < n; i++)
        ds_cuda_gemm_bf16(ta, tb, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, 0.f, C + i * sc, ldc);
}

void cu_attn_fwd_tc(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *start, int B,
                    int T, int H, int dqk, int dv, float scale) {
    const int hc = head_chunk(T, H);
    const size_t TT = (size_t)T * T;
    const __nv_bfloat16 *qh = bf16_copy(SCR_ATT_Q, q, B, T, H, dqk), *kh = bf16_copy(SCR_ATT_K, k, B, T, H, dqk),
                        *vh = bf16_copy(SCR_ATT_V, v, B, T, H, dv);
    float *S = (float *)ds_cuda_scratch(SCR_ATT_S, hc * TT * sizeof(float));
    __nv_bfloat16 *P = (__nv_bfloat16 *)ds_cuda_scratch(SCR_ATT_P, hc * TT * sizeof(__nv_bfloat16));
    if (!qh || !kh || !vh || !S || !P) return; /* noted */
    const int ldq = H * dqk, ldv = H * dv;
    for (int b = 0; b < B; b++)
        for (int h0 = 0; h0 < H; h0 += hc) {
            const int n = H - h0 < hc ? H - h0 : hc;
            const size_t oq = (size_t)b * T * ldq + (size_t)h0 * dqk, ov = (size_t)b * T * ldv + (size_t)h0 * dv;
            heads_gemm(0, 1, T, T, dqk, scale, qh + oq, ldq, dqk, kh + oq, ldq, dqk, S, T, TT, n);
            k_softmax_rows<<<dim3(T, n), ROW_THREADS>>>(P, lse, S, start, T, H, b, h0);
            OPS_LAUNCHED("attention softmax");
            heads_gemm(0, 0, T, dv, T, 1.f, P, T, TT, vh + ov, ldv, dv, o + ov, ldv, dv, n);
        }
}

void cu_attn_bwd_tc(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                    const float *lse, const float *D, const int32_t *start, int B, int T, int H, int dqk, int dv_dim,
                    float scale) {
    const int hc = head_chunk(T, H);
    const size_t TT = (size_t)T * T;
    const __nv_bfloat16 *qh = bf16_copy(SCR_ATT_Q, q, B, T, H, dqk), *kh = bf16_copy(SCR_ATT_K, k, B, T, H, dqk),
                        *vh = bf16_copy(SCR_ATT_V, v, B, T, H, dv_dim),
                        *doh = bf16_copy(SCR_ATT_DO, dout, B, T, H, dv_dim);
    float *S = (float *)ds_cuda_scratch(SCR_ATT_S, hc * TT * sizeof(float)),
          *dP = (float *)ds_cuda_scratch(SCR_ATT_DP, hc * TT * sizeof(float));
    __nv_bfloat16 *P = (__nv_bfloat16 *)ds_cuda_scratch(SCR_ATT_P, hc * TT * sizeof(__nv_bfloat16));
    if (!qh || !kh || !vh || !doh || !S || !dP || !P) return; /* noted */
    const int ldq = H * dqk, ldv = H * dv_dim;
    for (int b = 0; b < B; b++)
        for (int h0 = 0; h0 < H; h0 += hc) {
            const int n = H - h0 < hc ? H - h0 : hc;
            const size_t oq = (size_t)b * T * ldq + (size_t)h0 * dqk, ov = (size_t)b * T * ldv + (size_t)h0 * dv_dim;
            heads_gemm(0, 1, T, T, dqk, scale, qh + oq, ldq, dqk, kh + oq, ldq, dqk, S, T, TT, n);
            k_probs<<<dim3(T, n), ROW_THREADS>>>(P, S, lse, start, T, H, b, h0);
            OPS_LAUNCHED("attention probabilities");
            heads_gemm(1, 0, T, dv_dim, T, 1.f, P, T, TT, doh + ov, ldv, dv_dim, dv + ov, ldv, dv_dim, n); /* P^T dO */
            heads_gemm(0, 1, T, T, dv_dim, 1.f, doh + ov, ldv, dv_dim, vh + ov, ldv, dv_dim, dP, T, TT, n); /* dO v^T */
            k_dscores<<<dim3(T, n), ROW_THREADS>>>(P, S, dP, lse, D, start, T, H, b, h0); /* P's buffer: dS */
            OPS_LAUNCHED("attention score gradients");
            heads_gemm(0, 0, T, dqk, T, scale, P, T, TT, kh + oq, ldq, dqk, dq + oq, ldq, dqk, n); /* scale dS k */
            heads_gemm(1, 0, T, dqk, T, scale, P, T, TT, qh + oq, ldq, dqk, dk + oq, ldq, dqk, n); /* scale dS^T q */
        }
}
