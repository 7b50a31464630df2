/* trainer.h — the training loop shared by ds-pretrain, ds-extend-ctx, ds-sft and ds-rl.
 *
 * Owns: one optimizer step (fetch the step's rows from a data source, forward / loss hook /
 * backward over micro-batches with gradient accumulation, global-norm clipping, AdamW, the
 * auxiliary-loss-free bias update), the schedules that drive it (learning rate, batch size, gamma,
 * lambda), validation, the per-step log line and metrics record, divergence handling, stopping on a
 * signal, and the trainer state that makes a resumed run continue bit for bit.
 *
 * What varies between tools is passed in, not built in:
 *   ds_train_net     the network (forward/backward by per-token log-prob gradients, model.h)
 *   ds_data_source   where rows come from (data.h)
 *   ds_loss_hook     how forward outputs become d(loss)/d(logp) coefficients and named loss values
 *   ds_train_hooks   checkpoint writer, metrics file, stop flag
 * Parallelism slots in at the marked points (docs/DESIGN.md "Trainer"): data parallel splits the
 * step's micro-batches across ranks and sums gradients, loss terms and expert loads before the
 * clipping; expert and pipeline parallelism live behind ds_train_net.
 */
#ifndef DS_TRAIN_TRAINER_H
#define DS_TRAIN_TRAINER_H

#include <signal.h>
#include <stdint.h>

#include "core/jsonw.h"
#include "model/model.h"
#include "train/adamw.h"
#include "train/balance.h"
#include "train/optim.h"
#include "train/data.h"
#include "train/sched.h"

/* ---- the network as the trainer sees it ---- */

/* A step's micro-batches for a net that runs them itself, in its own order (pipeline parallelism). */
typedef struct ds_train_micro_io {
    int n;            /* this rank's micro-batches (its data-parallel share), in data order */
    int forward_only; /* validation: forwards and loss values, no backward */
    ds_batch (*batch)(void *ctx, int k);
    /* After micro-batch k's forward on this rank (each stage of it the rank ran): f holds those layers'
     * balance loss and expert loads; head = the rank ran the head (f's log-probs are valid), and the hook
     * then fills dlogp [B*T] and dmtp [depth][B*T] (host memory; NULL when forward_only). */
    int (*done_fwd)(void *ctx, int k, const ds_fwd_out *f, int head, float *dlogp, float *dmtp);
    void *ctx;
} ds_train_micro_io;

typedef struct ds_train_net {
    void *impl;
    const struct ds_ops *ops; /* the backend holding params and grads (NULL: host memory). Forward outputs,
                                 loss coefficients and expert biases are host memory whatever the backend:
                                 a device net copies them across (train/net.c) */
    float *params, *grads;
    size_t n_params;
    const ds_param *info;
    int n_info;
    int mtp_depth;
    int n_moe_layers, n_experts;
    float **expert_bias; /* [n_moe_layers]: e_score_correction_bias of each MoE layer (forward's order) */
    int (*forward)(void *impl, const ds_batch *b, ds_fwd_out *out);
    int (*backward)(void *impl, const ds_batch *b, const float *dlogp, const float *dmtp);
    /* grads = 0 before a step's first backward; skipped when the last update zeroed them in its pass
     * (train/zero.h ds_zero_take_grads_zeroed), so not a hook that runs every step */
    void (*zero_grad)(void *impl);
    /* Optional: the sequence-wise balance loss weight for the next micro-batches (NULL: fixed in the net) */
    void (*set_balance_alpha)(void *impl, double alpha);
    /* Optional: called after the trainer changed host-side state the network reads (the expert biases after
     * an update or a resume), so a net with its own copy (a device net) refreshes it; a host net announces
     * its parameters changed (ops.h params_changed: the optimizer wrote them in place). */
    int (*state_changed)(void *impl);
    double flops_per_token; /* training FLOPs per token at the run's sequence length (MFU); 0 = unknown */
    /* Optional (expert parallelism): a micro-batch without rows on a rank that has fewer micro-batches
     * than the others this step, so it still takes part in every exchange theirs make: the forward of
     * sequences of T tokens (backward = 0), then its backward (mtp: whether dmtp would be given). With
     * run_micro it is called with micro_ctx, for validation rounds only (the net's op lists do the rest). */
    int (*idle)(void *impl, int T, int backward, int mtp);
    /* Optional: run a step's (or one validation micro-batch's) micro-batches in the net's own order
     * (pipeline stages: lib/train/pipe.h), calling io->done_fwd after each forward; the trainer then sums
     * loss terms, balance loss and expert loads over hooks.pp (the gradients: the parameter groups). NULL:
     * forward/backward per micro-batch. */
    int (*run_micro)(void *micro_ctx, const ds_train_micro_io *io);
    void *micro_ctx;
} ds_train_net;

/* ---- losses ---- */
enum { DS_LOSS_MAX_TERMS = 6 };

