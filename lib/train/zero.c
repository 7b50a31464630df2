#include "train/zero.h"

#include "core/err.h"
#include "dist/dp.h"
#include "ops/device.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int comm_size(const ds_train_comm *c) { return c && c->size > 1 ? c->size : 1; }

/* The parameter table clipped to [lo, hi), offsets relative to lo (AdamW needs a table that tiles its
 * buffer: the decay group of each value). */
static int clip_table(const ds_train_net *net, size_t lo, size_t hi, ds_param **out, int *n_out) {
    *out = NULL, *n_out = 0;
    ds_param *t = malloc((size_t)(net->n_info > 0 ? net->n_info : 1) * sizeof *t);
    if (!t) return ds_fail(DS_ERR, "out of memory: optimizer table");
    int k = 0;
    for (int i = 0; i < net->n_info; i++) {
        size_t a = net->info[i].offset, b = a + net->info[i].numel;
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        if (a >= b) continue;
        t[k] = net->info[i];
        t[k].offset = a - lo, t[k].numel = b - a;
        k++;
    }
    *out = t, *n_out = k;
    return 0;
}

int ds_zero_create(ds_zero *z, const ds_train_net *net, const ds_adamw_opts *o, const ds_train_group *g, int n,
                   const ds_train_comm *world, int zero) {
    memset(z, 0, sizeof *z);
    if (n < 1) return ds_fail(DS_ERR, "trainer: no parameter groups");
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        if (g[i].offset != at || g[i].offset + g[i].numel > net->n_params)
            return ds_fail(DS_ERR, "trainer: parameter group %d [%zu, +%zu) does not continue at %zu of %zu", i, g[i].offset,
                           g[i].numel, at, net->n_params);
        at += g[i].numel;
    }
    if (at != net->n_params) return ds_fail(DS_ERR, "trainer: parameter groups cover %zu of %zu values", at, net->n_params);
    const int distributed = comm_size(world) > 1 || n > 1 || comm_size(g[0].comm) > 1;
    if (distributed && net->ops && !ds_ops_on_host(net->ops))
        for (int i = 0; i < n; i++) /* device parameters: every reduction must take device memory */
            if (comm_size(g[i].comm) > 1 && !g[i].comm->device)
                return ds_fail(DS_ERR, "trainer: parameter group %d over several ranks reduces host memory, and the "
                               "parameters live on device '%s'", i, net->ops->name);
    if (!(z->g = calloc((size_t)n, sizeof *z->g))) return ds_fail(DS_ERR, "out of memory: parameter groups");
    z->n = n;
    z->world = comm_size(world) > 1 ? world : NULL;
    int rc = 0;
    for (int i = 0; !rc && i < n; i++) {
        ds_zero_group *q = &z->g[i];
        q->g = g[i];
        q->size = comm_size(g[i].comm);
        q->rank = q->size > 1 ? g[i].comm->rank : 0;
        ds_dp_slice(g[i].numel, q->size, q->rank, &q->slice_lo, &q->slice_hi);
        q->slice_lo += g[i].offset, q->slice_hi += g[i].offset;
        q->sharded = zero && q->size > 1 && g[i].comm->reduce_scatter_f32 && g[i].comm->allgather_f32;
        q->held_lo = q->sharded ? q->slice_lo : g[i].offset;
        q->held_hi = q->sharded ? q->slice_hi : g[i].offset + g[i].numel;
        rc = clip_table(net, q->held_lo, q->held_hi, &q->info, &q->n_info);
        if (!rc && q->held_hi > q->held_lo)
            rc = ds_optim_create(&q->opt, net->ops, o, q->held_hi - q->held_lo, q->info, q->n_info);
    }
    if (rc) ds_zero_free(z);
    return rc;
}

void ds_zero_free(ds_zero *z) {
    for (int i = 0; z->g && i < z->n; i++) {
        ds_optim_free(z->g[i].opt);
        free(z->g[i].info);
    }
    free(z->g);
    memset(z, 0, sizeof *z);
}

int ds_zero_reduce(ds_zero *z, const ds_train_net *net) {
    for (int i = 0; i < z->n; i++) {
        const ds_zero_group *q = &z->g[i];
        if (q->size <= 1 || !q->g.numel) continue;
        const ds_train_comm *c = q->g.comm;
        float *x = net->grads + q->g.offset;
        DS_TRY(q->sharded ? c->reduce_scatter_f32(c->ctx, x, q->g.numel) : c->allreduce_f32(c->ctx, x, q->g.numel));
    }
    return 0;
}

