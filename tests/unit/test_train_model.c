/* The trainer on the real network (share/configs/tiny.json's shape, built in code): loss falls on a
 * learnable corpus; checkpoints written by ds_session_save load back; a run stopped at step N and
 * resumed from its checkpoint matches an uninterrupted run bit for bit (losses and weight bytes);
 * the bias update alone (lr 0) balances a router skewed on purpose; accumulation = one big batch. */
#include "metrics_fixture.h"
#include "tap.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "core/threads.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "train/packed.h"
#include "train/session.h"

#include <jansson.h>
#include <unistd.h>

static const char *tiny_config =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": 64,"
    " \"hidden_size\": 32, \"intermediate_size\": 64, \"moe_intermediate_size\": 16, \"num_hidden_layers\": 2,"
    " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 2,"
    " \"n_routed_experts\": 8, \"n_shared_experts\": 1, \"num_experts_per_tok\": 2, \"n_group\": 2, \"topk_group\": 1,"
    " \"scoring_func\": \"sigmoid\", \"topk_method\": \"noaux_tc\", \"norm_topk_prob\": true, \"routed_scaling_factor\": 2.5,"
    " \"q_lora_rank\": 16, \"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 8, \"v_head_dim\": 8,"
    " \"rope_theta\": 10000.0, \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\","
    " \"tie_word_embeddings\": false, \"num_nextn_predict_layers\": 1, \"bos_token_id\": 0, \"eos_token_id\": 1,"
    " \"ds_init_std\": 0.02, \"torch_dtype\": \"float32\"}";

/* x[i+1] = (7 x[i] + 5) mod 61 + 2 within documents of 30 tokens, EOS (1) between them. */
static ds_token_reader corpus(void) {
    enum { N = 30000 };
    int32_t *s = malloc(N * sizeof *s);
    int32_t x = 3;
    for (int i = 0; i < N; i++) {
        if (i % 31 == 30) {
            s[i] = 1;
            continue;
        }
        x = (7 * x + 5) % 61;
        s[i] = x + 2;
    }
    ds_token_reader rd;
    ds_token_reader_memory(&rd, s, N, 1, "corpus");
    return rd;
}

typedef struct {
    ds_session s;
    ds_token_reader rd;
    ds_data_source *train, *val;
} run;

typedef struct {
    int64_t steps;
    int batch, micro, T;
    const char *lr, *gamma, *resume, *out, *metrics;
    int save_every;
} run_cfg;

static int run_open(run *r, const run_cfg *c) {
    memset(r, 0, sizeof *r);
    ds_session_opts so = {.tool = "test", .config_path = tap_tmp("config.json"), .resume = c->resume, .out_dir = c->out,
                          .metrics_path = c->metrics, .device = "cpu", .balance_alpha = 1e-4, .micro_batch = c->micro,
                          .seq_len = c->T, .seed = 11};
    DS_TRY(ds_session_open(&r->s, &so));
    r->rd = corpus();
    ds_packed_opts po = {.seq_len = c->T, .seed = 11, .val_frac = 0.02, .eos = 1};
    DS_TRY(ds_packed_create(&r->train, &r->val, &r->rd, &po));
    ds_train_opts o;
    ds_train_opts_defaults(&o);
    o.total_steps = c->steps, o.seq_len = c->T, o.micro_batch = c->micro, o.seed = 11, o.log_every = 0;
    o.balance_alpha = 1e-4, o.save_every = c->save_every, o.val_every = 5, o.val_batches = 2;
    char b[16];
    snprintf(b, sizeof b, "%d", c->batch);
    DS_TRY(ds_sched_parse(&o.lr, c->lr ? c->lr : "cosine:warmup=3", 1e-2, c->steps, "--lr-schedule"));
    DS_TRY(ds_sched_parse(&o.batch, b, NAN, c->steps, "--batch"));
    DS_TRY(ds_sched_parse(&o.gamma, c->gamma ? c->gamma : "0.001", NAN, c->steps, "--gamma"));
    DS_TRY(ds_sched_parse(&o.lambda, "0.3", NAN, c->steps, "--lambda"));
    return ds_session_start(&r->s, &o, r->train, r->val, &ds_loss_pretrain, "{\"config\": \"test\"}");
}

static void run_close(run *r) {
    ds_session_close(&r->s);
    ds_data_source_free(r->train);
    ds_data_source_free(r->val);
    ds_token_reader_free(&r->rd);
}

