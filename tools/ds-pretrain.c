/* ds-pretrain — Pretrain a DeepSeek-V3-architecture model from token shards. */
#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/threads.h"
#include "train/flops.h"
#include "train/session.h"
#include "train/shards.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char FIM_BEGIN[] = "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>";
static const char FIM_HOLE[] = "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>";
static const char FIM_END[] = "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>";

typedef struct {
    const char *config, *model, *out, *resume, *tokenizer, *metrics, *plot, *device;
    ds_strlist data;
    const char *lr_sched, *batch_ramp, *gamma, *lambda;
    int64_t steps;
    int batch, micro, seq_len, threads, dp, save_every, val_every, val_batches, log_every, fp8, bf16, skip, quiet, verbose;
    double lr, alpha, wd, beta1, beta2, eps, clip, init_std, val_frac, fim_rate, peak_tflops;
    int64_t seed;
} args;

/* The first metrics record: everything the run was started with, resolved. */
static char *config_record(const args *a, const ds_session *s, const ds_shards_info *di, const ds_train_opts *to, double flops,
                           double peak) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_key(&w, "config");
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "tool", "ds-pretrain");
    ds_jsonw_kstr(&w, "version", ds_version_string);
    ds_jsonw_kstr(&w, "model", a->resume ? a->resume : a->model ? a->model : a->config);
    ds_param_counts pc;
    ds_config_counts(&s->cfg, &pc);
    ds_param_counts_jsonw(&pc, &w);
    ds_train_knum(&w, "flops_per_token", flops);
    ds_train_knum(&w, "peak_flops", peak);
    ds_jsonw_kint(&w, "shards", di->n_shards);
    ds_jsonw_kint(&w, "data_tokens", (int64_t)di->n_tokens);
    ds_jsonw_kint(&w, "data_docs", (int64_t)di->n_docs);
    ds_jsonw_kint(&w, "steps", to->total_steps);
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
    ds_train_knum(&w, "beta1", to->adamw.beta1);
    ds_train_knum(&w, "beta2", to->adamw.beta2);
    ds_train_knum(&w, "eps", to->adamw.eps);
    ds_train_knum(&w, "weight_decay", to->adamw.weight_decay);
    ds_jsonw_kbool(&w, "bf16_moments", to->adamw.bf16_moments);
    ds_train_knum(&w, "clip", to->clip_norm);
    ds_train_knum(&w, "init_std", s->cfg.ds_init_std);
    ds_train_knum(&w, "val_frac", a->val_frac);
    ds_train_knum(&w, "fim_rate", a->fim_rate);
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
    char b[32];
    snprintf(b, sizeof b, "%d", a->batch);
    DS_TRY(ds_sched_parse(&to->lr, a->lr_sched, a->lr, a->steps, "--lr-schedule"));
    DS_TRY(ds_sched_parse(&to->batch, a->batch_ramp ? a->batch_ramp : b, a->batch, a->steps, "--batch-ramp"));
    DS_TRY(ds_sched_parse(&to->gamma, a->gamma, 0.001, a->steps, "--gamma"));
    return ds_sched_parse(&to->lambda, a->lambda, 0.3, a->steps, "--lambda");
}

