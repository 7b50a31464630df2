#include "dist/ep.h"

#include "core/dtype.h"
#include "core/err.h"

#include <stdlib.h>
#include <string.h>

/* The two-hop plan. Hop 1 goes between ranks with the same local index (one row per token and target
 * node, to that node's relay), hop 2 inside a node (one row per relayed token and target rank). */
struct ds_ep_hops {
    int ranks_per_node;
    int64_t *h1_send_rows, *h1_recv_rows, *h1_send_off, *h1_recv_off; /* [n_ranks] each */
    int64_t *h2_send_rows, *h2_recv_rows, *h2_send_off, *h2_recv_off;
    int64_t n_h1_send, n_h1_recv, n_h2_send;                          /* hop 2 receives n_recv rows */
    int32_t *h1_send_token; /* [n_h1_send] local token of each hop-1 row, grouped by relay */
    int32_t *h2_send_src;   /* [n_h2_send] the hop-1 row each hop-2 row forwards, grouped by target */
    int64_t *recv_pos;      /* [n_recv] where each hop-2 arrival sits in the one-hop order */
    size_t h1_cap, h2_cap, pos_cap;
    char *buf1, *buf2; /* rows between the hops */
    size_t buf1_cap, buf2_cap;
    int32_t *meta_recv; /* hop 1's metadata as it reached the relay (ds_ep_combine_slots reads it) */
    size_t meta_recv_cap;
};

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
    ep->node_of = calloc((size_t)n, sizeof *ep->node_of); /* one node until told otherwise */
    if (!ep->send_rows || !ep->node_of) {
        ds_ep_free(ep);
        return ds_fail(DS_ERR, "out of memory");
    }
    ep->n_nodes = 1;
    ep->recv_rows = ep->send_rows + n;
    ep->send_off = ep->send_rows + 2 * n;
    ep->recv_off = ep->send_rows + 3 * n;
    ep->bcount = ep->send_rows + 4 * n;
    ep->boff = ep->send_rows + 5 * n;
    ep->bcount2 = ep->send_rows + 6 * n;
    ep->boff2 = ep->send_rows + 7 * n;
    return 0;
}

static void hops_free(struct ds_ep_hops *h) {
    if (!h) return;
    free(h->h1_send_rows);
    free(h->h1_send_token);
    free(h->h2_send_src);
    free(h->recv_pos);
    free(h->buf1);
    free(h->buf2);
    free(h->meta_recv);
    free(h);
}

void ds_ep_free(ds_ep *ep) {
    free(ep->send_rows);
    free(ep->send_token);
    free(ep->recv_expert);
    free(ep->recv_weight);
    free(ep->sendbuf);
    free(ep->meta_send);
    free(ep->node_of);
    free(ep->partial);
    free(ep->wire16);
    hops_free(ep->hops);
    memset(ep, 0, sizeof *ep);
}

