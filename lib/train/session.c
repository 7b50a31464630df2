#include "train/session.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "dist/dp.h"
#include "fp8/linear.h"
#include "ops/bf16.h"
#include "ops/gemm_bf16.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "ops/device.h"
#include "ops/ops.h"
#include "ops/prof.h"
#include "tok/tokenizer.h"
#include "tok/hfconfig.h"
#include "train/ema.h"
#include "train/net.h"
#include "train/optstate.h"
#include "train/profile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- checkpoint files (the directory itself is io/checkpoint.h's) ---- */

/* The weights in fp32 (the master copy: a resumed run continues from exactly these bits), under HF
 * names in parameter-table order, each layer's expert bias after its router as ds_model_save_weights
 * stores them. The biases come from the trainer's copy (the net's, host memory); weights on a device are
 * copied to `host` (n_params floats, valid until the writer commits). src: other weights in the same
 * layout in host memory (the EMA), or NULL for the model's. */
static int add_weights(ds_ckpt_writer *w, ds_session *s, const float *src, float **host) {
    ds_model *m = s->model;
    int n_info;
    const ds_param *info = ds_model_params_info(m, &n_info);
    const float *p = src ? src : ds_model_params(m);
    if (s->full.buf) /* expert parallelism, pipeline stages: the one-process model (and --ep's EMA), gathered
                        (ds_session_save) */
        info = s->full.info, n_info = s->full.n, p = src ? src : s->full.buf;
    const ds_config *c = ds_model_config(m);
    const ds_ops *ops = ds_model_ops(m);
    if (!src && !ds_ops_on_host(ops)) {
        size_t n = ds_model_num_params(m);
        if (!(*host = malloc(n * sizeof(float)))) return ds_fail(DS_ERR, "out of memory: %zu parameters for the checkpoint", n);
        ops->copy(*host, p, n * sizeof(float), DS_COPY_D2H);
        ops->sync();
        DS_TRY(ops->status());
        p = *host;
    }
    char name[160];
    for (int i = 0; i < n_info; i++) {
        DS_TRY(ds_ckpt_writer_add_f32(w, info[i].name, info[i].ndim, info[i].shape, p + info[i].offset, DS_F32));
        if (info[i].kind != DS_PARAM_ROUTER || !ds_model_expert_bias(m, info[i].layer)) continue;
        int k = 0; /* MoE layers before this one: the net lists their biases in layer order */
        for (int l = 0; l < info[i].layer; l++) k += ds_model_expert_bias(m, l) != NULL;
        if (k >= s->net.n_moe_layers) return ds_fail(DS_ERR, "checkpoint: no expert bias for layer %d", info[i].layer);
        int64_t shape[1] = {c->n_routed_experts};
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", info[i].layer);
        DS_TRY(ds_ckpt_writer_add_f32(w, name, 1, shape, s->net.expert_bias[k], DS_F32));
    }
    return 0;
}

/* tokenizer_config.json for the tokenizer, the config as trained (model_max_length follows context
 * extension) and the run's chat template: the one set by the tool, else the loaded checkpoint's Jinja
 * text as it was (a template these tools cannot read travels on untouched), else the built-in one. */
static int add_tokenizer_config(ds_ckpt_writer *w, const ds_session *s) {
    char *jinja = NULL, *text = NULL;
    int rc = 0;
    if (s->chat) rc = ds_chat_template_to_jinja(s->chat, &jinja);
    else if (s->tokenizer_config) rc = ds_tok_hf_config_chat_template(s->tokenizer_config, s->tokenizer_config_len, &jinja);
    if (!rc) rc = ds_tok_hf_config(s->tokenizer_json, s->tokenizer_len, &s->cfg, jinja, &text);
    if (!rc) rc = ds_ckpt_writer_add_file(w, "tokenizer_config.json", text, strlen(text));
    free(jinja);
    free(text);
    return rc;
}

/* What a loadable model directory holds: the config, the tokenizer files and the weights (src as
 * add_weights takes it). */
static int add_model(ds_ckpt_writer *w, ds_session *s, const float *src, float **host) {
    int rc = ds_ckpt_writer_set_config(w, &s->cfg);
    if (!rc && s->tokenizer_json) rc = ds_ckpt_writer_set_tokenizer(w, s->tokenizer_json, s->tokenizer_len);
    if (!rc && s->tokenizer_json) rc = add_tokenizer_config(w, s);
    if (!rc) rc = add_weights(w, s, src, host);
    return rc;
}

/* --ema: the average as a model directory of its own, <checkpoint>/ema, written inside the
 * checkpoint's temporary directory so that it is swapped into place with the checkpoint it belongs
 * to (one rename: the EMA and the model a reader sees are always of the same step). */
static int add_ema(ds_ckpt_writer *w, ds_session *s, const float *avg) {
    char path[8192];
    DS_TRY(ds_ckpt_writer_file_path(w, DS_EMA_DIR, path, sizeof path));
    ds_ckpt_writer *ew;
    DS_TRY(ds_ckpt_writer_begin(&ew, path, NULL));
    float *host = NULL;
    int rc = add_model(ew, s, avg, &host);
    if (rc) ds_ckpt_writer_abort(ew);
    else rc = ds_ckpt_writer_commit(ew);
    free(host);
    return rc;
}

