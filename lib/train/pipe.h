/* pipe.h — pipeline-parallel execution of training steps (--pp): stages, the schedule's op lists run per
 * rank, activations and gradients between stages.
 *
 * Owns: cutting the network into PP stages (the embedding with the first, the final norm, head and MTP
 * modules with the last, the decoder layers split by estimated cost or as given by --stages), running
 * this rank's op list of a lib/dist/pipesched.h schedule over a step's micro-batches (F: forward of a
 * chunk, B: input gradient sent upstream at once with the weight gradients deferred, W: the deferred
 * weight gradients, BW: both), and moving each micro-batch's activation and gradient between the ranks
 * with non-blocking messages (lib/dist/p2p.h) that progress while the rank computes: receives are
 * posted ahead of the ops that need them, and open messages are tested between decoder layers.
 *
 * Placement: pipeline rank r holds stage r (chunk 0) and, under DualPipe, stage PP-1-r too (chunk 1), so
 * rank 0 holds both the embedding and the head, as V3 does, and MTP's shared embedding and head
 * gradients meet on one rank. What a rank allocates and how gradients of tensors held on several ranks
 * meet: train/pipemem.h. Activations are kept for the micro-batches in flight (activation slots of the
 * model).
 *
 * Environment (for the benchmark, docs/DESIGN.md "Pipeline parallelism"): DS_PP_DELAY_MS delays every
 * transfer (p2p.h); DS_PP_OVERLAP=0 turns the overlap off: receives are posted only when needed and a
 * sender stops computing for the delay of each message it sends.
 */
#ifndef DS_TRAIN_PIPE_H
#define DS_TRAIN_PIPE_H

#include "dist/comm.h"
#include "dist/pipesched.h"
#include "model/model.h"
#include "train/trainer.h"

/* Layers of each stage: stage s runs decoder layers [first[s], first[s+1]) (first: [pp + 1]). spec:
 * "0-3,4-7,..." (PP ranges, contiguous, covering every layer in order, none empty) or NULL: split to
 * balance the estimated cost (activated parameters and attention per token; the head and MTP modules
 * count for the last stage). Refusals are usage errors: more stages than layers, a bad spec. */
int ds_pipe_split_layers(const ds_config *c, int pp, int seq_len, const char *spec, int *first);

typedef struct ds_pipe_net ds_pipe_net;

typedef struct {
    int pp;
    ds_pipe_kind kind;
    const char *stages;    /* --stages spec, or NULL */
    int seq_len;           /* for the cost estimate */
    const ds_comm *pp_comm; /* rank = pipeline rank (the layout's stage) */
    const ds_comm *ep_comm; /* the stage's expert-parallel group (NULL: none): its ranks, replicas of the
                               same stage, run the same op list, so every replica needs as many
                               micro-batches (checked each step) */
} ds_pipe_opts;

/* m: a training model on the CPU backend (not owned). */
int ds_pipe_net_create(ds_pipe_net **out, ds_model *m, const ds_pipe_opts *o);
void ds_pipe_net_free(ds_pipe_net *p);
/* ds_train_net.run_micro: this rank's ops of the schedule over io->n micro-batches (forward_only: each
 * micro-batch through the stages in order). */
int ds_pipe_net_run(void *pipe_net, const ds_train_micro_io *io);
/* ds_train_net.idle for a pipelined net under expert parallelism: a validation round where this replica has
 * no micro-batch takes part in the exchanges of the stage's layers (forward only: chunk 0, stage = rank). */
int ds_pipe_net_idle(void *pipe_net, int T, int backward, int mtp);
/* The layers of (this rank's) chunk: [*l0, *l1); -1 when the rank has no such chunk. */
int ds_pipe_net_chunk_layers(const ds_pipe_net *p, int chunk, int *l0, int *l1);

/* Time this rank computed (ops, not waiting for messages) and spent in run, summed over the calls since
 * the last reset: bubble fraction = 1 - busy / wall. */
typedef struct {
    double busy, wall;
    double op_time[4];  /* summed compute time by op kind (ds_pipe_opkind: F, B, W, BW) */
    int64_t op_count[4];
    int64_t steps, sent, received;
} ds_pipe_stats;
void ds_pipe_net_stats(const ds_pipe_net *p, ds_pipe_stats *out);
void ds_pipe_net_reset_stats(ds_pipe_net *p);

#endif