int ds_ep_set_nodes(ds_ep *ep, const int *node_of, ds_ep_transport transport) {
    int n = ep->n_ranks, g = 0;
    for (int j = 0; j < n; j++) {
        if (j > 0 && node_of && node_of[j] != node_of[j - 1]) {
            for (int i = 0; i < j; i++)
                if (node_of[i] == node_of[j])
                    return ds_fail(DS_ERR, "expert parallel: ranks %d and %d share node %d but rank %d between them "
                                           "does not (a node's ranks must be consecutive)", i, j, node_of[j], j - 1);
            g++;
        }
        ep->node_of[j] = g;
    }
    ep->n_nodes = g + 1;
    ep->transport = transport;
    hops_free(ep->hops);
    ep->hops = NULL;
    if (transport != DS_EP_TWO_HOP) return 0;
    int per = n / ep->n_nodes;
    for (int j = 0; j < n; j++)
        if (n % ep->n_nodes || ep->node_of[j] != j / per)
            return ds_fail(DS_ERR, "expert parallel: two-hop dispatch needs the same number of ranks on every node "
                                   "(%d ranks on %d nodes)", n, ep->n_nodes);
    /* one rank per node (the relay is the target) or one node (the relay is the sender): the two hops
     * are the one hop with an empty second exchange, so the one hop runs */
    if (per == 1 || ep->n_nodes == 1) {
        ep->transport = DS_EP_ONE_HOP;
        return 0;
    }
    ep->hops = calloc(1, sizeof *ep->hops);
    int64_t *v = calloc(8 * (size_t)n, sizeof *v);
    if (!ep->hops || !v) {
        free(v);
        return ds_fail(DS_ERR, "out of memory");
    }
    struct ds_ep_hops *h = ep->hops;
    h->ranks_per_node = per;
    h->h1_send_rows = v, h->h1_recv_rows = v + n, h->h1_send_off = v + 2 * n, h->h1_recv_off = v + 3 * n;
    h->h2_send_rows = v + 4 * n, h->h2_recv_rows = v + 5 * n, h->h2_send_off = v + 6 * n, h->h2_recv_off = v + 7 * n;
    return 0;
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

/* offsets of row counts; returns the total */
static int64_t row_offsets(const int64_t *rows, int n, int64_t *off) {
    int64_t o = 0;
    for (int j = 0; j < n; j++) {
        off[j] = o;
        o += rows[j];
    }
    return o;
}

/* One all-to-all of rows: `send_rows[j]` rows of `row_bytes` to rank j, `recv_rows[j]` from it, every
 * byte sent to another rank counted in `acct` by whether it leaves the node. */
void ds_ep_exchange_layout(ds_ep *ep, ds_ep_bytes *acct, const int64_t *send_rows, const int64_t *recv_rows,
                           size_t row_bytes) {
    row_bytes_layout(send_rows, ep->n_ranks, row_bytes, ep->bcount, ep->boff);
    row_bytes_layout(recv_rows, ep->n_ranks, row_bytes, ep->bcount2, ep->boff2);
    for (int j = 0; j < ep->n_ranks && acct; j++) {
        if (j == ep->rank) continue;
        if (ep->node_of[j] == ep->node_of[ep->rank]) acct->intra += ep->bcount[j];
        else acct->inter += ep->bcount[j];
    }
}

static int exchange(ds_ep *ep, const ds_comm *c, ds_ep_bytes *acct, const void *send, const int64_t *send_rows,
                    void *recv, const int64_t *recv_rows, size_t row_bytes) {
    ds_ep_exchange_layout(ep, acct, send_rows, recv_rows, row_bytes);
    return ds_a2a_bytes(c, ep->algo, send, ep->bcount, ep->boff, recv, ep->bcount2, ep->boff2);
}

/* Copy rows: dst[i] = src[idx[i]] (idx NULL: dst[i] = src[i]); with pos, dst[pos[i]] = src[i]. */
static void gather_rows(char *dst, const char *src, const int32_t *idx, int64_t n, size_t row_bytes) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) memcpy(dst + r * row_bytes, src + (size_t)idx[r] * row_bytes, row_bytes);
}

static void scatter_rows(char *dst, const char *src, const int64_t *pos, int64_t n, size_t row_bytes) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) memcpy(dst + pos[r] * row_bytes, src + r * row_bytes, row_bytes);
}

/* out[idx[r]] += rows[r] for r in order: the one summation every combine path uses, so the order of
 * the additions is fixed by the order of the rows */
static void scatter_add(float *out, const int32_t *idx, const float *rows, int64_t n, int D) {
    for (int64_t r = 0; r < n; r++) {
        float *o = out + (size_t)idx[r] * D;
        const float *b = rows + (size_t)r * D;
        for (int d = 0; d < D; d++) o[d] += b[d];
    }
}

/* The rank of expert slot k of token t, and whether an earlier slot of t already went to the same
 * group (rank, or node with node_of) — a token travels to a rank or node once. */
static int slot_rank(const ds_ep *ep, const int32_t *topk_idx, int t, int k) {
    return topk_idx[(size_t)t * ep->topk + k] / ep->experts_per_rank;
}