TEST(loss_falls_and_the_checkpoint_loads_back) {
    run r;
    run_cfg c = {.steps = 40, .batch = 4, .micro = 2, .T = 32, .lr = "cosine:warmup=3", .out = tap_tmp("ckpt"), .metrics = tap_tmp("fall.jsonl")};
    CHECK(run_open(&r, &c) == 0, "open: %s", ds_errmsg());
    int sig;
    CHECK(ds_session_run(&r.s, &sig) == 0 && sig == 0, "ran: %s", ds_errmsg());
    json_t *m = fixture_metrics(tap_tmp("fall.jsonl"), "step");
    double first = fixture_metric(m, 0, "loss"), last = fixture_metric(m, 39, "loss");
    CHECK(fabs(first - log(64)) < 0.2, "starts near ln 64: %.4f", first);
    CHECK(last < 0.5 * first, "loss falls: %.4f -> %.4f", first, last);
    CHECK(fixture_metric(m, 39, "loss_mtp") < 0.7 * fixture_metric(m, 0, "loss_mtp"), "MTP loss falls: %.4f -> %.4f", fixture_metric(m, 0, "loss_mtp"), fixture_metric(m, 39, "loss_mtp"));
    CHECK(fixture_metric(m, 0, "loss_bal") > 0, "balance loss reported: %g", fixture_metric(m, 0, "loss_bal"));
    CHECK(!isnan(fixture_metric(m, 39, "val_loss")), "validation loss at the end");
    json_decref(m);
    /* the checkpoint: a Hugging Face directory plus the trainer files */
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "trainer_state.json",
                           "optimizer.safetensors"};
    for (int i = 0; i < 6; i++) {
        char p[300];
        snprintf(p, sizeof p, "%s/%s", tap_tmp("ckpt"), files[i]);
        if (i == 2) CHECK(!ds_path_exists(p), "no tokenizer.json without a tokenizer");
        else CHECK(ds_path_exists(p), "%s written", files[i]);
    }
    ds_model *m2;
    ds_ckpt *ck;
    CHECK(ds_ckpt_open(&ck, tap_tmp("ckpt")) == 0, "the checkpoint opens: %s", ds_errmsg());
    ds_model_opts mo = {.max_batch = 1, .max_seq = 8};
    ds_model_create(&m2, ds_ckpt_config(ck), &mo);
    CHECK(ds_model_load_weights(m2, ds_ckpt_tensors(ck)) == 0, "weights load: %s", ds_errmsg());
    CHECK(!memcmp(ds_model_params(m2), ds_model_params(r.s.model), ds_model_num_params(m2) * 4), "same weight bytes");
    CHECK(!memcmp(ds_model_expert_bias(m2, 1), ds_model_expert_bias(r.s.model, 1), 8 * 4), "same expert biases");
    CHECK(ds_model_mtp_depth(m2) == 1, "MTP module saved and loaded");
    ds_model_free(m2);
    ds_ckpt_close(ck);
    run_close(&r);
}

static ds_session *stop_session;
static int64_t stop_step;
static int (*real_backward)(void *, const ds_batch *, const float *, const float *);

/* runs in every optimizer step (the zeroing pass does not: the last update may have zeroed the gradients) */
static int backward_and_maybe_signal(void *impl, const ds_batch *b, const float *dlogp, const float *dmtp) {
    if (ds_trainer_steps_done(stop_session->trainer) + 1 == stop_step) raise(SIGTERM);
    return real_backward(impl, b, dlogp, dmtp);
}

TEST(stop_and_resume_is_bit_identical) {
    const int N = 6;
    run a, b1, b2;
    run_cfg c = {.steps = 2 * N, .batch = 4, .micro = 2, .T = 16, .out = tap_tmp("whole"), .metrics = tap_tmp("whole.jsonl"), .save_every = 4};
    unlink(tap_tmp("whole.jsonl")), unlink(tap_tmp("part.jsonl"));
    CHECK(run_open(&a, &c) == 0, "open: %s", ds_errmsg());
    int sig;
    CHECK(ds_session_run(&a.s, &sig) == 0, "uninterrupted: %s", ds_errmsg());
    c.out = tap_tmp("part"), c.metrics = tap_tmp("part.jsonl");
    CHECK(run_open(&b1, &c) == 0, "open the first half");
    /* SIGTERM arrives during step N: the step finishes, the checkpoint is saved, the run stops */
    stop_session = &b1.s;
    stop_step = N;
    real_backward = b1.s.net.backward;
    b1.s.net.backward = backward_and_maybe_signal;
    CHECK(ds_session_run(&b1.s, &sig) == 0 && sig == SIGTERM, "stopped by SIGTERM (%d)", sig);
    *b1.s.stop = 0;
    CHECK(ds_trainer_steps_done(b1.s.trainer) == N, "at step %d", N);
    run_close(&b1);
    c.resume = tap_tmp("part");
    CHECK(run_open(&b2, &c) == 0, "resume: %s", ds_errmsg());
    CHECK(b2.s.resumed_step == N, "resumed at %lld", (long long)b2.s.resumed_step);
    CHECK(ds_session_run(&b2.s, &sig) == 0, "second half: %s", ds_errmsg());
    CHECK(!memcmp(ds_model_params(a.s.model), ds_model_params(b2.s.model), ds_model_num_params(a.s.model) * 4),
          "same weight bytes after %d steps", 2 * N);
    json_t *mw = fixture_metrics(tap_tmp("whole.jsonl"), "step"), *mp = fixture_metrics(tap_tmp("part.jsonl"), "step");
    int same = json_array_size(mw) == (size_t)(2 * N) && json_array_size(mp) == (size_t)(2 * N);
    static const char *keys[] = {"step", "loss", "loss_mtp", "loss_bal", "lr", "grad_norm", "tokens", "val_loss"};
    for (int i = 0; same && i < 2 * N; i++)
        for (int k = 0; k < 8; k++) {
            double x = fixture_metric(mw, (size_t)i, keys[k]), y = fixture_metric(mp, (size_t)i, keys[k]);
            same &= x == y || (isnan(x) && isnan(y));
        }
    CHECK(same, "metrics of the resumed run read as the uninterrupted run's (%zu and %zu records)", json_array_size(mw), json_array_size(mp));
    json_decref(mw), json_decref(mp);
    run_close(&a), run_close(&b2);
}

