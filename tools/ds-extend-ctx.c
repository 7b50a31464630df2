/* ds-extend-ctx — Extend a checkpoint's context with YaRN and continue training at the longer length. */
#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/threads.h"
#include "infer/passkey.h"
#include "io/checkpoint.h"
#include "ops/ops.h"
#include "train/extend.h"
#include "train/session.h"
#include "train/sft.h"
#include "train/shards.h"
#include "train/toolopts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ds_train_toolopts t;
    const char *config, *lens, *depths, *png, *text_path, *chat, *chat_template, *on_bad;
    ds_passkey_text text; /* --eval-text, when given */
    double lv[16], dv[16]; /* parsed --eval-lengths / --eval-depths */
    int nl, nd;
    ds_strlist data;
    ds_extend_opts eo;
    int print_rope, eval_only, no_eval, trials, docs, buckets, chunk;
} args;

static int edit_config(void *ctx, ds_config *c) {
    const args *a = ctx;
    if (a->t.resume) return 0; /* a resumed phase keeps its checkpoint's config */
    if (a->eval_only && a->eo.factor == 0 && !c->rope_scaling.enabled) return 0; /* evaluate as it is */
    return ds_extend_config(c, &a->eo);
}

static int print_rope(const ds_config *c) {
    char *cfg = NULL;
    DS_TRY(ds_config_to_json(c, &cfg));
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_key(&w, "config");
    ds_jsonw_raw(&w, cfg);
    ds_jsonw_key(&w, "rope");
    int rc = ds_extend_rope_json(c, &w);
    ds_jsonw_obj_end(&w);
    if (!rc) rc = ds_jsonw_emit_line(&w, stdout, "<stdout>");
    ds_jsonw_free(&w);
    free(cfg);
    return rc;
}

/* "4K,8K,32768" (K = 1024) or "0,0.25,1" into v[*count] (at most max entries) */
static int parse_list(const char *s, double *v, int *count, int max, int lengths, const char *opt) {
    int n = 0;
    for (const char *p = s; *p;) {
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        if (end == p || errno) return ds_fail(DS_EUSAGE, "%s: not a number list: '%s'", opt, s);
        if (lengths && (*end == 'K' || *end == 'k')) x *= 1024, end++;
        if (n == max) return ds_fail(DS_EUSAGE, "%s: more than %d entries", opt, max);
        v[n++] = x;
        if (*end == ',') end++;
        else if (*end) return ds_fail(DS_EUSAGE, "%s: unexpected '%s'", opt, end);
        p = end;
    }
    *count = n;
    return n ? 0 : ds_fail(DS_EUSAGE, "%s: empty list", opt);
}


/* Passkey grid and log-likelihood by position on the session's model; the tables go to stdout. */
static int evaluate(const args *a, ds_session *s, ds_token_reader *rd, int have_data) {
    const ds_config *c = &s->cfg;
    int lens[16], nl = a->nl, rc = 0;
    for (int i = 0; i < nl; i++) lens[i] = (int)a->lv[i];
    if (!nl) { /* the original length doubled up to the training length */
        const int L0 = c->rope_scaling.enabled ? c->rope_scaling.original_max_position_embeddings : a->t.seq_len;
        for (int L = L0 < a->t.seq_len ? L0 : a->t.seq_len; L <= a->t.seq_len && nl < 8; L *= 2) lens[nl++] = L;
        if (lens[nl - 1] != a->t.seq_len) lens[nl++] = a->t.seq_len;
    }
    ds_tokenizer *tok = NULL;
    if (s->tokenizer_json) rc = ds_tok_from_json(&tok, s->tokenizer_json, s->tokenizer_len, "tokenizer.json");
    /* position log-likelihood on the data's last documents (the held-out tail) */
    int n_docs = have_data ? a->docs : 0;
    if (n_docs > 0 && rd->n_tokens < (int64_t)n_docs * a->t.seq_len) {
        ds_warn("log-likelihood by position: the data holds fewer than %d x %d tokens; skipped", n_docs, a->t.seq_len);
        n_docs = 0;
    }
    int32_t *docs = n_docs ? malloc((size_t)n_docs * a->t.seq_len * sizeof *docs) : NULL;
    if (!rc && n_docs) rc = docs ? rd->read(rd, rd->n_tokens - (int64_t)n_docs * a->t.seq_len, (int64_t)n_docs * a->t.seq_len, docs)
                                 : ds_fail(DS_ERR, "out of memory");
    const float **bias = calloc((size_t)(c->num_hidden_layers + c->num_nextn_predict_layers + 1), sizeof *bias);
    if (!rc && !bias) rc = ds_fail(DS_ERR, "out of memory");
    char *text = NULL;
    if (!rc) {
        ds_infer_model im;
        ds_infer_model_of(s->model, &im, bias);
        ds_longctx_opts o = {.lengths = lens, .n_lengths = nl, .depths = a->dv, .n_depths = a->nd, .trials = a->trials,
                             .seed = (uint64_t)a->t.seed, .chunk = a->chunk, .tok = tok, .text = a->text_path ? &a->text : NULL,
                             .bos = c->bos_token_id, .docs = docs, .n_docs = n_docs, .doc_len = a->t.seq_len,
                             .buckets = a->buckets, .png = a->png,
                             .metrics = s->have_metrics ? &s->metrics : NULL};
        rc = ds_longctx_eval(&im, ds_model_ops(s->model), &o, &text);
    }
    if (!rc && (fputs(text, stdout) < 0 || fflush(stdout))) rc = ds_fail(DS_ERR, "write failed: <stdout>");
    free(text), free(bias), free(docs);
    ds_tok_free(tok);
    return rc;
}

