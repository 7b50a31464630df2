/* ds-pretrain — Pretrain a DeepSeek-V3-architecture model from token shards. */
#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/threads.h"
#include "dist/pipeview.h"
#include "io/config.h"
#include "ops/ops.h"
#include "train/flops.h"
#include "train/plan.h"
#include "dist/pipesched.h"
#include "train/session.h"
#include "train/shards.h"
#include "train/toolopts.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char FIM_BEGIN[] = "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>";
static const char FIM_HOLE[] = "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>";
static const char FIM_END[] = "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>";

typedef struct {
    ds_train_toolopts t;
    const char *config, *batch_ramp, *gamma, *lambda;
    ds_strlist data;
    int dp, print_schedule;
    double init_std, fim_rate, peak_tflops;
    const char *plan, *recompute, *phases; /* --plan: cost the run on a cluster instead of training */
    int search, json;
} args;

/* The first metrics record: everything the run was started with, resolved. */
static char *config_record(const args *a, const ds_session *s, const ds_shards_info *di, const ds_train_opts *to, double flops,
                           double peak) {
    ds_jsonw w;
    ds_train_record_begin(&w, s, a->t.resume ? a->t.resume : a->t.model ? a->t.model : a->config, NULL);
    ds_train_knum(&w, "flops_per_token", flops);
    ds_train_knum(&w, "peak_flops", peak);
    ds_jsonw_kint(&w, "shards", di->n_shards);
    ds_jsonw_kint(&w, "data_tokens", (int64_t)di->n_tokens);
    ds_jsonw_kint(&w, "data_docs", (int64_t)di->n_docs);
    ds_jsonw_kint(&w, "steps", to->total_steps);
    ds_jsonw_kint(&w, "micro_batch", to->micro_batch);
    ds_jsonw_kint(&w, "seq_len", to->seq_len);
    ds_train_record_schedules(&w, to);
    ds_train_knum(&w, "alpha", to->balance_alpha);
    ds_train_knum(&w, "beta1", to->adamw.beta1);
    ds_train_knum(&w, "beta2", to->adamw.beta2);
    ds_train_knum(&w, "eps", to->adamw.eps);
    ds_train_knum(&w, "weight_decay", to->adamw.weight_decay);
    ds_jsonw_kbool(&w, "bf16_moments", to->adamw.bf16_moments);
    ds_train_knum(&w, "clip", to->clip_norm);
    ds_train_knum(&w, "init_std", s->cfg.ds_init_std);
    ds_train_knum(&w, "val_frac", a->t.val_frac);
    ds_train_knum(&w, "fim_rate", a->fim_rate);
    return ds_train_record_end(&w, s);
}