/* What the writing rank puts in a checkpoint: the model, the EMA, the optimizer as one file (opt_file:
 * it holds all of it) and the trainer state. */
static int add_checkpoint(ds_ckpt_writer *w, ds_session *s, int opt_file, const float *ema, float **host) {
    char *state = NULL, path[8192];
    int rc = add_model(w, s, NULL, host);
    if (!rc && ema) rc = add_ema(w, s, ema);
    if (!rc && opt_file) rc = ds_ckpt_writer_file_path(w, DS_OPTSTATE_FILE, path, sizeof path);
    if (!rc && opt_file) rc = ds_optstate_write_file(ds_trainer_zero(s->trainer), s->net.info, s->net.n_info, path);
    if (!rc) rc = ds_trainer_state_json(s->trainer, &state);
    if (!rc) rc = ds_ckpt_writer_add_file(w, "trainer_state.json", state, strlen(state));
    free(state);
    return rc;
}

int ds_session_save(ds_session *s, const char *dir) {
    /* expert parallelism, pipeline stages: every rank's tensors onto rank 0 first, so the files are the
     * one-process run's; the EMA likewise from the ranks that keep it */
    if (s->ep.have_layout || s->pipe_partial)
        DS_TRY(ds_distckpt_gather_model(&s->full, s->model, &s->comm, 0, ds_model_params(s->model)));
    const float *ema = NULL;
    if (s->o.ema > 0) DS_TRY(ds_ema_run_gather(&s->ema, s->model, s->have_comm ? &s->comm : NULL, &ema));
    ds_zero *z = ds_trainer_zero(s->trainer);
    const int world = s->have_comm ? s->comm.size : 1, rank = ds_session_rank(s);
    /* pipeline stages hold different tensors: each rank writes its own moments */
    const int sharded = ds_optstate_sharded(z, world) || s->pipe_partial;
    if (!sharded && rank != 0) return 0; /* replicas are identical: rank 0 writes for all */
    if (sharded && s->failed_alone) /* the others may wait in another collective: no save can be agreed */
        return ds_fail(DS_ERR, "checkpoint: the sharded optimizer state needs every rank, and rank %d failed: %s", rank, dir);
    ds_ckpt_writer *w = NULL;
    float *host = NULL;
    char tmp[4096] = "", name[64], path[8300];
    int rc = 0;
    if (rank == 0) {
        rc = ds_ckpt_writer_begin(&w, dir, NULL);
        /* the shards are files of this checkpoint: written into its temporary directory, swapped in with it */
        for (int r = world - 1; sharded && !rc && r >= 0; r--) {
            ds_optstate_shard_name(r, world, name, sizeof name);
            rc = ds_ckpt_writer_file_path(w, name, tmp, sizeof tmp);
        }
        if (!rc) rc = add_checkpoint(w, s, !sharded, ema, &host);
    }
    if (sharded) { /* every rank writes its shard; rank 0 then indexes them and commits */
        rc = ds_comm_agree(&s->comm, rc);
        if (!rc) rc = ds_comm_bcast_bytes(&s->comm, tmp, sizeof tmp);
        char *slash = strrchr(tmp, '/');
        if (slash) *slash = 0;
        ds_optstate_shard_name(rank, world, name, sizeof name);
        if (!rc) rc = ds_path_join(path, sizeof path, slash ? tmp : ".", name);
        if (!rc) rc = ds_optstate_write_shard(z, s->net.info, s->net.n_info, path);
        rc = ds_comm_agree(&s->comm, rc);
        char *index = NULL;
        if (!rc && rank == 0) rc = ds_optstate_index(slash ? tmp : ".", world, &index);
        if (!rc && rank == 0) rc = ds_ckpt_writer_add_file(w, DS_OPTSTATE_INDEX, index, strlen(index));
        free(index);
    }
    if (rc && w) ds_ckpt_writer_abort(w);
    else if (w) rc = ds_ckpt_writer_commit(w);
    free(host);
    return sharded ? ds_comm_agree(&s->comm, rc) : rc;
}

/* ---- the session ---- */

int ds_session_set_tokenizer(ds_session *s, const char *path) {
    free(s->tokenizer_json);
    s->tokenizer_json = NULL;
    DS_TRY(ds_tok_explain_kind(ds_read_file(path, &s->tokenizer_json, &s->tokenizer_len, 1u << 30), path));
    ds_tokenizer *t;
    int rc = ds_tok_from_json(&t, s->tokenizer_json, s->tokenizer_len, path);
    if (rc) return ds_tok_explain_kind(rc, path);
    uint32_t tv = ds_tok_vocab_size(t);
    ds_tok_free(t);
    if ((int64_t)tv > s->cfg.vocab_size) {
        ds_fail(DS_ERR, "vocabulary mismatch: the tokenizer has %u tokens, the model's vocab_size is %d: %s", tv, s->cfg.vocab_size, path);
        ds_hint("use a config whose vocab_size covers the tokenizer");
        return DS_ERR;
    }
    return 0;
}

int64_t ds_session_token_id(const ds_session *s, const char *text) {
    if (!s->tokenizer_json) return -1;
    ds_tokenizer *t;
    if (ds_tok_from_json(&t, s->tokenizer_json, s->tokenizer_len, "tokenizer.json")) return -1;
    int64_t id = ds_tok_token_id(t, text);
    ds_tok_free(t);
    return id;
}