static int seen_before(const ds_ep *ep, const int32_t *topk_idx, int t, int k, const int *node_of) {
    int g = slot_rank(ep, topk_idx, t, k);
    if (node_of) g = node_of[g];
    for (int k2 = 0; k2 < k; k2++) {
        int g2 = slot_rank(ep, topk_idx, t, k2);
        if ((node_of ? node_of[g2] : g2) == g) return 1;
    }
    return 0;
}

/* The routing metadata of one row: the K slots' expert ids (global with rank_base < 0, else minus
 * rank_base * experts_per_rank) and weights of the slots whose rank is in [lo, hi), -1/0 padded. */
static void meta_row(const ds_ep *ep, const int32_t *ids, const void *w, int lo, int hi, int rank_base,
                     int32_t *m) {
    int K = ep->topk, used = 0;
    for (int k = 0; k < K; k++) {
        if (ids[k] < 0) continue;
        int r = ids[k] / ep->experts_per_rank;
        if (r < lo || r >= hi) continue;
        m[used] = rank_base < 0 ? ids[k] : ids[k] - rank_base * ep->experts_per_rank;
        memcpy(&m[K + used], (const char *)w + 4 * (size_t)k, 4); /* weights may sit in int32 rows */
        used++;
    }
    for (; used < K; used++) {
        m[used] = -1;
        m[K + used] = 0;
    }
}

/* The one-hop plan's sending side, which both transports keep (the rows a token sends per rank, in
 * rank then token order); with meta, also the one-hop metadata rows. */
static int plan_send_side(ds_ep *ep, const int32_t *topk_idx, const float *topk_w, int n_tokens, int with_meta) {
    int n = ep->n_ranks, K = ep->topk;
    ep->n_tokens = n_tokens;
    memset(ep->send_rows, 0, (size_t)n * sizeof(int64_t));
    for (int t = 0; t < n_tokens; t++) {
        for (int k = 0; k < K; k++) {
            int e = topk_idx[(size_t)t * K + k];
            if (e < 0 || e >= ep->n_experts)
                return ds_fail(DS_ERR, "expert parallel: token %d routed to expert %d of %d", t, e, ep->n_experts);
            if (!seen_before(ep, topk_idx, t, k, NULL)) ep->send_rows[e / ep->experts_per_rank]++;
        }
    }
    ep->n_send = row_offsets(ep->send_rows, n, ep->send_off);
    if (ep->n_send > ep->send_cap) {
        int32_t *p = realloc(ep->send_token, (size_t)ep->n_send * sizeof *p);
        if (!p) return ds_fail(DS_ERR, "out of memory");
        ep->send_token = p;
        ep->send_cap = ep->n_send;
    }
    size_t meta_row_len = 2 * (size_t)K;
    if (with_meta)
        DS_TRY(grow((void **)&ep->meta_send, &ep->meta_cap, (size_t)ep->n_send * meta_row_len * sizeof(int32_t) + 1));
    int64_t *fill = ep->bcount2; /* rows filled per destination */
    memset(fill, 0, (size_t)n * sizeof *fill);
    for (int t = 0; t < n_tokens; t++) {
        for (int k = 0; k < K; k++) {
            if (seen_before(ep, topk_idx, t, k, NULL)) continue;
            int dst = slot_rank(ep, topk_idx, t, k);
            int64_t row = ep->send_off[dst] + fill[dst]++;
            ep->send_token[row] = t;
            if (with_meta)
                meta_row(ep, topk_idx + (size_t)t * K, topk_w + (size_t)t * K, dst, dst + 1, dst,
                         ep->meta_send + row * meta_row_len);
        }
    }
    return 0;
}

static int alloc_recv(ds_ep *ep) {
    if (ep->n_recv <= ep->recv_cap) return 0;
    int K = ep->topk;
    int32_t *pe = realloc(ep->recv_expert, (size_t)ep->n_recv * K * sizeof *pe);
    float *pw = pe ? realloc(ep->recv_weight, (size_t)ep->n_recv * K * sizeof *pw) : NULL;
    if (pe) ep->recv_expert = pe;
    if (pw) ep->recv_weight = pw;
    if (!pe || !pw) return ds_fail(DS_ERR, "out of memory");
    ep->recv_cap = ep->n_recv;
    return 0;
}

