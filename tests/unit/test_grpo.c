/* GRPO's numbers (lib/rl/grpo.h): advantages of known groups, the k3 KL estimator (values, sign, and
 * that its expectation under pi is KL(pi||pi_ref) exactly), the per-token derivative against finite
 * differences in every clip region, and the averaging weights. With the argument
 * "grpo_trace_for_reference" it writes fixed inputs and our loss and gradients to $DS_GRPO_REF_DIR/grpo.json
 * for tests/ref/grpo_ref.py (numpy + torch autograd) to redo independently. */
#include "tap.h"

#include "core/jsonw.h"
#include "core/rng.h"
#include "rl/grpo.h"

TEST(advantages_of_known_groups) {
    /* group 0: {1, 0, 0, 1}: mean 0.5, unbiased std sqrt(1/3); group 1: all 2 (no variance) */
    const double r[8] = {1, 0, 0, 1, 2, 2, 2, 2};
    double a[8], sd[3];
    int zero = ds_grpo_advantages(r, 2, 4, 1, a, sd);
    const double s = sqrt(1.0 / 3.0);
    CHECK(zero == 1, "one zero-variance group: %d", zero);
    CHECK_NEAR(sd[0], s, 1e-15, "std of {1,0,0,1} (Bessel)");
    CHECK_NEAR(a[0], 0.5 / (s + 1e-4), 1e-15, "A = (1 - 0.5)/(std + 1e-4)");
    CHECK_NEAR(a[1], -0.5 / (s + 1e-4), 1e-15, "A = (0 - 0.5)/(std + 1e-4)");
    CHECK(a[4] == 0 && a[5] == 0 && a[6] == 0 && a[7] == 0, "no variance: A = 0 exactly");
    zero = ds_grpo_advantages(r, 2, 4, 0, a, NULL);
    CHECK(a[0] == 0.5 && a[2] == -0.5 && a[4] == 0 && zero == 1, "without std scaling: A = r - mean");
    /* 3 groups of 3: advantages sum to 0 in each group and have unit sample variance (up to eps) */
    const double q[9] = {0.1, 0.7, 0.4, -3, 5, 2, 1, 1, 1.5};
    double b[9];
    zero = ds_grpo_advantages(q, 3, 3, 1, b, sd);
    int ok = zero == 0;
    for (int g = 0; g < 3; g++) {
        double m = (b[3 * g] + b[3 * g + 1] + b[3 * g + 2]) / 3, v = 0;
        for (int i = 0; i < 3; i++) v += b[3 * g + i] * b[3 * g + i] / 2;
        ok &= fabs(m) < 1e-15 && fabs(sqrt(v) * (sd[g] + 1e-4) / sd[g] - 1) < 1e-12;
    }
    CHECK(ok, "zero mean and unit sample std per group");
    const double tiny[4] = {1, 1 + 1e-10, 1, 1};
    zero = ds_grpo_advantages(tiny, 1, 4, 1, a, NULL);
    CHECK(zero == 1 && a[1] == 0, "a spread of 1e-10 counts as no variance (A = 0)");
}

TEST(kl_k3_values) {
    CHECK(ds_grpo_kl_k3(-1.3, -1.3) == 0, "equal log-probs: 0");
    CHECK_NEAR(ds_grpo_kl_k3(-2, -1), exp(1) - 2, 1e-15, "ref above: e - 1 - 1");
    CHECK_NEAR(ds_grpo_kl_k3(-1, -2), exp(-1), 1e-15, "ref below: 1/e + 1 - 1");
    int nonneg = 1;
    for (double d = -20; d <= 20; d += 0.37) nonneg &= ds_grpo_kl_k3(-5, -5 + d) >= 0;
    CHECK(nonneg, "k3 >= 0 everywhere");
    /* E_pi[k3] = sum_x pi(x) k3(x) = KL(pi || pi_ref) for any pair of distributions */
    enum { V = 7 };
    double lp[V], lr[V], zp = 0, zr = 0;
    for (int i = 0; i < V; i++) zp += exp(lp[i] = sin(1.7 * i) * 2), zr += exp(lr[i] = cos(0.9 * i + 0.3) * 1.5);
    double e = 0, kl = 0;
    for (int i = 0; i < V; i++) {
        lp[i] -= log(zp), lr[i] -= log(zr);
        e += exp(lp[i]) * ds_grpo_kl_k3(lp[i], lr[i]);
        kl += exp(lp[i]) * (lp[i] - lr[i]);
    }
    CHECK_NEAR(e, kl, 1e-12, "expectation of k3 under pi = KL(pi||pi_ref)");
}

/* The loss of one token as a function of logp, for finite differences. */
static double token_loss(const ds_grpo_opts *o, double lp, double old, double ref, double adv) {
    ds_grpo_token_out t;
    ds_grpo_token(o, lp, old, ref, adv, &t);
    return t.loss;
}

