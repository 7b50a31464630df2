/* ops_attn_tc.cu — causal attention with segment masks on the tensor cores (the op contract's attn_fwd /
 * attn_bwd when the backend's GEMMs run in bf16, the default).
 *
 * Per (sequence, head) the scores are a [T, T] matrix built by cuBLASLt from bf16 copies of q and k (fp32
 * accumulation), masked and normalised row by row in fp32 (the per-row logsumexp is the contract's lse),
 * and the products with the probabilities (rounded to bf16, as flash attention does) run on the tensor
 * cores too. The backward recomputes the scores, forms dS = P (dP - D) in fp32 and rounds it to bf16 for
 * its two GEMMs (dq = scale dS k, dk = scale dS^T q; dv = P^T dO). The [T, T] matrices live only inside one
 * call, in backend scratch, one head at a time (12 bytes per score element: fp32 S and dP, bf16 P): nothing
 * is kept between forward and backward, as the contract asks. No atomics: results repeat bit for bit.
 * Past T = 8192 (768 MB of scratch) the exact flash kernel of ops_attn.cu takes over.
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

/* Forward, one block per query row i of one (b, h): keys j in [start_i, i] are visible. P row (bf16,
 * zeros where masked, so the next GEMM can run over all T keys) and lse. */
__global__ void k_softmax_rows(__nv_bfloat16 *P, float *lse, const float *S, const int32_t *start, int T, int H,
                               int b, int h) {
    __shared__ float sh[ROW_THREADS / 32];
    const int i = blockIdx.x;
    const float *s = S + (size_t)i * T;
    const int j0 = start[(size_t)b * T + i];
    float m = -INFINITY;
    for (int j = j0 + threadIdx.x; j <= i; j += ROW_THREADS) m = fmaxf(m, s[j]);
    m = block_reduce(m, true, sh);
    float l = 0.f;
    for (int j = j0 + threadIdx.x; j <= i; j += ROW_THREADS) l += expf(s[j] - m);
    l = block_reduce(l, false, sh);
    const float ls = m + logf(l);
    __nv_bfloat16 *p = P + (size_t)i * T;
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        p[j] = __float2bfloat16_rn(j >= j0 && j <= i ? expf(s[j] - ls) : 0.f);
    if (threadIdx.x == 0) lse[((size_t)b * T + i) * H + h] = ls;
}

/* Backward, the probabilities again from the recomputed scores and the forward's lse. */
__global__ void k_probs(__nv_bfloat16 *P, const float *S, const float *lse, const int32_t *start, int T, int H, int b,
                        int h) {
    const int i = blockIdx.x, j0 = start[(size_t)b * T + i];
    const float ls = lse[((size_t)b * T + i) * H + h];
    const float *s = S + (size_t)i * T;
    __nv_bfloat16 *p = P + (size_t)i * T;
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        p[j] = __float2bfloat16_rn(j >= j0 && j <= i ? expf(s[j] - ls) : 0.f);
}

/* dS[i, j] = P_ij (dP_ij - D_i), P in fp32 from S and lse; rounded to bf16 for the GEMMs. */
__global__ void k_dscores(__nv_bfloat16 *dS, const float *S, const float *dP, const float *lse, const float *D,
                          const int32_t *start, int T, int H, int b, int h) {
    const int i = blockIdx.x, j0 = start[(size_t)b * T + i];
    const size_t row = (size_t)b * T + i;
    const float ls = lse[row * H + h], d = D[row * H + h];
    const float *s = S + (size_t)i * T, *dp = dP + (size_t)i * T;
    __nv_bfloat16 *o = dS + (size_t)i * T;
    for (int j = threadIdx.x; j < T; j += ROW_THREADS)
        o[j] = __float2bfloat16_rn(j >= j0 && j <= i ? expf(s[j] - ls) * (dp[j] - d) : 0.f);
}

/* Row-major [B*T, H, d] fp32 -> the same layout in bf16 (scratch slot). */
static const __nv_bfloat16 *bf16_copy(int slot, const float *x, int B, int T, int H, int d) {
    return ds_cuda_to_bf16(slot, x, 1, B * T * H, d, d, 0);
}