int ds_zero_grad_norm(ds_zero *z, const ds_train_net *net, double *norm) {
    if (!z->world && z->n == 1 && z->g[0].size == 1 && z->g[0].opt) /* one process: the backend's own reduction */
        return ds_optim_grad_norm(z->g[0].opt, net->grads, norm);
    double s = 0;
    for (int i = 0; i < z->n; i++) {
        double part;
        DS_TRY(ds_optim_sumsq(net->ops, net->grads + z->g[i].slice_lo, z->g[i].slice_hi - z->g[i].slice_lo, &part));
        s += part;
    }
    if (z->world) DS_TRY(z->world->allreduce_f64(z->world->ctx, &s, 1)); /* rank-ordered: the same bits everywhere */
    *norm = sqrt(s);
    return 0;
}

int ds_zero_step(ds_zero *z, ds_train_net *net, float grad_scale, double lr) {
    int zeroed = 1;
    z->grads_zeroed = 0;
    for (int i = 0; i < z->n; i++) {
        ds_zero_group *q = &z->g[i];
        if (q->opt) {
            q->opt->t = z->t;
            DS_TRY(ds_optim_step(q->opt, net->params + q->held_lo, net->grads + q->held_lo, grad_scale, lr, !q->sharded));
        }
        if (q->g.numel && (!q->opt || q->sharded || !q->opt->fused)) zeroed = 0;
    }
    z->t++;
    z->grads_zeroed = zeroed;
    for (int i = 0; i < z->n; i++) {
        const ds_zero_group *q = &z->g[i];
        if (!q->sharded || !q->g.numel) continue;
        DS_TRY(q->g.comm->allgather_f32(q->g.comm->ctx, net->params + q->g.offset, q->g.numel));
        /* the other ranks' slices changed too: a backend's derived copies of them are stale */
        if (net->ops && net->ops->params_changed) net->ops->params_changed(net->params + q->g.offset, q->g.numel);
    }
    return 0;
}

int ds_zero_take_grads_zeroed(ds_zero *z) {
    int r = z->grads_zeroed;
    z->grads_zeroed = 0;
    return r;
}

void ds_zero_set_t(ds_zero *z, int64_t t) {
    z->t = t;
    for (int i = 0; i < z->n; i++)
        if (z->g[i].opt) z->g[i].opt->t = t;
}

/* The group whose held range contains [offset, offset+numel), or NULL. */
static const ds_zero_group *holder(const ds_zero *z, size_t offset, size_t numel) {
    for (int i = 0; i < z->n; i++)
        if (z->g[i].opt && offset >= z->g[i].held_lo && offset + numel <= z->g[i].held_hi) return &z->g[i];
    return NULL;
}

int ds_zero_get(const ds_zero *z, int which, size_t offset, size_t numel, float *host) {
    const ds_zero_group *q = holder(z, offset, numel);
    if (!q) return ds_fail(DS_ERR, "optimizer: this rank holds no moments for [%zu, +%zu)", offset, numel);
    return ds_optim_get(q->opt, which, offset - q->held_lo, numel, host);
}

int ds_zero_set(ds_zero *z, int which, size_t offset, size_t numel, const float *host) {
    const ds_zero_group *q = holder(z, offset, numel);
    if (!q) return ds_fail(DS_ERR, "optimizer: this rank holds no moments for [%zu, +%zu)", offset, numel);
    return ds_optim_set(q->opt, which, offset - q->held_lo, numel, host);
}

void ds_zero_held(const ds_zero *z, size_t offset, size_t numel, size_t *lo, size_t *hi) {
    *lo = *hi = offset;
    for (int i = 0; i < z->n; i++) {
        size_t a = offset > z->g[i].held_lo ? offset : z->g[i].held_lo;
        size_t b = offset + numel < z->g[i].held_hi ? offset + numel : z->g[i].held_hi;
        if (a < b) {
            *lo = a, *hi = b;
            return;
        }
    }
}

int ds_zero_sharded(const ds_zero *z) {
    for (int i = 0; i < z->n; i++)
        if (z->g[i].sharded) return 1;
    return 0;
}

size_t ds_zero_state_bytes(const ds_zero *z) {
    size_t b = 0;
    for (int i = 0; i < z->n; i++)
        if (z->g[i].opt) b += (z->g[i].held_hi - z->g[i].held_lo) * (z->g[i].opt->o.bf16_moments ? 4 : 8);
    return b;
}
