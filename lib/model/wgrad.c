/* The backward split into B (input gradients) and W (weight gradients), for pipeline schedules that run
 * W later to fill bubbles (zero-bubble 1F1B, DualPipe).
 *
 * Every weight-gradient product of the network's backward goes through the three functions below: the
 * Linear Wgrads (MLA, dense FFN, shared experts, router, head, MTP eh_proj), the routed experts' grouped
 * Wgrads, and the embedding's scatter-add (main and MTP inputs). Outside deferral they run at once, as
 * the full backward always did. While a key is set (ds_model_wgrad_defer) they are recorded instead, with
 * copies of their activation operands (those live in shared scratch that the next layer's backward
 * overwrites); ds_model_wgrad_run(key) replays the key's records in recorded order, so B followed by W
 * adds the same products in the same order as the full backward: the gradients are identical bit for bit.
 * What stays in B: the RMSNorm gains (their gradient comes out of the same pass as the input gradient and
 * costs O(n d), not a GEMM).
 *
 * Operand copies come from a pool of buffers that are reused once replayed, so a steady schedule stops
 * allocating after its first step. */
#include "model/internal.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

enum { WG_GEMM = 0, WG_GROUPED = 1, WG_EMBED = 2, WG_GROUPED_DEV = 3 };

struct ds_wgrad_op {
    int kind, key;
    const ds_ops *ops;
    int ta, tb, M, N, K, lda, ldb, ldc, ng, n, d;
    size_t strideC;
    int a_slot, b_slot, off_slot; /* pool entries holding the operand copies (-1: none) */
    float *C;                     /* the gradient accumulated into (not copied) */
};

/* operand bytes of a matrix of rows x cols stored with row stride ld */
static size_t mat_bytes(int rows, int cols, int ld, size_t elem) {
    return rows > 0 && cols > 0 ? elem * ((size_t)(rows - 1) * (size_t)ld + (size_t)cols) : 0;
}

/* A pool entry of at least `bytes`: the smallest free one that fits, else a new one. host: malloc'd
 * (the grouped GEMM's host offsets), else backend memory. */
static int pool_take(ds_model *m, size_t bytes, int host) {
    ds_wgrad_queue *q = &m->wq;
    int best = -1;
    for (int i = 0; i < q->n_pool; i++) {
        ds_wgrad_buf *b = &q->pool[i];
        if (!b->used && b->host == host && b->bytes >= bytes && (best < 0 || b->bytes < q->pool[best].bytes)) best = i;
    }
    if (best >= 0) {
        q->pool[best].used = 1;
        return best;
    }
    if (q->n_pool == q->cap_pool) {
        int cap = q->cap_pool ? 2 * q->cap_pool : 64;
        ds_wgrad_buf *p = realloc(q->pool, sizeof *p * (size_t)cap);
        if (!p) return -1;
        q->pool = p, q->cap_pool = cap;
    }
    void *mem = host ? malloc(bytes ? bytes : 1) : m->ops->alloc(bytes ? bytes : 64);
    if (!mem) return -1;
    q->pool[q->n_pool] = (ds_wgrad_buf){.p = mem, .bytes = bytes, .used = 1, .host = host};
    return q->n_pool++;
}

static void *pool_ptr(const ds_model *m, int slot) { return slot >= 0 ? m->wq.pool[slot].p : NULL; }

/* a copy of an operand into a pool entry, or -1 (error recorded) */
static int pool_copy(ds_model *m, const void *src, size_t bytes, int host) {
    int s = pool_take(m, bytes, host);
    if (s < 0) {
        if (!m->wq.err) m->wq.err = ds_fail(DS_ERR, "out of memory: %zu bytes for a deferred weight gradient", bytes);
        return -1;
    }
    if (bytes) {
        if (host) memcpy(m->wq.pool[s].p, src, bytes);
        else m->ops->copy(m->wq.pool[s].p, src, bytes, DS_COPY_D2D);
    }
    return s;
}

