/* emarun.h — the EMA of a training run's weights (--ema DECAY, train/ema.h), kept where the weights are
 * (docs/DESIGN.md "EMA of the weights").
 *
 * Owns: which rank averages which parameters, starting the average (the run's starting weights, or a
 * resumed checkpoint's <dir>/ema read by tensor name), handing each step's weights to the averaging
 * thread (a device's weights are copied to the host first), and the average as one model for the
 * checkpoint (gathered onto rank 0 in the one-process layout under expert parallelism).
 *
 * Who keeps what: every tensor's average lives on one rank only, the lowest that holds the tensor.
 * Data-parallel replicas hold the same weights, so without expert parallelism rank 0 averages the whole
 * model. With --ep N (train/eprun.h) rank 0 averages everything it holds (the replicated tensors and
 * its experts) and EP ranks 1..N-1 of the first EP group their experts only (the floats from
 * ds_model_expert_range on); the other groups keep none. Pipeline stages (--pp, train/pipemem.h) apply
 * the same rule inside each stage's data-parallel ranks: the stage's first replica averages its layers
 * (and, with --ep, its first EP group the stage's experts); a tensor two stages hold (1F1B's shared
 * embedding, DualPipe's stage pairs) is averaged on both, identically, and the gather takes the lowest
 * rank's. Host memory: two floats (average and snapshot) per averaged parameter on those ranks; rank 0
 * also gathers the whole average before a save.
 */
#ifndef DS_TRAIN_EMARUN_H
#define DS_TRAIN_EMARUN_H

#include <stddef.h>

#include "dist/comm.h"
#include "model/model.h"
#include "train/distckpt.h"
#include "train/ema.h"
#include "train/eprun.h"

/* Where a training checkpoint keeps the EMA of its weights (--ema): a model checkpoint directory. */
#define DS_EMA_DIR "ema"

typedef struct {
    ds_ema *ema;     /* NULL: this rank averages nothing */
    size_t off;      /* the parameters [off, off + n) of the rank's model are averaged */
    ds_param *info;  /* the model's tensors in that range, offsets relative to off */
    int n_info;
    ds_distckpt_full full; /* expert parallelism, stages: the one-process table, and on rank 0 the gathered average */
    int gather;            /* the ranks hold different tensors (--ep, --pp stages): gathered for a save */
} ds_ema_run;

/* Start the average on the ranks that keep one (rank: this process's among the data-parallel ranks that
 * hold the same tensors, i.e. its stage's with stages, else the world's; stages: the ranks hold
 * different pipeline stages; ep: the run's expert parallelism, or NULL; log: this rank reports) from
 * the model's current weights, or from resume_dir/ema when resume_dir is given and holds one (continued
 * bit for bit; a warning and the current weights when it does not). decay <= 0: nothing. Not collective. */
int ds_ema_run_start(ds_ema_run *r, ds_model *m, const ds_ep_run *ep, int rank, int stages, int log, double decay,
                     const char *resume_dir);
/* After an optimizer step: the weights to the averaging thread (nothing on a rank without an average). */
int ds_ema_run_submit(ds_ema_run *r, ds_model *m);
/* Before a save, on every rank (collective over c when the ranks hold different tensors, --ep or --pp
 * stages; c may be NULL otherwise): the finished average of the whole model, on rank 0 in the layout
 * the checkpoint writes (then the one-process model's, ds_model_layout; else the model's own); NULL
 * elsewhere. */
int ds_ema_run_gather(ds_ema_run *r, const ds_model *m, const ds_comm *c, const float **values);
void ds_ema_run_free(ds_ema_run *r);

#endif