static int run(args *a) {
    ds_session s;
    ds_token_reader rd = {0};
    ds_shards_info di;
    ds_data_source *train = NULL, *val = NULL;
    char *record = NULL;
    int rc, sig = 0;
    ds_session_opts so = ds_train_toolopts_session(&a->t, "ds-pretrain");
    so.config_path = a->config, so.init_std = a->init_std, so.dp = a->dp;
    if ((rc = ds_session_open(&s, &so))) goto done;
    if ((rc = ds_shards_load(&rd, &di, a->data.v, a->data.n, s.cfg.vocab_size))) goto done;
    if (!s.tokenizer_json && !ds_is_stdio(di.first)) { /* the tokenizer that wrote the shards, if it sits beside them */
        char dir[4096], p[4200];
        snprintf(dir, sizeof dir, "%s", di.first);
        snprintf(p, sizeof p, "%s/tokenizer.json", dirname(dir));
        if (ds_path_exists(p) && (rc = ds_session_set_tokenizer(&s, p))) goto done;
    }
    if (!s.tokenizer_json) ds_warn("no tokenizer to embed in the checkpoint (give --tokenizer FILE)");
    ds_packed_opts po = {.seq_len = a->t.seq_len, .seed = (uint64_t)a->t.seed, .val_frac = a->t.val_frac, .fim_rate = a->fim_rate,
                         .eos = (int32_t)di.eos_id, .fim_begin = (int32_t)ds_session_token_id(&s, FIM_BEGIN),
                         .fim_hole = (int32_t)ds_session_token_id(&s, FIM_HOLE), .fim_end = (int32_t)ds_session_token_id(&s, FIM_END)};
    if (a->fim_rate > 0 && (po.fim_begin < 0 || po.fim_hole < 0 || po.fim_end < 0)) {
        rc = ds_fail(DS_ERR, "--fim-rate: the tokenizer has no <｜fim▁begin｜>/<｜fim▁hole｜>/<｜fim▁end｜> tokens");
        goto done;
    }
    if ((rc = ds_packed_create(&train, &val, &rd, &po))) goto done;
    ds_train_opts to;
    ds_train_toolopts_apply(&a->t, &to);
    ds_train_sched_specs sp = {.lr = a->t.lr_schedule, .lr_peak = a->t.lr, .batch_ramp = a->batch_ramp, .batch = a->t.batch,
                               .gamma = a->gamma, .gamma_peak = 0.001, .lambda = a->lambda, .lambda_peak = 0.3};
    if ((rc = ds_train_schedules(&sp, &to))) goto done;
    double peak = a->peak_tflops * 1e12;
    /* on a GPU the GEMMs run in bf16 on the tensor cores: the H100 SXM's dense bf16 peak */
    const int gpu = strcmp(a->t.device, "cpu") != 0;
    if (peak <= 0) peak = gpu ? 989.4e12 : ds_measure_peak_flops(0.5);
    to.peak_flops = peak;
    char counts[128];
    ds_param_counts pc;
    ds_config_counts(&s.cfg, &pc);
    ds_param_counts_format(&pc, counts, sizeof counts);
    ds_info("model   %s (%s)", a->t.resume ? a->t.resume : a->t.model ? a->t.model : a->config, counts);
    ds_info("data    %d shard(s), %llu tokens, %llu documents, vocabulary %u", di.n_shards, (unsigned long long)di.n_tokens,
            (unsigned long long)di.n_docs, di.vocab_size);
    ds_info("train   %lld steps x %d rows x %d tokens (micro-batch %d), %d threads, MFU against %.3g TFLOP/s%s",
            (long long)a->t.steps, a->t.batch, a->t.seq_len, a->t.micro_batch, ds_threads_get(), peak / 1e12,
            a->peak_tflops > 0 ? "" : gpu ? " (H100 SXM dense bf16; --peak-tflops for another GPU)" : " (measured sgemm)");
    record = config_record(a, &s, &di, &to, s.net.flops_per_token, peak);
    if ((rc = ds_session_start(&s, &to, train, val, &ds_loss_pretrain, record))) goto done;
    rc = ds_session_run(&s, &sig);
done:
    free(record);
    rc = ds_train_tool_exit(&s, rc, sig);
    ds_session_close(&s);
    ds_data_source_free(train);
    ds_data_source_free(val);
    ds_token_reader_free(&rd);
    return rc;
}

/* --print-schedule: the schedule --pp/--schedule/--micro-batches name, as a timeline on stdout and a PNG
 * (--plot, default schedule.png), with Table 2's accounting; no training. A model (--config or -m) only
 * bounds the stages by its layers. Returns the exit code. */
static int print_schedule(args *a) {
    int n_layers = 0, rc;
    if (a->config || a->t.model) {
        char p[4200];
        ds_config cfg;
        if (a->config) snprintf(p, sizeof p, "%s", a->config);
        else snprintf(p, sizeof p, "%s/config.json", a->t.model);
        if ((rc = ds_config_load_file(&cfg, p))) return ds_tool_report(rc);
        n_layers = cfg.num_hidden_layers;
        ds_config_free(&cfg);
    }
    ds_pipe_kind kind;
    if (ds_train_tool_check_batch(&a->t) || ds_train_tool_check_pipeline(&a->t, n_layers, &kind)) return 2;
    ds_pipe_schedule s;
    ds_strbuf text = {0};
    const char *png = a->t.plot ? a->t.plot : "schedule.png";
    rc = ds_pipe_schedule_make(&s, kind, a->t.pp, a->t.pipe_micro_batches);
    if (!rc) rc = ds_pipe_timeline_text(&s, &text);
    if (!rc) ds_strbuf_puts(&text, "\n");
    if (!rc) rc = ds_pipe_table2_text(a->t.pp, a->t.pipe_micro_batches, &text);
    if (!rc && ds_is_stdio(png)) rc = ds_fail(DS_EUSAGE, "%s -: the timeline goes to stdout; give a file", ds_cli_opt(&a->t.plot, "--plot"));
    if (!rc) rc = ds_pipe_timeline_png(&s, png);
    if (!rc) {
        fputs(text.s, stdout);
        ds_info("wrote %s", png);
    }
    free(text.s);
    ds_pipe_schedule_free(&s);
    return rc == DS_EUSAGE ? ds_usage_error("%s", ds_errmsg()) : rc ? ds_tool_report(rc) : 0;
}

