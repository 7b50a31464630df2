/* Unit tests for lib/train/trainer with a small stand-in network (a bigram table for the main head,
 * a skip-gram table for one MTP module, and a fixed, deliberately skewed top-2 router over 8 experts
 * whose selection the expert bias steers). The real network is exercised by tests/bats/ds-pretrain.bats.
 * Covered: loss falls on a learnable corpus; gradient accumulation equals one big batch; a run
 * stopped at step N and resumed gives the same losses and the same weight bytes as an uninterrupted
 * one; NaN stops with DS_EDIVERGED (or is skipped); the bias update balances the skewed router with
 * no gradient term; validation, batch ramp and metrics records; the trainer state refuses a foreign seed. */
#include "metrics_fixture.h"
#include "tap.h"

#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/rng.h"
#include "train/packed.h"
#include "train/trainer.h"
#include "train/zero.h"

#include <jansson.h>
#include <unistd.h>

enum { V = 16, NE = 8, TOPK = 2, MAXBT = 64 * 32 };

typedef struct {
    float *params, *grads;
    ds_param info[4];
    float bias[NE];
    float *bias_ptr[1];
    float logp[MAXBT], mtp[MAXBT];
    int32_t load[NE];
    int forwards, nan_at_forward;          /* inject a NaN loss at this forward (0: never) */
    int zeroings;                          /* zero_grad calls */
    int64_t stop_in_step;                  /* set *stop while running this (1-based) step (0: never) */
    volatile sig_atomic_t *stop;
    ds_trainer *trainer;
    ds_train_net net;
} fake;

enum { OFF_E = 0, OFF_M = V * V, OFF_G = 2 * V * V, OFF_R = 2 * V * V + V, NPARAM = 2 * V * V + V + V * NE };

static void log_softmax_row(const float *row, float *out) {
    float mx = row[0];
    for (int j = 1; j < V; j++) mx = fmaxf(mx, row[j]);
    double s = 0;
    for (int j = 0; j < V; j++) s += exp(row[j] - mx);
    float lse = mx + (float)log(s);
    for (int j = 0; j < V; j++) out[j] = row[j] - lse;
}

static int fake_forward(void *impl, const ds_batch *b, ds_fwd_out *o) {
    fake *f = impl;
    f->forwards++;
    const int n = b->B * b->T;
    float lsm[V];
    memset(f->load, 0, sizeof f->load);
    for (int i = 0; i < n; i++) {
        int t = i % b->T, tok = b->tokens[i];
        log_softmax_row(f->params + OFF_E + tok * V, lsm);
        f->logp[i] = b->targets[i] >= 0 ? lsm[b->targets[i]] : 0;
        log_softmax_row(f->params + OFF_M + tok * V, lsm);
        f->mtp[i] = t + 1 < b->T && b->targets[i + 1] >= 0 ? lsm[b->targets[i + 1]] : 0;
        /* top-2 of router affinity + bias: selection only, as in V3 */
        const float *r = f->params + OFF_R + tok * NE;
        int best[TOPK] = {-1, -1};
        for (int k = 0; k < TOPK; k++)
            for (int e = 0; e < NE; e++) {
                if (e == best[0]) continue;
                if (best[k] < 0 || r[e] + f->bias[e] > r[best[k]] + f->bias[best[k]]) best[k] = e;
            }
        f->load[best[0]]++, f->load[best[1]]++;
    }
    if (f->nan_at_forward && f->forwards == f->nan_at_forward) f->logp[0] = NAN;
    *o = (ds_fwd_out){.logp = f->logp, .mtp_logp = f->mtp, .expert_load = f->load, .n_moe_layers = 1, .bal_loss = 0};
    return 0;
}

static int fake_backward(void *impl, const ds_batch *b, const float *dlogp, const float *dmtp) {
    fake *f = impl;
    /* during step stop_in_step (a backward: validation's forwards between steps do not count) */
    if (f->stop_in_step && ds_trainer_steps_done(f->trainer) + 1 == f->stop_in_step) *f->stop = SIGTERM;
    const int n = b->B * b->T;
    float lsm[V];
    for (int i = 0; i < n; i++) {
        int t = i % b->T, tok = b->tokens[i];
        if (b->targets[i] >= 0 && dlogp[i] != 0) {
            log_softmax_row(f->params + OFF_E + tok * V, lsm);
            for (int j = 0; j < V; j++) f->grads[OFF_E + tok * V + j] += dlogp[i] * ((j == b->targets[i]) - expf(lsm[j]));
        }
        if (dmtp && t + 1 < b->T && b->targets[i + 1] >= 0 && dmtp[i] != 0) {
            log_softmax_row(f->params + OFF_M + tok * V, lsm);
            for (int j = 0; j < V; j++) f->grads[OFF_M + tok * V + j] += dmtp[i] * ((j == b->targets[i + 1]) - expf(lsm[j]));
        }
    }
    return 0;
}

static void fake_zero(void *impl) { /* at the start of a step whose gradients the last update did not zero */
    fake *f = impl;
    f->zeroings++;
    memset(f->grads, 0, NPARAM * sizeof *f->grads);
}

