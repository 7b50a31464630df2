#include "train/optim.h"

#include "core/err.h"
#include "ops/device.h"

#include <stdlib.h>
#include <string.h>

/* ---- host memory: train/adamw.h ---- */

static int cpu_norm(ds_optim *o, const float *grads, double *norm) {
    *norm = ds_grad_norm(grads, o->n);
    return 0;
}

static int cpu_step(ds_optim *o, float *params, float *grads, float grad_scale, double lr, int zero_grads) {
    ds_adamw *a = o->state;
    a->t = o->t;
    ds_adamw_step_fused(a, params, grads, grad_scale, lr, NULL, zero_grads && o->fused);
    o->t = a->t;
    return 0;
}

static int cpu_get(const ds_optim *o, int which, size_t offset, size_t numel, float *host) {
    ds_adamw_get(o->state, which, offset, numel, host);
    return 0;
}

static int cpu_set(ds_optim *o, int which, size_t offset, size_t numel, const float *host) {
    ds_adamw_set(o->state, which, offset, numel, host);
    return 0;
}

static void cpu_release(ds_optim *o) {
    if (o->state) ds_adamw_free(o->state);
    free(o->state);
}

static const ds_optim_impl cpu_impl = {cpu_norm, cpu_step, cpu_get, cpu_set, cpu_release};

/* ---- the seam ---- */

int ds_optim_create(ds_optim **out, const ds_ops *ops, const ds_adamw_opts *o, size_t n, const ds_param *info,
                    int n_info) {
    *out = NULL;
    ds_optim *q = calloc(1, sizeof *q);
    if (!q) return ds_fail(DS_ERR, "out of memory: optimizer");
    q->o = *o;
    q->n = n;
    q->ops = ops ? ops : ds_ops_cpu();
    const char *fused = getenv("DS_FUSED_OPTIM");
    q->fused = !(fused && !strcmp(fused, "0"));
    int rc;
    if (ds_ops_on_host(q->ops)) {
        q->device = "cpu";
        q->impl = &cpu_impl;
        q->state = calloc(1, sizeof(ds_adamw));
        rc = q->state ? ds_adamw_init(q->state, o, n, info, n_info) : ds_fail(DS_ERR, "out of memory: optimizer");
    } else {
        q->device = q->ops->name;
        rc = ds_optim_create_cuda(q, info, n_info);
    }
    if (rc) {
        ds_optim_free(q);
        return rc;
    }
    *out = q;
    return 0;
}

void ds_optim_free(ds_optim *o) {
    if (!o) return;
    if (o->impl) o->impl->release(o);
    free(o);
}

int ds_optim_grad_norm(ds_optim *o, const float *grads, double *norm) { return o->impl->grad_norm(o, grads, norm); }

int ds_optim_sumsq(const ds_ops *ops, const float *x, size_t n, double *out) {
    if (!ops || ds_ops_on_host(ops)) {
        *out = ds_grad_sumsq(x, n);
        return 0;
    }
    ops->sync();
    DS_TRY(ops->status()); /* a failed backward surfaces here, before its numbers are trusted */
    return ds_optim_sumsq_cuda(x, n, out);
}

int ds_optim_step(ds_optim *o, float *params, float *grads, float grad_scale, double lr, int zero_grads) {
    return o->impl->step(o, params, grads, grad_scale, lr, zero_grads);
}

int ds_optim_get(const ds_optim *o, int which, size_t offset, size_t numel, float *host) {
    if (offset + numel > o->n || which < 0 || which > 1)
        return ds_fail(DS_ERR, "optimizer: moments [%zu, +%zu) of %zu", offset, numel, o->n);
    return o->impl->get(o, which, offset, numel, host);
}

int ds_optim_set(ds_optim *o, int which, size_t offset, size_t numel, const float *host) {
    if (offset + numel > o->n || which < 0 || which > 1)
        return ds_fail(DS_ERR, "optimizer: moments [%zu, +%zu) of %zu", offset, numel, o->n);
    return o->impl->set(o, which, offset, numel, host);
}