TEST(token_gradient_matches_finite_differences_in_every_region) {
    const ds_grpo_opts o = {.eps_low = 0.2, .eps_high = 0.28, .beta = 0.04};
    /* (logp - old, adv): inside the clip range, above it, below it; positive and negative advantages */
    const double cases[][2] = {{0.05, 1.3}, {-0.1, 1.3}, {0.4, 1.3},  {-0.5, 1.3}, {0.05, -0.7},
                               {0.4, -0.7}, {-0.5, -0.7}, {0.0, 0.0}, {0.3, 0.0}};
    const int nc = sizeof cases / sizeof cases[0];
    int ok = 1, clip_hi = 0, clip_lo = 0;
    for (int k = 0; k < nc; k++) {
        const double old = -2.1, lp = old + cases[k][0], ref = -1.7, adv = cases[k][1];
        ds_grpo_token_out t;
        ds_grpo_token(&o, lp, old, ref, adv, &t);
        const double h = 1e-6;
        const double fd = (token_loss(&o, lp + h, old, ref, adv) - token_loss(&o, lp - h, old, ref, adv)) / (2 * h);
        if (fabs(fd - t.dlogp) > 1e-7) {
            ok = 0;
            printf("# case %d: analytic %.10g, finite differences %.10g\n", k, t.dlogp, fd);
        }
        clip_hi += t.clip_high, clip_lo += t.clip_low;
        /* the clip decides where A>0, rho>1+eps_high or A<0, rho<1-eps_low */
        const double rho = exp(cases[k][0]);
        ok &= t.clip_high == (adv > 0 && rho > 1 + o.eps_high) && t.clip_low == (adv < 0 && rho < 1 - o.eps_low);
        ok &= fabs(t.ratio - rho) < 1e-15;
    }
    CHECK(ok, "d loss / d logp = central differences (h 1e-6) in %d cases, clip flags as defined", nc);
    CHECK(clip_hi == 1 && clip_lo == 1, "the cases reach both clip ends (%d high, %d low)", clip_hi, clip_lo);
    ds_grpo_token_out t;
    const ds_grpo_opts nokl = {.eps_low = 0.2, .eps_high = 0.2, .beta = 0};
    ds_grpo_token(&nokl, -1, -1, 123, 0.8, &t);
    CHECK(t.loss == -0.8 && t.dlogp == -0.8 && t.kl == 0, "ratio 1, beta 0: loss -A, gradient -A (ref ignored)");
}

TEST(averaging_weights) {
    CHECK_NEAR(ds_grpo_weight(DS_GRPO_AVG_SEQUENCE, 5, 4, 37), 1.0 / 20, 1e-18, "sequence: 1/(sequences * |o|)");
    CHECK_NEAR(ds_grpo_weight(DS_GRPO_AVG_TOKEN, 5, 4, 37), 1.0 / 37, 1e-18, "token: 1/(tokens in the step)");
    CHECK(ds_grpo_weight(DS_GRPO_AVG_SEQUENCE, 0, 4, 37) == 0, "an empty completion weighs nothing");
    /* a step of sequences all with advantage A and ratio 1, beta 0: the loss is -mean(A) in both modes */
    const ds_grpo_opts o = {.eps_low = 0.2, .eps_high = 0.2};
    float lp[6] = {-1, -2, -3, -1, -2, -3}, d[6];
    ds_grpo_stats st;
    ds_grpo_stats_reset(&st);
    for (int avg = 0; avg < 2; avg++) {
        ds_grpo_stats_reset(&st);
        ds_grpo_seq a = {.logp = lp, .old_logp = lp, .n = 2, .adv = 1.0, .weight = ds_grpo_weight(avg, 2, 2, 6)};
        ds_grpo_seq b = {.logp = lp + 2, .old_logp = lp + 2, .n = 4, .adv = 1.0, .weight = ds_grpo_weight(avg, 4, 2, 6)};
        ds_grpo_seq_loss(&o, &a, d, &st);
        ds_grpo_seq_loss(&o, &b, d + 2, &st);
        CHECK_NEAR(st.loss, -1.0, 1e-12, avg ? "token mean of -A" : "sequence mean of -A");
        CHECK_NEAR(d[0], avg ? -1.0 / 6 : -1.0 / 4, 1e-7, "short sequence's token gradient");
        CHECK_NEAR(d[5], avg ? -1.0 / 6 : -1.0 / 8, 1e-7, "long sequence's token gradient");
    }
    CHECK(st.tokens == 6 && st.clip_low == 0 && st.ratio_min == 1 && st.ratio_max == 1, "statistics: 6 tokens, ratio 1");
}

/* ---- trace for the numpy / torch reference ---- */

enum { NSEQ = 9 };

