/* ds-rl — GRPO reinforcement learning with rule-based rewards (and reward programs). */
#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/threads.h"
#include "io/checkpoint.h"
#include "ops/ops.h"
#include "rl/rl.h"
#include "rl/rlep.h"
#include "train/session.h"
#include "train/toolopts.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct {
    ds_train_toolopts t;
    const char *ref, *prompts, *eval_prompts, *reward, *reward_cmd, *answer_mode, *loss_avg, *adv_norm, *chat_template, *samples;
    ds_strlist require;
    int group, batch, epochs, mini, max_new, top_k, gen_batch, length_cache, eval_every, eval_samples;
    int chat, mask_truncated;
    double kl, clip, clip_high, temperature, top_p, reward_timeout, eval_temperature;
} A = {.group = 8, .batch = 8, .epochs = 1, .mini = 1, .max_new = 64, .kl = 0.04, .clip = 0.2, .clip_high = -1, .temperature = 1,
       .top_p = 1, .reward_timeout = 300, .answer_mode = "number", .loss_avg = "sequence", .adv_norm = "std"};

static char *config_record(const ds_session *s, const ds_rl *rl, const ds_train_opts *to) {
    ds_jsonw w;
    ds_train_record_begin(&w, s, A.t.resume ? A.t.resume : A.t.model,
                          A.kl > 0 ? (A.ref ? A.ref : A.t.model ? A.t.model : A.t.resume) : "none");
    ds_rl_describe(rl, &w);
    ds_jsonw_kint(&w, "steps", to->total_steps);
    char d[512];
    ds_sched_describe(&to->lr, d, sizeof d);
    ds_info("lr      %s, AdamW betas %g/%g, weight decay %g, gradient clip %g", d, to->adamw.beta1, to->adamw.beta2,
            to->adamw.weight_decay, to->clip_norm);
    ds_jsonw_kstr(&w, "lr", d);
    ds_train_knum(&w, "weight_decay", to->adamw.weight_decay);
    ds_train_knum(&w, "beta1", to->adamw.beta1);
    ds_train_knum(&w, "beta2", to->adamw.beta2);
    ds_train_knum(&w, "clip_grad", to->clip_norm);
    return ds_train_record_end(&w, s);
}

/* The largest micro-batch up to 16 rows that divides a step. */
static int default_micro(int rows) {
    int m = rows < 16 ? rows : 16;
    while (rows % m) m--;
    return m;
}

