/* optim.h — the trainer's optimizer behind one seam: AdamW wherever the parameters live.
 *
 * Owns: the interface the trainer and the checkpoint code use (global gradient norm, one update, the
 * moments in and out as host float32) and the choice of implementation by the backend that holds the
 * parameters: host memory (train/adamw.h, OpenMP) or a GPU (kernels/adamw_cuda.h: device-resident
 * moments, the same update rule bit for bit, the norm as a fixed-order device reduction). The step count
 * behind bias correction and the options live here, the moments in the implementation.
 * After a GPU update the backend is told that the parameters changed (ops.h params_changed), so its
 * derived copies (bf16 GEMM operands) are rebuilt before the next forward.
 * One pass (DS_FUSED_OPTIM, default on; DS_FUSED_OPTIM=0 in the environment restores the separate passes):
 * the update also zeroes the gradients it read when the caller allows it (a training step that would zero
 * them before its next backward), and on the GPU writes the backend's bf16 copy of the parameters when the
 * update covers the whole buffer that copy mirrors (kernels/ops_cuda.h ds_ops_cuda_shadow_target), so that
 * copy is not rebuilt by a conversion pass; a partial update (a ZeRO-1 shard) leaves it to that pass.
 */
#ifndef DS_TRAIN_OPTIM_H
#define DS_TRAIN_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "ops/ops.h"
#include "train/adamw.h"

typedef struct ds_optim ds_optim;

typedef struct {
    int (*grad_norm)(ds_optim *o, const float *grads, double *norm);
    int (*step)(ds_optim *o, float *params, float *grads, float grad_scale, double lr, int zero_grads); /* o->t + 1 */
    int (*get)(const ds_optim *o, int which, size_t offset, size_t numel, float *host);
    int (*set)(ds_optim *o, int which, size_t offset, size_t numel, const float *host);
    void (*release)(ds_optim *o);
} ds_optim_impl;

struct ds_optim {
    ds_adamw_opts o;
    size_t n;
    int64_t t;          /* updates applied so far (restored by a resume) */
    const char *device; /* "cpu" or "cuda": where the moments live */
    const ds_ops *ops;  /* the backend of params and grads */
    const ds_optim_impl *impl;
    void *state;
    int fused;          /* 1: one pass (above); 0: DS_FUSED_OPTIM=0 */
};

/* AdamW over n parameters held by ops (NULL: host memory), decay groups from the parameter table. */
int ds_optim_create(ds_optim **out, const ds_ops *ops, const ds_adamw_opts *o, size_t n, const ds_param *info,
                    int n_info);
void ds_optim_free(ds_optim *o);

/* sqrt(sum g^2) over the n gradients (backend memory), in double; NaN/Inf propagate. */
int ds_optim_grad_norm(ds_optim *o, const float *grads, double *norm);
/* One update of params with grads * grad_scale at learning rate lr; t advances. zero_grads: the caller has no
 * further use for grads and would zero them before they are accumulated into again; a fused optimizer
 * (o->fused) then sets them to 0 in the same pass, otherwise they are left as they were (only read). */
int ds_optim_step(ds_optim *o, float *params, float *grads, float grad_scale, double lr, int zero_grads);
/* One parameter tensor's moments (which: 0 = m, 1 = v) out to / in from host float32. */
int ds_optim_get(const ds_optim *o, int which, size_t offset, size_t numel, float *host);
int ds_optim_set(ds_optim *o, int which, size_t offset, size_t numel, const float *host);

/* sum x^2 over n values held by ops (NULL or a host backend: host memory), in double: one rank's share
 * of a gradient norm over several ranks (train/zero.h). */
int ds_optim_sumsq(const ds_ops *ops, const float *x, size_t n, double *out);
int ds_optim_sumsq_cuda(const float *x, size_t n, double *out); /* the GPU's (train/optim_cuda.c) */

/* The GPU implementation (train/optim_cuda.c; fails plainly in a build without CUDA). */
int ds_optim_create_cuda(ds_optim *o, const ds_param *info, int n_info);

#endif
