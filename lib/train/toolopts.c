#include "train/toolopts.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/threads.h"
#include "io/checkpoint.h"
#include "dist/dp.h"
#include "ops/gemm_bf16.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ds_train_toolopts_defaults(ds_train_toolopts *t) {
    ds_train_opts to;
    ds_train_opts_defaults(&to);
    *t = (ds_train_toolopts){.device = "cpu", .comm = "auto", .ep = 1, .log_every = to.log_every, .val_batches = to.val_batches,
                             .bf16_moments = to.adamw.bf16_moments, .weight_decay = to.adamw.weight_decay,
                             .beta1 = to.adamw.beta1, .beta2 = to.adamw.beta2, .eps = to.adamw.eps, .clip = to.clip_norm,
                             .pp = 1, .pipe_schedule = "1f1b", .fp8_accum = "exact", .fp8_promote = 128,
                             .fp8_attn_out = "e5m6", .fp8_moe_cache = "fp8", .fp8_dispatch = "fp8"};
}

/* One row per shared option: where it writes in ds_train_toolopts, and its wording when it has one
 * meaning in every tool (the wording of the others is the tool's). */
typedef struct {
    const char *name;
    char short_name;
    ds_opt_type type;
    size_t offset;
    const char *metavar, *help, *choices;
    double min, max;
} shared_opt;

