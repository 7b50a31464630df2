#include "dist/ep.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

static int grow(void **p, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    void *q = realloc(*p, n);
    if (!q) return ds_fail(DS_ERR, "out of memory: expert-parallel buffers of %zu bytes", n);
    *p = q;
    *cap = n;
    return 0;
}

int ds_ep_init(ds_ep *ep, const ds_comm *c, int n_experts, int topk, ds_a2a_algo algo) {
    memset(ep, 0, sizeof *ep);
    if (n_experts <= 0 || n_experts % c->size)
        return ds_fail(DS_ERR, "expert parallel: %d experts do not divide over %d ranks", n_experts, c->size);
    if (topk <= 0 || topk > n_experts) return ds_fail(DS_ERR, "expert parallel: top-k %d out of range", topk);
    ep->n_ranks = c->size;
    ep->rank = c->rank;
    ep->n_experts = n_experts;
    ep->experts_per_rank = n_experts / c->size;
    ep->topk = topk;
    ep->algo = algo;
    int n = c->size;
    ep->send_rows = calloc(8 * (size_t)n, sizeof(int64_t));
    if (!ep->send_rows) return ds_fail(DS_ERR, "out of memory");
    ep->recv_rows = ep->send_rows + n;
    ep->send_off = ep->send_rows + 2 * n;
    ep->recv_off = ep->send_rows + 3 * n;
    ep->bcount = ep->send_rows + 4 * n;
    ep->boff = ep->send_rows + 5 * n;
    ep->bcount2 = ep->send_rows + 6 * n;
    ep->boff2 = ep->send_rows + 7 * n;
    return 0;
}

void ds_ep_free(ds_ep *ep) {
    free(ep->send_rows);
    free(ep->send_token);
    free(ep->recv_expert);
    free(ep->recv_weight);
    free(ep->sendbuf);
    free(ep->meta_send);
    memset(ep, 0, sizeof *ep);
}

/* byte counts/offsets for rows of `row_bytes` */
static void row_bytes_layout(const int64_t *rows, int n, size_t row_bytes, int64_t *count, int64_t *off) {
    int64_t o = 0;
    for (int j = 0; j < n; j++) {
        count[j] = rows[j] * (int64_t)row_bytes;
        off[j] = o;
        o += count[j];
    }
}

int ds_ep_plan(ds_ep *ep, const ds_comm *c, const int32_t *topk_idx, const float *topk_w, int n_tokens) {
    int n = ep->n_ranks, K = ep->topk, epr = ep->experts_per_rank;
    ep->n_tokens = n_tokens;
    memset(ep->send_rows, 0, (size_t)n * sizeof(int64_t));
    for (int t = 0; t < n_tokens; t++) {
        /* a token visits each destination rank once */
        for (int k = 0; k < K; k++) {
            int e = topk_idx[(size_t)t * K + k];
            if (e < 0 || e >= ep->n_experts)
                return ds_fail(DS_ERR, "expert parallel: token %d routed to expert %d of %d", t, e, ep->n_experts);
            int dst = e / epr, seen = 0;
            for (int k2 = 0; k2 < k; k2++)
                if (topk_idx[(size_t)t * K + k2] / epr == dst) seen = 1;
            if (!seen) ep->send_rows[dst]++;
        }
    }
    ep->n_send = 0;
    for (int j = 0; j < n; j++) {
        ep->send_off[j] = ep->n_send;
        ep->n_send += ep->send_rows[j];
    }
    DS_TRY(ds_comm_alltoall_i64(c, ep->send_rows, ep->recv_rows));
    ep->n_recv = 0;
    for (int j = 0; j < n; j++) {
        ep->recv_off[j] = ep->n_recv;
        ep->n_recv += ep->recv_rows[j];
    }
    if (ep->n_send > ep->send_cap) {
        int32_t *p = realloc(ep->send_token, (size_t)ep->n_send * sizeof *p);
        if (!p) return ds_fail(DS_ERR, "out of memory");
        ep->send_token = p;
        ep->send_cap = ep->n_send;
    }
    if (ep->n_recv > ep->recv_cap) {
        int32_t *pe = realloc(ep->recv_expert, (size_t)ep->n_recv * K * sizeof *pe);
        float *pw = pe ? realloc(ep->recv_weight, (size_t)ep->n_recv * K * sizeof *pw) : NULL;
        if (pe) ep->recv_expert = pe;
        if (pw) ep->recv_weight = pw;
        if (!pe || !pw) return ds_fail(DS_ERR, "out of memory");
        ep->recv_cap = ep->n_recv;
    }
    /* metadata rows: K local expert ids then K weights (as int32 bits), grouped by destination */
    size_t meta_row = 2 * (size_t)K;
    DS_TRY(grow((void **)&ep->meta_send, &ep->meta_cap, (size_t)ep->n_send * meta_row * sizeof(int32_t) + 1));
    int64_t *fill = ep->bcount2; /* rows filled per destination */
    memset(fill, 0, (size_t)n * sizeof *fill);
    for (int t = 0; t < n_tokens; t++) {
        for (int k = 0; k < K; k++) {
            int dst = topk_idx[(size_t)t * K + k] / epr, seen = 0;
            for (int k2 = 0; k2 < k; k2++)
                if (topk_idx[(size_t)t * K + k2] / epr == dst) seen = 1;
            if (seen) continue;
            int64_t row = ep->send_off[dst] + fill[dst]++;
            ep->send_token[row] = t;
            int32_t *m = ep->meta_send + row * meta_row;
            int used = 0;
            for (int k2 = 0; k2 < K; k2++) {
                int e = topk_idx[(size_t)t * K + k2];
                if (e / epr != dst) continue;
                m[used] = e - dst * epr;
                memcpy(&m[K + used], &topk_w[(size_t)t * K + k2], 4);
                used++;
            }
            for (; used < K; used++) {
                m[used] = -1;
                m[K + used] = 0;
            }
        }
    }
    size_t meta_bytes = meta_row * sizeof(int32_t);
    row_bytes_layout(ep->send_rows, n, meta_bytes, ep->bcount, ep->boff);
    row_bytes_layout(ep->recv_rows, n, meta_bytes, ep->bcount2, ep->boff2);
    int32_t *meta_recv = malloc((size_t)ep->n_recv * meta_bytes + 1);
    if (!meta_recv) return ds_fail(DS_ERR, "out of memory");
    int rc = ds_a2a_bytes(c, ep->algo, ep->meta_send, ep->bcount, ep->boff, meta_recv, ep->bcount2, ep->boff2);
    if (!rc) {
        for (int64_t r = 0; r < ep->n_recv; r++) {
            const int32_t *m = meta_recv + r * meta_row;
            memcpy(ep->recv_expert + r * K, m, (size_t)K * sizeof(int32_t));
            memcpy(ep->recv_weight + r * K, m + K, (size_t)K * sizeof(float));
        }
    }
    free(meta_recv);
    return rc;
}

