/* toolopts.h — what the training tools (ds-pretrain, ds-sft, ds-extend-ctx, ds-rl) share on their
 * command line and around their run.
 *
 * Owns: the values of the options they have in common (ds_train_toolopts), those options' table
 * entries (name, type, metavar, range and common wording defined once; a tool may reword the help
 * and places each entry where its --help lists it), what they mean to the session and the trainer,
 * the schedules built from them, the shared head and tail of the configuration record (the first
 * metrics record), the usage checks every tool makes, and the outcome's exit code.
 * Each tool keeps only its own options, data source and report.
 */
#ifndef DS_TRAIN_TOOLOPTS_H
#define DS_TRAIN_TOOLOPTS_H

#include <stdint.h>

#include "core/cli.h"
#include "core/jsonw.h"
#include "dist/pipesched.h"
#include "train/session.h"
#include "train/trainer.h"

/* --fp8's wording, for a tool that adds to it */
#define DS_TRAIN_FP8_HELP                                                                                        \
    "every block Linear (attention projections, FFN, experts) in FP8: E4M3 with 1x128/128x128 scales, V3's recipe"

typedef struct {
    const char *model, *resume, *out, *tokenizer, *metrics, *plot, *device;
    const char *comm;        /* --comm auto|mpi|nccl: data parallelism on GPUs (train/devcomm.h) */
    const char *lr_schedule; /* NULL: the tool's default schedule */
    int64_t steps;
    uint64_t seed;         /* --seed; without it, the resumed run's or a random one (ds_train_tool_start) */
    const char *seed_note; /* where the seed came from when --seed was not given ("random", ...), or NULL */
    int batch, micro_batch, seq_len, threads, val_every, val_batches, save_every, log_every;
    const char *fp8_accum; /* --fp8-accum exact | hopper (fp8/gemm.h) */
    int fp8_promote;       /* --fp8-promote N_C (hopper: promotion to fp32 every N_C products, 0 = never) */
    const char *fp8_attn_out; /* --fp8-attn-out e5m6 | f32: the attention output's cache under --fp8 */
    int bf16;              /* --bf16: V3's bf16 baseline (ops/bf16.h) */
    const char *fp8_moe_cache, *fp8_dispatch; /* --fp8-moe-cache, --fp8-dispatch: fp8 | fp32 (model/moe_fp8.h) */
    int fp8, bf16_moments, no_zero, skip_nonfinite, quiet, verbose, force;
    int profile;           /* --profile: where the step's time goes (train/profile.h) */
    int ep, ranks_per_node, two_hop; /* --ep, --ranks-per-node, --two-hop (train/eprun.h) */
    double ema; /* --ema DECAY (0: none) */
    int pp;                   /* --pp: pipeline stages (1: none) */
    int pipe_micro_batches;   /* --micro-batches: pipeline micro-batches per step (0: --batch / --micro-batch) */
    const char *pipe_schedule; /* --schedule: 1f1b | zb1p | dualpipe */
    const char *stages;       /* --stages: decoder layers of each pipeline stage ("0-3,4-7"), or NULL */
    double lr, alpha, weight_decay, beta1, beta2, eps, clip, val_frac;
    ds_opt group_entries[64]; /* where the tables of ds_train_toolopts_group live */
    int n_group_entries;
} ds_train_toolopts;

/* V3's optimizer and clipping (as ds_train_opts_defaults), a line per step, on the CPU. */
void ds_train_toolopts_defaults(ds_train_toolopts *t);

/* The table entry of the shared option `name` ("threads", "weight-decay", ...; "clip-grad" is
 * "clip" under another name), writing into t. help: the tool's wording, or NULL for the shared one
 * (options whose meaning differs from tool to tool have none: help is then required). An unknown
 * name gives an entry the parser rejects when the table is used ("unknown shared option"). */
ds_opt ds_train_toolopt(ds_train_toolopts *t, const char *name, const char *help);
/* Several shared options in their shared wording, in the order named ("beta1 beta2 eps"): one
 * DS_OPT_GROUP entry whose table lives in t (so t must stay where it is while the table is used). */
ds_opt ds_train_toolopts_group(ds_train_toolopts *t, const char *names);

