#include "rl/rl.h"

#include "core/err.h"
#include "ops/device.h"
#include "core/log.h"
#include "core/plot.h"
#include "core/rng.h"
#include "dist/dp.h"
#include "infer/forward.h"
#include "infer/generate.h"
#include "io/checkpoint.h"
#include "model/weights.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- pieces ---- */

typedef struct {
    int prompt;    /* index in its prompt set */
    int n;         /* completion tokens (the end-of-sequence token included when it ended it) */
    ds_finish finish;
    int32_t *tok;  /* [max_new] */
    float *old;    /* [max_new] log-probabilities from sampling */
    float *ref;    /* [max_new] under the reference (beta > 0) */
    char *text;    /* decoded completion (NULL without a tokenizer) */
    size_t text_len;
} rollout;

typedef struct {
    double *v;
    int n, cap;
} dvec;

static int dvec_push(dvec *d, double x) {
    if (d->n == d->cap) {
        int cap = d->cap ? 2 * d->cap : 64;
        double *v = realloc(d->v, (size_t)cap * sizeof *v);
        if (!v) return ds_fail(DS_ERR, "out of memory: RL history");
        d->v = v, d->cap = cap;
    }
    d->v[d->n++] = x;
    return 0;
}

/* A set of completions and their scores: one rollout batch, or one evaluation. */
typedef struct {
    int n, n_rewards, max_new;
    rollout *ro;
    double *total, *parts; /* [n], [n_rewards][n] */
    ds_reward_input *in;   /* [n] */
} scored;

static void scored_free(scored *s) {
    for (int i = 0; s->ro && i < s->n; i++) {
        free(s->ro[i].tok), free(s->ro[i].old), free(s->ro[i].ref), free(s->ro[i].text);
    }
    free(s->ro), free(s->total), free(s->parts), free(s->in);
    memset(s, 0, sizeof *s);
}

static int scored_init(scored *s, int n, int n_rewards, int max_new, int with_ref) {
    memset(s, 0, sizeof *s);
    s->n = n, s->n_rewards = n_rewards, s->max_new = max_new;
    s->ro = calloc((size_t)n, sizeof *s->ro);
    s->total = calloc((size_t)n, sizeof *s->total);
    s->parts = calloc((size_t)n * (n_rewards > 0 ? n_rewards : 1), sizeof *s->parts);
    s->in = calloc((size_t)n, sizeof *s->in);
    int oom = !s->ro || !s->total || !s->parts || !s->in;
    for (int i = 0; !oom && i < n; i++) {
        rollout *r = &s->ro[i];
        r->tok = malloc((size_t)max_new * sizeof *r->tok);
        r->old = malloc((size_t)max_new * sizeof *r->old);
        r->ref = with_ref ? calloc((size_t)max_new, sizeof *r->ref) : NULL;
        oom = !r->tok || !r->old || (with_ref && !r->ref);
    }
    if (oom) {
        scored_free(s);
        return ds_fail(DS_ERR, "out of memory: %d rollouts of %d tokens", n, max_new);
    }
    return 0;
}

/* Statistics of one rollout batch (also recomputed from a restored batch). */
typedef struct {
    double reward_mean, reward_std, frac_zero_std;
    double *part_mean, *part_std; /* [n_rewards] */
    double len_mean, len_min, len_max, len_term_mean, clipped_ratio;
    int64_t prompt_tokens, completion_tokens;
} batch_stats;

struct ds_rl {
    ds_rl_opts o;
    ds_model *policy, *ref;
    const ds_config *cfg;
    const ds_tokenizer *tok;
    const ds_rl_prompts *train, *eval;
    ds_reward **rewards;
    int n_rewards, answer_k; /* answer_k: index of the "answer" reward, or -1 */
    int T, N, rows_step;
    int32_t pad;
    /* engine */
    ds_infer *engine;
    ds_infer_model im;
    const float **bias;
    /* the current rollout batch */
    scored cur;
    double *adv, *group_std; /* [N], [P] */
    int zero_groups;
    batch_stats bs;
    ds_batch_buf rows;       /* N rows: prompt + completion, targets on completion tokens */
    int64_t batches, served; /* rollout batches drawn; rows served from the current one (all epochs) */
    uint32_t *order;         /* [N] this epoch's row order */
    int *step_rows;          /* [rows_step] rollout of each row of the step */
    int64_t step_nseq, step_ntok, step_real_tokens;
    uint32_t *perm;          /* prompt order of pass perm_pass */
    int64_t perm_pass;
    int64_t version, synced; /* optimizer steps seen (after_step); the version the rollout model has */
    /* the update */
    ds_data_source src;
    ds_loss_hook hook;
    ds_grpo_stats st;
    int check_logp, rollout_failed;
    double logp_diff_max, logp_diff_sum;
    int64_t logp_diff_n;
    float *scratch; /* [T] */
    float *ref_all; /* [N][max_new]: the reference log-probs summed over the ranks (opts.comm) */
    /* timings of the step (seconds) */
    double t_gen, t_ref, t_score;
    int generated;
    ds_rl_report rep;
    /* reporting */
    FILE *samples;
    const char *samples_where;
    ds_metrics *metrics;
    int64_t total_steps;
    dvec h_step, h_reward, e_step, e_reward, e_acc, e_sacc;
    ds_bytes dec;
};

void ds_rl_opts_defaults(ds_rl_opts *o) {
    memset(o, 0, sizeof *o);
    o->group = 8;
    o->prompts_per_batch = 8;
    o->epochs = 1;
    o->mini_batches = 1;
    o->micro_batch = 8;
    o->max_new = 64;
    o->sampling = (ds_sampling){.temperature = 1.0, .top_k = 0, .top_p = 1.0, .seed = 1};
    o->loss = (ds_grpo_opts){.eps_low = 0.2, .eps_high = 0.2, .beta = 0.04, .avg = DS_GRPO_AVG_SEQUENCE};
    o->scale_std = 1;
    o->log_every = 1;
    o->seed = 1;
}

int ds_rl_seq_len(const ds_rl_prompts *train, const ds_rl_prompts *eval, int max_new) {
    int m = train ? train->max_ids : 0;
    if (eval && eval->max_ids > m) m = eval->max_ids;
    return m + max_new;
}

/* ---- prompts in order ---- */

/* The prompt at position q of the endless stream: passes over the set, each in its own shuffled order. */
static int prompt_at(ds_rl *r, int64_t q) {
    const int64_t n = r->train->n, pass = q / n;
    if (pass != r->perm_pass) {
        ds_permutation(r->perm, (size_t)n, r->o.seed, ds_stream_id("rl-prompts") + (uint64_t)pass);
        r->perm_pass = pass;
    }
    return (int)r->perm[q % n];
}

/* ---- generation ---- */

typedef struct {
    ds_rl *r;
    scored *s;
    const ds_rl_prompts *ps;
    int next;
    uint64_t base;
} gen_ctx;

static int gen_next(void *src, uint64_t *id, const int32_t **ids, int *n, int *got) {
    gen_ctx *g = src;
    if (g->next >= g->s->n) {
        *got = 0;
        return 0;
    }
    const ds_rl_prompt *p = &g->ps->p[g->s->ro[g->next].prompt];
    *id = g->base + (uint64_t)g->next;
    *ids = p->ids;
    *n = p->n_ids;
    *got = 1;
    g->next++;
    return 0;
}

static int gen_token(void *sink, const ds_gen_seq *s, int *stop) {
    *stop = 0;
    return 0;
}