static int run(args *a) {
    if (a->text_path && ds_passkey_text_load(&a->text, a->text_path)) return ds_tool_report(DS_ERR);
    ds_session s;
    ds_token_reader rd = {0};
    ds_shards_info di = {0};
    ds_data_source *train = NULL, *val = NULL;
    ds_sft_data chat = {0};
    int rc, sig = 0;
    ds_session_opts so = ds_train_toolopts_session(&a->t, "ds-extend-ctx");
    so.pp_whole = !a->no_eval; /* the evaluation after training runs the whole model on every rank */
    so.micro_batch = a->eval_only ? 1 : a->t.micro_batch, so.edit_config = edit_config, so.edit_ctx = a;
    if ((rc = ds_session_open(&s, &so))) goto done;
    const ds_rope_scaling *y = &s.cfg.rope_scaling;
    if (y->enabled)
        ds_info("yarn    factor %g, original %d, beta %g/%g, mscale %g/%g: max_position_embeddings %d", y->factor,
                y->original_max_position_embeddings, y->beta_fast, y->beta_slow, y->mscale, y->mscale_all_dim,
                s.cfg.max_position_embeddings);
    if (!a->eval_only && y->enabled && a->t.seq_len <= y->original_max_position_embeddings)
        ds_warn("--seq-len %d is within the original context of %d tokens: this phase trains no longer sequences "
                "(set --original-len to the pre-training length)", a->t.seq_len, y->original_max_position_embeddings);
    if (a->data.n && (rc = ds_shards_load(&rd, &di, a->data.v, a->data.n, s.cfg.vocab_size))) goto done;
    if (!a->eval_only) {
        if (a->chat) { /* conversations: loss on the assistant's tokens, packed with sample masking (as ds-sft) */
            const ds_sft_data_opts co = {
                .path = a->chat, .template_path = a->chat_template, .model = a->t.resume ? a->t.resume : a->t.model,
                .tokenizer_json = s.tokenizer_json, .tokenizer_len = s.tokenizer_len, .vocab = s.cfg.vocab_size,
                .tokenizer_config = s.tokenizer_config, .tokenizer_config_len = s.tokenizer_config_len,
                .eos = s.cfg.eos_token_id, .on_bad = !strcmp(a->on_bad, "reject") ? DS_SFT_REJECT_BAD : DS_SFT_SKIP_BAD,
                .max_warnings = a->t.verbose ? -1 : 10,
                .src = {.seq_len = a->t.seq_len, .seed = (uint64_t)a->t.seed, .val_frac = a->t.val_frac}};
            if ((rc = ds_sft_data_open(&chat, &co))) goto done;
            s.chat = &chat.tmpl; /* the checkpoints carry the template trained with */
            train = chat.train, val = chat.val, chat.train = chat.val = NULL; /* freed below with the others */
        } else {
            ds_packed_opts po = {.seq_len = a->t.seq_len, .seed = (uint64_t)a->t.seed, .val_frac = a->t.val_frac, .eos = (int32_t)di.eos_id};
            if ((rc = ds_packed_create(&train, &val, &rd, &po))) goto done;
        }
        ds_train_opts to;
        ds_train_toolopts_apply(&a->t, &to);
        const ds_train_sched_specs sp = {.lr = a->t.lr_schedule, .lr_peak = a->t.lr, .batch = a->t.batch, .lambda = "0.1",
                                         .lambda_peak = 0.1};
        if ((rc = ds_train_schedules(&sp, &to))) goto done;
        if (a->chat)
            ds_info("train   %lld steps x %d rows x %d tokens, lr %g, %lld conversations (%lld skipped) of %llu tokens",
                    (long long)a->t.steps, a->t.batch, a->t.seq_len, a->t.lr, (long long)chat.set.n, (long long)chat.set.bad,
                    (unsigned long long)chat.set.off[chat.set.n]);
        else
            ds_info("train   %lld steps x %d rows x %d tokens, lr %g, %d shard(s) of %llu tokens", (long long)a->t.steps, a->t.batch,
                    a->t.seq_len, a->t.lr, di.n_shards, (unsigned long long)di.n_tokens);
        char record[1024];
        snprintf(record, sizeof record,
                 "{\"config\": {\"tool\": \"ds-extend-ctx\", \"model\": \"%s\", \"factor\": %.17g, \"original_len\": %d, "
                 "\"max_position_embeddings\": %d, \"seq_len\": %d, \"steps\": %lld, \"batch\": %d, \"lr\": %.17g, \"seed\": \"%llu\", \"fp8\": %s, "
                 "\"data\": \"%s\"}}",
                 a->t.resume ? "(resume)" : a->t.model, y->factor, y->original_max_position_embeddings, s.cfg.max_position_embeddings,
                 a->t.seq_len, (long long)a->t.steps, a->t.batch, a->t.lr, (unsigned long long)a->t.seed, a->t.fp8 ? "true" : "false", a->chat ? "chat" : "tokens");
        if ((rc = ds_session_start(&s, &to, train, val, &ds_loss_pretrain, record))) goto done;
        if ((rc = ds_session_run(&s, &sig)) || sig) goto done;
    } else if (a->t.metrics) {
        if ((rc = ds_metrics_open(&s.metrics, a->t.metrics, 0))) goto done;
        s.have_metrics = 1;
    }
    if (!rc && a->eval_only && !a->no_eval) ds_session_log_seed(&s); /* the passkeys' seed */
    if (!a->no_eval) rc = evaluate(a, &s, &rd, a->data.n > 0);
done:
    rc = ds_train_tool_exit(&s, rc, sig);
    ds_session_close(&s);
    ds_data_source_free(train);
    ds_data_source_free(val);
    ds_sft_data_close(&chat);
    ds_token_reader_free(&rd);
    if (a->text_path) ds_passkey_text_free(&a->text);
    return rc;
}