int ds_ep_dispatch(ds_ep *ep, const ds_comm *c, const void *x, void *recv, size_t row_bytes) {
    DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)ep->n_send * row_bytes + 1));
    const char *src = x;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < ep->n_send; r++)
        memcpy(ep->sendbuf + r * row_bytes, src + (size_t)ep->send_token[r] * row_bytes, row_bytes);
    row_bytes_layout(ep->send_rows, ep->n_ranks, row_bytes, ep->bcount, ep->boff);
    row_bytes_layout(ep->recv_rows, ep->n_ranks, row_bytes, ep->bcount2, ep->boff2);
    return ds_a2a_bytes(c, ep->algo, ep->sendbuf, ep->bcount, ep->boff, recv, ep->bcount2, ep->boff2);
}

int ds_ep_combine(ds_ep *ep, const ds_comm *c, const float *y, float *out, int D) {
    size_t row_bytes = (size_t)D * sizeof(float);
    DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)ep->n_send * row_bytes + 1));
    /* the reverse exchange: what arrived from rank j goes back to rank j, in the same row order */
    row_bytes_layout(ep->recv_rows, ep->n_ranks, row_bytes, ep->bcount, ep->boff);
    row_bytes_layout(ep->send_rows, ep->n_ranks, row_bytes, ep->bcount2, ep->boff2);
    DS_TRY(ds_a2a_bytes(c, ep->algo, y, ep->bcount, ep->boff, ep->sendbuf, ep->bcount2, ep->boff2));
    memset(out, 0, (size_t)ep->n_tokens * row_bytes);
    const float *back = (const float *)ep->sendbuf;
    /* rows are grouped by rank: summing in row order sums each token's parts in rank order */
    for (int64_t r = 0; r < ep->n_send; r++) {
        float *o = out + (size_t)ep->send_token[r] * D;
        const float *b = back + (size_t)r * D;
        for (int d = 0; d < D; d++) o[d] += b[d];
    }
    return 0;
}

int ds_ep_combine_slots(ds_ep *ep, const ds_comm *c, const float *g, const int32_t *topk_idx, float *out) {
    const int K = ep->topk, epr = ep->experts_per_rank;
    size_t row_bytes = (size_t)K * sizeof(float);
    DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)ep->n_send * row_bytes + 1));
    row_bytes_layout(ep->recv_rows, ep->n_ranks, row_bytes, ep->bcount, ep->boff);
    row_bytes_layout(ep->send_rows, ep->n_ranks, row_bytes, ep->bcount2, ep->boff2);
    DS_TRY(ds_a2a_bytes(c, ep->algo, g, ep->bcount, ep->boff, ep->sendbuf, ep->bcount2, ep->boff2));
    memset(out, 0, (size_t)ep->n_tokens * row_bytes);
    const float *back = (const float *)ep->sendbuf;
    /* a row sent to rank j packed the token's slots on j in slot order (ds_ep_plan) */
    for (int j = 0; j < ep->n_ranks; j++)
        for (int64_t r = ep->send_off[j]; r < ep->send_off[j] + ep->send_rows[j]; r++) {
            const int t = ep->send_token[r];
            int used = 0;
            for (int k = 0; k < K; k++)
                if (topk_idx[(size_t)t * K + k] / epr == j) out[(size_t)t * K + k] = back[(size_t)r * K + used++];
        }
    return 0;
}
