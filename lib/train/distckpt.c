#include "train/distckpt.h"

#include "core/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* a table's entries sorted by name, for lookups */
typedef struct {
    const ds_param *p;
    int *order;
    int n;
} by_name;

static const ds_param *sort_base;
static int cmp_idx(const void *a, const void *b) {
    return strcmp(sort_base[*(const int *)a].name, sort_base[*(const int *)b].name);
}

static int index_table(by_name *x, const ds_param *p, int n) {
    x->p = p, x->n = n;
    x->order = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!x->order) return ds_fail(DS_ERR, "out of memory: tensor index");
    for (int i = 0; i < n; i++) x->order[i] = i;
    sort_base = p; /* qsort has no context argument; the checkpoint paths are single-threaded */
    qsort(x->order, (size_t)n, sizeof(int), cmp_idx);
    return 0;
}

/* index into x->p of the tensor called name, or -1 */
static int lookup(const by_name *x, const char *name) {
    int lo = 0, hi = x->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2, c = strcmp(x->p[x->order[mid]].name, name);
        if (!c) return x->order[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* where[i]: index in `local` of wanted tensor i (-1: not held here); an element-count mismatch fails */
static int match(const ds_param *local, int n_local, const ds_param *want, int n_want, int *where) {
    by_name x;
    DS_TRY(index_table(&x, local, n_local));
    int rc = 0;
    for (int i = 0; i < n_want && !rc; i++) {
        where[i] = lookup(&x, want[i].name);
        if (where[i] >= 0 && local[where[i]].numel != want[i].numel)
            rc = ds_fail(DS_ERR, "checkpoint: %s has %zu values here, %zu in the full model", want[i].name,
                         local[where[i]].numel, want[i].numel);
    }
    free(x.order);
    return rc;
}

int ds_distckpt_gather(const ds_comm *c, int root, const ds_param *have, int n_have, const float *have_buf,
                       const ds_param *want, int n_want, float *want_buf) {
    const int W = c->size, me = c->rank;
    int *where = malloc(sizeof(int) * (size_t)(n_want + 1)), *owner = malloc(sizeof(int) * (size_t)(n_want + 1));
    double *lowest = malloc(sizeof(double) * (size_t)(n_want + 1));
    int64_t *cnt = calloc(4 * (size_t)W, sizeof(int64_t));
    float *send = NULL, *recv = NULL;
    int rc = where && owner && lowest && cnt ? 0 : ds_fail(DS_ERR, "out of memory: gathering the checkpoint");
    if (!rc) rc = match(have, n_have, want, n_want, where);
    /* the lowest rank holding each tensor sends it: the max of -rank over the holders */
    for (int i = 0; !rc && i < n_want; i++) lowest[i] = where[i] >= 0 ? -(double)me : -INFINITY;
    if (!rc && W > 1) rc = ds_comm_allreduce_max_f64(c, lowest, n_want);
    for (int i = 0; !rc && i < n_want; i++) {
        if (!isfinite(lowest[i])) rc = ds_fail(DS_ERR, "checkpoint: no rank holds %s", want[i].name);
        owner[i] = (int)-lowest[i];
    }
    int64_t *scount = cnt, *sdispl = cnt + W, *rcount = cnt + 2 * W, *rdispl = cnt + 3 * W;
    size_t mine = 0;
    for (int i = 0; !rc && i < n_want; i++) {
        if (owner[i] == me && me != root) mine += want[i].numel;
        if (me == root && owner[i] != root) rcount[owner[i]] += (int64_t)(want[i].numel * sizeof(float));
    }
    for (int r = 1; r < W; r++) rdispl[r] = rdispl[r - 1] + rcount[r - 1];
    scount[root] = (int64_t)(mine * sizeof(float));
    if (!rc && !(send = malloc(mine * sizeof(float) + 4))) rc = ds_fail(DS_ERR, "out of memory: gathering the checkpoint");
    if (!rc && !(recv = malloc((size_t)(rdispl[W - 1] + rcount[W - 1]) + 4)))
        rc = ds_fail(DS_ERR, "out of memory: gathering the checkpoint");
    for (size_t i = 0, o = 0; !rc && me != root && i < (size_t)n_want; i++)
        if (owner[i] == me) {
            memcpy(send + o, have_buf + have[where[i]].offset, want[i].numel * sizeof(float));
            o += want[i].numel;
        }
    if (!rc && W > 1) rc = ds_comm_alltoallv_bytes(c, send, scount, sdispl, recv, rcount, rdispl);
    if (!rc && me == root) { /* each rank's block holds its tensors in wanted order */
        for (int r = 0; r < W; r++) {
            const float *src = (const float *)((const char *)recv + rdispl[r]);
            for (int i = 0; i < n_want; i++) {
                if (owner[i] != r) continue;
                if (r == root) {
                    memcpy(want_buf + want[i].offset, have_buf + have[where[i]].offset, want[i].numel * sizeof(float));
                } else {
                    memcpy(want_buf + want[i].offset, src, want[i].numel * sizeof(float));
                    src += want[i].numel;
                }
            }
        }
    }
    free(where), free(owner), free(lowest), free(cnt), free(send), free(recv);
    return rc;
}

int ds_distckpt_scatter(const ds_comm *c, int root, const ds_param *src, int n_src, const float *src_buf,
                        const ds_param *dst, int n_dst, float *dst_buf) {
    const int W = c->size, me = c->rank;
    int *where = malloc(sizeof(int) * (size_t)(n_dst + 1)); /* index into src of each of my tensors */
    int64_t *cnt = calloc(4 * (size_t)W, sizeof(int64_t)), *want_n = calloc((size_t)W, sizeof(int64_t));
    int32_t *lists = NULL; /* root: every rank's wanted src indices, rank after rank */
    float *send = NULL, *recv = NULL;
    int rc = where && cnt && want_n ? 0 : ds_fail(DS_ERR, "out of memory: scattering the checkpoint");
    if (!rc) rc = match(src, n_src, dst, n_dst, where); /* the same table on every rank: names resolve alike */
    for (int i = 0; !rc && i < n_dst; i++)
        if (where[i] < 0) rc = ds_fail(DS_ERR, "checkpoint: %s is not in the checkpoint", dst[i].name);
    int64_t *scount = cnt, *sdispl = cnt + W, *rcount = cnt + 2 * W, *rdispl = cnt + 3 * W;
    /* 1: root learns which tensors each rank wants (their src indices, in the rank's own order) */
    want_n[me] = n_dst;
    if (!rc && W > 1) rc = ds_comm_allreduce_sum_i64(c, want_n, W);
    int64_t total = 0;
    for (int r = 0; r < W; r++) total += want_n[r];
    if (!rc && !(lists = malloc(sizeof(int32_t) * (size_t)(total + 1)))) rc = ds_fail(DS_ERR, "out of memory");
    if (!rc) {
        scount[root] = (int64_t)sizeof(int32_t) * n_dst;
        for (int r = 0; me == root && r < W; r++) {
            rcount[r] = (int64_t)sizeof(int32_t) * want_n[r];
            rdispl[r] = r ? rdispl[r - 1] + rcount[r - 1] : 0;
        }
        int32_t *mine = malloc(sizeof(int32_t) * (size_t)(n_dst + 1));
        if (!mine) rc = ds_fail(DS_ERR, "out of memory");
        for (int i = 0; !rc && i < n_dst; i++) mine[i] = where[i];
        if (!rc) rc = W > 1 ? ds_comm_alltoallv_bytes(c, mine, scount, sdispl, lists, rcount, rdispl) : 0;
        if (!rc && W == 1) memcpy(lists, mine, sizeof(int32_t) * (size_t)n_dst);
        free(mine);
    }
    /* 2: root sends each rank its tensors in that order */
    memset(cnt, 0, 4 * (size_t)W * sizeof(int64_t));
    size_t out = 0, in = 0;
    for (int i = 0; i < n_dst; i++) in += dst[i].numel;
    const int32_t *l = lists;
    for (int r = 0; !rc && me == root && r < W; r++) {
        sdispl[r] = (int64_t)(out * sizeof(float));
        for (int64_t k = 0; k < want_n[r]; k++) out += src[l[k]].numel;
        scount[r] = (int64_t)(out * sizeof(float)) - sdispl[r];
        l += want_n[r];
    }
    rcount[root] = (int64_t)(in * sizeof(float));
    if (!rc && (!(send = malloc(out * sizeof(float) + 4)) || !(recv = malloc(in * sizeof(float) + 4))))
        rc = ds_fail(DS_ERR, "out of memory: scattering the checkpoint");
    for (int64_t k = 0, o = 0; !rc && me == root && k < total; k++) {
        memcpy(send + o, src_buf + src[lists[k]].offset, src[lists[k]].numel * sizeof(float));
        o += (int64_t)src[lists[k]].numel;
    }
    if (!rc) rc = W > 1 ? ds_comm_alltoallv_bytes(c, send, scount, sdispl, recv, rcount, rdispl) : 0;
    if (!rc && W == 1) memcpy(recv, send, in * sizeof(float));
    for (size_t i = 0, o = 0; !rc && i < (size_t)n_dst; i++) {
        memcpy(dst_buf + dst[i].offset, recv + o, dst[i].numel * sizeof(float));
        o += dst[i].numel;
    }
    free(where), free(cnt), free(want_n), free(lists), free(send), free(recv);
    return rc;
}

int ds_distckpt_gather_model(ds_distckpt_full *f, const ds_model *m, const ds_comm *c, int root, const float *src) {
    if (!f->info) {
        DS_TRY(ds_model_layout(ds_model_config(m), &f->info, &f->n));
        const ds_param *last = &f->info[f->n - 1];
        const size_t n = last->offset + last->numel;
        if (c->rank == root && !(f->buf = malloc(sizeof(float) * n)))
            return ds_fail(DS_ERR, "out of memory: gathering %zu parameters for the checkpoint", n);
    }
    int n;
    const ds_param *info = ds_model_params_info(m, &n);
    return ds_distckpt_gather(c, root, info, n, src, f->info, f->n, f->buf);
}

void ds_distckpt_full_free(ds_distckpt_full *f) {
    free(f->info);
    free(f->buf);
    memset(f, 0, sizeof *f);
}
