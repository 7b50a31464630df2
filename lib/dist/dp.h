/* dp.h — data parallelism over MPI: the trainer's reduction hooks (train/trainer.h ds_train_comm).
 *
 * Owns: sums across the data-parallel ranks that give every rank the same bits, so replicas that
 * apply the same update stay identical forever: each value is added in rank order 0, 1, ..., n-1 no
 * matter which rank computes it. Large float arrays go reduce-scatter (every rank sums one slice in
 * that order) then all-gather, moving 2(n-1)/n of the array per rank, as a ring all-reduce does;
 * small arrays are gathered whole and summed locally.
 * The group is whichever communicator it is given: the world, or a sub-group of dist/layout.h.
 */
#ifndef DS_DIST_DP_H
#define DS_DIST_DP_H

#include <stddef.h>
#include <stdint.h>

#include "dist/comm.h"

/* Launched by mpirun/srun (an MPI process manager's environment is present). */
int ds_dist_launched(void);
/* Several processes started by a launcher that gives them no MPI world (torchrun; srun without an
 * MPI plugin): each would train alone into the same output directory. A usage error (DS_EUSAGE)
 * saying how to launch (marked as reported by rank 0 on the other ranks), else 0. */
int ds_dist_check_launch(void);

/* Slice j of n elements split over p ranks: [n*j/p, n*(j+1)/p). The one slicing of every collective
 * here and of ZeRO-1's shards (train/zero.h). */
static inline void ds_dp_slice(size_t n, int p, int j, size_t *lo, size_t *hi) {
    *lo = n * (size_t)j / (size_t)p;
    *hi = n * (size_t)(j + 1) / (size_t)p;
}

int ds_dp_allreduce_f32(const ds_comm *c, float *x, size_t n);
/* The halves of the all-reduce, for ZeRO-1: after reduce_scatter, slice rank (ds_dp_slice) of x holds
 * the rank-ordered sums (the same bits allreduce gives; the rest of x is left as it was); allgather
 * gives every rank every rank's slice of x. */
int ds_dp_reduce_scatter_f32(const ds_comm *c, float *x, size_t n);
int ds_dp_allgather_f32(const ds_comm *c, float *x, size_t n);
int ds_dp_allreduce_f64(const ds_comm *c, double *x, size_t n);
int ds_dp_allreduce_i64(const ds_comm *c, int64_t *x, size_t n);

#endif
