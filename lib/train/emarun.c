#include "train/emarun.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "io/checkpoint.h"
#include "ops/device.h"
#include "ops/ops.h"

#include <stdlib.h>
#include <string.h>

/* The floats this rank averages: see the header. rank: among the ranks holding the same tensors as this
 * one (a pipeline stage's data-parallel ranks; the world without pipeline stages). */
static void kept_range(ds_model *m, const ds_ep_run *ep, int rank, size_t *off, size_t *n) {
    const size_t all = ds_model_num_params(m);
    *off = 0, *n = 0;
    if (!ep || !ep->have_layout) {
        if (rank == 0) *n = all;
        return;
    }
    if (ep->L.dp_rank >= ep->ep) return; /* not the first EP group: its experts are averaged there */
    size_t eoff, en;
    ds_model_expert_range(m, &eoff, &en, NULL, NULL);
    if (rank == 0) *n = all;
    else *off = eoff, *n = en;
}

/* The weights [off, off + n) in host memory: a device's copied into dst (n floats). */
static int host_weights(ds_model *m, size_t off, size_t n, float *dst, const float **out) {
    const ds_ops *ops = ds_model_ops(m);
    const float *p = ds_model_params(m) + off;
    if (ds_ops_on_host(ops)) {
        *out = p;
        return 0;
    }
    ops->copy(dst, p, n * sizeof(float), DS_COPY_D2H);
    ops->sync();
    *out = dst;
    return ops->status();
}

int ds_ema_run_start(ds_ema_run *r, ds_model *m, const ds_ep_run *ep, int rank, int stages, int log, double decay,
                     const char *resume_dir) {
    memset(r, 0, sizeof *r);
    r->gather = stages || (ep && ep->have_layout);
    if (!(decay > 0)) return 0;
    size_t off, n;
    kept_range(m, ep, rank, &off, &n);
    if (!n) return 0;
    r->off = off;
    int count;
    const ds_param *all = ds_model_params_info(m, &count);
    if (!(r->info = malloc(sizeof *r->info * (size_t)count))) return ds_fail(DS_ERR, "out of memory: EMA table");
    for (int i = 0; i < count; i++)
        if (all[i].offset >= off && all[i].offset + all[i].numel <= off + n) {
            r->info[r->n_info] = all[i];
            r->info[r->n_info++].offset -= off;
        }
    float *host = NULL;
    const float *init;
    if (!ds_ops_on_host(ds_model_ops(m)) && !(host = malloc(n * sizeof(float))))
        return ds_fail(DS_ERR, "out of memory: %zu parameters for the EMA", n);
    int rc = host_weights(m, off, n, host, &init);
    if (!rc) rc = ds_ema_create(&r->ema, n, decay, init);
    free(host);
    DS_TRY(rc);
    if (!resume_dir) return 0;
    char dir[8300];
    DS_TRY(ds_path_join(dir, sizeof dir, resume_dir, DS_EMA_DIR));
    if (!ds_ckpt_is_complete(dir)) {
        ds_warn("--ema: %s has no EMA checkpoint; the average starts from the resumed weights", resume_dir);
        return 0;
    }
    ds_ckpt *ck;
    DS_TRY(ds_ckpt_open(&ck, dir));
    float *avg = ds_ema_values(r->ema);
    for (int i = 0; !rc && i < r->n_info; i++) /* by name: the checkpoint may come from another layout */
        rc = ds_ckpt_read_f32(ck, r->info[i].name, r->info[i].ndim, r->info[i].shape, avg + r->info[i].offset);
    ds_ckpt_close(ck);
    if (!rc && log) ds_info("ema     decay %g, continued from %s", decay, dir);
    return rc;
}

int ds_ema_run_submit(ds_ema_run *r, ds_model *m) {
    if (!r->ema) return 0;
    const ds_ops *ops = ds_model_ops(m);
    if (ds_ops_on_host(ops)) {
        ds_ema_submit(r->ema, ds_model_params(m) + r->off);
        return 0;
    }
    const float *unused;
    int rc = host_weights(m, r->off, ds_ema_size(r->ema), ds_ema_snapshot(r->ema), &unused);
    ds_ema_release(r->ema); /* an update over a failed copy is harmless: the run stops with rc */
    return rc;
}

int ds_ema_run_gather(ds_ema_run *r, const ds_model *m, const ds_comm *c, const float **values) {
    *values = NULL;
    if (r->ema) ds_ema_wait(r->ema); /* the update of the last step is in */
    if (!r->gather) {
        if (r->ema) *values = ds_ema_values(r->ema);
        return 0;
    }
    ds_distckpt_full *f = &r->full;
    if (!f->info) {
        DS_TRY(ds_model_layout(ds_model_config(m), &f->info, &f->n));
        const size_t n = f->info[f->n - 1].offset + f->info[f->n - 1].numel;
        if (c->rank == 0 && !(f->buf = malloc(sizeof(float) * n)))
            return ds_fail(DS_ERR, "out of memory: gathering the EMA of %zu parameters", n);
    }
    DS_TRY(ds_distckpt_gather(c, 0, r->info, r->n_info, r->ema ? ds_ema_values(r->ema) : NULL, f->info, f->n, f->buf));
    *values = f->buf;
    return 0;
}

void ds_ema_run_free(ds_ema_run *r) {
    ds_ema_free(r->ema);
    free(r->info);
    ds_distckpt_full_free(&r->full);
    memset(r, 0, sizeof *r);
}
