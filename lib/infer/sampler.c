#include "infer/sampler.h"

#include "core/err.h"
#include "core/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int ds_dist_init(ds_dist *d, int V) {
    memset(d, 0, sizeof *d);
    if (V <= 0) return ds_fail(DS_ERR, "sampler: vocabulary size %d: must be positive", V);
    d->p = calloc((size_t)V, sizeof *d->p);
    d->ids = malloc((size_t)V * sizeof *d->ids);
    if (!d->p || !d->ids) {
        ds_dist_free(d);
        return ds_fail(DS_ERR, "sampler: out of memory for a %d-token distribution", V);
    }
    d->V = V;
    return DS_OK;
}

void ds_dist_free(ds_dist *d) {
    free(d->p);
    free(d->ids);
    memset(d, 0, sizeof *d);
}

int ds_sampler_init(ds_sampler *s, int V) {
    memset(s, 0, sizeof *s);
    if (V <= 0) return ds_fail(DS_ERR, "sampler: vocabulary size %d: must be positive", V);
    s->work = malloc((size_t)V * sizeof *s->work);
    s->rank = malloc((size_t)V * sizeof *s->rank);
    if (!s->work || !s->rank) {
        ds_sampler_free(s);
        return ds_fail(DS_ERR, "sampler: out of memory for %d tokens", V);
    }
    s->V = V;
    return DS_OK;
}

void ds_sampler_free(ds_sampler *s) {
    free(s->work);
    free(s->rank);
    memset(s, 0, sizeof *s);
}

int ds_sampling_check(const ds_sampling *sp) {
    if (!(sp->temperature >= 0) || !isfinite(sp->temperature))
        return ds_fail(DS_EUSAGE, "--temperature %g: must be a finite number >= 0", sp->temperature);
    if (sp->top_k < 0) return ds_fail(DS_EUSAGE, "--top-k %d: must be >= 0", sp->top_k);
    if (!(sp->top_p > 0 && sp->top_p <= 1)) return ds_fail(DS_EUSAGE, "--top-p %g: must be in (0, 1]", sp->top_p);
    return DS_OK;
}

static void dist_clear(ds_dist *d) {
    for (int i = 0; i < d->n; i++) d->p[d->ids[i]] = 0;
    d->n = 0;
}

/* k-th largest (1-based) of a[0..n) by quickselect; reorders a. */
static double kth_largest(double *a, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        /* median of three as pivot keeps sorted inputs linear */
        double x = a[lo], y = a[mid], z = a[hi];
        double pivot = x > y ? (y > z ? y : (x > z ? z : x)) : (x > z ? x : (y > z ? z : y));
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                double t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want];
    }
    return a[want];
}