static void write_floats(ds_jsonw *w, const char *key, const float *v, int n) {
    ds_jsonw_key(w, key);
    ds_jsonw_arr_begin(w);
    for (int i = 0; i < n; i++) ds_jsonw_numf(w, v[i]);
    ds_jsonw_arr_end(w);
}

static int trace(void) {
    const char *dir = getenv("DS_GRPO_REF_DIR");
    if (!dir) dir = ".";
    char path[512];
    snprintf(path, sizeof path, "%s/grpo.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    static const int len[NSEQ] = {5, 1, 9, 3, 7, 4, 2, 6, 3};
    /* groups of 3; the last has no variance */
    double rewards[NSEQ] = {1, 0, 0.25, 0.2, 0.9, 0.2, 1, 1, 1};
    double adv[NSEQ];
    ds_grpo_advantages(rewards, 3, 3, 1, adv, NULL);
    ds_rng rng;
    ds_rng_init(&rng, 77, 1);
    int ntok = 0;
    for (int i = 0; i < NSEQ; i++) ntok += len[i];
    float *lp = malloc(ntok * sizeof *lp), *old = malloc(ntok * sizeof *old), *ref = malloc(ntok * sizeof *ref);
    float *d = malloc(ntok * sizeof *d);
    for (int t = 0; t < ntok; t++) {
        old[t] = (float)(-0.05 - 3 * ds_rng_uniform(&rng));
        lp[t] = old[t] + (float)(0.6 * (ds_rng_uniform(&rng) - 0.5)); /* ratios from 0.74 to 1.35: every region */
        ref[t] = old[t] + (float)(0.8 * (ds_rng_uniform(&rng) - 0.5));
    }
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_key(&w, "rewards");
    ds_jsonw_arr_begin(&w);
    for (int i = 0; i < NSEQ; i++) ds_jsonw_num(&w, rewards[i]);
    ds_jsonw_arr_end(&w);
    ds_jsonw_kint(&w, "group", 3);
    ds_jsonw_key(&w, "advantages");
    ds_jsonw_arr_begin(&w);
    for (int i = 0; i < NSEQ; i++) ds_jsonw_num(&w, adv[i]);
    ds_jsonw_arr_end(&w);
    ds_jsonw_key(&w, "lengths");
    ds_jsonw_arr_begin(&w);
    for (int i = 0; i < NSEQ; i++) ds_jsonw_int(&w, len[i]);
    ds_jsonw_arr_end(&w);
    write_floats(&w, "logp", lp, ntok);
    write_floats(&w, "old_logp", old, ntok);
    write_floats(&w, "ref_logp", ref, ntok);
    ds_jsonw_key(&w, "runs");
    ds_jsonw_arr_begin(&w);
    const ds_grpo_opts variants[] = {{0.2, 0.2, 0.04, DS_GRPO_AVG_SEQUENCE}, {0.2, 0.28, 0.04, DS_GRPO_AVG_TOKEN},
                                     {0.1, 0.1, 0.0, DS_GRPO_AVG_SEQUENCE}};
    for (int v = 0; v < 3; v++) {
        const ds_grpo_opts *o = &variants[v];
        ds_grpo_stats st;
        ds_grpo_stats_reset(&st);
        for (int i = 0, at = 0; i < NSEQ; at += len[i], i++) {
            ds_grpo_seq s = {.logp = lp + at, .old_logp = old + at, .ref_logp = o->beta ? ref + at : NULL, .n = len[i],
                             .adv = adv[i], .weight = ds_grpo_weight(o->avg, len[i], NSEQ, ntok)};
            ds_grpo_seq_loss(o, &s, d + at, &st);
        }
        ds_jsonw_obj_begin(&w);
        ds_jsonw_knum(&w, "eps_low", o->eps_low);
        ds_jsonw_knum(&w, "eps_high", o->eps_high);
        ds_jsonw_knum(&w, "beta", o->beta);
        ds_jsonw_kstr(&w, "avg", o->avg == DS_GRPO_AVG_TOKEN ? "token" : "sequence");
        ds_jsonw_knum(&w, "loss", st.loss);
        ds_jsonw_knum(&w, "kl_mean", st.kl_sum / st.tokens);
        ds_jsonw_kint(&w, "clip_low", st.clip_low);
        ds_jsonw_kint(&w, "clip_high", st.clip_high);
        write_floats(&w, "dlogp", d, ntok);
        ds_jsonw_obj_end(&w);
    }
    ds_jsonw_arr_end(&w);
    ds_jsonw_obj_end(&w);
    int rc = ds_jsonw_emit_line(&w, f, path);
    ds_jsonw_free(&w);
    fclose(f);
    free(lp), free(old), free(ref), free(d);
    return rc;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "grpo_trace_for_reference")) return trace();
    return tap_run(argc, argv);
}
