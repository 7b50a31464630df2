/* session.h — everything around the training loop that every training tool does the same way.
 *
 * Owns: building the model from a config or a checkpoint (fresh init with a seed, or loaded weights),
 * the tokenizer that travels with it, training checkpoints (a Hugging Face directory plus
 * trainer_state.json and the optimizer state (train/optstate.h), replaced atomically), resuming from one, the metrics
 * file (first record = the resolved configuration; records past the resumed step dropped so the file
 * reads as one run), the loss plot, signals, and mapping the outcome to the tool's exit code.
 * ds-pretrain, ds-extend-ctx, ds-sft and ds-rl differ only in their data source and loss hook.
 */
#ifndef DS_TRAIN_SESSION_H
#define DS_TRAIN_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "core/file.h"
#include "core/jsonw.h"
#include "dist/comm.h"
#include "io/config.h"
#include "model/model.h"
#include "tok/chat.h"
#include "dist/layout.h"
#include "train/emarun.h"
#include "train/eprun.h"
#include "train/devcomm.h"
#include "train/distckpt.h"
#include "train/pipe.h"
#include "train/pipemem.h"
#include "train/trainer.h"

typedef struct {
    const char *tool;           /* "ds-pretrain": names the run in records and plots */
    const char *config_path;    /* a fresh model from this config.json ... */
    const char *model_path;     /* ... or weights from this checkpoint directory */
    const char *resume;         /* continue the run saved here: a checkpoint directory, or a directory
                                   holding several (the newest complete one is taken) */
    const char *out_dir;        /* checkpoints go here (io/checkpoint.h ds_ckpt_check_out decides whether
                                   it may be written; the run holds its lock, core/file.h ds_dir_lock) */
    int force;                  /* --force: replace a checkpoint already in out_dir, or the input itself */
    const char *tokenizer_path; /* tokenizer.json to embed (NULL: the checkpoint's, if any) */
    const char *metrics_path;   /* JSONL, or NULL */
    const char *plot_path;      /* PNG, or NULL */
    const char *device;         /* "cpu" | "cuda" */
    const char *comm;           /* --comm: "nccl" | "mpi" | "auto" (NULL: auto), data parallelism on a GPU (train/devcomm.h) */
    int fp8;                    /* every block Linear's GEMMs in FP8 (fp8/linear.h; the CPU only); the
                                   embedding, head, router, eh_proj, norms and attention stay fp32 */
    int bf16;                   /* V3's bf16 baseline: bf16 storage, fp32 accumulation (ops/bf16.h; the CPU only) */
    int fp8_hopper, fp8_promote; /* --fp8-accum hopper, --fp8-promote: Hopper's accumulation (fp8/gemm.h) */
    int fp8_attn_out_f32;       /* --fp8-attn-out f32: keep the attention output in float32 rather than V3's
                                   E5M6 (model.h attn_out_e5m6), for comparison */
    /* with fp8, V3's MoE FP8 cache and FP8 dispatch are on (model.h moe_cache_fp8, ...); these turn them off
     * (--fp8-moe-cache fp32, --fp8-dispatch fp32) */
    int fp8_moe_cache_f32, fp8_dispatch_f32;
    double init_std;            /* > 0: overrides the config's ds_init_std for a fresh model */
    double balance_alpha;       /* sequence-wise balance loss weight per micro-batch */
    int micro_batch, seq_len;
    uint64_t seed;
    const char *seed_note;      /* how the seed was chosen when --seed was not given ("random: ..."), or NULL */
    uint64_t *seed_share;       /* in a data-parallel run every rank takes rank 0's seed and it is
                                   written back here (the tool draws its data order from it); or NULL */
    int want_entropy;           /* forward also computes per-token entropy (RL diagnostics) */
    double ema;                 /* --ema DECAY: keep an EMA of the weights (train/ema.h), saved as a model
                                   checkpoint in <checkpoint>/ema; 0: none */
    int dp;                     /* data-parallel ranks: 0 = the MPI world when started by mpirun, else 1;
                                   rank 0 alone writes checkpoints, metrics and plots */
    int ep;                     /* expert-parallel ranks per group (train/eprun.h; 0 or 1: none) */
    int ranks_per_node;         /* consecutive ranks per node for node-limited routing (0: the real hosts) */
    int two_hop;                /* --ep's dispatch/combine in two hops (dist/ep.h DS_EP_TWO_HOP) */
    int profile;                /* --profile: the model's ops are timed (ops/prof.h), reported after the run */
    int pp;                     /* pipeline stages (0, 1: none): world = PP x DP (train/pipe.h) */
    const char *schedule;       /* "1f1b" (NULL), "zb1p", "dualpipe" */
    const char *stages;         /* layers per stage ("0-3,4-7"), or NULL: by estimated cost */
    int pp_whole;               /* --pp: every rank keeps the whole model (a tool that runs it whole, ds-rl's
                                   rollouts); 0: a rank holds only its stages' tensors (train/pipemem.h) */
    /* Called with the loaded config before the model is built (ds-extend-ctx sets rope_scaling);
     * NULL: the config as loaded. A non-zero return stops with that status. */
    int (*edit_config)(void *ctx, ds_config *cfg);
    void *edit_ctx;
    /* Per-step hooks handed to the trainer (trainer.h ds_train_hooks); may be set in s->o between
     * ds_session_open and ds_session_start, when what they need exists only after the model does. */
    void (*step_record)(void *ctx, const ds_trainer *t, ds_jsonw *w);
    int (*after_step)(void *ctx, ds_trainer *t);
    int (*micro_done)(void *ctx, ds_trainer *t); /* on every rank once a step's micro-batches ran (trainer.h) */
    void *step_ctx;
} ds_session_opts;

