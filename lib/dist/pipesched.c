/* pipesched.c — pipeline schedules (1F1B, ZB1P, DualPipe) and their event simulation; see pipesched.h. */
#include "dist/pipesched.h"

#include "core/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const kind_names[DS_PIPE_N_KINDS] = {"1F1B", "ZB1P", "DualPipe"};

int ds_pipe_kind_parse(const char *s, ds_pipe_kind *kind) {
    for (int k = 0; k < DS_PIPE_N_KINDS; k++)
        if (s && !strcasecmp(s, kind_names[k])) {
            *kind = (ds_pipe_kind)k;
            return 0;
        }
    return ds_fail(DS_EUSAGE, "unknown schedule '%s': expected 1f1b, zb1p or dualpipe", s ? s : "");
}

const char *ds_pipe_kind_name(ds_pipe_kind kind) {
    return kind >= 0 && kind < DS_PIPE_N_KINDS ? kind_names[kind] : "?";
}

int ds_pipe_check(ds_pipe_kind kind, int pp, int n_mb) {
    if (kind < 0 || kind >= DS_PIPE_N_KINDS) return ds_fail(DS_EUSAGE, "unknown pipeline schedule %d", (int)kind);
    if (pp < 1) return ds_fail(DS_EUSAGE, "pipeline stages: --pp %d must be at least 1", pp);
    if (n_mb < 1) return ds_fail(DS_EUSAGE, "micro-batches: --micro-batches %d must be at least 1", n_mb);
    if ((int64_t)pp * n_mb > DS_PIPE_MAX_CELLS)
        return ds_fail(DS_EUSAGE, "pipeline too large to schedule: PP %d x %d micro-batches is above %d", pp, n_mb,
                       DS_PIPE_MAX_CELLS);
    if (kind == DS_PIPE_DUALPIPE) {
        if (pp % 2)
            return ds_fail(DS_EUSAGE, "DualPipe needs an even number of stages: --pp %d", pp);
        if (n_mb % 2 || n_mb < 2 * pp)
            return ds_fail(DS_EUSAGE,
                           "DualPipe needs an even number of micro-batches, at least 2 x PP = %d: --micro-batches %d",
                           2 * pp, n_mb);
    }
    return 0;
}

int ds_pipe_stage_of(const ds_pipe_schedule *s, int rank, int chunk) {
    return chunk ? s->pp - 1 - rank : rank;
}

int ds_pipe_rank_of(const ds_pipe_schedule *s, int stage, int chunk) {
    return chunk ? s->pp - 1 - stage : stage;
}

int ds_pipe_chunk_of_mb(const ds_pipe_schedule *s, int mb) {
    return s->n_chunks == 2 && mb >= s->n_mb / 2;
}

int ds_pipe_next_rank(const ds_pipe_schedule *s, int rank, int chunk) {
    int st = ds_pipe_stage_of(s, rank, chunk);
    return st + 1 < s->pp ? ds_pipe_rank_of(s, st + 1, chunk) : -1;
}

int ds_pipe_prev_rank(const ds_pipe_schedule *s, int rank, int chunk) {
    int st = ds_pipe_stage_of(s, rank, chunk);
    return st > 0 ? ds_pipe_rank_of(s, st - 1, chunk) : -1;
}

void ds_pipe_schedule_free(ds_pipe_schedule *s) {
    if (s->ops)
        for (int r = 0; r < s->pp; r++) free(s->ops[r]);
    free(s->ops);
    free(s->n_ops);
    memset(s, 0, sizeof *s);
}

/* ---- building ---- */

/* Appends to one rank's list; capacity 3 ops per micro-batch the rank sees (F, B, W), never exceeded. */
static void emit(ds_pipe_schedule *s, int r, int kind, int chunk, int mb, int paired) {
    ds_pipe_op *o = &s->ops[r][s->n_ops[r]++];
    o->kind = (uint8_t)kind;
    o->chunk = (uint8_t)chunk;
    o->paired = (uint8_t)paired;
    o->pad_ = 0;
    o->mb = mb;
}

