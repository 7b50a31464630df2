/* pipesched.h — pipeline-parallel schedules as pure functions, and their event simulation.
 *
 * Owns: the three schedules (1F1B, zero-bubble 1F1B "ZB1P", DualPipe) as per-rank op lists that are a
 * pure function of (kind, PP, micro-batches); which stage a rank's chunk holds; the checks that refuse
 * a schedule before any work; an event simulation of a schedule under per-op costs (step time, bubble
 * and peak in-flight activations per rank, the timeline); the text and PNG renderings of a timeline.
 * The trainer (--pp) executes these lists as they are; the planner (--plan) simulates them.
 *
 * Model: the network is cut into PP stages (stage 0 holds the embedding, stage PP-1 the head and the
 * loss); every micro-batch visits stages 0, 1, ..., PP-1 forward and PP-1, ..., 0 backward. There are
 * PP ranks (pp_comm of lib/dist/layout.h; rank here = that communicator's rank = the layout's stage).
 *
 *   1F1B, ZB1P   one chunk per rank: rank r holds stage r (chunk 0). Micro-batches 0..M-1 enter at rank 0.
 *   DualPipe     two chunks per rank: chunk 0 = stage r, chunk 1 = stage PP-1-r, so every stage lives on
 *                two ranks (parameters 2x; their gradients must be summed). Micro-batches 0..M/2-1 run on
 *                chunk 0 (enter at rank 0, flow up the ranks), M/2..M-1 run on chunk 1 (enter at rank
 *                PP-1, flow down the ranks). A micro-batch uses one chunk on every rank it visits.
 *
 * Ops: F = forward of one micro-batch through one chunk; BW = full backward (input and weight
 * gradients); B = input gradient only (sent upstream at once), its weight gradient deferred to a later W
 * of the same micro-batch and chunk on the same rank. A micro-batch's backward on a chunk is either one
 * BW or one B followed (later) by one W. `paired` on an op means it runs overlapped with the op right
 * after it in the list (DualPipe's F&B: an F of one chunk with a BW of the other, each one's
 * communication hidden behind the other's compute); a pair starts when both ops can start and both
 * end together.
 *
 * Dependencies an executor must honour (and the simulation does): F of (m, stage s) needs the F of
 * (m, s-1) (the activation, from rank ds_pipe_prev_rank); B/BW of (m, s) needs the B/BW of (m, s+1)
 * (the gradient, from ds_pipe_next_rank), and at the last stage the F of (m, PP-1); W of (m, s) needs
 * the B of (m, s). Ops on one rank run in list order.
 *
 * Requirements (ds_pipe_check): PP >= 1, M >= 1, PP x M <= DS_PIPE_MAX_CELLS (a schedule and its
 * simulation take about 70 bytes per cell); DualPipe: PP even, M even and M >= 2 PP (the schedule's
 * steady phase needs M/2 >= PP micro-batches per direction).
 */
#ifndef DS_DIST_PIPESCHED_H
#define DS_DIST_PIPESCHED_H

#include <stddef.h>
#include <stdint.h>

#include "core/strbuf.h"

#define DS_PIPE_MAX_CELLS (1 << 22)

typedef enum { DS_PIPE_1F1B = 0, DS_PIPE_ZB1P = 1, DS_PIPE_DUALPIPE = 2 } ds_pipe_kind;
#define DS_PIPE_N_KINDS 3

typedef enum { DS_PIPE_F = 0, DS_PIPE_B = 1, DS_PIPE_W = 2, DS_PIPE_BW = 3 } ds_pipe_opkind;

typedef struct {
    uint8_t kind;   /* ds_pipe_opkind */
    uint8_t chunk;  /* 0, or 1 (DualPipe's second chunk) */
    uint8_t paired; /* runs overlapped with the next op of the list */
    uint8_t pad_;
    int32_t mb;     /* micro-batch 0..n_mb-1 */
} ds_pipe_op;

typedef struct {
    ds_pipe_kind kind;
    int pp, n_mb;
    int n_chunks;     /* chunks per rank: 1, or 2 for DualPipe */
    int *n_ops;       /* [pp] */
    ds_pipe_op **ops; /* [pp][n_ops[r]], in execution order */
} ds_pipe_schedule;