static void fake_init(fake *f, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->params = calloc(NPARAM, sizeof *f->params);
    f->grads = calloc(NPARAM, sizeof *f->grads);
    ds_randn_fill(f->params, 2 * V * V, seed, 1, 0.006f);
    for (int j = 0; j < V; j++) f->params[OFF_G + j] = 1;
    /* skewed router: a per-token spread plus a pull towards high expert ids that wins for most tokens */
    float spread[V * NE];
    ds_randn_fill(spread, V * NE, 99, 0, 0.02f);
    for (int tok = 0; tok < V; tok++)
        for (int e = 0; e < NE; e++) f->params[OFF_R + tok * NE + e] = 0.03f * e + spread[tok * NE + e];
    const struct { const char *name; size_t off, n; ds_param_kind kind; } t[4] = {
        {"embed", OFF_E, V * V, DS_PARAM_MATRIX}, {"mtp", OFF_M, V * V, DS_PARAM_MATRIX},
        {"norm", OFF_G, V, DS_PARAM_NORM}, {"router", OFF_R, V * NE, DS_PARAM_ROUTER}};
    for (int k = 0; k < 4; k++) {
        snprintf(f->info[k].name, sizeof f->info[k].name, "%s", t[k].name);
        f->info[k].offset = t[k].off, f->info[k].numel = t[k].n, f->info[k].kind = t[k].kind, f->info[k].ndim = 1;
        f->info[k].shape[0] = (int64_t)t[k].n;
    }
    f->bias_ptr[0] = f->bias;
    f->net = (ds_train_net){.impl = f, .params = f->params, .grads = f->grads, .n_params = NPARAM, .info = f->info, .n_info = 4,
                            .mtp_depth = 1, .n_moe_layers = 1, .n_experts = NE, .expert_bias = f->bias_ptr,
                            .forward = fake_forward, .backward = fake_backward, .zero_grad = fake_zero, .flops_per_token = 1e3};
}

static void fake_free(fake *f) { free(f->params), free(f->grads); }

/* A learnable corpus: x[i+1] = (5 x[i] + 3) mod V, documents of 20 tokens ended by EOS (token 0). */
static ds_token_reader corpus(int64_t n) {
    int32_t *s = malloc((size_t)n * sizeof *s);
    int32_t x = 1;
    for (int64_t i = 0; i < n; i++) {
        if (i % 21 == 20) {
            s[i] = 0;
            continue;
        }
        x = (5 * x + 3) % V;
        s[i] = x ? x : 1;
    }
    ds_token_reader rd;
    ds_token_reader_memory(&rd, s, n, 1, "corpus");
    return rd;
}

typedef struct {
    int64_t total;
    int micro, batch, T;
    const char *lr, *gamma, *batch_ramp;
    double val_frac;
    int val_every, save_every;
    uint64_t seed;
    int bf16, skip;
} run_cfg;

typedef struct {
    fake f;
    ds_token_reader rd;
    ds_data_source *train, *val;
    ds_trainer *t;
    ds_metrics metrics;
    volatile sig_atomic_t stop;
    int saves, final_saves;
    char *saved_state;      /* trainer_state.json of the last save */
    float *saved_params, *saved_m, *saved_v;
    float saved_bias[NE];
} run;

static int save_hook(void *ctx, ds_trainer *t, int final) {
    run *r = ctx;
    r->saves++;
    r->final_saves += final;
    free(r->saved_state);
    DS_TRY(ds_trainer_state_json(t, &r->saved_state));
    if (!r->saved_params) {
        r->saved_params = malloc(NPARAM * sizeof(float));
        r->saved_m = malloc(NPARAM * sizeof(float));
        r->saved_v = malloc(NPARAM * sizeof(float));
    }
    memcpy(r->saved_params, r->f.params, NPARAM * sizeof(float));
    ds_optim_get(ds_trainer_optimizer(t), 0, 0, NPARAM, r->saved_m);
    ds_optim_get(ds_trainer_optimizer(t), 1, 0, NPARAM, r->saved_v);
    memcpy(r->saved_bias, r->f.bias, sizeof r->f.bias);
    return 0;
}

static int run_open(run *r, const run_cfg *c, const char *metrics_path) {
    memset(r, 0, sizeof *r);
    fake_init(&r->f, c->seed);
    r->f.stop = &r->stop;
    r->rd = corpus(20000);
    ds_packed_opts po = {.seq_len = c->T, .seed = c->seed, .val_frac = c->val_frac, .eos = 0};
    DS_TRY(ds_packed_create(&r->train, c->val_frac > 0 ? &r->val : NULL, &r->rd, &po));
    ds_train_opts o;
    ds_train_opts_defaults(&o);
    o.total_steps = c->total, o.seq_len = c->T, o.micro_batch = c->micro, o.seed = c->seed;
    o.val_every = c->val_every, o.save_every = c->save_every, o.log_every = 0, o.peak_flops = 1e9;
    o.adamw.bf16_moments = c->bf16, o.skip_nonfinite = c->skip;
    char b[32];
    snprintf(b, sizeof b, "%d", c->batch);
    DS_TRY(ds_sched_parse(&o.lr, c->lr ? c->lr : "cosine:warmup=2,min=10%", 0.05, c->total, "--lr-schedule"));
    DS_TRY(ds_sched_parse(&o.batch, c->batch_ramp ? c->batch_ramp : b, NAN, c->total, "--batch"));
    DS_TRY(ds_sched_parse(&o.gamma, c->gamma ? c->gamma : "0.001", NAN, c->total, "--gamma"));
    DS_TRY(ds_sched_parse(&o.lambda, "0.3,0.1@50%", NAN, c->total, "--lambda"));
    if (metrics_path) DS_TRY(ds_metrics_open(&r->metrics, metrics_path, 1));
    ds_train_hooks h = {.save = save_hook, .ctx = r, .metrics = metrics_path ? &r->metrics : NULL, .stop = &r->stop};
    DS_TRY(ds_trainer_create(&r->t, &o, &r->f.net, r->train, r->val, &ds_loss_pretrain, &h));
    r->f.trainer = r->t;
    return 0;
}