/* 1F1B: PP-1-r warm-up forwards, then one forward and one full backward alternately, then the
 * remaining backwards. Rank r holds at most PP-r micro-batches' activations. */
static void build_1f1b(ds_pipe_schedule *s, int r) {
    int M = s->n_mb, warm = s->pp - 1 - r;
    if (warm > M) warm = M;
    int f = 0, b = 0;
    while (f < warm) emit(s, r, DS_PIPE_F, 0, f++, 0);
    while (f < M) {
        emit(s, r, DS_PIPE_F, 0, f++, 0);
        emit(s, r, DS_PIPE_BW, 0, b++, 0);
    }
    while (b < M) emit(s, r, DS_PIPE_BW, 0, b++, 0);
}

/* ZB1P (ZB-H1 of "Zero Bubble Pipeline Parallelism", Qi et al. 2023): 1F1B's order with the backward
 * split, each W deferred while the rank holds fewer than PP micro-batches' activations (so memory stays
 * 1F1B's worst rank: PP) and, after the last forward, each W run right after a B, where 1F1B would wait
 * for the next gradient. The later the stage, the more Ws it defers, which fills its cool-down bubble. */
static void build_zb1p(ds_pipe_schedule *s, int r) {
    int M = s->n_mb, P = s->pp, warm = P - 1 - r;
    if (warm > M) warm = M;
    int f = 0, b = 0, w = 0;
    while (f < warm) emit(s, r, DS_PIPE_F, 0, f++, 0);
    while (f < M) {
        if (f - w >= P) emit(s, r, DS_PIPE_W, 0, w++, 0);
        emit(s, r, DS_PIPE_F, 0, f++, 0);
        emit(s, r, DS_PIPE_B, 0, b++, 0);
    }
    while (b < M) {
        if (w < b) emit(s, r, DS_PIPE_W, 0, w++, 0);
        emit(s, r, DS_PIPE_B, 0, b++, 0);
    }
    while (w < M) emit(s, r, DS_PIPE_W, 0, w++, 0);
}

/* DualPipe (DeepSeek-V3 report, section 3.2.1; the order follows the published reference
 * implementation's eight phases). Rank r and rank PP-1-r run the same sequence with the two chunks'
 * roles swapped: "near" is the chunk whose micro-batches reach the rank first (chunk 0 in the first
 * half of the ranks, chunk 1 in the second), "far" the other. Deferred Ws queue in B order. */
typedef struct {
    ds_pipe_schedule *s;
    int r, flip;       /* flip: 1 on the second half of the ranks (near = chunk 1) */
    int fnext[2], bnext[2];
    int *wq_mb, *wq_chunk; /* [n_mb]: every micro-batch defers at most one W on a rank */
    int wq_head, wq_tail;
} dp_state;

static int dp_mb(const dp_state *d, int chunk, int i) { return chunk * (d->s->n_mb / 2) + i; }

static void dp_f(dp_state *d, int rel, int paired) {
    int c = rel ^ d->flip;
    emit(d->s, d->r, DS_PIPE_F, c, dp_mb(d, c, d->fnext[c]++), paired);
}

static void dp_b(dp_state *d, int rel, int zero_bubble) {
    int c = rel ^ d->flip, mb = dp_mb(d, c, d->bnext[c]++);
    emit(d->s, d->r, zero_bubble ? DS_PIPE_B : DS_PIPE_BW, c, mb, 0);
    if (zero_bubble) {
        d->wq_mb[d->wq_tail] = mb;
        d->wq_chunk[d->wq_tail++] = c;
    }
}

static void dp_w(dp_state *d) {
    if (d->wq_head < d->wq_tail) {
        emit(d->s, d->r, DS_PIPE_W, d->wq_chunk[d->wq_head], d->wq_mb[d->wq_head], 0);
        d->wq_head++;
    }
}

/* F of one chunk overlapped with the full backward of the other */
static void dp_fb(dp_state *d, int rel_f, int rel_b) {
    dp_f(d, rel_f, 1);
    dp_b(d, rel_b, 0);
}

