#include "train/eprun.h"

#include "core/err.h"
#include "core/log.h"
#include "dist/dp.h"
#include "train/pipemem.h"

#include <stdlib.h>
#include <string.h>

int ds_ep_run_join(ds_ep_run *r, const ds_comm *c, int pp, int ep, int ranks_per_node) {
    memset(r, 0, sizeof *r);
    r->ep = ep > 0 ? ep : 1;
    r->pp = pp > 0 ? pp : 1;
    r->ranks_per_node = ranks_per_node;
    const int world = c ? c->size : 1;
    DS_TRY(ds_layout_check(world, r->pp, world / r->pp, r->ep, ranks_per_node, -1));
    if (r->ep == 1 || !c) return 0;
    DS_TRY(ds_layout_make(&r->L, c, r->pp, world / r->pp, r->ep, ranks_per_node));
    r->have_layout = 1;
    if (!(r->node = calloc((size_t)r->ep, sizeof(int)))) return ds_fail(DS_ERR, "out of memory: layout");
    for (int e = 0; e < r->ep; e++) r->node[e] = ds_layout_node_of_ep_rank(&r->L, e);
    r->edp = ds_train_comm_of(&r->L.expert_dp_comm);
    ds_info("expert parallel: %d ranks per group, %d groups%s, %d node(s) per group (%d ranks per node)", r->ep,
            world / r->pp / r->ep, r->pp > 1 ? " per pipeline stage" : "", r->L.ep_nodes, r->L.ranks_per_node);
    return 0;
}

int ds_ep_run_check_config(const ds_ep_run *r, const ds_config *cfg) {
    if (r->ep <= 1) return 0;
    const int world = r->have_layout ? r->L.world : r->pp;
    DS_TRY(ds_layout_check(world, r->pp, world / r->pp, r->ep, r->ranks_per_node,
                           cfg->n_routed_experts > 0 ? cfg->n_routed_experts : 0));
    const int G = cfg->n_group > 0 ? cfg->n_group : 1, M = cfg->topk_group > 0 ? cfg->topk_group : G;
    if (M >= G || !r->have_layout) return 0; /* routing is not limited: groups need not be nodes */
    const int nodes = r->L.ep_nodes, rpn = r->L.ranks_per_node;
    if (G != nodes || (r->ep % rpn && rpn % r->ep))
        return ds_fail(DS_EUSAGE,
                       "the config's n_group %d must equal the %d node(s) an expert-parallel group spans (--ep %d, "
                       "%d ranks per node), as topk_group %d limits each token to that many nodes",
                       G, nodes, r->ep, rpn, M);
    return 0;
}

void ds_ep_run_model_opts(const ds_ep_run *r, ds_model_opts *mo) {
    if (!r->have_layout) return;
    mo->ep_size = r->ep, mo->ep_rank = r->L.ep_rank, mo->ep_comm = &r->L.ep_comm, mo->ep_node = r->node;
    mo->ep_two_hop = r->two_hop;
}

int ds_ep_run_groups(ds_ep_run *r, ds_trainer *t, const ds_model *m, const ds_train_comm *dp) {
    if (!r->have_layout) return 0;
    size_t off, n;
    ds_model_expert_range(m, &off, &n, NULL, NULL);
    const ds_train_group g[2] = {{.offset = 0, .numel = off, .comm = dp}, {.offset = off, .numel = n, .comm = &r->edp}};
    return ds_trainer_set_groups(t, g, 2, dp);
}

