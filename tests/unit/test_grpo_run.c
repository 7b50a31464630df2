/* GRPO end to end on a tiny network (tests/unit/model_fixture.h), without a tokenizer: a token-level
 * reward that the policy can learn within a bounded number of steps; the engine's log-probabilities
 * equal the training forward's before the first update (ratio 1, KL 0 against the reference copy);
 * a run checkpointed inside a rollout batch (mu = 2 epochs, K = 2 mini-batches) and resumed continues
 * bit for bit; a failing reward leaves the model untouched. */
#include "tap.h"

#include "core/err.h"
#include "core/log.h"
#include "core/threads.h"
#include "model_fixture.h"
#include "rl/rl.h"
#include "train/net.h"

#include <jansson.h>

enum { TARGET = 42 };

/* reward: the share of the completion's tokens that are TARGET */
static int score_target(ds_reward *r, const ds_reward_input *in, int n, double *out) {
    for (int i = 0; i < n; i++) {
        int hits = 0;
        for (int j = 0; j < in[i].n_tokens; j++) hits += in[i].tokens[j] == TARGET;
        out[i] = (double)hits / in[i].max_new;
    }
    return 0;
}

static int fail_after; /* a reward that fails on its n-th call (0: never) */
static int calls;
static int score_flaky(ds_reward *r, const ds_reward_input *in, int n, double *out) {
    if (fail_after && ++calls >= fail_after) return ds_fail(DS_ERR, "reward program: exited with status 1: flaky");
    return score_target(r, in, n, out);
}

static void free_reward(ds_reward *r) { (void)r; }

static ds_reward target_reward = {.name = "target", .weight = 1, .score = score_target, .free = free_reward};
static ds_reward flaky_reward = {.name = "target", .weight = 1, .score = score_flaky, .free = free_reward};

typedef struct {
    ds_config cfg;
    ds_model *policy, *ref;
    ds_rl_prompts prompts;
    ds_rl *rl;
    ds_train_net net;
    ds_trainer *trainer;
    ds_reward *rewards[1];
} run;

static int run_open(run *u, const ds_rl_opts *o, ds_reward *reward, int64_t steps, double lr) {
    memset(u, 0, sizeof *u);
    fixture_tiny(&u->cfg);
    static const int32_t p[4][4] = {{0, 5, 9, 17}, {0, 7, 3, 0}, {0, 30, 31, 0}, {0, 11, 12, 13}};
    static const int np[4] = {4, 3, 3, 4};
    for (int i = 0; i < 4; i++) DS_TRY(ds_rl_prompts_add_ids(&u->prompts, p[i], np[i], NULL));
    const int T = ds_rl_seq_len(&u->prompts, NULL, o->max_new);
    ds_model_opts mo = {.max_batch = o->micro_batch, .max_seq = T, .train = 1, .recompute = 1, .want_entropy = 1};
    DS_TRY(ds_model_create(&u->policy, &u->cfg, &mo));
    DS_TRY(ds_model_init(u->policy, 5));
    if (o->loss.beta > 0) DS_TRY(ds_rl_reference(&u->ref, u->policy, NULL, o->micro_batch, T, NULL));
    u->rewards[0] = reward;
    DS_TRY(ds_rl_create(&u->rl, o, u->policy, u->ref, NULL, &u->prompts, NULL, u->rewards, 1));
    DS_TRY(ds_train_net_from_model(&u->net, u->policy, T));
    ds_train_opts to;
    ds_train_opts_defaults(&to);
    to.total_steps = steps, to.seq_len = T, to.micro_batch = o->micro_batch, to.seed = 3, to.log_every = 0;
    to.adamw.weight_decay = 0;
    char rows[32], lrs[32];
    snprintf(rows, sizeof rows, "%lld", (long long)ds_rl_rows_per_step(u->rl));
    snprintf(lrs, sizeof lrs, "%g", lr);
    DS_TRY(ds_sched_parse(&to.lr, lrs, lr, steps, "lr"));
    DS_TRY(ds_sched_parse(&to.batch, rows, 0, steps, "batch"));
    DS_TRY(ds_sched_parse(&to.gamma, "0", 0, steps, "gamma"));
    DS_TRY(ds_sched_parse(&to.lambda, "0", 0, steps, "lambda"));
    ds_train_hooks h = {0};
    ds_rl_hooks(u->rl, &h, NULL, steps);
    return ds_trainer_create(&u->trainer, &to, &u->net, ds_rl_source(u->rl), NULL, ds_rl_loss(u->rl), &h);
}

