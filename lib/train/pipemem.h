/* pipemem.h — what a pipeline stage's rank holds under --pp (docs/DESIGN.md "Pipeline memory").
 *
 * Owns: the filter that makes a rank's model hold only its chunks' tensors (model.h ds_model_hold: its
 * stage's decoder layers, plus the embedding on the first stage and the final norm, head and MTP modules
 * on the last; DualPipe: both chunks, stage r and PP-1-r), the parameter groups over the ranks that hold
 * the same tensors (train/trainer.h ds_train_group: their gradients are summed there, and ZeRO-1 shards
 * their moments there), and the bytes a rank holds as the parameter table predicts them.
 *
 * Where a tensor lives on several stages' ranks its gradient is summed exactly over exactly those ranks:
 *   1F1B / ZB1P with MTP: the embedding on the first and the last stage (MTP looks its tokens up there)
 *   DualPipe: every tensor of stage s on pipeline ranks s and PP-1-s (the 2x parameters of its Table 2)
 * Every other tensor lives on one stage: its group is that stage's data-parallel ranks.
 * Routed experts under --ep: the expert range of the model (after every other tensor) gets the group the
 * caller gives (train/eprun.h ds_ep_run_stage_experts: the same tensors' holders with the same EP rank).
 */
#ifndef DS_TRAIN_PIPEMEM_H
#define DS_TRAIN_PIPEMEM_H

#include "dist/comm.h"
#include "dist/layout.h"
#include "dist/pipesched.h"
#include "model/model.h"
#include "train/trainer.h"

/* The tensors pipeline rank `rank` holds: the layers of its chunks (first: [pp + 1] from
 * ds_pipe_split_layers), the embedding with stage 0 (and with stage pp-1 when mtp > 0 under 1F1B/ZB1P:
 * the MTP modules look tokens up in it), the final norm, head and MTP modules with stage pp-1. */
void ds_pipe_hold(ds_pipe_kind kind, int pp, int rank, const int *first, int mtp, ds_model_hold *h);

/* The trainer's view of an MPI group: rank-ordered sums, reduce-scatter and all-gather (dist/dp.h). */
ds_train_comm ds_train_comm_of(const ds_comm *c);

typedef struct {
    ds_comm chunk, embed;      /* the ranks holding this rank's chunks; the ranks holding the embedding */
    int have_chunk, have_embed;
    ds_train_comm tchunk, tembed, tworld;
    ds_train_group g[3];
    int n;
} ds_pipe_groups;

/* Groups for the model m of this rank (layout L of world, held as ds_pipe_hold says): the embedding
 * over its holders when other stages hold it too, the rest of the replicated range over the chunks'
 * holders, the expert range [ds_model_expert_range) over `experts` (NULL: none may exist). whole: every
 * rank holds the whole model (a tool that needs it, ds-rl's rollouts): one group over the world, whose
 * sum adds each stage's gradients (zero elsewhere), the expert range apart over `experts` when given.
 * Collective over world. */
int ds_pipe_groups_make(ds_pipe_groups *pg, const ds_layout *L, const ds_comm *world, ds_pipe_kind kind, const ds_model *m,
                        const ds_train_comm *experts, int whole);
void ds_pipe_groups_free(ds_pipe_groups *pg);

#endif
