#include "train/plan.h"

#include "core/err.h"
#include "core/file.h"
#include "core/plot.h"
#include "dist/layout.h"
#include "dist/pipesched.h"
#include "io/json.h"
#include "model/model.h"
#include "train/flops.h"
#include "train/pipe.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ */
/* Cluster files                                                                                     */

/* A number the file must have (required) or may have, finite and >= lo (> lo when strict). */
static int num_field(json_t *o, const char *key, const char *where, int required, double lo, int strict, double *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) return ds_fail(DS_ERR, "cluster: %s: missing: %s", key, where);
        return DS_OK;
    }
    if (!json_is_number(v)) return ds_fail(DS_ERR, "cluster: %s: expected a number: %s", key, where);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || (strict && x == lo) || x > 1e9)
        return ds_fail(DS_ERR, "cluster: %s: %g must be %s %g: %s", key, x, strict ? ">" : ">=", lo, where);
    if (strict && x < 1e-6) /* rates this small are a unit mistake, and their times would overflow */
        return ds_fail(DS_ERR, "cluster: %s: %g is below 1e-6: %s", key, x, where);
    *out = x;
    return DS_OK;
}

static int int_field(json_t *o, const char *key, const char *where, int required, int lo, int *out) {
    double x = *out;
    DS_TRY(num_field(o, key, where, required, lo, 0, &x));
    if (x != floor(x) || x > 1e7) return ds_fail(DS_ERR, "cluster: %s: expected an integer up to 1e7: %s", key, where);
    *out = (int)x;
    return DS_OK;
}

static const char *const CLUSTER_KEYS[] = {"name", "nodes", "gpus_per_node", "memory_gb", "gemm_tflops", "gemm_dtype",
                                           "fp8_tflops", "hbm_gb_s", "nvlink_gb_s", "ib_gb_s", "latency_us", "attn_gscores_s", "sms",
                                           "comm_sms", "efficiency", "oversubscribe", "cores", "note", NULL};

static int cluster_from_json(ds_cluster *c, json_t *o, const char *where) {
    if (!json_is_object(o)) return ds_fail(DS_ERR, "cluster: expected a JSON object: %s", where);
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        int known = 0;
        for (int i = 0; CLUSTER_KEYS[i]; i++) known |= !strcmp(key, CLUSTER_KEYS[i]);
        if (!known) { /* named printably: a key may hold any character */
            char k[64];
            size_t n = 0;
            for (const char *q = key; *q && n + 1 < sizeof k; q++) k[n++] = (unsigned char)*q < 0x20 || *q == 0x7f ? '?' : *q;
            k[n] = 0;
            return ds_fail(DS_ERR, "cluster: %s: unknown key: %s", k, where);
        }
    }
    json_t *name = json_object_get(o, "name");
    if (name && !json_is_string(name)) return ds_fail(DS_ERR, "cluster: name: expected a string: %s", where);
    snprintf(c->name, sizeof c->name, "%s", name ? json_string_value(name) : "cluster");
    double mem = 0, gemm = 0, fp8 = 0, hbm = 0, nvl = 0, ib = 0, lat = 0, eff = 0, scores = 0;
    DS_TRY(int_field(o, "nodes", where, 1, 1, &c->nodes));
    DS_TRY(int_field(o, "gpus_per_node", where, 1, 1, &c->gpus_per_node));
    DS_TRY(num_field(o, "memory_gb", where, 1, 0, 1, &mem));
    DS_TRY(num_field(o, "gemm_tflops", where, 1, 0, 1, &gemm));
    DS_TRY(num_field(o, "fp8_tflops", where, 0, 0, 0, &fp8));
    DS_TRY(num_field(o, "hbm_gb_s", where, 1, 0, 1, &hbm));
    DS_TRY(num_field(o, "nvlink_gb_s", where, 1, 0, 1, &nvl));
    DS_TRY(num_field(o, "ib_gb_s", where, c->nodes > 1, 0, c->nodes > 1, &ib));
    DS_TRY(num_field(o, "latency_us", where, 1, 0, 0, &lat));
    DS_TRY(num_field(o, "attn_gscores_s", where, 0, 0, 1, &scores));
    DS_TRY(num_field(o, "efficiency", where, 1, 0, 1, &eff));
    if (eff > 1) return ds_fail(DS_ERR, "cluster: efficiency: %g is above 1 (a share of the roofline): %s", eff, where);
    DS_TRY(int_field(o, "sms", where, 0, 0, &c->sms));
    DS_TRY(int_field(o, "comm_sms", where, 0, 0, &c->comm_sms));
    c->cores = 1;
    DS_TRY(int_field(o, "cores", where, 0, 1, &c->cores));
    if (c->comm_sms && c->comm_sms >= c->sms)
        return ds_fail(DS_ERR, "cluster: comm_sms: %d leaves no SM of %d to compute: %s", c->comm_sms, c->sms, where);
    json_t *dt = json_object_get(o, "gemm_dtype");
    const char *dts = dt && json_is_string(dt) ? json_string_value(dt) : NULL;
    if (!dt) return ds_fail(DS_ERR, "cluster: gemm_dtype: missing: %s", where);
    if (!dts || (strcmp(dts, "bf16") && strcmp(dts, "fp32")))
        return ds_fail(DS_ERR, "cluster: gemm_dtype: expected \"bf16\" or \"fp32\": %s", where);
    c->elem_bytes = strcmp(dts, "bf16") ? 4 : 2;
    json_t *os = json_object_get(o, "oversubscribe");
    if (os && !json_is_boolean(os)) return ds_fail(DS_ERR, "cluster: oversubscribe: expected true or false: %s", where);
    c->oversubscribe = os && json_is_true(os);
    json_t *note = json_object_get(o, "note");
    if (note && !json_is_string(note)) return ds_fail(DS_ERR, "cluster: note: expected a string: %s", where);
    if ((double)c->nodes * c->gpus_per_node > 1e7)
        return ds_fail(DS_ERR, "cluster: nodes x gpus_per_node: more than 1e7 devices: %s", where);
    c->memory_bytes = mem * 1e9, c->gemm_flops = gemm * 1e12, c->fp8_flops = fp8 * 1e12;
    c->hbm_bw = hbm * 1e9, c->nvlink_bw = nvl * 1e9, c->ib_bw = ib * 1e9, c->latency = lat * 1e-6, c->efficiency = eff;
    c->attn_scores = scores * 1e9;
    return DS_OK;
}

int ds_cluster_parse(ds_cluster *c, const char *text, size_t len, const char *where) {
    memset(c, 0, sizeof *c);
    json_t *o = ds_json_parse(text, len, "cluster", where);
    if (!o) return DS_ERR;
    int rc = cluster_from_json(c, o, where);
    json_decref(o);
    return rc;
}

