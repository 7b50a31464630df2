#include "train/trainer.h"

#include "core/err.h"
#include "core/log.h"
#include "core/plot.h"
#include "core/threads.h"
#include "io/json.h"
#include "ops/prof.h"
#include "train/zero.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the pretraining loss ---- */

static int pretrain_micro(void *ctx, const ds_loss_ctx *lc, const ds_batch *b, const ds_fwd_out *f, float *dlogp,
                          float *dmtp, double *terms) {
    (void)ctx;
    const size_t n = (size_t)b->B * b->T;
    const double inv_n = lc->n_targets > 0 ? 1.0 / (double)lc->n_targets : 0;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        int valid = b->targets[i] >= 0;
        if (valid) s += f->logp[i];
        if (dlogp) dlogp[i] = valid ? (float)-inv_n : 0.0f;
    }
    terms[0] += -s * inv_n;
    const int D = lc->mtp_depth;
    if (D <= 0 || !f->mtp_logp) return 0;
    /* module k at position t scores targets[t + k]; it exists when that target does and lies in
     * the same sample (V3 eq. 24 normalises by the sequence length, like the main loss) */
    const float coef = (float)(-lc->lambda / D * inv_n);
    double sm = 0;
    for (int k = 1; k <= D; k++) {
        const float *lp = f->mtp_logp + (size_t)(k - 1) * n;
        float *dk = dmtp ? dmtp + (size_t)(k - 1) * n : NULL;
        for (int r = 0; r < b->B; r++)
            for (int t = 0; t < b->T; t++) {
                size_t i = (size_t)r * b->T + t;
                int valid = t + k < b->T && b->targets[i + k] >= 0 && (!b->seg || b->seg[i + k] == b->seg[i]);
                if (valid) sm += lp[i];
                if (dk) dk[i] = valid ? coef : 0.0f;
            }
    }
    terms[1] += -sm * inv_n / D;
    return 0;
}

const ds_loss_hook ds_loss_pretrain = {
    .name = "pretrain",
    .n_terms = 2,
    .term = {"loss", "loss_mtp"},
    .micro = pretrain_micro,
};

/* ---- options ---- */

void ds_train_opts_defaults(ds_train_opts *o) {
    memset(o, 0, sizeof *o);
    ds_adamw_defaults(&o->adamw);
    o->clip_norm = 1.0;
    o->val_batches = 8;
    o->log_every = 1;
}

/* ---- loss history (for plots; kept in the trainer state so a resumed run plots the whole run) ---- */

enum { HISTORY_MAX = 16384 };

typedef struct {
    int n, cap, stride; /* every stride-th step is kept; the stride doubles when full */
    double *step, *loss, *mtp, *val;
} history;

static void history_free(history *h) {
    free(h->step), free(h->loss), free(h->mtp), free(h->val);
    memset(h, 0, sizeof *h);
}

static int history_reserve(history *h, int cap) {
    if (cap <= h->cap) return 0;
    double **arr[4] = {&h->step, &h->loss, &h->mtp, &h->val};
    for (int a = 0; a < 4; a++) {
        double *p = realloc(*arr[a], (size_t)cap * sizeof *p);
        if (!p) return ds_fail(DS_ERR, "out of memory: loss history");
        *arr[a] = p;
    }
    h->cap = cap;
    return 0;
}

static int history_push(history *h, double step, double loss, double mtp, double val) {
    if (h->stride < 1) h->stride = 1;
    if ((int64_t)step % h->stride != 0 && isnan(val)) return 0;
    if (h->n == HISTORY_MAX) { /* thin out: keep every other point, then every 2*stride-th step */
        int k = 0;
        for (int i = 0; i < h->n; i += 2, k++)
            h->step[k] = h->step[i], h->loss[k] = h->loss[i], h->mtp[k] = h->mtp[i], h->val[k] = h->val[i];
        h->n = k;
        h->stride *= 2;
    }
    if (h->n == h->cap) DS_TRY(history_reserve(h, h->cap ? 2 * h->cap : 256));
    h->step[h->n] = step, h->loss[h->n] = loss, h->mtp[h->n] = mtp, h->val[h->n] = val;
    h->n++;
    return 0;
}

/* ---- the trainer ---- */

struct ds_trainer {
    ds_train_opts o;
    ds_train_net *net;
    ds_data_source *train, *val;
    ds_loss_hook loss;
    ds_train_hooks hooks;
    ds_zero opt;           /* the optimizer over the parameter groups */
    ds_train_group *groups;
    int n_groups, own_groups; /* own_groups: set by ds_trainer_set_groups (else the default group) */
    const ds_train_comm *world;
    ds_balance bal;
    ds_batch_buf buf, vbuf;
    float *dlogp, *dmtp;
    int *mine;          /* first rows of this rank's micro-batches in the step (net->run_micro) */
    int64_t step;
    double tokens;
    int64_t skipped;
    ds_step_report last;
    history hist;
    double run_t0;      /* when this process's ds_trainer_run began, */
    int64_t run_step0;  /* at this step: elapsed time and ETA on the step lines count from here */
};