static void run_close(run *r) {
    ds_trainer_free(r->t);
    ds_data_source_free(r->train);
    ds_data_source_free(r->val);
    ds_token_reader_free(&r->rd);
    if (r->metrics.f) ds_metrics_close(&r->metrics);
    free(r->saved_state), free(r->saved_params), free(r->saved_m), free(r->saved_v);
    fake_free(&r->f);
}

TEST(loss_falls_on_a_learnable_corpus) {
    run r;
    run_cfg c = {.total = 60, .micro = 4, .batch = 8, .T = 16, .seed = 1, .val_frac = 0.05, .val_every = 20};
    CHECK(run_open(&r, &c, tap_tmp("fall.jsonl")) == 0, "open: %s", ds_errmsg());
    ds_train_end end;
    CHECK(ds_trainer_run(r.t, &end) == 0 && end == DS_TRAIN_DONE, "ran: %s", ds_errmsg());
    json_t *m = fixture_metrics(tap_tmp("fall.jsonl"), NULL);
    double first = fixture_metric(m, 0, "loss"), last = fixture_metric(m, 59, "loss");
    CHECK(json_array_size(m) == 60, "60 metrics records (%zu)", json_array_size(m));
    CHECK_NEAR(first, log(V), 0.05, "initial loss is about ln(V)");
    CHECK(last < 0.35 * first, "loss falls: %.4f -> %.4f", first, last);
    CHECK(fixture_metric(m, 59, "loss_mtp") < 0.5 * fixture_metric(m, 0, "loss_mtp"), "MTP loss falls too");
    CHECK(!isnan(fixture_metric(m, 19, "val_loss")) && isnan(fixture_metric(m, 18, "val_loss")) && !isnan(fixture_metric(m, 59, "val_loss")),
          "validation every 20 steps");
    CHECK(fixture_metric(m, 59, "val_loss") < 0.5 * fixture_metric(m, 19, "val_loss") + 0.5, "validation loss falls");
    CHECK(fixture_metric(m, 0, "tokens") == 8 * 16 && fixture_metric(m, 59, "tokens") == 60 * 8 * 16, "tokens count");
    CHECK(fixture_metric(m, 0, "lr") > 0 && fixture_metric(m, 1, "lr") == 0.05, "warmup of 2 steps");
    CHECK(fixture_metric(m, 0, "lambda") == 0.3 && fixture_metric(m, 59, "lambda") == 0.1, "lambda schedule");
    CHECK(fixture_metric(m, 0, "mfu") > 0, "MFU reported");
    json_t *bal = json_object_get(json_array_get(m, 0), "balance");
    CHECK(json_array_size(bal) == 1 && json_is_number(json_object_get(json_array_get(bal, 0), "max_vio")), "balance record per MoE layer");
    CHECK(r.final_saves == 1 && r.saves == 1, "one final save");
    CHECK(ds_trainer_plot(r.t, tap_tmp("loss.png"), "test") == 0 && ds_path_exists(tap_tmp("loss.png")), "plot written");
    json_decref(m);
    run_close(&r);
}

TEST(accumulation_equals_one_big_batch) {
    run a, b;
    run_cfg ca = {.total = 3, .micro = 8, .batch = 8, .T = 16, .seed = 2}, cb = ca;
    cb.micro = 2;
    CHECK(run_open(&a, &ca, NULL) == 0 && run_open(&b, &cb, NULL) == 0, "open");
    ds_train_end end;
    ds_trainer_run(a.t, &end);
    ds_trainer_run(b.t, &end);
    double maxd = 0;
    for (int i = 0; i < NPARAM; i++) maxd = fmax(maxd, fabs(a.f.params[i] - b.f.params[i]));
    CHECK(maxd < 1e-6, "4 micro-batches of 2 = 1 of 8 (max difference %.3g)", maxd);
    CHECK_REL(ds_trainer_last(a.t)->terms[0], ds_trainer_last(b.t)->terms[0], 1e-6, "same loss");
    run_close(&a);
    run_close(&b);
}