#define F(field) offsetof(ds_train_toolopts, field)
static const shared_opt SHARED[] = {
    /* paths and places */
    {"model", 'm', DS_OPT_STR, F(model), "CKPT"},
    {"out", 'o', DS_OPT_STR, F(out), "OUT", "checkpoint directory (replaced atomically at every save)"},
    {"resume", 0, DS_OPT_STR, F(resume), "DIR", "continue the run saved in DIR (bit-identical on the same machine and threads)"},
    {"force", 0, DS_OPT_FLAG, F(force), .help = "replace a checkpoint already in -o (refused without it, unless --resume continues it)"},
    {"tokenizer", 0, DS_OPT_STR, F(tokenizer), "FILE"},
    {"metrics", 0, DS_OPT_STR, F(metrics), "FILE.jsonl", "one JSON object per step ('-' = stdout)"},
    {"plot", 0, DS_OPT_STR, F(plot), "FILE.png", "draw the loss curves at the end"},
    {"device", 0, DS_OPT_CHOICE, F(device), "DEV", "where to train (cuda: one GPU per process, the local rank's)", "cpu|cuda"},
    {"comm", 0, DS_OPT_CHOICE, F(comm), "NAME",
     "--device cuda with --dp: gradients over nccl (GPU buffers) or mpi (host copies); auto: nccl where built",
     "auto|mpi|nccl"},
    /* the optimizer */
    {"lr", 0, DS_OPT_FLOAT, F(lr), "LR", .max = 10},
    {"lr-schedule", 0, DS_OPT_STR, F(lr_schedule), "SPEC"},
    {"weight-decay", 0, DS_OPT_FLOAT, F(weight_decay), "WD", "AdamW weight decay", .max = 10},
    {"beta1", 0, DS_OPT_FLOAT, F(beta1), "B1", "AdamW beta1", .max = 1},
    {"beta2", 0, DS_OPT_FLOAT, F(beta2), "B2", "AdamW beta2", .max = 1},
    {"eps", 0, DS_OPT_FLOAT, F(eps), "EPS", "AdamW epsilon", .max = 1},
    {"bf16-moments", 0, DS_OPT_FLAG, F(bf16_moments), .help = "keep AdamW moments in bf16"},
    {"no-zero", 0, DS_OPT_FLAG, F(no_zero),
     .help = "keep the whole optimizer state on every data-parallel rank (default: ZeRO-1, sharded over them)"},
    {"clip", 0, DS_OPT_FLOAT, F(clip), "NORM", "clip gradients to this global norm (0 = off)", .max = 1e9},
    {"clip-grad", 0, DS_OPT_FLOAT, F(clip), "NORM", "clip gradients to this global norm (0 = off)", .max = 1e9},
    {"alpha", 0, DS_OPT_FLOAT, F(alpha), "A", .max = 1},
    /* the run */
    {"seed", 0, DS_OPT_SEED, F(seed), "S"},
    {"threads", 0, DS_OPT_INT, F(threads), "N", "CPU threads (0 = all cores)", .max = 4096},
    {"val-frac", 0, DS_OPT_FLOAT, F(val_frac), "F", "share of the data held out for validation", .max = 0.5},
    {"val-batches", 0, DS_OPT_INT, F(val_batches), "N", "micro-batches per validation", .min = 1, .max = 1e9},
    {"save-every", 0, DS_OPT_INT, F(save_every), "N", "checkpoint every N steps (and always at the end)", .max = 1e9},
    {"ema", 0, DS_OPT_FLOAT, F(ema), "DECAY",
     "keep an EMA of the weights (0 < DECAY < 1) in host memory, saved as a model in OUT/ema", .max = 1},
    {"log-every", 0, DS_OPT_INT, F(log_every), "N", "print a line every N steps (0 = none)", .max = 1e9},
    {"skip-nonfinite", 0, DS_OPT_FLAG, F(skip_nonfinite), .help = "skip a step with NaN/Inf instead of stopping with exit 3"},
    {"profile", 0, DS_OPT_FLAG, F(profile),
     .help = "time every op of the steps: a table per layer kind (GEMM FLOPs and GFLOP/s per class) and per op kind "
             "at the end, and one {\"profile\": ...} metrics record"},
    {"fp8", 0, DS_OPT_FLAG, F(fp8), .help = DS_TRAIN_FP8_HELP},
    {"bf16", 0, DS_OPT_FLAG, F(bf16),
     .help = "bf16 training (V3's baseline): activations and GEMM outputs stored in bf16, fp32 accumulation, "
             "fp32 master weights and optimizer"},
    {"fp8-accum", 0, DS_OPT_CHOICE, F(fp8_accum), "MODEL",
     "--fp8 GEMMs' accumulation: exact (each 128-block exact, promoted to fp32) or hopper (H800's ~14-bit "
     "accumulator, fp8/gemm.h; slow)", "exact|hopper"},
    {"fp8-promote", 0, DS_OPT_INT, F(fp8_promote), "N",
     "--fp8-accum hopper: promote partial sums to fp32 every N products (V3: 128; 0 = never)", .max = 1e9},
    {"fp8-attn-out", 0, DS_OPT_CHOICE, F(fp8_attn_out), "FMT",
     "--fp8: keep the attention output (o_proj's input, read again by attention's backward) in e5m6 with "
     "power-of-two 1x128 scales (V3) or in f32", "e5m6|f32"},
    {"fp8-moe-cache", 0, DS_OPT_CHOICE, F(fp8_moe_cache), "P",
     "--fp8: the MoE SwiGLU inputs kept for the backward in fp8 (E4M3 1x128, V3; SwiGLU recomputed) or fp32",
     "fp8|fp32"},
    {"fp8-dispatch", 0, DS_OPT_CHOICE, F(fp8_dispatch), "P",
     "--fp8: the experts' inputs and the gradients before the down projection quantized to FP8 with power-of-two "
     "scales where the dispatch is, combine in bf16 (--ep) (fp8, V3), or both fp32", "fp8|fp32"},
    {"ep", 0, DS_OPT_INT, F(ep), "N",
     "expert parallelism: groups of N consecutive ranks split the routed experts (each holds n_routed/N)", .min = 1, .max = 1e6},
    {"ranks-per-node", 0, DS_OPT_INT, F(ranks_per_node), "K",
     "ranks per node for node-limited routing (n_group = nodes of an EP group; default: the real hosts)", .max = 1e6},
    {"two-hop", 0, DS_OPT_FLAG, F(two_hop), NULL,
     "--ep: dispatch and combine in two hops, across nodes then inside them (V3's IB then NVLink; dist/ep.h)"},
    /* pipeline parallelism (dist/pipesched.h) */
    {"pp", 0, DS_OPT_INT, F(pp), "N", "pipeline stages (world = PP x DP)", .min = 1, .max = 4096},
    {"schedule", 0, DS_OPT_CHOICE, F(pipe_schedule), "S",
     "pipeline schedule: 1F1B, zero-bubble 1F1B (ZB1P), or V3's DualPipe (even PP; micro-batches even and >= 2 PP)",
     "1f1b|zb1p|dualpipe"},
    {"micro-batches", 0, DS_OPT_INT, F(pipe_micro_batches), "N",
     "micro-batches per step and data-parallel replica: --batch = N x --micro-batch x DP (0: from --batch)", .max = 1 << 20},
    {"stages", 0, DS_OPT_STR, F(stages), "L0-L1,...",
     "decoder layers of each pipeline stage (default: split by estimated cost)"},
    {"quiet", 'q', DS_OPT_FLAG, F(quiet), .help = "only errors and warnings"},
    {"verbose", 'v', DS_OPT_FLAG, F(verbose), .help = "more detail"},
};
#undef F

