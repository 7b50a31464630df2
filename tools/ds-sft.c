/* ds-sft — Supervised fine-tuning on JSONL chat data with loss masking and packing. */
#include "core/cli.h"
#include "core/err.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/threads.h"
#include "tok/chat.h"
#include "ops/ops.h"
#include "train/session.h"
#include "train/sft.h"
#include "train/toolopts.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ds_train_toolopts t;
    const char *data, *tmpl, *on_bad, *gamma, *lambda;
    int epochs, window;
    double lr_min, warmup;
} args;

static char *config_record(const args *a, const ds_session *s, const ds_sft_set *set, const ds_sft_stats *st,
                           const ds_train_opts *to) {
    ds_jsonw w;
    ds_train_record_begin(&w, s, a->t.resume ? a->t.resume : a->t.model, NULL);
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
    ds_jsonw_kint(&w, "batch", a->t.batch);
    ds_jsonw_kint(&w, "micro_batch", to->micro_batch);
    ds_jsonw_kint(&w, "seq_len", to->seq_len);
    ds_train_record_schedules(&w, to);
    ds_train_knum(&w, "alpha", to->balance_alpha);
    ds_train_knum(&w, "weight_decay", to->adamw.weight_decay);
    ds_train_knum(&w, "clip", to->clip_norm);
    ds_train_knum(&w, "val_frac", a->t.val_frac);
    ds_jsonw_kint(&w, "pack_window", a->window);
    return ds_train_record_end(&w, s);
}