/* Resume: the saved state goes into a fresh trainer as a checkpoint would. */
static int resume_from(run *dst, const run *src) {
    memcpy(dst->f.params, src->saved_params, NPARAM * sizeof(float));
    memcpy(dst->f.bias, src->saved_bias, sizeof dst->f.bias);
    DS_TRY(ds_trainer_state_load(dst->t, src->saved_state, strlen(src->saved_state), "state"));
    ds_optim_set(ds_trainer_optimizer_mut(dst->t), 0, 0, NPARAM, src->saved_m);
    ds_optim_set(ds_trainer_optimizer_mut(dst->t), 1, 0, NPARAM, src->saved_v);
    return 0;
}

static int same_records(json_t *a, json_t *b, size_t from, size_t n) {
    static const char *keys[] = {"step", "loss", "loss_mtp", "lr", "grad_norm", "tokens", "gamma", "lambda", "val_loss", "batch"};
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 10; k++) {
            double x = fixture_metric(a, from + i, keys[k]), y = fixture_metric(b, i, keys[k]);
            if (!(x == y || (isnan(x) && isnan(y)))) return 0;
        }
    return 1;
}

static void resume_case(int bf16) {
    const int N = 7;
    run_cfg c = {.total = 2 * N, .micro = 2, .batch = 4, .T = 16, .seed = 3, .val_frac = 0.05, .val_every = 3, .save_every = 5,
                 .gamma = "0.01", .lr = "v3:warmup=2", .batch_ramp = "linear:2@0,6@10", .bf16 = bf16};
    run whole, first, second;
    unlink(tap_tmp("whole.jsonl")), unlink(tap_tmp("first.jsonl")), unlink(tap_tmp("second.jsonl"));
    CHECK(run_open(&whole, &c, tap_tmp("whole.jsonl")) == 0, "open: %s", ds_errmsg());
    ds_train_end end;
    CHECK(ds_trainer_run(whole.t, &end) == 0 && end == DS_TRAIN_DONE, "uninterrupted run");

    CHECK(run_open(&first, &c, tap_tmp("first.jsonl")) == 0, "open first");
    /* a SIGTERM arrives during step N: the step finishes, the state is saved, the run stops */
    first.f.stop_in_step = N;
    CHECK(ds_trainer_run(first.t, &end) == 0 && end == DS_TRAIN_STOPPED, "stopped by the signal");
    CHECK(ds_trainer_steps_done(first.t) == N, "after step %d (%lld)", N, (long long)ds_trainer_steps_done(first.t));
    CHECK(first.final_saves == 1 && first.saves == 2, "a periodic save at 5 and the final one at the signal");

    CHECK(run_open(&second, &c, tap_tmp("second.jsonl")) == 0, "open second");
    CHECK(resume_from(&second, &first) == 0, "resume: %s", ds_errmsg());
    CHECK(ds_trainer_run(second.t, &end) == 0 && end == DS_TRAIN_DONE, "resumed run");
    CHECK(!memcmp(whole.f.params, second.f.params, NPARAM * sizeof(float)), "same weight bytes after 2N steps");
    CHECK(!memcmp(whole.f.bias, second.f.bias, sizeof whole.f.bias), "same expert biases");
    json_t *mw = fixture_metrics(tap_tmp("whole.jsonl"), NULL), *m1 = fixture_metrics(tap_tmp("first.jsonl"), NULL),
           *m2 = fixture_metrics(tap_tmp("second.jsonl"), NULL);
    CHECK(json_array_size(mw) == 2 * N && json_array_size(m1) == N && json_array_size(m2) == N, "record counts");
    CHECK(same_records(mw, m1, 0, N) && same_records(mw, m2, N, N), "the same loss lines, step for step");
    json_decref(mw), json_decref(m1), json_decref(m2);
    run_close(&whole), run_close(&first), run_close(&second);
}

TEST(resume_is_bit_identical) { resume_case(0); }
TEST(resume_is_bit_identical_with_bf16_moments) { resume_case(1); }

TEST(state_refuses_another_seed) {
    run a, b;
    run_cfg c = {.total = 2, .micro = 2, .batch = 2, .T = 8, .seed = 4};
    run_open(&a, &c, NULL);
    ds_train_end end;
    ds_trainer_run(a.t, &end);
    c.seed = 5;
    run_open(&b, &c, NULL);
    CHECK(ds_trainer_state_load(b.t, a.saved_state, strlen(a.saved_state), "ckpt/trainer_state.json") == DS_ERR &&
              !strcmp(ds_errmsg(), "trainer state: seed 4, this run has --seed 5: ckpt/trainer_state.json"),
          "%s", ds_errmsg());
    CHECK(ds_trainer_state_load(b.t, "{\"format\": 1}", 13, "x.json") == DS_ERR && strstr(ds_errmsg(), "not a ds-trainer-state"), "%s", ds_errmsg());
    CHECK(ds_trainer_state_load(b.t, "{", 1, "x.json") == DS_ERR && strstr(ds_errmsg(), "bad JSON"), "%s", ds_errmsg());
    run_close(&a), run_close(&b);
}