static int run(void) {
    const char *from = A.t.resume ? A.t.resume : A.t.model;
    ds_session s = {0};
    ds_ckpt *ck = NULL;
    ds_chat_template tpl = {0};
    ds_tokenizer *tok = NULL;
    ds_rl_prompts train = {0}, eval = {0};
    ds_reward **rw = NULL;
    ds_model *ref = NULL;
    ds_rl_ep_rollout *whole = NULL; /* --ep: every expert, for the rollout engine */
    ds_rl *rl = NULL;
    char *record = NULL;
    size_t toklen = 0;
    int nrw = 0, sig = 0, need_answer = 0;
    ds_reward_opts ro = {.answer_mode = !strcmp(A.answer_mode, "boxed") ? DS_ANSWER_BOXED : !strcmp(A.answer_mode, "exact") ? DS_ANSWER_EXACT : DS_ANSWER_NUMBER,
                         .format_require = A.require.n ? A.require.v : NULL, .n_format_require = A.require.n,
                         .length_cache = A.length_cache, .cmd = A.reward_cmd, .cmd_timeout = A.reward_timeout};
    int rc = ds_rewards_create(A.reward, &ro, &rw, &nrw);
    for (int k = 0; !rc && k < nrw; k++) need_answer |= rw[k]->needs_answer;
    /* the prompts fix the sequence length the model is built for: read the config and tokenizer first */
    char latest[4096];
    if (!rc && A.t.resume) rc = ds_ckpt_find_latest(A.t.resume, latest, sizeof latest);
    if (!rc) rc = ds_ckpt_open(&ck, A.t.resume ? latest : from);
    const char *tokjson = ck ? ds_ckpt_tokenizer(ck, &toklen) : NULL;
    if (!rc && !tokjson) rc = ds_fail(DS_ERR, "the checkpoint has no tokenizer.json (prompts and completions are text): %s", from);
    if (!rc) rc = ds_tok_from_json(&tok, tokjson, toklen, from);
    const ds_config *cfg = ck ? ds_ckpt_config(ck) : NULL;
    char *tokcfg = NULL; /* the checkpoint's tokenizer_config.json: its chat template unless --chat-template */
    size_t tokcfg_len = 0;
    if (!rc && ds_ckpt_has_file(ck, "tokenizer_config.json"))
        rc = ds_ckpt_read_file(ck, "tokenizer_config.json", &tokcfg, &tokcfg_len);
    int have_tpl = 1; /* without --chat, only {"messages"} prompts need it */
    if (!rc && A.chat) rc = ds_chat_template_select(&tpl, A.chat_template, tokcfg, tokcfg_len, from);
    else if (!rc) rc = ds_chat_template_select_if_readable(&tpl, A.chat_template, tokcfg, tokcfg_len, from, &have_tpl);
    free(tokcfg);
    ds_rl_prompt_opts po = {.tok = tok, .chat = have_tpl ? &tpl : NULL, .chat_prompts = A.chat, .bos = cfg ? cfg->bos_token_id : -1, .vocab = cfg ? cfg->vocab_size : 0,
                            .need_answer = need_answer};
    if (!rc) rc = ds_rl_prompts_load(&train, A.prompts, &po);
    if (!rc && A.eval_prompts) rc = ds_rl_prompts_load(&eval, A.eval_prompts, &po);
    const int rows = A.group * A.batch / (A.mini > 0 ? A.mini : 1);
    if (!A.t.micro_batch) A.t.micro_batch = default_micro(rows > 0 ? rows : 1);
    const int T = ds_rl_seq_len(&train, A.eval_prompts ? &eval : NULL, A.max_new);
    ds_session_opts so = ds_train_toolopts_session(&A.t, "ds-rl");
    so.pp_whole = 1; /* the rollouts run the whole model on every rank */
    so.plot_path = NULL, so.seq_len = T, so.want_entropy = 1; /* ds-rl draws its own plot */
    if (!rc) rc = ds_session_open(&s, &so);
    if (!rc && have_tpl) s.chat = &tpl; /* the checkpoints carry the template the prompts were rendered with */
    if (!rc && A.kl > 0) {
        /* the reference is the starting policy: after --resume it must come from the original checkpoint */
        const char *ref_dir = A.t.resume ? (A.ref ? A.ref : A.t.model) : A.ref;
        if (A.t.resume && !ref_dir) rc = ds_fail(DS_EUSAGE, "--resume with --kl > 0: give the starting checkpoint with -m or --ref (the reference policy)");
        else rc = ds_rl_reference(&ref, s.model, ref_dir, A.t.micro_batch, T, s.ep.have_layout ? &s.ep : NULL);
    }
    if (!rc && s.ep.have_layout) rc = ds_rl_ep_rollout_create(&whole, s.model, &s.ep);
    if (whole)
        ds_info("memory  rollouts decode with every expert: a whole copy of the weights per rank, %zu B (rl/rlep.h)",
                ds_rl_ep_rollout_bytes(whole));
    ds_rl_opts o;
    ds_rl_opts_defaults(&o);
    o.group = A.group, o.prompts_per_batch = A.batch, o.epochs = A.epochs, o.mini_batches = A.mini, o.micro_batch = A.t.micro_batch;
    o.max_new = A.max_new, o.gen_batch = A.gen_batch, o.eval_every = A.eval_every, o.log_every = A.t.log_every;
    o.eval_samples = A.eval_samples, o.eval_temperature = A.eval_temperature;
    o.sampling = (ds_sampling){.temperature = A.temperature, .top_k = A.top_k, .top_p = A.top_p, .seed = (uint64_t)A.t.seed};
    o.loss = (ds_grpo_opts){.eps_low = A.clip, .eps_high = A.clip_high >= 0 ? A.clip_high : A.clip, .beta = A.kl,
                            .avg = strcmp(A.loss_avg, "token") ? DS_GRPO_AVG_SEQUENCE : DS_GRPO_AVG_TOKEN};
    o.scale_std = !strcmp(A.adv_norm, "std"), o.mask_truncated = A.mask_truncated, o.seed = (uint64_t)A.t.seed;
    o.comm = s.have_comm ? &s.comm : NULL;
    if (whole) o.rollout = ds_rl_ep_rollout_model(whole), o.sync_rollout = ds_rl_ep_rollout_sync, o.sync_ctx = whole;
    if (!rc) rc = ds_rl_create(&rl, &o, s.model, ref, tok, &train, A.eval_prompts ? &eval : NULL, rw, nrw);
    FILE *samples = NULL;
    if (ds_session_rank(&s) != 0) A.samples = NULL; /* every rank draws the same completions: rank 0 writes them */
    if (!rc && A.samples && !(samples = ds_is_stdio(A.samples) ? stdout : fopen(A.samples, A.t.resume ? "a" : "w")))
        rc = ds_fail(DS_ERR, "cannot write: %s: %s", strerror(errno), A.samples);
    if (!rc && samples) ds_rl_set_samples(rl, samples, A.samples);
    ds_train_opts to;
    ds_train_toolopts_apply(&A.t, &to);
    to.seq_len = T, to.log_every = 0; /* ds-rl prints its own line per step */
    /* routing biases stay as SFT left them (gamma 0); MTP is not part of the policy (lambda 0) */
    const ds_train_sched_specs sp = {.lr = A.t.lr_schedule, .lr_peak = A.t.lr, .batch = rows};
    if (!rc) rc = ds_train_schedules(&sp, &to);
    if (!rc) {
        ds_train_hooks h = {0};
        ds_rl_hooks(rl, &h, A.t.metrics ? &s.metrics : NULL, A.t.steps);
        s.o.step_record = h.step_record, s.o.after_step = h.after_step, s.o.step_ctx = h.step_ctx;
        if (o.comm) s.o.micro_done = ds_rl_micro_done;
        char counts[128];
        ds_param_counts pc;
        ds_config_counts(&s.cfg, &pc);
        ds_param_counts_format(&pc, counts, sizeof counts);
        ds_info("model   %s (%s), %d thread%s", from, counts, ds_threads_get(), ds_threads_get() == 1 ? "" : "s");
        record = config_record(&s, rl, &to);
        rc = ds_session_start(&s, &to, ds_rl_source(rl), NULL, ds_rl_loss(rl), record);
    }
    if (!rc && s.resumed_step < 0) rc = ds_rl_evaluate_at(rl, 0);
    if (!rc) rc = ds_session_run(&s, &sig);
    if (rc == DS_ERR && rl && ds_rl_rollout_failed(rl) && s.trainer && ds_trainer_steps_done(s.trainer) > 0) {
        /* nothing of the failed step was applied: keep what the completed steps learned */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ds_errmsg());
        const int64_t done = ds_trainer_steps_done(s.trainer);
        int saved = !ds_session_save(&s, A.t.out);
        ds_fail(rc, "%s", msg); /* the rollout's error, not the save's */
        if (saved) ds_hint("step %lld is saved in %s: continue with --resume %s", (long long)done, A.t.out, A.t.out);
    }
    if (rl && A.t.plot && (rc == 0 || rc == DS_EDIVERGED) && ds_rl_plot(rl, A.t.plot, "ds-rl: GRPO")) ds_warn("%s", ds_errmsg());
    free(record);
    rc = ds_train_tool_exit(&s, rc, sig);
    ds_rl_free(rl);
    if (samples && samples != stdout) fclose(samples);
    ds_model_free(ref);
    ds_rl_ep_rollout_free(whole);
    ds_session_close(&s);
    ds_rewards_free(rw, nrw);
    ds_rl_prompts_free(&train);
    ds_rl_prompts_free(&eval);
    ds_tok_free(tok);
    ds_chat_template_free(&tpl);
    ds_ckpt_close(ck);
    return rc;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-rl");
    ds_ops_cpu_blas_reexec(argv); /* a wrongly detected OpenBLAS kernel: run again with the right one */
    ds_train_toolopts *t = &A.t;
    ds_train_toolopts_defaults(t);
    t->lr = 1e-6, t->weight_decay = 0, t->beta2 = 0.999;
    const ds_opt opts[] = {
        ds_train_toolopt(t, "model", "the starting policy (directory or .safetensors); also the frozen reference"),
        {"prompts", 0, DS_OPT_STR, &A.prompts, "FILE|-", "prompt JSONL: {\"prompt\"|\"messages\": ..., \"answer\": ...}"},
        ds_train_toolopt(t, "out", NULL),
        {"steps", 0, DS_OPT_I64, &t->steps, "N", "optimizer steps (= rollout batches with the default 1 epoch x 1 mini-batch)", 0, 1, 1e15},
        {"group", 0, DS_OPT_INT, &A.group, "G", "completions sampled per prompt", 0, 2, 1e6},
        {"batch", 0, DS_OPT_INT, &A.batch, "P", "prompts per rollout batch (P x G rows)", 0, 1, 1e6},
        {"reward", 0, DS_OPT_STR, &A.reward, "NAME[:W],...", "answer | format | length | cmd, weighted and summed (default: answer)"},
        {"reward-cmd", 0, DS_OPT_STR, &A.reward_cmd, "CMD", "reward program: JSONL in on stdin, one number per line out"},
        {"reward-timeout", 0, DS_OPT_FLOAT, &A.reward_timeout, "S", "seconds the program may take per batch", 0, 0.001, 1e7},
        {"answer-mode", 0, DS_OPT_CHOICE, &A.answer_mode, "MODE", "what the answer reward compares", "number|boxed|exact"},
        {"format-require", 0, DS_OPT_STRLIST, &A.require, "STR", "a string the format reward requires, in order (default R1's tags)"},
        {"length-cache", 0, DS_OPT_INT, &A.length_cache, "N", "length reward: penalty ramp over the last N tokens (0 = max-new/5)", 0, 0, 1e9},
        {"kl", 0, DS_OPT_FLOAT, &A.kl, "BETA", "weight of the k3 KL penalty to the reference (0 = no reference model)", 0, 0, 1e6},
        {"clip", 0, DS_OPT_FLOAT, &A.clip, "EPS", "ratio clip: [1-EPS, 1+EPS]", 0, 0, 0.999},
        {"clip-high", 0, DS_OPT_FLOAT, &A.clip_high, "EPS", "upper clip 1+EPS when it differs (DAPO clip-higher; -1 = --clip)", 0, -1, 1e6},
        {"epochs-per-batch", 0, DS_OPT_INT, &A.epochs, "MU", "optimization passes over each rollout batch", 0, 1, 1e6},
        {"mini-batches", 0, DS_OPT_INT, &A.mini, "K", "optimizer steps per pass (each of P*G/K rows)", 0, 1, 1e6},
        {"micro-batch", 0, DS_OPT_INT, &t->micro_batch, "M", "rows per forward/backward (0 = the largest divisor of a step up to 16)", 0, 0, 1e6},
        {"loss-avg", 0, DS_OPT_CHOICE, &A.loss_avg, "HOW", "token weights: per sequence then over sequences, or over all tokens", "sequence|token"},
        {"adv-norm", 0, DS_OPT_CHOICE, &A.adv_norm, "HOW", "advantages (r - mean)/std (GRPO) or r - mean (Dr. GRPO)", "std|none"},
        {"mask-truncated", 0, DS_OPT_FLAG, &A.mask_truncated, NULL, "completions cut by --max-new take no part in the loss"},
        {"temperature", 0, DS_OPT_FLOAT, &A.temperature, "T", "sampling temperature of the rollouts", 0, 1e-6, 1e6},
        {"top-k", 0, DS_OPT_INT, &A.top_k, "K", "sample from the K most likely tokens; 0 = all", 0, 0, 1e9},
        {"top-p", 0, DS_OPT_FLOAT, &A.top_p, "P", "nucleus sampling mass", 0, 1e-9, 1},
        {"max-new", 0, DS_OPT_INT, &A.max_new, "N", "new tokens per completion (longer ones are cut and marked)", 0, 1, 1e6},
        {"gen-batch", 0, DS_OPT_INT, &A.gen_batch, "N", "sequences decoded together (0 = a batch's, up to 64)", 0, 0, 1024},
        {"chat", 0, DS_OPT_FLAG, &A.chat, NULL, "render plain {\"prompt\"} records as a user turn of the chat template"},
        {"chat-template", 0, DS_OPT_STR, &A.chat_template, "FILE", "chat template (default: built in, share/chat_template)"},
        {"eval-prompts", 0, DS_OPT_STR, &A.eval_prompts, "FILE", "held-out prompts: greedy accuracy at the start, every --eval-every, at the end"},
        {"eval-every", 0, DS_OPT_INT, &A.eval_every, "N", "evaluate every N steps (0 = start and end only)", 0, 0, 1e9},
        {"eval-samples", 0, DS_OPT_INT, &A.eval_samples, "K", "also K sampled completions per eval prompt (accuracy at --temperature)", 0, 0, 1e6},
        {"eval-temperature", 0, DS_OPT_FLOAT, &A.eval_temperature, "T", "temperature of those samples (0 = --temperature)", 0, 0, 1e6},
        ds_train_toolopt(t, "lr", "learning rate (DeepSeekMath's GRPO: 1e-6)"),
        ds_train_toolopt(t, "lr-schedule", "schedule as in ds-pretrain (default: constant --lr)"),
        ds_train_toolopts_group(t, "weight-decay beta1"),
        ds_train_toolopt(t, "beta2", "AdamW beta2 (pretraining's 0.95 follows noisy RL gradients too closely)"),
        ds_train_toolopt(t, "clip-grad", NULL),
        {"ref", 0, DS_OPT_STR, &A.ref, "CKPT", "reference policy (default: -m; needed with --resume)"},
        ds_train_toolopt(t, "seed", "seed of the prompt order and the sampling"),
        ds_train_toolopt(t, "threads", NULL),
        ds_train_toolopt(t, "metrics", "one JSON object per step and per evaluation ('-' = stdout)"),
        ds_train_toolopt(t, "plot", "draw the reward and accuracy curves at the end"),
        {"samples", 0, DS_OPT_STR, &A.samples, "FILE.jsonl", "write every completion with its rewards and advantage ('-' = stdout)"},
        ds_train_toolopts_group(t, "save-every ema no-zero resume force log-every"),
        ds_train_toolopt(t, "device", "where to train"),
        ds_train_toolopt(t, "fp8", DS_TRAIN_FP8_HELP "; rollouts stay fp32"),
        ds_train_toolopts_group(t, "fp8-accum fp8-promote fp8-attn-out fp8-moe-cache fp8-dispatch bf16"),
        ds_train_toolopt(t, "ep", "expert parallelism (mpirun): groups of N consecutive ranks split the routed experts of the policy "
                                  "and the reference; rollouts decode with a whole copy of the policy gathered after each step"),
        ds_train_toolopts_group(t, "ranks-per-node two-hop"),
        ds_train_toolopts_group(t, "pp schedule stages"),
        ds_train_toolopts_group(t, "quiet verbose"),
        {0},
    };
    const ds_cli cli = {
        .name = "ds-rl",
        .usage = "-m CKPT --prompts FILE -o OUT --steps N [OPTIONS]",
        .summary = "Reinforcement learning with GRPO, as DeepSeek-V3 and R1 did it: for each prompt sample --group "
                   "completions from the current policy (the ds-generate engine, on the weights being trained), score "
                   "them with rule-based rewards or a reward program, normalise rewards within each group, and "
                   "maximise the clipped surrogate with a KL penalty to the frozen starting policy. One line per step; "
                   "metrics named as in TRL/verl (docs/METRICS.md). Exit codes: 0 done, 1 error (a failing reward "
                   "program saves the last completed step first), 2 usage, 3 diverged, 130/143 stopped after saving.",
        .example = "  awk -f share/demo/tasks.awk -v kind=prompts -v n=4000 -v seed=1 > train.jsonl\n"
                   "  awk -f share/demo/tasks.awk -v kind=prompts -v n=300 -v seed=2 > heldout.jsonl\n"
                   "  ds-rl -m ckpt/sft --prompts train.jsonl --eval-prompts heldout.jsonl --eval-samples 4 -o ckpt/rl \\\n"
                   "      --steps 100 --group 8 --batch 16 --max-new 24 --lr 1e-4 --lr-schedule 'linear:0@0,1e-4@20' \\\n"
                   "      --metrics rl.jsonl --plot rl.png   # share/demo/rl_arith.sh runs it end to end\n"
                   "  ds-rl -m ckpt/sft --prompts p.jsonl -o ckpt/rl-own --steps 50 --group 8 --max-new 24 --reward-cmd 'python3 score.py'",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc < 0) rc = ds_train_tool_start(t, argc, argv, first);
    if (rc >= 0) return rc;
    if (!A.t.model && !A.t.resume) return ds_usage_error("-m CKPT is required (the starting policy)");
    if (!A.prompts) return ds_usage_error("--prompts FILE is required");
    if (ds_train_tool_check_out(t)) return 2;
    if (A.t.model && ds_is_stdio(A.t.model))
        return ds_usage_error("%s -: ds-rl reads the checkpoint twice: give a directory or a .safetensors file", ds_cli_opt(&A.t.model, "-m"));
    if (!A.t.steps) return ds_usage_error("--steps is required");
    if (A.eval_prompts && A.prompts && !strcmp(A.eval_prompts, A.prompts) && ds_is_stdio(A.prompts))
        return ds_usage_error("--prompts and --eval-prompts cannot both read stdin");
    if ((int64_t)A.group * A.batch > (1 << 24)) return ds_usage_error("--group x --batch: too many rollouts per batch");
    rc = run();
    ds_strlist_free(&A.require);
    return rc;
}