static float *scratch_f32(int slot, size_t n) { return (float *)ds_cuda_scratch(slot, n * sizeof(float)); }

void cu_attn_fwd_tc(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *start, int B,
                    int T, int H, int dqk, int dv, float scale) {
    const __nv_bfloat16 *qh = bf16_copy(SCR_ATT_Q, q, B, T, H, dqk), *kh = bf16_copy(SCR_ATT_K, k, B, T, H, dqk),
                        *vh = bf16_copy(SCR_ATT_V, v, B, T, H, dv);
    float *S = scratch_f32(SCR_ATT_S, (size_t)T * T);
    __nv_bfloat16 *P = (__nv_bfloat16 *)ds_cuda_scratch(SCR_ATT_P, (size_t)T * T * sizeof(__nv_bfloat16));
    if (!qh || !kh || !vh || !S || !P) return; /* noted */
    const int ldq = H * dqk, ldv = H * dv;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const size_t oq = (size_t)b * T * ldq + (size_t)h * dqk, ov = (size_t)b * T * ldv + (size_t)h * dv;
            ds_cuda_gemm_bf16(0, 1, T, T, dqk, scale, qh + oq, ldq, kh + oq, ldq, 0.f, S, T);
            k_softmax_rows<<<T, ROW_THREADS>>>(P, lse, S, start, T, H, b, h);
            OPS_LAUNCHED("attention softmax");
            ds_cuda_gemm_bf16(0, 0, T, dv, T, 1.f, P, T, vh + ov, ldv, 0.f, o + ov, ldv);
        }
}

void cu_attn_bwd_tc(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                    const float *lse, const float *D, const int32_t *start, int B, int T, int H, int dqk, int dv_dim,
                    float scale) {
    const __nv_bfloat16 *qh = bf16_copy(SCR_ATT_Q, q, B, T, H, dqk), *kh = bf16_copy(SCR_ATT_K, k, B, T, H, dqk),
                        *vh = bf16_copy(SCR_ATT_V, v, B, T, H, dv_dim),
                        *doh = bf16_copy(SCR_ATT_DO, dout, B, T, H, dv_dim);
    float *S = scratch_f32(SCR_ATT_S, (size_t)T * T), *dP = scratch_f32(SCR_ATT_DP, (size_t)T * T);
    __nv_bfloat16 *P = (__nv_bfloat16 *)ds_cuda_scratch(SCR_ATT_P, (size_t)T * T * sizeof(__nv_bfloat16));
    if (!qh || !kh || !vh || !doh || !S || !dP || !P) return; /* noted */
    const int ldq = H * dqk, ldv = H * dv_dim;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const size_t oq = (size_t)b * T * ldq + (size_t)h * dqk, ov = (size_t)b * T * ldv + (size_t)h * dv_dim;
            ds_cuda_gemm_bf16(0, 1, T, T, dqk, scale, qh + oq, ldq, kh + oq, ldq, 0.f, S, T);
            k_probs<<<T, ROW_THREADS>>>(P, S, lse, start, T, H, b, h);
            OPS_LAUNCHED("attention probabilities");
            ds_cuda_gemm_bf16(1, 0, T, dv_dim, T, 1.f, P, T, doh + ov, ldv, 0.f, dv + ov, ldv); /* dv = P^T dO */
            ds_cuda_gemm_bf16(0, 1, T, T, dv_dim, 1.f, doh + ov, ldv, vh + ov, ldv, 0.f, dP, T);  /* dP = dO v^T */
            k_dscores<<<T, ROW_THREADS>>>(P, S, dP, lse, D, start, T, H, b, h); /* P's buffer now holds dS */
            OPS_LAUNCHED("attention score gradients");
            ds_cuda_gemm_bf16(0, 0, T, dqk, T, scale, P, T, kh + oq, ldq, 0.f, dq + oq, ldq); /* dq = scale dS k */
            ds_cuda_gemm_bf16(1, 0, T, dqk, T, scale, P, T, qh + oq, ldq, 0.f, dk + oq, ldq); /* dk = scale dS^T q */
        }
}
