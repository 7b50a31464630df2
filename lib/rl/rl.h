/* rl.h — one GRPO run: rollouts with the generation engine, rewards, advantages, and the update
 * through the shared trainer.
 *
 * Owns: the rollout loop and everything the trainer needs from RL, as the trainer's own interfaces:
 *   - a data source ("rollouts", train/data.h): each rollout batch takes the next P prompts (passes
 *     over the prompt set, reshuffled per pass), samples G completions of each with the decode engine
 *     (lib/infer: batched, latent KV cache, Philox-seeded per (seed, sequence, step)) reading the
 *     policy's own weights, keeps the engine's log-probabilities as pi_old, decodes and scores the
 *     completions (reward.h), normalises rewards within each group (grpo.h), scores every completion
 *     token under the frozen reference, and hands the rows (prompt + completion, targets only on
 *     completion tokens) to the trainer for mu epochs of K optimizer steps each;
 *   - a loss hook: GRPO's per-token coefficients (grpo.h) for the rows of each micro-batch;
 *   - step hooks: the RL numbers in each step's metrics record (names as TRL/verl; docs/METRICS.md
 *     "ds-rl"), a log line per step, held-out evaluation (greedy decoding, mean reward and accuracy),
 *     and the reward/accuracy history for the plot;
 *   - the source's position in trainer_state.json (rollout batches drawn, rows served, and the
 *     current rollout batch itself when a checkpoint falls inside it), so a resumed run continues
 *     bit for bit.
 * The policy is one ds_model: the engine and the trainer share its weights, so every rollout batch
 * is sampled from the weights of the moment. The reference is a second, frozen ds_model (a copy of
 * the starting weights; memory is a second copy of the parameters).
 */
#ifndef DS_RL_RL_H
#define DS_RL_RL_H

#include <stdint.h>
#include <stdio.h>

#include "core/jsonw.h"
#include "dist/comm.h"
#include "infer/sampler.h"
#include "model/model.h"
#include "rl/grpo.h"
#include "rl/prompts.h"
#include "rl/reward.h"
#include "tok/tokenizer.h"
#include "train/data.h"
#include "train/eprun.h"
#include "train/trainer.h"

typedef struct {
    int group;             /* G: completions per prompt, >= 2 */
    int prompts_per_batch; /* P: prompts per rollout batch (P*G rows) */
    int epochs;            /* mu: optimizer passes over each rollout batch */
    int mini_batches;      /* K: optimizer steps per pass (each of P*G/K rows) */
    int micro_batch;       /* rows per forward/backward (the reference's forward too) */
    int max_new;           /* new tokens per completion */
    ds_sampling sampling;  /* temperature, top-k, top-p and the sampling seed */
    int gen_batch;         /* sequences the engine decodes together (0: all of a batch, up to 64) */
    ds_grpo_opts loss;
    int scale_std;         /* divide advantages by the group's std (GRPO) — 0: Dr. GRPO */
    int mask_truncated;    /* completions cut by max_new take no part in the loss (DAPO) */
    int eval_every;        /* evaluate every N steps and after the last (0: only then) */
    int eval_samples;      /* also K sampled completions per eval prompt (0: greedy only) */
    double eval_temperature; /* their temperature (0: the rollouts') */
    int log_every;         /* a log line every N steps (0: none) */
    uint64_t seed;         /* prompt order */
    /* Several ranks (mpirun; all NULL in one process). Every rank draws and scores the whole rollout
     * batch (the same completions: the same weights and Philox draws), and the trainer gives each rank
     * its micro-batches. comm: the data-parallel ranks; the reference's forward is split over them (a
     * micro-batch per rank in turn, the log-probs then summed to every rank) and the update's statistics
     * (KL, entropy, clip counts, ratios) are summed over them (ds_rl_micro_done). */
    const ds_comm *comm;
    /* The model the rollout engine decodes with, when the policy cannot (expert parallelism: it holds
     * only its experts; rl/rlep.h keeps a whole copy); NULL: the policy itself. sync_rollout (collective)
     * brings its weights up to the policy's; it is called before a batch or an evaluation is drawn when an
     * optimizer step has happened since the last call. */
    ds_model *rollout;
    int (*sync_rollout)(void *ctx);
    void *sync_ctx;
} ds_rl_opts;

void ds_rl_opts_defaults(ds_rl_opts *o);

