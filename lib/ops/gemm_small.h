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

/* The CPU backend's table with gemm and gemm_rows replaced: products of at most DS_GEMM_SMALL_MAX_M rows
 * (per group) go to ds_gemm_small, N split across the OpenMP threads when the product is large enough;
 * everything else (more rows, A transposed) to the backend's sgemm path. Written into *out. */
void ds_ops_cpu_small_m(ds_ops *out);

#endif
