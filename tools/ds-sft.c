/* ds-sft — Supervised fine-tuning on JSONL chat data with loss masking and packing. */
#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/threads.h"
#include "tok/chat.h"
#include "train/session.h"
#include "train/sft.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char EOS[] = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";

typedef struct {
    const char *model, *data, *out, *resume, *tokenizer, *tmpl, *metrics, *plot, *on_bad, *lr_sched, *gamma, *lambda, *device;
    int epochs, batch, micro, seq_len, window, threads, save_every, val_every, val_batches, log_every, bf16, fp8, skip, quiet,
        verbose;
    int64_t steps, seed;
    double lr, lr_min, warmup, alpha, wd, beta1, beta2, eps, clip, val_frac;
} args;

static char *config_record(const args *a, const ds_session *s, const ds_sft_set *set, const ds_sft_stats *st,
                           const ds_train_opts *to) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_key(&w, "config");
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "tool", "ds-sft");
    ds_jsonw_kstr(&w, "version", ds_version_string);
    ds_jsonw_kstr(&w, "model", a->resume ? a->resume : a->model);
    ds_param_counts pc;
    ds_config_counts(&s->cfg, &pc);
    ds_param_counts_jsonw(&pc, &w);
    ds_jsonw_kstr(&w, "data", a->data);
    ds_jsonw_kstr(&w, "chat_template", a->tmpl ? a->tmpl : "built-in");
    ds_jsonw_kint(&w, "conversations", set->lines);
    ds_jsonw_kint(&w, "skipped", set->bad);
    ds_jsonw_kint(&w, "train_samples", st->samples);
    ds_jsonw_kint(&w, "val_samples", st->val_samples);
    ds_jsonw_kint(&w, "val_rows", st->val_rows);
    ds_jsonw_kint(&w, "rows", st->rows);
    ds_train_knum(&w, "packing_fill", st->fill);
    ds_train_knum(&w, "trained_share", st->trained);
    ds_jsonw_kint(&w, "epochs", a->epochs);
    ds_jsonw_kint(&w, "steps", to->total_steps);
    ds_jsonw_kint(&w, "batch", a->batch);
    ds_jsonw_kint(&w, "micro_batch", to->micro_batch);
    ds_jsonw_kint(&w, "seq_len", to->seq_len);
    char d[512];
    const ds_sched *sc[4] = {&to->lr, &to->batch, &to->gamma, &to->lambda};
    static const char *names[4] = {"lr", "batch", "gamma", "lambda"};
    for (int k = 0; k < 4; k++) {
        ds_sched_describe(sc[k], d, sizeof d);
        ds_jsonw_kstr(&w, names[k], d);
        ds_info("%-7s %s", names[k], d);
    }
    ds_train_knum(&w, "alpha", to->balance_alpha);
    ds_train_knum(&w, "weight_decay", to->adamw.weight_decay);
    ds_train_knum(&w, "clip", to->clip_norm);
    ds_train_knum(&w, "val_frac", a->val_frac);
    ds_jsonw_kint(&w, "pack_window", a->window);
    ds_jsonw_kint(&w, "seed", a->seed);
    ds_jsonw_kint(&w, "threads", ds_threads_get());
    ds_jsonw_kbool(&w, "fp8", a->fp8);
    if (s->resumed_step >= 0) ds_jsonw_kint(&w, "resumed_from_step", s->resumed_step);
    ds_jsonw_obj_end(&w);
    ds_jsonw_obj_end(&w);
    char *out = strdup(w.buf);
    ds_jsonw_free(&w);
    return out;
}

static int schedules(const args *a, ds_train_opts *to) {
    char spec[256], b[32];
    if (a->lr_sched) snprintf(spec, sizeof spec, "%s", a->lr_sched);
    else snprintf(spec, sizeof spec, "cosine:warmup=%.17g%%,end=100%%,min=%.17g", 100 * a->warmup, a->lr_min);
    snprintf(b, sizeof b, "%d", a->batch);
    DS_TRY(ds_sched_parse(&to->lr, spec, a->lr, to->total_steps, "--lr-schedule"));
    DS_TRY(ds_sched_parse(&to->batch, b, a->batch, to->total_steps, "--batch"));
    DS_TRY(ds_sched_parse(&to->gamma, a->gamma, 0, to->total_steps, "--gamma"));
    return ds_sched_parse(&to->lambda, a->lambda, 0.1, to->total_steps, "--lambda");
}