/* --plan: no training; the plan as a table (or one JSON object) on stdout, the timeline as a PNG. */
static int run_plan(args *a) {
    ds_config cfg = {0};
    ds_cluster cl;
    ds_plan_opts o;
    ds_plan_opts_defaults(&o);
    o.pp = a->t.pp, o.ep = a->t.ep, o.micro_batches = a->t.pipe_micro_batches, o.dp = a->dp, o.batch = a->t.batch, o.seq_len = a->t.seq_len, o.fp8 = a->t.fp8;
    o.bf16_moments = a->t.bf16_moments, o.zero = !a->t.no_zero, o.stages = a->t.stages;
    ds_pipe_kind kind = DS_PIPE_1F1B;
    int rc = ds_cluster_load(&cl, a->plan);
    if (!rc) rc = ds_pipe_kind_parse(a->t.pipe_schedule, &kind);
    if (!rc && a->recompute) rc = ds_recompute_parse(a->recompute, &o.recompute);
    if (!rc) rc = ds_config_load_file(&cfg, a->config);
    o.schedule = kind;
    /* --micro-batch 0: one micro-batch per data-parallel rank */
    int dp = o.dp ? o.dp : o.pp > 0 ? cl.nodes * cl.gpus_per_node / o.pp : 1;
    o.micro_batch = a->t.micro_batch ? a->t.micro_batch : dp > 0 && a->t.batch % dp == 0 ? a->t.batch / dp : 1;
    ds_strbuf out = {0};
    ds_jsonw w;
    ds_jsonw_init(&w);
    if (!rc && a->phases) {
        ds_plan_phase *ph = NULL;
        int n = 0;
        if (!(rc = ds_plan_phases_parse(a->phases, &ph, &n))) {
            o.micro_batch = a->t.micro_batch; /* 0: per phase, batch / dp */
            if (!(rc = ds_plan_phases_run(ph, n, &cfg, &cl, &o, a->search))) {
                if (a->json) ds_plan_phases_jsonw(ph, n, &w);
                else ds_plan_phases_table(ph, n, &out);
            }
        }
        free(ph);
    } else if (!rc && a->search) {
        ds_plan *v = NULL;
        int n = 0;
        if (!(rc = ds_plan_search(&cfg, &cl, &o, &v, &n))) {
            if (a->json) {
                ds_jsonw_arr_begin(&w);
                for (int i = 0; i < n; i++) ds_plan_jsonw(&v[i], &w);
                ds_jsonw_arr_end(&w);
            } else {
                ds_plan_search_table(v, n, 20, &out);
                if (!n) ds_strbuf_puts(&out, "no layout fits\n");
            }
        }
        free(v);
    } else if (!rc) {
        ds_plan p;
        if (!(rc = ds_plan_run(&p, &cfg, &cl, &o))) {
            if (a->json) ds_plan_jsonw(&p, &w);
            else ds_plan_table(&p, &out);
            if (a->t.plot) rc = ds_plan_png(&p, a->t.plot);
            ds_plan_free(&p);
        }
    }
    if (!rc && a->json) rc = ds_jsonw_emit_line(&w, stdout, "stdout");
    if (!rc && out.s) fputs(out.s, stdout);
    if (!rc && out.oom) rc = ds_fail(DS_ERR, "out of memory");
    free(out.s);
    ds_jsonw_free(&w);
    ds_config_free(&cfg);
    return ds_tool_report(rc);
}