/* Right after ds_cli_parse returned -1: a stray argument is a usage error (returns 2), and so are
 * several processes started without an MPI world (ds_dist_check_launch); otherwise sets the log
 * level (--quiet, --verbose) and the threads (--threads), resolves the seed when --seed was not
 * given (the one --resume's trainer_state.json records, else a random one; the session prints it and
 * records it) and returns -1. */
int ds_train_tool_start(ds_train_toolopts *t, int argc, char **argv, int first);
/* -o OUT given and a directory (not '-'): 0, else a usage error (2). */
int ds_train_tool_check_out(const ds_train_toolopts *t);
/* --micro-batch 0 becomes --batch; --batch must be a multiple of it: 0, else a usage error (2). */
int ds_train_tool_check_batch(ds_train_toolopts *t);

/* --micro-batches N (training, before ds_train_tool_check_batch): a step is N micro-batches per
 * data-parallel replica, so --batch = N x --micro-batch x DP. dp: the replicas (0: the launcher's world /
 * --pp). --micro-batch given: --batch becomes the product, and a --batch given otherwise is a usage error
 * naming the numbers; not given: --micro-batch = --batch / (N x DP), which must divide. --batch-ramp is
 * refused. Returns 0 or 2. */
int ds_train_tool_micro_batches(ds_train_toolopts *t, int dp, int batch_ramp);

/* The pipeline options, after ds_train_tool_check_batch: --micro-batches 0 becomes --batch / --micro-batch,
 * --schedule becomes *kind, and what the schedule cannot run is a usage error (2) in one line: PP < 1,
 * DualPipe with odd PP or micro-batches odd or fewer than 2 PP, and more stages than the model's n_layers
 * (0: not known, not checked). 0 when fine. */
int ds_train_tool_check_pipeline(ds_train_toolopts *t, int n_layers, ds_pipe_kind *kind);

/* The session's options from the shared ones: the tool adds its own (config_path, edit_config...).
 * In a data-parallel run the session writes rank 0's seed back into t->seed (a drawn seed differs
 * from process to process), so t must outlive the session's open. */
ds_session_opts ds_train_toolopts_session(ds_train_toolopts *t, const char *tool);
/* The trainer's options from the shared ones (total_steps = --steps; val_every as given). */
void ds_train_toolopts_apply(const ds_train_toolopts *t, ds_train_opts *to);

/* The four schedules of a run, over to->total_steps. lr: a --lr-schedule spec, NULL for a constant
 * lr_peak; batch_ramp: a batch-size spec, NULL for a constant batch; gamma/lambda: specs, NULL for
 * "0". Each *_peak is what v3/cosine/wsd specs scale. Messages name --lr-schedule, --batch-ramp,
 * --gamma, --lambda. */
typedef struct {
    const char *lr, *batch_ramp, *gamma, *lambda;
    double lr_peak, gamma_peak, lambda_peak;
    int batch;
} ds_train_sched_specs;
int ds_train_schedules(const ds_train_sched_specs *sp, ds_train_opts *to);

/* The configuration record: {"config": {"tool", "version", "model", ["reference"], the parameter
 * counts, then the tool's keys; ds_train_record_schedules adds "lr", "batch", "gamma", "lambda"
 * (each also logged); ds_train_record_end adds "seed" (a decimal string: JSON readers such as jansson
 * cannot hold every 64-bit value as a number), "threads", "fp8" and, after --resume,
 * "resumed_from_step", closes it and returns it (malloc'd; NULL when out of memory). */
void ds_train_record_begin(ds_jsonw *w, const ds_session *s, const char *model, const char *reference);
void ds_train_record_schedules(ds_jsonw *w, const ds_train_opts *to);
char *ds_train_record_end(ds_jsonw *w, const ds_session *s);

/* Report a failure the tools' way (a DS_EUSAGE status as a usage error, its hint kept) and give the
 * exit code: 0 done, 1 error, 2 usage, 3 diverged, 128 + the signal that stopped the run
 * (stopped_by). s: the session (opened or zeroed): in a data-parallel run the ranks first agree on
 * a failure the tool met between ds_session_open and ds_session_start, so it is printed once. */
int ds_train_tool_exit(ds_session *s, int rc, int stopped_by);

#endif