static int gen_done(void *sink, const ds_gen_seq *s) {
    gen_ctx *g = sink;
    rollout *ro = &g->s->ro[s->id - g->base];
    ro->n = s->n;
    ro->finish = s->finish;
    memcpy(ro->tok, s->tokens, (size_t)s->n * sizeof *ro->tok);
    memcpy(ro->old, s->logprobs, (size_t)s->n * sizeof *ro->old);
    return 0;
}

static int generate(ds_rl *r, scored *s, const ds_rl_prompts *ps, uint64_t base, const ds_sampling *sp) {
    if (r->o.sync_rollout && r->synced != r->version) { /* the engine's copy of the policy is behind */
        DS_TRY(r->o.sync_rollout(r->o.sync_ctx));
        r->synced = r->version;
    }
    gen_ctx g = {.r = r, .s = s, .ps = ps, .base = base};
    int slots = r->o.gen_batch;
    ds_gen_opts go = {.sampling = *sp, .max_new = r->o.max_new, .eos_id = r->cfg->eos_token_id, .batch = slots,
                      .prefill_chunk = 256, .prefill_form = DS_ATTN_NAIVE};
    ds_gen_io io = {.src = &g, .next = gen_next, .sink = &g, .on_token = gen_token, .on_done = gen_done};
    ds_gen_stats st;
    DS_TRY(ds_generate(r->engine, &go, &io, &st));
    for (int i = 0; i < s->n; i++)
        if (s->ro[i].finish == DS_FINISH_NONE) return ds_fail(DS_ERR, "rollouts: completion %d did not finish", i);
    return 0;
}

/* The text of completion tokens. A model's vocabulary is often larger than its tokenizer's (padded for
 * the GEMMs), and a policy may sample an id no text belongs to: it reads as U+FFFD, so rewards see it. */
static int decode(ds_rl *r, const int32_t *ids, int n) {
    const uint32_t V = ds_tok_vocab_size(r->tok);
    int start = 0;
    for (int j = 0; j <= n; j++) {
        size_t len = 0;
        const int bad = j < n && (ids[j] < 0 || (uint32_t)ids[j] >= V || !ds_tok_token_bytes(r->tok, (uint32_t)ids[j], &len));
        if (j < n && !bad) continue;
        if (j > start) DS_TRY(ds_tok_decode(r->tok, (const uint32_t *)ids + start, (size_t)(j - start), &r->dec));
        if (bad) {
            static const uint8_t repl[3] = {0xef, 0xbf, 0xbd};
            if (r->dec.n + 3 > r->dec.cap) {
                size_t cap = 2 * r->dec.cap + 64;
                uint8_t *v = realloc(r->dec.v, cap);
                if (!v) return ds_fail(DS_ERR, "out of memory: completions");
                r->dec.v = v, r->dec.cap = cap;
            }
            memcpy(r->dec.v + r->dec.n, repl, 3);
            r->dec.n += 3;
        }
        start = j + 1;
    }
    return 0;
}

/* Decode and score every completion of s (prompts from ps). */
static int score(ds_rl *r, scored *s, const ds_rl_prompts *ps, int group) {
    for (int i = 0; i < s->n; i++) {
        rollout *ro = &s->ro[i];
        const ds_rl_prompt *p = &ps->p[ro->prompt];
        free(ro->text);
        ro->text = NULL;
        ro->text_len = 0;
        if (r->tok) {
            r->dec.n = 0;
            DS_TRY(decode(r, ro->tok, ro->n - (ro->finish == DS_FINISH_EOS)));
            if (!(ro->text = malloc(r->dec.n + 1))) return ds_fail(DS_ERR, "out of memory: completions");
            if (r->dec.n) memcpy(ro->text, r->dec.v, r->dec.n);
            ro->text[r->dec.n] = 0;
            ro->text_len = r->dec.n;
        }
        s->in[i] = (ds_reward_input){.prompt = p->text, .prompt_len = p->text_len, .messages = p->messages,
                                     .completion = ro->text, .completion_len = ro->text_len, .answer = p->answer,
                                     .answer_len = p->answer_len, .tokens = ro->tok, .n_tokens = ro->n,
                                     .max_new = r->o.max_new, .finish = ds_finish_name(ro->finish), .index = i,
                                     .group = group > 0 ? i / group : i};
    }
    return ds_rewards_score(r->rewards, r->n_rewards, s->in, s->n, s->parts, s->total);
}

/* Row i of the batch: prompt, completion, padding; targets on the completion's tokens only. */
static void build_row(ds_rl *r, int i) {
    const rollout *ro = &r->cur.ro[i];
    const ds_rl_prompt *p = &r->train->p[ro->prompt];
    int32_t *tk = r->rows.tokens + (size_t)i * r->T, *tg = r->rows.targets + (size_t)i * r->T;
    const int Lp = p->n_ids;
    for (int t = 0; t < r->T; t++) {
        tk[t] = t < Lp ? p->ids[t] : t < Lp + ro->n ? ro->tok[t - Lp] : r->pad;
        tg[t] = -1;
    }
    for (int j = 0; j < ro->n; j++) tg[Lp - 1 + j] = ro->tok[j];
    r->rows.len[i] = Lp + ro->n; /* the padding after it is not routed to experts nor counted (ds_batch.len) */
}

/* Log-probabilities of every row's completion under the reference. With several ranks, micro-batch k is
 * rank k mod P's (a rank without one in the last round takes part in its expert exchanges with none), and
 * the values are then summed over the ranks: each is written by one rank and is 0 on the others, so every
 * rank ends with the same bits. */
static int reference_logprobs(ds_rl *r) {
    const int M = r->o.micro_batch, nb = (r->N + M - 1) / M, mx = r->o.max_new;
    const int P = r->o.comm ? r->o.comm->size : 1, me = r->o.comm ? r->o.comm->rank : 0;
    if (P > 1) memset(r->ref_all, 0, sizeof(float) * (size_t)r->N * mx);
    for (int k = me; k < (nb + P - 1) / P * P; k += P) {
        if (k >= nb) {
            DS_TRY(ds_model_ep_idle_fwd(r->ref, r->T));
            continue;
        }
        const int r0 = k * M, B = r->N - r0 < M ? r->N - r0 : M;
        ds_batch b = ds_batch_buf_view(&r->rows, r0, B);
        ds_fwd_out f;
        DS_TRY(ds_model_forward(r->ref, &b, &f));
        for (int j = 0; j < B; j++) {
            rollout *ro = &r->cur.ro[r0 + j];
            const int Lp = r->train->p[ro->prompt].n_ids;
            memcpy(P > 1 ? r->ref_all + (size_t)(r0 + j) * mx : ro->ref, f.logp + (size_t)j * r->T + Lp - 1,
                   (size_t)ro->n * sizeof *ro->ref);
        }
    }
    if (P == 1) return 0;
    DS_TRY(ds_dp_allreduce_f32(r->o.comm, r->ref_all, (size_t)r->N * mx));
    for (int i = 0; i < r->N; i++) memcpy(r->cur.ro[i].ref, r->ref_all + (size_t)i * mx, (size_t)r->cur.ro[i].n * sizeof(float));
    return 0;
}

