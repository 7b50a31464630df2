/* eprun.h — expert parallelism in a training run: what the session adds for --ep N (docs/DESIGN.md
 * "Expert parallelism").
 *
 * Owns: the rank layout of the run (dist/layout.h: with PP 1 every rank is a data-parallel rank; EP groups
 * of N consecutive data-parallel ranks of one pipeline stage split the routed experts), the refusals of a
 * layout before any work (world not a multiple of N, N not dividing n_routed_experts, the config's n_group
 * not the number of nodes an EP group spans when routing is node-limited), the model options that make a model hold only its experts, the two
 * parameter groups (everything replicated over the data-parallel ranks, the rank's experts over the ranks
 * holding the same experts), and the per-step traffic metrics (nodes per token, dispatch / combine /
 * cross-node bytes per rank) for the metrics record and the run's summary line.
 */
#ifndef DS_TRAIN_EPRUN_H
#define DS_TRAIN_EPRUN_H

#include <stdint.h>

#include "core/jsonw.h"
#include "dist/layout.h"
#include "io/config.h"
#include "model/model.h"
#include "train/trainer.h"

typedef struct {
    int ep;               /* expert-parallel ranks per group (1: none) */
    int pp;               /* pipeline stages (1: none): EP groups are ranks of one stage */
    int ranks_per_node;   /* as given (0: the hosts) */
    int two_hop;          /* dispatch/combine in two hops (set after join) */
    ds_layout L;
    int have_layout;
    int *node;            /* [ep] node of each EP rank of this rank's group */
    ds_train_comm edp;    /* the expert_dp group as the trainer sees it */
    ds_comm stage_edp;    /* under --pp with DualPipe or the whole model: the ranks holding this rank's experts */
    int have_stage_edp;
    ds_train_comm tstage_edp;
    /* the last step's traffic, over every rank of the run */
    int have_step;
    double nodes_mean, dispatch_bytes, combine_bytes, cross_node_bytes; /* bytes: mean per rank */
    double dispatch_rows; /* token rows the plan sent to other ranks, mean per rank (bytes = rows x row bytes) */
    int nodes_max;
    double bias_spread;   /* the largest difference of an expert bias between two ranks (0: identical) */
    /* the run so far: sums of the per-step values above, and steps */
    double sum_nodes, sum_dispatch, sum_combine, sum_cross;
    int run_nodes_max;
    int64_t steps;
} ds_ep_run;

/* Before any work: a usage error (one line naming the numbers) when the layout cannot hold, checked
 * without MPI for a world of one. world: the processes started (c NULL: one), PP x DP with pp pipeline
 * stages (the caller checked that pp divides it); EP groups are ep consecutive DP ranks of one stage.
 * Builds the layout when ep > 1 (collective over c). */
int ds_ep_run_join(ds_ep_run *r, const ds_comm *c, int pp, int ep, int ranks_per_node);
/* With the config known: N divides n_routed_experts; with node-limited routing (1 < topk_group <
 * n_group... any topk_group < n_group) n_group equals the nodes one EP group spans and the EP ranks
 * divide evenly over them. Usage errors. */
int ds_ep_run_check_config(const ds_ep_run *r, const ds_config *cfg);
/* The model options of this rank (nothing changes without expert parallelism). */
void ds_ep_run_model_opts(const ds_ep_run *r, ds_model_opts *mo);
/* The parameter groups: [0, experts) over dp, the experts over expert_dp (nothing without EP). */
int ds_ep_run_groups(ds_ep_run *r, ds_trainer *t, const ds_model *m, const ds_train_comm *dp);
/* Once a step's micro-batches are done, on every rank: the model's traffic counters summed over the
 * world (c) and reset. */
int ds_ep_run_step(ds_ep_run *r, ds_model *m, const ds_comm *c);
/* Also checks that every rank holds the same expert biases (the last update's): bias_spread. */
/* "ep": {...} in a step's metrics record (nothing without EP). */
void ds_ep_run_record(const ds_ep_run *r, ds_jsonw *w);
/* The run's traffic on rank 0's log (nothing without EP or steps). */
void ds_ep_run_summary(const ds_ep_run *r);
/* Under --pp: the group over which the gradients (and ZeRO-1 moments) of this rank's experts meet, the
 * ranks holding the same ones (NULL without EP): the stage's ranks with the same EP rank (expert_dp); under
 * DualPipe (dual) those of both stages of the rank's pair, s and PP-1-s; with the whole model on every rank
 * (whole) every rank with the same EP rank. Collective over world. */
int ds_ep_run_stage_experts(ds_ep_run *r, const ds_comm *world, int dual, int whole, const ds_train_comm **out);
void ds_ep_run_free(ds_ep_run *r);

#endif
