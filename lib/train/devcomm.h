/* devcomm.h — the trainer's reductions when the parameters live on a GPU (--device cuda with --dp).
 *
 * Owns: --comm (nccl | mpi | auto) and the ds_train_comm (trainer.h) whose float callbacks take the
 * backend's device memory: NCCL in place on the GPU (dist/nccl.h: one GPU per process, the communicator
 * over the data-parallel MPI group, its own stream ordered by events against the compute stream), or, the
 * fallback, host staging over MPI (copy out, dist/dp.h's rank-ordered sums, copy back). The loss terms and
 * expert counts are host values and go over MPI either way. The ZeRO-1 halves keep dist/dp.h's slicing on
 * both paths, so the optimizer shards are the same whichever transport ran.
 */
#ifndef DS_TRAIN_DEVCOMM_H
#define DS_TRAIN_DEVCOMM_H

#include <stddef.h>

#include "dist/comm.h"
#include "dist/nccl.h"
#include "ops/ops.h"
#include "train/trainer.h"

typedef enum { DS_DEVCOMM_MPI = 0, DS_DEVCOMM_NCCL = 1 } ds_devcomm_kind;

typedef struct {
    ds_devcomm_kind kind;
    const ds_comm *group; /* the data-parallel MPI group (host values; the staging path's transport) */
    ds_nccl *nccl;        /* kind NCCL */
    const ds_ops *ops;    /* the backend holding the parameters (set once the model exists) */
    float *host;          /* staging buffer (kind MPI), grown to the largest range */
    size_t host_cap;
    int device;           /* the GPU this process uses (kind NCCL), -1 otherwise */
} ds_devcomm;

/* --comm NAME for --device DEVICE: "nccl", "mpi", or "auto"/NULL (nccl on a GPU where this build has
 * NCCL, else mpi). Usage errors: nccl without a GPU device, or in a build without NCCL. */
int ds_devcomm_kind_parse(const char *name, const char *device, ds_devcomm_kind *kind);

/* Before the GPU backend starts (collective over group): NCCL picks the process's GPU by its local rank
 * and makes the communicator. */
int ds_devcomm_open(ds_devcomm *d, const ds_comm *group, ds_devcomm_kind kind);
/* The trainer's view (flag device set); d must outlive it. */
ds_train_comm ds_devcomm_train_comm(ds_devcomm *d);
/* failed_alone: this rank failed while the others may be inside a collective (the communicator is
 * aborted, never waited for). */
void ds_devcomm_close(ds_devcomm *d, int failed_alone);

#endif