static void stats_of(const scored *s, int n_groups, const double *group_std, int zero_groups, batch_stats *b) {
    const int n = s->n;
    double sum = 0, term = 0;
    int n_term = 0, cut = 0;
    b->len_min = INFINITY, b->len_max = 0;
    b->prompt_tokens = b->completion_tokens = 0;
    for (int i = 0; i < n; i++) {
        sum += s->total[i];
        const rollout *ro = &s->ro[i];
        b->completion_tokens += ro->n;
        if (ro->n < b->len_min) b->len_min = ro->n;
        if (ro->n > b->len_max) b->len_max = ro->n;
        if (ro->finish == DS_FINISH_LENGTH) cut++;
        else term += ro->n, n_term++;
    }
    b->reward_mean = n ? sum / n : NAN;
    b->len_mean = n ? (double)b->completion_tokens / n : NAN;
    b->len_term_mean = n_term ? term / n_term : 0;
    b->clipped_ratio = n ? (double)cut / n : NAN;
    double gs = 0;
    for (int g = 0; group_std && g < n_groups; g++) gs += group_std[g];
    b->reward_std = n_groups && group_std ? gs / n_groups : NAN;
    b->frac_zero_std = n_groups ? (double)zero_groups / n_groups : NAN;
    for (int k = 0; k < s->n_rewards; k++) {
        const double *p = s->parts + (size_t)k * n;
        double m = 0, v = 0;
        for (int i = 0; i < n; i++) m += p[i];
        m = n ? m / n : NAN;
        for (int i = 0; i < n; i++) v += (p[i] - m) * (p[i] - m);
        b->part_mean[k] = m;
        b->part_std[k] = n > 1 ? sqrt(v / (n - 1)) : 0;
    }
}

/* After the completions and their scores are in cur: advantages, statistics, rows, reference. */
static int finish_batch(ds_rl *r, int with_reference) {
    const int G = r->o.group, P = r->o.prompts_per_batch;
    r->zero_groups = ds_grpo_advantages(r->cur.total, P, G, r->o.scale_std, r->adv, r->group_std);
    stats_of(&r->cur, P, r->group_std, r->zero_groups, &r->bs);
    r->bs.prompt_tokens = 0;
    for (int i = 0; i < r->N; i++) {
        r->bs.prompt_tokens += r->train->p[r->cur.ro[i].prompt].n_ids;
        build_row(r, i);
    }
    if (with_reference && r->ref) {
        double t0 = ds_now();
        DS_TRY(reference_logprobs(r));
        r->t_ref = ds_now() - t0;
    }
    r->rep.reward_mean = r->bs.reward_mean;
    r->rep.reward_std = r->bs.reward_std;
    r->rep.frac_zero_std = r->bs.frac_zero_std;
    r->rep.mean_length = r->bs.len_mean;
    r->rep.clipped_ratio = r->bs.clipped_ratio;
    return 0;
}

/* One line per completion of the batch just drawn (--samples). */
static int write_samples(ds_rl *r) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    int rc = 0;
    for (int i = 0; i < r->N && !rc; i++) {
        const rollout *ro = &r->cur.ro[i];
        ds_jsonw_reset(&w);
        ds_jsonw_obj_begin(&w);
        ds_jsonw_kint(&w, "batch", r->batches);
        ds_jsonw_kint(&w, "index", i);
        ds_jsonw_kint(&w, "prompt_line", r->train->p[ro->prompt].line);
        ds_jsonw_key(&w, "completion");
        if (ro->text) ds_jsonw_strn(&w, ro->text, ro->text_len);
        else ds_jsonw_null(&w);
        ds_jsonw_kstr(&w, "finish_reason", ds_finish_name(ro->finish));
        ds_jsonw_kint(&w, "tokens", ro->n);
        ds_jsonw_knum(&w, "reward", r->cur.total[i]);
        for (int k = 0; k < r->n_rewards; k++) ds_jsonw_knum(&w, r->rewards[k]->name, r->cur.parts[(size_t)k * r->N + i]);
        ds_jsonw_knum(&w, "advantage", r->adv[i]);
        ds_jsonw_obj_end(&w);
        rc = ds_jsonw_emit_line(&w, r->samples, r->samples_where);
    }
    ds_jsonw_free(&w);
    return rc;
}

void ds_rl_set_samples(ds_rl *r, FILE *f, const char *where) {
    r->samples = f;
    r->samples_where = where;
}

static int new_batch(ds_rl *r) {
    const int G = r->o.group, P = r->o.prompts_per_batch;
    for (int i = 0; i < r->N; i++) r->cur.ro[i].prompt = prompt_at(r, r->batches * P + i / G);
    double t0 = ds_now();
    r->rollout_failed = 1; /* until the batch is complete: the model has not moved since the last step */
    DS_TRY(generate(r, &r->cur, r->train, (uint64_t)r->batches * (uint64_t)r->N, &r->o.sampling));
    double t1 = ds_now();
    int rc = score(r, &r->cur, r->train, G);
    if (rc) {
        r->rollout_failed = 1;
        ds_fail_ctx(rc, "rollout batch %lld", (long long)r->batches + 1);
        return rc;
    }
    r->t_gen = t1 - t0;
    r->t_score = ds_now() - t1;
    DS_TRY(finish_batch(r, 1));
    r->rollout_failed = 0;
    r->batches++;
    if (r->samples) DS_TRY(write_samples(r));
    r->rep.batches = r->batches;
    r->served = 0;
    r->generated = 1;
    return 0;
}

/* ---- the data source ---- */

static int src_next(ds_data_source *s, ds_batch_buf *buf, int rows) {
    ds_rl *r = s->impl;
    if (rows != r->rows_step)
        return ds_fail(DS_ERR, "rollouts: the trainer asked for %d rows, a step has %d (P*G/K)", rows, r->rows_step);
    if (buf->rows + rows > buf->cap_rows) return ds_fail(DS_ERR, "rollouts: batch buffer too small");
    r->t_gen = r->t_ref = r->t_score = 0;
    r->generated = 0;
    if (r->batches == 0 || r->served >= (int64_t)r->o.epochs * r->N) DS_TRY(new_batch(r));
    /* each epoch takes the batch in its own order when it is split into several steps (a function of
     * the batch and the epoch, so a resumed run finds the same order) */
    const int64_t epoch = r->served / r->N, off = r->served % r->N;
    if (r->o.mini_batches > 1)
        ds_permutation(r->order, (size_t)r->N, r->o.seed, ds_stream_id("rl-epochs") + (uint64_t)((r->batches - 1) * r->o.epochs + epoch));
    else
        for (int i = 0; i < r->N; i++) r->order[i] = (uint32_t)i;
    r->check_logp = r->served == 0; /* the batch's first update: the weights that sampled it */
    r->step_nseq = r->step_ntok = r->step_real_tokens = 0;
    const size_t T = (size_t)r->T;
    for (int k = 0; k < rows; k++) {
        const int i = (int)r->order[off + k];
        r->step_rows[k] = i;
        const size_t dst = (size_t)(buf->rows + k) * T;
        memcpy(buf->tokens + dst, r->rows.tokens + (size_t)i * T, T * sizeof *buf->tokens);
        memcpy(buf->targets + dst, r->rows.targets + (size_t)i * T, T * sizeof *buf->targets);
        buf->len[buf->rows + k] = r->rows.len[i];
        const rollout *ro = &r->cur.ro[i];
        r->step_real_tokens += r->train->p[ro->prompt].n_ids + ro->n;
        if (ro->n > 0 && !(r->o.mask_truncated && ro->finish == DS_FINISH_LENGTH)) {
            r->step_nseq++;
            r->step_ntok += ro->n;
        }
    }
    buf->rows += rows;
    buf->has_len = 1;
    r->served += rows;
    ds_grpo_stats_reset(&r->st);
    r->logp_diff_max = r->logp_diff_sum = 0;
    r->logp_diff_n = 0;
    return 0;
}

static int64_t src_rows_per_pass(const ds_data_source *s) { return -1; }
static void src_rewind(ds_data_source *s) {}
static void src_free(ds_data_source *s) {} /* owned by the run */