int ds_cluster_load(ds_cluster *c, const char *path) {
    char *text = NULL;
    size_t len = 0;
    int rc = ds_read_file(path, &text, &len, 1 << 20);
    if (rc == DS_OK) rc = ds_cluster_parse(c, text, len, path);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ */
/* Options                                                                                            */

int ds_recompute_parse(const char *s, ds_recompute *r) {
    static const char *const names[] = {"none", "v3", "full"};
    for (int i = 0; i < 3; i++)
        if (s && !strcmp(s, names[i])) return *r = (ds_recompute)i, DS_OK;
    return ds_fail(DS_EUSAGE, "--recompute: '%s': expected none, v3 or full", s ? s : "");
}

const char *ds_recompute_name(ds_recompute r) { return r == DS_RECOMPUTE_NONE ? "none" : r == DS_RECOMPUTE_FULL ? "full" : "v3"; }

void ds_plan_opts_defaults(ds_plan_opts *o) {
    *o = (ds_plan_opts){.pp = 1, .ep = 1, .batch = 1, .micro_batch = 1, .seq_len = 4096, .schedule = DS_PIPE_1F1B,
                        .zero = 1, .node_limit = 1, .two_hop = 1, .recompute = DS_RECOMPUTE_V3};
}

/* ------------------------------------------------------------------------------------------------ */
/* The roofline of one micro-batch through one stage                                                 */

/* Time and executed FLOPs of one phase (F, B or W) of a stage. */
typedef struct {
    double gemm, attn, mem; /* seconds */
    double flops;
} phase;

typedef struct {
    const ds_config *cfg;
    const ds_plan_opts *o;
    double gemm_rate, lin_rate, bw; /* achieved: peaks x efficiency x SM share / ranks per device */
    double score_rate;              /* attention scores per s, likewise (0: none given) */
    int e;                          /* bytes per activation element */
    double n;                       /* tokens in a micro-batch */
    double ep;                      /* expert-parallel ranks */
    phase F, B, W;
    double act;                     /* bytes kept for backward per micro-batch */
    double workspace;
    int moe_layers;
} stage_acc;

enum { LIN = 1, BF16 = 0 };
#define FP8_ROW(d) ((d) * (1.0 + 4.0 / 128)) /* E4M3 plus one fp32 scale per 128 */
/* a dispatched row: E4M3 plus one power-of-two scale per 128, sent as its exponent byte (V3 3.3.3; ep.c) */
#define DISPATCH_ROW(d) ((d) * (1.0 + 1.0 / 128))

static void mem_op(phase *p, double bytes, double bw) { p->mem += bytes / bw; }

/* y[M,N] = x[M,K] W[N,K]^T and its two backward products, each on its own roofline. */
static void gemm(stage_acc *s, double M, double N, double K, int lin, int recomputed) {
    const int fp8 = lin && s->o->fp8;
    const double rate = lin ? s->lin_rate : s->gemm_rate, ein = fp8 ? 1 : s->e, e = s->e;
    const double fl = 2 * M * N * K;
#define ROOF(m, n, k) fmax(fl / rate, ((m) * (k) * ein + (n) * (k) * ein + (m) * (n) * e) / s->bw)
    double tf = ROOF(M, N, K), tb = ROOF(M, K, N), tw = ROOF(N, K, M);
#undef ROOF
    s->F.gemm += tf, s->F.flops += fl;
    s->B.gemm += tb, s->B.flops += fl;
    s->W.gemm += tw, s->W.flops += fl;
    if (fp8) { /* 1x128 quantization of the input (F) and of the output gradient (B); Wgrad's 128x1 tiles of both */
        mem_op(&s->F, M * K * (e + 1), s->bw);
        mem_op(&s->B, M * N * (e + 1), s->bw);
        mem_op(&s->W, (M * K + M * N) * 2, s->bw);
    }
    if (recomputed) s->B.gemm += tf, s->B.flops += fl, fp8 ? mem_op(&s->B, M * K * (e + 1), s->bw) : (void)0;
}

/* An elementwise or reduction op moving `bytes` in forward; backward moves about twice that. */
static void ew(stage_acc *s, double bytes, int recomputed) {
    mem_op(&s->F, bytes, s->bw);
    mem_op(&s->B, 2 * bytes + (recomputed ? bytes : 0), s->bw);
}

/* Causal attention core of mb sequences of T: scores and weighted sum, half the square executed. */
static void attn_core(stage_acc *s, double heads, double dqk, double dv) {
    const double T = s->o->seq_len, seqs = s->n / T;
    const double fl = seqs * 2 * heads * T * T / 2 * (dqk + dv);
    const double bytes = s->n * heads * (2 * dqk + 2 * dv) * s->e;
    /* a kernel may be bound by its per-score work instead (the exponential and the online softmax: FA3's
     * limit at small head dims on Hopper, and a CPU's vector units): once per score in F, again in B */
    const double st = s->score_rate > 0 ? seqs * heads * T * T / 2 / s->score_rate : 0;
    s->F.attn += fmax(fmax(fl / s->gemm_rate, bytes / s->bw), st), s->F.flops += fl;
    s->B.attn += fmax(fmax(2.5 * fl / s->gemm_rate, 2 * bytes / s->bw), st), s->B.flops += 2.5 * fl; /* recomputes the scores */
}

static void rmsnorm(stage_acc *s, double dim, int recompute) { ew(s, s->n * dim * 2 * s->e, recompute); }

/* One decoder layer (attention + FFN); moe: routed experts. */
static void layer_cost(stage_acc *s, int moe) {
    const ds_config *c = s->cfg;
    const ds_plan_opts *o = s->o;
    const double n = s->n, d = c->hidden_size, H = c->num_attention_heads, e = s->e;
    const double dqk = ds_cfg_qk_head_dim(c), dv = c->v_head_dim, Rq = c->q_lora_rank, Rkv = c->kv_lora_rank,
                 Dr = c->qk_rope_head_dim, Dn = c->qk_nope_head_dim;
    const int rc_v3 = o->recompute == DS_RECOMPUTE_V3, full = o->recompute == DS_RECOMPUTE_FULL;
    const double c8 = o->fp8 ? FP8_ROW(1) : e; /* bytes of a cached Linear input element */
    stage_acc before = *s;
    /* attention */
    rmsnorm(s, d, rc_v3);
    if (Rq > 0) {
        gemm(s, n, Rq, d, LIN, 0);
        rmsnorm(s, Rq, rc_v3);
        gemm(s, n, H * dqk, Rq, LIN, rc_v3);
    } else {
        gemm(s, n, H * dqk, d, LIN, rc_v3);
    }
    gemm(s, n, Rkv + Dr, d, LIN, 0);
    rmsnorm(s, Rkv, rc_v3);
    gemm(s, n, H * (Dn + dv), Rkv, LIN, rc_v3);
    ew(s, n * (H + 1) * Dr * 2 * e, rc_v3); /* RoPE of q_pe and the shared k_pe */
    attn_core(s, H, dqk, dv);
    gemm(s, n, d, H * dv, LIN, 0);
    ew(s, n * d * 3 * e, 0); /* residual */
    /* kept for backward, per token: the residual input, the latents before their norms, the attention
     * output (E5M6 under V3's FP8 recipe: 12 bits and a one-byte power-of-two scale per 128, as
     * fp8/e5m6.h stores it) and its log-sum-exp; the rest is recomputed */
    double keep = d * e + (Rq + Rkv + Dr) * e + H * dv * (o->fp8 ? 1.5 + 1.0 / 128 : e) + 4 * H;
    if (o->recompute == DS_RECOMPUTE_NONE) keep += (d + Rq + Rkv) * e + H * (2 * dqk + dv) * e;
    /* FFN */
    rmsnorm(s, d, rc_v3);
    keep += d * e;
    if (!moe) {
        const double I = c->intermediate_size;
        gemm(s, n, 2 * I, d, LIN, 0);
        ew(s, n * 3 * I * e, rc_v3 || o->fp8); /* SwiGLU; its output recomputed in backward */
        gemm(s, n, d, I, LIN, 0);
        /* V3 caches the SwiGLU inputs in FP8 in the MoE only (3.3.3); the dense layers keep theirs */
        keep += 2 * I * e + (o->recompute == DS_RECOMPUTE_NONE ? I * e + d * e : 0);
    } else {
        const double E = c->n_routed_experts, k = c->num_experts_per_tok, Ie = c->moe_intermediate_size,
                     Is = (double)c->n_shared_experts * Ie, local = E / s->ep;
        gemm(s, n, E, d, BF16, 0); /* router, kept in BF16/FP32 */
        ew(s, n * E * 4 * 3, 0);   /* scores, group limit, top-k */
        if (Is > 0) {
            gemm(s, n, 2 * Is, d, LIN, 0);
            ew(s, n * 3 * Is * e, rc_v3 || o->fp8);
            gemm(s, n, d, Is, LIN, 0);
        }
        /* routed experts: n*k rows per rank (balanced), n*k/local rows for each local expert */
        const double rows = n * k, per = rows / local;
        for (int x = 0; x < (int)local; x++) {
            gemm(s, per, 2 * Ie, d, LIN, 0);
            gemm(s, per, d, Ie, LIN, 0);
        }
        ew(s, rows * 3 * Ie * e, rc_v3 || o->fp8);
        ew(s, rows * d * 4 * e, 0); /* permute, unpermute, weighted combine */
        keep += E * 4 + rows / n * d * c8 + (k + (Is > 0 ? c->n_shared_experts : 0)) * 2 * Ie * c8;
        if (o->recompute == DS_RECOMPUTE_NONE) keep += (k + c->n_shared_experts) * Ie * e + d * e;
        s->moe_layers++;
    }
    ew(s, n * d * 3 * e, 0); /* residual */
    const double ws = n * H * (2 * dqk + dv) * e * 2; /* q, k, v and their gradients, one layer at a time */
    if (ws > s->workspace) s->workspace = ws;
    if (full) { /* only the layer input is kept; backward runs the whole forward again */
        s->B.gemm += s->F.gemm - before.F.gemm, s->B.attn += s->F.attn - before.F.attn, s->B.mem += s->F.mem - before.F.mem;
        s->B.flops += s->F.flops - before.F.flops;
        if (keep * n > s->workspace) s->workspace = keep * n;
        keep = d * e;
    }
    s->act += keep * n;
}

static void head_cost(stage_acc *s, int final_norm) {
    const double n = s->n, d = s->cfg->hidden_size, V = s->cfg->vocab_size;
    if (final_norm) rmsnorm(s, d, s->o->recompute != DS_RECOMPUTE_NONE);
    gemm(s, n, V, d, BF16, 0);
    mem_op(&s->B, n * V * 4 * 3, s->bw); /* log-softmax, loss and its gradient over fp32 logits, by chunks of rows */
    s->act += n * d * s->e;
    const double ws = fmin(n, 1024) * V * 4 * 2;
    if (ws > s->workspace) s->workspace = ws;
}

/* Layers [l0, l1) of the main model on stage st of pp; the embedding on stage 0, the head and the MTP
 * modules on the last. */
static void stage_cost(stage_acc *s, int st, int pp, int l0, int l1) {
    const ds_config *c = s->cfg;
    const double n = s->n, d = c->hidden_size;
    if (st == 0) ew(s, n * d * s->e, 0), s->act += 0;
    for (int l = l0; l < l1; l++) layer_cost(s, ds_cfg_is_moe_layer(c, l));
    if (st == pp - 1) {
        head_cost(s, 1);
        for (int k = 0; k < c->num_nextn_predict_layers; k++) {
            ew(s, n * d * s->e * 2, 0); /* embedding of the shifted tokens, concatenation */
            rmsnorm(s, d, 1), rmsnorm(s, d, 1);
            gemm(s, n, d, 2 * d, BF16, 0); /* eh_proj stays BF16 in V3 */
            s->act += n * 2 * d * s->e;
            layer_cost(s, ds_cfg_is_moe_layer(c, c->num_hidden_layers + k));
            head_cost(s, 1);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* All-to-all: expected nodes and GPUs a token's experts sit on                                       */

static double log_choose(double n, double k) {
    if (k < 0 || k > n) return -INFINITY;
    return lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1);
}
static double ratio_choose(double a, double b, double k) { /* C(a, k) / C(b, k) */
    double la = log_choose(a, k);
    return isinf(la) ? 0 : exp(la - log_choose(b, k));
}

/* Expected distinct units (nodes or GPUs) holding a token's k experts. E experts in G routing groups of
 * which the token may use M (0 = all), laid out over `units` equal units in order. Uniform choice of the
 * M groups and of the k experts among the allowed ones: V3's learned routing is not uniform, but its
 * balancing keeps loads near it (docs/DESIGN.md). */
static double expected_units(double E, double k, int G, int M, int units) {
    if (units <= 1) return 1;
    if (G < 1 || M <= 0 || M >= G) G = 1, M = 1;
    const double epu = E / units, epg = E / G, allowed = M * epg;
    if (k > allowed) k = allowed;
    double miss = 0;
    if (G == 1) {
        miss = ratio_choose(E - epu, E, k);
    } else if (G % units == 0) { /* each unit holds gpu = G/units whole groups: h of them allowed, hypergeometric */
        const int gpu = G / units;
        for (int h = 0; h <= gpu && h <= M; h++) {
            double ph = exp(log_choose(gpu, h) + log_choose(G - gpu, M - h) - log_choose(G, M));
            if (!(ph > 0)) continue;
            miss += ph * ratio_choose(allowed - h * epg, allowed, k);
        }
    } else if (units % G == 0) { /* each group spans units/G units: a unit is usable when its group is */
        const double pg = (double)M / G;
        miss = (1 - pg) + pg * ratio_choose(allowed - epu, allowed, k);
    } else {
        miss = ratio_choose(E - epu, E, k);
    }
    return units * (1 - miss);
}

/* ------------------------------------------------------------------------------------------------ */

typedef struct {
    double f_c, b_c, w_c, a2a_f, a2a_b, flops, act, workspace, p2p_bytes;
    phase F, B, W;
    int moe_layers, layers;
    double params_dense, params_lin, params_expert; /* on this stage: non-Linear, Linear (non-expert), local experts */
} stage_info;

static int check_layout(const ds_plan_opts *o, const ds_config *cfg, const ds_cluster *c, int *world, int *dp, int *rpd) {
    const long long devices = (long long)c->nodes * c->gpus_per_node;
    if (o->pp < 1 || o->ep < 1 || o->dp < 0) return ds_fail(DS_EUSAGE, "--pp, --ep and --dp must be at least 1");
    if (o->dp == 0 && devices % o->pp)
        return ds_fail(DS_EUSAGE, "--pp %d does not divide the cluster's %lld devices", o->pp, devices);
    *dp = o->dp ? o->dp : (int)(devices / o->pp);
    long long w = (long long)o->pp * *dp;
    if (w > devices && !c->oversubscribe)
        return ds_fail(DS_EUSAGE, "--pp %d x --dp %d = %lld ranks: the cluster has %lld devices", o->pp, *dp, w, devices);
    if (w > devices && w % devices)
        return ds_fail(DS_EUSAGE, "--pp %d x --dp %d = %lld ranks do not share the cluster's %lld devices evenly", o->pp, *dp,
                       w, devices);
    if (w < devices && w > c->gpus_per_node && w % c->gpus_per_node)
        return ds_fail(DS_EUSAGE, "--pp %d x --dp %d = %lld ranks: not whole nodes of %d GPUs", o->pp, *dp, w, c->gpus_per_node);
    if (w > 1000000) return ds_fail(DS_EUSAGE, "--pp %d x --dp %d: more than a million ranks", o->pp, *dp);
    *world = (int)w, *rpd = w > devices ? (int)(w / devices) : 1;
    const int L = cfg->num_hidden_layers;
    if (o->pp > L) return ds_fail(DS_EUSAGE, "--pp %d: more pipeline stages than the model's %d layers", o->pp, L);
    DS_TRY(ds_layout_check(*world, o->pp, *dp, o->ep, 0, cfg->n_routed_experts));
    if (o->micro_batch < 1 || o->batch < 1 || o->seq_len < 1) return ds_fail(DS_EUSAGE, "--batch, --micro-batch and --seq-len must be at least 1");
    if (o->batch % ((long long)*dp * o->micro_batch))
        return ds_fail(DS_EUSAGE, "--batch %d is not a multiple of --dp %d x --micro-batch %d", o->batch, *dp, o->micro_batch);
    if (o->micro_batches && (long long)o->micro_batches * *dp * o->micro_batch != o->batch)
        return ds_fail(DS_EUSAGE, "--micro-batches %d: --batch %d over --dp %d is %d micro-batches of --micro-batch %d", o->micro_batches,
                       o->batch, *dp, o->batch / *dp / o->micro_batch, o->micro_batch);
    if (o->fp8 && !(c->fp8_flops > 0)) return ds_fail(DS_EUSAGE, "--fp8: the cluster '%s' has no fp8_tflops", c->name);
    if (cfg->num_hidden_layers < 1 || cfg->hidden_size < 1)
        return ds_fail(DS_EUSAGE, "config: nothing to cost (no layers)");
    if (cfg->n_routed_experts > 0 && (cfg->num_experts_per_tok < 1 || cfg->num_experts_per_tok > cfg->n_routed_experts))
        return ds_fail(DS_EUSAGE, "config: num_experts_per_tok %d: cannot cost routing to that many of %d experts",
                       cfg->num_experts_per_tok, cfg->n_routed_experts);
    return DS_OK;
}

/* Parameters of each stage by kind, from the model's own parameter table. */
static int stage_params(const ds_config *cfg, int pp, int ep, const int *bounds, stage_info *st) {
    ds_param *prm = NULL;
    int np = 0;
    DS_TRY(ds_model_layout(cfg, &prm, &np));
    const int L = cfg->num_hidden_layers;
    for (int i = 0; i < np; i++) {
        int s = 0;
        if (prm[i].layer >= L || (prm[i].layer < 0 && prm[i].kind != DS_PARAM_EMBED)) s = pp - 1;
        else if (prm[i].layer >= 0)
            for (int t = 0; t < pp; t++)
                if (prm[i].layer >= bounds[t] && prm[i].layer < bounds[t + 1]) s = t;
        const double n = (double)prm[i].numel;
        if (prm[i].expert >= 0) st[s].params_expert += n / ep;
        else if (prm[i].kind == DS_PARAM_MATRIX && !strstr(prm[i].name, "eh_proj")) st[s].params_lin += n;
        else st[s].params_dense += n;
    }
    free(prm);
    return DS_OK;
}

static void a2a_model(ds_plan *p, const ds_config *cfg, const ds_cluster *c) {
    const ds_plan_opts *o = &p->o;
    const int gpn = c->gpus_per_node * p->ranks_per_device, ep = o->ep; /* ranks per node */
    const int ep_nodes = ep > gpn ? ep / gpn : 1, gpus_in_node = ep < gpn ? ep : gpn;
    p->ep_nodes = ep_nodes;
    if (cfg->n_routed_experts <= 0 || ep <= 1) return;
    const double E = cfg->n_routed_experts, k = cfg->num_experts_per_tok, d = cfg->hidden_size;
    const int G = cfg->n_group, M = o->node_limit ? cfg->topk_group : 0;
    p->nodes_per_token = expected_units(E, k, G, M, ep_nodes);
    p->nodes_per_token_unlimited = expected_units(E, k, G, 0, ep_nodes);
    p->gpus_per_token = expected_units(E, k, G, M, ep);
    const double gpus_unl = expected_units(E, k, G, 0, ep);
    const double disp_row = o->fp8 ? DISPATCH_ROW(d) : d * c->elem_bytes, comb_row = d * c->elem_bytes;
    /* a node is as likely to be the token's own as any other: the own one is reached over NVLink only */
    const double remote = 1 - 1.0 / ep_nodes;
    const double nodes_r = p->nodes_per_token * remote, gpus_r = p->gpus_per_token * remote;
    const double nodes_r_unl = p->nodes_per_token_unlimited * remote, gpus_r_unl = gpus_unl * remote;
    /* two-hop: one IB copy per remote node, then NVLink to the node's other target GPUs; one-hop: an IB
     * copy per remote GPU. NVLink also carries the copies to other GPUs of the own node. */
    const double nv_copies = p->gpus_per_token * (gpus_in_node - 1.0) / gpus_in_node;
    const double ib_copies = o->two_hop ? nodes_r : gpus_r, ib_copies_unl = o->two_hop ? nodes_r_unl : gpus_r_unl;
    p->dispatch_ib_bytes = ib_copies * disp_row, p->combine_ib_bytes = ib_copies * comb_row;
    p->dispatch_ib_bytes_one_hop = gpus_r * disp_row;
    p->dispatch_ib_bytes_unlimited = ib_copies_unl * disp_row, p->combine_ib_bytes_unlimited = ib_copies_unl * comb_row;
    p->dispatch_nvlink_bytes = nv_copies * disp_row, p->combine_nvlink_bytes = nv_copies * comb_row;
    if (ep_nodes == 1) { /* the whole group in one node: NVLink only */
        p->dispatch_nvlink_bytes = (p->gpus_per_token) * (ep - 1.0) / ep * disp_row;
        p->combine_nvlink_bytes = (p->gpus_per_token) * (ep - 1.0) / ep * comb_row;
        p->dispatch_ib_bytes = p->combine_ib_bytes = p->dispatch_ib_bytes_one_hop = 0;
        p->dispatch_ib_bytes_unlimited = p->combine_ib_bytes_unlimited = 0;
    }
}

/* Seconds of one direction's all-to-all (dispatch + combine) for `tokens` tokens through `moe` layers. */
static double a2a_time(const ds_plan *p, const ds_cluster *c, double tokens, int moe, double ib, double nv, double *ib_s,
                       double *nv_s) {
    if (moe == 0 || p->o.ep <= 1) return *ib_s = *nv_s = 0, 0;
    const double rpd = p->rank_share;
    *ib_s = ib > 0 ? tokens * moe * ib / (c->ib_bw * c->efficiency / rpd) : 0;
    *nv_s = tokens * moe * nv / (c->nvlink_bw * c->efficiency / rpd);
    return fmax(*ib_s, *nv_s) + moe * 2 * c->latency; /* the links work in parallel; a message per exchange */
}

static int simulate(ds_plan *p, double f, double b, double w, double fb, double p2p, ds_pipe_sim *sim, ds_pipe_schedule *sch) {
    ds_pipe_costs pc = {.f = f, .b = b, .w = w, .fb = fb, .p2p = p2p};
    return ds_pipe_simulate(sch, &pc, sim);
}

int ds_plan_run(ds_plan *p, const ds_config *cfg, const ds_cluster *c, const ds_plan_opts *o) {
    memset(p, 0, sizeof *p);
    p->o = *o, p->cluster = *c;
    int world = 0, dp = 0, rpd = 1;
    DS_TRY(check_layout(o, cfg, c, &world, &dp, &rpd));
    p->o.dp = dp, p->world = world, p->ranks_per_device = rpd;
    /* ranks sharing a device (a CPU's cores) each get its rate / min(ranks, cores): a rank runs on its
     * own core(s) while there are enough; below, the step is also bounded by the device's total work */
    p->rank_share = rpd < c->cores ? rpd : c->cores > 1 ? c->cores : rpd;
    const int pp = o->pp, ep = o->ep;
    p->n_mb = o->batch / (dp * o->micro_batch);
    DS_TRY(ds_pipe_check((ds_pipe_kind)o->schedule, pp, p->n_mb));
    p->tokens_per_mb = (double)o->micro_batch * o->seq_len;
    p->zero_group = o->zero ? dp : 1, p->expert_zero_group = o->zero ? dp / ep : 1;
    a2a_model(p, cfg, c);

    /* achieved rates: every peak of the cluster file (GEMM, HBM, NVLink, IB) times its one efficiency
     * (docs/DESIGN.md); DualPipe overlaps the all-to-all with compute, so its SMs are taken from compute */
    const int overlap = o->schedule == DS_PIPE_DUALPIPE && ep > 1 && cfg->n_routed_experts > 0;
    const double sm_share = overlap && c->sms > 0 ? (double)(c->sms - c->comm_sms) / c->sms : 1;
    stage_acc proto = {.cfg = cfg, .o = &p->o, .e = c->elem_bytes, .n = p->tokens_per_mb, .ep = ep};
    const double share = p->rank_share;
    proto.gemm_rate = c->gemm_flops * c->efficiency * sm_share / share;
    proto.lin_rate = (o->fp8 ? c->fp8_flops : c->gemm_flops) * c->efficiency * sm_share / share;
    proto.bw = c->hbm_bw * c->efficiency / share;
    proto.score_rate = c->attn_scores * c->efficiency * sm_share / share;

    stage_info *st = calloc(pp, sizeof *st);
    int *bounds = malloc((pp + 1) * sizeof *bounds);
    p->stages = calloc(pp, sizeof *p->stages);
    int rc = st && bounds && p->stages ? DS_OK : ds_fail(DS_ERR, "plan: out of memory");
    /* the stages the trainer runs (train/pipe.h): its split by estimated cost, or --stages */
    if (!rc) rc = ds_pipe_split_layers(cfg, pp, o->seq_len, o->stages, bounds);
    if (!rc) rc = stage_params(cfg, pp, ep, bounds, st);
    if (rc) goto out;
    for (int s = 0; s < pp; s++) {
        const int l0 = bounds[s], l1 = bounds[s + 1];
        stage_acc a = proto;
        stage_cost(&a, s, pp, l0, l1);
        stage_info *si = &st[s];
        si->F = a.F, si->B = a.B, si->W = a.W, si->act = a.act, si->workspace = a.workspace;
        si->moe_layers = a.moe_layers, si->layers = l1 - l0 + (s == pp - 1 ? cfg->num_nextn_predict_layers : 0);
        si->f_c = a.F.gemm + a.F.attn + a.F.mem, si->b_c = a.B.gemm + a.B.attn + a.B.mem, si->w_c = a.W.gemm + a.W.attn + a.W.mem;
        si->flops = a.F.flops + a.B.flops + a.W.flops;
        double ib_s, nv_s;
        si->a2a_f = a2a_time(p, c, p->tokens_per_mb, a.moe_layers, p->dispatch_ib_bytes + p->combine_ib_bytes,
                             p->dispatch_nvlink_bytes + p->combine_nvlink_bytes, &ib_s, &nv_s);
        si->a2a_b = si->a2a_f;
        p->stages[s] = (ds_plan_stage){.first = l0, .end = l1, .flops = si->flops, .f = si->f_c, .b = si->b_c, .w = si->w_c,
                                       .a2a = si->a2a_f, .params = si->params_dense + si->params_lin + si->params_expert,
                                       .act_bytes = si->act};
        p->flops_per_token_exec += si->flops / p->tokens_per_mb;
        if (si->layers > p->layers_max) p->layers_max = si->layers;
    }
    /* The simulation takes one cost per op kind: the busiest rank's. With one chunk per rank that is the
     * slowest stage; DualPipe's rank r runs stages r and PP-1-r alike, so the pair's mean (the heavy head
     * stage shares a rank with the light embedding stage). */
    const int dual = o->schedule == DS_PIPE_DUALPIPE;
    double worst_t = -1;
    for (int r = 0; r < pp; r++) {
        const stage_info *x = &st[r], *y = &st[dual ? pp - 1 - r : r];
        const double t = x->f_c + x->b_c + x->w_c + 2 * x->a2a_f + y->f_c + y->b_c + y->w_c + 2 * y->a2a_f;
        if (t <= worst_t) continue;
        worst_t = t;
        p->f_compute = (x->f_c + y->f_c) / 2, p->b_compute = (x->b_c + y->b_c) / 2, p->w_compute = (x->w_c + y->w_c) / 2;
        p->a2a_f = (x->a2a_f + y->a2a_f) / 2, p->a2a_b = (x->a2a_b + y->a2a_b) / 2;
        p->stage_flops_max = fmax(x->flops, y->flops);
    }
    /* communication against computation on the stage with the most MoE layers (a typical one: the
     * slowest is often the head's) */
    int ms = 0;
    for (int s = 1; s < pp; s++)
        if (st[s].moe_layers > st[ms].moe_layers) ms = s;
    if (st[ms].moe_layers > 0 && st[ms].f_c > 0) {
        double x, y;
        const double ff = st[ms].a2a_f, ffu = a2a_time(p, c, p->tokens_per_mb, st[ms].moe_layers,
                                                  p->dispatch_ib_bytes_unlimited + p->combine_ib_bytes_unlimited,
                                                  p->dispatch_nvlink_bytes + p->combine_nvlink_bytes, &x, &y);
        a2a_time(p, c, p->tokens_per_mb, st[ms].moe_layers, p->dispatch_ib_bytes + p->combine_ib_bytes,
                 p->dispatch_nvlink_bytes + p->combine_nvlink_bytes, &p->a2a_ib_s, &p->a2a_nvlink_s);
        p->a2a_f_unlimited = ffu, p->ratio_stage = ms, p->ratio_stage_f = st[ms].f_c;
        p->comm_compute_ratio = ff / st[ms].f_c;
        p->comm_compute_ratio_unlimited = ffu / st[ms].f_c;
    }
    /* pipeline hand-over: one micro-batch's activations to the next stage (another node when a stage's
     * DP ranks fill whole nodes) */
    const double act_msg = p->tokens_per_mb * cfg->hidden_size * c->elem_bytes;
    const double p2p_bw = (dp >= c->gpus_per_node && c->nodes > 1 ? c->ib_bw : c->nvlink_bw) * c->efficiency / share;
    p->p2p = pp > 1 ? c->latency + act_msg / p2p_bw : 0;
    /* op costs: alone, an op waits for its all-to-all; DualPipe's F&B hides each one's behind the other's compute */
    p->f = p->f_compute + p->a2a_f;
    p->w = p->w_compute;
    p->b = p->b_compute + p->a2a_b + p->w_compute;
    p->fb = fmax(p->f_compute + p->b_compute + p->w_compute, p->a2a_f + p->a2a_b);

    ds_pipe_schedule *sch = calloc(1, sizeof *sch);
    ds_pipe_sim *sim = calloc(1, sizeof *sim), nocomm = {0};
    p->sched = sch, p->sim = sim;
    if (!sch || !sim) {
        rc = ds_fail(DS_ERR, "plan: out of memory");
        goto out;
    }
    if ((rc = ds_pipe_schedule_make(sch, (ds_pipe_kind)o->schedule, pp, p->n_mb))) goto out;
    if ((rc = simulate(p, p->f, p->b, p->w, p->fb, p->p2p, sim, sch))) goto out;
    if ((rc = simulate(p, p->f_compute, p->b_compute + p->w_compute, p->w_compute, p->f_compute + p->b_compute + p->w_compute,
                       p->p2p, &nocomm, sch)))
        goto out;
    p->pipe_s = sim->step_time, p->pipe_nocomm_s = nocomm.step_time;
    if (rpd > share) { /* more ranks than cores: the device does every rank's work, at most share at a time
                        * (each stage's own costs here: the simulation gave every stage the busiest one's) */
        double work = 0, work_nc = 0;
        for (int s = 0; s < pp; s++) {
            work += p->n_mb * (st[s].f_c + st[s].b_c + st[s].w_c + st[s].a2a_f + st[s].a2a_b);
            work_nc += p->n_mb * (st[s].f_c + st[s].b_c + st[s].w_c);
        }
        const double per_device = (double)dp / (world / rpd);
        p->pipe_s = fmax(p->pipe_s, work * per_device / share);
        p->pipe_nocomm_s = fmax(p->pipe_nocomm_s, work_nc * per_device / share);
    }
    ds_pipe_sim_free(&nocomm);
    p->exposed_comm_s = p->pipe_s - p->pipe_nocomm_s;
    p->bubble_s = ds_pipe_sim_max_bubble(sch, sim);

    /* memory of each rank: the stages of its chunks */
    const int e = c->elem_bytes, fp8 = o->fp8;
    const double mom = (o->bf16_moments || fp8) ? 4 : 8, master = e == 4 ? 0 : 4;
    const double a2a_buf = ep > 1 && cfg->n_routed_experts > 0
                               ? 2 * p->tokens_per_mb * cfg->num_experts_per_tok * cfg->hidden_size *
                                     ((fp8 ? DISPATCH_ROW(1) : e) + e) * (overlap ? 2 : 1)
                               : 0;
    double dp_bytes_max = 0, opt_params_max = 0;
    p->mem.total = -1;
    for (int r = 0; r < pp; r++) {
        ds_plan_mem m = {0};
        double act_unit = 0, ws = 0, moe = 0, shard_params = 0, dense_all = 0, expert_all = 0;
        for (int ch = 0; ch < sch->n_chunks; ch++) {
            const stage_info *si = &st[ds_pipe_stage_of(sch, r, ch)];
            const double dense = si->params_dense + si->params_lin, lin = si->params_lin, ex = si->params_expert;
            m.params += dense + ex;
            m.weights += si->params_dense * e + (fp8 ? 0 : (lin + ex) * e);
            m.fp8_cache += fp8 ? (lin + ex) * (1 + 4.0 / (128 * 128)) : 0;
            m.grads += (dense + ex) * 4;
            const double shard = dense / p->zero_group + ex / p->expert_zero_group;
            m.optimizer += shard * (master + mom);
            shard_params += shard;
            dense_all += dense, expert_all += ex;
            if (si->act > act_unit) act_unit = si->act;
            if (si->workspace > ws) ws = si->workspace;
            moe += si->moe_layers;
        }
        m.activations = act_unit * sim->peak_act[r];
        m.workspace = ws;
        m.a2a_buffers = moe > 0 ? a2a_buf : 0;
        m.total = m.weights + m.fp8_cache + m.grads + m.optimizer + m.activations + m.workspace + m.a2a_buffers;
        if (m.total > p->mem.total) p->mem = m, p->mem_rank = r, p->peak_act = sim->peak_act[r];
        /* ZeRO-1 per step: reduce-scatter of fp32 gradients, all-gather of the updated weights */
        const double wb = fp8 ? 1 : e;
        const double gdp = dp > 1 ? (dp - 1.0) / dp * dense_all * (4 + wb) : 0;
        const double gex = dp / ep > 1 ? (dp / ep - 1.0) / (dp / ep) * expert_all * (4 + wb) : 0;
        if (gdp + gex > dp_bytes_max) dp_bytes_max = gdp + gex;
        if (shard_params > opt_params_max) opt_params_max = shard_params;
    }
    p->fits = p->mem.total <= c->memory_bytes;
    /* the data-parallel group crosses nodes once a stage's DP ranks outgrow a node */
    const double dp_bw = (dp > c->gpus_per_node && c->nodes > 1 ? c->ib_bw : c->nvlink_bw) * c->efficiency / share;
    p->dp_comm_s = dp > 1 ? dp_bytes_max / dp_bw + 2 * (dp - 1) * c->latency : 0;
    /* AdamW on the rank's shard: gradient read, master and two moments read and written, weight written */
    p->optimizer_s = opt_params_max * (4 + 2 * (master + mom) + e) / proto.bw;
    p->step_s = p->pipe_s + p->dp_comm_s + p->optimizer_s;
    p->bubble_fraction = p->bubble_s / p->step_s;
    const double devices = (double)world / rpd;
    const double tokens = (double)o->batch * o->seq_len;
    p->tokens_per_s_per_gpu = tokens / p->step_s / devices;
    ds_flops fl;
    ds_train_flops(cfg, o->seq_len, cfg->num_nextn_predict_layers, &fl);
    p->flops_per_token = fl.total;
    p->mfu = p->tokens_per_s_per_gpu * fl.total / c->gemm_flops;
    p->gpu_hours_per_t = 1e12 / p->tokens_per_s_per_gpu / 3600;
    rc = DS_OK;
out:
    free(st), free(bounds);
    if (rc) ds_plan_free(p);
    return rc;
}

void ds_plan_free(ds_plan *p) {
    if (p->sched) ds_pipe_schedule_free(p->sched);
    if (p->sim) ds_pipe_sim_free(p->sim);
    free(p->sched), free(p->sim), free(p->stages);
    p->sched = p->sim = NULL, p->stages = NULL;
}

/* ------------------------------------------------------------------------------------------------ */
/* Search                                                                                             */

static int cmp_plan(const void *a, const void *b) {
    const ds_plan *x = a, *y = b;
    return (x->gpu_hours_per_t > y->gpu_hours_per_t) - (x->gpu_hours_per_t < y->gpu_hours_per_t);
}

int ds_plan_search(const ds_config *cfg, const ds_cluster *c, const ds_plan_opts *base, ds_plan **out, int *n) {
    *out = NULL, *n = 0;
    const int devices = c->nodes * c->gpus_per_node;
    int cap = 64, cnt = 0;
    ds_plan *v = malloc(cap * sizeof *v);
    if (!v) return ds_fail(DS_ERR, "plan: out of memory");
    static const int mbs[] = {1, 2, 4};
    for (int pp = 1; pp <= devices && pp <= cfg->num_hidden_layers; pp++) {
        if (devices % pp) continue;
        const int dp = devices / pp;
        for (int ep = 1; ep <= dp; ep++) {
            if (dp % ep || (ep > 1 && (cfg->n_routed_experts <= 0 || cfg->n_routed_experts % ep))) continue;
            for (int sk = 0; sk < DS_PIPE_N_KINDS; sk++) {
                if (pp == 1 && sk != DS_PIPE_1F1B) continue; /* one stage: every schedule is the same loop */
                for (int mi = 0; mi < 3; mi++) {
                    ds_plan_opts o = *base;
                    o.pp = pp, o.dp = dp, o.ep = ep, o.schedule = sk, o.micro_batch = mbs[mi];
                    if (o.batch % (dp * o.micro_batch)) continue;
                    ds_plan p;
                    ds_err_silence();
                    int rc = ds_plan_run(&p, cfg, c, &o);
                    ds_err_clear();
                    if (rc) continue;
                    ds_plan_free(&p);
                    if (!p.fits) continue;
                    if (cnt == cap) {
                        ds_plan *nv = realloc(v, 2 * cap * sizeof *v);
                        if (!nv) {
                            free(v);
                            return ds_fail(DS_ERR, "plan: out of memory");
                        }
                        v = nv, cap *= 2;
                    }
                    v[cnt++] = p;
                }
            }
        }
    }
    qsort(v, cnt, sizeof *v, cmp_plan);
    *out = v, *n = cnt;
    return DS_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Phases                                                                                             */

int ds_plan_phases_parse(const char *s, ds_plan_phase **out, int *n) {
    *out = NULL, *n = 0;
    ds_plan_phase *v = calloc(16, sizeof *v);
    if (!v) return ds_fail(DS_ERR, "plan: out of memory");
    const char *q = s ? s : "";
    int k = 0;
    for (;;) {
        int seq, batch, steps, used = 0;
        if (k == 16) return free(v), ds_fail(DS_EUSAGE, "--phases: more than 16 phases");
        if (sscanf(q, "%d:%d:%d%n", &seq, &batch, &steps, &used) != 3 || (q[used] && q[used] != ','))
            return free(v), ds_fail(DS_EUSAGE, "--phases: '%s': expected SEQ:BATCH:STEPS[,...] (phase %d)", s ? s : "", k + 1);
        if (seq < 1 || batch < 1 || steps < 1)
            return free(v), ds_fail(DS_EUSAGE, "--phases: phase %d: sequence length, batch and steps must be at least 1", k + 1);
        v[k++] = (ds_plan_phase){.seq_len = seq, .batch = batch, .steps = steps};
        if (!q[used]) break;
        q += used + 1;
    }
    *out = v, *n = k;
    return DS_OK;
}

int ds_plan_phases_run(ds_plan_phase *ph, int n, const ds_config *cfg, const ds_cluster *c, const ds_plan_opts *base, int search) {
    for (int i = 0; i < n; i++) {
        ds_plan_opts o = *base;
        o.seq_len = ph[i].seq_len, o.batch = ph[i].batch, o.micro_batches = 0;
        ds_plan *p = &ph[i].plan;
        if (search) {
            ds_plan *v = NULL;
            int cnt = 0;
            if (!o.micro_batch) o.micro_batch = 1;
            DS_TRY(ds_plan_search(cfg, c, &o, &v, &cnt));
            if (!cnt) {
                free(v);
                return ds_fail(DS_EUSAGE, "--phases: phase %d (%d x %d tokens): no layout of the cluster fits", i + 1, o.batch, o.seq_len);
            }
            *p = v[0];
            free(v);
        } else {
            const int dp = o.dp ? o.dp : c->nodes * c->gpus_per_node / (o.pp > 0 ? o.pp : 1);
            if (!o.micro_batch && dp > 0) o.micro_batch = o.batch % dp ? 1 : o.batch / dp;
            int rc = ds_plan_run(p, cfg, c, &o);
            if (rc) {
                char why[512]; /* ds_fail writes the buffer ds_errmsg reads */
                snprintf(why, sizeof why, "%s", ds_errmsg());
                return ds_fail(rc, "--phases: phase %d (%d x %d tokens): %s", i + 1, o.batch, o.seq_len, why);
            }
            ds_plan_free(p);
        }
        const double devices = (double)p->world / p->ranks_per_device;
        ph[i].gpu_hours = ph[i].steps * p->step_s * devices / 3600;
        ph[i].gpu_hours_busy = ph[i].steps * (p->step_s - p->bubble_s) * devices / 3600;
    }
    return DS_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Output                                                                                             */

void ds_plan_jsonw(const ds_plan *p, ds_jsonw *w) {
    const ds_plan_opts *o = &p->o;
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "cluster", p->cluster.name);
    ds_jsonw_kint(w, "world", p->world);
    ds_jsonw_kint(w, "pp", o->pp);
    ds_jsonw_kint(w, "dp", o->dp);
    ds_jsonw_kint(w, "ep", o->ep);
    ds_jsonw_kstr(w, "schedule", ds_pipe_kind_name((ds_pipe_kind)o->schedule));
    ds_jsonw_kint(w, "batch", o->batch);
    ds_jsonw_kint(w, "micro_batch", o->micro_batch);
    ds_jsonw_kint(w, "micro_batches", p->n_mb);
    ds_jsonw_kint(w, "seq_len", o->seq_len);
    ds_jsonw_kbool(w, "fp8", o->fp8);
    ds_jsonw_kstr(w, "recompute", ds_recompute_name(o->recompute));
    ds_jsonw_kbool(w, "fits", p->fits);
    ds_jsonw_knum(w, "memory_per_gpu_bytes", p->mem.total);
    ds_jsonw_knum(w, "memory_capacity_bytes", p->cluster.memory_bytes);
    ds_jsonw_key(w, "memory");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kint(w, "rank", p->mem_rank);
    ds_jsonw_knum(w, "params", p->mem.params);
    ds_jsonw_knum(w, "weights_bytes", p->mem.weights);
    ds_jsonw_knum(w, "fp8_weights_bytes", p->mem.fp8_cache);
    ds_jsonw_knum(w, "grads_bytes", p->mem.grads);
    ds_jsonw_knum(w, "optimizer_bytes", p->mem.optimizer);
    ds_jsonw_knum(w, "activations_bytes", p->mem.activations);
    ds_jsonw_kint(w, "in_flight", p->peak_act);
    ds_jsonw_knum(w, "workspace_bytes", p->mem.workspace);
    ds_jsonw_knum(w, "a2a_buffers_bytes", p->mem.a2a_buffers);
    ds_jsonw_kint(w, "zero_group", p->zero_group);
    ds_jsonw_kint(w, "expert_zero_group", p->expert_zero_group);
    ds_jsonw_obj_end(w);
    ds_jsonw_knum(w, "flops_per_token", p->flops_per_token);
    ds_jsonw_knum(w, "flops_per_token_executed", p->flops_per_token_exec);
    ds_jsonw_knum(w, "stage_flops_per_micro_batch", p->stage_flops_max);
    ds_jsonw_kint(w, "layers_per_stage_max", p->layers_max);
    if (p->stages) {
        ds_jsonw_key(w, "stages");
        ds_jsonw_arr_begin(w);
        for (int s = 0; s < o->pp; s++) {
            const ds_plan_stage *x = &p->stages[s];
            ds_jsonw_obj_begin(w);
            ds_jsonw_kint(w, "first_layer", x->first);
            ds_jsonw_kint(w, "end_layer", x->end);
            ds_jsonw_knum(w, "params", x->params);
            ds_jsonw_knum(w, "flops_per_micro_batch", x->flops);
            ds_jsonw_knum(w, "F", x->f);
            ds_jsonw_knum(w, "B", x->b);
            ds_jsonw_knum(w, "W", x->w);
            ds_jsonw_knum(w, "a2a_F", x->a2a);
            ds_jsonw_knum(w, "activation_bytes_per_micro_batch", x->act_bytes);
            ds_jsonw_obj_end(w);
        }
        ds_jsonw_arr_end(w);
    }
    ds_jsonw_key(w, "chunk_seconds");
    ds_jsonw_obj_begin(w);
    ds_jsonw_knum(w, "F", p->f_compute);
    ds_jsonw_knum(w, "B", p->b_compute);
    ds_jsonw_knum(w, "W", p->w_compute);
    ds_jsonw_knum(w, "a2a_F", p->a2a_f);
    ds_jsonw_knum(w, "a2a_B", p->a2a_b);
    ds_jsonw_knum(w, "F&B", p->fb);
    ds_jsonw_knum(w, "p2p", p->p2p);
    ds_jsonw_obj_end(w);
    ds_jsonw_key(w, "all_to_all");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kint(w, "ep_nodes", p->ep_nodes);
    ds_jsonw_knum(w, "nodes_per_token", p->nodes_per_token);
    ds_jsonw_knum(w, "nodes_per_token_unlimited", p->nodes_per_token_unlimited);
    ds_jsonw_knum(w, "gpus_per_token", p->gpus_per_token);
    ds_jsonw_knum(w, "dispatch_ib_bytes_per_token", p->dispatch_ib_bytes);
    ds_jsonw_knum(w, "dispatch_nvlink_bytes_per_token", p->dispatch_nvlink_bytes);
    ds_jsonw_knum(w, "combine_ib_bytes_per_token", p->combine_ib_bytes);
    ds_jsonw_knum(w, "combine_nvlink_bytes_per_token", p->combine_nvlink_bytes);
    ds_jsonw_knum(w, "dispatch_ib_bytes_per_token_one_hop", p->dispatch_ib_bytes_one_hop);
    ds_jsonw_knum(w, "dispatch_ib_bytes_per_token_unlimited", p->dispatch_ib_bytes_unlimited);
    ds_jsonw_knum(w, "ib_seconds_per_chunk", p->a2a_ib_s);
    ds_jsonw_knum(w, "nvlink_seconds_per_chunk", p->a2a_nvlink_s);
    ds_jsonw_kint(w, "stage", p->ratio_stage);
    ds_jsonw_knum(w, "stage_F_compute_seconds", p->ratio_stage_f);
    ds_jsonw_knum(w, "comm_to_compute", p->comm_compute_ratio);
    ds_jsonw_knum(w, "comm_to_compute_unlimited", p->comm_compute_ratio_unlimited);
    ds_jsonw_obj_end(w);
    ds_jsonw_knum(w, "step_seconds", p->step_s);
    ds_jsonw_knum(w, "pipeline_seconds", p->pipe_s);
    ds_jsonw_knum(w, "dp_comm_seconds", p->dp_comm_s);
    ds_jsonw_knum(w, "optimizer_seconds", p->optimizer_s);
    ds_jsonw_knum(w, "bubble_seconds", p->bubble_s);
    ds_jsonw_knum(w, "bubble_fraction", p->bubble_fraction);
    ds_jsonw_knum(w, "exposed_comm_seconds", p->exposed_comm_s);
    ds_jsonw_knum(w, "tokens_per_second_per_gpu", p->tokens_per_s_per_gpu);
    ds_jsonw_knum(w, "mfu", p->mfu);
    ds_jsonw_knum(w, "gpu_hours_per_trillion_tokens", p->gpu_hours_per_t);
    ds_jsonw_knum(w, "efficiency", p->cluster.efficiency);
    ds_jsonw_knum(w, "attn_gscores_s", p->cluster.attn_scores / 1e9);
    ds_jsonw_obj_end(w);
}

static void put(ds_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(ds_strbuf *b, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ds_strbuf_puts(b, line);
}

static const char *gb(double bytes, char *buf) { return snprintf(buf, 24, "%.2f GB", bytes / 1e9), buf; }
static const char *secs(double s, char *buf) {
    if (s >= 1) snprintf(buf, 24, "%.3f s", s);
    else if (s >= 1e-3) snprintf(buf, 24, "%.3f ms", s * 1e3);
    else snprintf(buf, 24, "%.3f us", s * 1e6);
    return buf;
}

void ds_plan_table(const ds_plan *p, ds_strbuf *out) {
    const ds_plan_opts *o = &p->o;
    char a[24], b[24], c[24];
    put(out, "plan     %s: %d ranks = PP %d x DP %d, EP %d (%d node(s) per EP group), %s, %d micro-batches of %d x %d tokens%s, recompute %s\n",
        p->cluster.name, p->world, o->pp, o->dp, o->ep, p->ep_nodes > 0 ? p->ep_nodes : 1,
        ds_pipe_kind_name((ds_pipe_kind)o->schedule), p->n_mb, o->micro_batch, o->seq_len, o->fp8 ? ", FP8" : "",
        ds_recompute_name(o->recompute));
    put(out, "\nmemory per GPU (rank %d, the fullest)\n", p->mem_rank);
    put(out, "  parameters        %10.3fB\n", p->mem.params / 1e9);
    put(out, "  weights           %12s\n", gb(p->mem.weights, a));
    if (o->fp8) put(out, "  FP8 weights       %12s\n", gb(p->mem.fp8_cache, a));
    put(out, "  gradients (fp32)  %12s\n", gb(p->mem.grads, a));
    if (p->o.zero) put(out, "  optimizer         %12s   ZeRO-1 over %d (experts %d)\n", gb(p->mem.optimizer, a), p->zero_group, p->expert_zero_group);
    else put(out, "  optimizer         %12s   not sharded (--no-zero)\n", gb(p->mem.optimizer, a));
    put(out, "  activations       %12s   %d micro-batch chunks in flight\n", gb(p->mem.activations, a), p->peak_act);
    put(out, "  workspace         %12s\n", gb(p->mem.workspace, a));
    put(out, "  all-to-all buffers%12s\n", gb(p->mem.a2a_buffers, a));
    put(out, "  total             %12s   of %s: %s\n", gb(p->mem.total, a), gb(p->cluster.memory_bytes, b), p->fits ? "fits" : "DOES NOT FIT");
    put(out, "\ncompute\n");
    put(out, "  FLOPs per token   %.4g (docs/METRICS.md), %.4g executed\n", p->flops_per_token, p->flops_per_token_exec);
    if (p->stages && o->pp > 1)
        for (int s = 0; s < o->pp; s++) {
            const ds_plan_stage *x = &p->stages[s];
            put(out, "  stage %-3d         layers %d-%d%s%s: %.4g FLOPs per micro-batch, F %s B %s W %s\n", s, x->first, x->end - 1,
                s == 0 ? " + embedding" : "", s == o->pp - 1 ? " + head, MTP" : "", x->flops, secs(x->f, a), secs(x->b, b),
                secs(x->w, c));
        }
    else put(out, "  per micro-batch   %.4g FLOPs (F+B+W)\n", p->stage_flops_max);
    put(out, "  per chunk         F %s   B %s   W %s   F&B %s\n", secs(p->f_compute, a), secs(p->b_compute, b),
        secs(p->w_compute, c), secs(p->fb, (char[24]){0}));
    if (p->o.ep > 1 && p->nodes_per_token > 0) {
        put(out, "\nall-to-all per token and MoE layer (forward; backward the same)\n");
        put(out, "  nodes per token   %.2f (%.2f without node-limited routing), GPUs %.2f\n", p->nodes_per_token,
            p->nodes_per_token_unlimited, p->gpus_per_token);
        put(out, "  dispatch          IB %.0f B, NVLink %.0f B (one-hop IB %.0f B)\n", p->dispatch_ib_bytes,
            p->dispatch_nvlink_bytes, p->dispatch_ib_bytes_one_hop);
        put(out, "  combine           IB %.0f B, NVLink %.0f B\n", p->combine_ib_bytes, p->combine_nvlink_bytes);
        put(out, "  per chunk         IB %s, NVLink %s (stage %d's F: compute %s): %.2f x compute (%.2f without node limit)\n",
            secs(p->a2a_ib_s, a), secs(p->a2a_nvlink_s, b), p->ratio_stage, secs(p->ratio_stage_f, c), p->comm_compute_ratio,
            p->comm_compute_ratio_unlimited);
    } else if (p->o.ep > 1) {
        put(out, "\nall-to-all per chunk  %s (NVLink)\n", secs(p->a2a_f, a));
    }
    put(out, "\nstep\n");
    put(out, "  step time         %s (pipeline %s, data-parallel %s, optimizer %s)\n", secs(p->step_s, a), secs(p->pipe_s, b),
        secs(p->dp_comm_s, c), secs(p->optimizer_s, (char[24]){0}));
    put(out, "  bubble            %s (%.1f%%)\n", secs(p->bubble_s, a), 100 * p->bubble_fraction);
    put(out, "  exposed comm      %s\n", secs(p->exposed_comm_s, a));
    put(out, "  tokens/s per GPU  %.1f\n", p->tokens_per_s_per_gpu);
    put(out, "  MFU               %.1f%% of %.4g TFLOP/s\n", 100 * p->mfu, p->cluster.gemm_flops / 1e12);
    put(out, "  GPU-hours / 1T    %.4g\n", p->gpu_hours_per_t);
}

void ds_plan_search_table(const ds_plan *v, int n, int top, ds_strbuf *out) {
    put(out, "%4s %5s %5s %5s %-9s %4s %9s %10s %8s %7s %12s\n", "rank", "pp", "dp", "ep", "schedule", "mb", "memory",
        "step", "bubble", "mfu", "GPU-h/1T");
    for (int i = 0; i < n && i < top; i++) {
        const ds_plan *p = &v[i];
        char m[24], s[24];
        put(out, "%4d %5d %5d %5d %-9s %4d %9s %10s %7.1f%% %6.1f%% %12.4g\n", i + 1, p->o.pp, p->o.dp, p->o.ep,
            ds_pipe_kind_name((ds_pipe_kind)p->o.schedule), p->o.micro_batch, gb(p->mem.total, m), secs(p->step_s, s),
            100 * p->bubble_fraction, 100 * p->mfu, p->gpu_hours_per_t);
    }
}

/* The simulated timeline: a row per pipeline rank, a box per op (F blue, B green, W yellow, a full
 * backward teal, an overlapped F&B pair purple), idle time white. */
int ds_plan_png(const ds_plan *p, const char *path) {
    const ds_pipe_schedule *s = p->sched;
    const ds_pipe_sim *sim = p->sim;
    if (!s || !sim || !(sim->step_time > 0)) return ds_fail(DS_ERR, "plan: no simulated timeline to draw: %s", path);
    const int left = 70, top = 40, row = s->pp > 32 ? 10 : 22, width = 1200;
    const int height = top + row * s->pp + 40, plot_w = width - left - 20;
    ds_image im;
    DS_TRY(ds_image_create(&im, width, height, 0xFFFFFF));
    char title[256];
    snprintf(title, sizeof title, "%s on %s: PP %d, %d micro-batches, step %.4g s, bubble %.1f%%",
             ds_pipe_kind_name(s->kind), p->cluster.name, s->pp, s->n_mb, p->pipe_s, 100 * p->bubble_fraction);
    ds_draw_text(&im, left, 8, title, 0x000000, 1);
    const double scale = plot_w / sim->step_time;
    for (int r = 0; r < s->pp; r++) {
        const int y0 = top + r * row, y1 = y0 + row - 2;
        char lab[32];
        snprintf(lab, sizeof lab, "rank %d", r);
        if (row >= 14 || r % 4 == 0) ds_draw_text(&im, 4, y0, lab, 0x000000, 1);
        for (int i = 0; i < s->n_ops[r]; i++) {
            const ds_pipe_op *op = &s->ops[r][i];
            const int paired = op->paired || (i > 0 && s->ops[r][i - 1].paired);
            uint32_t col = paired ? 0x8E44AD : op->kind == DS_PIPE_F ? 0x3A7BD5 : op->kind == DS_PIPE_B ? 0x2E9E5B
                                               : op->kind == DS_PIPE_W ? 0xE8C547 : 0x2AA6A6;
            if (op->chunk == 1) col = (col >> 1) & 0x7F7F7F; /* DualPipe's second chunk darker */
            int x0 = left + (int)(sim->start[r][i] * scale), x1 = left + (int)(sim->end[r][i] * scale) - 1;
            if (x1 - x0 >= 3) x1--; /* a white line between ops that follow each other */
            if (x1 < x0) x1 = x0;
            ds_draw_rect(&im, x0, y0, x1, y1, col);
        }
    }
    ds_draw_text(&im, left, height - 24, "F blue, B green, W yellow, full backward teal, F&B pair purple (second chunk darker); time left to right", 0x000000, 1);
    int rc = ds_png_write(&im, path);
    ds_image_free(&im);
    return rc;
}

void ds_plan_phases_jsonw(const ds_plan_phase *ph, int n, ds_jsonw *w) {
    double tot = 0, busy = 0;
    ds_jsonw_obj_begin(w);
    ds_jsonw_key(w, "phases");
    ds_jsonw_arr_begin(w);
    for (int i = 0; i < n; i++) {
        ds_jsonw_obj_begin(w);
        ds_jsonw_kint(w, "steps", ph[i].steps);
        ds_jsonw_knum(w, "gpu_hours", ph[i].gpu_hours);
        ds_jsonw_knum(w, "gpu_hours_without_bubble", ph[i].gpu_hours_busy);
        ds_jsonw_key(w, "plan");
        ds_plan_jsonw(&ph[i].plan, w);
        ds_jsonw_obj_end(w);
        tot += ph[i].gpu_hours, busy += ph[i].gpu_hours_busy;
    }
    ds_jsonw_arr_end(w);
    ds_jsonw_knum(w, "gpu_hours", tot);
    ds_jsonw_knum(w, "gpu_hours_without_bubble", busy);
    ds_jsonw_obj_end(w);
}

void ds_plan_phases_table(const ds_plan_phase *ph, int n, ds_strbuf *out) {
    double tot = 0, busy = 0;
    put(out, "%5s %8s %6s %6s %5s %5s %5s %-9s %3s %9s %4s %10s %7s %12s %12s\n", "phase", "seq", "batch", "steps", "pp", "dp",
        "ep", "schedule", "mb", "memory", "fits", "step", "bubble", "GPU-hours", "w/o bubble");
    for (int i = 0; i < n; i++) {
        const ds_plan *p = &ph[i].plan;
        char m[24], s[24];
        put(out, "%5d %8d %6d %6d %5d %5d %5d %-9s %3d %9s %4s %10s %6.1f%% %12.4g %12.4g\n", i + 1, ph[i].seq_len, ph[i].batch,
            ph[i].steps, p->o.pp, p->o.dp, p->o.ep, ds_pipe_kind_name((ds_pipe_kind)p->o.schedule), p->o.micro_batch,
            gb(p->mem.total, m), p->fits ? "yes" : "NO", secs(p->step_s, s), 100 * p->bubble_fraction, ph[i].gpu_hours,
            ph[i].gpu_hours_busy);
        tot += ph[i].gpu_hours, busy += ph[i].gpu_hours_busy;
    }
    put(out, "total%85s %12.4g %12.4g\n", "", tot, busy);
}