static int plan_one_hop(ds_ep *ep, const ds_comm *c, const int32_t *topk_idx, const float *topk_w, int n_tokens) {
    int n = ep->n_ranks, K = ep->topk;
    DS_TRY(plan_send_side(ep, topk_idx, topk_w, n_tokens, 1));
    DS_TRY(ds_comm_alltoall_i64(c, ep->send_rows, ep->recv_rows));
    ep->n_recv = row_offsets(ep->recv_rows, n, ep->recv_off);
    DS_TRY(alloc_recv(ep));
    /* metadata rows: K local expert ids then K weights (as int32 bits), grouped by destination */
    size_t meta_row_len = 2 * (size_t)K, meta_bytes = meta_row_len * sizeof(int32_t);
    int32_t *meta_recv = malloc((size_t)ep->n_recv * meta_bytes + 1);
    if (!meta_recv) return ds_fail(DS_ERR, "out of memory");
    int rc = exchange(ep, c, &ep->sent_plan, ep->meta_send, ep->send_rows, meta_recv, ep->recv_rows, meta_bytes);
    if (!rc) {
        for (int64_t r = 0; r < ep->n_recv; r++) {
            const int32_t *m = meta_recv + r * meta_row_len;
            memcpy(ep->recv_expert + r * K, m, (size_t)K * sizeof(int32_t));
            memcpy(ep->recv_weight + r * K, m + K, (size_t)K * sizeof(float));
        }
    }
    free(meta_recv);
    return rc;
}

/* Two hops. Hop 1: each token, once per target node, to the relay there (the rank with this rank's
 * local index), carrying the global ids and weights of its experts on that node. Hop 2: the relay
 * forwards each arrival to the node's ranks holding those experts, with the local ids, the weights and
 * the token's source rank, from which the target puts its arrivals in the one-hop order. */
