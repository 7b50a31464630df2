/* layout.h — where each rank sits in a pipeline x data x expert parallel run (design.md section 6).
 *
 * Owns: the rank layout and its MPI sub-communicators, and the checks that refuse a layout before any
 * work. One convention for every module that needs a group (trainer, EP, ZeRO-1, pipeline):
 *
 *   world = PP x DP, rank = stage * DP + dp_rank     (a stage's data-parallel ranks are consecutive)
 *   EP groups: EP consecutive ranks of a stage's DP ranks: ep_group = dp_rank / EP, ep_rank = dp_rank % EP
 *   EP rank e holds routed experts [e * E/EP, (e+1) * E/EP) of its stage's MoE layers
 *   node of a rank = world rank / ranks_per_node  (ranks_per_node: real hosts by default; on one host
 *   it emulates several nodes)
 *
 *   dp         the stage's DP ranks (DP of them): gradients of replicated parameters, ZeRO-1 shards
 *   ep         the rank's EP group (EP ranks): dispatch and combine
 *   expert_dp  the stage's ranks with the same ep_rank (DP/EP of them, holding the same experts):
 *              expert gradients and their ZeRO-1 shards
 *   pp         the ranks with the same dp_rank (PP of them, in stage order): activations and gradients
 *
 * With PP = EP = 1 every group but pp is the world (and pp is this rank alone).
 */
#ifndef DS_DIST_LAYOUT_H
#define DS_DIST_LAYOUT_H

#include "dist/comm.h"

typedef struct {
    int world, pp, dp, ep;
    int ranks_per_node;       /* consecutive world ranks per (real or emulated) node */
    int stage, dp_rank;       /* this rank: pipeline stage (the first of DualPipe's two chunks), DP index */
    int ep_group, ep_rank;    /* dp_rank / ep, dp_rank % ep */
    int node;                 /* world rank / ranks_per_node */
    int ep_nodes;             /* distinct nodes one EP group spans */
    ds_comm dp_comm, ep_comm, expert_dp_comm, pp_comm;
    int have_comms;           /* the sub-communicators exist (ds_layout_make with a world) */
} ds_layout;

/* Check a layout before any work: pp, dp, ep >= 1, world = pp x dp, ep divides dp, ranks_per_node >= 1
 * and dividing the world when given (0: take it from the hosts). Errors are usage errors (DS_EUSAGE)
 * * naming the numbers involved. n_routed_experts must be a multiple of ep (0: a dense model, which
 * takes no --ep above 1; -1: not known yet, not checked). */
int ds_layout_check(int world, int pp, int dp, int ep, int ranks_per_node, int n_routed_experts);

/* Build the layout for this rank of world c (collective over c). ranks_per_node 0 = c->local_size when
 * every host runs the same number of ranks (else an error asking for --ranks-per-node). */
int ds_layout_make(ds_layout *L, const ds_comm *c, int pp, int dp, int ep, int ranks_per_node);
/* Coordinates only, no communicators (planning, tests, printing a layout for rank r). */
int ds_layout_coords(ds_layout *L, int rank, int world, int pp, int dp, int ep, int ranks_per_node);
void ds_layout_free(ds_layout *L);

/* The node of EP rank e of this rank's EP group, and the world rank of (stage, dp_rank). */
int ds_layout_node_of_ep_rank(const ds_layout *L, int e);
int ds_layout_world_rank(const ds_layout *L, int stage, int dp_rank);

/* "rank 5: stage 1, dp 1 (ep group 0, ep rank 1), node 2" for logs. */
void ds_layout_describe(const ds_layout *L, char *buf, size_t n);

#endif