static void write_f32s(ds_jsonw *w, const float *v, int n) {
    ds_jsonw_arr_begin(w);
    for (int i = 0; i < n; i++) ds_jsonw_numf(w, v[i]);
    ds_jsonw_arr_end(w);
}

static void write_dvec(ds_jsonw *w, const char *key, const dvec *d) {
    ds_jsonw_key(w, key);
    ds_jsonw_arr_begin(w);
    for (int i = 0; i < d->n; i++) ds_jsonw_num(w, d->v[i]);
    ds_jsonw_arr_end(w);
}

static void src_state_write(const ds_data_source *s, ds_jsonw *w) {
    const ds_rl *r = s->impl;
    ds_jsonw_obj_begin(w);
    ds_jsonw_kint(w, "batches", r->batches);
    ds_jsonw_kint(w, "served", r->served);
    ds_jsonw_key(w, "history");
    ds_jsonw_obj_begin(w);
    write_dvec(w, "step", &r->h_step);
    write_dvec(w, "reward", &r->h_reward);
    write_dvec(w, "eval_step", &r->e_step);
    write_dvec(w, "eval_reward", &r->e_reward);
    write_dvec(w, "eval_accuracy", &r->e_acc);
    write_dvec(w, "eval_sampled", &r->e_sacc);
    ds_jsonw_obj_end(w);
    /* a checkpoint inside a rollout batch carries the batch: its sampling weights are gone */
    if (r->batches > 0 && r->served < (int64_t)r->o.epochs * r->N) {
        ds_jsonw_key(w, "rollouts");
        ds_jsonw_arr_begin(w);
        for (int i = 0; i < r->N; i++) {
            const rollout *ro = &r->cur.ro[i];
            ds_jsonw_obj_begin(w);
            ds_jsonw_kint(w, "prompt", ro->prompt);
            ds_jsonw_kint(w, "finish", ro->finish);
            ds_jsonw_key(w, "tokens");
            ds_jsonw_arr_begin(w);
            for (int j = 0; j < ro->n; j++) ds_jsonw_int(w, ro->tok[j]);
            ds_jsonw_arr_end(w);
            ds_jsonw_key(w, "old_logp");
            write_f32s(w, ro->old, ro->n);
            if (ro->ref) {
                ds_jsonw_key(w, "ref_logp");
                write_f32s(w, ro->ref, ro->n);
            }
            ds_jsonw_key(w, "rewards");
            ds_jsonw_arr_begin(w);
            for (int k = 0; k < r->n_rewards; k++) ds_jsonw_num(w, r->cur.parts[(size_t)k * r->N + i]);
            ds_jsonw_arr_end(w);
            ds_jsonw_knum(w, "reward", r->cur.total[i]);
            ds_jsonw_obj_end(w);
        }
        ds_jsonw_arr_end(w);
    }
    ds_jsonw_obj_end(w);
}

static int read_dvec(json_t *o, const char *key, dvec *d, const char *where) {
    json_t *a = json_object_get(o, key);
    d->n = 0;
    if (!a) return 0;
    if (!json_is_array(a)) return ds_fail(DS_ERR, "trainer state: data.history.%s: not an array: %s", key, where);
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *e = json_array_get(a, i);
        DS_TRY(dvec_push(d, json_is_number(e) ? json_number_value(e) : NAN));
    }
    return 0;
}

static int read_f32s(json_t *a, float *dst, int n) {
    if (!json_is_array(a) || (int)json_array_size(a) != n) return -1;
    for (int j = 0; j < n; j++) {
        json_t *e = json_array_get(a, (size_t)j);
        if (!json_is_number(e)) return -1;
        dst[j] = (float)json_number_value(e);
    }
    return 0;
}

static int src_state_read(ds_data_source *s, const void *json, const char *where) {
    ds_rl *r = s->impl;
    json_t *o = (json_t *)json;
    json_t *b = json_object_get(o, "batches"), *sv = json_object_get(o, "served"), *h = json_object_get(o, "history");
    if (!json_is_integer(b) || !json_is_integer(sv) || json_integer_value(b) < 0 || json_integer_value(sv) < 0)
        return ds_fail(DS_ERR, "trainer state: data: not the state of an RL run (batches, served): %s", where);
    r->batches = json_integer_value(b);
    r->served = json_integer_value(sv);
    r->rep.batches = r->batches;
    if (json_is_object(h)) {
        DS_TRY(read_dvec(h, "step", &r->h_step, where));
        DS_TRY(read_dvec(h, "reward", &r->h_reward, where));
        DS_TRY(read_dvec(h, "eval_step", &r->e_step, where));
        DS_TRY(read_dvec(h, "eval_reward", &r->e_reward, where));
        DS_TRY(read_dvec(h, "eval_accuracy", &r->e_acc, where));
        DS_TRY(read_dvec(h, "eval_sampled", &r->e_sacc, where));
    }
    const int64_t per_batch = (int64_t)r->o.epochs * r->N;
    if (r->batches == 0 || r->served >= per_batch) {
        r->served = per_batch; /* the next step draws a new batch */
        return 0;
    }
    if (r->served % r->rows_step)
        return ds_fail(DS_ERR, "trainer state: data: %lld rows served, not a multiple of the %d rows of a step (was the "
                       "run started with other --group/--batch/--mini-batches?): %s",
                       (long long)r->served, r->rows_step, where);
    json_t *a = json_object_get(o, "rollouts");
    if (!json_is_array(a) || (int)json_array_size(a) != r->N)
        return ds_fail(DS_ERR, "trainer state: data.rollouts: expected %d rollouts (was the run started with other "
                       "--group/--batch?): %s", r->N, where);
    for (int i = 0; i < r->N; i++) {
        json_t *e = json_array_get(a, (size_t)i);
        rollout *ro = &r->cur.ro[i];
        json_t *p = json_object_get(e, "prompt"), *fin = json_object_get(e, "finish"), *tk = json_object_get(e, "tokens");
        json_t *rw = json_object_get(e, "rewards"), *tot = json_object_get(e, "reward");
        int n = json_is_array(tk) ? (int)json_array_size(tk) : -1;
        int bad = !json_is_integer(p) || json_integer_value(p) < 0 || json_integer_value(p) >= r->train->n || !json_is_integer(fin) ||
                  n < 0 || n > r->o.max_new || !json_is_array(rw) || (int)json_array_size(rw) != r->n_rewards || !json_is_number(tot);
        if (!bad) {
            ro->prompt = (int)json_integer_value(p);
            ro->finish = (ds_finish)json_integer_value(fin);
            ro->n = n;
            for (int j = 0; j < n && !bad; j++) {
                json_t *t = json_array_get(tk, (size_t)j);
                bad = !json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) >= r->cfg->vocab_size;
                if (!bad) ro->tok[j] = (int32_t)json_integer_value(t);
            }
            bad = bad || read_f32s(json_object_get(e, "old_logp"), ro->old, n);
            bad = bad || (ro->ref && read_f32s(json_object_get(e, "ref_logp"), ro->ref, n));
            for (int k = 0; k < r->n_rewards && !bad; k++) {
                json_t *v = json_array_get(rw, (size_t)k);
                bad = !json_is_number(v);
                if (!bad) r->cur.parts[(size_t)k * r->N + i] = json_number_value(v);
            }
            if (!bad) r->cur.total[i] = json_number_value(tot);
        }
        if (bad) return ds_fail(DS_ERR, "trainer state: data.rollouts[%d]: missing or bad fields: %s", i, where);
    }
    return finish_batch(r, 0);
}