/* The Linear layers' table for --fp8: lib/fp8's scaled-GEMM reference reads host memory. */
static int fp8_linear_ops(const ds_session_opts *o, ds_ops *out) {
    if (o->device && strcmp(o->device, "cpu")) {
        ds_fail(DS_ERR, "--fp8 --device %s: FP8 training runs on the CPU in this build", o->device);
        ds_hint("drop --fp8, or train with --device cpu");
        return DS_ERR;
    }
    ds_fp8_linear_ops(out, ds_ops_cpu());
    ds_fp8_train_opts fo = ds_fp8_train_get();
    fo.accum = (ds_fp8_accum){o->fp8_hopper ? DS_FP8_ACCUM_HOPPER : DS_FP8_ACCUM_EXACT, o->fp8_promote};
    ds_fp8_train_set(&fo);
    return 0;
}

/* The writer's lock on the output directory, taken once by the process that saves (rank 0). */
static int lock_out(ds_session *s) {
    if (s->out_lock.held || !s->o.out_dir || ds_session_rank(s) != 0) return 0;
    return ds_dir_lock_take(&s->out_lock, s->o.out_dir);
}

static int join_data_parallel(ds_session *s);

/* --pp: this rank's stages of the model, run by the trainer through net.run_micro. */
static int open_pipeline(ds_session *s) {
    const ds_pipe_kind kind = s->pipe_kind;
    ds_pipe_opts po = {.pp = s->o.pp, .kind = kind, .stages = s->o.stages, .seq_len = s->o.seq_len,
                       .pp_comm = &s->layout.pp_comm, .ep_comm = s->ep.have_layout ? &s->ep.L.ep_comm : NULL};
    DS_TRY(ds_pipe_net_create(&s->pipe, s->model, &po));
    s->net.run_micro = ds_pipe_net_run;
    s->net.micro_ctx = s->pipe;
    if (s->net.idle) s->net.idle = ds_pipe_net_idle; /* expert parallelism: a validation round without a batch */
    char line[1024];
    int k = snprintf(line, sizeof line, "pipeline: %s, stage layers", ds_pipe_kind_name(kind));
    int *first = calloc((size_t)s->o.pp + 1, sizeof *first);
    if (!first) return ds_fail(DS_ERR, "out of memory: stages");
    int rc = ds_pipe_split_layers(&s->cfg, s->o.pp, s->o.seq_len, s->o.stages, first);
    for (int st = 0; !rc && st < s->o.pp && k < (int)sizeof line - 32; st++)
        k += snprintf(line + k, sizeof line - (size_t)k, " %d-%d", first[st], first[st + 1] - 1);
    free(first);
    if (!rc) ds_info("%s (embedding with the first, head and MTP with the last)", line);
    return rc;
}

/* --pp: the schedule, and what this rank's model holds (train/pipemem.h) */
static int pipe_hold(ds_session *s, ds_model_opts *mo) {
    s->pipe_kind = DS_PIPE_1F1B;
    if (s->o.schedule) DS_TRY(ds_pipe_kind_parse(s->o.schedule, &s->pipe_kind));
    if (s->o.pp_whole) return 0;
    int *first = calloc((size_t)s->o.pp + 1, sizeof *first);
    if (!first) return ds_fail(DS_ERR, "out of memory: stages");
    int rc = ds_pipe_split_layers(&s->cfg, s->o.pp, s->o.seq_len, s->o.stages, first);
    if (!rc) ds_pipe_hold(s->pipe_kind, s->o.pp, s->layout.pp_comm.rank, first, s->cfg.num_nextn_predict_layers, &mo->hold);
    free(first);
    s->pipe_partial = !rc;
    return rc;
}