static void run_close(run *u) {
    ds_trainer_free(u->trainer);
    ds_train_net_release(&u->net);
    ds_rl_free(u->rl);
    ds_model_free(u->ref);
    ds_model_free(u->policy);
    ds_rl_prompts_free(&u->prompts);
    memset(u, 0, sizeof *u);
}

static ds_rl_opts small_opts(void) {
    ds_rl_opts o;
    ds_rl_opts_defaults(&o);
    o.group = 8, o.prompts_per_batch = 2, o.micro_batch = 8, o.max_new = 4;
    o.sampling.seed = 7, o.seed = 9, o.log_every = 0;
    return o;
}

TEST(learns_a_token_reward_within_bounded_steps) {
    ds_rl_opts o = small_opts();
    run u;
    int rc = run_open(&u, &o, &target_reward, 40, 2e-2);
    CHECK(rc == 0, "open: %s", ds_errmsg());
    if (rc) return;
    double first = NAN, best_late = 0;
    int ok = 1;
    for (int s = 1; s <= 40 && ok; s++) {
        ok = ds_trainer_step(u.trainer) == 0;
        const ds_rl_report *rep = ds_rl_last(u.rl);
        if (s == 1) {
            first = rep->reward_mean;
            /* before any update the training forward recomputes the sampling log-probs */
            CHECK(rep->logp_diff_max < 2e-5, "engine vs training log p at the first update: %.3g", rep->logp_diff_max);
            CHECK(rep->update.tokens > 0 && rep->update.clip_low == 0 && rep->update.clip_high == 0,
                  "no clipping at ratio 1 (%lld tokens)", (long long)rep->update.tokens);
            CHECK(fabs(rep->update.ratio_min - 1) < 2e-5 && fabs(rep->update.ratio_max - 1) < 2e-5, "ratio in [%.7f, %.7f]",
                  rep->update.ratio_min, rep->update.ratio_max);
            CHECK(rep->update.kl_sum / rep->update.tokens < 1e-9, "KL to the reference copy is 0: %.3g",
                  rep->update.kl_sum / rep->update.tokens);
        }
        if (s > 30 && rep->reward_mean > best_late) best_late = rep->reward_mean;
    }
    CHECK(ok, "40 steps: %s", ds_errmsg());
    /* a random 64-token policy emits the target about 1 time in 64 */
    CHECK(first < 0.1, "initial reward %.3f", first);
    CHECK(best_late > 0.6, "reward after 30-40 steps: %.3f (from %.3f)", best_late, first);
    CHECK(ds_rl_last(u.rl)->batches == 40, "one rollout batch per step: %lld", (long long)ds_rl_last(u.rl)->batches);
    run_close(&u);
}

/* Everything a resumed run needs: trainer state (with the source's), weights, expert biases, moments. */
typedef struct {
    char *state;
    float *params, *m, *v;
    size_t n;
} snapshot;

static void take(snapshot *sn, run *u) {
    ds_trainer_state_json(u->trainer, &sn->state);
    sn->n = ds_model_num_params(u->policy);
    sn->params = malloc(sn->n * sizeof(float));
    sn->m = malloc(sn->n * sizeof(float));
    sn->v = malloc(sn->n * sizeof(float));
    memcpy(sn->params, ds_model_params(u->policy), sn->n * sizeof(float));
    ds_optim_get(ds_trainer_optimizer(u->trainer), 0, 0, sn->n, sn->m);
    ds_optim_get(ds_trainer_optimizer(u->trainer), 1, 0, sn->n, sn->v);
}

static int restore(const snapshot *sn, run *u) {
    memcpy(ds_model_params(u->policy), sn->params, sn->n * sizeof(float));
    ds_optim_set(ds_trainer_optimizer_mut(u->trainer), 0, 0, sn->n, sn->m);
    ds_optim_set(ds_trainer_optimizer_mut(u->trainer), 1, 0, sn->n, sn->v);
    return ds_trainer_state_load(u->trainer, sn->state, strlen(sn->state), "snapshot");
}