/* ---- the loss hook ---- */

static int loss_micro(void *ctx, const ds_loss_ctx *lc, const ds_batch *b, const ds_fwd_out *f, float *dlogp, float *dmtp,
                      double *terms) {
    ds_rl *r = ctx;
    const int T = b->T;
    if (T != r->T) return ds_fail(DS_ERR, "rollouts: rows of %d tokens, expected %d", T, r->T);
    if (lc->row0 < 0 || lc->row0 + b->B > r->rows_step) return ds_fail(DS_ERR, "rollouts: micro-batch rows outside the step");
    const ds_grpo_stats before = r->st;
    for (int k = 0; k < b->B; k++) {
        const int i = r->step_rows[lc->row0 + k];
        const rollout *ro = &r->cur.ro[i];
        const int Lp = r->train->p[ro->prompt].n_ids;
        float *d = dlogp ? dlogp + (size_t)k * T : r->scratch;
        memset(d, 0, (size_t)T * sizeof *d);
        if (ro->n == 0 || (r->o.mask_truncated && ro->finish == DS_FINISH_LENGTH)) continue;
        const size_t at = (size_t)k * T + Lp - 1;
        ds_grpo_seq seq = {.logp = f->logp + at, .old_logp = ro->old, .ref_logp = r->o.loss.beta != 0 ? ro->ref : NULL,
                           .entropy = f->entropy ? f->entropy + at : NULL, .n = ro->n, .adv = r->adv[i],
                           .weight = ds_grpo_weight(r->o.loss.avg, ro->n, r->step_nseq, r->step_ntok)};
        ds_grpo_seq_loss(&r->o.loss, &seq, d + Lp - 1, &r->st);
        if (r->check_logp)
            for (int j = 0; j < ro->n; j++) {
                double diff = fabs((double)seq.logp[j] - ro->old[j]);
                if (diff > r->logp_diff_max) r->logp_diff_max = diff;
                r->logp_diff_sum += diff;
                r->logp_diff_n++;
            }
    }
    if (dmtp && lc->mtp_depth > 0) memset(dmtp, 0, (size_t)lc->mtp_depth * b->B * T * sizeof *dmtp);
    terms[0] += r->st.loss - before.loss;
    terms[1] += r->st.loss_pg - before.loss_pg;
    terms[2] += r->st.loss_kl - before.loss_kl;
    r->rep.update = r->st;
    if (r->check_logp) r->rep.logp_diff_max = r->logp_diff_max;
    return 0;
}

/* ---- reporting ---- */

static double safe_div(double a, double b) { return b > 0 ? a / b : NAN; }

static void step_record(void *ctx, const ds_trainer *t, ds_jsonw *w) {
    ds_rl *r = ctx;
    const batch_stats *b = &r->bs;
    const ds_grpo_stats *s = &r->st;
    char key[80];
    ds_jsonw_kint(w, "rollout_batch", r->batches);
    ds_jsonw_kint(w, "epoch", (r->served - 1) / r->N);
    ds_train_knum(w, "reward", b->reward_mean);
    ds_train_knum(w, "reward_std", b->reward_std);
    for (int k = 0; k < r->n_rewards; k++) {
        snprintf(key, sizeof key, "rewards/%s/mean", r->rewards[k]->name);
        ds_train_knum(w, key, b->part_mean[k]);
        snprintf(key, sizeof key, "rewards/%s/std", r->rewards[k]->name);
        ds_train_knum(w, key, b->part_std[k]);
    }
    ds_train_knum(w, "frac_reward_zero_std", b->frac_zero_std);
    ds_train_knum(w, "kl", safe_div(s->kl_sum, (double)s->tokens));
    ds_train_knum(w, "entropy", safe_div(s->entropy_sum, (double)s->entropy_tokens));
    ds_train_knum(w, "clip_ratio/low_mean", safe_div((double)s->clip_low, (double)s->tokens));
    ds_train_knum(w, "clip_ratio/high_mean", safe_div((double)s->clip_high, (double)s->tokens));
    ds_train_knum(w, "clip_ratio/region_mean", safe_div((double)(s->clip_low + s->clip_high), (double)s->tokens));
    ds_train_knum(w, "ratio/min", s->tokens ? s->ratio_min : NAN);
    ds_train_knum(w, "ratio/max", s->tokens ? s->ratio_max : NAN);
    ds_train_knum(w, "completions/mean_length", b->len_mean);
    ds_train_knum(w, "completions/min_length", b->len_min);
    ds_train_knum(w, "completions/max_length", b->len_max);
    ds_train_knum(w, "completions/mean_terminated_length", b->len_term_mean);
    ds_train_knum(w, "completions/clipped_ratio", b->clipped_ratio);
    if (r->check_logp && r->logp_diff_n) {
        ds_train_knum(w, "sampling/logp_diff_max", r->logp_diff_max);
        ds_train_knum(w, "sampling/logp_diff_mean", r->logp_diff_sum / (double)r->logp_diff_n);
    }
    const double step_s = ds_trainer_last(t)->ms / 1e3;
    ds_train_knum(w, "timing/generate_s", r->t_gen);
    ds_train_knum(w, "timing/reference_s", r->t_ref);
    ds_train_knum(w, "timing/score_s", r->t_score);
    ds_train_knum(w, "timing/update_s", fmax(0.0, step_s - r->t_gen - r->t_ref - r->t_score));
    ds_train_knum(w, "tokens_per_s", safe_div((double)r->step_real_tokens, step_s));
    if (r->generated && r->t_gen > 0) ds_train_knum(w, "generate/tokens_per_s", (double)b->completion_tokens / r->t_gen);
}

static void log_line(ds_rl *r, const ds_trainer *t) {
    const ds_step_report *tr = ds_trainer_last(t);
    const batch_stats *b = &r->bs;
    const ds_grpo_stats *s = &r->st;
    char parts[256] = "";
    size_t o = 0;
    for (int k = 0; r->n_rewards > 1 && k < r->n_rewards && o < sizeof parts; k++)
        o += (size_t)snprintf(parts + o, sizeof parts - o, " %s %.3f", r->rewards[k]->name, b->part_mean[k]);
    int w = 1;
    for (int64_t x = r->total_steps; x >= 10; x /= 10) w++;
    char times[96] = "";
    if (r->generated)
        snprintf(times, sizeof times, " | gen %.2fs ref %.2fs score %.2fs", r->t_gen, r->t_ref, r->t_score);
    char pace[64];
    ds_trainer_pace(t, pace, sizeof pace);
    ds_info("step %*lld/%lld | reward %.3f (std %.3f)%s%s | zero-std %.2f | kl %.4f | entropy %.3f | clip %.3f | len %.1f "
            "max %.0f cut %.2f | lr %.2e | norm %.3f | %.2fs%s | %s",
            w, (long long)tr->step, (long long)r->total_steps, b->reward_mean, b->reward_std, parts[0] ? " |" : "", parts,
            b->frac_zero_std, safe_div(s->kl_sum, (double)s->tokens), safe_div(s->entropy_sum, (double)s->entropy_tokens),
            safe_div((double)(s->clip_low + s->clip_high), (double)s->tokens), b->len_mean, b->len_max, b->clipped_ratio,
            tr->lr, tr->grad_norm, tr->ms / 1e3, times, pace);
}