static int open_model(ds_session *s, const ds_session_opts *o) {
    const ds_ops *ops;
    DS_TRY(ds_ops_for_device(o->device, &ops));
    /* Before anything is read: refuse to replace what -o holds. */
    DS_TRY(ds_ckpt_check_out(o->out_dir, o->model_path, o->force, 1, o->resume));
    ds_ckpt *ck = NULL;
    if (o->resume) {
        DS_TRY(ds_ckpt_find_latest(o->resume, s->resume_dir, sizeof s->resume_dir));
        DS_TRY(ds_ckpt_open(&ck, s->resume_dir));
    } else if (o->model_path) {
        DS_TRY(ds_ckpt_open(&ck, o->model_path));
    }
    int rc = 0;
    if (ck) {
        size_t len;
        const char *tok = ds_ckpt_tokenizer(ck, &len);
        rc = ds_model_check_set(ds_ckpt_config(ck), ds_ckpt_tensors(ck), ds_ckpt_where(ck));
        if (!rc) rc = ds_config_copy(&s->cfg, ds_ckpt_config(ck));
        if (!rc && tok && !(s->tokenizer_json = malloc(len + 1))) rc = ds_fail(DS_ERR, "out of memory: tokenizer");
        if (!rc && tok) memcpy(s->tokenizer_json, tok, len + 1), s->tokenizer_len = len;
        if (!rc && ds_ckpt_has_file(ck, "tokenizer_config.json"))
            rc = ds_ckpt_read_file(ck, "tokenizer_config.json", &s->tokenizer_config, &s->tokenizer_config_len);
    } else if (!o->config_path) {
        return ds_fail(DS_EUSAGE, "no model: give --config CFG.json or -m CKPT");
    } else if (!(rc = ds_config_load_file(&s->cfg, o->config_path))) {
        rc = ds_config_validate(&s->cfg, o->config_path);
    }
    s->have_cfg = !rc;
    if (!rc && o->init_std > 0) s->cfg.ds_init_std = o->init_std;
    if (!rc && o->edit_config) rc = o->edit_config(o->edit_ctx, &s->cfg);
    if (!rc && o->edit_config) rc = ds_config_validate(&s->cfg, "edited config");
    if (!rc && o->tokenizer_path) rc = ds_session_set_tokenizer(s, o->tokenizer_path);
    if (!rc && o->seq_len > s->cfg.max_position_embeddings)
        ds_warn("--seq-len %d exceeds the config's max_position_embeddings %d", o->seq_len, s->cfg.max_position_embeddings);
    ds_model_opts mo = {.ops = ops, .max_batch = o->micro_batch, .max_seq = o->seq_len, .train = 1, .recompute = 1,
                        .want_entropy = o->want_entropy, .balance_alpha = o->balance_alpha};
    if (!rc) rc = ds_ep_run_check_config(&s->ep, &s->cfg);
    ds_ep_run_model_opts(&s->ep, &mo);
    if (!rc && s->have_layout) rc = pipe_hold(s, &mo);
    if (!rc && o->bf16) rc = ds_ops_check_bf16_gemm(ops); /* a device's own GEMMs must take bf16 operands */
    if (!rc && o->bf16 && !(mo.ops = ds_bf16_ops(ops))) rc = DS_EUSAGE;
    ds_ops fp8_linear, fp8_o_proj; /* --fp8: every block Linear's Fprop, Dgrad and Wgrad in V3's FP8 (fp8/linear.h) */
    if (!rc && o->fp8) rc = fp8_linear_ops(o, &fp8_linear);
    if (!rc && o->fp8) mo.linear_ops = &fp8_linear;
    if (!rc && o->fp8 && !o->fp8_attn_out_f32) { /* V3: the attention output kept in E5M6, o_proj's Wgrad reads it */
        ds_fp8_linear_ops_stored(&fp8_o_proj, ds_ops_cpu());
        mo.attn_out_e5m6 = 1, mo.o_proj_ops = &fp8_o_proj;
    }
    ds_ops fp8_pow2; /* the GEMMs that consume the FP8-dispatched operands (fp8/linear.h) */
    mo.moe_cache_fp8 = o->fp8 && !o->fp8_moe_cache_f32;
    mo.moe_dispatch_fp8 = o->fp8 && !o->fp8_dispatch_f32;
    if (mo.moe_dispatch_fp8) ds_fp8_linear_ops_pow2(&fp8_pow2, ds_ops_cpu());
    mo.linear_ops_pow2 = mo.moe_dispatch_fp8 ? &fp8_pow2 : NULL;
    if (!rc && o->profile) { /* every op timed; without --profile the model gets the plain tables */
        mo.ops = ds_prof_ops(mo.ops);
        if (mo.linear_ops) mo.linear_ops = ds_prof_linear_ops(mo.linear_ops);
        if (mo.o_proj_ops) mo.o_proj_ops = ds_prof_linear_ops2(mo.o_proj_ops);
    }
    /* Once the config and the layout are known good and before anything is built: the writer's lock on -o
     * (rank 0 writes for all: the ranks have joined by now), so a refused run creates no directory. */
    if (!rc) rc = lock_out(s);
    if (!rc) rc = ds_model_create(&s->model, &s->cfg, &mo);
    if (!rc) rc = ck ? ds_model_load_weights(s->model, ds_ckpt_tensors(ck)) : ds_model_init(s->model, o->seed);
    ds_ckpt_close(ck);
    if (!rc) rc = ds_train_net_from_model(&s->net, s->model, o->seq_len);
    if (!rc) s->devcomm.ops = s->net.ops; /* the staging path's copies */
    if (!rc && s->have_layout) rc = open_pipeline(s);
    return rc;
}

int ds_session_open(ds_session *s, const ds_session_opts *o) {
    memset(s, 0, sizeof *s);
    s->o = *o;
    s->resumed_step = -1;
    /* the ranks join before anything else, so every message names its rank and is printed once */
    int rc = join_data_parallel(s);
    if (!rc) rc = ds_ep_run_join(&s->ep, s->have_comm ? &s->comm : NULL, o->pp, o->ep, o->ranks_per_node);
    s->ep.two_hop = o->two_hop;
    if (!rc && o->two_hop && s->ep.ep <= 1)
        rc = ds_fail(DS_EUSAGE, "--two-hop exchanges tokens between expert-parallel ranks: it needs --ep above 1");
    if (!rc && s->have_comm) { /* one run, one seed: a drawn seed differs from process to process */
        rc = ds_comm_bcast_u64(&s->comm, &s->o.seed);
        if (!rc && o->seed_share) *o->seed_share = s->o.seed;
    }
    if (!rc) rc = open_model(s, &s->o);
    if (s->have_comm) rc = ds_comm_agree(&s->comm, rc);
    s->agree_pending = s->have_comm && !rc;
    return rc;
}

void ds_session_log_seed(const ds_session *s) {
    ds_info("seed    %llu%s%s%s", (unsigned long long)s->o.seed, s->o.seed_note ? " (" : "", s->o.seed_note ? s->o.seed_note : "",
            s->o.seed_note ? ")" : "");
}