/* "1f1b", "zb1p", "dualpipe" (case-insensitive) <-> kind. Parse fails with a usage error naming the
 * accepted values. */
int ds_pipe_kind_parse(const char *s, ds_pipe_kind *kind);
const char *ds_pipe_kind_name(ds_pipe_kind kind); /* "1F1B", "ZB1P", "DualPipe" */

/* Refuse (DS_EUSAGE, one line) what the schedule cannot run: PP < 1, micro-batches < 1, PP x micro-batches
 * above DS_PIPE_MAX_CELLS, DualPipe with odd PP or micro-batches odd or below 2 PP. */
int ds_pipe_check(ds_pipe_kind kind, int pp, int n_mb);

/* Build the schedule (after ds_pipe_check). Free with ds_pipe_schedule_free (safe on a zeroed one). */
int ds_pipe_schedule_make(ds_pipe_schedule *s, ds_pipe_kind kind, int pp, int n_mb);
void ds_pipe_schedule_free(ds_pipe_schedule *s);

/* Stage held by (rank, chunk); the rank holding (stage, chunk); the chunk micro-batch mb runs on. */
int ds_pipe_stage_of(const ds_pipe_schedule *s, int rank, int chunk);
int ds_pipe_rank_of(const ds_pipe_schedule *s, int stage, int chunk);
int ds_pipe_chunk_of_mb(const ds_pipe_schedule *s, int mb);
/* Where (rank, chunk)'s forward output goes and its input gradient comes from (stage + 1), and where its
 * input comes from and its input gradient goes (stage - 1); -1 past the last / before the first stage. */
int ds_pipe_next_rank(const ds_pipe_schedule *s, int rank, int chunk);
int ds_pipe_prev_rank(const ds_pipe_schedule *s, int rank, int chunk);

/* Structural check of any schedule (tests, and an executor's guard): every (micro-batch, stage) has one
 * F and one backward (a BW, or a B and a later W) on the rank holding that stage in the micro-batch's
 * chunk, F before its backward, B before its W, pairs well formed. DS_ERR naming the first violation. */
int ds_pipe_validate(const ds_pipe_schedule *s);

/* ---- event simulation ---- */

typedef struct {
    double f;   /* forward of one chunk */
    double b;   /* full backward of one chunk (input + weight gradients): a BW op */
    double w;   /* the weight-gradient part of b: a W op costs w, a B op b - w */
    double fb;  /* an overlapped pair (F&B); <= 0: the two ops' costs added (no overlap) */
    double p2p; /* from the end of an op to the start of the op it feeds on another rank */
} ds_pipe_costs;

typedef struct {
    int pp;
    double step_time;  /* the last op's end; every rank starts at 0 */
    double *busy;      /* [pp] time computing (a pair counts once) */
    double *bubble;    /* [pp] step_time - busy */
    int *peak_act;     /* [pp] most micro-batch chunk activations held at once (from an F until its W or
                        * BW), counted in list order; the unit is one micro-batch through one chunk */
    double **start, **end; /* [pp][n_ops[r]] the timeline, parallel to the schedule's ops */
} ds_pipe_sim;

/* Simulate: each rank runs its ops in order, each op as soon as its dependencies (above) are met. A
 * schedule that cannot finish (a cycle across ranks) is DS_ERR "deadlock: ...". Free with
 * ds_pipe_sim_free (safe on a zeroed one). */
int ds_pipe_simulate(const ds_pipe_schedule *s, const ds_pipe_costs *c, ds_pipe_sim *out);
/* The same with costs per stage (stage_costs[PP]): an op costs what its stage's entry says, a transfer
 * the sending stage's p2p, an F&B pair (its two ops on two stages of one rank) the mean of the two
 * stages' fb, or its ops' costs added where either stage's fb is <= 0. With PP equal entries this is
 * ds_pipe_simulate bit for bit. For stages of unequal cost: the embedding's, the head's and MTP's. */
int ds_pipe_simulate_stages(const ds_pipe_schedule *s, const ds_pipe_costs *stage_costs, ds_pipe_sim *out);
void ds_pipe_sim_free(ds_pipe_sim *sim);
double ds_pipe_sim_max_bubble(const ds_pipe_schedule *s, const ds_pipe_sim *sim);
int ds_pipe_sim_max_peak_act(const ds_pipe_schedule *s, const ds_pipe_sim *sim);

#endif