static int after_step(void *ctx, ds_trainer *t) {
    ds_rl *r = ctx;
    const int64_t step = ds_trainer_steps_done(t);
    r->version++; /* the policy moved: the rollout model must follow before it samples again */
    if (r->generated) {
        DS_TRY(dvec_push(&r->h_step, (double)step));
        DS_TRY(dvec_push(&r->h_reward, r->bs.reward_mean));
    }
    if (r->o.log_every > 0 && (step % r->o.log_every == 0 || step == 1 || step == r->total_steps)) log_line(r, t);
    if (r->eval && ((r->o.eval_every > 0 && step % r->o.eval_every == 0) || step == r->total_steps))
        DS_TRY(ds_rl_evaluate_at(r, step));
    return 0;
}

int ds_rl_micro_done(void *ctx, ds_trainer *t) {
    ds_rl *r = ctx;
    (void)t;
    if (!r->o.comm || r->o.comm->size < 2) return 0;
    ds_grpo_stats *s = &r->st;
    /* sums in rank order (the same bits on every rank), extremes exactly */
    double sum[10] = {s->loss, s->loss_pg, s->loss_kl, s->kl_sum, s->entropy_sum, (double)s->tokens, (double)s->entropy_tokens,
                      (double)s->clip_low, (double)s->clip_high, (double)r->logp_diff_n};
    double ext[3] = {-s->ratio_min, s->ratio_max, r->logp_diff_max}, diff = r->logp_diff_sum;
    DS_TRY(ds_dp_allreduce_f64(r->o.comm, sum, 10));
    DS_TRY(ds_dp_allreduce_f64(r->o.comm, &diff, 1));
    DS_TRY(ds_comm_allreduce_max_f64(r->o.comm, ext, 3));
    s->loss = sum[0], s->loss_pg = sum[1], s->loss_kl = sum[2], s->kl_sum = sum[3], s->entropy_sum = sum[4];
    s->tokens = (int64_t)sum[5], s->entropy_tokens = (int64_t)sum[6], s->clip_low = (int64_t)sum[7], s->clip_high = (int64_t)sum[8];
    s->ratio_min = -ext[0], s->ratio_max = ext[1];
    r->logp_diff_n = (int64_t)sum[9], r->logp_diff_max = ext[2], r->logp_diff_sum = diff;
    r->rep.update = *s;
    if (r->check_logp) r->rep.logp_diff_max = r->logp_diff_max;
    return 0;
}

void ds_rl_hooks(ds_rl *r, ds_train_hooks *h, ds_metrics *metrics, int64_t total_steps) {
    h->step_record = step_record;
    h->after_step = after_step;
    h->step_ctx = r;
    r->metrics = metrics;
    r->total_steps = total_steps;
}

/* Complete k completions of every eval prompt with sp and score them: mean reward, accuracy, length. */
static int eval_pass(ds_rl *r, const ds_sampling *sp, int k, double *reward, double *acc, double *len) {
    scored s;
    DS_TRY(scored_init(&s, r->eval->n * k, r->n_rewards, r->o.max_new, 0));
    for (int i = 0; i < s.n; i++) s.ro[i].prompt = i / k;
    /* sequence ids of their own, the same at every evaluation: the draws are common to all of them, so
     * the difference between two evaluations is the policy's, not the dice's */
    int rc = generate(r, &s, r->eval, (uint64_t)1 << 62, sp);
    if (!rc) rc = score(r, &s, r->eval, k);
    if (!rc) {
        double sum = 0, a = 0, l = 0;
        for (int i = 0; i < s.n; i++) {
            sum += s.total[i];
            l += s.ro[i].n;
            if (r->answer_k >= 0) a += s.parts[(size_t)r->answer_k * s.n + i];
        }
        *reward = sum / s.n;
        *len = l / s.n;
        *acc = r->answer_k >= 0 ? a / s.n : NAN;
    }
    scored_free(&s);
    return rc;
}

int ds_rl_evaluate(ds_rl *r, ds_rl_eval *out) {
    memset(out, 0, sizeof *out);
    out->accuracy = out->sampled_accuracy = out->sampled_reward = NAN;
    if (!r->eval) return 0;
    double t0 = ds_now(), len2;
    ds_sampling greedy = {.temperature = 0, .top_k = 0, .top_p = 1, .seed = r->o.sampling.seed};
    int rc = eval_pass(r, &greedy, 1, &out->reward, &out->accuracy, &out->mean_length);
    if (!rc && r->o.eval_samples > 0) {
        ds_sampling sp = r->o.sampling;
        if (r->o.eval_temperature > 0) sp.temperature = r->o.eval_temperature;
        rc = eval_pass(r, &sp, r->o.eval_samples, &out->sampled_reward, &out->sampled_accuracy, &len2);
    }
    if (rc) return ds_fail_ctx(rc, "evaluation");
    out->n = r->eval->n;
    out->seconds = ds_now() - t0;
    return 0;
}

int ds_rl_evaluate_at(ds_rl *r, int64_t step) {
    if (!r->eval) return 0;
    ds_rl_eval e;
    DS_TRY(ds_rl_evaluate(r, &e));
    char acc[64] = "", smp[96] = "";
    if (!isnan(e.accuracy)) snprintf(acc, sizeof acc, "accuracy %.3f (%.0f/%d) | ", e.accuracy, e.accuracy * e.n, e.n);
    if (!isnan(e.sampled_reward))
        snprintf(smp, sizeof smp, "sampled (%d each):%s%.3f reward %.3f | ", r->o.eval_samples, isnan(e.sampled_accuracy) ? "" : " accuracy ",
                 isnan(e.sampled_accuracy) ? e.sampled_reward : e.sampled_accuracy, e.sampled_reward);
    ds_info("eval at step %lld: %sreward %.3f | %slen %.1f | %.2fs", (long long)step, acc, e.reward, smp, e.mean_length, e.seconds);
    DS_TRY(dvec_push(&r->e_step, (double)step));
    DS_TRY(dvec_push(&r->e_reward, e.reward));
    DS_TRY(dvec_push(&r->e_acc, e.accuracy));
    DS_TRY(dvec_push(&r->e_sacc, isnan(e.sampled_accuracy) ? e.sampled_reward : e.sampled_accuracy));
    if (!r->metrics) return 0;
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kint(&w, "step", step);
    ds_jsonw_kint(&w, "eval/n", e.n);
    ds_train_knum(&w, "eval/reward", e.reward);
    if (!isnan(e.accuracy)) ds_train_knum(&w, "eval/accuracy", e.accuracy);
    if (!isnan(e.sampled_reward)) {
        ds_jsonw_kint(&w, "eval/samples", r->o.eval_samples);
        ds_train_knum(&w, "eval/sampled_reward", e.sampled_reward);
        if (!isnan(e.sampled_accuracy)) ds_train_knum(&w, "eval/sampled_accuracy", e.sampled_accuracy);
    }
    ds_train_knum(&w, "eval/mean_length", e.mean_length);
    ds_train_knum(&w, "eval/seconds", e.seconds);
    ds_jsonw_obj_end(&w);
    int rc = ds_metrics_write(r->metrics, &w);
    ds_jsonw_free(&w);
    return rc;
}

