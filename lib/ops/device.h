/* device.h — from a --device name to the op backend that runs there.
 *
 * Owns: the one place that maps "cpu" / "cuda" to a backend table, and the messages for a device this
 * build or this machine cannot use (a build without the CUDA objects: make CUDA=0 or no nvcc; a CUDA
 * build on a machine without a usable GPU). Tools call this, never ds_ops_cuda() directly, so lib/ and
 * tools/ build the same with and without CUDA.
 */
#ifndef DS_OPS_DEVICE_H
#define DS_OPS_DEVICE_H

#include "ops/ops.h"

/* *out = the backend for device ("cpu" or "cuda"; NULL means "cpu"). Fails with
 * "--device NAME: <why>" when the device is unknown or cannot be used here. */
int ds_ops_for_device(const char *device, const ds_ops **out);

/* Device memory this process has taken on ops' device since the backend started (a GPU backend only:
 * fails for the CPU), for reports. */
int ds_device_memory_used(const ds_ops *ops, double *bytes);

/* --bf16 (ops/bf16.h) over ops: a device backend's own GEMMs must take bf16 operands, so the CUDA backend must
 * be in its bf16 GEMM mode (the default). Fails with "--bf16 --device cuda: ..." when the environment chose
 * another (DS_CUDA_GEMM=tf32|f32); DS_OK for the CPU (its GEMMs are replaced by ops/gemm_bf16.h's). */
int ds_ops_check_bf16_gemm(const ds_ops *ops);

/* Whether ops keeps tensors in host memory (the CPU backend): callers may read its buffers directly. */
int ds_ops_on_host(const ds_ops *ops);

#endif