typedef struct {
    int64_t step;      /* 0-based index of the optimizer step */
    double lambda;     /* MTP weight at this step */
    int mtp_depth;
    int64_t n_targets; /* valid main-head targets over the whole optimizer step */
    int64_t n_rows;    /* rows in the whole optimizer step */
    int row0;          /* this micro-batch's first row within the step (for per-row data such as
                          RL advantages kept by the source that made the rows) */
} ds_loss_ctx;

typedef struct {
    const char *name;
    int n_terms;
    const char *term[DS_LOSS_MAX_TERMS]; /* term[0] is logged as "loss" and checked for NaN/Inf */
    /* One micro-batch: fill dlogp [B*T] and dmtp [depth][B*T] (dlogp == NULL during validation:
     * values only) and ADD this micro-batch's share of each term to terms[], normalised over the step
     * (so the sum over micro-batches is the step's value). */
    int (*micro)(void *ctx, const ds_loss_ctx *lc, const ds_batch *b, const ds_fwd_out *f, float *dlogp, float *dmtp,
                 double *terms);
    void *ctx;
} ds_loss_hook;

/* Next-token cross-entropy, mean over the step's valid targets, plus lambda/D times the MTP
 * cross-entropies normalised the same way (V3 eq. 24-25). Terms: "loss", "loss_mtp" (the mean of the
 * D module losses, before lambda). */
extern const ds_loss_hook ds_loss_pretrain;

/* ---- options ---- */
typedef struct {
    int64_t total_steps;
    int seq_len, micro_batch;
    ds_sched lr, batch, gamma, lambda; /* batch in sequences per optimizer step */
    ds_adamw_opts adamw;
    double clip_norm;     /* 0: no clipping */
    double balance_alpha; /* sequence-wise balance loss weight: mean over the step's rows (V3: 1e-4) */
    int skip_nonfinite;   /* skip a step whose loss or gradients are NaN/Inf instead of stopping */
    int val_every;        /* validate every N steps and after the last (0: never) */
    int val_batches;      /* micro-batches per validation (capped by the validation set) */
    int save_every;       /* checkpoint every N steps (0: only at the end) */
    int log_every;        /* print a line every N steps (the metrics file gets every step) */
    double peak_flops;    /* FLOP/s behind MFU; 0: no MFU */
    int no_zero;          /* keep the whole optimizer state on every rank of a group (--no-zero); default:
                             ZeRO-1 wherever a group has several ranks (train/zero.h) */
    int profile;          /* --profile: time the steps (ops/prof.h; the first of a run is left out when
                             the run has more), the tool reports it (train/profile.h) */
    uint64_t seed;
} ds_train_opts;

void ds_train_opts_defaults(ds_train_opts *o); /* V3's optimizer and clipping; schedules left empty */

typedef struct ds_trainer ds_trainer;

/* Data parallelism: `size` replicas each run the micro-batches i with i % size == rank of every step
 * (all ranks read the same rows; the sources are deterministic), then sum gradients, loss terms and
 * expert counts, so every replica applies the same update and stays identical. The callbacks sum in
 * place and must give every rank the same result (a fixed reduction order). lib/dist provides them
 * over MPI; NULL or size 1 = one process. */
typedef struct {
    int rank, size;
    int (*allreduce_f32)(void *ctx, float *x, size_t n);
    int (*allreduce_f64)(void *ctx, double *x, size_t n);
    int (*allreduce_i64)(void *ctx, int64_t *x, size_t n);
    /* ZeRO-1 (optional: without them the optimizer stays replicated). Slice r of an array of n is
     * [n*r/size, n*(r+1)/size) (dist/dp.h ds_dp_slice). reduce_scatter: rank r's slice of x ends with
     * the sums (the same bits allreduce_f32 gives it); allgather: every slice from its rank to all. */
    int (*reduce_scatter_f32)(void *ctx, float *x, size_t n);
    int (*allgather_f32)(void *ctx, float *x, size_t n);
    void *ctx;
    int device; /* the float callbacks take the net's backend memory (a GPU's: train/devcomm.h); 0: host memory */
} ds_train_comm;

/* A parameter group: a contiguous range of the net's params/grads and the ranks that hold the same
 * values of it (they sum its gradients, and under ZeRO-1 share its optimizer state). The groups of a
 * net tile its buffer in order. Default: one group, the whole buffer over hooks.comm (the data-parallel
 * ranks). Expert parallelism puts the rank's experts in a group of their own over expert_dp; a pipeline
 * stage's tensors form its groups over the stage's data-parallel ranks. */
typedef struct {
    size_t offset, numel;
    const ds_train_comm *comm; /* NULL: this rank alone */
} ds_train_group;