static int by_weight_desc(const void *pa, const void *pb) {
    const ds_scored_id *a = pa, *b = pb;
    if (a->w != b->w) return a->w > b->w ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Keep the smallest set of the most likely candidates whose mass reaches top_p. Only candidates
 * above a threshold are sorted: if the tokens at or above t already hold top_p of the mass, the
 * nucleus is a prefix of them, so the (usually long) tail never needs ordering. */
static void nucleus(ds_sampler *s, ds_dist *out, double top_p) {
    double total = 0, wmax = 0;
    for (int i = 0; i < out->n; i++) {
        double w = out->p[out->ids[i]];
        total += w;
        if (w > wmax) wmax = w;
    }
    double goal = top_p * total, t = wmax * 0x1p-10;
    int m = 0;
    for (;;) {
        double mass = 0;
        m = 0;
        for (int i = 0; i < out->n; i++) {
            double w = out->p[out->ids[i]];
            if (w >= t) {
                s->rank[m].w = w;
                s->rank[m++].id = out->ids[i];
                mass += w;
            }
        }
        if (mass >= goal || t == 0) break;
        t = t > wmax * 0x1p-60 ? t * 0x1p-10 : 0;
    }
    qsort(s->rank, (size_t)m, sizeof *s->rank, by_weight_desc);
    int keep = 0;
    double cum = 0;
    while (keep < m && (keep == 0 || cum < goal)) cum += s->rank[keep++].w;
    dist_clear(out);
    for (int i = 0; i < keep; i++) {
        out->p[s->rank[i].id] = s->rank[i].w;
        out->ids[i] = s->rank[i].id;
    }
    out->n = keep;
    /* the support stays ascending by id: draws walk it in a fixed order */
    for (int i = 1; i < keep; i++) {
        int32_t v = out->ids[i];
        int j = i - 1;
        while (j >= 0 && out->ids[j] > v) {
            out->ids[j + 1] = out->ids[j];
            j--;
        }
        out->ids[j + 1] = v;
    }
}

int ds_sampler_dist(ds_sampler *s, const float *logits, const ds_sampling *sp, ds_dist *out) {
    const int V = out->V;
    if (V != s->V) return ds_fail(DS_ERR, "sampler: distribution over %d tokens, scratch for %d", V, s->V);
    for (int i = 0; i < V; i++)
        if (!isfinite(logits[i])) return ds_fail(DS_ERR, "logits: not finite at token %d", i);
    dist_clear(out);
    if (sp->temperature == 0 || sp->top_k == 1) {
        int32_t a = argmax(logits, V);
        out->p[a] = 1;
        out->ids[0] = a;
        out->n = 1;
        return DS_OK;
    }
    const double inv_t = 1.0 / sp->temperature;
    const float mx = logits[argmax(logits, V)];
    for (int i = 0; i < V; i++) s->work[i] = exp(((double)logits[i] - mx) * inv_t);
    double thr = 0;
    if (sp->top_k > 0 && sp->top_k < V) {
        double *copy = (double *)s->rank; /* the rank array has room for V doubles */
        memcpy(copy, s->work, (size_t)V * sizeof *copy);
        thr = kth_largest(copy, V, sp->top_k); /* ties with the k-th are kept, as in transformers */
    }
    for (int i = 0; i < V; i++)
        if (s->work[i] >= thr && s->work[i] > 0) {
            out->p[i] = s->work[i];
            out->ids[out->n++] = i;
        }
    if (sp->top_p < 1) nucleus(s, out, sp->top_p);
    double total = 0;
    for (int i = 0; i < out->n; i++) total += out->p[out->ids[i]];
    for (int i = 0; i < out->n; i++) out->p[out->ids[i]] /= total;
    return DS_OK;
}

double ds_draw_uniform(uint64_t seed, uint64_t seq, uint64_t step, ds_draw_purpose purpose) {
    uint32_t w[4];
    ds_philox4x32(seed, seq, step * 4 + (uint64_t)purpose, w);
    uint64_t bits = ((uint64_t)w[0] << 21) ^ (uint64_t)(w[1] >> 11);
    return (double)(bits & ((1ull << 53) - 1)) * 0x1p-53;
}

int32_t ds_dist_draw(const ds_dist *d, double u) {
    double cum = 0;
    for (int i = 0; i < d->n; i++) {
        cum += d->p[d->ids[i]];
        if (u < cum) return d->ids[i];
    }
    return d->ids[d->n - 1]; /* rounding left cum just under 1 */
}

typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));

/* exp of eight doubles x <= 0 (-inf included): x = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series
 * to r^12 (truncation below 2e-16 relative, so within a few ulp of libm), times 2^n built in the exponent
 * bits. x < -708 gives 0: next to the sum's largest term, exp(0) = 1, it is below double resolution. */