int ds_trainer_create(ds_trainer **out, const ds_train_opts *o, ds_train_net *net, ds_data_source *train,
                      ds_data_source *val, const ds_loss_hook *loss, const ds_train_hooks *hooks) {
    *out = NULL;
    if (o->total_steps < 0 || o->seq_len <= 0 || o->micro_batch <= 0)
        return ds_fail(DS_ERR, "trainer: steps %lld, sequence length %d, micro-batch %d", (long long)o->total_steps, o->seq_len,
                       o->micro_batch);
    if (train->seq_len != o->seq_len)
        return ds_fail(DS_ERR, "trainer: data rows of %d tokens for a sequence length of %d", train->seq_len, o->seq_len);
    if (loss->n_terms < 1 || loss->n_terms > DS_LOSS_MAX_TERMS) return ds_fail(DS_ERR, "trainer: loss with %d terms", loss->n_terms);
    if (o->lr.n == 0 || o->batch.n == 0 || o->gamma.n == 0 || o->lambda.n == 0)
        return ds_fail(DS_ERR, "trainer: a schedule (lr, batch, gamma, lambda) is missing");
    ds_trainer *t = calloc(1, sizeof *t);
    if (!t) return ds_fail(DS_ERR, "out of memory: trainer");
    t->o = *o;
    t->net = net;
    t->train = train;
    t->val = val;
    t->loss = *loss;
    if (hooks) t->hooks = *hooks;
    t->last.val_loss = NAN;
    const int max_rows = (int)fmax(o->micro_batch, ceil(ds_sched_max(&o->batch) / o->micro_batch) * o->micro_batch);
    const size_t per_micro = (size_t)o->micro_batch * o->seq_len;
    int rc = ds_trainer_set_groups(t, NULL, 0, NULL);
    if (!rc) rc = ds_balance_init(&t->bal, net->n_moe_layers, net->n_experts);
    if (!rc) rc = ds_batch_buf_init(&t->buf, max_rows, o->seq_len);
    if (!rc) rc = ds_batch_buf_init(&t->vbuf, o->micro_batch, o->seq_len);
    if (!rc) {
        t->dlogp = malloc(per_micro * sizeof *t->dlogp);
        t->dmtp = malloc(per_micro * (size_t)(net->mtp_depth > 0 ? net->mtp_depth : 1) * sizeof *t->dmtp);
        t->mine = malloc(sizeof *t->mine * (size_t)(max_rows / o->micro_batch + 1));
        if (!t->dlogp || !t->dmtp || !t->mine) rc = ds_fail(DS_ERR, "out of memory: loss coefficients");
    }
    if (rc) {
        ds_trainer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void ds_trainer_free(ds_trainer *t) {
    if (!t) return;
    ds_zero_free(&t->opt);
    free(t->groups);
    ds_balance_free(&t->bal);
    ds_batch_buf_free(&t->buf);
    ds_batch_buf_free(&t->vbuf);
    free(t->dlogp), free(t->dmtp), free(t->mine);
    history_free(&t->hist);
    free(t);
}

int64_t ds_trainer_steps_done(const ds_trainer *t) { return t->step; }
int ds_trainer_set_comm(ds_trainer *t, const ds_train_comm *comm) {
    t->hooks.comm = comm;
    return t->own_groups ? ds_trainer_set_groups(t, t->groups, t->n_groups, t->world) : ds_trainer_set_groups(t, NULL, 0, NULL);
}

int ds_trainer_set_groups(ds_trainer *t, const ds_train_group *g, int n, const ds_train_comm *world) {
    if (t->step > 0 || t->opt.t > 0) /* the optimizer state starts afresh: moments would be lost */
        return ds_fail(DS_ERR, "trainer: parameter groups are set before the first step and before a resume");
    ds_train_group one = {0, t->net->n_params, t->hooks.comm}, *copy = malloc(sizeof *copy * (size_t)(n > 0 ? n : 1));
    if (!copy) return ds_fail(DS_ERR, "out of memory: parameter groups");
    if (n > 0 && g) memmove(copy, g, sizeof *copy * (size_t)n); /* g may be t->groups */
    else copy[0] = one, n = 1;
    t->own_groups = g != NULL && n > 0;
    free(t->groups);
    t->groups = copy, t->n_groups = n, t->world = world;
    ds_zero_free(&t->opt);
    return ds_zero_create(&t->opt, t->net, &t->o.adamw, copy, n, world ? world : t->hooks.comm, !t->o.no_zero);
}
double ds_trainer_tokens_seen(const ds_trainer *t) { return t->tokens; }
const ds_optim *ds_trainer_optimizer(const ds_trainer *t) { return t->opt.g[0].opt; }
ds_optim *ds_trainer_optimizer_mut(ds_trainer *t) { return t->opt.g[0].opt; }
ds_zero *ds_trainer_zero(ds_trainer *t) { return &t->opt; }
const ds_train_opts *ds_trainer_opts(const ds_trainer *t) { return &t->o; }
const ds_step_report *ds_trainer_last(const ds_trainer *t) { return &t->last; }

/* Rows for this step: the batch schedule rounded down to whole micro-batches (at least one). */
static int step_rows(ds_trainer *t) {
    double b = ds_sched_peek(&t->o.batch, (ds_progress_pos){t->step, t->tokens});
    int m = t->o.micro_batch;
    int64_t micro = (int64_t)floor(b / m + 1e-9);
    if (micro < 1) micro = 1;
    if (micro * m > t->buf.cap_rows) micro = t->buf.cap_rows / m;
    return (int)(micro * m);
}

static int dp_size(const ds_trainer *t) { return t->hooks.comm && t->hooks.comm->size > 1 ? t->hooks.comm->size : 1; }
static int dp_rank(const ds_trainer *t) { return dp_size(t) > 1 ? t->hooks.comm->rank : 0; }

static int check_fwd(const ds_trainer *t, const ds_fwd_out *f) {
    if (f->n_moe_layers != t->net->n_moe_layers)
        return ds_fail(DS_ERR, "trainer: forward reported %d MoE layers, expected %d", f->n_moe_layers, t->net->n_moe_layers);
    return 0;
}

/* A step's loss bookkeeping, shared by the trainer's own micro-batch loop and a net that runs them
 * itself (train/pipe.h). */
typedef struct {
    ds_trainer *t;
    ds_loss_ctx *lc;
    double *terms, *bal, bal_share;
    int m, n; /* rows per micro-batch; this rank's micro-batches (t->mine: their first rows) */
} step_ctx;

/* What micro-batch (first row r0)'s forward adds: loss terms and coefficients where the head ran, the
 * balance loss and expert loads of the layers that ran. */
static int micro_done(step_ctx *sc, int r0, const ds_fwd_out *f, int head, float *dlogp, float *dmtp) {
    ds_trainer *t = sc->t;
    DS_TRY(check_fwd(t, f));
    const int pr = ds_prof_enter(DS_PROF_LOSS);
    if (head) {
        ds_batch b = ds_batch_buf_view(&t->buf, r0, sc->m);
        sc->lc->row0 = r0;
        DS_TRY(t->loss.micro(t->loss.ctx, sc->lc, &b, f, dlogp, dmtp, sc->terms));
    }
    *sc->bal += t->net->set_balance_alpha ? f->bal_loss : f->bal_loss * sc->bal_share;
    if (f->expert_load) ds_balance_add(&t->bal, f->expert_load);
    ds_prof_leave(pr);
    return 0;
}

static ds_batch step_batch(void *ctx, int k) {
    step_ctx *sc = ctx;
    return ds_batch_buf_view(&sc->t->buf, sc->t->mine[k], sc->m);
}

static int step_done(void *ctx, int k, const ds_fwd_out *f, int head, float *dlogp, float *dmtp) {
    step_ctx *sc = ctx;
    return micro_done(sc, sc->t->mine[k], f, head, dlogp, dmtp);
}

/* Sum loss terms, balance loss and expert loads over group c, in place (the gradients are the parameter
 * groups', ds_zero_reduce). */
static int sum_step(ds_trainer *t, const ds_train_comm *c, double *terms, double *bal) {
    double sums[DS_LOSS_MAX_TERMS + 1];
    memcpy(sums, terms, sizeof(double) * DS_LOSS_MAX_TERMS);
    sums[DS_LOSS_MAX_TERMS] = *bal;
    DS_TRY(c->allreduce_f64(c->ctx, sums, DS_LOSS_MAX_TERMS + 1));
    if (t->bal.n_layers > 0) DS_TRY(c->allreduce_i64(c->ctx, t->bal.count, (size_t)t->bal.n_layers * t->bal.n_experts));
    memcpy(terms, sums, sizeof(double) * DS_LOSS_MAX_TERMS);
    *bal = sums[DS_LOSS_MAX_TERMS];
    return 0;
}

int ds_trainer_step(ds_trainer *t) {
    ds_train_net *net = t->net;
    const int rows = step_rows(t), m = t->o.micro_batch, T = t->o.seq_len;
    t->buf.rows = 0;
    int pr = ds_prof_enter(DS_PROF_DATA);
    DS_TRY(t->train->next(t->train, &t->buf, rows));
    ds_prof_leave(pr);
    const double step_tokens = (double)rows * T;
    /* rates apply at the step's end position, so warmup's first step already has lr > 0 */
    const ds_progress_pos end = {t->step + 1, t->tokens + step_tokens};
    const double lr = ds_sched_at(&t->o.lr, end), gamma = ds_sched_at(&t->o.gamma, end), lambda = ds_sched_at(&t->o.lambda, end);
    ds_sched_at(&t->o.batch, (ds_progress_pos){t->step, t->tokens});

    ds_loss_ctx lc = {.step = t->step, .lambda = lambda, .mtp_depth = net->mtp_depth, .n_rows = rows,
                      .n_targets = ds_batch_buf_count_targets(&t->buf, 0, rows)};
    double terms[DS_LOSS_MAX_TERMS] = {0}, bal = 0;
    /* the model's balance loss is a mean over a micro-batch's rows; weighting each micro-batch by its
     * share of the step makes the accumulated loss (and gradient) the mean over the step's rows */
    const double bal_share = (double)m / rows;
    if (net->set_balance_alpha) net->set_balance_alpha(net->impl, t->o.balance_alpha * bal_share);
    pr = ds_prof_enter(DS_PROF_OPTIM);
    if (!ds_zero_take_grads_zeroed(&t->opt)) net->zero_grad(net->impl); /* else the last update zeroed them */
    ds_prof_leave(pr);
    ds_balance_reset(&t->bal);
    const int P = dp_size(t), rank = dp_rank(t), n_micro = rows / m, mtp = net->mtp_depth > 0;
    step_ctx sc = {.t = t, .lc = &lc, .terms = terms, .bal = &bal, .bal_share = bal_share, .m = m};
    if (net->run_micro) { /* the net runs this replica's micro-batches in its own order */
        for (int r0 = 0; r0 < rows; r0 += m)
            if ((r0 / m) % P == rank) t->mine[sc.n++] = r0;
        ds_train_micro_io io = {.n = sc.n, .batch = step_batch, .done_fwd = step_done, .ctx = &sc};
        DS_TRY(net->run_micro(net->micro_ctx, &io));
    }
    for (int k = rank; k < (n_micro + P - 1) / P * P && !net->run_micro; k += P) { /* micro-batch k is replica k % P's */
        const int r0 = k * m;
        if (k >= n_micro) { /* this replica has one fewer than some others: an empty one (expert parallelism) */
            if (net->idle) DS_TRY(net->idle(net->impl, T, 0, mtp));
            if (net->idle) DS_TRY(net->idle(net->impl, T, 1, mtp));
            continue;
        }
        ds_batch b = ds_batch_buf_view(&t->buf, r0, m);
        ds_fwd_out f;
        DS_TRY(net->forward(net->impl, &b, &f));
        DS_TRY(micro_done(&sc, r0, &f, 1, t->dlogp, net->mtp_depth > 0 ? t->dmtp : NULL));
        DS_TRY(net->backward(net->impl, &b, t->dlogp, net->mtp_depth > 0 ? t->dmtp : NULL));
    }
    if (t->hooks.micro_done) DS_TRY(t->hooks.micro_done(t->hooks.ctx, t));
    /* the loss values over the pipeline stages (each holds its layers' share) and the replicas, each
     * parameter group's gradients over the ranks holding it (a stage's tensors over the ranks holding that
     * stage: the session's groups, train/pipemem.h): every rank ends with the sums */
    const ds_train_comm *pc = t->hooks.pp && t->hooks.pp->size > 1 ? t->hooks.pp : NULL;
    pr = ds_prof_enter(DS_PROF_OPTIM);
    if (pc) DS_TRY(sum_step(t, pc, terms, &bal));
    DS_TRY(ds_zero_reduce(&t->opt, net));
    if (P > 1) DS_TRY(sum_step(t, t->hooks.comm, terms, &bal));
    double norm;
    DS_TRY(ds_zero_grad_norm(&t->opt, net, &norm));
    const int finite = isfinite(norm) && isfinite(terms[0]) && isfinite(bal);

    ds_step_report *r = &t->last;
    r->step = t->step + 1;
    memcpy(r->terms, terms, sizeof terms);
    r->loss_bal = bal, r->lr = lr, r->grad_norm = norm, r->gamma = gamma, r->lambda = lambda, r->batch = rows;
    r->skipped = !finite;
    r->val_loss = NAN;
    if (!finite && !t->o.skip_nonfinite) {
        ds_fail(DS_EDIVERGED, "training diverged: %s is %s at step %lld", isfinite(terms[0]) ? "gradient norm" : t->loss.term[0],
                isfinite(terms[0]) ? (isnan(norm) ? "nan" : "inf") : (isnan(terms[0]) ? "nan" : "inf"), (long long)(t->step + 1));
        ds_hint("the last checkpoint is intact; resume from it with a lower --lr, or pass --skip-nonfinite");
        return DS_EDIVERGED;
    }
    if (finite) {
        DS_TRY(ds_zero_step(&t->opt, net, ds_clip_factor(norm, t->o.clip_norm), lr));
        if (net->expert_bias) ds_balance_update_bias(&t->bal, net->expert_bias, gamma);
        if (net->state_changed) DS_TRY(net->state_changed(net->impl));
    } else {
        t->skipped++;
    }
    ds_prof_leave(pr);
    t->step++;
    t->tokens += step_tokens;
    r->tokens = t->tokens;
    return 0;
}

/* One validation micro-batch's loss value (on the rank that ran the head). */
typedef struct {
    ds_trainer *t;
    const ds_batch *b;
    ds_loss_ctx lc;
    double terms[DS_LOSS_MAX_TERMS];
    int head;
} val_ctx;

static ds_batch val_batch(void *ctx, int k) {
    (void)k;
    return *((val_ctx *)ctx)->b;
}

static int val_done(void *ctx, int k, const ds_fwd_out *f, int head, float *dlogp, float *dmtp) {
    val_ctx *vc = ctx;
    (void)k, (void)dlogp, (void)dmtp;
    if (!head) return 0;
    vc->head = 1;
    return vc->t->loss.micro(vc->t->loss.ctx, &vc->lc, vc->b, f, NULL, NULL, vc->terms);
}

int ds_trainer_validate(ds_trainer *t, double *loss) {
    *loss = NAN;
    if (!t->val) return 0;
    t->val->rewind(t->val);
    int64_t avail = t->val->rows_per_pass(t->val);
    int m = t->o.micro_batch;
    int64_t nb = t->o.val_batches > 0 ? t->o.val_batches : 1;
    if (avail >= 0 && nb * m > avail) nb = avail / m;
    if (nb < 1) {
        if (avail < 1) return 0;
        nb = 1, m = (int)avail; /* fewer rows than one micro-batch: a smaller one */
    }
    double sum = 0;
    int64_t count = 0;
    if (t->net->set_balance_alpha) t->net->set_balance_alpha(t->net->impl, 0); /* not needed for a loss value */
    const int P = dp_size(t), rank = dp_rank(t);
    for (int64_t k = 0; k < nb; k++) {
        t->vbuf.rows = 0;
        DS_TRY(t->val->next(t->val, &t->vbuf, m));
        if (k % P == 0 && k + rank >= nb && t->net->idle) /* a round where this replica has none (expert parallelism) */
            DS_TRY(t->net->idle(t->net->run_micro ? t->net->micro_ctx : t->net->impl, t->o.seq_len, 0, 0));
        if (k % P != rank) continue;
        ds_batch b = ds_batch_buf_view(&t->vbuf, 0, m);
        int64_t n = ds_batch_buf_count_targets(&t->vbuf, 0, m);
        val_ctx vc = {.t = t, .b = &b, .lc = {.step = t->step, .lambda = 0, .mtp_depth = 0, .n_targets = n, .n_rows = m}};
        if (t->net->run_micro) { /* through the pipeline's stages; the head's rank gets the value */
            ds_train_micro_io io = {.n = 1, .forward_only = 1, .batch = val_batch, .done_fwd = val_done, .ctx = &vc};
            DS_TRY(t->net->run_micro(t->net->micro_ctx, &io));
        } else {
            ds_fwd_out f;
            DS_TRY(t->net->forward(t->net->impl, &b, &f));
            DS_TRY(val_done(&vc, 0, &f, 1, NULL, NULL));
        }
        sum += vc.terms[0] * (double)n; /* back to a sum, so the mean is over all validation targets */
        count += vc.head ? n : 0;
    }
    const ds_train_comm *pc = t->hooks.pp && t->hooks.pp->size > 1 ? t->hooks.pp : NULL;
    for (int g = 0; g < 2; g++) {
        const ds_train_comm *c = g ? (P > 1 ? t->hooks.comm : NULL) : pc;
        if (!c) continue;
        double sc[2] = {sum, (double)count};
        DS_TRY(c->allreduce_f64(c->ctx, sc, 2));
        sum = sc[0], count = (int64_t)sc[1];
    }
    *loss = count ? sum / (double)count : NAN;
    return 0;
}

/* ---- reporting ---- */

/* Shortest text that reads back as the same double ("0.1", not "0.10000000000000001"); null when
 * not finite. Exact, so resumed and uninterrupted runs compare equal as text. */
void ds_train_knum(ds_jsonw *w, const char *key, double v) {
    ds_jsonw_key(w, key);
    if (!isfinite(v)) {
        ds_jsonw_null(w);
        return;
    }
    char buf[40];
    ds_json_format_real(v, buf, sizeof buf);
    ds_jsonw_raw(w, buf);
}

void ds_trainer_pace(const ds_trainer *t, char *buf, size_t n) {
    /* elapsed since this process started training, and the rest at the average pace so far (a
     * resumed run counts from where it resumed) */
    const double elapsed = ds_now() - t->run_t0;
    const int64_t done = t->step - t->run_step0;
    char el[24], eta[24];
    ds_format_duration(elapsed, el, sizeof el);
    ds_format_duration(done > 0 ? elapsed / (double)done * (double)(t->o.total_steps - t->step) : 0, eta, sizeof eta);
    snprintf(buf, n, "%s elapsed, ETA %s", el, eta);
}

static void log_line(const ds_trainer *t) {
    const ds_step_report *r = &t->last;
    char mtp[32] = "", mfu[32] = "", val[32] = "";
    if (t->loss.n_terms > 1 && t->net->mtp_depth > 0) snprintf(mtp, sizeof mtp, " | mtp %.4f", r->terms[1]);
    if (r->mfu > 0) snprintf(mfu, sizeof mfu, " | MFU %.1f%%", 100 * r->mfu);
    if (!isnan(r->val_loss)) snprintf(val, sizeof val, " | val %.4f", r->val_loss);
    int w = 1;
    for (int64_t s = t->o.total_steps; s >= 10; s /= 10) w++;
    char pace[64];
    ds_trainer_pace(t, pace, sizeof pace);
    ds_info("step %*lld/%lld | loss %.6f%s | lr %.2e | norm %.4f | %.1f ms | %.0f tok/s%s%s | %s%s", w, (long long)r->step,
            (long long)t->o.total_steps, r->terms[0], mtp, r->lr, r->grad_norm, r->ms, r->tok_s, mfu, val, pace,
            r->skipped ? " | SKIPPED (non-finite)" : "");
}

static int write_metrics(const ds_trainer *t) {
    if (!t->hooks.metrics) return 0;
    const ds_step_report *r = &t->last;
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kint(&w, "step", r->step);
    for (int k = 0; k < t->loss.n_terms; k++) ds_train_knum(&w, t->loss.term[k], r->terms[k]);
    ds_train_knum(&w, "loss_bal", r->loss_bal);
    ds_train_knum(&w, "lr", r->lr);
    ds_train_knum(&w, "grad_norm", r->grad_norm);
    ds_train_knum(&w, "tokens", r->tokens);
    ds_jsonw_kint(&w, "batch", r->batch);
    ds_train_knum(&w, "gamma", r->gamma);
    ds_train_knum(&w, "lambda", r->lambda);
    ds_train_knum(&w, "ms", r->ms);
    ds_train_knum(&w, "cpu_ms", r->cpu_ms);
    ds_train_knum(&w, "tok_s", r->tok_s);
    if (r->mfu > 0) ds_train_knum(&w, "mfu", r->mfu);
    if (!isnan(r->val_loss)) ds_train_knum(&w, "val_loss", r->val_loss);
    if (r->skipped) ds_jsonw_kbool(&w, "skipped", 1);
    if (t->hooks.step_record) t->hooks.step_record(t->hooks.step_ctx, t, &w);
    if (t->bal.n_layers > 0) {
        ds_jsonw_key(&w, "balance");
        ds_jsonw_arr_begin(&w);
        for (int l = 0; l < t->bal.n_layers; l++) {
            ds_balance_stats st;
            ds_balance_layer_stats(&t->bal, l, &st);
            ds_jsonw_obj_begin(&w);
            ds_jsonw_kint(&w, "moe_layer", l);
            ds_train_knum(&w, "max_vio", st.max_vio);
            ds_jsonw_kint(&w, "min_load", st.min_load);
            ds_jsonw_kint(&w, "max_load", st.max_load);
            ds_jsonw_obj_end(&w);
        }
        ds_jsonw_arr_end(&w);
    }
    ds_jsonw_obj_end(&w);
    int rc = ds_metrics_write(t->hooks.metrics, &w);
    ds_jsonw_free(&w);
    return rc;
}

static int save(ds_trainer *t, int final) {
    if (!t->hooks.save) return 0;
    return t->hooks.save(t->hooks.ctx, t, final);
}

/* CPU seconds of the whole process (all threads): steadier than wall time on a shared machine. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int ds_trainer_run(ds_trainer *t, ds_train_end *end) {
    *end = DS_TRAIN_DONE;
    t->run_t0 = ds_now(), t->run_step0 = t->step;
    while (t->step < t->o.total_steps) {
        /* the first step of a run pays page faults and warm-up: profiled only when it is the only one */
        const int prof = t->o.profile && (t->step > t->run_step0 || t->o.total_steps - t->step == 1);
        double t0 = ds_now(), c0 = cpu_now();
        if (prof) ds_prof_step_begin();
        DS_TRY(ds_trainer_step(t));
        ds_step_report *r = &t->last;
        double dt = ds_now() - t0;
        if (prof) ds_prof_step_end(dt);
        r->ms = 1e3 * dt;
        r->cpu_ms = 1e3 * (cpu_now() - c0);
        r->tok_s = dt > 0 ? (double)r->batch * t->o.seq_len / dt : 0;
        r->mfu = t->o.peak_flops > 0 && t->net->flops_per_token > 0 ? r->tok_s * t->net->flops_per_token / t->o.peak_flops : 0;
        if (t->val && t->o.val_every > 0 && (t->step % t->o.val_every == 0 || t->step == t->o.total_steps))
            DS_TRY(ds_trainer_validate(t, &r->val_loss));
        DS_TRY(history_push(&t->hist, (double)r->step, r->terms[0], t->loss.n_terms > 1 ? r->terms[1] : NAN, r->val_loss));
        if (dp_rank(t) == 0 && t->o.log_every > 0 &&
            (t->step % t->o.log_every == 0 || t->step == t->o.total_steps || t->step == 1 || r->skipped))
            log_line(t);
        DS_TRY(write_metrics(t));
        if (t->hooks.after_step) DS_TRY(t->hooks.after_step(t->hooks.step_ctx, t));
        int64_t stop = t->hooks.stop ? *t->hooks.stop : 0;
        if (dp_size(t) > 1) DS_TRY(t->hooks.comm->allreduce_i64(t->hooks.comm->ctx, &stop, 1)); /* all stop together */
        if (t->hooks.pp && t->hooks.pp->size > 1) DS_TRY(t->hooks.pp->allreduce_i64(t->hooks.pp->ctx, &stop, 1));
        if (stop) {
            if (dp_rank(t) == 0) ds_info("signal %d: saving at step %lld", (int)(t->hooks.stop && *t->hooks.stop ? *t->hooks.stop : stop),
                                         (long long)t->step);
            DS_TRY(save(t, 1));
            *end = DS_TRAIN_STOPPED;
            return 0;
        }
        if (t->o.save_every > 0 && t->step % t->o.save_every == 0 && t->step < t->o.total_steps) DS_TRY(save(t, 0));
    }
    return save(t, 1);
}