typedef struct {
    ds_session_opts o;
    ds_config cfg;
    int have_cfg;
    ds_model *model;
    ds_train_net net;
    char *tokenizer_json; /* NULL when there is none */
    size_t tokenizer_len;
    char *tokenizer_config; /* the loaded checkpoint's tokenizer_config.json (NULL: none) */
    size_t tokenizer_config_len;
    /* The chat template checkpoints carry (tokenizer_config.json's chat_template, tok/hfconfig.h): set by
     * the tools that train on conversations; NULL: the loaded checkpoint's, else the built-in one. */
    const ds_chat_template *chat;
    ds_metrics metrics;
    int have_metrics;
    ds_trainer *trainer;
    int64_t resumed_step;     /* -1: a fresh run */
    char resume_dir[4096];    /* the checkpoint actually resumed from */
    volatile sig_atomic_t *stop;
    ds_comm comm;             /* the data-parallel group (have_comm) */
    int have_comm;
    int agree_pending;        /* open succeeded everywhere; the ranks next agree at the end of start
                                 (or, for a tool that fails before it, in ds_session_agree) */
    int failed_alone;         /* this rank failed in the training loop: leave MPI without finalizing */
    ds_train_comm tcomm;      /* the data-parallel replicas (with --pp: this stage's, layout.dp_comm) */
    ds_devcomm devcomm;       /* --device cuda with a group: its gradient reductions (have_devcomm) */
    int have_devcomm;
    ds_layout layout;         /* with --pp (have_layout) */
    int have_layout;
    ds_train_comm pcomm;      /* with --pp: this replica's stages (layout.pp_comm) */
    ds_pipe_net *pipe;        /* with --pp */
    ds_pipe_kind pipe_kind;
    int pipe_partial;         /* with --pp: this rank's model holds only its chunks' tensors */
    ds_pipe_groups pgroups;   /* with --pp: the parameter groups over the ranks holding the same tensors */
    ds_distckpt_full full;    /* the one-process model gathered for a checkpoint (--ep, --pp) */
    ds_ep_run ep;             /* --ep: the layout, the experts' parameter group, traffic metrics */
    ds_ema_run ema;           /* --ema: the average of what this rank keeps (train/emarun.h) */
    ds_dir_lock out_lock;     /* held by the process that writes out_dir (rank 0) for the whole run */
} ds_session;

/* This process's rank in the data-parallel group (0 without one): only rank 0 talks. */
static inline int ds_session_rank(const ds_session *s) { return s->have_comm ? s->comm.rank : 0; }

/* Config, model (initialised or loaded), tokenizer. After this, s->cfg and s->tokenizer_json are set.
 * Under mpirun (or with dp > 1) the ranks join first, then agree on the outcome: a failure is
 * reported by the lowest rank that met it (the others' errors are ds_err_silenced). */
int ds_session_open(ds_session *s, const ds_session_opts *o);
/* For a tool that stops between ds_session_open and the end of ds_session_start (a failure of its
 * own, or nothing to train): the agreement the other ranks make at the end of start. Returns the
 * agreed status (rc when there is no group or nothing pending). */
int ds_session_agree(ds_session *s, int rc);
/* Embed this tokenizer.json (checked to parse and to fit the model's vocabulary). */
int ds_session_set_tokenizer(ds_session *s, const char *path);
/* Id of a token in the embedded tokenizer (-1 when there is no tokenizer or no such token). */
int64_t ds_session_token_id(const ds_session *s, const char *text);

/* "seed    N (how it was chosen)": with the resolved configuration, so a drawn seed is seen (start
 * prints it; a tool that evaluates without training prints it itself). */
void ds_session_log_seed(const ds_session *s);

/* Create the trainer over the given sources, restore the state when resuming, open the metrics
 * file and write the configuration record (config_record: a complete JSON object, or NULL). */
int ds_session_start(ds_session *s, const ds_train_opts *to, ds_data_source *train, ds_data_source *val,
                     const ds_loss_hook *loss, const char *config_record);
/* Run to the end (and draw the plot). Returns 0, DS_EDIVERGED or DS_ERR; *stopped_by is the signal
 * that stopped the run early (0: it ran to --steps). Tools exit with 128 + that signal. */
int ds_session_run(ds_session *s, int *stopped_by);
void ds_session_close(ds_session *s);

/* Write a complete training checkpoint of the trainer's current state into dir through
 * io/checkpoint.h (replaced atomically: a reader sees the old or the new one, never a mixture; an
 * existing directory is replaced only when it is a checkpoint or empty). Weights in fp32. Called by
 * every rank: with a sharded optimizer (ZeRO-1) each writes its shard into rank 0's temporary
 * directory and they agree on the outcome; otherwise rank 0 writes alone. */
int ds_session_save(ds_session *s, const char *dir);

#endif