static void build_dualpipe(ds_pipe_schedule *s, int r, dp_state *d) {
    int P = s->pp, half = P / 2, h = r < P - 1 - r ? r : P - 1 - r, n2 = s->n_mb / 2;
    int middle = h == half - 1, outer = half - h - 1;
    int *qm = d->wq_mb, *qc = d->wq_chunk;
    memset(d, 0, sizeof *d);
    d->wq_mb = qm, d->wq_chunk = qc;
    d->s = s;
    d->r = r;
    d->flip = r >= half;
    /* 1: near forwards until the far direction's first micro-batch arrives */
    for (int i = 0; i < 2 * outer; i++) dp_f(d, 0, 0);
    /* 2: both directions' forwards alternate */
    for (int i = 0; i <= h; i++) {
        dp_f(d, 0, 0);
        dp_f(d, 1, 0);
    }
    /* 3: far backward (W deferred) and far forward, a deferred W between them */
    for (int i = 0; i < outer; i++) {
        dp_b(d, 1, 1);
        dp_w(d);
        dp_f(d, 1, 0);
    }
    /* 4: the steady phase, overlapped pairs in both directions. As in the reference, the middle ranks'
     * first step runs its F and BW one after the other, not paired: its backward's gradient comes from
     * the other middle rank's fresh forward, and this is the order Table 2's bubble holds for. */
    for (int i = 0; i < n2 - P + h + 1; i++) {
        if (i == 0 && middle) {
            dp_f(d, 0, 0);
            dp_b(d, 1, 0);
        } else {
            dp_fb(d, 0, 1);
        }
        dp_fb(d, 1, 0);
    }
    /* 5: far backward, then far forward with near backward */
    for (int i = 0; i < outer; i++) {
        dp_b(d, 1, 0);
        dp_fb(d, 1, 0);
    }
    /* 6: both backwards, the second half of them with W deferred */
    int zb = 0;
    for (int i = 0; i <= h; i++) {
        if (i == (h + 1) / 2 && h % 2 == 1) zb = 1;
        dp_b(d, 1, zb);
        if (i == (h + 1) / 2 && h % 2 == 0) zb = 1;
        dp_b(d, 0, zb);
    }
    /* 7, 8: deferred Ws fill the wait for the last near gradients, then the rest */
    for (int i = 0; i < outer; i++) {
        dp_w(d);
        dp_b(d, 0, 1);
    }
    while (d->wq_head < d->wq_tail) dp_w(d);
}

int ds_pipe_schedule_make(ds_pipe_schedule *s, ds_pipe_kind kind, int pp, int n_mb) {
    memset(s, 0, sizeof *s);
    DS_TRY(ds_pipe_check(kind, pp, n_mb));
    s->kind = kind;
    s->pp = pp;
    s->n_mb = n_mb;
    s->n_chunks = kind == DS_PIPE_DUALPIPE ? 2 : 1;
    s->n_ops = calloc((size_t)pp, sizeof *s->n_ops);
    s->ops = calloc((size_t)pp, sizeof *s->ops);
    if (!s->n_ops || !s->ops) goto oom;
    for (int r = 0; r < pp; r++)
        if (!(s->ops[r] = malloc(3 * (size_t)n_mb * sizeof **s->ops))) goto oom;
    dp_state d = {0};
    if (kind == DS_PIPE_DUALPIPE) {
        d.wq_mb = malloc((size_t)n_mb * sizeof *d.wq_mb);
        d.wq_chunk = malloc((size_t)n_mb * sizeof *d.wq_chunk);
        if (!d.wq_mb || !d.wq_chunk) {
            free(d.wq_mb), free(d.wq_chunk);
            goto oom;
        }
    }
    for (int r = 0; r < pp; r++)
        if (kind == DS_PIPE_1F1B) build_1f1b(s, r);
        else if (kind == DS_PIPE_ZB1P) build_zb1p(s, r);
        else build_dualpipe(s, r, &d);
    free(d.wq_mb), free(d.wq_chunk);
    return 0;
oom:
    ds_pipe_schedule_free(s);
    return ds_fail(DS_ERR, "out of memory: pipeline schedule %d x %d", pp, n_mb);
}