static const shared_opt *shared(const char *name, size_t len) {
    for (size_t i = 0; i < sizeof SHARED / sizeof *SHARED; i++)
        if (strlen(SHARED[i].name) == len && !strncmp(SHARED[i].name, name, len)) return &SHARED[i];
    return NULL;
}

static ds_opt entry(ds_train_toolopts *t, const shared_opt *s, const char *help) {
    return (ds_opt){s->name, s->short_name, s->type, (char *)t + s->offset, s->metavar, help ? help : s->help ? s->help : "",
                    s->choices, s->min, s->max};
}

/* A name the table lacks: it writes nowhere, and no value is accepted for it. */
static const char *nowhere;
static ds_opt unknown(const char *name) {
    return (ds_opt){name, 0, DS_OPT_CHOICE, &nowhere, "?", "(unknown shared option)", ""};
}

ds_opt ds_train_toolopt(ds_train_toolopts *t, const char *name, const char *help) {
    const shared_opt *s = shared(name, strlen(name));
    return s ? entry(t, s, help) : unknown(name);
}

ds_opt ds_train_toolopts_group(ds_train_toolopts *t, const char *names) {
    static const ds_opt full[] = {{"(too many shared options)", 0, DS_OPT_CHOICE, &nowhere, "?", "", ""}, {0}};
    const int room = (int)(sizeof t->group_entries / sizeof *t->group_entries) - t->n_group_entries;
    ds_opt *group = t->group_entries + t->n_group_entries;
    int n = 0;
    if (room < 2) return (ds_opt){"group", 0, DS_OPT_GROUP, (void *)full};
    for (const char *p = names; *p;) {
        const size_t len = strcspn(p, " ");
        const shared_opt *s = shared(p, len);
        if (n + 3 > room) { /* room for this mark and the end only */
            group[n++] = full[0];
            break;
        }
        if (len) group[n++] = s ? entry(t, s, NULL) : unknown("(unknown name in a group)");
        p += len + (p[len] == ' ');
    }
    group[n] = (ds_opt){0};
    t->n_group_entries += n + 1;
    return (ds_opt){"group", 0, DS_OPT_GROUP, group};
}

/* The seed --resume's newest checkpoint records (0 when there is none to read: the session then
 * says what is wrong with the directory). */
static int resumed_seed(const char *resume, uint64_t *seed) {
    char dir[4096], p[4200], *text = NULL;
    size_t len;
    if (ds_ckpt_find_latest(resume, dir, sizeof dir) || ds_path_join(p, sizeof p, dir, "trainer_state.json") ||
        !ds_path_exists(p) || ds_read_file(p, &text, &len, 1u << 30)) {
        ds_err_clear();
        return 0;
    }
    int rc = ds_trainer_state_seed(text, len, p, seed);
    free(text);
    return rc;
}

