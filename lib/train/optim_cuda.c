/* The GPU side of train/optim.h: kernels/adamw_cuda.h behind the optimizer seam (CUDA builds only). */
#include "train/optim.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

#ifdef DS_HAVE_CUDA
#include "adamw_cuda.h"
#include "ops_cuda.h"

static int cu_norm(ds_optim *o, const float *grads, double *norm) {
    o->ops->sync();
    DS_TRY(o->ops->status()); /* a failed backward surfaces here, before its numbers are trusted */
    return ds_cuda_grad_norm(grads, o->n, norm);
}

/* Fused (train/optim.h): the bf16 copy of exactly this buffer is written by the update itself; a partial
 * update (NULL target) leaves that copy to its conversion pass. */
static int cu_step(ds_optim *o, float *params, float *grads, float grad_scale, double lr, int zero_grads) {
    uint16_t *w16 = o->fused ? ds_ops_cuda_shadow_target(params, o->n) : NULL;
    DS_TRY(ds_cuda_adamw_step_fused(o->state, params, grads, grad_scale, lr, o->t + 1, w16, zero_grads && o->fused));
    o->t++;
    o->ops->params_changed(params, o->n);              /* every table's derived copies of the weights are stale... */
    if (w16) ds_ops_cuda_shadow_written(params, o->n); /* ...but the backend's bf16 one was written in the pass */
    return 0;
}

static int cu_get(const ds_optim *o, int which, size_t offset, size_t numel, float *host) {
    return ds_cuda_adamw_get(o->state, which, offset, numel, host);
}

static int cu_set(ds_optim *o, int which, size_t offset, size_t numel, const float *host) {
    return ds_cuda_adamw_set(o->state, which, offset, numel, host);
}

static void cu_release(ds_optim *o) { ds_cuda_adamw_free(o->state); }

static const ds_optim_impl cuda_impl = {cu_norm, cu_step, cu_get, cu_set, cu_release};

int ds_optim_sumsq_cuda(const float *x, size_t n, double *out) { return ds_cuda_grad_sumsq(x, n, out); }

int ds_optim_create_cuda(ds_optim *o, const ds_param *info, int n_info) {
    DS_TRY(ds_adamw_check_table(o->n, info, n_info));
    ds_cuda_adamw_seg *segs = malloc((size_t)(n_info > 0 ? n_info : 1) * sizeof *segs);
    if (!segs) return ds_fail(DS_ERR, "out of memory: optimizer");
    for (int i = 0; i < n_info; i++)
        segs[i] = (ds_cuda_adamw_seg){.offset = info[i].offset, .numel = info[i].numel,
                                      .decay = ds_adamw_kind_decays(&o->o, info[i].kind)};
    ds_cuda_adamw_opts co = {.beta1 = o->o.beta1, .beta2 = o->o.beta2, .eps = o->o.eps,
                             .weight_decay = o->o.weight_decay, .bf16_moments = o->o.bf16_moments};
    ds_cuda_adamw *a = NULL;
    int rc = ds_cuda_adamw_create(&a, &co, o->n, segs, n_info);
    free(segs);
    if (rc) return ds_fail_ctx(rc, "optimizer on the GPU");
    o->state = a;
    o->impl = &cuda_impl;
    return 0;
}

#else

int ds_optim_sumsq_cuda(const float *x, size_t n, double *out) {
    return ds_fail(DS_ERR, "gradient norm: gradients on a GPU, and this build has no CUDA backend");
}

int ds_optim_create_cuda(ds_optim *o, const ds_param *info, int n_info) {
    (void)info, (void)n_info;
    return ds_fail(DS_ERR, "optimizer: parameters on device '%s', and this build has no CUDA backend", o->device);
}

#endif
