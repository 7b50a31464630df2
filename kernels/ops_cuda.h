/* ops_cuda.h — the CUDA backend of the op layer (ops/ops.h): the same table of signatures, device memory.
 *
 * Owns: ds_ops_cuda() (the backend table; kernels in kernels/ops_*.cu, GEMMs through kernels/blaslt), the
 * GEMM precision of this backend, and its sticky error. The op signatures return nothing, so a failed
 * launch or allocation is recorded (the first one wins) and reported by ds_ops_cuda_status(); callers check
 * it after sync() at their own synchronization points (a training step, a decode step).
 *
 * Precision: tensors are fp32 in device memory, as the op contract says. GEMMs run on the tensor cores with
 * their operands rounded to bf16 (fp32 accumulation and output: the numerics of bf16 autocast), or in TF32,
 * or exactly in fp32 (DS_CUDA_GEMM=bf16|tf32|f32 in the environment, or ds_ops_cuda_set_gemm). Every other op
 * computes in fp32. Reductions never use floating-point atomics: results are the same bits run to run.
 */
#ifndef DS_KERNELS_OPS_CUDA_H
#define DS_KERNELS_OPS_CUDA_H

#include "ops/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DS_CUDA_GEMM_BF16 = 0, DS_CUDA_GEMM_TF32 = 1, DS_CUDA_GEMM_F32 = 2 } ds_cuda_gemm_mode;

/* The CUDA backend; NULL (with a message) when no device can be used. The first call selects device 0. */
const ds_ops *ds_ops_cuda(void);
/* DS_OK, or the first error since the last call (message set); clears it. */
int ds_ops_cuda_status(void);
void ds_ops_cuda_set_gemm(ds_cuda_gemm_mode mode);
/* Device memory taken since the backend started: cudaMemGetInfo's free bytes then minus now (this process's
 * allocations, the cuBLASLt workspace included, if nothing else runs on the device). */
int ds_ops_cuda_memory_used(double *bytes);
ds_cuda_gemm_mode ds_ops_cuda_gemm(void);

/* The bf16 shadow of a parameter buffer (the copy bf16 GEMMs read, rebuilt by a conversion pass after
 * params_changed) seen from a kernel that writes the parameters anyway (the fused optimizer step):
 * ds_ops_cuda_shadow_target is that copy's device storage (n bf16 values, element i mirrors base[i]) when one
 * mirrors exactly [base, base + n) and no other overlaps it, else NULL. After queueing a kernel that stored
 * bf16(base[i]) (round to nearest even) into every element of it, and after announcing the change with
 * params_changed, ds_ops_cuda_shadow_written marks the copy current, so no conversion pass runs for it. */
uint16_t *ds_ops_cuda_shadow_target(const float *base, size_t n);
void ds_ops_cuda_shadow_written(const float *base, size_t n);

#ifdef __cplusplus
}
#endif

#endif
