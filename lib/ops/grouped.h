/* grouped.h — CPU references of the grouped expert GEMMs that read their group offsets from backend memory
 * (ds_ops.gemm_rows_dev / gemm_wgrad_dev in ops/ops.h; the CUDA kernels are kernels/grouped_gemm.cu).
 *
 * Owns: the semantics of those two entries, defined as the host-offset grouped GEMMs (gemm_rows,
 * gemm_wgrad of the CPU backend) on the same groups, so a device kernel is checked against these and these
 * against the per-expert path. Here "backend memory" is host memory.
 */
#ifndef DS_OPS_GROUPED_H
#define DS_OPS_GROUPED_H

#include <stddef.h>
#include <stdint.h>

#include "ops/ops.h"

void ds_cpu_gemm_rows_dev(int ng, const int32_t *off, int max_rows, int tb, int N, int K, float alpha, const float *A,
                          int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc);
void ds_cpu_gemm_wgrad_dev(int ng, const int32_t *off, int M, int N, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, size_t strideC, int ldc);

/* `base` with gemm_rows_dev / gemm_wgrad_dev set to the references above (a CPU table that takes the
 * device-offset path of the MoE layers, for tests). */
void ds_ops_cpu_with_dev_offsets(ds_ops *out, const ds_ops *base);

#endif