static int plan_two_hop(ds_ep *ep, const ds_comm *c, const int32_t *topk_idx, const float *topk_w, int n_tokens) {
    struct ds_ep_hops *h = ep->hops;
    int n = ep->n_ranks, K = ep->topk, P = h->ranks_per_node, me = ep->rank;
    int node_lo = me / P * P; /* this rank's node: ranks [node_lo, node_lo + P) */
    DS_TRY(plan_send_side(ep, topk_idx, topk_w, n_tokens, 0));

    /* hop 1 */
    memset(h->h1_send_rows, 0, (size_t)n * sizeof(int64_t));
    for (int t = 0; t < n_tokens; t++)
        for (int k = 0; k < K; k++)
            if (!seen_before(ep, topk_idx, t, k, ep->node_of))
                h->h1_send_rows[ep->node_of[slot_rank(ep, topk_idx, t, k)] * P + me % P]++;
    h->n_h1_send = row_offsets(h->h1_send_rows, n, h->h1_send_off);
    DS_TRY(ds_comm_alltoall_i64(c, h->h1_send_rows, h->h1_recv_rows));
    h->n_h1_recv = row_offsets(h->h1_recv_rows, n, h->h1_recv_off);
    size_t m1_len = 2 * (size_t)K, m1_bytes = m1_len * sizeof(int32_t);
    size_t m2_len = 2 * (size_t)K + 1, m2_bytes = m2_len * sizeof(int32_t);
    DS_TRY(grow((void **)&h->h1_send_token, &h->h1_cap, (size_t)h->n_h1_send * sizeof(int32_t) + 1));
    DS_TRY(grow((void **)&ep->meta_send, &ep->meta_cap, (size_t)h->n_h1_send * m1_bytes + 1));
    int64_t *fill = ep->bcount2;
    memset(fill, 0, (size_t)n * sizeof *fill);
    for (int t = 0; t < n_tokens; t++) {
        for (int k = 0; k < K; k++) {
            if (seen_before(ep, topk_idx, t, k, ep->node_of)) continue;
            int lo = ep->node_of[slot_rank(ep, topk_idx, t, k)] * P, relay = lo + me % P;
            int64_t row = h->h1_send_off[relay] + fill[relay]++;
            h->h1_send_token[row] = t;
            meta_row(ep, topk_idx + (size_t)t * K, topk_w + (size_t)t * K, lo, lo + P, -1, ep->meta_send + row * m1_len);
        }
    }
    DS_TRY(grow((void **)&h->meta_recv, &h->meta_recv_cap, (size_t)h->n_h1_recv * m1_bytes + 1));
    DS_TRY(exchange(ep, c, &ep->sent_plan, ep->meta_send, h->h1_send_rows, h->meta_recv, h->h1_recv_rows, m1_bytes));

    /* hop 2, at the relay: arrivals in source-rank then token order, forwarded per target rank */
    const int32_t *m1 = h->meta_recv;
    memset(h->h2_send_rows, 0, (size_t)n * sizeof(int64_t));
    for (int64_t i = 0; i < h->n_h1_recv; i++)
        for (int k = 0; k < K && m1[i * m1_len + k] >= 0; k++) {
            int dst = m1[i * m1_len + k] / ep->experts_per_rank, dup = 0;
            for (int k2 = 0; k2 < k; k2++) dup |= m1[i * m1_len + k2] / ep->experts_per_rank == dst;
            if (!dup) h->h2_send_rows[dst]++;
        }
    h->n_h2_send = row_offsets(h->h2_send_rows, n, h->h2_send_off);
    DS_TRY(ds_comm_alltoall_i64(c, h->h2_send_rows, h->h2_recv_rows));
    ep->n_recv = row_offsets(h->h2_recv_rows, n, h->h2_recv_off);
    DS_TRY(grow((void **)&h->h2_send_src, &h->h2_cap, (size_t)h->n_h2_send * sizeof(int32_t) + 1));
    /* meta_send held hop 1's rows, already sent: it now takes hop 2's */
    DS_TRY(grow((void **)&ep->meta_send, &ep->meta_cap, (size_t)h->n_h2_send * m2_bytes + 1));
    memset(fill, 0, (size_t)n * sizeof *fill);
    int src = 0;
    for (int64_t i = 0; i < h->n_h1_recv; i++) {
        while (i >= h->h1_recv_off[src] + h->h1_recv_rows[src]) src++;
        /* ranks of this node in order; meta_row keeps the slots' top-k order */
        for (int dst = node_lo; dst < node_lo + P; dst++) {
            int has = 0;
            for (int k = 0; k < K && m1[i * m1_len + k] >= 0; k++) has |= m1[i * m1_len + k] / ep->experts_per_rank == dst;
            if (!has) continue;
            int64_t row = h->h2_send_off[dst] + fill[dst]++;
            int32_t *m = ep->meta_send + row * m2_len;
            meta_row(ep, m1 + i * m1_len, m1 + i * m1_len + K, dst, dst + 1, dst, m);
            m[2 * K] = src;
            h->h2_send_src[row] = (int32_t)i;
        }
    }
    int32_t *m2 = malloc((size_t)ep->n_recv * m2_bytes + 1);
    if (!m2) return ds_fail(DS_ERR, "out of memory");
    int rc = exchange(ep, c, &ep->sent_plan, ep->meta_send, h->h2_send_rows, m2, h->h2_recv_rows, m2_bytes);

    /* at the target: the one-hop order is source rank, then the source's token order, which every
     * relay kept; a stable sort by source rank restores it */
    if (!rc) rc = alloc_recv(ep);
    if (!rc) rc = grow((void **)&h->recv_pos, &h->pos_cap, (size_t)ep->n_recv * sizeof(int64_t) + 1);
    if (!rc) {
        memset(ep->recv_rows, 0, (size_t)n * sizeof(int64_t));
        for (int64_t i = 0; i < ep->n_recv; i++) ep->recv_rows[m2[i * m2_len + 2 * K]]++;
        row_offsets(ep->recv_rows, n, ep->recv_off);
        memset(fill, 0, (size_t)n * sizeof *fill);
        for (int64_t i = 0; i < ep->n_recv; i++) {
            int s = m2[i * m2_len + 2 * K];
            int64_t r = h->recv_pos[i] = ep->recv_off[s] + fill[s]++;
            memcpy(ep->recv_expert + r * K, m2 + i * m2_len, (size_t)K * sizeof(int32_t));
            memcpy(ep->recv_weight + r * K, m2 + i * m2_len + K, (size_t)K * sizeof(float));
        }
    }
    free(m2);
    return rc;
}

