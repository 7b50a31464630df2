/* a2a_bench.h — timing and checking of all-to-all and expert-parallel exchanges (ds-bench-a2a).
 *
 * Owns: the measurement protocol (warm-up iterations, timed iterations between barriers, the slowest
 * rank's time), the bandwidth definitions (docs/METRICS.md: algbw = bytes a rank sends / time,
 * busbw = algbw * (n-1)/n for all-to-all, as nccl-tests), and data checks that count wrong elements.
 */
#ifndef DS_DIST_A2A_BENCH_H
#define DS_DIST_A2A_BENCH_H

#include <stdint.h>

#include "dist/a2a.h"
#include "dist/comm.h"
#include "dist/ep.h"
#include "dist/nccl.h"

typedef struct {
    double time_us;      /* per iteration, slowest rank */
    double algbw, busbw; /* GB/s (1e9 bytes) */
    int64_t wrong;       /* mismatching elements over all ranks (-1: not checked) */
} ds_a2a_result;

/* Uniform all-to-all: each rank sends `bytes` in total, bytes/n to every peer (elem_bytes granular). */
int ds_a2a_bench_uniform(const ds_comm *c, ds_a2a_algo algo, int64_t bytes, int elem_bytes, int iters, int warmup,
                         int check, ds_a2a_result *out);
/* The same exchange between GPU buffers over NCCL communicator nc (over c's ranks, dist/nccl.h), the data
 * made and checked on the host around it. */
int ds_a2a_bench_uniform_nccl(const ds_comm *c, ds_nccl *nc, int64_t bytes, int elem_bytes, int iters, int warmup,
                              int check, ds_a2a_result *out);

typedef struct {
    int tokens, hidden, topk, experts, node_limit; /* node_limit: max nodes a token may reach, 0 = off */
    int ranks_per_node;                            /* consecutive ranks per (emulated) node, 0 = the hosts */
    ds_ep_transport transport;                     /* one or two hops (ep.h) */
    int elem_bytes;                                /* dispatch payload element size (4 fp32, 2 bf16, 1 fp8) */
    uint64_t seed;
} ds_ep_bench_cfg;

typedef struct {
    ds_a2a_result dispatch, combine;
    double rows_per_token;   /* average destination ranks per token (after per-rank de-duplication) */
    double nodes_per_token;  /* average destination nodes per token */
    int n_nodes;             /* the nodes the ranks were grouped into */
    /* bytes one dispatch and one combine send, summed over the ranks: to ranks of the sender's own node
     * and to other nodes (ep.h's counts; the routing metadata of the plan is not included) */
    ds_ep_bytes dispatch_bytes, combine_bytes;
} ds_ep_bench_result;

/* Routed dispatch + combine with random (node-limited) routing. Check: each rank's expert e scales its
 * rows by (e+1); combine must return sum_k w_k (e_k+1) x exactly (small-integer data, dyadic weights).
 * Nodes: cfg->ranks_per_node consecutive ranks (0: the hosts, as the layout's default); a refusal of a
 * node size that does not divide the ranks is a usage error. */
int ds_ep_bench(const ds_comm *c, ds_a2a_algo algo, const ds_ep_bench_cfg *cfg, int iters, int warmup,
                int check, ds_ep_bench_result *out);

#endif
