/* zero.h — the trainer's optimizer over parameter groups: replicated, or ZeRO-1 sharded.
 *
 * Owns: per parameter group (train/trainer.h ds_train_group: a contiguous range of the net's
 * params/grads and the ranks holding the same values of it), the gradient reduction, this rank's share
 * of the global gradient norm, and the AdamW state and update. Replicated: the group's gradients are
 * all-reduced and every rank updates the whole range with moments for all of it. ZeRO-1: the gradients
 * are reduce-scattered (slice r of the range, dist/dp.h ds_dp_slice, gets the rank-ordered sums on rank
 * r), rank r updates its slice with moments for that slice only, and the parameters are all-gathered.
 * Both sum in the same order, so ZeRO-1 and the replicated optimizer give the same bits.
 * The fp32 parameters are the master weights (there is no separate working copy to shard).
 *
 * The global gradient norm counts every element once: each rank adds the squares of its slice of every
 * group (in the same rank-ordered slicing, whatever the mode), then one sum over the world.
 * Checkpoints read and write the moments by global element range (ds_zero_get/set on what this rank
 * holds, ds_zero_held); session.c turns that into the sharded optimizer files (docs/formats.md).
 */
#ifndef DS_TRAIN_ZERO_H
#define DS_TRAIN_ZERO_H

#include <stddef.h>
#include <stdint.h>

#include "train/optim.h"
#include "train/trainer.h"

typedef struct {
    ds_train_group g;
    int rank, size;      /* in the group's comm (0, 1 without one) */
    size_t slice_lo, slice_hi; /* this rank's slice of the range: global elements [lo, hi) (norm, ZeRO) */
    size_t held_lo, held_hi;   /* what this rank's moments cover: the slice under ZeRO, else the range */
    int sharded;
    ds_param *info;      /* the parameter table clipped to [held_lo, held_hi), offsets relative to held_lo */
    int n_info;
    ds_optim *opt;       /* over held_hi - held_lo values (NULL when that is empty) */
} ds_zero_group;

typedef struct ds_zero {
    ds_zero_group *g;
    int n;
    const ds_train_comm *world; /* the norm's sum (NULL: one process) */
    int64_t t;                  /* updates applied (kept in every group's optimizer) */
    int grads_zeroed;           /* the last ds_zero_step left every gradient 0 (ds_zero_take_grads_zeroed) */
} ds_zero;

/* Groups g[0..n) must tile [0, net->n_params) in order. zero: shard the optimizer of every group whose
 * comm has more than one rank and provides reduce_scatter_f32 and allgather_f32. world: the ranks over
 * which the gradient norm is summed (NULL or size 1: this process alone). */
int ds_zero_create(ds_zero *z, const ds_train_net *net, const ds_adamw_opts *o, const ds_train_group *g, int n,
                   const ds_train_comm *world, int zero);
void ds_zero_free(ds_zero *z);

/* After the backward: every group's gradients summed over its ranks (all of the range when replicated,
 * at least this rank's slice under ZeRO). */
int ds_zero_reduce(ds_zero *z, const ds_train_net *net);
/* The global L2 norm of the reduced gradients, the same on every rank (NaN/Inf propagate). */
int ds_zero_grad_norm(ds_zero *z, const ds_train_net *net, double *norm);
/* One AdamW update of what this rank holds (grads * grad_scale, lr), then the all-gather of sharded
 * groups' parameters: every rank ends with every parameter of its groups. */
int ds_zero_step(ds_zero *z, ds_train_net *net, float grad_scale, double lr);
/* Whether the gradients are all 0 because the last ds_zero_step zeroed them in its update pass (train/optim.h
 * DS_FUSED_OPTIM), so the next step may skip its zeroing pass; the answer is given once (the next call says 0
 * until another step). A step zeroes the gradients only where its optimizers read all of them: never under
 * ZeRO-1 sharding (a rank updates its slice; the rest of its gradient buffer holds partial sums). The
 * gradients are of no use after the update (the norm and the reductions come before it). */
int ds_zero_take_grads_zeroed(ds_zero *z);
void ds_zero_set_t(ds_zero *z, int64_t t);

/* Moments (which 0 = m, 1 = v) of global elements [offset, offset+numel), which must lie in what this
 * rank holds (ds_zero_held). */
int ds_zero_get(const ds_zero *z, int which, size_t offset, size_t numel, float *host);
int ds_zero_set(ds_zero *z, int which, size_t offset, size_t numel, const float *host);
/* The part of [offset, offset+numel) whose moments this rank holds: [*lo, *hi) (empty: lo == hi).
 * Held ranges are contiguous per group, and a parameter tensor lies in one group. */
void ds_zero_held(const ds_zero *z, size_t offset, size_t numel, size_t *lo, size_t *hi);
/* Whether any group is sharded. */
int ds_zero_sharded(const ds_zero *z);
/* Bytes of optimizer state this rank holds (moments). */
size_t ds_zero_state_bytes(const ds_zero *z);

#endif