int ds_train_tool_start(ds_train_toolopts *t, int argc, char **argv, int first) {
    if (first < argc) return ds_usage_error("unexpected argument '%s'", argv[first]);
    if (ds_dist_check_launch()) return ds_tool_report(DS_EUSAGE);
    if (ds_cli_given(&t->ema) && !(t->ema > 0 && t->ema < 1))
        return ds_usage_error("%s %g: the decay must lie strictly between 0 and 1", ds_cli_opt(&t->ema, "--ema"), t->ema);
    if (t->bf16 && t->fp8) return ds_usage_error("--bf16 and --fp8 are two precisions for the same GEMMs: give one");
    const int hopper = !strcmp(t->fp8_accum, "hopper");
    if (hopper && !t->fp8) return ds_usage_error("--fp8-accum hopper models FP8 GEMMs: it needs --fp8");
    if (ds_cli_given(&t->fp8_promote) && !hopper)
        return ds_usage_error("--fp8-promote %d: promotion applies to --fp8 --fp8-accum hopper only", t->fp8_promote);
    if (ds_cli_given(&t->fp8_attn_out) && !t->fp8)
        return ds_usage_error("--fp8-attn-out %s: the attention output's cache format applies to --fp8 only", t->fp8_attn_out);
    if (ds_cli_given(&t->fp8_moe_cache) && !t->fp8)
        return ds_usage_error("--fp8-moe-cache %s: the MoE's FP8 storage belongs to --fp8 training: it needs --fp8",
                              t->fp8_moe_cache);
    if (ds_cli_given(&t->fp8_dispatch) && !t->fp8)
        return ds_usage_error("--fp8-dispatch %s: the FP8 dispatch belongs to --fp8 training: it needs --fp8",
                              t->fp8_dispatch);
    if (!ds_cli_given(&t->seed)) { /* as llama.cpp: a random seed, printed and recorded; a resumed run keeps its own */
        t->seed_note = "random: --seed repeats the run";
        if (!t->resume || resumed_seed(t->resume, &t->seed)) t->seed = ds_seed_draw();
        else t->seed_note = "the resumed run's";
    }
    if (t->quiet) ds_log_set_level(DS_LOG_QUIET);
    if (t->verbose) ds_log_set_level(DS_LOG_VERBOSE);
    ds_threads_set(t->threads);
    return -1;
}

int ds_train_tool_check_out(const ds_train_toolopts *t) {
    if (!t->out) return ds_usage_error("-o OUT is required");
    if (ds_is_stdio(t->out)) return ds_usage_error("%s: checkpoints are directories, not '-'", ds_cli_opt(&t->out, "-o"));
    return 0;
}

int ds_train_tool_check_batch(ds_train_toolopts *t) {
    if (!t->micro_batch) t->micro_batch = t->batch;
    if (t->batch % t->micro_batch)
        return ds_usage_error("--batch %d is not a multiple of --micro-batch %d", t->batch, t->micro_batch);
    return 0;
}

int ds_train_tool_micro_batches(ds_train_toolopts *t, int dp, int batch_ramp) {
    const int n = t->pipe_micro_batches;
    if (!n) return 0;
    if (batch_ramp) return ds_usage_error("--micro-batches %d fixes the step's batch: it excludes --batch-ramp", n);
    if (dp <= 0) { /* the data-parallel replicas the launcher starts (the session joins them later) */
        const ds_launch l = ds_launch_get();
        const int world = l.mpi && l.size > 0 ? l.size : 1, pp = t->pp > 1 ? t->pp : 1;
        if (world % pp) return 0; /* the session refuses the layout with its own message */
        dp = world / pp;
    }
    if (t->micro_batch) {
        const long long want = (long long)n * t->micro_batch * dp;
        if (ds_cli_given(&t->batch) && want != t->batch)
            return ds_usage_error("--micro-batches %d x --micro-batch %d x DP %d = %lld sequences per step, but --batch is %d", n,
                                  t->micro_batch, dp, want, t->batch);
        if (want > 1 << 24) return ds_usage_error("--micro-batches %d x --micro-batch %d x DP %d: too many sequences per step", n,
                                                  t->micro_batch, dp);
        t->batch = (int)want;
        return 0;
    }
    if (t->batch % ((long long)n * dp))
        return ds_usage_error("--batch %d is not --micro-batches %d x DP %d micro-batches of whole sequences "
                              "(--batch = micro-batches x --micro-batch x DP)", t->batch, n, dp);
    t->micro_batch = t->batch / (n * dp);
    return 0;
}

