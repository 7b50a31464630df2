/* cpu_internal.h — shared pieces of the CPU backend (not part of the op contract).
 *
 * Owns: the declarations of the CPU op implementations the backend table in cpu.c points to.
 * Threading: OpenMP only. OpenBLAS runs single-threaded (its pthread pool would spin against ours on the
 * same cores); ds_cpu_gemm splits large products across OpenMP threads itself.
 */
#ifndef DS_OPS_CPU_INTERNAL_H
#define DS_OPS_CPU_INTERNAL_H

#include "ops/ops.h"

/* Column block width for row reductions that must not depend on the thread count. */
#define DS_CPU_COLBLOCK 64

/* Make OpenBLAS single-threaded (cheap when it already is); call before cblas from OpenMP threads. */
void ds_cpu_blas_single(void);

void *ds_cpu_alloc(size_t bytes);
void ds_cpu_free(void *p);
void ds_cpu_copy(void *dst, const void *src, size_t bytes, ds_copy_kind kind);
void ds_cpu_zero(void *p, size_t bytes);
void ds_cpu_sync(void);

void ds_cpu_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
/* ds_cpu_gemm on the calling thread alone (inside a parallel region) */
void ds_cpu_gemm1(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc);
/* group g of the row-grouped GEMMs is too large to share the threads with the others: it runs alone, on
 * all of them (ds_cpu_gemm), after the rest */
int ds_cpu_group_alone(const int64_t *off, int g, int ng);
void ds_cpu_moe_ffn_fwd(int ne, const int64_t *off, int D, int I, const float *x, const float *Wg, const float *Wu,
                        const float *Wd, size_t stride, float *g, float *u, float *act, float *y);
void ds_cpu_moe_ffn_bwd(int ne, const int64_t *off, int D, int I, const float *x, const float *dy, const float *w,
                        const int32_t *order, const float *Wg, const float *Wu, const float *Wd, size_t stride,
                        const float *g, const float *u, float *act, float *dg, float *du, float *dw, float *dx,
                        float *gWg, float *gWu, float *gWd);
/* one row of moe_combine_bwd (shared with the fused expert FFN, so both give the same bits) */
void ds_cpu_moe_combine_bwd_row(float *dact, float *dw, const float *z, const float *act, float w, int I);
void ds_cpu_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                      const float *B, size_t strideB, int ldb, float beta, float *C, int ldc);
/* ds_cpu_gemm and ds_cpu_gemm_rows (A not transposed) with bf16 weights: every single-threaded product widens
 * its slab of B into a per-thread scratch first (the slab's floats: at most the whole weight), so the products
 * are bit-identical to the float32 ones over the widened weights. -1: a scratch could not be allocated. */
int ds_cpu_gemm_bf16(int tb, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *B, int ldb,
                     float beta, float *C, int ldc);
int ds_cpu_gemm_rows_bf16(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                          const uint16_t *const *B, int ldb, float beta, float *C, int ldc);
void ds_cpu_gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, size_t strideC, int ldc);

void ds_cpu_add(float *y, const float *a, const float *b, size_t n);
void ds_cpu_axpy(float *y, float alpha, const float *x, size_t n);
void ds_cpu_scale(float *y, float alpha, size_t n);
void ds_cpu_copy2d(float *dst, int ldd, const float *src, int lds, int rows, int cols);
void ds_cpu_rmsnorm_fwd(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d,
                        float eps);
void ds_cpu_rmsnorm_bwd(float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx,
                        const float *w, const float *rstd, int n, int d);
void ds_cpu_rope_table(float *cs, const int32_t *pos, int n, const float *inv_freq, int half, float mscale);
void ds_cpu_rope(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved,
                 const float *cs, int inverse);
void ds_cpu_swiglu_fwd(float *h, const float *g, const float *u, size_t n);
void ds_cpu_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);
void ds_cpu_embed_fwd(float *x, const float *table, const int32_t *tok, int n, int d);
void ds_cpu_embed_bwd(float *dtable, const float *dx, const int32_t *tok, int n, int d);
void ds_cpu_logsoftmax_fwd(float *logp, float *lse, float *ent, const float *logits, const int32_t *tgt, int n,
                           int V);
void ds_cpu_logsoftmax_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *tgt,
                           const float *dlogp, int n, int V);
void ds_cpu_mla_kv_expand(float *k, float *v, const float *kvb, const float *kpe, int ld_kpe, int n, int H, int dn,
                          int dr, int dv);
void ds_cpu_mla_kv_expand_bwd(float *dkvb, float *dkpe, int ld_dkpe, const float *dk, const float *dv, int n, int H,
                              int dn, int dr, int dv_dim);

size_t ds_cpu_attn_ws_bytes(int B, int T, int H, int dqk, int dv);
void ds_cpu_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg,
                     int B, int T, int H, int dqk, int dv, float scale, void *ws);
void ds_cpu_attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                     const float *v, const float *o, const float *lse, const int32_t *seg, int B, int T, int H,
                     int dqk, int dv_dim, float scale, void *ws);

void ds_cpu_router_scores(float *scores, const float *logits, int n, int E, ds_score_fn fn);
void ds_cpu_moe_topk(int32_t *idx, float *w, const float *scores, const float *bias, const int32_t *keep, int n,
                     const ds_route_params *rp);
void ds_cpu_moe_topk_bwd(float *dlogits, const float *dw, const float *scores, const int32_t *idx, int n,
                         const ds_route_params *rp);
void ds_cpu_moe_balance(float *loss, float *dlogits, float coef, const float *scores, const int32_t *idx, int B,
                        int T, const ds_route_params *rp);
void ds_cpu_moe_bucket(int32_t *off, int32_t *order, int32_t *where, const int32_t *idx, int n, int K, int E);
void ds_cpu_moe_gather(float *dst, const float *src, const int32_t *order, int m, int K, int d);
void ds_cpu_moe_gather_bwd(float *dsrc, const float *ddst, const int32_t *where, int n, int K, int d);
void ds_cpu_moe_combine(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d);
void ds_cpu_moe_scale_rows(float *x, const float *w, const int32_t *order, int m, int d);
void ds_cpu_moe_combine_bwd(float *dact, float *dw, const float *z, const float *act, const float *w,
                            const int32_t *order, int m, int I);

#endif
