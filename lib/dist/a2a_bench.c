#include "dist/a2a_bench.h"

#include "core/err.h"
#include "core/log.h"
#include "core/rng.h"
#include "dist/layout.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

/* The payload value element i of the block from `src` to `dst` must hold: distinct per source,
 * destination and position, so misplaced data is caught. */
static inline uint8_t pattern(int src, int dst, int64_t i) { return (uint8_t)(src * 31 + dst * 17 + i * 7 + 1); }

static double slowest(const ds_comm *c, double t) {
    ds_comm_allreduce_max_f64(c, &t, 1);
    return t;
}

/* A uniform all-to-all's buffers: per bytes to every peer, counts and displacements in v [4n], the send
 * block to peer j filled with pattern(me, j, .). */
typedef struct {
    int64_t per, *v, *sc, *sd, *rc, *rd;
    char *send, *recv;
} uniform_bufs;

static void uniform_free(uniform_bufs *u) {
    free(u->v);
    free(u->send);
    free(u->recv);
}

static int uniform_setup(const ds_comm *c, int64_t bytes, int elem_bytes, uniform_bufs *u) {
    int n = c->size, me = c->rank;
    u->per = bytes / n / elem_bytes * elem_bytes;
    u->v = calloc(4 * (size_t)n, sizeof *u->v);
    u->send = malloc((size_t)u->per * n + 1), u->recv = malloc((size_t)u->per * n + 1);
    if (!u->v || !u->send || !u->recv) {
        uniform_free(u);
        return ds_fail(DS_ERR, "out of memory: all-to-all buffers of %lld bytes", (long long)bytes);
    }
    u->sc = u->v, u->sd = u->v + n, u->rc = u->v + 2 * n, u->rd = u->v + 3 * n;
    for (int j = 0; j < n; j++) {
        u->sc[j] = u->rc[j] = u->per;
        u->sd[j] = u->rd[j] = u->per * j;
    }
    for (int j = 0; j < n; j++)
        for (int64_t i = 0; i < u->per; i++) u->send[u->sd[j] + i] = (char)pattern(me, j, i);
    return 0;
}

/* Time t (seconds per iteration on this rank) into the result: the slowest rank's, bandwidths. */
static void uniform_result(const ds_comm *c, const uniform_bufs *u, double t, ds_a2a_result *out) {
    int n = c->size;
    out->time_us = slowest(c, t) * 1e6;
    double sent = (double)u->per * n;
    out->algbw = out->time_us > 0 ? sent / (out->time_us * 1e-6) / 1e9 : 0;
    out->busbw = out->algbw * (n - 1) / n;
    out->wrong = -1;
}

/* Wrong elements over every rank, from this rank's received blocks. */
static int uniform_wrong(const ds_comm *c, const uniform_bufs *u, int elem_bytes, ds_a2a_result *out) {
    int64_t wrong = 0;
    for (int j = 0; j < c->size; j++)
        for (int64_t i = 0; i < u->per; i++)
            if ((uint8_t)u->recv[u->rd[j] + i] != pattern(j, c->rank, i)) wrong++;
    DS_TRY(ds_comm_allreduce_sum_i64(c, &wrong, 1));
    out->wrong = wrong / elem_bytes + (wrong % elem_bytes != 0);
    return 0;
}

int ds_a2a_bench_uniform(const ds_comm *c, ds_a2a_algo algo, int64_t bytes, int elem_bytes, int iters, int warmup,
                         int check, ds_a2a_result *out) {
    uniform_bufs u;
    DS_TRY(uniform_setup(c, bytes, elem_bytes, &u));
    int rc_ = 0;
    for (int it = 0; it < warmup && !rc_; it++) rc_ = ds_a2a_bytes(c, algo, u.send, u.sc, u.sd, u.recv, u.rc, u.rd);
    if (!rc_) rc_ = ds_comm_barrier(c);
    double t0 = ds_now(); /* not MPI_Wtime: a solo group has no MPI */
    for (int it = 0; it < iters && !rc_; it++) rc_ = ds_a2a_bytes(c, algo, u.send, u.sc, u.sd, u.recv, u.rc, u.rd);
    double t = (ds_now() - t0) / (iters > 0 ? iters : 1);
    if (!rc_) {
        uniform_result(c, &u, t, out);
        if (check) {
            memset(u.recv, 0, (size_t)u.per * c->size);
            rc_ = ds_a2a_bytes(c, algo, u.send, u.sc, u.sd, u.recv, u.rc, u.rd);
            if (!rc_) rc_ = uniform_wrong(c, &u, elem_bytes, out);
        }
    }
    uniform_free(&u);
    return rc_;
}