int ds_session_agree(ds_session *s, int rc) {
    if (!s->agree_pending) return rc;
    s->agree_pending = 0;
    return ds_comm_agree(&s->comm, rc);
}

static int save_hook(void *ctx, ds_trainer *t, int final) {
    ds_session *s = ctx;
    (void)t;
    (void)final;
    int rc = ds_session_save(s, s->o.out_dir);
    if (!rc && ds_session_rank(s) == 0) ds_info("saved step %lld: %s", (long long)ds_trainer_steps_done(s->trainer), s->o.out_dir);
    return rc;
}

/* Keep the metrics records up to `step` (and every record without a step), so a resumed run's
 * file reads as one run even when the killed run had logged past its last checkpoint. */
static int trim_metrics(const char *path, int64_t step) {
    if (ds_is_stdio(path) || !ds_path_exists(path)) return 0;
    char *text;
    size_t len;
    DS_TRY(ds_read_file(path, &text, &len, 0));
    ds_atomic a;
    int rc = ds_atomic_open(&a, path);
    for (char *line = text; !rc && line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        size_t n = nl ? (size_t)(nl - line) : (size_t)(text + len - line);
        json_t *j = json_loadb(line, n, 0, NULL);
        json_t *st = j ? json_object_get(j, "step") : NULL;
        int keep = j && (!json_is_integer(st) || json_integer_value(st) <= step);
        json_decref(j);
        if (keep) rc = ds_write_all(a.f, line, n, path), rc = rc ? rc : ds_write_all(a.f, "\n", 1, path);
        line += n + 1;
    }
    free(text);
    if (rc) {
        ds_atomic_abort(&a);
        return rc;
    }
    return ds_atomic_commit(&a);
}

static int join_data_parallel(ds_session *s) {
    const int pp = s->o.pp > 1 ? s->o.pp : 1, gpu = s->o.device && strcmp(s->o.device, "cpu");
    ds_devcomm_kind kind;
    DS_TRY(ds_devcomm_kind_parse(s->o.comm, s->o.device, &kind));
    /* --comm nccl on one GPU without mpirun: a world of one all the same (no MPI), so the run goes through
     * the communicator it asked for */
    const int solo = gpu && s->o.comm && !strcmp(s->o.comm, "nccl") && pp == 1 && s->o.dp <= 1 && !ds_dist_launched();
    if (!solo && ((s->o.dp == 1 && pp == 1) || (s->o.dp == 0 && pp == 1 && !ds_dist_launched()))) return 0;
    if (solo) ds_comm_init_solo(&s->comm);
    else DS_TRY(ds_comm_init(&s->comm, NULL, NULL));
    s->have_comm = 1;
    ds_log_set_prefix(ds_comm_prefix(&s->comm)); /* errors from any rank name it: "[host:rank] ds-x: ..." */
    if (s->comm.rank != 0) ds_log_set_level(DS_LOG_QUIET); /* rank 0 talks; errors still reach stderr */
    if (gpu && (pp > 1 || s->o.ep > 1)) {
        ds_fail(DS_EUSAGE, "%s with --device %s: %s over host memory only in this build",
                pp > 1 ? "pipeline parallelism" : "expert parallelism", s->o.device,
                pp > 1 ? "the stages' transfers run" : "dispatch and combine run");
        ds_hint("on GPUs use --dp (gradients over NCCL), or --device cpu with --pp/--ep");
        return DS_EUSAGE;
    }
    if (s->comm.size % pp) {
        ds_fail(DS_EUSAGE, "--pp %d does not divide the %d processes started (world = PP x DP)", pp, s->comm.size);
        ds_hint("start mpirun -np with a multiple of --pp");
        return DS_EUSAGE;
    }
    const int dp = s->comm.size / pp;
    int want = s->o.dp ? s->o.dp : dp;
    if (want != dp) {
        if (pp > 1) ds_fail(DS_EUSAGE, "--dp %d --pp %d needs %d processes, %d were started", want, pp, want * pp, s->comm.size);
        else ds_fail(DS_EUSAGE, "--dp %d does not match the %d processes started", want, s->comm.size);
        ds_hint("start --dp N with mpirun -np N (times --pp)");
        return DS_EUSAGE;
    }
    const ds_comm *dpc = &s->comm;
    if (pp > 1) { /* world = PP x DP (dist/layout.h): replicas of a stage, and the stages of a replica */
        DS_TRY(ds_layout_make(&s->layout, &s->comm, pp, dp, 1, 0));
        s->have_layout = 1;
        dpc = &s->layout.dp_comm;
        s->pcomm = ds_train_comm_of(&s->layout.pp_comm);
    }
    s->tcomm = ds_train_comm_of(dpc); /* the trainer's reductions over lib/dist's rank-ordered sums */
    if (pp > 1) ds_info("parallel: %d pipeline stages x %d data-parallel replicas", pp, dp);
    else ds_info("data parallel: %d ranks on %d node(s)", s->comm.size, s->comm.n_nodes);
    if (gpu) { /* gradients on the GPU: NCCL, or MPI through host copies (train/devcomm.h) */
        DS_TRY(ds_devcomm_open(&s->devcomm, dpc, kind));
        s->have_devcomm = 1;
        s->tcomm = ds_devcomm_train_comm(&s->devcomm);
        if (kind == DS_DEVCOMM_NCCL) ds_info("comm    NCCL on GPU %d of this host (local rank %d), its own stream", s->devcomm.device, s->comm.local_rank);
        else ds_info("comm    MPI through host copies of the gradients");
    }
    return 0;
}

