/* gemm_small.h — GEMMs of a few rows (decode steps) that stream every weight once for all rows.
 *
 * Owns: the CPU product C[M,N] = alpha * A[M,K] op(B) + beta * C for small M (a decode step's batch
 * rows, an expert holding a few tokens, the heads of one sequence against its latent cache). OpenBLAS
 * sgemm packs all of B on every call (several times the product when M is a handful) and sgemv reads B
 * once per row; these kernels read each row (tb=1) or each column block (tb=0) of B once and use it for
 * every row of A while it sits in L1.
 *
 * Every element of C is a sum in a fixed order that depends only on K: C[i,j] does not depend on M, on
 * the other rows of A, on the blocking of N or on the thread count. So a sequence decoded alone and the
 * same sequence decoded in a batch get bit-identical products (ds-generate's batch invariance).
 *
 * The bf16 forms take B in bfloat16 (ds-generate --dtype bf16: fp8/resident.h) and run the same code
 * after widening each loaded weight to float32 (a 16-bit shift, exact): their products are bit-identical to
 * the float32 kernels' on the same weights rounded to bf16 and stored as float32.
 */
#ifndef DS_OPS_GEMM_SMALL_H
#define DS_OPS_GEMM_SMALL_H

#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h"

/* The most rows the small kernels take; larger products go to sgemm. */
#define DS_GEMM_SMALL_MAX_M 16

/* C = alpha A op(B) + beta C with A [M,K] (not transposed), op(B) = B [K,N] (tb=0) or B^T with B [N,K]
 * (tb=1); beta 0 overwrites C (NaN included). Single-threaded. Any M (the order per element holds for
 * every M; the speed only for small ones). */
void ds_gemm_small(int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc);

/* The same with B in bf16 (ldb in elements). */
void ds_gemm_small_bf16(int tb, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *B, int ldb,
                        float beta, float *C, int ldc);
/* C = alpha A op(B) + beta C with B in bf16 (A not transposed), exactly as the CPU backend computes it over
 * the widened weights: few = 1 as ds_ops_cpu_small_m's gemm (these kernels up to DS_GEMM_SMALL_MAX_M rows,
 * N split across the threads), few = 0 as ds_ops_cpu()'s; products it sends to sgemm widen B by slabs first
 * (cpu_internal.h ds_cpu_gemm_bf16). Bit-identical to the float32 table on the widened weights. -1: out of
 * memory for a widened slab. */
int ds_gemm_bf16w(int few, int tb, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *B, int ldb,
                 float beta, float *C, int ldc);
/* The same for grouped rows (the tables' gemm_rows): group g's rows [off[g], off[g+1]) by the bf16 weight B[g]. */
int ds_gemm_rows_bf16w(int few, int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                      const uint16_t *const *B, int ldb, float beta, float *C, int ldc);

/* The CPU backend's table with gemm and gemm_rows replaced: products of at most DS_GEMM_SMALL_MAX_M rows
 * (per group) go to ds_gemm_small, N split across the OpenMP threads when the product is large enough;
 * everything else (more rows, A transposed) to the backend's sgemm path. Written into *out. */
void ds_ops_cpu_small_m(ds_ops *out);

#endif