int ds_ep_plan(ds_ep *ep, const ds_comm *c, const int32_t *topk_idx, const float *topk_w, int n_tokens) {
    if (ep->transport == DS_EP_TWO_HOP) return plan_two_hop(ep, c, topk_idx, topk_w, n_tokens);
    return plan_one_hop(ep, c, topk_idx, topk_w, n_tokens);
}

int ds_ep_dispatch(ds_ep *ep, const ds_comm *c, const void *x, void *recv, size_t row_bytes) {
    struct ds_ep_hops *h = ep->hops;
    if (ep->transport != DS_EP_TWO_HOP) {
        DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)ep->n_send * row_bytes + 1));
        gather_rows(ep->sendbuf, x, ep->send_token, ep->n_send, row_bytes);
        return exchange(ep, c, &ep->sent_dispatch, ep->sendbuf, ep->send_rows, recv, ep->recv_rows, row_bytes);
    }
    int64_t most = h->n_h1_send > ep->n_recv ? h->n_h1_send : ep->n_recv;
    DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)most * row_bytes + 1));
    DS_TRY(grow((void **)&h->buf1, &h->buf1_cap, (size_t)h->n_h1_recv * row_bytes + 1));
    DS_TRY(grow((void **)&h->buf2, &h->buf2_cap, (size_t)h->n_h2_send * row_bytes + 1));
    gather_rows(ep->sendbuf, x, h->h1_send_token, h->n_h1_send, row_bytes);
    DS_TRY(exchange(ep, c, &ep->sent_dispatch, ep->sendbuf, h->h1_send_rows, h->buf1, h->h1_recv_rows, row_bytes));
    gather_rows(h->buf2, h->buf1, h->h2_send_src, h->n_h2_send, row_bytes);
    DS_TRY(exchange(ep, c, &ep->sent_dispatch, h->buf2, h->h2_send_rows, ep->sendbuf, h->h2_recv_rows, row_bytes));
    scatter_rows(recv, ep->sendbuf, h->recv_pos, ep->n_recv, row_bytes);
    return 0;
}

/* out = sum over nodes in node order (from zero) of the node's rows summed in rank order (from zero);
 * rows [n_send][D] in the one-hop order (grouped by rank). One node: one plain rank-ordered sum. */
static int sum_by_node(ds_ep *ep, const float *rows, float *out, int D) {
    size_t nd = (size_t)ep->n_tokens * D;
    memset(out, 0, nd * sizeof(float));
    if (ep->n_nodes == 1) {
        scatter_add(out, ep->send_token, rows, ep->n_send, D);
        return 0;
    }
    DS_TRY(grow((void **)&ep->partial, &ep->partial_cap, (nd + (size_t)ep->n_tokens) * sizeof(float) + 1));
    float *part = ep->partial;
    int32_t *done = (int32_t *)(part + nd); /* the last node whose sum went into out, per token */
    memset(part, 0, nd * sizeof(float));
    for (int t = 0; t < ep->n_tokens; t++) done[t] = -1;
    int64_t lo = 0;
    for (int j = 0; j < ep->n_ranks; j++) {
        if (j + 1 < ep->n_ranks && ep->node_of[j + 1] == ep->node_of[j]) continue;
        int64_t hi = ep->send_off[j] + ep->send_rows[j]; /* rows [lo, hi) came from node_of[j] */
        scatter_add(part, ep->send_token + lo, rows + (size_t)lo * D, hi - lo, D);
        for (int64_t r = lo; r < hi; r++) {
            int t = ep->send_token[r];
            if (done[t] == ep->node_of[j]) continue;
            done[t] = ep->node_of[j];
            float *o = out + (size_t)t * D, *p = part + (size_t)t * D;
            for (int d = 0; d < D; d++) o[d] += p[d], p[d] = 0;
        }
        lo = hi;
    }
    return 0;
}