/* Rows of seq_len tokens hold the longest prompt of either set plus max_new. */
int ds_rl_seq_len(const ds_rl_prompts *train, const ds_rl_prompts *eval, int max_new);

typedef struct ds_rl ds_rl;

/* policy: the model being trained (created with want_entropy for the entropy metric). ref: the frozen
 * reference (NULL when loss.beta == 0). tok may be NULL when no reward needs text. eval may be NULL.
 * Nothing is owned; all must outlive the run. */
int ds_rl_create(ds_rl **out, const ds_rl_opts *o, ds_model *policy, ds_model *ref, const ds_tokenizer *tok,
                 const ds_rl_prompts *train, const ds_rl_prompts *eval, ds_reward **rewards, int n_rewards);
void ds_rl_free(ds_rl *r);

/* A frozen reference: a copy of policy's current weights (from NULL), or the weights of a checkpoint
 * (io/checkpoint.h: directory or .safetensors; every tensor's shape is checked against the policy's
 * config), sized for micro_batch rows of seq_len. ep (NULL: none): with expert parallelism the reference
 * holds this rank's experts only, like the policy, and its forward exchanges tokens over the EP group
 * (every rank of the group must run ds_rl's reference pass together: opts.comm). */
int ds_rl_reference(ds_model **out, ds_model *policy, const char *from, int micro_batch, int seq_len, const ds_ep_run *ep);

/* Print the run's shape (rollouts, update, rewards) on stderr and add it to a configuration record. */
void ds_rl_describe(const ds_rl *r, ds_jsonw *w);

/* Write every completion of each rollout batch as one JSON line to f ({"batch", "index", "prompt_line",
 * "completion", "finish_reason", "tokens", "reward", one key per reward, "advantage"}); NULL: none. */
void ds_rl_set_samples(ds_rl *r, FILE *f, const char *where);

/* The trainer's pieces (owned by r). */
ds_data_source *ds_rl_source(ds_rl *r);
const ds_loss_hook *ds_rl_loss(const ds_rl *r);
int64_t ds_rl_rows_per_step(const ds_rl *r);
/* Set the trainer's hooks (step_record, after_step, step_ctx) and where eval records go (may be NULL). */
void ds_rl_hooks(ds_rl *r, ds_train_hooks *h, ds_metrics *metrics, int64_t total_steps);
/* With opts.comm: after a step's micro-batches, on every rank (the trainer's micro_done hook, ctx = r):
 * the update's statistics summed over the ranks, so the record and log line are the whole step's. */
int ds_rl_micro_done(void *ctx, ds_trainer *t);

/* Held-out evaluation: a greedy completion of every eval prompt, and with eval_samples = K also K sampled
 * ones (rollout settings, eval_temperature; draws fixed across evaluations), scored with the run's rewards. */
typedef struct {
    int n;                   /* eval prompts */
    double reward;           /* greedy: mean combined reward */
    double accuracy;         /* greedy: mean of the answer reward (NaN when the run has none) */
    double sampled_reward, sampled_accuracy; /* the same over the K samples per prompt (NaN without) */
    double mean_length;      /* greedy completion tokens */
    double seconds;
} ds_rl_eval;
int ds_rl_evaluate(ds_rl *r, ds_rl_eval *out);
/* Evaluate, print, record {"step": step, "eval/...": ...} in the metrics file, and keep it for the plot. */
int ds_rl_evaluate_at(ds_rl *r, int64_t step);

/* Reward (rollouts) and evaluation curves against the step. */
int ds_rl_plot(const ds_rl *r, const char *png_path, const char *title);

/* The last rollout batch's numbers and the last update's, for tools and tests. */
typedef struct {
    int64_t batches;           /* rollout batches drawn so far */
    double reward_mean, reward_std, frac_zero_std, mean_length, clipped_ratio;
    double logp_diff_max;      /* |engine log p - training forward log p| at the batch's first update */
    ds_grpo_stats update;      /* the last optimizer step */
} ds_rl_report;
const ds_rl_report *ds_rl_last(const ds_rl *r);

/* 1 when the last error came from drawing a rollout batch (generation, decoding or a reward, e.g. a
 * failing reward program): no update had begun, so the model is exactly that of the last completed
 * step and can be saved and resumed from. */
int ds_rl_rollout_failed(const ds_rl *r);

#endif