static ds_wgrad_op *push(ds_model *m) {
    ds_wgrad_queue *q = &m->wq;
    if (q->n_op == q->cap_op) {
        int cap = q->cap_op ? 2 * q->cap_op : 64;
        ds_wgrad_op *p = realloc(q->op, sizeof *p * (size_t)cap);
        if (!p) {
            if (!q->err) q->err = ds_fail(DS_ERR, "out of memory: deferred weight gradients");
            return NULL;
        }
        q->op = p, q->cap_op = cap;
    }
    ds_wgrad_op *o = &q->op[q->n_op++];
    memset(o, 0, sizeof *o);
    o->key = q->key;
    o->a_slot = o->b_slot = o->off_slot = -1;
    return o;
}

void ds_wgrad_gemm(ds_model *m, const ds_ops *ops, int ta, int tb, int M, int N, int K, const float *A, int lda,
                   const float *B, int ldb, float *C, int ldc) {
    if (m->wq.key < 0) {
        ops->gemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C, ldc);
        return;
    }
    ds_wgrad_op *o = push(m);
    if (!o) return;
    *o = (ds_wgrad_op){.kind = WG_GEMM, .key = m->wq.key, .ops = ops, .ta = ta, .tb = tb, .M = M, .N = N, .K = K,
                       .lda = lda, .ldb = ldb, .ldc = ldc, .C = C, .off_slot = -1};
    o->a_slot = pool_copy(m, A, mat_bytes(ta ? K : M, ta ? M : K, lda, sizeof(float)), 0);
    o->b_slot = pool_copy(m, B, mat_bytes(tb ? N : K, tb ? K : N, ldb, sizeof(float)), 0);
}

void ds_wgrad_grouped(ds_model *m, const ds_ops *ops, int ng, const int64_t *off, int M, int N, const float *A,
                      int lda, const float *B, int ldb, float *C, size_t strideC, int ldc) {
    if (m->wq.key < 0) {
        ops->gemm_wgrad(ng, off, M, N, 1.0f, A, lda, B, ldb, 1.0f, C, strideC, ldc);
        return;
    }
    ds_wgrad_op *o = push(m);
    if (!o) return;
    int rows = (int)off[ng];
    *o = (ds_wgrad_op){.kind = WG_GROUPED, .key = m->wq.key, .ops = ops, .ng = ng, .M = M, .N = N, .lda = lda,
                       .ldb = ldb, .ldc = ldc, .strideC = strideC, .C = C};
    o->off_slot = pool_copy(m, off, sizeof(int64_t) * (size_t)(ng + 1), 1);
    o->a_slot = pool_copy(m, A, mat_bytes(rows, M, lda, sizeof(float)), 0);
    o->b_slot = pool_copy(m, B, mat_bytes(rows, N, ldb, sizeof(float)), 0);
}

void ds_wgrad_grouped_dev(ds_model *m, const ds_ops *ops, int ng, const int32_t *off, int max_rows, int M, int N,
                          const float *A, int lda, const float *B, int ldb, float *C, size_t strideC, int ldc) {
    if (m->wq.key < 0) {
        ops->gemm_wgrad_dev(ng, off, M, N, 1.0f, A, lda, B, ldb, 1.0f, C, strideC, ldc);
        return;
    }
    ds_wgrad_op *o = push(m);
    if (!o) return;
    *o = (ds_wgrad_op){.kind = WG_GROUPED_DEV, .key = m->wq.key, .ops = ops, .ng = ng, .M = M, .N = N, .lda = lda,
                       .ldb = ldb, .ldc = ldc, .strideC = strideC, .C = C};
    /* the offsets are copied on the device too: no host round trip when recording either */
    o->off_slot = pool_copy(m, off, sizeof(int32_t) * (size_t)(ng + 1), 0);
    o->a_slot = pool_copy(m, A, mat_bytes(max_rows, M, lda, sizeof(float)), 0);
    o->b_slot = pool_copy(m, B, mat_bytes(max_rows, N, ldb, sizeof(float)), 0);
}