/* ---- checking ---- */

static const char *op_name(int kind) {
    static const char *const names[] = {"F", "B", "W", "BW"};
    return kind >= 0 && kind < 4 ? names[kind] : "?";
}

int ds_pipe_validate(const ds_pipe_schedule *s) {
    int P = s->pp, M = s->n_mb;
    /* per (stage, mb): list position + 1 of its F, B, W, BW (0: not seen) */
    int *seen = calloc((size_t)P * M * 4, sizeof *seen);
    if (!seen) return ds_fail(DS_ERR, "out of memory: validating a pipeline schedule");
    int rc = 0;
    for (int r = 0; r < P && !rc; r++) {
        for (int i = 0; i < s->n_ops[r] && !rc; i++) {
            const ds_pipe_op *o = &s->ops[r][i];
            if (o->mb < 0 || o->mb >= M || o->kind > DS_PIPE_BW || o->chunk >= s->n_chunks) {
                rc = ds_fail(DS_ERR, "bad op %d on rank %d", i, r);
                break;
            }
            if (o->chunk != ds_pipe_chunk_of_mb(s, o->mb)) {
                rc = ds_fail(DS_ERR, "rank %d op %d: micro-batch %d on chunk %d, belongs to chunk %d", r, i, o->mb,
                             o->chunk, ds_pipe_chunk_of_mb(s, o->mb));
                break;
            }
            int st = ds_pipe_stage_of(s, r, o->chunk);
            int *v = &seen[((size_t)st * M + o->mb) * 4];
            if (v[o->kind]) {
                rc = ds_fail(DS_ERR, "rank %d: %s of micro-batch %d twice (ops %d and %d)", r, op_name(o->kind), o->mb,
                             v[o->kind] - 1, i);
                break;
            }
            v[o->kind] = i + 1;
            if (o->kind != DS_PIPE_F && !v[DS_PIPE_F])
                rc = ds_fail(DS_ERR, "rank %d op %d: %s of micro-batch %d before its F", r, i, op_name(o->kind), o->mb);
            else if (o->kind == DS_PIPE_W && !v[DS_PIPE_B])
                rc = ds_fail(DS_ERR, "rank %d op %d: W of micro-batch %d before its B", r, i, o->mb);
            else if (o->paired && (o->kind != DS_PIPE_F || i + 1 >= s->n_ops[r] ||
                                   (s->ops[r][i + 1].kind != DS_PIPE_B && s->ops[r][i + 1].kind != DS_PIPE_BW) ||
                                   s->ops[r][i + 1].paired))
                rc = ds_fail(DS_ERR, "rank %d op %d: a pair must be an F followed by an unpaired B or BW", r, i);
        }
    }
    for (int st = 0; st < P && !rc; st++)
        for (int m = 0; m < M && !rc; m++) {
            const int *v = &seen[((size_t)st * M + m) * 4];
            int split = v[DS_PIPE_B] && v[DS_PIPE_W];
            if (!v[DS_PIPE_F] || !(v[DS_PIPE_BW] ? !v[DS_PIPE_B] && !v[DS_PIPE_W] : split))
                rc = ds_fail(DS_ERR, "micro-batch %d at stage %d: needs one F and one BW or B+W (has F %d B %d W %d BW %d)",
                             m, st, !!v[0], !!v[1], !!v[2], !!v[3]);
        }
    free(seen);
    return rc;
}

/* ---- simulation ---- */

void ds_pipe_sim_free(ds_pipe_sim *sim) {
    if (sim->start)
        for (int r = 0; r < sim->pp; r++) {
            free(sim->start[r]);
            free(sim->end[r]);
        }
    free(sim->start);
    free(sim->end);
    free(sim->busy);
    free(sim->bubble);
    free(sim->peak_act);
    memset(sim, 0, sizeof *sim);
}