int ds_train_tool_check_pipeline(ds_train_toolopts *t, int n_layers, ds_pipe_kind *kind) {
    const int defaulted = !t->pipe_micro_batches;
    if (defaulted) t->pipe_micro_batches = t->batch / (t->micro_batch ? t->micro_batch : t->batch);
    if (ds_pipe_kind_parse(t->pipe_schedule, kind) || ds_pipe_check(*kind, t->pp, t->pipe_micro_batches))
        return ds_usage_error("%s%s", ds_errmsg(), defaulted ? " (from --batch / --micro-batch; give --micro-batches N)" : "");
    if (n_layers > 0 && t->pp > n_layers)
        return ds_usage_error("--pp %d: more pipeline stages than the model's %d layers", t->pp, n_layers);
    return 0;
}

ds_session_opts ds_train_toolopts_session(ds_train_toolopts *t, const char *tool) {
    return (ds_session_opts){.tool = tool, .model_path = t->model, .resume = t->resume, .out_dir = t->out, .force = t->force,
                             .tokenizer_path = t->tokenizer, .metrics_path = t->metrics, .plot_path = t->plot,
                             .device = t->device, .comm = t->comm, .fp8 = t->fp8, .fp8_hopper = !strcmp(t->fp8_accum, "hopper"),
                             .fp8_promote = t->fp8_promote, .fp8_attn_out_f32 = !strcmp(t->fp8_attn_out, "f32"),
                             .bf16 = t->bf16, .fp8_moe_cache_f32 = !strcmp(t->fp8_moe_cache, "fp32"),
                             .fp8_dispatch_f32 = !strcmp(t->fp8_dispatch, "fp32"), .balance_alpha = t->alpha,
                             .micro_batch = t->micro_batch, .seq_len = t->seq_len, .seed = t->seed,
                             .seed_note = t->seed_note, .seed_share = &t->seed, .ema = t->ema, .pp = t->pp,
                             .schedule = t->pipe_schedule, .stages = t->stages, .ep = t->ep, .ranks_per_node = t->ranks_per_node,
                             .two_hop = t->two_hop, .profile = t->profile};
}

void ds_train_toolopts_apply(const ds_train_toolopts *t, ds_train_opts *to) {
    ds_train_opts_defaults(to);
    to->total_steps = t->steps, to->seq_len = t->seq_len, to->micro_batch = t->micro_batch, to->seed = t->seed;
    to->adamw.beta1 = t->beta1, to->adamw.beta2 = t->beta2, to->adamw.eps = t->eps, to->adamw.weight_decay = t->weight_decay;
    to->adamw.bf16_moments = t->bf16_moments, to->clip_norm = t->clip, to->balance_alpha = t->alpha;
    to->skip_nonfinite = t->skip_nonfinite, to->val_every = t->val_every, to->val_batches = t->val_batches;
    to->save_every = t->save_every, to->log_every = t->log_every, to->no_zero = t->no_zero;
    to->profile = t->profile;
}

