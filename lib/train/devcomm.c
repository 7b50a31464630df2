#include "train/devcomm.h"

#include "core/err.h"
#include "dist/dp.h"

#include <stdlib.h>
#include <string.h>

int ds_devcomm_kind_parse(const char *name, const char *device, ds_devcomm_kind *kind) {
    const int gpu = device && strcmp(device, "cpu");
    if (!name || !strcmp(name, "auto")) {
        *kind = gpu && ds_nccl_built() ? DS_DEVCOMM_NCCL : DS_DEVCOMM_MPI;
        return 0;
    }
    if (!strcmp(name, "mpi")) {
        *kind = DS_DEVCOMM_MPI;
        return 0;
    }
    if (strcmp(name, "nccl")) return ds_fail(DS_EUSAGE, "--comm %s: expected nccl, mpi or auto", name);
    if (!gpu) {
        ds_fail(DS_EUSAGE, "--comm nccl reduces GPU buffers: it needs --device cuda");
        ds_hint("drop --comm (the CPU's ranks reduce over MPI)");
        return DS_EUSAGE;
    }
    DS_TRY(ds_nccl_require("--comm nccl"));
    *kind = DS_DEVCOMM_NCCL;
    return 0;
}

int ds_devcomm_open(ds_devcomm *d, const ds_comm *group, ds_devcomm_kind kind) {
    memset(d, 0, sizeof *d);
    d->kind = kind, d->group = group, d->device = -1;
    if (kind != DS_DEVCOMM_NCCL) return 0;
    DS_TRY(ds_nccl_select_device(group, &d->device));
    /* the compute stream is the backend's: the legacy default stream (kernels/ops_cuda.cu) */
    return ds_nccl_create(&d->nccl, group, NULL);
}

void ds_devcomm_close(ds_devcomm *d, int failed_alone) {
    if (d->nccl) (failed_alone ? ds_nccl_abort : ds_nccl_free)(d->nccl);
    free(d->host);
    memset(d, 0, sizeof *d);
}

/* ---- NCCL: in place on the GPU; the host waits (and so notices a dead peer) before the norm reads it */

static int nccl_done(ds_devcomm *d, int rc) { return rc ? rc : ds_nccl_wait(d->nccl); }
static int nc_allreduce(void *ctx, float *x, size_t n) {
    ds_devcomm *d = ctx;
    return nccl_done(d, ds_nccl_allreduce_f32(d->nccl, x, n));
}
static int nc_reduce_scatter(void *ctx, float *x, size_t n) {
    ds_devcomm *d = ctx;
    return nccl_done(d, ds_nccl_reduce_scatter_f32(d->nccl, x, n));
}
static int nc_allgather(void *ctx, float *x, size_t n) {
    ds_devcomm *d = ctx;
    return nccl_done(d, ds_nccl_allgather_f32(d->nccl, x, n));
}

/* ---- MPI: through host memory ---- */

typedef int (*host_reduce)(const ds_comm *c, float *x, size_t n);
static int staged(ds_devcomm *d, float *x, size_t n, host_reduce f) {
    if (!d->ops) return ds_fail(DS_ERR, "trainer: device reductions before the model exists");
    if (n > d->host_cap) {
        float *h = realloc(d->host, n * sizeof *h);
        if (!h) return ds_fail(DS_ERR, "out of memory: staging %zu gradients for MPI", n);
        d->host = h, d->host_cap = n;
    }
    d->ops->copy(d->host, x, n * sizeof *x, DS_COPY_D2H);
    d->ops->sync();
    DS_TRY(d->ops->status());
    DS_TRY(f(d->group, d->host, n));
    d->ops->copy(x, d->host, n * sizeof *x, DS_COPY_H2D);
    return 0;
}
static int mpi_allreduce(void *ctx, float *x, size_t n) { return staged(ctx, x, n, ds_dp_allreduce_f32); }
static int mpi_reduce_scatter(void *ctx, float *x, size_t n) { return staged(ctx, x, n, ds_dp_reduce_scatter_f32); }
static int mpi_allgather(void *ctx, float *x, size_t n) { return staged(ctx, x, n, ds_dp_allgather_f32); }

/* host values: the same on both paths */
static int host_f64(void *ctx, double *x, size_t n) { return ds_dp_allreduce_f64(((ds_devcomm *)ctx)->group, x, n); }
static int host_i64(void *ctx, int64_t *x, size_t n) { return ds_dp_allreduce_i64(((ds_devcomm *)ctx)->group, x, n); }

ds_train_comm ds_devcomm_train_comm(ds_devcomm *d) {
    const int nc = d->kind == DS_DEVCOMM_NCCL;
    return (ds_train_comm){.rank = d->group->rank, .size = d->group->size, .device = 1,
                           .allreduce_f32 = nc ? nc_allreduce : mpi_allreduce, .allreduce_f64 = host_f64,
                           .allreduce_i64 = host_i64, .reduce_scatter_f32 = nc ? nc_reduce_scatter : mpi_reduce_scatter,
                           .allgather_f32 = nc ? nc_allgather : mpi_allgather, .ctx = d};
}