static int start_trainer(ds_session *s, const ds_train_opts *to, ds_data_source *train, ds_data_source *val,
                         const ds_loss_hook *loss, const char *config_record);

/* --ema: the weights right after each optimizer step go to the averaging thread (a copy into its
 * snapshot is all the step pays), then the tool's own hook runs. */
static int session_after_step(void *ctx, ds_trainer *t) {
    ds_session *s = ctx;
    DS_TRY(ds_ema_run_submit(&s->ema, s->model));
    return s->o.after_step ? s->o.after_step(s->o.step_ctx, t) : 0;
}

/* The trainer hands the session as the hooks' context (for the EMA above): the tool's record hook gets its own. */
static void session_step_record(void *ctx, const ds_trainer *t, ds_jsonw *w) {
    ds_session *s = ctx;
    ds_ep_run_record(&s->ep, w);
    if (s->o.step_record) s->o.step_record(s->o.step_ctx, t, w);
}

/* Expert parallelism's traffic of the step, over every rank (before validation adds its own), then the
 * tool's own hook. */
static int session_micro_done(void *ctx, ds_trainer *t) {
    ds_session *s = ctx;
    DS_TRY(ds_ep_run_step(&s->ep, s->model, &s->comm));
    return s->o.micro_done ? s->o.micro_done(s->o.step_ctx, t) : 0;
}

/* The average starts from the weights the run starts from: the resumed checkpoint's <dir>/ema when it
 * has one (the run then continues its average bit for bit), else the current weights; each tensor's on
 * one rank (train/emarun.h). */
static int start_ema(ds_session *s) {
    const int rank = s->pipe_partial ? s->layout.dp_rank : ds_session_rank(s);
    return ds_ema_run_start(&s->ema, s->model, &s->ep, rank, s->pipe_partial, ds_session_rank(s) == 0, s->o.ema,
                            s->resumed_step >= 0 ? s->resume_dir : NULL);
}

/* Bytes of parameters, gradients and optimizer state on each rank (what the layout predicts), and the
 * peak resident set (at_end: measured), on rank 0's log: "memory  optimizer by rank: B0 B1 ...". */
static int report_memory(ds_session *s, int at_end) {
    const int world = s->have_comm ? s->comm.size : 1, rank = ds_session_rank(s);
    int64_t *v = calloc(2 * (size_t)world, sizeof *v); /* [world] what is reported, [world] parameter bytes */
    if (!v) return ds_fail(DS_ERR, "out of memory: memory report");
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    v[rank] = at_end ? (int64_t)ru.ru_maxrss * 1024 : (int64_t)ds_zero_state_bytes(ds_trainer_zero(s->trainer));
    v[world + rank] = (int64_t)(s->net.n_params * sizeof(float));
    int rc = world > 1 ? ds_comm_allreduce_sum_i64(&s->comm, v, 2 * world) : 0;
    char list[1024] = "", plist[1024] = "";
    for (int r = 0, k = 0, kp = 0; !rc && r < world && k < (int)sizeof list - 32 && kp < (int)sizeof plist - 32; r++) {
        k += snprintf(list + k, sizeof list - (size_t)k, " %lld", (long long)(at_end ? v[r] >> 20 : v[r]));
        kp += snprintf(plist + kp, sizeof plist - (size_t)kp, " %lld", (long long)v[world + r]);
    }
    /* pipeline stages hold different tensors: the bytes of each rank (gradients as many as parameters) */
    if (!rc && !at_end && s->pipe_partial) ds_info("memory  parameter bytes by rank:%s", plist);
    if (!rc && at_end) {
        ds_info("memory  peak RSS by rank (MiB):%s", list);
    } else if (!rc) {
        const ds_zero *z = ds_trainer_zero(s->trainer);
        const long long p = (long long)(s->net.n_params * sizeof(float));
        ds_info("memory  per rank: parameters %lld B, gradients %lld B, optimizer %s", p, p,
                ds_zero_sharded(z) ? "sharded (ZeRO-1)" : "replicated");
        ds_info("memory  optimizer bytes by rank:%s", list);
    }
    free(v);
    return rc;
}

int ds_session_start(ds_session *s, const ds_train_opts *to, ds_data_source *train, ds_data_source *val,
                     const ds_loss_hook *loss, const char *config_record) {
    return ds_session_agree(s, start_trainer(s, to, train, val, loss, config_record));
}