/* ---- state ---- */

static void write_doubles(ds_jsonw *w, const char *key, const double *v, int n) {
    ds_jsonw_key(w, key);
    ds_jsonw_arr_begin(w);
    for (int i = 0; i < n; i++) ds_jsonw_num(w, v[i]);
    ds_jsonw_arr_end(w);
}

int ds_trainer_state_json(const ds_trainer *t, char **out) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "format", "ds-trainer-state");
    ds_jsonw_kint(&w, "version", 1);
    ds_jsonw_kint(&w, "step", t->step);
    ds_jsonw_knum(&w, "tokens", t->tokens);
    ds_jsonw_kint(&w, "total_steps", t->o.total_steps);
    ds_jsonw_kint(&w, "skipped_steps", t->skipped);
    ds_jsonw_kint(&w, "threads", ds_threads_get()); /* bit-identical resumes need the same count */
    /* every random number is a pure function of (seed, stream, counter): the seed is the RNG state */
    ds_jsonw_key(&w, "rng");
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "generator", "philox4x32-10");
    char seed[24]; /* a string: JSON readers (jansson included) cannot hold every u64 as a number */
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)t->o.seed);
    ds_jsonw_kstr(&w, "seed", seed);
    ds_jsonw_obj_end(&w);
    ds_jsonw_key(&w, "data");
    t->train->state_write(t->train, &w);
    ds_jsonw_key(&w, "schedules");
    ds_jsonw_obj_begin(&w);
    const ds_sched *sc[4] = {&t->o.lr, &t->o.batch, &t->o.gamma, &t->o.lambda};
    static const char *names[4] = {"lr", "batch", "gamma", "lambda"};
    for (int k = 0; k < 4; k++) {
        ds_jsonw_key(&w, names[k]);
        ds_jsonw_obj_begin(&w);
        char desc[512];
        ds_sched_describe(sc[k], desc, sizeof desc);
        ds_jsonw_kstr(&w, "spec", sc[k]->spec);
        ds_jsonw_kstr(&w, "points", desc);
        ds_jsonw_key(&w, "crossings");
        ds_sched_state_write(sc[k], &w);
        ds_jsonw_obj_end(&w);
    }
    ds_jsonw_obj_end(&w);
    ds_jsonw_key(&w, "optimizer");
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "kind", "adamw");
    ds_jsonw_kint(&w, "t", t->opt.t);
    ds_jsonw_knum(&w, "beta1", t->o.adamw.beta1);
    ds_jsonw_knum(&w, "beta2", t->o.adamw.beta2);
    ds_jsonw_knum(&w, "eps", t->o.adamw.eps);
    ds_jsonw_knum(&w, "weight_decay", t->o.adamw.weight_decay);
    ds_jsonw_kbool(&w, "bf16_moments", t->o.adamw.bf16_moments);
    ds_jsonw_obj_end(&w);
    /* the biases also travel in model.safetensors; here they are exact whatever dtype that file has */
    ds_jsonw_key(&w, "expert_bias");
    ds_jsonw_arr_begin(&w);
    for (int l = 0; l < t->net->n_moe_layers; l++) {
        ds_jsonw_arr_begin(&w);
        for (int e = 0; t->net->expert_bias && t->net->expert_bias[l] && e < t->net->n_experts; e++)
            ds_jsonw_numf(&w, t->net->expert_bias[l][e]);
        ds_jsonw_arr_end(&w);
    }
    ds_jsonw_arr_end(&w);
    ds_jsonw_key(&w, "history");
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kint(&w, "stride", t->hist.stride);
    write_doubles(&w, "step", t->hist.step, t->hist.n);
    write_doubles(&w, "loss", t->hist.loss, t->hist.n);
    write_doubles(&w, "loss_mtp", t->hist.mtp, t->hist.n);
    write_doubles(&w, "val_loss", t->hist.val, t->hist.n);
    ds_jsonw_obj_end(&w);
    ds_jsonw_obj_end(&w);
    size_t len = w.len;
    char *text = malloc(len + 2);
    if (!text) {
        ds_jsonw_free(&w);
        return ds_fail(DS_ERR, "out of memory: trainer state");
    }
    memcpy(text, w.buf, len);
    memcpy(text + len, "\n", 2);
    ds_jsonw_free(&w);
    *out = text;
    return 0;
}