static inline v8d exp8_nonpos(v8d x) {
    const v8d magic = (v8d){0} + 0x1.8p52; /* adding it rounds to an integer held in the low mantissa bits */
    v8l tiny = x < -708.0;
    x = (v8d)((v8l)x & ~tiny) + (v8d)((v8l)((v8d){0} - 708.0) & tiny);
    v8d t = x * 0x1.71547652b82fep0 + magic; /* x log2(e), rounded */
    v8d n = t - magic;
    v8d r = (x - n * 0x1.62e42feep-1) - n * 0x1.a39ef35793c76p-33; /* ln2 in two parts, n * the first exact */
    v8d p = (v8d){0} + 1.0 / 479001600.0;
    static const double inv_fact[12] = {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                                        1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
    for (int k = 0; k < 12; k++) p = p * r + inv_fact[k];
    v8l scale = ((v8l)t - (v8l)magic + 1023) << 52;
    return (v8d)((v8l)(p * (v8d)scale) & ~tiny);
}

/* sum_i exp(logits[i] - mx) in double, eight lanes then a fixed pairwise reduction: the softmax denominator
 * of every log-probability decode emits, V exponentials per token (a scalar libm loop cost about a tenth of
 * a small model's decode step) */
static double sum_exp_shifted(const float *logits, int V, float mx) {
    if (!isfinite(mx)) { /* inf or NaN logits: libm's answer */
        double sum = 0;
        for (int i = 0; i < V; i++) sum += exp((double)logits[i] - mx);
        return sum;
    }
    v8d acc = {0};
    int i = 0;
    for (; i + 8 <= V; i += 8) {
        v8d x;
        for (int l = 0; l < 8; l++) x[l] = (double)logits[i + l] - mx;
        acc += exp8_nonpos(x);
    }
    if (i < V) {
        v8d x = (v8d){0} - INFINITY;
        for (int l = 0; i + l < V; l++) x[l] = (double)logits[i + l] - mx;
        acc += exp8_nonpos(x);
    }
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

double ds_logprob(const float *logits, int V, int32_t id) {
    const float mx = logits[argmax(logits, V)];
    return (double)logits[id] - mx - log(sum_exp_shifted(logits, V, mx));
}

void ds_log_softmax(const float *logits, int V, float *out) {
    const float mx = logits[argmax(logits, V)];
    const double lse = mx + log(sum_exp_shifted(logits, V, mx));
    for (int i = 0; i < V; i++) out[i] = (float)((double)logits[i] - lse);
}

int ds_sample_next(ds_sampler *s, const float *logits, const ds_sampling *sp, uint64_t seq, uint64_t step,
                   ds_dist *d, int32_t *token) {
    DS_TRY(ds_sampler_dist(s, logits, sp, d));
    *token = d->n == 1 ? d->ids[0] : ds_dist_draw(d, ds_draw_uniform(sp->seed, seq, step, DS_DRAW_SAMPLE));
    return DS_OK;
}

int ds_spec_verify(const ds_dist *p, const ds_dist *q, int32_t x, uint64_t seed, uint64_t seq, uint64_t step,
                   int32_t *out) {
    const double px = p->p[x], qx = q->p[x];
    if (qx > 0 && px > 0) {
        /* u < px/qx, written without the division so px >= qx accepts for every u in [0, 1) */
        if (px >= qx || ds_draw_uniform(seed, seq, step, DS_DRAW_ACCEPT) * qx < px) {
            *out = x;
            return 1;
        }
    }
    double resid = 0;
    for (int i = 0; i < p->n; i++) {
        double r = p->p[p->ids[i]] - q->p[p->ids[i]];
        if (r > 0) resid += r;
    }
    const double u = ds_draw_uniform(seed, seq, step, DS_DRAW_RESIDUAL);
    if (resid <= 0) { /* p == q up to rounding yet rejected: p itself is the residual's limit */
        *out = ds_dist_draw(p, u);
        return 0;
    }
    double cum = 0, goal = u * resid;
    int32_t last = p->ids[0];
    for (int i = 0; i < p->n; i++) {
        double r = p->p[p->ids[i]] - q->p[p->ids[i]];
        if (r <= 0) continue;
        last = p->ids[i];
        cum += r;
        if (goal < cum) break;
    }
    *out = last;
    return 0;
}