/* The exchange on device buffers: the iterations are queued back to back on the communication stream and
 * the clock stops when the last has finished (nccl-tests' way). */
static int nccl_iters(ds_nccl *nc, const char *send, const uniform_bufs *u, char *recv, int iters) {
    for (int it = 0; it < iters; it++) DS_TRY(ds_nccl_alltoallv_bytes(nc, send, u->sc, u->sd, recv, u->rc, u->rd));
    return ds_nccl_wait(nc);
}

int ds_a2a_bench_uniform_nccl(const ds_comm *c, ds_nccl *nc, int64_t bytes, int elem_bytes, int iters, int warmup,
                              int check, ds_a2a_result *out) {
    uniform_bufs u;
    DS_TRY(uniform_setup(c, bytes, elem_bytes, &u));
    const size_t total = (size_t)u.per * c->size;
    char *dsend = NULL, *drecv = NULL;
    int rc_ = ds_nccl_dev_alloc((void **)&dsend, total);
    if (!rc_) rc_ = ds_nccl_dev_alloc((void **)&drecv, total);
    if (!rc_) rc_ = ds_nccl_h2d(dsend, u.send, total);
    if (!rc_) rc_ = nccl_iters(nc, dsend, &u, drecv, warmup);
    if (!rc_) rc_ = ds_comm_barrier(c);
    double t0 = ds_now();
    if (!rc_) rc_ = nccl_iters(nc, dsend, &u, drecv, iters);
    double t = (ds_now() - t0) / (iters > 0 ? iters : 1);
    if (!rc_) {
        uniform_result(c, &u, t, out);
        if (check) { /* a cleared receive buffer, one more exchange, every byte compared on the host */
            memset(u.recv, 0, total);
            rc_ = ds_nccl_h2d(drecv, u.recv, total);
            if (!rc_) rc_ = nccl_iters(nc, dsend, &u, drecv, 1);
            if (!rc_) rc_ = ds_nccl_d2h(u.recv, drecv, total);
            if (!rc_) rc_ = uniform_wrong(c, &u, elem_bytes, out);
        }
    }
    ds_nccl_dev_free(dsend);
    ds_nccl_dev_free(drecv);
    uniform_free(&u);
    return rc_;
}

/* Random routing: top-k distinct experts; with a node limit, the experts come from at most
 * `node_limit` nodes chosen first (as V3's node-limited routing does). */
static void random_routing(const ds_ep_bench_cfg *cfg, int n_nodes, int rank, int32_t *idx, float *w) {
    ds_rng r;
    ds_rng_init(&r, cfg->seed, 1000 + (uint64_t)rank);
    int E = cfg->experts, K = cfg->topk, epn = E / n_nodes; /* experts per node */
    int limit = cfg->node_limit > 0 && cfg->node_limit < n_nodes ? cfg->node_limit : n_nodes;
    int groups[256];
    for (int t = 0; t < cfg->tokens; t++) {
        for (int g = 0; g < n_nodes && g < 256; g++) groups[g] = g;
        for (int g = 0; g < limit; g++) { /* partial shuffle: the first `limit` nodes */
            int j = g + (int)ds_rng_below(&r, (uint64_t)(n_nodes - g));
            int tmp = groups[g];
            groups[g] = groups[j];
            groups[j] = tmp;
        }
        int pool = limit * epn;
        for (int k = 0; k < K; k++) {
            int e, dup;
            do { /* K <= pool is checked by the caller */
                int p = (int)ds_rng_below(&r, (uint64_t)pool);
                e = groups[p / epn] * epn + p % epn;
                dup = 0;
                for (int k2 = 0; k2 < k; k2++) dup |= idx[(size_t)t * K + k2] == e;
            } while (dup);
            idx[(size_t)t * K + k] = e;
            w[(size_t)t * K + k] = 1.0f / (float)(1 << (k % 4)); /* dyadic: sums stay exact */
        }
    }
}

