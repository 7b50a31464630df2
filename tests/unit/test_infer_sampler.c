/* Unit tests for lib/infer/sampler and lib/infer/stop: the sampling distribution against a brute-force
 * reference (full sort, the transformers warper order), draws against their distribution
 * (chi-square), reproducibility keyed by (seed, sequence, step), rejection sampling's output law,
 * and stop strings split across token boundaries. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "infer/sampler.h"
#include "infer/stop.h"

#include <stdint.h>

static void random_logits(float *x, int V, uint64_t seed, float scale) {
    ds_randn_fill(x, (size_t)V, seed, 1, scale);
}

/* Reference: softmax(l/T), keep logits >= k-th largest, then sort descending (id ascending on ties)
 * and keep tokens while the mass before them is below top_p; renormalise. O(V^2)-free but simple. */
typedef struct {
    double w;
    int id;
} pair;
static int pair_desc(const void *a, const void *b) {
    const pair *x = a, *y = b;
    if (x->w != y->w) return x->w > y->w ? -1 : 1;
    return x->id - y->id;
}
static void reference_dist(const float *l, int V, double T, int k, double top_p, double *out) {
    pair *v = malloc((size_t)V * sizeof *v);
    double mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = fmax(mx, l[i]);
    for (int i = 0; i < V; i++) v[i] = (pair){exp((l[i] - mx) / T), i};
    qsort(v, (size_t)V, sizeof *v, pair_desc);
    int n = V;
    if (k > 0 && k < V) {
        n = k;
        while (n < V && v[n].w == v[k - 1].w) n++;
    }
    double tot = 0;
    for (int i = 0; i < n; i++) tot += v[i].w;
    int keep = n;
    if (top_p < 1) {
        double cum = 0;
        keep = 0;
        while (keep < n && (keep == 0 || cum < top_p * tot)) cum += v[keep++].w;
    }
    double z = 0;
    for (int i = 0; i < keep; i++) z += v[i].w;
    for (int i = 0; i < V; i++) out[i] = 0;
    for (int i = 0; i < keep; i++) out[v[i].id] = v[i].w / z;
    free(v);
}

TEST(distribution_matches_reference) {
    static const int Vs[] = {7, 1000, 50000};
    static const struct {
        double T;
        int k;
        double p;
    } cfg[] = {{1, 0, 1}, {0.7, 0, 1}, {1.3, 40, 1}, {1, 0, 0.9}, {0.8, 50, 0.5}, {1, 0, 0.999}, {2, 3, 0.3}};
    for (size_t vi = 0; vi < sizeof Vs / sizeof *Vs; vi++) {
        int V = Vs[vi];
        float *l = malloc((size_t)V * sizeof *l);
        double *ref = malloc((size_t)V * sizeof *ref);
        random_logits(l, V, 11 + vi, 3.0f);
        ds_sampler s;
        ds_dist d;
        ds_sampler_init(&s, V);
        ds_dist_init(&d, V);
        for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
            ds_sampling sp = {.temperature = cfg[c].T, .top_k = cfg[c].k, .top_p = cfg[c].p, .seed = 1};
            int rc = ds_sampler_dist(&s, l, &sp, &d);
            reference_dist(l, V, cfg[c].T, cfg[c].k, cfg[c].p, ref);
            double err = 0, sum = 0;
            int support = 0, sorted = 1;
            for (int i = 0; i < V; i++) {
                err = fmax(err, fabs(d.p[i] - ref[i]));
                support += ref[i] > 0;
                sum += d.p[i];
            }
            for (int i = 1; i < d.n; i++) sorted &= d.ids[i] > d.ids[i - 1];
            CHECK(rc == 0 && err < 1e-12 && d.n == support && sorted && fabs(sum - 1) < 1e-12,
                  "V=%d T=%g k=%d p=%g: max err %.3g, support %d vs %d, sum %.15g", V, cfg[c].T, cfg[c].k,
                  cfg[c].p, err, d.n, support, sum);
        }
        ds_sampler_free(&s);
        ds_dist_free(&d);
        free(l);
        free(ref);
    }
}