void ds_wgrad_embed(ds_model *m, float *dtable, const float *dx, const int32_t *tok, int n, int d) {
    if (m->wq.key < 0) {
        m->ops->embed_bwd(dtable, dx, tok, n, d);
        return;
    }
    ds_wgrad_op *o = push(m);
    if (!o) return;
    *o = (ds_wgrad_op){.kind = WG_EMBED, .key = m->wq.key, .ops = m->ops, .n = n, .d = d, .C = dtable,
                       .off_slot = -1};
    o->a_slot = pool_copy(m, dx, mat_bytes(n, d, d, sizeof(float)), 0);
    o->b_slot = pool_copy(m, tok, sizeof(int32_t) * (size_t)n, 0);
}

static void replay(ds_model *m, const ds_wgrad_op *o) {
    const float *A = pool_ptr(m, o->a_slot), *B = pool_ptr(m, o->b_slot);
    switch (o->kind) {
    case WG_GEMM:
        o->ops->gemm(o->ta, o->tb, o->M, o->N, o->K, 1.0f, A, o->lda, B, o->ldb, 1.0f, o->C, o->ldc);
        break;
    case WG_GROUPED:
        o->ops->gemm_wgrad(o->ng, pool_ptr(m, o->off_slot), o->M, o->N, 1.0f, A, o->lda, B, o->ldb, 1.0f, o->C,
                           o->strideC, o->ldc);
        break;
    case WG_GROUPED_DEV:
        o->ops->gemm_wgrad_dev(o->ng, pool_ptr(m, o->off_slot), o->M, o->N, 1.0f, A, o->lda, B, o->ldb, 1.0f, o->C,
                               o->strideC, o->ldc);
        break;
    default:
        o->ops->embed_bwd(o->C, A, (const int32_t *)B, o->n, o->d);
        break;
    }
}

int ds_model_wgrad_defer(ds_model *m, int key) {
    if (key >= 0 && !m->opts.train) return ds_fail(DS_ERR, "model: deferred weight gradients need a training model");
    m->wq.key = key < 0 ? -1 : key;
    return 0;
}

int ds_model_wgrad_run(ds_model *m, int key) {
    ds_wgrad_queue *q = &m->wq;
    if (q->err) {
        int rc = q->err;
        q->err = 0;
        return rc;
    }
    int k = 0, ran = 0;
    for (int i = 0; i < q->n_op; i++) {
        if (q->op[i].key == key) replay(m, &q->op[i]), ran = 1;
    }
    /* the operand copies stay untouched until the queued work is done (a device backend runs it later) */
    if (ran) m->ops->sync();
    for (int i = 0; i < q->n_op; i++) {
        ds_wgrad_op *o = &q->op[i];
        if (o->key != key) {
            q->op[k++] = *o;
            continue;
        }
        if (o->a_slot >= 0) q->pool[o->a_slot].used = 0;
        if (o->b_slot >= 0) q->pool[o->b_slot].used = 0;
        if (o->off_slot >= 0) q->pool[o->off_slot].used = 0;
    }
    q->n_op = k;
    return 0;
}

int ds_model_wgrad_pending(const ds_model *m, int key) {
    int c = 0;
    for (int i = 0; i < m->wq.n_op; i++) c += key < 0 || m->wq.op[i].key == key;
    return c;
}

int ds_wgrad_status(ds_model *m) {
    int rc = m->wq.err;
    m->wq.err = 0;
    return rc;
}

void ds_wgrad_free(ds_model *m) {
    ds_wgrad_queue *q = &m->wq;
    for (int i = 0; i < q->n_pool; i++) {
        if (q->pool[i].host) free(q->pool[i].p);
        else if (m->ops) m->ops->free(q->pool[i].p);
    }
    free(q->pool);
    free(q->op);
    memset(q, 0, sizeof *q);
}