static int start_trainer(ds_session *s, const ds_train_opts *to, ds_data_source *train, ds_data_source *val,
                         const ds_loss_hook *loss, const char *config_record) {
    const ds_ops *ops;
    /* which sgemm kernel runs (docs/DESIGN.md); in the header, after every input has been accepted */
    if (!ds_ops_for_device(s->o.device, &ops) && ds_ops_on_host(ops) && ds_session_rank(s) == 0) {
        char blas[320];
        ds_ops_cpu_blas_note(blas, sizeof blas);
        ds_info("blas    %s", blas);
        if (s->o.bf16) ds_info("bf16    GEMMs: %s", ds_gemm_bf16_kernel());
    }
    ds_session_log_seed(s);
    s->stop = ds_train_catch_signals();
    ds_train_hooks h = {.save = save_hook, .ctx = s, .stop = s->stop, .step_record = session_step_record,
                        .after_step = session_after_step, .step_ctx = s,
                        .comm = s->have_comm ? &s->tcomm : NULL, .pp = s->pipe ? &s->pcomm : NULL,
                        .micro_done = s->ep.have_layout || s->o.micro_done ? session_micro_done : NULL};
    if (ds_session_rank(s) != 0) s->o.metrics_path = s->o.plot_path = NULL;
    if (s->o.metrics_path) h.metrics = &s->metrics;
    if (s->pipe) { /* what the schedule needs of the micro-batch count, before any work */
        const int mb = (int)(ds_sched_max(&to->batch) / to->micro_batch), dp = s->layout.dp, per = mb / dp;
        const ds_pipe_kind kind = s->pipe_kind;
        DS_TRY(ds_pipe_check(kind, s->o.pp, 4 * s->o.pp)); /* what it needs of PP */
        if ((per > 0 || kind == DS_PIPE_DUALPIPE) && ds_pipe_check(kind, s->o.pp, per)) /* a replica may idle */
            return ds_fail_ctx(DS_EUSAGE, "%d micro-batches per pipeline (batch %d / micro-batch %d / DP %d)", per,
                               (int)ds_sched_max(&to->batch), to->micro_batch, dp);
        if (s->ep.ep > 1 && mb % dp) /* a stage's EP ranks are replicas running one op list (pipe.c checks each step) */
            return ds_fail(DS_EUSAGE, "--ep %d with --pp %d: %d micro-batches per step (batch %d / micro-batch %d) do "
                           "not divide over the %d data-parallel replicas", s->ep.ep, s->o.pp, mb,
                           (int)ds_sched_max(&to->batch), to->micro_batch, dp);
    }
    DS_TRY(ds_trainer_create(&s->trainer, to, &s->net, train, val, loss, &h));
    DS_TRY(ds_ep_run_groups(&s->ep, s->trainer, s->model, s->have_comm ? &s->tcomm : NULL));
    if (s->pipe) { /* each range over the ranks holding it; the norm over the world (train/pipemem.h) */
        const ds_train_comm *experts;
        DS_TRY(ds_ep_run_stage_experts(&s->ep, &s->comm, s->pipe_kind == DS_PIPE_DUALPIPE, s->o.pp_whole, &experts));
        DS_TRY(ds_pipe_groups_make(&s->pgroups, &s->layout, &s->comm, s->pipe_kind, s->model, experts, s->o.pp_whole));
        DS_TRY(ds_trainer_set_groups(s->trainer, s->pgroups.g, s->pgroups.n, &s->pgroups.tworld));
    }
    if (s->o.resume) {
        char p[8300];
        char *text;
        size_t len;
        DS_TRY(ds_path_join(p, sizeof p, s->resume_dir, "trainer_state.json"));
        if (!ds_path_exists(p)) {
            ds_fail(DS_ERR, "not a training checkpoint (no trainer_state.json): %s", s->resume_dir);
            ds_hint("--resume takes a directory written by a ds-* training tool; -m loads weights only");
            return DS_ERR;
        }
        DS_TRY(ds_read_file(p, &text, &len, 1u << 30));
        int rc = ds_trainer_state_load(s->trainer, text, len, p);
        free(text);
        DS_TRY(rc);
        DS_TRY(ds_optstate_load(ds_trainer_zero(s->trainer), s->net.info, s->net.n_info, s->resume_dir));
        s->resumed_step = ds_trainer_steps_done(s->trainer);
        ds_info("resuming at step %lld of %lld from %s", (long long)s->resumed_step, (long long)to->total_steps, s->resume_dir);
    }
    DS_TRY(start_ema(s));
    DS_TRY(report_memory(s, 0));
    if (s->o.metrics_path) {
        if (s->resumed_step >= 0) DS_TRY(trim_metrics(s->o.metrics_path, s->resumed_step));
        DS_TRY(ds_metrics_open(&s->metrics, s->o.metrics_path, s->resumed_step >= 0));
        s->have_metrics = 1;
        if (config_record) {
            ds_jsonw w;
            ds_jsonw_init(&w);
            ds_jsonw_raw(&w, config_record);
            int rc = ds_metrics_write(&s->metrics, &w);
            ds_jsonw_free(&w);
            DS_TRY(rc);
        }
    }
    return 0;
}

/* Each pipeline rank's compute time against the steps' wall time (the measured bubble), and the mean
 * time of each op kind, on rank 0's log. */