TEST(nan_stops_the_run_or_is_skipped) {
    run r;
    run_cfg c = {.total = 6, .micro = 2, .batch = 4, .T = 8, .seed = 6, .save_every = 2};
    run_open(&r, &c, tap_tmp("nan.jsonl"));
    r.f.nan_at_forward = 7; /* the first forward of step 4 */
    ds_train_end end;
    int rc = ds_trainer_run(r.t, &end);
    CHECK(rc == DS_EDIVERGED && !strcmp(ds_errmsg(), "training diverged: loss is nan at step 4"), "rc %d: %s", rc, ds_errmsg());
    CHECK(r.saves == 1 && r.final_saves == 0 && ds_trainer_steps_done(r.t) == 3, "only the step-2 checkpoint was written");
    CHECK(strstr(ds_errhint(), "last checkpoint"), "hint: %s", ds_errhint());
    run_close(&r);

    c.skip = 1;
    run_open(&r, &c, NULL);
    r.f.nan_at_forward = 7;
    float before[NPARAM];
    rc = ds_trainer_run(r.t, &end);
    memcpy(before, r.f.params, sizeof before);
    CHECK(rc == 0 && ds_trainer_steps_done(r.t) == 6, "skipping: the run completes");
    int finite = 1;
    for (int i = 0; i < NPARAM; i++) finite &= isfinite(r.f.params[i]);
    CHECK(finite, "parameters stay finite");
    run_close(&r);
}

/* DS_FUSED_OPTIM (train/optim.h): the update zeroes the gradients in its pass, so the trainer zeroes them
 * itself only before the first step and after a step that made no update (a skipped non-finite one); with
 * gradient accumulation over two micro-batches the weights are bit for bit those of the separate passes. */
TEST(the_update_zeroes_the_gradients_for_the_next_step) {
    run a, b;
    run_cfg c = {.total = 6, .micro = 2, .batch = 4, .T = 8, .seed = 6, .skip = 1};
    ds_train_end end;
    CHECK(run_open(&a, &c, NULL) == 0, "open: %s", ds_errmsg());
    a.f.nan_at_forward = 7; /* the first forward of step 4: skipped */
    CHECK(ds_trainer_run(a.t, &end) == 0 && ds_trainer_steps_done(a.t) == 6, "fused: 6 steps");
    setenv("DS_FUSED_OPTIM", "0", 1);
    CHECK(run_open(&b, &c, NULL) == 0, "open: %s", ds_errmsg());
    unsetenv("DS_FUSED_OPTIM");
    b.f.nan_at_forward = 7;
    CHECK(ds_trainer_run(b.t, &end) == 0 && ds_trainer_steps_done(b.t) == 6, "DS_FUSED_OPTIM=0: 6 steps");
    CHECK(a.f.zeroings == 2 && b.f.zeroings == 6,
          "zeroing passes: %d fused (before step 1 and after the skipped step 4), %d separate", a.f.zeroings, b.f.zeroings);
    CHECK(!memcmp(a.f.params, b.f.params, NPARAM * sizeof(float)), "the same weight bits either way");
    run_close(&a), run_close(&b);
}

TEST(bias_update_balances_a_skewed_router) {
    /* lr 0: the router (and everything else) gets no gradient update; only the bias moves */
    run r;
    run_cfg c = {.total = 100, .micro = 4, .batch = 4, .T = 32, .seed = 7, .lr = "0", .gamma = "0.004"};
    unlink(tap_tmp("bal.jsonl"));
    run_open(&r, &c, tap_tmp("bal.jsonl"));
    ds_train_end end;
    CHECK(ds_trainer_run(r.t, &end) == 0, "ran");
    json_t *m = fixture_metrics(tap_tmp("bal.jsonl"), NULL);
    double vio[100];
    for (int s = 0; s < 100; s++)
        vio[s] = json_number_value(json_object_get(json_array_get(json_object_get(json_array_get(m, (size_t)s), "balance"), 0), "max_vio"));
    double late = 0;
    for (int s = 90; s < 100; s++) late += vio[s] / 10;
    CHECK(vio[0] >= 2, "the skewed router starts far from balance: MaxVio %.3f", vio[0]);
    CHECK(late < vio[0] / 4, "after 100 bias updates MaxVio averages %.3f over the last 10 steps", late);
    CHECK(r.f.bias[7] < 0 && r.f.bias[0] > 0, "overloaded experts went down, idle ones up");
    json_decref(m);
    run_close(&r);
    /* control: gamma 0 (V3's frozen phase) leaves the imbalance where it was */
    c.gamma = "0", c.total = 20;
    unlink(tap_tmp("bal0.jsonl"));
    run_open(&r, &c, tap_tmp("bal0.jsonl"));
    ds_trainer_run(r.t, &end);
    m = fixture_metrics(tap_tmp("bal0.jsonl"), NULL);
    double v19 = json_number_value(json_object_get(json_array_get(json_object_get(json_array_get(m, 19), "balance"), 0), "max_vio"));
    CHECK(v19 >= 2 && r.f.bias[0] == 0 && r.f.bias[7] == 0, "gamma 0: bias stays 0, MaxVio %.3f", v19);
    json_decref(m);
    run_close(&r);
}