typedef struct {
    /* Write a checkpoint of the current state (final = after the last step or on a signal). */
    int (*save)(void *ctx, ds_trainer *t, int final);
    void *ctx;
    void *metrics;                 /* ds_metrics* (core/jsonw.h) or NULL */
    volatile sig_atomic_t *stop;   /* non-zero: finish the step, save, return (agreed across ranks) */
    const ds_train_comm *comm;     /* data parallel group, or NULL; only rank 0 prints */
    const ds_train_comm *pp;       /* pipeline stages of this replica (net->run_micro), or NULL: each holds
                                      its layers' share of the loss values, summed over it (the gradients
                                      are summed by the parameter groups, over the ranks holding them) */
    /* Optional, for tools with numbers of their own (ds-rl): step_record adds keys to each step's
     * metrics record after the trainer's; after_step runs once the record is written and before
     * any checkpoint of that step (evaluations, the tool's own log line; an error stops the run). */
    void (*step_record)(void *ctx, const ds_trainer *t, ds_jsonw *w);
    /* Optional: on every rank once a step's micro-batches are done, before any reduction or validation
     * (expert-parallel traffic of the step; collectives allowed: every rank calls it). */
    int (*micro_done)(void *ctx, ds_trainer *t);
    int (*after_step)(void *ctx, ds_trainer *t);
    void *step_ctx;
} ds_train_hooks;

/* Why ds_trainer_run returned 0. */
typedef enum { DS_TRAIN_DONE = 0, DS_TRAIN_STOPPED = 1 } ds_train_end;

/* Neither net, sources nor hooks are owned; they must outlive the trainer. val may be NULL. */
int ds_trainer_create(ds_trainer **out, const ds_train_opts *o, ds_train_net *net, ds_data_source *train,
                      ds_data_source *val, const ds_loss_hook *loss, const ds_train_hooks *hooks);
void ds_trainer_free(ds_trainer *t);

/* Join a data-parallel group after creation (the hooks are otherwise fixed at create): the default
 * parameter group then spans it. Before the first step (the optimizer state starts afresh). */
int ds_trainer_set_comm(ds_trainer *t, const ds_train_comm *comm);
/* Replace the parameter groups (see ds_train_group; copied). world: the ranks over which the gradient
 * norm's shares are summed, every rank of the run (NULL: hooks.comm). Before the first step and before
 * a resume loads the moments (the optimizer state starts afresh). */
int ds_trainer_set_groups(ds_trainer *t, const ds_train_group *g, int n, const ds_train_comm *world);

/* Train until total_steps (or a stop). Returns 0 (see *end), DS_EDIVERGED on NaN/Inf (nothing saved
 * for the bad step; the last checkpoint stays), or DS_ERR. */
int ds_trainer_run(ds_trainer *t, ds_train_end *end);

/* One optimizer step (used by run; exposed for tests and custom loops). */
int ds_trainer_step(ds_trainer *t);
/* Validation loss on up to val_batches micro-batches (NaN without a validation source). */
int ds_trainer_validate(ds_trainer *t, double *loss);

/* State. */
int64_t ds_trainer_steps_done(const ds_trainer *t);
double ds_trainer_tokens_seen(const ds_trainer *t);
/* The optimizer of the first parameter group (in a one-process run: of the whole buffer). */
const ds_optim *ds_trainer_optimizer(const ds_trainer *t);
ds_optim *ds_trainer_optimizer_mut(ds_trainer *t);
/* Every group's optimizer, by global element range (train/zero.h). */
struct ds_zero *ds_trainer_zero(ds_trainer *t);
const ds_train_opts *ds_trainer_opts(const ds_trainer *t);
/* trainer_state.json: step, tokens, seed, data cursor, schedule crossings, optimizer step count,
 * expert biases, loss history for plots. Written as one JSON object (pretty enough to read). */
int ds_trainer_state_json(const ds_trainer *t, char **out);
/* Restore from trainer_state.json text (the model weights and optimizer moments are loaded
 * separately, by the checkpoint code). */
int ds_trainer_state_load(ds_trainer *t, const char *json, size_t len, const char *where);
/* The seed a trainer_state.json records (rng.seed), so a resumed run given no --seed continues it. */
int ds_trainer_state_seed(const char *json, size_t len, const char *where, uint64_t *seed);

/* The last step's numbers (for tools and tests). */
typedef struct {
    int64_t step; /* 1-based: steps completed */
    double terms[DS_LOSS_MAX_TERMS];
    double loss_bal, lr, grad_norm, gamma, lambda, tokens, ms, cpu_ms, tok_s, mfu, val_loss;
    int batch, skipped;
} ds_step_report;
const ds_step_report *ds_trainer_last(const ds_trainer *t);
/* "1m02s elapsed, ETA 3m10s": since this process's ds_trainer_run began, and the remaining steps at
 * the average pace so far (for step lines). */
void ds_trainer_pace(const ds_trainer *t, char *buf, size_t n);

/* Draw the loss curves seen so far (train loss, MTP loss, validation loss against step). */
int ds_trainer_plot(const ds_trainer *t, const char *png_path, const char *title);

/* A number in its shortest round-trip form (null when not finite), for metrics records. */
void ds_train_knum(ds_jsonw *w, const char *key, double v);

/* SIGINT/SIGTERM set the returned flag to the signal number (a second signal kills at once). */
volatile sig_atomic_t *ds_train_catch_signals(void);

#endif