static int read_doubles(json_t *o, const char *key, double *dst, int n, const char *where) {
    json_t *a = json_object_get(o, key);
    if (!json_is_array(a) || (int)json_array_size(a) != n) return ds_fail(DS_ERR, "trainer state: history.%s: %s", key, where);
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(a, (size_t)i);
        dst[i] = json_is_number(e) ? json_number_value(e) : NAN; /* null = NaN (no value) */
    }
    return 0;
}

int ds_trainer_state_seed(const char *text, size_t len, const char *where, uint64_t *seed) {
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    json_t *rng = root ? json_object_get(root, "rng") : NULL, *s = rng ? json_object_get(rng, "seed") : NULL;
    const char *v = json_is_string(s) ? json_string_value(s) : NULL;
    char *end = NULL;
    errno = 0;
    unsigned long long x = v && *v >= '0' && *v <= '9' ? strtoull(v, &end, 10) : 0;
    int rc = v && end && !*end && !errno ? 0 : ds_fail(DS_ERR, "trainer state: no rng.seed: %s", where);
    if (!rc) *seed = (uint64_t)x;
    json_decref(root);
    return rc;
}

int ds_trainer_state_load(ds_trainer *t, const char *text, size_t len, const char *where) {
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return ds_fail(DS_ERR, "trainer state: bad JSON: line %d column %d: %s: %s", je.line, je.column, je.text, where);
    int rc = DS_ERR;
    json_t *fmt = json_object_get(root, "format"), *step = json_object_get(root, "step"), *tok = json_object_get(root, "tokens");
    json_t *rng = json_object_get(root, "rng"), *seed = rng ? json_object_get(rng, "seed") : NULL;
    json_t *opt = json_object_get(root, "optimizer"), *sch = json_object_get(root, "schedules");
    json_t *bias = json_object_get(root, "expert_bias"), *hist = json_object_get(root, "history");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "ds-trainer-state")) {
        ds_fail(DS_ERR, "trainer state: not a ds-trainer-state file: %s", where);
        goto done;
    }
    if (!json_is_integer(step) || json_integer_value(step) < 0 || !json_is_number(tok) || !json_is_string(seed) ||
        !json_is_object(opt) || !json_is_integer(json_object_get(opt, "t")) || !json_is_object(sch) || !json_is_array(bias)) {
        ds_fail(DS_ERR, "trainer state: missing or bad step/tokens/rng/optimizer/schedules/expert_bias: %s", where);
        goto done;
    }
    unsigned long long s = strtoull(json_string_value(seed), NULL, 10);
    if (s != t->o.seed) {
        ds_fail(DS_ERR, "trainer state: seed %llu, this run has --seed %llu: %s", s, (unsigned long long)t->o.seed, where);
        ds_hint("resume with the seed of the original run");
        goto done;
    }
    t->step = json_integer_value(step);
    t->tokens = json_number_value(tok);
    t->skipped = json_integer_value(json_object_get(root, "skipped_steps"));
    json_t *thr = json_object_get(root, "threads");
    if (json_is_integer(thr) && json_integer_value(thr) != ds_threads_get())
        ds_warn("resuming with %d threads, the checkpoint was written with %lld: the run will not repeat bit for bit",
                ds_threads_get(), (long long)json_integer_value(thr));
    ds_zero_set_t(&t->opt, json_integer_value(json_object_get(opt, "t")));
    json_t *bf = json_object_get(opt, "bf16_moments");
    if (json_is_boolean(bf) && json_boolean_value(bf) != (t->o.adamw.bf16_moments != 0)) {
        ds_fail(DS_ERR, "trainer state: moments were %s, this run keeps them in %s: %s", json_boolean_value(bf) ? "bf16" : "fp32",
                t->o.adamw.bf16_moments ? "bf16" : "fp32", where);
        goto done;
    }
    if (t->train->state_read(t->train, json_object_get(root, "data"), where)) goto done;
    ds_sched *sc[4] = {&t->o.lr, &t->o.batch, &t->o.gamma, &t->o.lambda};
    static const char *names[4] = {"lr", "batch", "gamma", "lambda"};
    for (int k = 0; k < 4; k++) {
        json_t *e = json_object_get(sch, names[k]);
        json_t *pts = e ? json_object_get(e, "points") : NULL;
        char desc[512];
        ds_sched_describe(sc[k], desc, sizeof desc);
        /* a schedule that changed (another spec, or percentages of another --steps) keeps no
         * crossings: they belong to the old knees */
        if (json_is_string(pts) && !strcmp(json_string_value(pts), desc))
            if (ds_sched_state_read(sc[k], json_object_get(e, "crossings"), where)) goto done;
    }
    if ((int)json_array_size(bias) != t->net->n_moe_layers) {
        ds_fail(DS_ERR, "trainer state: expert biases for %zu MoE layers, the model has %d: %s", json_array_size(bias),
                t->net->n_moe_layers, where);
        goto done;
    }
    for (int l = 0; l < t->net->n_moe_layers; l++) {
        json_t *row = json_array_get(bias, (size_t)l);
        if (!json_is_array(row) || (int)json_array_size(row) != t->net->n_experts) {
            ds_fail(DS_ERR, "trainer state: expert_bias[%d]: expected %d values: %s", l, t->net->n_experts, where);
            goto done;
        }
        for (int e = 0; e < t->net->n_experts; e++) {
            json_t *v = json_array_get(row, (size_t)e);
            if (!json_is_number(v)) {
                ds_fail(DS_ERR, "trainer state: expert_bias[%d][%d]: not a number: %s", l, e, where);
                goto done;
            }
            if (t->net->expert_bias && t->net->expert_bias[l]) t->net->expert_bias[l][e] = (float)json_number_value(v);
        }
    }
    if (t->net->state_changed && t->net->state_changed(t->net->impl)) goto done;
    history_free(&t->hist);
    if (json_is_object(hist)) {
        json_t *hs = json_object_get(hist, "step");
        int n = json_is_array(hs) ? (int)json_array_size(hs) : 0;
        if (n > HISTORY_MAX) n = 0;
        if (history_reserve(&t->hist, n)) goto done;
        t->hist.n = n;
        t->hist.stride = (int)json_integer_value(json_object_get(hist, "stride"));
        if (t->hist.stride < 1) t->hist.stride = 1;
        if (n && (read_doubles(hist, "step", t->hist.step, n, where) || read_doubles(hist, "loss", t->hist.loss, n, where) ||
                  read_doubles(hist, "loss_mtp", t->hist.mtp, n, where) || read_doubles(hist, "val_loss", t->hist.val, n, where)))
            goto done;
    }
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* ---- plots ---- */

