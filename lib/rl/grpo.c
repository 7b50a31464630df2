#include "rl/grpo.h"

#include <math.h>
#include <stddef.h>

int ds_grpo_advantages(const double *r, int n_groups, int G, int scale_std, double *adv, double *group_std) {
    int zero = 0;
    for (int g = 0; g < n_groups; g++) {
        const double *x = r + (size_t)g * G;
        double mean = 0, ss = 0;
        for (int i = 0; i < G; i++) mean += x[i];
        mean /= G;
        for (int i = 0; i < G; i++) ss += (x[i] - mean) * (x[i] - mean);
        const double std = G > 1 ? sqrt(ss / (G - 1)) : 0;
        if (group_std) group_std[g] = std;
        const int flat = std <= DS_GRPO_ZERO_STD;
        zero += flat;
        for (int i = 0; i < G; i++) {
            double a = x[i] - mean;
            if (scale_std) a /= std + DS_GRPO_STD_EPS;
            adv[(size_t)g * G + i] = flat ? 0.0 : a;
        }
    }
    return zero;
}

double ds_grpo_kl_k3(double logp, double ref_logp) {
    const double d = ref_logp - logp;
    return exp(d) - d - 1;
}

void ds_grpo_token(const ds_grpo_opts *o, double logp, double old_logp, double ref_logp, double adv,
                   ds_grpo_token_out *out) {
    const double rho = exp(logp - old_logp);
    const double lo = 1 - o->eps_low, hi = 1 + o->eps_high;
    const double clipped = rho < lo ? lo : rho > hi ? hi : rho;
    out->ratio = rho;
    out->clip_low = adv < 0 && rho < lo;
    out->clip_high = adv > 0 && rho > hi;
    const double s = fmin(rho * adv, clipped * adv);
    /* where the clip decides the min the surrogate is constant in logp; elsewhere both terms equal rho*A */
    const double ds = out->clip_low || out->clip_high ? 0.0 : rho * adv;
    out->loss_pg = -s;
    out->kl = 0;
    double dkl = 0;
    if (o->beta != 0) {
        out->kl = ds_grpo_kl_k3(logp, ref_logp);
        dkl = 1 - exp(ref_logp - logp);
    }
    out->loss = out->loss_pg + o->beta * out->kl;
    out->dlogp = -ds + o->beta * dkl;
}

void ds_grpo_stats_reset(ds_grpo_stats *st) {
    *st = (ds_grpo_stats){.ratio_min = INFINITY, .ratio_max = -INFINITY};
}

double ds_grpo_weight(ds_grpo_avg avg, int n, int64_t n_seq, int64_t n_tok) {
    if (n <= 0) return 0;
    if (avg == DS_GRPO_AVG_TOKEN) return n_tok > 0 ? 1.0 / (double)n_tok : 0;
    return n_seq > 0 ? 1.0 / ((double)n_seq * n) : 0;
}

void ds_grpo_seq_loss(const ds_grpo_opts *o, const ds_grpo_seq *s, float *dlogp, ds_grpo_stats *st) {
    for (int t = 0; t < s->n; t++) {
        ds_grpo_token_out k;
        ds_grpo_token(o, s->logp[t], s->old_logp[t], s->ref_logp ? s->ref_logp[t] : 0.0, s->adv, &k);
        dlogp[t] = (float)(k.dlogp * s->weight);
        st->loss += k.loss * s->weight;
        st->loss_pg += k.loss_pg * s->weight;
        st->loss_kl += o->beta * k.kl * s->weight;
        st->kl_sum += k.kl;
        st->tokens++;
        st->clip_low += k.clip_low;
        st->clip_high += k.clip_high;
        if (k.ratio < st->ratio_min) st->ratio_min = k.ratio;
        if (k.ratio > st->ratio_max) st->ratio_max = k.ratio;
        if (s->entropy) {
            st->entropy_sum += s->entropy[t];
            st->entropy_tokens++;
        }
    }
}