int ds_rl_plot(const ds_rl *r, const char *png_path, const char *title) {
    ds_series s[4];
    int ns = 0, have_acc = 0, have_sampled = 0;
    for (int i = 0; i < r->e_acc.n; i++) have_acc |= !isnan(r->e_acc.v[i]);
    for (int i = 0; i < r->e_sacc.n; i++) have_sampled |= !isnan(r->e_sacc.v[i]);
    if (r->h_step.n) s[ns++] = (ds_series){.name = "rollout reward (mean)", .x = r->h_step.v, .y = r->h_reward.v, .n = r->h_step.n, .color = 0x1f77b4};
    if (r->e_step.n && !have_acc) s[ns++] = (ds_series){.name = "eval reward (greedy)", .x = r->e_step.v, .y = r->e_reward.v, .n = r->e_step.n, .color = 0xff7f0e, .marker = 1};
    if (have_acc) s[ns++] = (ds_series){.name = "eval accuracy (greedy)", .x = r->e_step.v, .y = r->e_acc.v, .n = r->e_step.n, .color = 0x2ca02c, .marker = 1};
    if (have_sampled)
        s[ns++] = (ds_series){.name = have_acc ? "eval accuracy (sampled)" : "eval reward (sampled)", .x = r->e_step.v, .y = r->e_sacc.v,
                              .n = r->e_step.n, .color = 0xd62728, .marker = 1};
    if (!ns) return ds_fail(DS_ERR, "plot: nothing to draw yet: %s", png_path);
    ds_line_chart c = {.width = 900, .height = 540, .title = title ? title : "GRPO", .xlabel = "step",
                       .ylabel = "reward / accuracy", .series = s, .n_series = ns};
    return ds_chart_lines_png(&c, png_path);
}

const ds_rl_report *ds_rl_last(const ds_rl *r) { return &r->rep; }
int ds_rl_rollout_failed(const ds_rl *r) { return r->rollout_failed; }
ds_data_source *ds_rl_source(ds_rl *r) { return &r->src; }
const ds_loss_hook *ds_rl_loss(const ds_rl *r) { return &r->hook; }
int64_t ds_rl_rows_per_step(const ds_rl *r) { return r->rows_step; }

void ds_rl_describe(const ds_rl *r, ds_jsonw *w) {
    const ds_rl_opts *o = &r->o;
    char rw[256] = "";
    size_t n = 0;
    for (int k = 0; k < r->n_rewards && n < sizeof rw; k++)
        n += (size_t)snprintf(rw + n, sizeof rw - n, "%s%s:%g", k ? "," : "", r->rewards[k]->name, r->rewards[k]->weight);
    ds_info("prompts %d from %s (longest %d tokens)%s", r->train->n, r->train->where, r->train->max_ids, r->eval ? "" : ", no evaluation set");
    if (r->eval)
        ds_info("eval    %d from %s, greedy%s, at the start, every %d steps and at the end", r->eval->n, r->eval->where,
                o->eval_samples > 0 ? " and sampled" : "", o->eval_every);
    ds_info("rollout %d prompts x %d completions = %d per batch, up to %d new tokens, temperature %g top-k %d top-p %g, "
            "%d decoded together; rows of %d tokens", o->prompts_per_batch, o->group, r->N, o->max_new, o->sampling.temperature,
            o->sampling.top_k, o->sampling.top_p, o->gen_batch, r->T);
    ds_info("update  %d epoch(s) x %d step(s) of %d rows (micro-batch %d); clip [%g, %g], kl %g, %s mean, advantages %s%s",
            o->epochs, o->mini_batches, r->rows_step, o->micro_batch, 1 - o->loss.eps_low, 1 + o->loss.eps_high, o->loss.beta,
            o->loss.avg == DS_GRPO_AVG_TOKEN ? "token" : "sequence", o->scale_std ? "/ std" : "not scaled",
            o->mask_truncated ? ", cut completions masked" : "");
    ds_info("rewards %s", rw);
    ds_jsonw_kint(w, "prompts", r->train->n);
    ds_jsonw_kint(w, "eval_prompts", r->eval ? r->eval->n : 0);
    ds_jsonw_kint(w, "group", o->group);
    ds_jsonw_kint(w, "prompts_per_batch", o->prompts_per_batch);
    ds_jsonw_kint(w, "epochs_per_batch", o->epochs);
    ds_jsonw_kint(w, "mini_batches", o->mini_batches);
    ds_jsonw_kint(w, "rows_per_step", r->rows_step);
    ds_jsonw_kint(w, "micro_batch", o->micro_batch);
    ds_jsonw_kint(w, "seq_len", r->T);
    ds_jsonw_kint(w, "max_new", o->max_new);
    ds_train_knum(w, "temperature", o->sampling.temperature);
    ds_jsonw_kint(w, "top_k", o->sampling.top_k);
    ds_train_knum(w, "top_p", o->sampling.top_p);
    ds_jsonw_kint(w, "gen_batch", o->gen_batch);
    ds_train_knum(w, "kl", o->loss.beta);
    ds_train_knum(w, "clip_low", o->loss.eps_low);
    ds_train_knum(w, "clip_high", o->loss.eps_high);
    ds_jsonw_kstr(w, "loss_avg", o->loss.avg == DS_GRPO_AVG_TOKEN ? "token" : "sequence");
    ds_jsonw_kstr(w, "adv_norm", o->scale_std ? "std" : "none");
    ds_jsonw_kbool(w, "mask_truncated", o->mask_truncated);
    ds_jsonw_kstr(w, "rewards", rw);
    ds_jsonw_kint(w, "eval_every", o->eval_every);
    ds_jsonw_kint(w, "eval_samples", o->eval_samples);
    ds_train_knum(w, "eval_temperature", o->eval_temperature > 0 ? o->eval_temperature : o->sampling.temperature);
}

/* ---- set-up ---- */