int ds_trainer_plot(const ds_trainer *t, const char *png_path, const char *title) {
    const history *h = &t->hist;
    int nval = 0;
    double *vx = malloc(((size_t)h->n + 1) * sizeof *vx), *vy = malloc(((size_t)h->n + 1) * sizeof *vy);
    if (!vx || !vy) {
        free(vx), free(vy);
        return ds_fail(DS_ERR, "out of memory: plot");
    }
    int have_mtp = 0;
    for (int i = 0; i < h->n; i++) {
        if (!isnan(h->val[i])) vx[nval] = h->step[i], vy[nval++] = h->val[i];
        have_mtp |= !isnan(h->mtp[i]) && t->net->mtp_depth > 0;
    }
    ds_series s[3];
    int ns = 0;
    s[ns++] = (ds_series){.name = "train loss", .x = h->step, .y = h->loss, .n = h->n, .color = 0x1f77b4};
    if (have_mtp) s[ns++] = (ds_series){.name = "MTP loss", .x = h->step, .y = h->mtp, .n = h->n, .color = 0xff7f0e};
    if (nval) s[ns++] = (ds_series){.name = "validation loss", .x = vx, .y = vy, .n = nval, .color = 0xd62728, .marker = 1};
    ds_line_chart c = {.width = 900, .height = 540, .title = title ? title : "loss", .xlabel = "step",
                       .ylabel = "cross-entropy (nats)", .log_y = 1, .series = s, .n_series = ns};
    int rc = ds_chart_lines_png(&c, png_path);
    free(vx), free(vy);
    return rc;
}

/* ---- signals ---- */

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig) { stop_signal = sig; }

volatile sig_atomic_t *ds_train_catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART; /* a second signal kills at once; I/O is not interrupted */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return &stop_signal;
}