static int run(args *a) {
    ds_session s;
    ds_token_reader rd = {0};
    ds_shards_info di;
    ds_data_source *train = NULL, *val = NULL;
    char *record = NULL;
    int rc, sig = 0;
    ds_session_opts so = {.tool = "ds-pretrain", .config_path = a->config, .model_path = a->model, .resume = a->resume,
                          .out_dir = a->out, .tokenizer_path = a->tokenizer, .metrics_path = a->metrics, .plot_path = a->plot,
                          .device = a->device, .fp8 = a->fp8, .init_std = a->init_std, .balance_alpha = a->alpha,
                          .micro_batch = a->micro, .seq_len = a->seq_len, .seed = (uint64_t)a->seed,
                          .dp = a->dp};
    if ((rc = ds_session_open(&s, &so))) goto done;
    if ((rc = ds_shards_load(&rd, &di, a->data.v, a->data.n, s.cfg.vocab_size))) goto done;
    if (!s.tokenizer_json && !ds_is_stdio(di.first)) { /* the tokenizer that wrote the shards, if it sits beside them */
        char dir[4096], p[4200];
        snprintf(dir, sizeof dir, "%s", di.first);
        snprintf(p, sizeof p, "%s/tokenizer.json", dirname(dir));
        if (ds_path_exists(p) && (rc = ds_session_set_tokenizer(&s, p))) goto done;
    }
    if (!s.tokenizer_json) ds_warn("no tokenizer to embed in the checkpoint (give --tokenizer FILE)");
    ds_packed_opts po = {.seq_len = a->seq_len, .seed = (uint64_t)a->seed, .val_frac = a->val_frac, .fim_rate = a->fim_rate,
                         .eos = (int32_t)di.eos_id, .fim_begin = (int32_t)ds_session_token_id(&s, FIM_BEGIN),
                         .fim_hole = (int32_t)ds_session_token_id(&s, FIM_HOLE), .fim_end = (int32_t)ds_session_token_id(&s, FIM_END)};
    if (a->fim_rate > 0 && (po.fim_begin < 0 || po.fim_hole < 0 || po.fim_end < 0)) {
        rc = ds_fail(DS_ERR, "--fim-rate: the tokenizer has no <｜fim▁begin｜>/<｜fim▁hole｜>/<｜fim▁end｜> tokens");
        goto done;
    }
    if ((rc = ds_packed_create(&train, &val, &rd, &po))) goto done;
    ds_train_opts to;
    ds_train_opts_defaults(&to);
    to.total_steps = a->steps, to.seq_len = a->seq_len, to.micro_batch = a->micro, to.seed = (uint64_t)a->seed;
    to.adamw.beta1 = a->beta1, to.adamw.beta2 = a->beta2, to.adamw.eps = a->eps, to.adamw.weight_decay = a->wd;
    to.adamw.bf16_moments = a->bf16, to.clip_norm = a->clip, to.balance_alpha = a->alpha, to.skip_nonfinite = a->skip;
    to.val_every = a->val_every, to.val_batches = a->val_batches, to.save_every = a->save_every, to.log_every = a->log_every;
    if ((rc = schedules(a, &to))) goto done;
    double peak = a->peak_tflops * 1e12;
    /* on a GPU the GEMMs run in bf16 on the tensor cores: the H100 SXM's dense bf16 peak */
    const int gpu = strcmp(a->device, "cpu") != 0;
    if (peak <= 0) peak = gpu ? 989.4e12 : ds_measure_peak_flops(0.5);
    to.peak_flops = peak;
    char counts[128];
    ds_param_counts pc;
    ds_config_counts(&s.cfg, &pc);
    ds_param_counts_format(&pc, counts, sizeof counts);
    ds_info("model   %s (%s)", a->resume ? a->resume : a->model ? a->model : a->config, counts);
    ds_info("data    %d shard(s), %llu tokens, %llu documents, vocabulary %u", di.n_shards, (unsigned long long)di.n_tokens,
            (unsigned long long)di.n_docs, di.vocab_size);
    ds_info("train   %lld steps x %d rows x %d tokens (micro-batch %d), %d threads, MFU against %.3g TFLOP/s%s",
            (long long)a->steps, a->batch, a->seq_len, a->micro, ds_threads_get(), peak / 1e12,
            a->peak_tflops > 0 ? "" : gpu ? " (H100 SXM dense bf16; --peak-tflops for another GPU)" : " (measured sgemm)");
    record = config_record(a, &s, &di, &to, s.net.flops_per_token, peak);
    if ((rc = ds_session_start(&s, &to, train, val, &ds_loss_pretrain, record))) goto done;
    rc = ds_session_run(&s, &sig);
done:
    free(record);
    if (rc == DS_EUSAGE) rc = ds_usage_error("%s", ds_errmsg());
    else if (rc) ds_tool_report(rc);
    ds_session_close(&s);
    ds_data_source_free(train);
    ds_data_source_free(val);
    ds_token_reader_free(&rd);
    return rc ? (rc == DS_EDIVERGED ? 3 : rc == DS_EUSAGE ? 2 : 1) : sig ? 128 + sig : 0;
}