static int edit_eps(void *ctx, ds_config *cfg) {
    cfg->rms_norm_eps = *(double *)ctx;
    return 0;
}

TEST(tools_can_edit_the_config_before_the_model_is_built) {
    double eps = 1e-5;
    ds_session s;
    ds_session_opts so = {.tool = "test", .config_path = tap_tmp("config.json"), .device = "cpu", .micro_batch = 1, .seq_len = 8,
                          .seed = 1, .edit_config = edit_eps, .edit_ctx = &eps};
    CHECK(ds_session_open(&s, &so) == 0, "open: %s", ds_errmsg());
    CHECK(ds_model_config(s.model)->rms_norm_eps == 1e-5 && s.cfg.rms_norm_eps == 1e-5, "the model and the saved config see the edit");
    ds_session_close(&s);
    eps = -1;
    CHECK(ds_session_open(&s, &so) != 0 && strstr(ds_errmsg(), "rms_norm_eps"), "an invalid edit is refused: %s", ds_errmsg());
    ds_session_close(&s);
}

TEST(bias_update_balances_a_skewed_router) {
    run r;
    run_cfg c = {.steps = 60, .batch = 4, .micro = 4, .T = 32, .lr = "0", .gamma = "0.005", .out = tap_tmp("bal"), .metrics = tap_tmp("bal.jsonl")};
    unlink(tap_tmp("bal.jsonl"));
    CHECK(run_open(&r, &c) == 0, "open");
    /* skew the router: every embedding row gets a common component u = (1, ..., 1), so every hidden
     * state leans along u, and the gate rows of experts 6 and 7 point along u */
    const ds_weights *w = ds_model_weights(r.s.model);
    for (int i = 0; i < 64 * 32; i++) w->embed[i] += 0.01f;
    for (int e = 6; e < 8; e++)
        for (int d = 0; d < 32; d++) w->layer[1].router[e * 32 + d] += 0.05f;
    int sig;
    CHECK(ds_session_run(&r.s, &sig) == 0, "ran");
    json_t *m = fixture_metrics(tap_tmp("bal.jsonl"), "step");
    double v[60];
    for (int s = 0; s < 60; s++)
        v[s] = json_number_value(json_object_get(json_array_get(json_object_get(json_array_get(m, (size_t)s), "balance"), 0), "max_vio"));
    double late = 0;
    for (int s = 50; s < 60; s++) late += v[s] / 10;
    if (getenv("DS_TEST_VERBOSE"))
        for (int s = 0; s < 60; s++) fprintf(stderr, "%.2f%c", v[s], s == 59 ? '\n' : ' ');
    CHECK(v[0] > 2.9, "skewed at the start: MaxVio %.3f (experts 6 and 7 take every token)", v[0]);
    CHECK(late < v[0] / 3, "balanced by the bias alone: MaxVio %.3f over the last 10 steps", late);
    json_decref(m);
    run_close(&r);
}

int main(int argc, char **argv) {
    FILE *f = fopen(tap_tmp("config.json"), "w");
    fputs(tiny_config, f);
    fclose(f);
    ds_log_set_level(DS_LOG_QUIET);
    ds_threads_set(1); /* tests share the machine; OpenMP spin-waits badly under load */
    return tap_run(argc, argv);
}
