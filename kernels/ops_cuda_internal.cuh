/* ops_cuda_internal.cuh — pieces shared by the CUDA op files (C++ only, not part of the op contract).
 *
 * Owns: the declarations of the op implementations that kernels/ops_cuda.cu puts in the table, the sticky
 * error those void functions report through (ds_cuda_ops_note), grow-only scratch buffers (one per slot,
 * so ops never allocate once sizes have been seen), and launch geometry helpers.
 */
#ifndef DS_KERNELS_OPS_CUDA_INTERNAL_CUH
#define DS_KERNELS_OPS_CUDA_INTERNAL_CUH

#include "cuda_check.cuh"

extern "C" {
#include "ops/ops.h"
}

/* Record the first failure (what, plus the CUDA error) for ds_ops_cuda_status. */
void ds_cuda_ops_note(const char *what, cudaError_t e);
/* Check the last launch; record a failure. */
#define OPS_LAUNCHED(what)                                                                             \
    do {                                                                                               \
        cudaError_t ops_e_ = cudaGetLastError();                                                       \
        if (ops_e_ != cudaSuccess) ds_cuda_ops_note(what, ops_e_);                                     \
    } while (0)

/* Scratch buffer `slot` of at least `bytes` (grown with cudaMalloc when needed; NULL on failure, noted). */
enum {
    SCR_GEMM_A = 0, SCR_GEMM_B, SCR_PARTIAL, SCR_SORT_KEYS, SCR_SORT_VALS, SCR_SORT_TMP, SCR_SORT_KEYS2,
    SCR_SORT_VALS2, SCR_SMALL, SCR_MLA, SCR_ATT_Q, SCR_ATT_K, SCR_ATT_V, SCR_ATT_DO, SCR_ATT_S, SCR_ATT_DP,
    SCR_ATT_P, SCR_FP8_AQ, SCR_FP8_AS, SCR_FP8_Y, SCR_COUNT
};
void *ds_cuda_scratch(int slot, size_t bytes);

/* The backend's cuBLASLt handle (on the legacy default stream), for GEMMs outside this table: the
 * FP8-resident Linear products (kernels/fp8_resident.cu). NULL before ds_ops_cuda() succeeded. */
struct ds_blaslt *ds_cuda_blaslt(void);

/* A write through the table's copy ops landed at dst: a bf16 shadow of a parameter buffer holding dst is
 * stale (ops_cuda.cu keeps the shadows; see params_changed in ops/ops.h). */
void ds_cuda_params_touched(const void *dst);

/* The GEMM family's pieces for other op files (ops_cuda.cu): packed bf16 copies of `groups` [rows, cols]
 * matrices into scratch `slot` (NULL on failure, noted), and C = alpha op(A) op(B) + beta C on bf16
 * operands with an fp32 C, through cuBLASLt (row-major, ops.h's convention). */
const __nv_bfloat16 *ds_cuda_to_bf16(int slot, const float *src, int groups, int rows, int cols, int lds, size_t stride);
void ds_cuda_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const __nv_bfloat16 *A, int lda,
                       const __nv_bfloat16 *B, int ldb, float beta, float *C, int ldc);
/* `batch` products, operand i at A + i*sa, B + i*sb, C + i*sc (elements); false (nothing noted) when
 * cuBLASLt takes no such problem, so the caller can run them one by one. */
bool ds_cuda_gemm_bf16_batched(int ta, int tb, int M, int N, int K, float alpha, const __nv_bfloat16 *A, int lda,
                               long long sa, const __nv_bfloat16 *B, int ldb, long long sb, float beta, float *C,
                               int ldc, long long sc, int batch);

/* The bf16 copy of a parameter buffer at p (rebuilt first when stale), or NULL when p lies in no announced
 * buffer (see params_changed in ops/ops.h). */
const __nv_bfloat16 *ds_cuda_shadow_of(const float *p);

/* grouped expert GEMMs with device offsets (grouped_gemm.cu) */
void cu_gemm_rows_dev(int ng, const int32_t *off, int max_rows, int tb, int N, int K, float alpha, const float *A,
                      int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc);