/* One exchange of float rows [*, D] (src: n_src rows by send_rows, dst: by recv_rows). bf16: the rows
 * travel rounded to bf16 (round to nearest even) and arrive widened to float32 in dst. */
static int exchange_f32(ds_ep *ep, const ds_comm *c, ds_ep_bytes *acct, const float *src, int64_t n_src,
                        const int64_t *send_rows, float *dst, const int64_t *recv_rows, int D, int bf16) {
    if (!bf16) return exchange(ep, c, acct, src, send_rows, dst, recv_rows, (size_t)D * sizeof(float));
    int64_t n_dst = 0;
    for (int j = 0; j < ep->n_ranks; j++) n_dst += recv_rows[j];
    const size_t ns = (size_t)n_src * D, nd = (size_t)n_dst * D;
    DS_TRY(grow((void **)&ep->wire16, &ep->wire16_cap, (ns + nd) * sizeof(uint16_t) + 1));
    uint16_t *s16 = ep->wire16, *d16 = ep->wire16 + ns;
    for (size_t i = 0; i < ns; i++) s16[i] = ds_f32_to_bf16(src[i]);
    DS_TRY(exchange(ep, c, acct, s16, send_rows, d16, recv_rows, (size_t)D * sizeof(uint16_t)));
    for (size_t i = 0; i < nd; i++) dst[i] = ds_bf16_to_f32(d16[i]);
    return 0;
}

static int combine(ds_ep *ep, const ds_comm *c, const float *y, float *out, int D, int bf16) {
    size_t row_bytes = (size_t)D * sizeof(float);
    struct ds_ep_hops *h = ep->hops;
    if (ep->transport != DS_EP_TWO_HOP) {
        /* the reverse exchange: what arrived from rank j goes back to rank j, in the same row order */
        DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)ep->n_send * row_bytes + 1));
        DS_TRY(exchange_f32(ep, c, &ep->sent_combine, y, ep->n_recv, ep->recv_rows, (float *)ep->sendbuf,
                            ep->send_rows, D, bf16));
        return sum_by_node(ep, (const float *)ep->sendbuf, out, D);
    }
    int64_t most = h->n_h1_send > ep->n_recv ? h->n_h1_send : ep->n_recv;
    DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)most * row_bytes + 1));
    DS_TRY(grow((void **)&h->buf1, &h->buf1_cap, (size_t)h->n_h1_recv * row_bytes + 1));
    DS_TRY(grow((void **)&h->buf2, &h->buf2_cap, (size_t)h->n_h2_send * row_bytes + 1));
    /* back along hop 2, in the order the rows arrived */
    const char *ys = (const char *)y;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < ep->n_recv; i++)
        memcpy(ep->sendbuf + i * row_bytes, ys + h->recv_pos[i] * row_bytes, row_bytes);
    DS_TRY(exchange_f32(ep, c, &ep->sent_combine, (const float *)ep->sendbuf, ep->n_recv, h->h2_recv_rows,
                        (float *)h->buf2, h->h2_send_rows, D, bf16));
    /* the relay sums its node's rows per token: hop-2 rows are grouped by target rank, so in rank order */
    float *part = (float *)h->buf1;
    memset(part, 0, (size_t)h->n_h1_recv * row_bytes);
    scatter_add(part, h->h2_send_src, (const float *)h->buf2, h->n_h2_send, D);
    DS_TRY(exchange_f32(ep, c, &ep->sent_combine, part, h->n_h1_recv, h->h1_recv_rows, (float *)ep->sendbuf,
                        h->h1_send_rows, D, bf16));
    /* hop-1 rows are grouped by relay, and relays are in node order */
    memset(out, 0, (size_t)ep->n_tokens * row_bytes);
    scatter_add(out, h->h1_send_token, (const float *)ep->sendbuf, h->n_h1_send, D);
    return 0;
}

int ds_ep_combine(ds_ep *ep, const ds_comm *c, const float *y, float *out, int D) {
    return combine(ep, c, y, out, D, 0);
}