int ds_train_schedules(const ds_train_sched_specs *sp, ds_train_opts *to) {
    char lr[40], batch[32];
    snprintf(lr, sizeof lr, "%.17g", sp->lr_peak);
    snprintf(batch, sizeof batch, "%d", sp->batch);
    const int64_t n = to->total_steps;
    DS_TRY(ds_sched_parse(&to->lr, sp->lr ? sp->lr : lr, sp->lr_peak, n, "--lr-schedule"));
    DS_TRY(ds_sched_parse(&to->batch, sp->batch_ramp ? sp->batch_ramp : batch, sp->batch, n, sp->batch_ramp ? "--batch-ramp" : "--batch"));
    DS_TRY(ds_sched_parse(&to->gamma, sp->gamma ? sp->gamma : "0", sp->gamma_peak, n, "--gamma"));
    return ds_sched_parse(&to->lambda, sp->lambda ? sp->lambda : "0", sp->lambda_peak, n, "--lambda");
}

void ds_train_record_begin(ds_jsonw *w, const ds_session *s, const char *model, const char *reference) {
    ds_jsonw_init(w);
    ds_jsonw_obj_begin(w);
    ds_jsonw_key(w, "config");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "tool", s->o.tool);
    ds_jsonw_kstr(w, "version", ds_version_string);
    ds_jsonw_kstr(w, "model", model);
    if (reference) ds_jsonw_kstr(w, "reference", reference);
    ds_param_counts pc;
    ds_config_counts(&s->cfg, &pc);
    ds_param_counts_jsonw(&pc, w);
}

void ds_train_record_schedules(ds_jsonw *w, const ds_train_opts *to) {
    const ds_sched *sc[4] = {&to->lr, &to->batch, &to->gamma, &to->lambda};
    static const char *names[4] = {"lr", "batch", "gamma", "lambda"};
    char d[512];
    for (int k = 0; k < 4; k++) {
        ds_sched_describe(sc[k], d, sizeof d);
        ds_jsonw_kstr(w, names[k], d);
        ds_info("%-7s %s", names[k], d);
    }
}

char *ds_train_record_end(ds_jsonw *w, const ds_session *s) {
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->o.seed);
    ds_jsonw_kstr(w, "seed", seed);
    ds_jsonw_kint(w, "threads", ds_threads_get());
    ds_jsonw_kbool(w, "fp8", s->o.fp8);
    if (s->o.bf16) ds_jsonw_kbool(w, "bf16", 1);
    if (s->o.bf16) /* ops/gemm_bf16.h on the CPU; on a GPU the CUDA backend's bf16 GEMMs */
        ds_jsonw_kstr(w, "bf16_gemm", s->o.device && strcmp(s->o.device, "cpu") ? "cublaslt" : ds_gemm_bf16_amx() ? "amx" : "sgemm");
    if (s->o.fp8_hopper) ds_jsonw_kint(w, "fp8_hopper_promote", s->o.fp8_promote);
    if (s->o.fp8) ds_jsonw_kstr(w, "fp8_attn_out", s->o.fp8_attn_out_f32 ? "f32" : "e5m6");
    if (s->o.fp8 && s->o.fp8_moe_cache_f32) ds_jsonw_kstr(w, "fp8_moe_cache", "fp32");
    if (s->o.fp8 && s->o.fp8_dispatch_f32) ds_jsonw_kstr(w, "fp8_dispatch", "fp32");
    if (s->resumed_step >= 0) ds_jsonw_kint(w, "resumed_from_step", s->resumed_step);
    ds_jsonw_obj_end(w);
    ds_jsonw_obj_end(w);
    char *record = strdup(w->buf);
    ds_jsonw_free(w);
    return record;
}

int ds_train_tool_exit(ds_session *s, int rc, int stopped_by) {
    rc = ds_session_agree(s, rc); /* a failure of the tool's own between open and start: printed once */
    if (rc == DS_EUSAGE && !ds_errhint()[0]) ds_hint("%s --help lists the options", ds_tool_name());
    ds_tool_report(rc);
    return rc ? (rc == DS_EDIVERGED ? 3 : rc == DS_EUSAGE ? 2 : 1) : stopped_by ? 128 + stopped_by : 0;
}