/* --print-rope: the config a phase would write and its tables, for -m CKPT or --config FILE */
static int print_rope_only(const args *a) {
    int rc;
    if (!!a->t.model + !!a->config != 1) return ds_usage_error("--print-rope needs one of -m CKPT or --config FILE");
    ds_config c;
    ds_ckpt *ck = NULL;
    if (a->config) rc = ds_config_load_file(&c, a->config);
    else if (!(rc = ds_ckpt_open(&ck, a->t.model))) rc = ds_config_copy(&c, ds_ckpt_config(ck));
    ds_ckpt_close(ck);
    if (rc) return ds_tool_report(rc);
    rc = ds_extend_config(&c, &a->eo);
    if (!rc) rc = print_rope(&c);
    ds_config_free(&c);
    return rc == DS_EUSAGE ? ds_usage_error("%s", ds_errmsg()) : ds_tool_report(rc);
}

/* Usage problems (exit 2) of a training or evaluation run; parses the evaluation lists. */
static int check_usage(args *a) {
    int rc;
    if (a->config) return ds_usage_error("--config is for --print-rope; give the checkpoint with -m");
    if (!a->t.model && !a->t.resume) return ds_usage_error("-m CKPT is required");
    if (a->t.seq_len <= 0) return ds_usage_error("--seq-len T is required (the training length of this phase)");
    if (!a->eval_only) {
        if (!a->data.n == !a->chat) return ds_usage_error("give the phase's data: --data (token shards) or --chat (conversations)");
        if (ds_train_tool_check_out(&a->t)) return 2;
        if (!a->t.steps) return ds_usage_error("--steps is required");
    }
    if (a->lens && (rc = parse_list(a->lens, a->lv, &a->nl, 16, 1, "--eval-lengths"))) return ds_usage_error("%s", ds_errmsg());
    if ((rc = parse_list(a->depths, a->dv, &a->nd, 16, 0, "--eval-depths"))) return ds_usage_error("%s", ds_errmsg());
    for (int i = 0; i < a->nl; i++)
        if (!(a->lv[i] >= 2 && a->lv[i] <= 1 << 30)) return ds_usage_error("--eval-lengths: %g is not a length", a->lv[i]);
    for (int i = 0; i < a->nd; i++)
        if (!(a->dv[i] >= 0 && a->dv[i] <= 1)) return ds_usage_error("--eval-depths: %g is outside [0, 1]", a->dv[i]);
    return ds_train_tool_check_batch(&a->t);
}

