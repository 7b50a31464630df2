/* mla_decode_cuda.h — the CUDA implementation of MLA decode attention (ops/mla_decode.h's signature).
 *
 * Owns: the GPU entry point and its workspace query. Pointers in the argument struct (q, kv, kv_len,
 * block_table, out, lse, workspace) are device pointers; nothing is read back to the host, so a call
 * can be captured in a CUDA graph. Device-side data is not validated: kv_len and block_table must obey
 * the rules of ops/mla_decode.h (the CPU reference checks them).
 *
 * Paths: kv_rank 512, rope_dim 64 (DeepSeek-V3) with a bf16 cache and bf16 queries run the tensor-core
 * flash-decoding kernel (split-KV with a combine pass when the batch alone cannot fill the GPU); any
 * other shape or dtype runs a simple fp32 kernel (correct, not fast).
 */
#ifndef DS_KERNELS_MLA_DECODE_CUDA_H
#define DS_KERNELS_MLA_DECODE_CUDA_H

#include <stddef.h>

#include "ops/mla_decode.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes of workspace that let the kernel choose its preferred number of KV splits for this shape.
 * With less (or none) it uses fewer splits, down to one. */
size_t ds_cuda_mla_decode_workspace(const ds_mla_decode_args *a);
int ds_cuda_mla_decode(const ds_mla_decode_args *a);

/* For benchmarks and tests: force a path (0 = automatic, 1 = tensor-core kernel, 2 = simple kernel), a
 * tensor-core configuration (1-based index, 0 = automatic) and a split count (0 = automatic); reports what
 * the last call used. Not thread-safe (process-wide). */
typedef struct {
    int force_path, force_splits, force_config;
    int used_path, used_splits, used_rows, used_config; /* rows per CTA, configuration of the tc kernel */
} ds_mla_decode_tuning;
void ds_cuda_mla_decode_tune(ds_mla_decode_tuning *t); /* NULL restores automatic */
void ds_cuda_mla_decode_last(ds_mla_decode_tuning *t);
/* Tensor-core configuration i (1-based): rows per CTA, token parts, dim parts, tile tokens, stages.
 * Returns the number of configurations, 0 when i is out of range. */
int ds_cuda_mla_decode_configs(int i, int *rows, int *th, int *dq, int *nt, int *stages);

#ifdef __cplusplus
}
#endif

#endif
