#include "dist/layout.h"

#include "core/err.h"

#include <stdio.h>
#include <string.h>

int ds_layout_check(int world, int pp, int dp, int ep, int ranks_per_node, int n_routed_experts) {
    if (pp < 1 || dp < 1 || ep < 1)
        return ds_fail(DS_EUSAGE, "--pp %d, --dp %d and --ep %d must each be at least 1", pp, dp, ep);
    if ((long long)pp * dp != world)
        return ds_fail(DS_EUSAGE, "--pp %d x --dp %d = %lld ranks, but %d processes were started", pp, dp,
                       (long long)pp * dp, world);
    if (dp % ep)
        return ds_fail(DS_EUSAGE, "--ep %d does not divide the %d data-parallel ranks (--dp %d)", ep, dp, dp);
    if (ranks_per_node < 0 || (ranks_per_node > 0 && world % ranks_per_node))
        return ds_fail(DS_EUSAGE, "--ranks-per-node %d does not divide the %d ranks", ranks_per_node, world);
    if (n_routed_experts > 0 && n_routed_experts % ep)
        return ds_fail(DS_EUSAGE, "--ep %d does not divide the config's %d routed experts", ep, n_routed_experts);
    if (n_routed_experts == 0 && ep > 1)
        return ds_fail(DS_EUSAGE, "--ep %d needs routed experts, and the config has none", ep);
    return 0;
}

int ds_layout_coords(ds_layout *L, int rank, int world, int pp, int dp, int ep, int ranks_per_node) {
    memset(L, 0, sizeof *L);
    int rc = ds_layout_check(world, pp, dp, ep, ranks_per_node, -1);
    if (rc) return rc;
    if (rank < 0 || rank >= world) return ds_fail(DS_EUSAGE, "rank %d is outside a world of %d", rank, world);
    L->world = world, L->pp = pp, L->dp = dp, L->ep = ep;
    L->ranks_per_node = ranks_per_node > 0 ? ranks_per_node : world;
    L->stage = rank / dp;
    L->dp_rank = rank % dp;
    L->ep_group = L->dp_rank / ep;
    L->ep_rank = L->dp_rank % ep;
    L->node = rank / L->ranks_per_node;
    int first = ds_layout_world_rank(L, L->stage, L->ep_group * ep);
    int last = first + ep - 1;
    L->ep_nodes = last / L->ranks_per_node - first / L->ranks_per_node + 1;
    return 0;
}

int ds_layout_world_rank(const ds_layout *L, int stage, int dp_rank) { return stage * L->dp + dp_rank; }

int ds_layout_node_of_ep_rank(const ds_layout *L, int e) {
    return ds_layout_world_rank(L, L->stage, L->ep_group * L->ep + e) / L->ranks_per_node;
}

int ds_layout_make(ds_layout *L, const ds_comm *c, int pp, int dp, int ep, int ranks_per_node) {
    if (ranks_per_node == 0) {
        /* hosts must hold equal numbers of ranks for "world rank / ranks per node" to name the host */
        int64_t mine = c->local_size, sum = mine;
        int rc = ds_comm_allreduce_sum_i64(c, &sum, 1);
        if (rc) return rc;
        if (sum != (int64_t)c->local_size * c->size)
            return ds_fail(DS_EUSAGE, "the hosts run different numbers of ranks; give --ranks-per-node");
        ranks_per_node = (int)mine;
    }
    int rc = ds_layout_coords(L, c->rank, c->size, pp, dp, ep, ranks_per_node);
    if (rc) return rc;
    /* MPI_Comm_split is collective over c: every rank makes the same four calls in the same order */
    if ((rc = ds_comm_split(c, L->stage, L->dp_rank, &L->dp_comm))) goto fail;
    if ((rc = ds_comm_split(c, L->stage * dp + L->ep_group, L->ep_rank, &L->ep_comm))) goto fail;
    if ((rc = ds_comm_split(c, L->stage * ep + L->ep_rank, L->ep_group, &L->expert_dp_comm))) goto fail;
    if ((rc = ds_comm_split(c, L->dp_rank, L->stage, &L->pp_comm))) goto fail;
    L->have_comms = 1;
    return 0;
fail:
    L->have_comms = 1;
    ds_layout_free(L);
    return rc;
}

void ds_layout_free(ds_layout *L) {
    if (!L->have_comms) return;
    ds_comm_free_split(&L->dp_comm);
    ds_comm_free_split(&L->ep_comm);
    ds_comm_free_split(&L->expert_dp_comm);
    ds_comm_free_split(&L->pp_comm);
    L->have_comms = 0;
}

void ds_layout_describe(const ds_layout *L, char *buf, size_t n) {
    snprintf(buf, n, "rank %d: stage %d, dp %d (ep group %d, ep rank %d), node %d",
             ds_layout_world_rank(L, L->stage, L->dp_rank), L->stage, L->dp_rank, L->ep_group, L->ep_rank, L->node);
}