static double op_cost(const ds_pipe_costs *c, int kind) {
    switch (kind) {
    case DS_PIPE_F: return c->f;
    case DS_PIPE_B: return c->b - c->w;
    case DS_PIPE_W: return c->w;
    default: return c->b;
    }
}

typedef struct {
    const ds_pipe_schedule *s;
    const ds_pipe_costs *c; /* stage st's costs at c[st * stride] */
    int stride;
    double *fend, *bend; /* [stage * M + mb]: end of its F, of its B or BW; < 0 not yet */
} sim_state;

static const ds_pipe_costs *stage_costs(const sim_state *S, int stage) { return &S->c[stage * S->stride]; }

/* Earliest start of op o on rank r allowed by its dependencies, or -1 while one is not done. */
static double ready_at(const sim_state *S, int r, const ds_pipe_op *o) {
    const ds_pipe_schedule *s = S->s;
    int M = s->n_mb, st = ds_pipe_stage_of(s, r, o->chunk);
    double t;
    switch (o->kind) {
    case DS_PIPE_F:
        if (st == 0) return 0;
        t = S->fend[(size_t)(st - 1) * M + o->mb];
        return t < 0 ? -1 : t + (ds_pipe_rank_of(s, st - 1, o->chunk) != r ? stage_costs(S, st - 1)->p2p : 0);
    case DS_PIPE_W:
        return S->bend[(size_t)st * M + o->mb];
    default:
        if (st == s->pp - 1) return S->fend[(size_t)st * M + o->mb];
        t = S->bend[(size_t)(st + 1) * M + o->mb];
        return t < 0 ? -1 : t + (ds_pipe_rank_of(s, st + 1, o->chunk) != r ? stage_costs(S, st + 1)->p2p : 0);
    }
}

static void record(sim_state *S, int r, const ds_pipe_op *o, double end) {
    size_t k = (size_t)ds_pipe_stage_of(S->s, r, o->chunk) * S->s->n_mb + o->mb;
    if (o->kind == DS_PIPE_F) S->fend[k] = end;
    else if (o->kind != DS_PIPE_W) S->bend[k] = end;
}

/* An op's cost at its stage's costs; a pair's: the mean of its two stages' F&B (the two ops' costs
 * added where either stage gives none). */
static double cost_of(const sim_state *S, int r, const ds_pipe_op *o, const ds_pipe_op *pair_with) {
    const ds_pipe_costs *a = stage_costs(S, ds_pipe_stage_of(S->s, r, o->chunk));
    if (!pair_with) return op_cost(a, o->kind);
    const ds_pipe_costs *b = stage_costs(S, ds_pipe_stage_of(S->s, r, pair_with->chunk));
    if (a->fb > 0 && b->fb > 0) return a == b ? a->fb : (a->fb + b->fb) / 2;
    return op_cost(a, o->kind) + op_cost(b, pair_with->kind);
}