TEST(greedy_ties_and_bad_logits) {
    float l[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 0.0f};
    ds_sampler s;
    ds_dist d;
    ds_sampler_init(&s, 6);
    ds_dist_init(&d, 6);
    ds_sampling g = {.temperature = 0, .top_p = 1, .seed = 5};
    int32_t tok = -1;
    CHECK(ds_sample_next(&s, l, &g, 0, 0, &d, &tok) == 0 && tok == 1 && d.n == 1, "greedy picks the lowest tied id: %d", tok);
    ds_sampling k2 = {.temperature = 1, .top_k = 1, .top_p = 1};
    CHECK(ds_sample_next(&s, l, &k2, 0, 0, &d, &tok) == 0 && tok == 1, "top-k 1 is greedy");
    ds_sampling k3 = {.temperature = 1, .top_k = 2, .top_p = 1};
    ds_sampler_dist(&s, l, &k3, &d);
    CHECK(d.n == 2 && d.p[1] == 0.5 && d.p[3] == 0.5, "top-k keeps exactly the two tied maxima");
    l[4] = NAN;
    CHECK(ds_sampler_dist(&s, l, &k3, &d) == DS_ERR && strstr(ds_errmsg(), "not finite at token 4"), "NaN logits: %s",
          ds_errmsg());
    ds_sampling bad = {.temperature = -1, .top_p = 1};
    CHECK(ds_sampling_check(&bad) == DS_EUSAGE && strstr(ds_errmsg(), "--temperature"), "negative temperature");
    bad = (ds_sampling){.temperature = 1, .top_p = 0};
    CHECK(ds_sampling_check(&bad) == DS_EUSAGE && strstr(ds_errmsg(), "--top-p"), "top-p 0");
    ds_sampler_free(&s);
    ds_dist_free(&d);
}

TEST(logprob_is_log_softmax) {
    enum { V = 300 };
    float l[V], ls[V];
    random_logits(l, V, 3, 4.0f);
    ds_log_softmax(l, V, ls);
    double z = 0;
    for (int i = 0; i < V; i++) z += exp((double)l[i]);
    double worst = 0;
    for (int i = 0; i < V; i++) {
        double ref = l[i] - log(z);
        worst = fmax(worst, fabs(ds_logprob(l, V, i) - ref));
        worst = fmax(worst, fabs(ls[i] - ref) / 8); /* float output */
    }
    CHECK(worst < 2e-7, "log-softmax error %.3g", worst);
}

/* The softmax denominator's vectorised exponential against long-double libm, over a vocabulary with a
 * tail (not a multiple of 8), logits spread over 1000 nats (terms underflowing to 0), -inf entries: every
 * log-probability within 1e-13, and as a float (what ds-generate writes) equal in nearly every case. */
TEST(logprob_matches_long_double) {
    enum { V = 4099 };
    static float l[V];
    for (int spread = 0; spread < 2; spread++) { /* typical logits; then most terms underflowing */
        random_logits(l, V, 11, spread ? 300.0f : 3.0f);
        l[17] = -INFINITY;
        l[4098] = -INFINITY;
        l[100] -= 1000.0f;
        float mx = l[0];
        for (int i = 1; i < V; i++)
            if (l[i] > mx) mx = l[i];
        long double z = 0;
        for (int i = 0; i < V; i++) z += expl((long double)l[i] - mx);
        double worst = 0;
        int same_float = 0;
        for (int i = 0; i < V; i++) {
            if (l[i] == -INFINITY) continue;
            long double ref = (long double)l[i] - mx - logl(z);
            double got = ds_logprob(l, V, i);
            worst = fmax(worst, fabs((double)(got - ref)));
            same_float += (float)got == (float)ref;
        }
        CHECK(worst < 1e-13, "logits x %d: log-prob error %.3g", spread ? 300 : 3, worst);
        CHECK(same_float >= V - 2 - 4, "logits x %d: %d of %d log-probs equal as floats", spread ? 300 : 3, same_float, V - 2);
        CHECK(ds_logprob(l, V, 17) == -INFINITY, "a -inf logit has log-prob -inf");
    }
}