static int report_pipeline(ds_session *s) {
    ds_pipe_stats st;
    ds_pipe_net_stats(s->pipe, &st);
    const int pp = s->o.pp, r = s->layout.pp_comm.rank, w = 2 * pp + 8;
    double *v = calloc((size_t)w, sizeof *v);
    if (!v) return ds_fail(DS_ERR, "out of memory: pipeline report");
    v[2 * r] = st.busy, v[2 * r + 1] = st.wall;
    for (int k = 0; k < 4; k++) v[2 * pp + k] = st.op_time[k], v[2 * pp + 4 + k] = (double)st.op_count[k];
    int rc = ds_comm_allreduce_sum_f64(&s->layout.pp_comm, v, w);
    char line[2048], ops[256] = "";
    int k = 0, ko = 0;
    double bubble = 0;
    for (int i = 0; !rc && i < pp && k < (int)sizeof line - 40; i++) {
        double b = v[2 * i + 1] > 0 ? 1 - v[2 * i] / v[2 * i + 1] : 0;
        bubble += b / pp;
        k += snprintf(line + k, sizeof line - (size_t)k, " %.1f%%", 100 * b);
    }
    for (int i = 0; !rc && i < 4; i++)
        if (v[2 * pp + 4 + i] > 0)
            ko += snprintf(ops + ko, sizeof ops - (size_t)ko, " %s %.2f ms", (const char *[]){"F", "B", "W", "BW"}[i],
                           1e3 * v[2 * pp + i] / v[2 * pp + 4 + i]);
    if (!rc)
        ds_info("pipeline: %lld steps, %.1f ms per step, bubble by rank:%s (mean %.1f%%); per op:%s", (long long)st.steps,
                st.steps ? 1e3 * v[1] / (double)st.steps : 0.0, line, 100 * bubble, ops);
    free(v);
    return rc;
}

/* --bf16: how the weight packs were used (ops/gemm_bf16.h); with DS_BF16_PACK=check a cached pack that differed
 * from a fresh one (a weight written without params_changed) fails the run. */
static int report_bf16_packs(const ds_session *s) {
    ds_gemm_bf16_pack_stats st;
    ds_gemm_bf16_pack_stats_get(&st);
    if (ds_session_rank(s) == 0)
        ds_info("bf16    weight packs: %lld built, %lld reused, %lld packed per call over the bound; %.1f MiB (bound %.1f)",
                st.built, st.reused, st.over, (double)st.bytes / 1048576.0, (double)st.limit / 1048576.0);
    if (st.stale)
        return ds_fail(DS_ERR, "--bf16: %lld cached weight packs differed from fresh ones (DS_BF16_PACK=check): rank %d",
                       st.stale, ds_session_rank(s));
    return 0;
}

int ds_session_run(ds_session *s, int *stopped_by) {
    ds_train_end end;
    *stopped_by = 0;
    int rc = ds_trainer_run(s->trainer, &end);
    if (!rc && ds_session_rank(s) == 0) ds_ep_run_summary(&s->ep);
    if (!rc) rc = report_memory(s, 1);
    if (!rc && s->pipe) rc = report_pipeline(s);
    if (!rc && s->o.bf16 && ds_ops_on_host(s->net.ops)) rc = report_bf16_packs(s); /* the CPU's AMX packs */
    if (!rc && s->o.profile && ds_session_rank(s) == 0) rc = ds_train_profile_report(s->have_metrics ? &s->metrics : NULL);
    if (s->ema.ema && ds_session_rank(s) == 0) {
        long n;
        double sec = ds_ema_submit_seconds(s->ema.ema, &n);
        ds_info("ema     %.3f ms per step handing the weights over (%ld steps)", n ? 1e3 * sec / (double)n : 0.0, n);
    }
    if (rc == DS_EDIVERGED && ds_session_rank(s) != 0) ds_err_silence(); /* the loss is all-reduced: every rank diverges */
    if (rc && rc != DS_EDIVERGED && s->have_comm) s->failed_alone = 1; /* the others may wait in a collective */
    if (s->o.plot_path && (rc == 0 || rc == DS_EDIVERGED)) {
        char keep[1024] = "", hint[512] = "";
        snprintf(keep, sizeof keep, "%s", ds_errmsg());
        snprintf(hint, sizeof hint, "%s", ds_errhint());
        if (ds_trainer_plot(s->trainer, s->o.plot_path, s->o.tool)) ds_warn("%s", ds_errmsg());
        if (rc) {
            ds_fail(rc, "%s", keep);
            if (hint[0]) ds_hint("%s", hint);
        }
    }
    if (!rc && end == DS_TRAIN_STOPPED) *stopped_by = (int)*s->stop;
    return rc;
}

void ds_session_close(ds_session *s) {
    ds_ema_run_free(&s->ema);
    ds_trainer_free(s->trainer);
    ds_pipe_net_free(s->pipe);
    if (!s->failed_alone) ds_pipe_groups_free(&s->pgroups);
    ds_distckpt_full_free(&s->full);
    ds_train_net_release(&s->net);
    ds_model_free(s->model);
    if (s->have_metrics) ds_metrics_close(&s->metrics);
    if (s->have_cfg) ds_config_free(&s->cfg);
    free(s->tokenizer_json);
    free(s->tokenizer_config);
    ds_ep_run_free(&s->ep);
    if (s->have_devcomm) ds_devcomm_close(&s->devcomm, s->failed_alone);
    if (s->have_layout && !s->failed_alone) ds_layout_free(&s->layout);
    /* Before MPI_Finalize, whose fence holds the other ranks until this one arrives: once a rank has left it
     * with a nonzero status mpirun kills the rest, and a rank 0 killed here would leave -o behind (a refused
     * run must create nothing). */
    ds_dir_lock_release(&s->out_lock);
    if (s->have_comm && s->failed_alone) ds_comm_abandon(&s->comm);
    else if (s->have_comm) ds_comm_finalize(&s->comm);
    memset(s, 0, sizeof *s);
}