TEST(batch_ramp_grows_in_whole_micro_batches) {
    run r;
    run_cfg c = {.total = 10, .micro = 3, .batch = 3, .T = 8, .seed = 8, .batch_ramp = "linear:3@0,12@9"};
    unlink(tap_tmp("ramp.jsonl"));
    run_open(&r, &c, tap_tmp("ramp.jsonl"));
    ds_train_end end;
    ds_trainer_run(r.t, &end);
    json_t *m = fixture_metrics(tap_tmp("ramp.jsonl"), NULL);
    int ok = 1;
    for (int s = 0; s < 10; s++) {
        double want = 3 * fmax(1, floor((3 + 9.0 * fmin(s, 9) / 9) / 3 + 1e-9));
        ok &= fixture_metric(m, (size_t)s, "batch") == want;
    }
    CHECK(ok, "batch follows the ramp, rounded down to multiples of 3: first %g last %g", fixture_metric(m, 0, "batch"), fixture_metric(m, 9, "batch"));
    json_decref(m);
    run_close(&r);
}

/* A loss hook that wraps the pretraining one and records which rows each micro-batch covered. */
static int rows_seen[64], n_rows_seen;
static int recording_micro(void *ctx, const ds_loss_ctx *lc, const ds_batch *b, const ds_fwd_out *f, float *dlogp, float *dmtp,
                           double *terms) {
    if (dlogp && n_rows_seen < 64) rows_seen[n_rows_seen++] = lc->row0;
    return ds_loss_pretrain.micro(ctx, lc, b, f, dlogp, dmtp, terms);
}

TEST(loss_hooks_see_each_micro_batch_row_offset) {
    run r;
    run_cfg c = {.total = 2, .micro = 2, .batch = 8, .T = 8, .seed = 10};
    CHECK(run_open(&r, &c, NULL) == 0, "open");
    ds_trainer_free(r.t);
    ds_loss_hook h = ds_loss_pretrain;
    h.micro = recording_micro;
    ds_train_opts o;
    ds_train_opts_defaults(&o);
    o.total_steps = 2, o.seq_len = 8, o.micro_batch = 2, o.log_every = 0;
    ds_sched_parse(&o.lr, "1e-3", 0, 2, "lr");
    ds_sched_parse(&o.batch, "8", 0, 2, "batch");
    ds_sched_parse(&o.gamma, "0", 0, 2, "gamma");
    ds_sched_parse(&o.lambda, "0.3", 0, 2, "lambda");
    CHECK(ds_trainer_create(&r.t, &o, &r.f.net, r.train, NULL, &h, NULL) == 0, "trainer with a custom hook");
    n_rows_seen = 0;
    ds_train_end end;
    CHECK(ds_trainer_run(r.t, &end) == 0, "ran");
    CHECK(n_rows_seen == 8 && rows_seen[0] == 0 && rows_seen[1] == 2 && rows_seen[2] == 4 && rows_seen[3] == 6 && rows_seen[4] == 0,
          "row offsets 0 2 4 6 per step (%d calls)", n_rows_seen);
    run_close(&r);
}

/* ---- data parallelism: two replicas in two threads, summing through shared memory ---- */

#include <pthread.h>

typedef struct {
    pthread_barrier_t bar;
    void *buf[2];
} fake_group;

typedef struct {
    fake_group *g;
    int rank;
} fake_member;

/* Sum in rank order, so both ranks get the same bits. */
#define FAKE_ALLREDUCE(fname, type)                                                                        \
    static int fname(void *ctx, type *x, size_t n) {                                                      \
        fake_member *me = ctx;                                                                             \
        fake_group *g = me->g;                                                                             \
        g->buf[me->rank] = x;                                                                              \
        pthread_barrier_wait(&g->bar);                                                                     \
        const type *a = g->buf[0], *b = g->buf[1];                                                         \
        type *tmp = malloc(n * sizeof *tmp + 1);                                                           \
        for (size_t i = 0; i < n; i++) tmp[i] = a[i] + b[i];                                               \
        pthread_barrier_wait(&g->bar);                                                                     \
        memcpy(x, tmp, n * sizeof *tmp);                                                                   \
        free(tmp);                                                                                         \
        pthread_barrier_wait(&g->bar);                                                                     \
        return 0;                                                                                          \
    }
FAKE_ALLREDUCE(fake_sum_f32, float)
FAKE_ALLREDUCE(fake_sum_f64, double)
FAKE_ALLREDUCE(fake_sum_i64, int64_t)

/* ZeRO-1's halves for two ranks: the reduce-scatter may leave the sums everywhere (it does here); the
 * all-gather takes each slice from its owner. */
static int fake_allgather_f32(void *ctx, float *x, size_t n) {
    fake_member *me = ctx;
    fake_group *g = me->g;
    g->buf[me->rank] = x;
    pthread_barrier_wait(&g->bar);
    const int other = 1 - me->rank;
    const size_t lo = other ? n / 2 : 0, hi = other ? n : n / 2;
    memcpy(x + lo, (float *)g->buf[other] + lo, (hi - lo) * sizeof *x);
    pthread_barrier_wait(&g->bar);
    return 0;
}

typedef struct {
    run r;
    run_cfg c;
    ds_train_comm comm;
    fake_member me;
    int rc;
    char metrics[200];
    const ds_train_group *groups; /* NULL: the default group */
    int n_groups;
    size_t opt_bytes;
} replica;