int ds_ep_combine_bf16(ds_ep *ep, const ds_comm *c, const float *y, float *out, int D) {
    return combine(ep, c, y, out, D, 1);
}

/* out[k] = vals[used++] for the slots k (in order) of ids [K] that lie in ranks [lo, hi) (-1 ends ids):
 * a row packs the slots of its destination in slot order (meta_row), this unpacks it. */
static void unpack_slots(const ds_ep *ep, const int32_t *ids, int lo, int hi, const float *vals, float *out) {
    int used = 0;
    for (int k = 0; k < ep->topk && ids[k] >= 0; k++) {
        int r = ids[k] / ep->experts_per_rank;
        if (r >= lo && r < hi) out[k] = vals[used++];
    }
}

int ds_ep_combine_slots(ds_ep *ep, const ds_comm *c, const float *g, const int32_t *topk_idx, float *out) {
    const int K = ep->topk;
    size_t row_bytes = (size_t)K * sizeof(float);
    struct ds_ep_hops *h = ep->hops;
    memset(out, 0, (size_t)ep->n_tokens * row_bytes);
    if (ep->transport != DS_EP_TWO_HOP) {
        DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)ep->n_send * row_bytes + 1));
        DS_TRY(exchange(ep, c, &ep->sent_combine, g, ep->recv_rows, ep->sendbuf, ep->send_rows, row_bytes));
        const float *back = (const float *)ep->sendbuf;
        for (int j = 0; j < ep->n_ranks; j++)
            for (int64_t r = ep->send_off[j]; r < ep->send_off[j] + ep->send_rows[j]; r++)
                unpack_slots(ep, topk_idx + (size_t)ep->send_token[r] * K, j, j + 1, back + r * K,
                             out + (size_t)ep->send_token[r] * K);
        return 0;
    }
    /* back along hop 2; the relay packs each token's slots on its node in the order of hop 1's row
     * (the node's slots in slot order), filling them from each target rank's row */
    int64_t most = h->n_h1_send > ep->n_recv ? h->n_h1_send : ep->n_recv;
    DS_TRY(grow((void **)&ep->sendbuf, &ep->sendbuf_cap, (size_t)most * row_bytes + 1));
    DS_TRY(grow((void **)&h->buf1, &h->buf1_cap, (size_t)h->n_h1_recv * row_bytes + 1));
    DS_TRY(grow((void **)&h->buf2, &h->buf2_cap, (size_t)h->n_h2_send * row_bytes + 1));
    for (int64_t i = 0; i < ep->n_recv; i++)
        memcpy(ep->sendbuf + i * row_bytes, g + h->recv_pos[i] * K, row_bytes);
    DS_TRY(exchange(ep, c, &ep->sent_combine, ep->sendbuf, h->h2_recv_rows, h->buf2, h->h2_send_rows, row_bytes));
    float *node_rows = (float *)h->buf1;
    const float *back2 = (const float *)h->buf2;
    memset(node_rows, 0, (size_t)h->n_h1_recv * row_bytes);
    for (int dst = 0; dst < ep->n_ranks; dst++)
        for (int64_t j = h->h2_send_off[dst]; j < h->h2_send_off[dst] + h->h2_send_rows[dst]; j++) {
            int64_t i = h->h2_send_src[j];
            unpack_slots(ep, h->meta_recv + i * 2 * K, dst, dst + 1, back2 + j * K, node_rows + i * K);
        }
    DS_TRY(exchange(ep, c, &ep->sent_combine, node_rows, h->h1_recv_rows, ep->sendbuf, h->h1_send_rows, row_bytes));
    const float *back1 = (const float *)ep->sendbuf;
    int P = h->ranks_per_node;
    for (int j = 0; j < ep->n_ranks; j++) /* rows from relay j carry the slots on j's node */
        for (int64_t r = h->h1_send_off[j]; r < h->h1_send_off[j] + h->h1_send_rows[j]; r++)
            unpack_slots(ep, topk_idx + (size_t)h->h1_send_token[r] * K, j / P * P, j / P * P + P, back1 + r * K,
                         out + (size_t)h->h1_send_token[r] * K);
    return 0;
}