/* Usage problems: 2 with a message, or -1 to go on. */
static int check_args(args *a) {
    if (a->plan && !a->config) return ds_usage_error("--plan needs --config CFG.json");
    if (!a->plan && (a->search || a->json || a->recompute || a->phases))
        return ds_usage_error("--search, --json, --recompute and --phases go with --plan");
    if (a->plan) return ds_train_tool_check_batch(&a->t) ? 2 : -1;
    if (!a->config && !a->t.model && !a->t.resume) return ds_usage_error("no model: give --config CFG.json or -m CKPT");
    if (a->config && a->t.model) return ds_usage_error("--config and %s exclude each other", ds_cli_opt(&a->t.model, "-m"));
    if (!a->data.n) return ds_usage_error("--data is required");
    if (ds_train_tool_check_out(&a->t)) return 2;
    if (!a->t.steps) return ds_usage_error("--steps is required");
    if (ds_train_tool_micro_batches(&a->t, a->dp, a->batch_ramp != NULL) || ds_train_tool_check_batch(&a->t)) return 2;
    return -1;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-pretrain");
    ds_ops_cpu_blas_reexec(argv); /* a wrongly detected OpenBLAS kernel: run again with the right one */
    args a = {.gamma = "0.001,0@96.6%", .lambda = "0.3,0.1@67.6%", };
    ds_train_toolopts *t = &a.t;
    ds_train_toolopts_defaults(t);
    t->lr_schedule = "v3", t->batch = 8, t->seq_len = 256, t->lr = 2.2e-4, t->alpha = 1e-4, t->val_frac = 0.005;
    t->val_every = 100;
    const ds_opt opts[] = {
        {"config", 0, DS_OPT_STR, &a.config, "CFG.json", "model configuration (a fresh model)", 0, 0, 0},
        ds_train_toolopt(t, "model", "start from this checkpoint's weights"),
        {"data", 0, DS_OPT_STRLIST, &a.data, "GLOB|-", "token shards: a glob, a directory of .tok files, or '-' (one shard on stdin)", 0, 0, 0},
        ds_train_toolopt(t, "out", NULL),
        {"steps", 0, DS_OPT_I64, &t->steps, "N", "total optimizer steps (a resumed run continues up to N)", 0, 1, 1e15},
        {"batch", 0, DS_OPT_INT, &t->batch, "B", "sequences per optimizer step", 0, 1, 1e9},
        {"micro-batch", 0, DS_OPT_INT, &t->micro_batch, "M", "sequences per forward/backward (gradient accumulation; 0 = --batch)", 0, 0, 1e9},
        {"seq-len", 0, DS_OPT_INT, &t->seq_len, "T", "tokens per sequence", 0, 1, 1 << 24},
        ds_train_toolopt(t, "lr", "peak learning rate (V3: 2.2e-4)"),
        ds_train_toolopt(t, "lr-schedule", "v3[:...] | cosine[:...] | wsd[:...] | steps/linear points (docs/DESIGN.md)"),
        {"batch-ramp", 0, DS_OPT_STR, &a.batch_ramp, "SPEC", "batch-size schedule, e.g. linear:64@0,256@10Mtok (default: constant --batch)", 0, 0, 0},
        {"gamma", 0, DS_OPT_STR, &a.gamma, "SPEC", "bias update speed schedule (0 = frozen)", 0, 0, 0},
        {"lambda", 0, DS_OPT_STR, &a.lambda, "SPEC", "MTP loss weight schedule", 0, 0, 0},
        ds_train_toolopt(t, "alpha", "sequence-wise balance loss weight (V3: 1e-4)"),
        ds_train_toolopt(t, "weight-decay", "AdamW weight decay (not on norm gains)"),
        ds_train_toolopts_group(t, "beta1 beta2 eps clip bf16-moments no-zero"),
        {"init-std", 0, DS_OPT_FLOAT, &a.init_std, "STD", "normal init std of a fresh model (0 = the config's ds_init_std)", 0, 0, 1},
        ds_train_toolopt(t, "seed", "seed of the init, the data order and FIM"),
        ds_train_toolopt(t, "threads", NULL),
        ds_train_toolopt(t, "tokenizer", "tokenizer.json to embed (default: the checkpoint's, or tokenizer.json beside the shards)"),
        ds_train_toolopt(t, "val-frac", NULL),
        {"val-every", 0, DS_OPT_INT, &t->val_every, "N", "validation loss every N steps and at the end (0 = never)", 0, 0, 1e9},
        ds_train_toolopt(t, "val-batches", NULL),
        {"fim-rate", 0, DS_OPT_FLOAT, &a.fim_rate, "R", "fill-in-the-middle (PSM) rate per document (V3: 0.1)", 0, 0, 1},
        ds_train_toolopts_group(t, "metrics plot save-every ema resume force log-every"),
        {"peak-tflops", 0, DS_OPT_FLOAT, &a.peak_tflops, "X", "peak for MFU (0 = measure sgemm on the CPU; 989.4, the H100's bf16, with --device cuda)", 0, 0, 1e6},
        ds_train_toolopts_group(t, "skip-nonfinite profile bf16 fp8 fp8-accum fp8-promote fp8-attn-out fp8-moe-cache fp8-dispatch device "
                                   "comm"),
        {"dp", 0, DS_OPT_INT, &a.dp, "N", "data-parallel ranks (0 = every process mpirun started; with --plan: the cluster's devices / --pp)", 0, 0, 1e6},
        ds_train_toolopts_group(t, "ep ranks-per-node two-hop"),
        ds_train_toolopts_group(t, "pp schedule micro-batches stages"),
        {"print-schedule", 0, DS_OPT_FLAG, &a.print_schedule, NULL,
         "print the pipeline schedule of --pp/--schedule/--micro-batches as a per-rank timeline and the bubble and memory "
         "accounting of V3's Table 2, draw it as a PNG (--plot, default schedule.png), and exit without training", 0, 0, 0},
        {"plan", 0, DS_OPT_STR, &a.plan, "CLUSTER.json",
         "no training: predict memory per GPU, step time, MFU and GPU-hours of this run on a cluster (share/clusters/; "
         "docs/formats.md), the simulated pipeline timeline as a PNG with --plot", 0, 0, 0},
        {"recompute", 0, DS_OPT_CHOICE, &a.recompute, "R",
         "recomputed in backward (--plan): v3 = RMSNorm and the MLA up-projections (what training does), none, full", "v3|none|full"},
        {"phases", 0, DS_OPT_STR, &a.phases, "SEQ:BATCH:STEPS,...",
         "with --plan: the GPU-hours of training phases run one after the other (each its sequence length, batch and "
         "steps; V3's context extension: 32768:1920:1000,131072:480:1000), every phase with the layout given, or its best "
         "with --search; --seq-len and --batch are the phases'", 0, 0, 0},
        {"search", 0, DS_OPT_FLAG, &a.search, NULL, "with --plan: every layout of the cluster that fits, fewest GPU-hours first", 0, 0, 0},
        {"json", 0, DS_OPT_FLAG, &a.json, NULL, "with --plan: the plan as one JSON object (--search: an array)", 0, 0, 0},
        ds_train_toolopts_group(t, "quiet verbose"),
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
                   "      --batch 16 --seq-len 256 --lr 1e-3 --metrics run.jsonl --plot loss.png --save-every 50\n"
                   "  ds-pretrain --pp 8 --micro-batches 20 --schedule dualpipe --print-schedule --plot dualpipe.png\n"
                   "  ds-pretrain --plan share/clusters/cpu-2core.json --config share/configs/demo.json --batch 8 --seq-len 256",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc < 0) rc = ds_train_tool_start(t, argc, argv, first);
    if (rc < 0 && a.print_schedule) rc = print_schedule(&a);
    if (rc < 0) rc = check_args(&a);
    if (rc < 0) rc = a.plan ? run_plan(&a) : run(&a);
    ds_strlist_free(&a.data);
    return rc;
}