int main(int argc, char **argv) {
    ds_tool_init("ds-extend-ctx");
    ds_ops_cpu_blas_reexec(argv); /* a wrongly detected OpenBLAS kernel: run again with the right one */
    args a = {.on_bad = "skip", .depths = "0,0.25,0.5,0.75,1", .trials = 3, .docs = 4, .buckets = 8, .chunk = 2048};
    ds_train_toolopts *t = &a.t;
    ds_train_toolopts_defaults(t);
    t->batch = 4, t->seq_len = 0, t->lr = 7.3e-6, t->val_frac = 0.005;
    ds_extend_opts_defaults(&a.eo);
    const ds_opt opts[] = {
        ds_train_toolopt(t, "model", "checkpoint to extend (directory, .safetensors or '-')"),
        {"data", 0, DS_OPT_STRLIST, &a.data, "GLOB|-", "token shards for the long-context phase (glob, directory or '-')", 0, 0, 0},
        {"chat", 0, DS_OPT_STR, &a.chat, "FILE|-", "or conversations (ds-sft's JSONL): loss on the assistant's tokens, packed with sample masking", 0, 0, 0},
        {"chat-template", 0, DS_OPT_STR, &a.chat_template, "FILE", "chat template for --chat (default: the built-in DeepSeek-V3 one)", 0, 0, 0},
        {"on-bad", 0, DS_OPT_CHOICE, &a.on_bad, "WHAT", "a bad conversation in --chat: skip it with a warning, or reject the data", "skip|reject", 0, 0},
        ds_train_toolopt(t, "out", "checkpoint directory (rope_scaling written into its config)"),
        {"factor", 0, DS_OPT_FLOAT, &a.eo.factor, "S", "YaRN scale factor s (V3: 40 in both phases); 0 keeps the checkpoint's", 0, 0, 0},
        {"seq-len", 0, DS_OPT_INT, &t->seq_len, "T", "training length of this phase (V3: 32K, then 128K)", 0, 0, 1 << 26},
        {"steps", 0, DS_OPT_I64, &t->steps, "N", "optimizer steps of this phase (V3: 1000)", 0, 0, 1e15},
        ds_train_toolopt(t, "lr", "learning rate (V3: 7.3e-6, constant)"),
        ds_train_toolopt(t, "lr-schedule", "learning-rate schedule (default: constant --lr; docs/DESIGN.md \"Schedules\")"),
        {"batch", 0, DS_OPT_INT, &t->batch, "B", "sequences per optimizer step (V3: 1920 at 32K, 480 at 128K)", 0, 1, 1e9},
        {"micro-batch", 0, DS_OPT_INT, &t->micro_batch, "M", "sequences per forward/backward (0 = --batch)", 0, 0, 1e9},
        {"original-len", 0, DS_OPT_INT, &a.eo.original, "L0", "pre-training context (0: rope_scaling's, else max_position_embeddings)", 0, 0, 1 << 30},
        {"beta-fast", 0, DS_OPT_FLOAT, &a.eo.beta_fast, "B", "YaRN beta_fast (0: keep, else 32)", 0, 0, 0},
        {"beta-slow", 0, DS_OPT_FLOAT, &a.eo.beta_slow, "B", "YaRN beta_slow (0: keep, else 1)", 0, 0, 0},
        {"mscale", 0, DS_OPT_FLOAT, &a.eo.mscale, "C", "rope_scaling.mscale (<0: keep, else 1.0 as V3)", 0, 0, 0},
        {"mscale-all-dim", 0, DS_OPT_FLOAT, &a.eo.mscale_all_dim, "C", "rope_scaling.mscale_all_dim (<0: keep, else 1.0 as V3)", 0, 0, 0},
        ds_train_toolopt(t, "tokenizer", "tokenizer.json (default: the checkpoint's); passkey retrieval needs one"),
        {"config", 0, DS_OPT_STR, &a.config, "FILE", "a config.json instead of a checkpoint (with --print-rope)", 0, 0, 0},
        {"print-rope", 0, DS_OPT_FLAG, &a.print_rope, NULL, "print the extended config and its RoPE tables as JSON and exit", 0, 0, 0},
        {"eval-only", 0, DS_OPT_FLAG, &a.eval_only, NULL, "no training: evaluate -m (with --factor: under YaRN, untrained)", 0, 0, 0},
        {"no-eval", 0, DS_OPT_FLAG, &a.no_eval, NULL, "skip the evaluation after training", 0, 0, 0},
        {"eval-lengths", 0, DS_OPT_STR, &a.lens, "LIST", "passkey context lengths, e.g. 4K,8K,16K (default: L0 doubling to --seq-len)", 0, 0, 0},
        {"eval-depths", 0, DS_OPT_STR, &a.depths, "LIST", "needle depths in [0, 1]", 0, 0, 0},
        {"eval-trials", 0, DS_OPT_INT, &a.trials, "N", "passkeys per grid cell", 0, 1, 1e6},
        {"eval-text", 0, DS_OPT_STR, &a.text_path, "FILE.json", "passkey wording: intro, filler, needle, question, answer, digits (default: built in)", 0, 0, 0},
        {"eval-png", 0, DS_OPT_STR, &a.png, "FILE.png", "draw the passkey grid as a heat map", 0, 0, 0},
        {"eval-docs", 0, DS_OPT_INT, &a.docs, "N", "documents of --seq-len tokens (the data's tail) for log-likelihood by position (0: none)", 0, 0, 1e6},
        {"eval-buckets", 0, DS_OPT_INT, &a.buckets, "N", "position buckets", 0, 1, 64},
        {"eval-chunk", 0, DS_OPT_INT, &a.chunk, "N", "tokens per inference call while evaluating", 0, 1, 1 << 24},
        ds_train_toolopt(t, "val-frac", NULL),
        {"val-every", 0, DS_OPT_INT, &t->val_every, "N", "validation loss every N steps (0 = never)", 0, 0, 1e9},
        ds_train_toolopts_group(t, "weight-decay clip"),
        ds_train_toolopt(t, "seed", "seed of the data order and the passkeys"),
        ds_train_toolopt(t, "device", "where to train and evaluate (cuda: one GPU, device 0)"),
        ds_train_toolopts_group(t, "threads bf16 fp8 fp8-accum fp8-promote fp8-attn-out fp8-moe-cache fp8-dispatch "
                                   "no-zero"),
        ds_train_toolopts_group(t, "ep ranks-per-node two-hop"),
        ds_train_toolopt(t, "metrics", "one JSON object per step and per evaluation cell"),
        ds_train_toolopt(t, "plot", NULL),
        ds_train_toolopt(t, "save-every", "checkpoint every N steps (and at the end)"),
        ds_train_toolopt(t, "ema", NULL),
        ds_train_toolopt(t, "resume", "continue the phase saved in DIR"),
        ds_train_toolopt(t, "force", NULL),
        ds_train_toolopts_group(t, "pp schedule stages"),
        ds_train_toolopts_group(t, "log-every profile quiet verbose"),
        {0},
    };
    const ds_cli cli = {
        .name = "ds-extend-ctx",
        .usage = "-m CKPT --data 'GLOB' -o OUT --factor S --seq-len T --steps N [OPTIONS]",
        .summary = "Extend a checkpoint's context with YaRN (as transformers computes it: frequencies blended between "
                   "beta_fast and beta_slow, softmax scale x (0.1 ln s + 1)^2 with V3's mscales) and continue "
                   "training at the longer length; "
                   "repeat for further phases (V3: 4K -> 32K -> 128K, 1000 steps each at 7.3e-6). Then evaluates: "
                   "passkey retrieval over a grid of lengths and depths (table on stdout, --eval-png heat map) and "
                   "log-likelihood by position on the data's tail.",
        .example = "  ds-extend-ctx -m ckpt/base --data 'shards/*.tok' -o ckpt/long32 --factor 40 --seq-len 32768 --steps 1000\n"
                   "  ds-extend-ctx -m ckpt/long32 --data 'shards/*.tok' -o ckpt/long128 --seq-len 131072 --steps 1000 "
                   "--eval-png niah.png\n"
                   "  ds-extend-ctx -m ckpt/sft --chat long-chats.jsonl -o ckpt/sft-long --factor 4 --seq-len 16384 --steps 500\n"
                   "  ds-extend-ctx --config share/configs/deepseek-v3-671b.json --print-rope",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc < 0) rc = ds_train_tool_start(t, argc, argv, first);
    if (rc < 0) {
        rc = a.print_rope ? print_rope_only(&a) : check_usage(&a);
        if (!a.print_rope && !rc) rc = run(&a);
    }
    ds_strlist_free(&a.data);
    return rc;
}