static void *replica_main(void *arg) {
    replica *p = arg;
    p->rc = run_open(&p->r, &p->c, p->me.rank == 0 ? p->metrics : NULL);
    if (p->rc) return NULL;
    /* the hooks live in the trainer; point them at this replica's group */
    p->rc = ds_trainer_set_comm(p->r.t, &p->comm);
    if (!p->rc && p->groups) {
        ds_train_group g[4];
        for (int i = 0; i < p->n_groups; i++) g[i] = p->groups[i], g[i].comm = g[i].comm ? &p->comm : NULL;
        p->rc = ds_trainer_set_groups(p->r.t, g, p->n_groups, NULL);
    }
    p->opt_bytes = ds_zero_state_bytes(ds_trainer_zero(p->r.t));
    if (p->rc) return NULL;
    ds_train_end end;
    p->rc = ds_trainer_run(p->r.t, &end);
    return NULL;
}

TEST(data_parallel_replicas_match_one_process) {
    run_cfg c = {.total = 12, .micro = 2, .batch = 8, .T = 16, .seed = 9, .val_frac = 0.05, .val_every = 4, .gamma = "0.01"};
    run one;
    unlink(tap_tmp("one.jsonl")), unlink(tap_tmp("dp.jsonl"));
    CHECK(run_open(&one, &c, tap_tmp("one.jsonl")) == 0, "open");
    ds_train_end end;
    CHECK(ds_trainer_run(one.t, &end) == 0, "one process");
    fake_group g;
    pthread_barrier_init(&g.bar, NULL, 2);
    replica rep[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        memset(&rep[k], 0, sizeof rep[k]);
        rep[k].c = c;
        rep[k].me = (fake_member){.g = &g, .rank = k};
        rep[k].comm = (ds_train_comm){.rank = k, .size = 2, .allreduce_f32 = fake_sum_f32, .allreduce_f64 = fake_sum_f64,
                                      .allreduce_i64 = fake_sum_i64, .ctx = &rep[k].me};
        snprintf(rep[k].metrics, sizeof rep[k].metrics, "%s", tap_tmp("dp.jsonl"));
        pthread_create(&th[k], NULL, replica_main, &rep[k]);
    }
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    CHECK(rep[0].rc == 0 && rep[1].rc == 0, "both replicas ran");
    CHECK(!memcmp(rep[0].r.f.params, rep[1].r.f.params, NPARAM * sizeof(float)) && !memcmp(rep[0].r.f.bias, rep[1].r.f.bias, sizeof rep[0].r.f.bias),
          "the replicas stay bit-identical");
    double maxd = 0;
    for (int i = 0; i < NPARAM; i++) maxd = fmax(maxd, fabs(one.f.params[i] - rep[0].r.f.params[i]));
    CHECK(maxd < 1e-5, "parameters match one process to rounding (max difference %.3g)", maxd);
    json_t *m1 = fixture_metrics(tap_tmp("one.jsonl"), NULL), *m2 = fixture_metrics(tap_tmp("dp.jsonl"), NULL);
    int close = json_array_size(m1) == 12 && json_array_size(m2) == 12;
    for (size_t i = 0; close && i < 12; i++) {
        close &= fabs(fixture_metric(m1, i, "loss") - fixture_metric(m2, i, "loss")) < 1e-5;
        close &= fabs(fixture_metric(m1, i, "grad_norm") - fixture_metric(m2, i, "grad_norm")) < 1e-4 * fixture_metric(m1, i, "grad_norm");
        double v1 = fixture_metric(m1, i, "val_loss"), v2 = fixture_metric(m2, i, "val_loss");
        close &= (isnan(v1) && isnan(v2)) || fabs(v1 - v2) < 1e-5;
        json_t *b1 = json_object_get(json_array_get(m1, i), "balance"), *b2 = json_object_get(json_array_get(m2, i), "balance");
        close &= json_equal(json_object_get(json_array_get(b1, 0), "max_load"), json_object_get(json_array_get(b2, 0), "max_load"));
    }
    CHECK(close, "the same loss curve, validation losses and expert loads as one process");
    json_decref(m1), json_decref(m2);
    run_close(&one), run_close(&rep[0].r), run_close(&rep[1].r);
    pthread_barrier_destroy(&g.bar);
}

/* Two replicas on threads; zero: the comm offers ZeRO-1's halves. */
static void run_replicas(replica rep[2], const run_cfg *c, const char *metrics, int zero, const ds_train_group *g, int ng) {
    fake_group fg;
    pthread_barrier_init(&fg.bar, NULL, 2);
    pthread_t th[2];
    unlink(metrics);
    for (int k = 0; k < 2; k++) {
        memset(&rep[k], 0, sizeof rep[k]);
        rep[k].c = *c;
        rep[k].me = (fake_member){.g = &fg, .rank = k};
        rep[k].comm = (ds_train_comm){.rank = k, .size = 2, .allreduce_f32 = fake_sum_f32, .allreduce_f64 = fake_sum_f64,
                                      .allreduce_i64 = fake_sum_i64, .ctx = &rep[k].me};
        if (zero) rep[k].comm.reduce_scatter_f32 = fake_sum_f32, rep[k].comm.allgather_f32 = fake_allgather_f32;
        rep[k].groups = g, rep[k].n_groups = ng;
        snprintf(rep[k].metrics, sizeof rep[k].metrics, "%s", metrics);
        pthread_create(&th[k], NULL, replica_main, &rep[k]);
    }
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    pthread_barrier_destroy(&fg.bar);
}