/* Ranks per node: given, or the hosts' (each host must run as many ranks) */
static int bench_ranks_per_node(const ds_comm *c, int given, int *out) {
    int rpn = given;
    if (rpn == 0) {
        int64_t sum = c->local_size;
        DS_TRY(ds_comm_allreduce_sum_i64(c, &sum, 1));
        if (sum != (int64_t)c->local_size * c->size)
            return ds_fail(DS_EUSAGE, "the hosts run different numbers of ranks; give --ranks-per-node");
        rpn = c->local_size;
    }
    DS_TRY(ds_layout_check(c->size, 1, c->size, 1, rpn, -1));
    *out = rpn;
    return 0;
}

int ds_ep_bench(const ds_comm *c, ds_a2a_algo algo, const ds_ep_bench_cfg *cfg, int iters, int warmup,
                int check, ds_ep_bench_result *out) {
    int n = c->size, T = cfg->tokens, D = cfg->hidden, K = cfg->topk, rpn = 1;
    DS_TRY(bench_ranks_per_node(c, cfg->ranks_per_node, &rpn));
    int n_nodes = n / rpn;
    int limit = cfg->node_limit > 0 && cfg->node_limit < n_nodes ? cfg->node_limit : n_nodes;
    if (cfg->experts % n) return ds_fail(DS_ERR, "--experts %d is not a multiple of %d ranks", cfg->experts, n);
    if (K > limit * (cfg->experts / n_nodes))
        return ds_fail(DS_ERR, "--topk %d exceeds the experts reachable under --node-limit %d", K, limit);
    if (n_nodes > 256) return ds_fail(DS_ERR, "%d nodes: at most 256", n_nodes);
    int *node_of = malloc((size_t)n * sizeof *node_of);
    if (!node_of) return ds_fail(DS_ERR, "out of memory");
    for (int j = 0; j < n; j++) node_of[j] = j / rpn;
    ds_ep ep;
    int rc0 = ds_ep_init(&ep, c, cfg->experts, K, algo);
    if (!rc0) rc0 = ds_ep_set_nodes(&ep, node_of, cfg->transport);
    free(node_of);
    if (rc0) {
        ds_ep_free(&ep);
        return rc0;
    }
    size_t row = (size_t)D * (size_t)cfg->elem_bytes;
    int32_t *idx = malloc((size_t)T * K * sizeof *idx);
    float *w = malloc((size_t)T * K * sizeof *w);
    float *x = malloc((size_t)T * D * sizeof *x), *out_x = malloc((size_t)T * D * sizeof *out_x);
    char *xb = malloc((size_t)T * row + 1);
    int rc = (!idx || !w || !x || !out_x || !xb) ? ds_fail(DS_ERR, "out of memory") : 0;
    char *recv = NULL;
    float *y = NULL;
    if (!rc) {
        random_routing(cfg, n_nodes, c->rank, idx, w);
        ds_rng r;
        ds_rng_init(&r, cfg->seed, 5000 + (uint64_t)c->rank);
        for (size_t i = 0; i < (size_t)T * D; i++) x[i] = (float)((int)ds_rng_below(&r, 17) - 8);
        for (size_t i = 0; i < (size_t)T * row; i++) xb[i] = (char)(i * 13 + (size_t)c->rank);
        rc = ds_ep_plan(&ep, c, idx, w, T);
    }
    if (!rc) {
        recv = malloc((size_t)ep.n_recv * (row > D * 4 ? row : (size_t)D * 4) + 1);
        y = malloc((size_t)ep.n_recv * D * sizeof *y + 1);
        if (!recv || !y) rc = ds_fail(DS_ERR, "out of memory");
    }
    double td = 0, tc = 0;
    for (int it = 0; it < warmup + iters && !rc; it++) {
        if (it == warmup) {
            td = tc = 0;
            rc = ds_comm_barrier(c);
        }
        double t0 = MPI_Wtime();
        if (!rc) rc = ds_ep_dispatch(&ep, c, xb, recv, row);
        double t1 = MPI_Wtime();
        /* the expert computation is not timed; the combine payload is fp32 rows */
        if (!rc) rc = ds_comm_barrier(c);
        double t2 = MPI_Wtime();
        if (!rc) rc = ds_ep_combine(&ep, c, (const float *)recv, out_x, D);
        double t3 = MPI_Wtime();
        td += t1 - t0;
        tc += t3 - t2;
    }
    if (!rc) {
        double rows_sent = (double)ep.n_send;
        /* [0] destination ranks, [1] destination nodes, over this rank's tokens */
        double total[2] = {rows_sent, 0};
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++) {
                int g = idx[(size_t)t * K + k] / ep.experts_per_rank / rpn, seen = 0;
                for (int k2 = 0; k2 < k; k2++) seen |= idx[(size_t)t * K + k2] / ep.experts_per_rank / rpn == g;
                total[1] += !seen;
            }
        ds_comm_allreduce_sum_f64(c, total, 2);
        out->rows_per_token = total[0] / ((double)T * n);
        out->nodes_per_token = total[1] / ((double)T * n);
        out->n_nodes = n_nodes;
        /* every iteration sends the same bytes: one exchange's share, summed over the ranks */
        int64_t b[4] = {ep.sent_dispatch.intra, ep.sent_dispatch.inter, ep.sent_combine.intra, ep.sent_combine.inter};
        for (int i = 0; i < 4; i++) b[i] /= warmup + iters;
        ds_comm_allreduce_sum_i64(c, b, 4);
        out->dispatch_bytes = (ds_ep_bytes){b[0], b[1]};
        out->combine_bytes = (ds_ep_bytes){b[2], b[3]};
        double dt = slowest(c, td / (iters > 0 ? iters : 1)), ct = slowest(c, tc / (iters > 0 ? iters : 1));
        out->dispatch.time_us = dt * 1e6;
        out->combine.time_us = ct * 1e6;
        out->dispatch.algbw = dt > 0 ? rows_sent * (double)row / dt / 1e9 : 0;
        out->combine.algbw = ct > 0 ? rows_sent * (double)D * 4 / ct / 1e9 : 0;
        out->dispatch.busbw = out->dispatch.algbw * (n - 1) / n;
        out->combine.busbw = out->combine.algbw * (n - 1) / n;
        out->dispatch.wrong = out->combine.wrong = -1;
    }
    if (!rc && check) {
        /* dispatch fp32 x, apply "experts" e -> (e+1) * x weighted, combine, compare exactly */
        int64_t wrong = 0;
        rc = ds_ep_dispatch(&ep, c, x, recv, (size_t)D * 4);
        const float *rx = (const float *)recv;
        for (int64_t rr = 0; rr < ep.n_recv && !rc; rr++) {
            float s = 0;
            for (int k = 0; k < K; k++) {
                int le = ep.recv_expert[rr * K + k];
                if (le < 0) continue;
                int ge = c->rank * ep.experts_per_rank + le;
                s += ep.recv_weight[rr * K + k] * (float)(ge + 1);
            }
            for (int d = 0; d < D; d++) y[rr * D + d] = s * rx[rr * D + d];
        }
        if (!rc) rc = ds_ep_combine(&ep, c, y, out_x, D);
        for (int t = 0; t < T && !rc; t++) {
            for (int d = 0; d < D; d++) {
                /* rank-ordered sum of per-rank partial sums, as combine does */
                float expect = 0;
                for (int g = 0; g < n; g++) {
                    float part = 0;
                    int any = 0;
                    for (int k = 0; k < K; k++) {
                        int e = idx[(size_t)t * K + k];
                        if (e / ep.experts_per_rank != g) continue;
                        part += w[(size_t)t * K + k] * (float)(e + 1);
                        any = 1;
                    }
                    if (any) expect += part * x[(size_t)t * D + d];
                }
                if (out_x[(size_t)t * D + d] != expect) wrong++;
            }
        }
        if (!rc) rc = ds_comm_allreduce_sum_i64(c, &wrong, 1);
        out->dispatch.wrong = out->combine.wrong = wrong;
    }
    free(idx);
    free(w);
    free(x);
    free(out_x);
    free(xb);
    free(recv);
    free(y);
    ds_ep_free(&ep);
    return rc;
}
