/* The output head fused with the log-softmax: logits are formed in chunks of rows and, unless the caller
 * keeps them, never whole; the backward then recomputes each chunk. When one chunk held the whole batch
 * and nothing has written the chunk buffer since, the backward uses the forward's logits as they are
 * (the same product of the same operands: the gradients are the same bit for bit, one GEMM fewer). */
#include "model/internal.h"

void ds_head_fwd(ds_model *m, const float *h, const int32_t *tgt, int n, float *logp, float *lse, float *ent,
                 float *logits) {
    const ds_ops *ops = m->ops;
    int V = m->dims.V, D = m->dims.D, c = logits ? n : m->scr.head_rows;
    int pr = ds_prof_enter(DS_PROF_HEAD);
    for (int r0 = 0; r0 < n; r0 += c) {
        int rows = n - r0 < c ? n - r0 : c;
        float *z = logits ? logits : m->scr.head;
        ds_linear(ops, z, h + (size_t)r0 * D, m->W.head, rows, V, D);
        ops->logsoftmax_fwd(logp + r0, lse + r0, ent ? ent + r0 : NULL, z, tgt + r0, rows, V);
    }
    /* the chunk buffer now holds h's logits whole, or a part of them (or was not written) */
    m->scr.head_of = !logits && c >= n ? h : NULL;
    ds_prof_leave(pr);
}

void ds_head_bwd(ds_model *m, const float *h, const int32_t *tgt, int n, const float *lse, const float *dlogp,
                 float *dh, const float *logits) {
    const ds_ops *ops = m->ops;
    int V = m->dims.V, D = m->dims.D, c = m->scr.head_rows;
    float *z = m->scr.head;
    int pr = ds_prof_enter(DS_PROF_HEAD);
    for (int r0 = 0; r0 < n; r0 += c) {
        int rows = n - r0 < c ? n - r0 : c;
        const float *hc = h + (size_t)r0 * D, *zc = logits ? logits + (size_t)r0 * V : z;
        if (!logits && !(r0 == 0 && rows == n && m->scr.head_of == h)) {
            int rp = ds_prof_recompute(1);
            ds_linear(ops, z, hc, m->W.head, rows, V, D);
            ds_prof_recompute(rp);
        }
        ops->logsoftmax_bwd(z, zc, lse + r0, tgt + r0, dlogp + r0, rows, V);
        m->scr.head_of = NULL; /* overwritten by the gradient of the logits */
        ds_linear_bwd(m, ops, dh + (size_t)r0 * D, 0.0f, m->G.head, z, hc, m->W.head, rows, V, D);
    }
    ds_prof_leave(pr);
}