static double chi_square(const long *count, const double *p, int V, long n) {
    double x2 = 0;
    for (int i = 0; i < V; i++)
        if (p[i] > 0) x2 += (count[i] - n * p[i]) * (count[i] - n * p[i]) / (n * p[i]);
        else if (count[i]) return INFINITY;
    return x2;
}

TEST(draws_follow_the_distribution_and_are_keyed) {
    enum { V = 10, N = 200000 };
    float l[V];
    random_logits(l, V, 9, 1.0f);
    ds_sampler s;
    ds_dist d;
    ds_sampler_init(&s, V);
    ds_dist_init(&d, V);
    ds_sampling sp = {.temperature = 0.9, .top_k = 8, .top_p = 0.95, .seed = 1234};
    long count[V] = {0};
    int32_t tok;
    for (long i = 0; i < N; i++) {
        ds_sample_next(&s, l, &sp, 3, (uint64_t)i, &d, &tok);
        count[tok]++;
    }
    /* 9 degrees of freedom at most: 40 is far beyond the 1e-5 tail */
    double x2 = chi_square(count, d.p, V, N);
    CHECK(x2 < 40, "chi-square %.2f over %d support tokens", x2, d.n);
    int32_t a, b, c;
    ds_sample_next(&s, l, &sp, 7, 42, &d, &a);
    ds_sample_next(&s, l, &sp, 1, 42, &d, &c);
    ds_sample_next(&s, l, &sp, 7, 42, &d, &b);
    CHECK(a == b, "same (seed, sequence, step) gives the same token whatever was drawn in between");
    int differ = 0;
    for (int step = 0; step < 50; step++) {
        ds_sample_next(&s, l, &sp, 7, step, &d, &a);
        ds_sample_next(&s, l, &sp, 8, step, &d, &b);
        differ += a != b;
    }
    CHECK(differ > 10, "different sequences draw independently (%d of 50 steps differ)", differ);
    ds_sampler_free(&s);
    ds_dist_free(&d);
}

/* Speculative sampling: draft x ~ q, verify against p; the emitted token must follow p exactly. */
TEST(rejection_sampling_preserves_the_target) {
    enum { V = 8, N = 400000 };
    float lp[V], lq[V];
    random_logits(lp, V, 21, 1.5f);
    random_logits(lq, V, 22, 1.5f);
    ds_sampler s;
    ds_dist p, q;
    ds_sampler_init(&s, V);
    ds_dist_init(&p, V);
    ds_dist_init(&q, V);
    ds_sampling sp = {.temperature = 1, .top_k = 6, .top_p = 1, .seed = 77};
    ds_sampler_dist(&s, lp, &sp, &p);
    ds_sampling sq = {.temperature = 1, .top_k = 0, .top_p = 0.9, .seed = 77};
    ds_sampler_dist(&s, lq, &sq, &q);
    long count[V] = {0}, accepted = 0;
    for (long i = 0; i < N; i++) {
        int32_t x = ds_dist_draw(&q, ds_draw_uniform(77, 0, (uint64_t)i, DS_DRAW_DRAFT)), out;
        accepted += ds_spec_verify(&p, &q, x, 77, 0, (uint64_t)i, &out);
        count[out]++;
    }
    double x2 = chi_square(count, p.p, V, N), expect = 0;
    for (int i = 0; i < V; i++) expect += fmin(p.p[i], q.p[i]);
    CHECK(x2 < 40, "emitted tokens follow p: chi-square %.2f", x2);
    CHECK(fabs((double)accepted / N - expect) < 0.005, "acceptance %.4f vs sum min(p,q) = %.4f", (double)accepted / N,
          expect);
    /* greedy: point masses */
    ds_sampling g = {.temperature = 0, .top_p = 1};
    ds_sampler_dist(&s, lp, &g, &p);
    ds_sampler_dist(&s, lq, &g, &q);
    int32_t out, ap = p.ids[0], aq = q.ids[0];
    int acc = ds_spec_verify(&p, &q, aq, 1, 0, 0, &out);
    CHECK(acc == (ap == aq) && out == ap, "greedy verification returns the target's argmax (%d vs draft %d)", ap, aq);
    acc = ds_spec_verify(&p, &p, ap, 1, 0, 0, &out);
    CHECK(acc == 1 && out == ap, "greedy draft equal to the argmax is accepted");
    ds_sampler_free(&s);
    ds_dist_free(&p);
    ds_dist_free(&q);
}