static int run(args *a) {
    ds_session s;
    ds_sft_data d = {0};
    char *record = NULL;
    int rc, sig = 0;
    const ds_session_opts so = ds_train_toolopts_session(&a->t, "ds-sft");
    if ((rc = ds_session_open(&s, &so))) goto done;
    const ds_sft_data_opts dopts = {
        .path = a->data, .template_path = a->tmpl, .model = a->t.resume ? a->t.resume : a->t.model,
        .tokenizer_json = s.tokenizer_json, .tokenizer_len = s.tokenizer_len, .vocab = s.cfg.vocab_size,
                .tokenizer_config = s.tokenizer_config, .tokenizer_config_len = s.tokenizer_config_len,
        .eos = s.cfg.eos_token_id, .on_bad = !strcmp(a->on_bad, "reject") ? DS_SFT_REJECT_BAD : DS_SFT_SKIP_BAD,
        .max_warnings = a->t.verbose ? -1 : 10,
        .src = {.seq_len = a->t.seq_len, .seed = (uint64_t)a->t.seed, .val_frac = a->t.val_frac, .window = a->window}};
    if ((rc = ds_sft_data_open(&d, &dopts))) goto done;
    s.chat = &d.tmpl; /* the checkpoints carry the template trained with */
    const ds_sft_set *set = &d.set;
    ds_sft_stats st;
    if ((rc = ds_sft_source_stats(d.train, d.val, a->epochs, &st))) goto done;
    ds_train_opts to;
    ds_train_toolopts_apply(&a->t, &to);
    /* an epoch is a pass over the training conversations; the last step is filled from the next epoch */
    const int batch = a->t.batch;
    if (a->t.steps <= 0) to.total_steps = (st.rows + batch - 1) / batch;
    if (a->t.val_every < 0) to.val_every = (int)(to.total_steps / 10 > 0 ? to.total_steps / 10 : 1);
    char cosine[256];
    snprintf(cosine, sizeof cosine, "cosine:warmup=%.17g%%,end=100%%,min=%.17g", 100 * a->warmup, a->lr_min);
    ds_train_sched_specs sp = {.lr = a->t.lr_schedule ? a->t.lr_schedule : cosine, .lr_peak = a->t.lr, .batch = batch,
                               .gamma = a->gamma, .lambda = a->lambda, .lambda_peak = 0.1};
    if ((rc = ds_train_schedules(&sp, &to))) goto done;
    ds_info("model   %s", a->t.resume ? a->t.resume : a->t.model);
    ds_info("data    %lld conversations (%lld skipped): %lld training, %lld held out; %lld rows of %d per epoch, "
            "%.1f%% of slots filled, %.1f%% of those trained on",
            (long long)set->lines, (long long)set->bad, (long long)st.samples, (long long)st.val_samples,
            (long long)(a->epochs > 0 ? st.rows / a->epochs : st.rows), a->t.seq_len, 100 * st.fill, 100 * st.trained);
    ds_info("train   %lld steps x %d rows (%d epoch%s), micro-batch %d, %d threads", (long long)to.total_steps, batch,
            a->epochs, a->epochs == 1 ? "" : "s", a->t.micro_batch, ds_threads_get());
    record = config_record(a, &s, set, &st, &to);
    if ((rc = ds_session_start(&s, &to, d.train, d.val, &ds_loss_pretrain, record))) goto done;
    rc = ds_session_run(&s, &sig);
done:
    free(record);
    rc = ds_train_tool_exit(&s, rc, sig);
    ds_session_close(&s);
    ds_sft_data_close(&d);
    return rc;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-sft");
    ds_ops_cpu_blas_reexec(argv); /* a wrongly detected OpenBLAS kernel: run again with the right one */
    args a = {.epochs = 2, .window = 8, .lr_min = 1e-6, .warmup = 0, .on_bad = "skip", .gamma = "0", .lambda = "0.1"};
    ds_train_toolopts *t = &a.t;
    ds_train_toolopts_defaults(t);
    t->batch = 8, t->seq_len = 1024, t->lr = 5e-6, t->alpha = 1e-4, t->val_frac = 0.02, t->val_every = -1;
    const ds_opt opts[] = {
        ds_train_toolopt(t, "model", "the checkpoint to fine-tune (directory, .safetensors or '-')"),
        {"data", 0, DS_OPT_STR, &a.data, "FILE|-", "conversations, one JSON object per line: {\"messages\": [{\"role\", \"content\"}, ...]}", 0, 0, 0},
        ds_train_toolopt(t, "out", NULL),
        {"epochs", 0, DS_OPT_INT, &a.epochs, "E", "passes over the training conversations (V3: 2)", 0, 1, 1e6},
        {"steps", 0, DS_OPT_I64, &t->steps, "N", "optimizer steps instead of --epochs (0: from the epochs)", 0, 0, 1e15},
        {"batch", 0, DS_OPT_INT, &t->batch, "B", "packed rows per optimizer step", 0, 1, 1e9},
        {"micro-batch", 0, DS_OPT_INT, &t->micro_batch, "M", "rows per forward/backward (0 = --batch)", 0, 0, 1e9},
        {"seq-len", 0, DS_OPT_INT, &t->seq_len, "T", "tokens per packed row; longer conversations are bad", 0, 2, 1 << 24},
        ds_train_toolopt(t, "lr", "peak learning rate (V3: 5e-6)"),
        {"lr-min", 0, DS_OPT_FLOAT, &a.lr_min, "LR", "learning rate at the end of the cosine decay (V3: 1e-6)", 0, 0, 10},
        {"warmup", 0, DS_OPT_FLOAT, &a.warmup, "F", "share of the steps in linear warmup", 0, 0, 1},
        ds_train_toolopt(t, "lr-schedule", "any schedule instead (docs/DESIGN.md \"Schedules\")"),
        {"chat-template", 0, DS_OPT_STR, &a.tmpl, "FILE", "chat template (default: the built-in DeepSeek-V3 one, share/chat_template)", 0, 0, 0},
        ds_train_toolopt(t, "tokenizer", "tokenizer.json (default: the checkpoint's)"),
        {"on-bad", 0, DS_OPT_CHOICE, &a.on_bad, "WHAT", "a bad conversation (missing role, empty content, too long): skip it with a warning, or reject the data", "skip|reject", 0, 0},
        ds_train_toolopt(t, "val-frac", "share of the conversations held out for validation"),
        {"val-every", 0, DS_OPT_INT, &t->val_every, "N", "validation loss every N steps and at the end (-1: ten times a run, 0: never)", 0, -1, 1e9},
        ds_train_toolopt(t, "val-batches", NULL),
        {"pack-window", 0, DS_OPT_INT, &a.window, "W", "rows open at once while packing (first fit; 1 = in order)", 0, 1, 1 << 16},
        {"lambda", 0, DS_OPT_STR, &a.lambda, "SPEC", "MTP loss weight schedule (on assistant tokens)", 0, 0, 0},
        {"gamma", 0, DS_OPT_STR, &a.gamma, "SPEC", "expert-bias update speed (0 = frozen, as V3 ended pre-training)", 0, 0, 0},
        ds_train_toolopt(t, "alpha", "sequence-wise balance loss weight"),
        ds_train_toolopts_group(t, "weight-decay beta1 beta2 eps clip bf16-moments no-zero bf16 fp8 fp8-accum fp8-promote fp8-attn-out "
                                   "fp8-moe-cache fp8-dispatch"),
        ds_train_toolopt(t, "seed", "seed of the held-out choice and the epoch orders"),
        ds_train_toolopts_group(t, "device threads metrics plot save-every ema"),
        ds_train_toolopts_group(t, "ep ranks-per-node two-hop"),
        ds_train_toolopt(t, "resume", "continue the run saved in DIR (same data and options)"),
        ds_train_toolopt(t, "force", NULL),
        ds_train_toolopts_group(t, "log-every skip-nonfinite profile quiet"),
        ds_train_toolopts_group(t, "pp schedule stages"),
        ds_train_toolopt(t, "verbose", "more detail (every skipped conversation)"),
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
    if (rc < 0) rc = ds_train_tool_start(t, argc, argv, first);
    if (rc >= 0) return rc;
    if (!t->model && !t->resume) return ds_usage_error("-m CKPT is required (the model to fine-tune)");
    if (!a.data) return ds_usage_error("--data FILE is required");
    if (ds_train_tool_check_out(t) || ds_train_tool_check_batch(t)) return 2;
    if (a.lr_min > t->lr) return ds_usage_error("--lr-min %g is above --lr %g", a.lr_min, t->lr);
    return run(&a);
}