int ds_rl_reference(ds_model **out, ds_model *policy, const char *from_dir, int micro_batch, int seq_len, const ds_ep_run *ep) {
    *out = NULL;
    if (!ds_ops_on_host(ds_model_ops(policy)))
        return ds_fail(DS_ERR, "--device %s: GRPO's reference policy runs on the CPU only in this build", ds_model_ops(policy)->name);
    ds_model_opts mo = {.max_batch = micro_batch, .max_seq = seq_len, .train = 0, .recompute = 1};
    if (ep) ds_ep_run_model_opts(ep, &mo); /* this rank's experts, as the policy holds them */
    ds_model *m;
    DS_TRY(ds_model_create(&m, ds_model_config(policy), &mo));
    int rc = 0;
    if (from_dir) {
        ds_ckpt *ck;
        rc = ds_ckpt_open(&ck, from_dir);
        if (!rc) rc = ds_model_check_set(ds_model_config(policy), ds_ckpt_tensors(ck), ds_ckpt_where(ck));
        if (!rc) rc = ds_model_load_weights(m, ds_ckpt_tensors(ck));
        ds_ckpt_close(ck);
        if (rc) ds_fail_ctx(rc, "reference policy");
    } else {
        memcpy(ds_model_params(m), ds_model_params(policy), ds_model_num_params(policy) * sizeof(float));
        const ds_config *c = ds_model_config(policy);
        for (int l = 0; l < c->num_hidden_layers + ds_model_mtp_depth(policy); l++) {
            float *dst = ds_model_expert_bias(m, l), *src = ds_model_expert_bias(policy, l);
            if (dst && src) memcpy(dst, src, (size_t)c->n_routed_experts * sizeof *dst);
        }
    }
    if (!rc && ds_model_mtp_depth(m) != ds_model_mtp_depth(policy))
        rc = ds_fail(DS_ERR, "reference policy: MTP depth %d, the policy has %d", ds_model_mtp_depth(m), ds_model_mtp_depth(policy));
    if (rc) {
        ds_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

void ds_rl_free(ds_rl *r) {
    if (!r) return;
    ds_infer_free(r->engine);
    free(r->bias);
    scored_free(&r->cur);
    free(r->adv), free(r->group_std), free(r->bs.part_mean), free(r->bs.part_std);
    ds_batch_buf_free(&r->rows);
    free(r->order), free(r->step_rows), free(r->perm), free(r->scratch), free(r->ref_all);
    free(r->h_step.v), free(r->h_reward.v), free(r->e_step.v), free(r->e_reward.v), free(r->e_acc.v), free(r->e_sacc.v);
    ds_bytes_free(&r->dec);
    free(r);
}

static int check_opts(const ds_rl_opts *o, const ds_rl_prompts *train) {
    if (o->group < 2) return ds_fail(DS_EUSAGE, "--group %d: GRPO compares at least 2 completions per prompt", o->group);
    if (o->prompts_per_batch < 1 || o->epochs < 1 || o->mini_batches < 1 || o->micro_batch < 1 || o->max_new < 1)
        return ds_fail(DS_EUSAGE, "--batch, --epochs-per-batch, --mini-batches, --micro-batch and --max-new must be positive");
    const int64_t N = (int64_t)o->group * o->prompts_per_batch;
    if (N > (1 << 24)) return ds_fail(DS_EUSAGE, "--group x --batch = %lld rollouts per batch: too many", (long long)N);
    if (N % o->mini_batches)
        return ds_fail(DS_EUSAGE, "--mini-batches %d does not divide the %lld rollouts of a batch (--group x --batch)", o->mini_batches,
                       (long long)N);
    if ((N / o->mini_batches) % o->micro_batch)
        return ds_fail(DS_EUSAGE, "--micro-batch %d does not divide the %lld rows of a step (--group x --batch / --mini-batches)",
                       o->micro_batch, (long long)(N / o->mini_batches));
    if (o->loss.eps_low < 0 || o->loss.eps_low >= 1 || o->loss.eps_high < 0)
        return ds_fail(DS_EUSAGE, "--clip: eps must be in [0, 1)");
    if (o->loss.beta < 0) return ds_fail(DS_EUSAGE, "--kl %g: must be >= 0", o->loss.beta);
    if (!train || train->n < 1) return ds_fail(DS_ERR, "rollouts: no prompts");
    return ds_sampling_check(&o->sampling);
}

int ds_rl_create(ds_rl **out, const ds_rl_opts *o, ds_model *policy, ds_model *ref, const ds_tokenizer *tok,
                 const ds_rl_prompts *train, const ds_rl_prompts *eval, ds_reward **rewards, int n_rewards) {
    *out = NULL;
    if (!ds_ops_on_host(ds_model_ops(policy))) {
        ds_fail(DS_ERR, "--device %s: GRPO's rollouts and reference policy run on the CPU only in this build",
                ds_model_ops(policy)->name);
        ds_hint("use --device cpu for ds-rl (ds-pretrain, ds-sft, ds-extend-ctx and ds-generate run on cuda)");
        return DS_ERR;
    }
    DS_TRY(check_opts(o, train));
    if (o->loss.beta > 0 && !ref) return ds_fail(DS_ERR, "rollouts: --kl %g needs a reference model", o->loss.beta);
    if (n_rewards < 1) return ds_fail(DS_ERR, "rollouts: no reward");
    for (int k = 0; k < n_rewards; k++) {
        if (rewards[k]->needs_text && !tok)
            return ds_fail(DS_ERR, "the %s reward reads text: the checkpoint needs a tokenizer.json", rewards[k]->name);
        for (int i = 0; rewards[k]->needs_answer && i < train->n; i++)
            if (!train->p[i].answer)
                return ds_fail(DS_ERR, "%s: line %ld: needs an \"answer\" (the %s reward checks it)", train->where, train->p[i].line,
                               rewards[k]->name);
    }
    ds_rl *r = calloc(1, sizeof *r);
    if (!r) return ds_fail(DS_ERR, "out of memory: RL run");
    r->o = *o;
    r->policy = policy;
    r->ref = o->loss.beta > 0 ? ref : NULL;
    r->cfg = ds_model_config(policy);
    r->tok = tok;
    r->train = train;
    r->eval = eval && eval->n ? eval : NULL;
    r->rewards = rewards;
    r->n_rewards = n_rewards;
    r->answer_k = -1;
    for (int k = 0; k < n_rewards; k++)
        if (!strcmp(rewards[k]->name, "answer")) r->answer_k = k;
    r->N = o->group * o->prompts_per_batch;
    r->rows_step = r->N / o->mini_batches;
    r->T = ds_rl_seq_len(train, r->eval, o->max_new);
    r->pad = r->cfg->eos_token_id >= 0 ? r->cfg->eos_token_id : 0;
    r->perm_pass = -1;
    r->synced = -1;
    if (r->o.gen_batch <= 0) r->o.gen_batch = r->N < 64 ? r->N : 64;
    if (r->eval && r->o.gen_batch < 64 && r->eval->n > r->o.gen_batch && o->gen_batch <= 0)
        r->o.gen_batch = r->eval->n < 64 ? r->eval->n : 64;
    const int layers = r->cfg->num_hidden_layers + r->cfg->num_nextn_predict_layers;
    r->bias = calloc((size_t)layers + 1, sizeof *r->bias);
    r->adv = calloc((size_t)r->N, sizeof *r->adv);
    r->group_std = calloc((size_t)o->prompts_per_batch, sizeof *r->group_std);
    r->bs.part_mean = calloc((size_t)n_rewards, sizeof(double));
    r->bs.part_std = calloc((size_t)n_rewards, sizeof(double));
    r->order = malloc((size_t)r->N * sizeof *r->order);
    r->step_rows = malloc((size_t)r->rows_step * sizeof *r->step_rows);
    r->perm = malloc((size_t)train->n * sizeof *r->perm);
    r->scratch = malloc((size_t)r->T * sizeof *r->scratch);
    const int split_ref = r->ref && o->comm && o->comm->size > 1;
    if (split_ref) r->ref_all = malloc((size_t)r->N * o->max_new * sizeof *r->ref_all);
    int rc = 0;
    if ((split_ref && !r->ref_all) || !r->bias || !r->adv || !r->group_std || !r->bs.part_mean || !r->bs.part_std || !r->order || !r->step_rows || !r->perm ||
        !r->scratch)
        rc = ds_fail(DS_ERR, "out of memory: RL run");
    if (!rc) rc = scored_init(&r->cur, r->N, n_rewards, o->max_new, r->ref != NULL);
    if (!rc) rc = ds_batch_buf_init(&r->rows, r->N, r->T);
    if (!rc) {
        r->rows.rows = r->N;
        r->rows.has_len = 1;
        ds_infer_model_of(o->rollout ? o->rollout : policy, &r->im, r->bias);
        r->im.mtp_depth = 0; /* rollouts decode plainly: the sampled distribution is the policy's own */
        const int slots = r->o.gen_batch;
        ds_infer_opts io = {.max_tokens = 256 > 2 * slots ? 256 : 2 * slots, .slots = slots, .max_len = r->T, .mtp = 0,
                            .serial_flops = 5e7};
        rc = ds_infer_create(&r->engine, &r->im, NULL, &io);
    }
    if (rc) {
        ds_rl_free(r);
        return rc;
    }
    r->src = (ds_data_source){.kind = "rollouts", .seq_len = r->T, .next = src_next, .rows_per_pass = src_rows_per_pass,
                              .rewind = src_rewind, .state_write = src_state_write, .state_read = src_state_read,
                              .free = src_free, .impl = r};
    r->hook = (ds_loss_hook){.name = "grpo", .n_terms = 3, .term = {"loss", "loss_pg", "loss_kl"}, .micro = loss_micro, .ctx = r};
    ds_grpo_stats_reset(&r->st);
    *out = r;
    return 0;
}