/* Feed text in pieces, collect what is released while streaming, and the final text. */
static int run_stop(const char *const *stops, int n, const char *const *pieces, int np, char *streamed, char *final) {
    ds_stop st;
    ds_stop_init(&st, stops, n);
    streamed[0] = 0;
    int hit = 0;
    for (int i = 0; i < np && !hit; i++) {
        hit = ds_stop_push(&st, pieces[i], strlen(pieces[i]));
        const char *o;
        size_t k = ds_stop_take(&st, 0, &o);
        strncat(streamed, o, k);
    }
    const char *o;
    size_t k = ds_stop_take(&st, 1, &o);
    strncat(streamed, o, k);
    strcpy(final, st.text);
    ds_stop_free(&st);
    return hit;
}

TEST(stop_strings_across_token_boundaries) {
    char streamed[256], final[256];
    const char *stops[] = {"\n\nUser:", "END"};
    const char *p1[] = {"Hello", " wor", "ld\n", "\nUs", "er: more"};
    int hit = run_stop(stops, 2, p1, 5, streamed, final);
    CHECK(hit && !strcmp(final, "Hello world") && !strcmp(streamed, "Hello world"), "stop string split over 3 tokens");
    const char *p2[] = {"a\n", "\nUsb", "EN", "D!"};
    hit = run_stop(stops, 2, p2, 4, streamed, final);
    CHECK(hit && !strcmp(final, "a\n\nUsb"), "near miss released, then END");
    CHECK(!strcmp(streamed, "a\n\nUsb"), "streamed text equals the final text");
    const char *p3[] = {"xxEN"};
    hit = run_stop(stops, 2, p3, 1, streamed, final);
    CHECK(!hit && !strcmp(final, "xxEN") && !strcmp(streamed, "xxEN"), "held-back prefix released at the end");
    const char *p4[] = {"ENDEND"};
    hit = run_stop(stops, 2, p4, 1, streamed, final);
    CHECK(hit && final[0] == 0 && streamed[0] == 0, "stop at the very start gives an empty completion");
    const char *empty[] = {""};
    const char *p5[] = {"abc"};
    hit = run_stop(empty, 1, p5, 1, streamed, final);
    CHECK(!hit && !strcmp(final, "abc"), "an empty stop string never matches");
    /* a hold that is partially a prefix: "aEN" then "x" must release "aENx" */
    ds_stop st;
    ds_stop_init(&st, stops, 2);
    const char *o;
    ds_stop_push(&st, "aEN", 3);
    size_t k = ds_stop_take(&st, 0, &o);
    CHECK(k == 1 && o[0] == 'a', "'EN' held back (released %zu)", k);
    ds_stop_push(&st, "x", 1);
    k = ds_stop_take(&st, 0, &o);
    CHECK(k == 3 && !strncmp(o, "ENx", 3), "released once it cannot match");
    ds_stop_free(&st);
}

TAP_MAIN()