void cu_gemm_wgrad_dev(int ng, const int32_t *off, int M, int N, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, size_t strideC, int ldc);

static inline unsigned grid1d(size_t n, int block) { return (unsigned)((n + block - 1) / block); }

/* elementwise, norms, RoPE, SwiGLU, embedding, log-softmax, MLA assembly (ops_elem.cu) */
void cu_add(float *y, const float *a, const float *b, size_t n);
void cu_axpy(float *y, float alpha, const float *x, size_t n);
void cu_scale(float *y, float alpha, size_t n);
void cu_copy2d(float *dst, int ldd, const float *src, int lds, int rows, int cols);
/* round_bf16 (round_bf16.cu) */
void cu_round_bf16(float *x, int64_t ld, int64_t rows, int64_t cols);
void cu_rmsnorm_fwd(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d, float eps);
void cu_rmsnorm_bwd(float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx, const float *w,
                    const float *rstd, int n, int d);
void cu_rope_table(float *cs, const int32_t *pos, int n, const float *inv_freq, int half, float mscale);
void cu_rope(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved, const float *cs,
             int inverse);
void cu_swiglu_fwd(float *h, const float *g, const float *u, size_t n);
void cu_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);
void cu_embed_fwd(float *x, const float *table, const int32_t *tok, int n, int d);
void cu_logsoftmax_fwd(float *logp, float *lse, float *ent, const float *logits, const int32_t *tgt, int n, int V);
void cu_logsoftmax_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *tgt, const float *dlogp,
                       int n, int V);
void cu_mla_kv_expand(float *k, float *v, const float *kvb, const float *kpe, int ld_kpe, int n, int H, int dn, int dr,
                      int dv);
void cu_mla_kv_expand_bwd(float *dkvb, float *dkpe, int ld_dkpe, const float *dk, const float *dv, int n, int H,
                          int dn, int dr, int dv_dim);

/* sorting-based ops (ops_sort.cu) */
void cu_embed_bwd(float *dtable, const float *dx, const int32_t *tok, int n, int d);
void cu_moe_bucket(int32_t *off, int32_t *order, int32_t *where, const int32_t *idx, int n, int K, int E);

/* MoE routing and token movement (ops_moe.cu) */
void cu_router_scores(float *scores, const float *logits, int n, int E, ds_score_fn fn);
void cu_moe_topk(int32_t *idx, float *w, const float *scores, const float *bias, const int32_t *keep, int n,
                 const ds_route_params *rp);
void cu_moe_topk_bwd(float *dlogits, const float *dw, const float *scores, const int32_t *idx, int n,
                     const ds_route_params *rp);
void cu_moe_balance(float *loss, float *dlogits, float coef, const float *scores, const int32_t *idx, int B, int T,
                    const ds_route_params *rp);
void cu_moe_gather(float *dst, const float *src, const int32_t *order, int m, int K, int d);
void cu_moe_gather_bwd(float *dsrc, const float *ddst, const int32_t *where, int n, int K, int d);
void cu_moe_combine(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d);
void cu_moe_scale_rows(float *x, const float *w, const int32_t *order, int m, int d);
void cu_moe_combine_bwd(float *dact, float *dw, const float *z, const float *act, const float *w, const int32_t *order,
                        int m, int I);

/* attention (ops_attn.cu; with bf16 GEMMs, the tensor-core path of ops_attn_tc.cu) */
bool cu_attn_tc_fits(int T, int dqk, int dv);
void cu_attn_fwd_tc(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *start, int B,
                    int T, int H, int dqk, int dv, float scale);
void cu_attn_bwd_tc(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                    const float *lse, const float *D, const int32_t *start, int B, int T, int H, int dqk, int dv_dim,
                    float scale);
size_t cu_attn_ws_bytes(int B, int T, int H, int dqk, int dv);
void cu_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg, int B, int T,
                 int H, int dqk, int dv, float scale, void *ws);
void cu_attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                 const float *o, const float *lse, const int32_t *seg, int B, int T, int H, int dqk, int dv_dim,
                 float scale, void *ws);

/* warp reductions */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max_f(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