TEST(resume_inside_a_rollout_batch_is_bit_identical) {
    ds_rl_opts o = small_opts();
    o.epochs = 2, o.mini_batches = 2; /* 4 steps per rollout batch; stop after step 3 */
    run a, b;
    int rc = run_open(&a, &o, &target_reward, 8, 1e-2);
    CHECK(rc == 0, "open: %s", ds_errmsg());
    if (rc) return;
    double losses[8];
    for (int s = 0; s < 8 && !rc; s++) {
        rc = ds_trainer_step(a.trainer);
        losses[s] = ds_trainer_last(a.trainer)->terms[0];
    }
    CHECK(rc == 0 && ds_rl_last(a.rl)->batches == 2, "8 steps = 2 rollout batches (%lld): %s",
          (long long)ds_rl_last(a.rl)->batches, ds_errmsg());

    rc = run_open(&b, &o, &target_reward, 8, 1e-2);
    for (int s = 0; s < 3 && !rc; s++) rc = ds_trainer_step(b.trainer);
    snapshot sn = {0};
    take(&sn, &b);
    CHECK(strstr(sn.state, "\"rollouts\"") != NULL, "a checkpoint inside a batch carries the rollouts");
    run_close(&b);
    /* a fresh process: new model (other init), new engine and trainer, then the snapshot */
    ds_rl_opts o2 = o;
    rc = run_open(&b, &o2, &target_reward, 8, 1e-2);
    if (!rc) rc = restore(&sn, &b);
    CHECK(rc == 0, "restore: %s", ds_errmsg());
    int same_loss = 1;
    for (int s = 3; s < 8 && !rc; s++) {
        rc = ds_trainer_step(b.trainer);
        same_loss &= ds_trainer_last(b.trainer)->terms[0] == losses[s];
    }
    CHECK(rc == 0 && same_loss, "steps 4-8 have the same losses: %s", ds_errmsg());
    CHECK(!memcmp(ds_model_params(a.policy), ds_model_params(b.policy), sn.n * sizeof(float)), "same weights after step 8");
    free(sn.state), free(sn.params), free(sn.m), free(sn.v);
    run_close(&a);
    run_close(&b);
}

TEST(a_failing_reward_ends_the_step_before_any_update) {
    ds_rl_opts o = small_opts();
    run u;
    fail_after = 3, calls = 0;
    int rc = run_open(&u, &o, &flaky_reward, 10, 1e-2);
    CHECK(rc == 0, "open: %s", ds_errmsg());
    if (rc) return;
    rc = ds_trainer_step(u.trainer);
    if (!rc) rc = ds_trainer_step(u.trainer);
    const size_t n = ds_model_num_params(u.policy);
    float *before = malloc(n * sizeof *before);
    memcpy(before, ds_model_params(u.policy), n * sizeof *before);
    CHECK(rc == 0 && !ds_rl_rollout_failed(u.rl), "two good steps");
    rc = ds_trainer_step(u.trainer);
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), "rollout batch 3: reward program: exited with status 1"), "error: %s", ds_errmsg());
    CHECK(ds_rl_rollout_failed(u.rl), "marked as a rollout failure");
    CHECK(ds_trainer_steps_done(u.trainer) == 2, "still at step 2");
    CHECK(!memcmp(before, ds_model_params(u.policy), n * sizeof *before), "weights untouched");
    char *state;
    ds_trainer_state_json(u.trainer, &state);
    json_t *j = json_loads(state, 0, NULL);
    json_t *d = json_object_get(j, "data");
    CHECK(json_integer_value(json_object_get(d, "batches")) == 2 && !json_object_get(d, "rollouts"),
          "the state is that of step 2: %s", state);
    json_decref(j);
    free(state);
    free(before);
    fail_after = 0;
    run_close(&u);
}

TEST(options_are_checked) {
    ds_rl_opts o = small_opts();
    run u;
    o.group = 1;
    CHECK(run_open(&u, &o, &target_reward, 1, 1e-2) == DS_EUSAGE && strstr(ds_errmsg(), "--group 1"), "%s", ds_errmsg());
    run_close(&u);
    o = small_opts();
    o.mini_batches = 3;
    CHECK(run_open(&u, &o, &target_reward, 1, 1e-2) == DS_EUSAGE && strstr(ds_errmsg(), "--mini-batches 3"), "%s", ds_errmsg());
    run_close(&u);
    o = small_opts();
    o.micro_batch = 5;
    CHECK(run_open(&u, &o, &target_reward, 1, 1e-2) == DS_EUSAGE && strstr(ds_errmsg(), "--micro-batch 5"), "%s", ds_errmsg());
    run_close(&u);
}

int main(int argc, char **argv) {
    ds_log_set_level(DS_LOG_QUIET);
    ds_threads_set(1);
    return tap_run(argc, argv);
}