/* Usage problems: 2 with a message, or -1 to go on. */
static int check_args(args *a, int argc, int first, char **argv) {
    if (first < argc) return ds_usage_error("unexpected argument '%s'", argv[first]);
    if (a->quiet) ds_log_set_level(DS_LOG_QUIET);
    if (a->verbose) ds_log_set_level(DS_LOG_VERBOSE);
    if (!a->config && !a->model && !a->resume) return ds_usage_error("no model: give --config CFG.json or -m CKPT");
    if (a->config && a->model) return ds_usage_error("--config and -m exclude each other");
    if (!a->data.n) return ds_usage_error("--data is required");
    if (!a->out) return ds_usage_error("-o OUT is required");
    if (ds_is_stdio(a->out)) return ds_usage_error("-o: checkpoints are directories, not '-'");
    if (!a->steps) return ds_usage_error("--steps is required");
    if (!a->micro) a->micro = a->batch;
    if (a->batch % a->micro) return ds_usage_error("--batch %d is not a multiple of --micro-batch %d", a->batch, a->micro);
    return -1;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-pretrain");
    args a = {.device = "cpu", .lr_sched = "v3", .gamma = "0.001,0@96.6%", .lambda = "0.3,0.1@67.6%", .batch = 8,
              .seq_len = 256, .lr = 2.2e-4, .alpha = 1e-4, .wd = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .clip = 1.0,
              .val_frac = 0.005, .val_every = 100, .val_batches = 8, .log_every = 1, .seed = 1};
    const ds_opt opts[] = {
        {"config", 0, DS_OPT_STR, &a.config, "CFG.json", "model configuration (a fresh model)", 0, 0, 0},
        {"model", 'm', DS_OPT_STR, &a.model, "CKPT", "start from this checkpoint's weights", 0, 0, 0},
        {"data", 0, DS_OPT_STRLIST, &a.data, "GLOB|-", "token shards: a glob, a directory of .tok files, or '-' (one shard on stdin)", 0, 0, 0},
        {"out", 'o', DS_OPT_STR, &a.out, "OUT", "checkpoint directory (replaced atomically at every save)", 0, 0, 0},
        {"steps", 0, DS_OPT_I64, &a.steps, "N", "total optimizer steps (a resumed run continues up to N)", 0, 1, 1e15},
        {"batch", 0, DS_OPT_INT, &a.batch, "B", "sequences per optimizer step", 0, 1, 1e9},
        {"micro-batch", 0, DS_OPT_INT, &a.micro, "M", "sequences per forward/backward (gradient accumulation; 0 = --batch)", 0, 0, 1e9},
        {"seq-len", 0, DS_OPT_INT, &a.seq_len, "T", "tokens per sequence", 0, 1, 1 << 24},
        {"lr", 0, DS_OPT_FLOAT, &a.lr, "LR", "peak learning rate (V3: 2.2e-4)", 0, 0, 10},
        {"lr-schedule", 0, DS_OPT_STR, &a.lr_sched, "SPEC", "v3[:...] | cosine[:...] | wsd[:...] | steps/linear points (docs/DESIGN.md)", 0, 0, 0},
        {"batch-ramp", 0, DS_OPT_STR, &a.batch_ramp, "SPEC", "batch-size schedule, e.g. linear:64@0,256@10Mtok (default: constant --batch)", 0, 0, 0},
        {"gamma", 0, DS_OPT_STR, &a.gamma, "SPEC", "bias update speed schedule (0 = frozen)", 0, 0, 0},
        {"lambda", 0, DS_OPT_STR, &a.lambda, "SPEC", "MTP loss weight schedule", 0, 0, 0},
        {"alpha", 0, DS_OPT_FLOAT, &a.alpha, "A", "sequence-wise balance loss weight (V3: 1e-4)", 0, 0, 1},
        {"weight-decay", 0, DS_OPT_FLOAT, &a.wd, "WD", "AdamW weight decay (not on norm gains)", 0, 0, 10},
        {"beta1", 0, DS_OPT_FLOAT, &a.beta1, "B1", "AdamW beta1", 0, 0, 1},
        {"beta2", 0, DS_OPT_FLOAT, &a.beta2, "B2", "AdamW beta2", 0, 0, 1},
        {"eps", 0, DS_OPT_FLOAT, &a.eps, "EPS", "AdamW epsilon", 0, 0, 1},
        {"clip", 0, DS_OPT_FLOAT, &a.clip, "NORM", "clip gradients to this global norm (0 = off)", 0, 0, 1e9},
        {"bf16-moments", 0, DS_OPT_FLAG, &a.bf16, NULL, "keep AdamW moments in bf16", 0, 0, 0},
        {"init-std", 0, DS_OPT_FLOAT, &a.init_std, "STD", "normal init std of a fresh model (0 = the config's ds_init_std)", 0, 0, 1},
        {"seed", 0, DS_OPT_I64, &a.seed, "S", "seed of the init, the data order and FIM", 0, 0, 9.2e18},
        {"threads", 0, DS_OPT_INT, &a.threads, "N", "CPU threads (0 = all cores)", 0, 0, 4096},
        {"tokenizer", 0, DS_OPT_STR, &a.tokenizer, "FILE", "tokenizer.json to embed (default: the checkpoint's, or tokenizer.json beside the shards)", 0, 0, 0},
        {"val-frac", 0, DS_OPT_FLOAT, &a.val_frac, "F", "share of the data held out for validation", 0, 0, 0.5},
        {"val-every", 0, DS_OPT_INT, &a.val_every, "N", "validation loss every N steps and at the end (0 = never)", 0, 0, 1e9},
        {"val-batches", 0, DS_OPT_INT, &a.val_batches, "N", "micro-batches per validation", 0, 1, 1e9},
        {"fim-rate", 0, DS_OPT_FLOAT, &a.fim_rate, "R", "fill-in-the-middle (PSM) rate per document (V3: 0.1)", 0, 0, 1},
        {"metrics", 0, DS_OPT_STR, &a.metrics, "FILE.jsonl", "one JSON object per step ('-' = stdout)", 0, 0, 0},
        {"plot", 0, DS_OPT_STR, &a.plot, "FILE.png", "draw the loss curves at the end", 0, 0, 0},
        {"save-every", 0, DS_OPT_INT, &a.save_every, "N", "checkpoint every N steps (and always at the end)", 0, 0, 1e9},
        {"resume", 0, DS_OPT_STR, &a.resume, "DIR", "continue the run saved in DIR (bit-identical on the same machine and threads)", 0, 0, 0},
        {"log-every", 0, DS_OPT_INT, &a.log_every, "N", "print a line every N steps (0 = none)", 0, 0, 1e9},
        {"peak-tflops", 0, DS_OPT_FLOAT, &a.peak_tflops, "X", "peak for MFU (0 = measure sgemm on the CPU; 989.4, the H100's bf16, with --device cuda)", 0, 0, 1e6},
        {"skip-nonfinite", 0, DS_OPT_FLAG, &a.skip, NULL, "skip a step with NaN/Inf instead of stopping with exit 3", 0, 0, 0},
        {"fp8", 0, DS_OPT_FLAG, &a.fp8, NULL, "every block Linear (attention projections, FFN, experts) in FP8: E4M3 with 1x128/128x128 scales, V3's recipe", 0, 0, 0},
        {"device", 0, DS_OPT_CHOICE, &a.device, "DEV", "where to train (cuda: one GPU, device 0)", "cpu|cuda", 0, 0},
        {"dp", 0, DS_OPT_INT, &a.dp, "N", "data-parallel ranks (0 = every process mpirun started)", 0, 0, 1e6},
        {"quiet", 'q', DS_OPT_FLAG, &a.quiet, NULL, "only errors and warnings", 0, 0, 0},
        {"verbose", 'v', DS_OPT_FLAG, &a.verbose, NULL, "more detail", 0, 0, 0},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-pretrain",
        .usage = "--config CFG.json | -m CKPT  --data GLOB|-  -o OUT  --steps N [OPTIONS]",
        .summary = "Pretrain a DeepSeek-V3-architecture model from token shards, as V3 did: packed documents, AdamW "
                   "with V3's learning-rate shape, MTP, auxiliary-loss-free balancing plus the sequence-wise balance "
                   "loss. Prints one line per step; checkpoints (with the tokenizer) are resumable bit for bit. "
                   "Exit codes: 0 done, 1 error, 2 usage, 3 diverged (NaN/Inf), 130/143 stopped by SIGINT/SIGTERM "
                   "after saving.",
        .example = "  ds-tokenize encode -t tok.json -o shards/ corpus/*.txt\n"
                   "  ds-pretrain --config share/configs/demo.json --data 'shards/*.tok' -o ckpt/base --steps 200 \\\n"
                   "      --batch 16 --seq-len 256 --lr 1e-3 --metrics run.jsonl --plot loss.png --save-every 50",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc < 0) rc = check_args(&a, argc, first, argv);
    if (rc >= 0) {
        ds_strlist_free(&a.data);
        return rc;
    }
    ds_threads_set(a.threads);
    rc = run(&a);
    ds_strlist_free(&a.data);
    return rc;
}