static int simulate(const ds_pipe_schedule *s, const ds_pipe_costs *c, int stride, ds_pipe_sim *out) {
    int P = s->pp, M = s->n_mb;
    memset(out, 0, sizeof *out);
    out->pp = P;
    sim_state S = {s, c, stride, malloc((size_t)P * M * sizeof(double)), malloc((size_t)P * M * sizeof(double))};
    int *pos = calloc((size_t)P, sizeof *pos);
    double *free_at = calloc((size_t)P, sizeof *free_at);
    out->busy = calloc((size_t)P, sizeof *out->busy);
    out->bubble = calloc((size_t)P, sizeof *out->bubble);
    out->peak_act = calloc((size_t)P, sizeof *out->peak_act);
    out->start = calloc((size_t)P, sizeof *out->start);
    out->end = calloc((size_t)P, sizeof *out->end);
    int rc = 0;
    if (!S.fend || !S.bend || !pos || !free_at || !out->busy || !out->bubble || !out->peak_act || !out->start ||
        !out->end)
        goto oom;
    for (int r = 0; r < P; r++) {
        out->start[r] = malloc(((size_t)s->n_ops[r] + 1) * sizeof(double));
        out->end[r] = malloc(((size_t)s->n_ops[r] + 1) * sizeof(double));
        if (!out->start[r] || !out->end[r]) goto oom;
    }
    for (size_t k = 0; k < (size_t)P * M; k++) S.fend[k] = S.bend[k] = -1;

    /* Sweep the ranks, advancing each as far as its dependencies allow; op times follow from the DAG
     * whatever the sweep order. A sweep that advances nobody while ops remain is a deadlock. */
    for (;;) {
        int moved = 0, left = 0;
        for (int r = 0; r < P; r++) {
            while (pos[r] < s->n_ops[r]) {
                int i = pos[r];
                const ds_pipe_op *o = &s->ops[r][i];
                double t0 = ready_at(&S, r, o), dur;
                if (t0 < 0) break;
                int n = 1;
                if (o->paired && i + 1 < s->n_ops[r]) {
                    double t1 = ready_at(&S, r, &s->ops[r][i + 1]);
                    if (t1 < 0) break;
                    if (t1 > t0) t0 = t1;
                    dur = cost_of(&S, r, o, &s->ops[r][i + 1]);
                    n = 2;
                } else {
                    dur = cost_of(&S, r, o, NULL);
                }
                if (free_at[r] > t0) t0 = free_at[r];
                for (int j = i; j < i + n; j++) {
                    out->start[r][j] = t0;
                    out->end[r][j] = t0 + dur;
                    record(&S, r, &s->ops[r][j], t0 + dur);
                }
                free_at[r] = t0 + dur;
                out->busy[r] += dur;
                pos[r] += n;
                moved = 1;
            }
            left |= pos[r] < s->n_ops[r];
        }
        if (!left) break;
        if (!moved) {
            int r = 0;
            while (pos[r] >= s->n_ops[r]) r++;
            const ds_pipe_op *o = &s->ops[r][pos[r]];
            rc = ds_fail(DS_ERR, "deadlock: rank %d waits at op %d (%s of micro-batch %d, chunk %d)", r, pos[r],
                         op_name(o->kind), o->mb, o->chunk);
            goto done;
        }
    }
    for (int r = 0; r < P; r++)
        if (free_at[r] > out->step_time) out->step_time = free_at[r];
    for (int r = 0; r < P; r++) {
        out->bubble[r] = out->step_time - out->busy[r];
        int act = 0;
        for (int i = 0; i < s->n_ops[r]; i++) {
            int k = s->ops[r][i].kind;
            act += k == DS_PIPE_F ? 1 : k == DS_PIPE_B ? 0 : -1;
            if (act > out->peak_act[r]) out->peak_act[r] = act;
        }
    }
    goto done;
oom:
    rc = ds_fail(DS_ERR, "out of memory: simulating a pipeline schedule %d x %d", P, M);
done:
    free(S.fend);
    free(S.bend);
    free(pos);
    free(free_at);
    if (rc) ds_pipe_sim_free(out);
    return rc;
}

int ds_pipe_simulate(const ds_pipe_schedule *s, const ds_pipe_costs *c, ds_pipe_sim *out) {
    return simulate(s, c, 0, out);
}

int ds_pipe_simulate_stages(const ds_pipe_schedule *s, const ds_pipe_costs *stage_costs, ds_pipe_sim *out) {
    return simulate(s, stage_costs, 1, out);
}

double ds_pipe_sim_max_bubble(const ds_pipe_schedule *s, const ds_pipe_sim *sim) {
    double m = 0;
    for (int r = 0; r < s->pp; r++)
        if (sim->bubble[r] > m) m = sim->bubble[r];
    return m;
}

int ds_pipe_sim_max_peak_act(const ds_pipe_schedule *s, const ds_pipe_sim *sim) {
    int m = 0;
    for (int r = 0; r < s->pp; r++)
        if (sim->peak_act[r] > m) m = sim->peak_act[r];
    return m;
}