/* The same losses bit for bit, and gradient norms within norm_tol relative (0: bit for bit). */
static int same_metrics(const char *a, const char *b, int n, double norm_tol) {
    json_t *m1 = fixture_metrics(a, NULL), *m2 = fixture_metrics(b, NULL);
    int same = (int)json_array_size(m1) == n && (int)json_array_size(m2) == n;
    for (int i = 0; same && i < n; i++) {
        double l1 = fixture_metric(m1, i, "loss"), l2 = fixture_metric(m2, i, "loss");
        double g1 = fixture_metric(m1, i, "grad_norm"), g2 = fixture_metric(m2, i, "grad_norm");
        same &= !memcmp(&l1, &l2, sizeof l1) && (norm_tol ? fabs(g1 - g2) <= norm_tol * g1 : !memcmp(&g1, &g2, sizeof g1));
    }
    json_decref(m1), json_decref(m2);
    return same;
}

TEST(parameter_groups_and_zero1_give_the_replicated_bits) {
    run_cfg c = {.total = 10, .micro = 2, .batch = 8, .T = 16, .seed = 5, .gamma = "0.01"};
    replica base[2], grp[2], zero[2];
    /* groups cut through a tensor (the MTP table) and the slices of both ranks cut through others */
    const ds_train_group two[2] = {{0, 300, (ds_train_comm *)1}, {300, NPARAM - 300, (ds_train_comm *)1}};
    run_replicas(base, &c, tap_tmp("g_base.jsonl"), 0, NULL, 0);
    run_replicas(grp, &c, tap_tmp("g_two.jsonl"), 0, two, 2);
    run_replicas(zero, &c, tap_tmp("g_zero.jsonl"), 1, two, 2);
    CHECK(base[0].rc == 0 && grp[0].rc == 0 && zero[0].rc == 0 && base[1].rc == 0 && grp[1].rc == 0 && zero[1].rc == 0,
          "all runs ran");
    CHECK(!memcmp(base[0].r.f.params, grp[0].r.f.params, NPARAM * sizeof(float)), "two groups: the default group's bits");
    CHECK(!memcmp(base[0].r.f.params, zero[0].r.f.params, NPARAM * sizeof(float)) &&
              !memcmp(base[0].r.f.params, zero[1].r.f.params, NPARAM * sizeof(float)),
          "ZeRO-1: every rank ends with the replicated run's parameters, bit for bit");
    /* the norm's shares are summed slice by slice: another grouping rounds them differently */
    CHECK(same_metrics(tap_tmp("g_base.jsonl"), tap_tmp("g_two.jsonl"), 10, 1e-12), "two groups: the same losses and norms");
    CHECK(same_metrics(tap_tmp("g_two.jsonl"), tap_tmp("g_zero.jsonl"), 10, 0),
          "ZeRO-1: the replicated run's losses and gradient norms, bit for bit");
    /* rank r holds slice r of each group: [0,150)+[300,478) on rank 0, [150,300)+[478,656) on rank 1 */
    CHECK(base[0].opt_bytes == 8 * NPARAM && zero[0].opt_bytes == 8 * (150 + 178) && zero[1].opt_bytes == 8 * (150 + 178),
          "moments: %zu bytes replicated, %zu and %zu under ZeRO-1", base[0].opt_bytes, zero[0].opt_bytes, zero[1].opt_bytes);
    for (int k = 0; k < 2; k++) run_close(&base[k].r), run_close(&grp[k].r), run_close(&zero[k].r);
}

TEST(parameter_groups_must_tile_the_buffer) {
    run_cfg c = {.total = 4, .micro = 2, .batch = 2, .T = 16, .seed = 5};
    run r;
    CHECK(run_open(&r, &c, NULL) == 0, "open: %s", ds_errmsg());
    ds_train_group gap[2] = {{0, 100, NULL}, {120, NPARAM - 120, NULL}}, shy[1] = {{0, NPARAM - 1, NULL}};
    CHECK(ds_trainer_set_groups(r.t, gap, 2, NULL) != 0 && strstr(ds_errmsg(), "group 1 [120, +536) does not continue at 100"),
          "a gap is refused: %s", ds_errmsg());
    CHECK(ds_trainer_set_groups(r.t, shy, 1, NULL) != 0 && strstr(ds_errmsg(), "cover 655 of 656"), "a short tiling is refused: %s",
          ds_errmsg());
    ds_train_group halves[2] = {{0, 200, NULL}, {200, NPARAM - 200, NULL}};
    CHECK(ds_trainer_set_groups(r.t, halves, 2, NULL) == 0 && ds_trainer_step(r.t) == 0, "two local groups step");
    CHECK(ds_trainer_set_groups(r.t, halves, 2, NULL) != 0 && strstr(ds_errmsg(), "before the first step"),
          "not after a step (the moments would start afresh): %s", ds_errmsg());
    run_close(&r);
}

int main(int argc, char **argv) {
    ds_log_set_level(DS_LOG_QUIET);
    return tap_run(argc, argv);
}