int ds_ep_run_step(ds_ep_run *r, ds_model *m, const ds_comm *c) {
    if (!r->have_layout) return 0;
    ds_moe_ep_stats st;
    ds_model_ep_stats(m, &st, 1);
    double sum[6] = {(double)st.tokens, (double)st.nodes_sum, (double)st.dispatch_bytes, (double)st.combine_bytes,
                     (double)st.cross_node_bytes, (double)st.dispatch_rows},
           mx = st.nodes_max;
    DS_TRY(ds_comm_allreduce_sum_f64(c, sum, 6));
    DS_TRY(ds_comm_allreduce_max_f64(c, &mx, 1));
    /* the biases: max and -min over the ranks of every entry */
    const ds_config *cfg = ds_model_config(m);
    const int L = cfg->num_hidden_layers + ds_model_mtp_depth(m), E = cfg->n_routed_experts;
    double spread = 0;
    for (int l = 0; l < L; l++) {
        const float *b = ds_model_expert_bias(m, l);
        if (!b) continue;
        double *v = malloc(sizeof(double) * 2 * (size_t)E);
        if (!v) return ds_fail(DS_ERR, "out of memory");
        for (int e = 0; e < E; e++) v[e] = b[e], v[E + e] = -(double)b[e];
        int rc = ds_comm_allreduce_max_f64(c, v, 2 * E);
        for (int e = 0; !rc && e < E; e++)
            if (v[e] + v[E + e] > spread) spread = v[e] + v[E + e];
        free(v);
        DS_TRY(rc);
    }
    r->bias_spread = spread;
    const double P = c->size;
    r->nodes_mean = sum[0] > 0 ? sum[1] / sum[0] : 0;
    r->nodes_max = (int)mx;
    r->dispatch_bytes = sum[2] / P, r->combine_bytes = sum[3] / P, r->cross_node_bytes = sum[4] / P;
    r->dispatch_rows = sum[5] / P;
    r->have_step = 1;
    r->sum_nodes += r->nodes_mean, r->sum_dispatch += r->dispatch_bytes, r->sum_combine += r->combine_bytes;
    r->sum_cross += r->cross_node_bytes;
    if (r->nodes_max > r->run_nodes_max) r->run_nodes_max = r->nodes_max;
    r->steps++;
    return 0;
}

void ds_ep_run_record(const ds_ep_run *r, ds_jsonw *w) {
    if (!r->have_step) return;
    ds_jsonw_key(w, "ep");
    ds_jsonw_obj_begin(w);
    ds_train_knum(w, "nodes_per_token_mean", r->nodes_mean);
    ds_jsonw_kint(w, "nodes_per_token_max", r->nodes_max);
    ds_train_knum(w, "dispatch_bytes_per_rank", r->dispatch_bytes);
    ds_train_knum(w, "combine_bytes_per_rank", r->combine_bytes);
    ds_train_knum(w, "cross_node_bytes_per_rank", r->cross_node_bytes);
    ds_train_knum(w, "dispatch_rows_per_rank", r->dispatch_rows);
    ds_train_knum(w, "bias_spread", r->bias_spread);
    ds_jsonw_obj_end(w);
}

void ds_ep_run_summary(const ds_ep_run *r) {
    if (!r->steps) return;
    const double n = (double)r->steps, MiB = 1048576.0;
    ds_info("expert parallel: %.3f nodes per token (max %d), per rank and step: dispatch %.3f MiB, combine %.3f MiB, "
            "cross-node %.3f MiB (forward; the backward moves as much again)",
            r->sum_nodes / n, r->run_nodes_max, r->sum_dispatch / n / MiB, r->sum_combine / n / MiB, r->sum_cross / n / MiB);
}

int ds_ep_run_stage_experts(ds_ep_run *r, const ds_comm *world, int dual, int whole, const ds_train_comm **out) {
    *out = NULL;
    if (!r->have_layout) return 0;
    if (!dual && !whole) { /* a stage's experts live on its ranks of the same EP rank */
        *out = &r->edp;
        return 0;
    }
    const int s = r->L.stage, pp = r->L.pp, pair = s < pp - 1 - s ? s : pp - 1 - s;
    DS_TRY(ds_comm_split(world, whole ? r->L.ep_rank : pair * r->ep + r->L.ep_rank, world->rank, &r->stage_edp));
    r->have_stage_edp = 1;
    r->tstage_edp = ds_train_comm_of(&r->stage_edp);
    *out = &r->tstage_edp;
    return 0;
}

void ds_ep_run_free(ds_ep_run *r) {
    if (r->have_stage_edp) ds_comm_free_split(&r->stage_edp);
    if (r->have_layout) ds_layout_free(&r->L);
    free(r->node);
    memset(r, 0, sizeof *r);
}