static int run(args *a) {
    ds_session s;
    ds_sft_set set = {0};
    ds_chat_template tm = {0};
    ds_tokenizer *tok = NULL;
    ds_data_source *train = NULL, *val = NULL;
    char *record = NULL;
    int rc, sig = 0, have_tm = 0;
    ds_session_opts so = {.tool = "ds-sft", .model_path = a->model, .resume = a->resume, .out_dir = a->out,
                          .tokenizer_path = a->tokenizer, .metrics_path = a->metrics, .plot_path = a->plot, .device = a->device, .fp8 = a->fp8,
                          .balance_alpha = a->alpha, .micro_batch = a->micro, .seq_len = a->seq_len, .seed = (uint64_t)a->seed};
    if ((rc = ds_session_open(&s, &so))) goto done;
    if (!s.tokenizer_json) {
        rc = ds_fail(DS_ERR, "no tokenizer: the checkpoint carries no tokenizer.json: %s", a->resume ? a->resume : a->model);
        ds_hint("give the tokenizer the model was trained with: --tokenizer FILE");
        goto done;
    }
    if ((rc = ds_tok_from_json(&tok, s.tokenizer_json, s.tokenizer_len, "tokenizer.json"))) goto done;
    if ((rc = ds_chat_template_load(&tm, a->tmpl))) goto done;
    have_tm = 1;
    ds_sft_load_opts lo = {.tok = tok, .tmpl = &tm, .seq_len = a->seq_len, .max_warnings = a->verbose ? -1 : 10,
                           .on_bad = !strcmp(a->on_bad, "reject") ? DS_SFT_REJECT_BAD : DS_SFT_SKIP_BAD, .vocab = s.cfg.vocab_size};
    if ((rc = ds_sft_load(&set, a->data, &lo))) {
        if (lo.on_bad == DS_SFT_REJECT_BAD) ds_hint("fix the line, or pass --on-bad skip to leave bad conversations out");
        goto done;
    }
    if (set.n == 0) {
        rc = ds_fail(DS_ERR, "no usable conversations (%lld read, %lld skipped): %s", (long long)set.lines, (long long)set.bad, a->data);
        goto done;
    }
    const int64_t eos = ds_tok_token_id(tok, EOS);
    ds_sft_source_opts po = {.seq_len = a->seq_len, .seed = (uint64_t)a->seed, .val_frac = a->val_frac, .window = a->window,
                             .pad_id = (int32_t)(eos >= 0 ? eos : s.cfg.eos_token_id >= 0 ? s.cfg.eos_token_id : 0)};
    if ((rc = ds_sft_source_create(&train, &val, &set, &po))) goto done;
    ds_sft_stats st;
    if ((rc = ds_sft_source_stats(train, val, a->epochs, &st))) goto done;
    ds_train_opts to;
    ds_train_opts_defaults(&to);
    /* an epoch is a pass over the training conversations; the last step is filled from the next epoch */
    to.total_steps = a->steps > 0 ? a->steps : (st.rows + a->batch - 1) / a->batch;
    to.seq_len = a->seq_len, to.micro_batch = a->micro, to.seed = (uint64_t)a->seed;
    to.adamw.beta1 = a->beta1, to.adamw.beta2 = a->beta2, to.adamw.eps = a->eps, to.adamw.weight_decay = a->wd;
    to.adamw.bf16_moments = a->bf16, to.clip_norm = a->clip, to.balance_alpha = a->alpha, to.skip_nonfinite = a->skip;
    to.val_batches = a->val_batches, to.save_every = a->save_every, to.log_every = a->log_every;
    to.val_every = a->val_every >= 0 ? a->val_every : (int)(to.total_steps / 10 > 0 ? to.total_steps / 10 : 1);
    if ((rc = schedules(a, &to))) goto done;
    ds_info("model   %s", a->resume ? a->resume : a->model);
    ds_info("data    %lld conversations (%lld skipped): %lld training, %lld held out; %lld rows of %d per epoch, "
            "%.1f%% of slots filled, %.1f%% of those trained on",
            (long long)set.lines, (long long)set.bad, (long long)st.samples, (long long)st.val_samples,
            (long long)(a->epochs > 0 ? st.rows / a->epochs : st.rows), a->seq_len, 100 * st.fill, 100 * st.trained);
    ds_info("train   %lld steps x %d rows (%d epoch%s), micro-batch %d, %d threads", (long long)to.total_steps, a->batch,
            a->epochs, a->epochs == 1 ? "" : "s", a->micro, ds_threads_get());
    record = config_record(a, &s, &set, &st, &to);
    if ((rc = ds_session_start(&s, &to, train, val, &ds_loss_pretrain, record))) goto done;
    rc = ds_session_run(&s, &sig);
done:
    free(record);
    if (rc == DS_EUSAGE) rc = ds_usage_error("%s", ds_errmsg());
    else if (rc) ds_tool_report(rc);
    ds_session_close(&s);
    ds_data_source_free(train);
    ds_data_source_free(val);
    ds_sft_set_free(&set);
    if (have_tm) ds_chat_template_free(&tm);
    ds_tok_free(tok);
    return rc ? (rc == DS_EDIVERGED ? 3 : rc == DS_EUSAGE ? 2 : 1) : sig ? 128 + sig : 0;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-sft");
    args a = {.device = "cpu", .epochs = 2, .batch = 8, .seq_len = 1024, .window = 8, .lr = 5e-6, .lr_min = 1e-6, .warmup = 0, .on_bad = "skip",
              .gamma = "0", .lambda = "0.1", .alpha = 1e-4, .wd = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .clip = 1.0,
              .val_frac = 0.02, .val_every = -1, .val_batches = 8, .log_every = 1, .seed = 1};
    const ds_opt opts[] = {
        {"model", 'm', DS_OPT_STR, &a.model, "CKPT", "the checkpoint to fine-tune (directory, .safetensors or '-')", 0, 0, 0},
        {"data", 0, DS_OPT_STR, &a.data, "FILE|-", "conversations, one JSON object per line: {\"messages\": [{\"role\", \"content\"}, ...]}", 0, 0, 0},
        {"out", 'o', DS_OPT_STR, &a.out, "OUT", "checkpoint directory (replaced atomically at every save)", 0, 0, 0},
        {"epochs", 0, DS_OPT_INT, &a.epochs, "E", "passes over the training conversations (V3: 2)", 0, 1, 1e6},
        {"steps", 0, DS_OPT_I64, &a.steps, "N", "optimizer steps instead of --epochs (0: from the epochs)", 0, 0, 1e15},
        {"batch", 0, DS_OPT_INT, &a.batch, "B", "packed rows per optimizer step", 0, 1, 1e9},
        {"micro-batch", 0, DS_OPT_INT, &a.micro, "M", "rows per forward/backward (0 = --batch)", 0, 0, 1e9},
        {"seq-len", 0, DS_OPT_INT, &a.seq_len, "T", "tokens per packed row; longer conversations are bad", 0, 2, 1 << 24},
        {"lr", 0, DS_OPT_FLOAT, &a.lr, "LR", "peak learning rate (V3: 5e-6)", 0, 0, 10},
        {"lr-min", 0, DS_OPT_FLOAT, &a.lr_min, "LR", "learning rate at the end of the cosine decay (V3: 1e-6)", 0, 0, 10},
        {"warmup", 0, DS_OPT_FLOAT, &a.warmup, "F", "share of the steps in linear warmup", 0, 0, 1},
        {"lr-schedule", 0, DS_OPT_STR, &a.lr_sched, "SPEC", "any schedule instead (docs/DESIGN.md \"Schedules\")", 0, 0, 0},
        {"chat-template", 0, DS_OPT_STR, &a.tmpl, "FILE", "chat template (default: the built-in DeepSeek-V3 one, share/chat_template)", 0, 0, 0},
        {"tokenizer", 0, DS_OPT_STR, &a.tokenizer, "FILE", "tokenizer.json (default: the checkpoint's)", 0, 0, 0},
        {"on-bad", 0, DS_OPT_CHOICE, &a.on_bad, "WHAT", "a bad conversation (missing role, empty content, too long): skip it with a warning, or reject the data", "skip|reject", 0, 0},
        {"val-frac", 0, DS_OPT_FLOAT, &a.val_frac, "F", "share of the conversations held out for validation", 0, 0, 0.5},
        {"val-every", 0, DS_OPT_INT, &a.val_every, "N", "validation loss every N steps and at the end (-1: ten times a run, 0: never)", 0, -1, 1e9},
        {"val-batches", 0, DS_OPT_INT, &a.val_batches, "N", "micro-batches per validation", 0, 1, 1e9},
        {"pack-window", 0, DS_OPT_INT, &a.window, "W", "rows open at once while packing (first fit; 1 = in order)", 0, 1, 1 << 16},
        {"lambda", 0, DS_OPT_STR, &a.lambda, "SPEC", "MTP loss weight schedule (on assistant tokens)", 0, 0, 0},
        {"gamma", 0, DS_OPT_STR, &a.gamma, "SPEC", "expert-bias update speed (0 = frozen, as V3 ended pre-training)", 0, 0, 0},
        {"alpha", 0, DS_OPT_FLOAT, &a.alpha, "A", "sequence-wise balance loss weight", 0, 0, 1},
        {"weight-decay", 0, DS_OPT_FLOAT, &a.wd, "WD", "AdamW weight decay", 0, 0, 10},
        {"beta1", 0, DS_OPT_FLOAT, &a.beta1, "B1", "AdamW beta1", 0, 0, 1},
        {"beta2", 0, DS_OPT_FLOAT, &a.beta2, "B2", "AdamW beta2", 0, 0, 1},
        {"eps", 0, DS_OPT_FLOAT, &a.eps, "EPS", "AdamW epsilon", 0, 0, 1},
        {"clip", 0, DS_OPT_FLOAT, &a.clip, "NORM", "clip gradients to this global norm (0 = off)", 0, 0, 1e9},
        {"bf16-moments", 0, DS_OPT_FLAG, &a.bf16, NULL, "keep AdamW moments in bf16", 0, 0, 0},
        {"fp8", 0, DS_OPT_FLAG, &a.fp8, NULL, "every block Linear (attention projections, FFN, experts) in FP8: E4M3 with 1x128/128x128 scales, V3's recipe", 0, 0, 0},
        {"seed", 0, DS_OPT_I64, &a.seed, "S", "seed of the held-out choice and the epoch orders", 0, 0, 9.2e18},
        {"device", 0, DS_OPT_CHOICE, &a.device, "DEV", "where to train (cuda: one GPU, device 0)", "cpu|cuda", 0, 0},
        {"threads", 0, DS_OPT_INT, &a.threads, "N", "CPU threads (0 = all cores)", 0, 0, 4096},
        {"metrics", 0, DS_OPT_STR, &a.metrics, "FILE.jsonl", "one JSON object per step ('-' = stdout)", 0, 0, 0},
        {"plot", 0, DS_OPT_STR, &a.plot, "FILE.png", "draw the loss curves at the end", 0, 0, 0},
        {"save-every", 0, DS_OPT_INT, &a.save_every, "N", "checkpoint every N steps (and always at the end)", 0, 0, 1e9},
        {"resume", 0, DS_OPT_STR, &a.resume, "DIR", "continue the run saved in DIR (same data and options)", 0, 0, 0},
        {"log-every", 0, DS_OPT_INT, &a.log_every, "N", "print a line every N steps (0 = none)", 0, 0, 1e9},
        {"skip-nonfinite", 0, DS_OPT_FLAG, &a.skip, NULL, "skip a step with NaN/Inf instead of stopping with exit 3", 0, 0, 0},
        {"quiet", 'q', DS_OPT_FLAG, &a.quiet, NULL, "only errors and warnings", 0, 0, 0},
        {"verbose", 'v', DS_OPT_FLAG, &a.verbose, NULL, "more detail (every skipped conversation)", 0, 0, 0},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-sft",
        .usage = "-m CKPT --data chat.jsonl -o OUT [--epochs E] [--lr LR] [--lr-min LR] [--seq-len T] [--batch B] [OPTIONS]",
        .summary = "Supervised fine-tuning as DeepSeek-V3 did it: conversations rendered through the chat template, "
                   "loss on assistant tokens only, several conversations packed per row with sample masking "
                   "(attention never crosses conversations, positions restart), cosine learning rate over the "
                   "epochs, validation loss on held-out conversations. Bad conversations are reported with their "
                   "line number and skipped or rejected. Exit codes: 0 done, 1 error, 2 usage, 3 diverged, "
                   "130/143 stopped by a signal after saving.",
        .example = "  ds-sft -m ckpt/long --data chat.jsonl -o ckpt/sft --epochs 2 --lr 5e-6 --lr-min 1e-6 --seq-len 4096\n"
                   "  ds-generate -m ckpt/sft --chat --prompt 'What is 2+2?'",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (first < argc) return ds_usage_error("unexpected argument '%s'", argv[first]);
    if (a.quiet) ds_log_set_level(DS_LOG_QUIET);
    if (a.verbose) ds_log_set_level(DS_LOG_VERBOSE);
    if (!a.model && !a.resume) return ds_usage_error("-m CKPT is required (the model to fine-tune)");
    if (!a.data) return ds_usage_error("--data FILE is required");
    if (!a.out) return ds_usage_error("-o OUT is required");
    if (ds_is_stdio(a.out)) return ds_usage_error("-o: checkpoints are directories, not '-'");
    if (!a.micro) a.micro = a.batch;
    if (a.batch % a.micro) return ds_usage_error("--batch %d is not a multiple of --micro-batch %d", a.batch, a.micro);
    if (a.lr_min > a.lr) return ds_usage_error("--lr-min %g is above --lr %g", a.lr_min, a.lr);
    ds_threads_set(a.threads);
    return run(&a);
}
