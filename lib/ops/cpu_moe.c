/* CPU ops: MoE routing (scores, group-limited top-k, its backward, the sequence-wise balance loss) and the
 * token movement around the experts (counting sort by expert, gather, weighted combine). */
#include "ops/cpu_internal.h"
#include "ops/cpu_math.h"

#include <math.h>
#include <string.h>

#define PAR_MIN 16384

void ds_cpu_router_scores(float *scores, const float *logits, int n, int E, ds_score_fn fn) {
#pragma omp parallel for schedule(static) if ((size_t)n * E > PAR_MIN)
    for (int t = 0; t < n; t++) {
        const float *z = logits + (size_t)t * E;
        float *s = scores + (size_t)t * E;
        if (fn == DS_SCORE_FN_SIGMOID) {
            for (int e = 0; e < E; e++) s[e] = ds_sigmoidf(z[e]);
        } else {
            float mx = -INFINITY, sum = 0.0f;
            for (int e = 0; e < E; e++) mx = z[e] > mx ? z[e] : mx;
            for (int e = 0; e < E; e++) {
                s[e] = ds_expf(z[e] - mx);
                sum += s[e];
            }
            float inv = 1.0f / sum;
            for (int e = 0; e < E; e++) s[e] *= inv;
        }
    }
}

/* index of the largest v[i] over i < n with allowed[i] (first on ties), or -1 */
static int argmax_allowed(const float *v, const unsigned char *allowed, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (allowed[i] && (best < 0 || v[i] > v[best])) best = i;
    return best;
}

void ds_cpu_moe_topk(int32_t *idx, float *w, const float *scores, const float *bias, const int32_t *keep, int n,
                     const ds_route_params *rp) {
    int E = rp->n_experts, K = rp->top_k;
    int G = (rp->group_rule == DS_GROUP_NONE || rp->n_group <= 1) ? 1 : rp->n_group, gs = E / G;
#pragma omp parallel for schedule(static) if ((size_t)n * E > PAR_MIN)
    for (int t = 0; t < n; t++) {
        if (keep && !keep[t]) { /* not a token: no expert, no weight */
            for (int k = 0; k < K; k++) idx[(size_t)t * K + k] = -1, w[(size_t)t * K + k] = 0.0f;
            continue;
        }
        const float *s = scores + (size_t)t * E;
        float sb[E], gscore[G];
        unsigned char allowed[E], gkeep[G];
        for (int e = 0; e < E; e++) sb[e] = bias ? s[e] + bias[e] : s[e];
        if (G > 1) {
            for (int g = 0; g < G; g++) {
                const float *v = sb + (size_t)g * gs;
                if (rp->group_rule == DS_GROUP_MAX) {
                    float m = v[0];
                    for (int i = 1; i < gs; i++) m = v[i] > m ? v[i] : m;
                    gscore[g] = m;
                } else { /* top-2 sum */
                    float a = -INFINITY, b = -INFINITY;
                    for (int i = 0; i < gs; i++) {
                        if (v[i] > a) {
                            b = a;
                            a = v[i];
                        } else if (v[i] > b) {
                            b = v[i];
                        }
                    }
                    gscore[g] = gs > 1 ? a + b : a;
                }
                gkeep[g] = 1;
            }
            unsigned char chosen[G];
            memset(chosen, 0, (size_t)G);
            for (int r = 0; r < rp->topk_group; r++) {
                int g = argmax_allowed(gscore, gkeep, G);
                chosen[g] = 1;
                gkeep[g] = 0;
            }
            for (int e = 0; e < E; e++) allowed[e] = chosen[e / gs];
        } else {
            memset(allowed, 1, (size_t)E);
        }
        int32_t *it = idx + (size_t)t * K;
        float *wt = w + (size_t)t * K, sum = 0.0f;
        for (int k = 0; k < K; k++) {
            int e = argmax_allowed(sb, allowed, E);
            allowed[e] = 0;
            it[k] = e;
            wt[k] = s[e];
            sum += s[e];
        }
        float f = rp->renorm ? rp->route_scale / (sum + DS_ROUTE_RENORM_EPS) : rp->route_scale;
        for (int k = 0; k < K; k++) wt[k] *= f;
    }
}

/* dz[e] += Jacobian of the score function at s applied to ds, given u = ds ⊙ s: sigmoid' = s (1 - s) and
 * softmax's s_e (ds_e - Σ ds s) both need ds only times s, and u stays bounded where ds alone would not
 * (renormalised weights of scores that all underflowed: ds ~ 1/eps, s = 0) */
static void score_bwd(float *dz, const float *u, const float *s, int E, ds_score_fn fn) {
    if (fn == DS_SCORE_FN_SIGMOID) {
        for (int e = 0; e < E; e++) dz[e] += u[e] * (1.0f - s[e]);
    } else {
        float sum = 0.0f;
        for (int e = 0; e < E; e++) sum += u[e];
        for (int e = 0; e < E; e++) dz[e] += u[e] - s[e] * sum;
    }
}

void ds_cpu_moe_topk_bwd(float *dlogits, const float *dw, const float *scores, const int32_t *idx, int n,
                         const ds_route_params *rp) {
    int E = rp->n_experts, K = rp->top_k;
#pragma omp parallel for schedule(static) if ((size_t)n * E > PAR_MIN)
    for (int t = 0; t < n; t++) {
        const float *s = scores + (size_t)t * E, *g = dw + (size_t)t * K;
        const int32_t *it = idx + (size_t)t * K;
        if (it[0] < 0) continue; /* not routed */
        float u[E];
        memset(u, 0, sizeof u);
        if (rp->renorm) {
            /* w_k = c s_k / Z', Z' = Σ_k s_k + eps: ds_j = c (g_j - r) / Z' with r = Σ_k g_k s_k / Z', so
             * u_j = ds_j s_j = c (g_j - r) (s_j / Z'), where s_j / Z' <= 1 */
            float Z = 0.0f, r = 0.0f;
            for (int k = 0; k < K; k++) Z += s[it[k]];
            Z += DS_ROUTE_RENORM_EPS;
            for (int k = 0; k < K; k++) r += g[k] * (s[it[k]] / Z);
            for (int k = 0; k < K; k++) u[it[k]] += rp->route_scale * (g[k] - r) * (s[it[k]] / Z);
        } else {
            for (int k = 0; k < K; k++) u[it[k]] += rp->route_scale * g[k] * s[it[k]];
        }
        score_bwd(dlogits + (size_t)t * E, u, s, E, rp->score_fn);
    }
}

void ds_cpu_moe_balance(float *loss, float *dlogits, float coef, const float *scores, const int32_t *idx, int B,
                        int T, const ds_route_params *rp) {
    int E = rp->n_experts, K = rp->top_k;
    for (int b = 0; b < B; b++) {
        float f[E];
        memset(f, 0, sizeof f);
        const int32_t *ib = idx + (size_t)b * T * K;
        int Tb = 0; /* the routed tokens: padding and the like are neither counted nor normalised over */
        for (int t = 0; t < T; t++) {
            if (ib[(size_t)t * K] < 0) continue;
            Tb++;
            for (int k = 0; k < K; k++) f[ib[(size_t)t * K + k]] += 1.0f;
        }
        loss[b] = 0.0f;
        if (Tb == 0) continue;
        for (int e = 0; e < E; e++) f[e] *= (float)E / ((float)K * (float)Tb);
        const float *sb = scores + (size_t)b * T * E;
        /* loss: Σ_i f_i P_i = (1/T_b) Σ_t Σ_i f_i s'_{t,i}, summed over the routed tokens in order */
        double acc = 0.0;
        for (int t = 0; t < T; t++) {
            if (ib[(size_t)t * K] < 0) continue;
            const float *s = sb + (size_t)t * E;
            float z = 0.0f, fs = 0.0f;
            for (int e = 0; e < E; e++) z += s[e], fs += f[e] * s[e];
            acc += rp->score_fn == DS_SCORE_FN_SIGMOID ? fs / (z + DS_ROUTE_RENORM_EPS) : fs;
        }
        loss[b] = (float)(acc / Tb);
        if (!dlogits) continue;
#pragma omp parallel for schedule(static) if ((size_t)T * E > PAR_MIN)
        for (int t = 0; t < T; t++) {
            if (ib[(size_t)t * K] < 0) continue;
            const float *s = sb + (size_t)t * E;
            /* g = d(coef loss)/d s'_{t,i} = coef f_i / T_b; through s' = s / z (z = Σ s + eps) it is
             * ds_i = (g_i - Σ_j g_j s'_j) / z, and u = ds ⊙ s = (g_i - Σ_j g_j s'_j) s'_i */
            float u[E];
            for (int e = 0; e < E; e++) u[e] = coef * f[e] / (float)Tb;
            if (rp->score_fn == DS_SCORE_FN_SIGMOID) {
                float z = 0.0f, gsp = 0.0f;
                for (int e = 0; e < E; e++) z += s[e];
                z += DS_ROUTE_RENORM_EPS;
                for (int e = 0; e < E; e++) gsp += u[e] * (s[e] / z);
                for (int e = 0; e < E; e++) u[e] = (u[e] - gsp) * (s[e] / z);
            } else {
                for (int e = 0; e < E; e++) u[e] *= s[e];
            }
            score_bwd(dlogits + ((size_t)b * T + t) * E, u, s, E, rp->score_fn);
        }
    }
}

void ds_cpu_moe_bucket(int32_t *off, int32_t *order, int32_t *where, const int32_t *idx, int n, int K, int E) {
    size_t m = (size_t)n * K;
    memset(off, 0, sizeof(int32_t) * (size_t)(E + 1));
    for (size_t s = 0; s < m; s++)
        if (idx[s] >= 0 && idx[s] < E) off[idx[s] + 1]++;
    for (int e = 0; e < E; e++) off[e + 1] += off[e];
    int32_t cursor[E], left = off[E]; /* stable: slots of one expert keep their order */
    memcpy(cursor, off, sizeof(int32_t) * (size_t)E);
    for (size_t s = 0; s < m; s++) {
        if (idx[s] < 0 || idx[s] >= E) {
            where[s] = -1;
            order[left++] = (int32_t)s; /* after the sorted ones, as the device's radix sort leaves them */
            continue;
        }
        int32_t r = cursor[idx[s]]++;
        order[r] = (int32_t)s;
        where[s] = r;
    }
}

void ds_cpu_moe_gather(float *dst, const float *src, const int32_t *order, int m, int K, int d) {
#pragma omp parallel for schedule(static) if ((size_t)m * d > PAR_MIN)
    for (int r = 0; r < m; r++) memcpy(dst + (size_t)r * d, src + (size_t)(order[r] / K) * d, sizeof(float) * d);
}

void ds_cpu_moe_gather_bwd(float *dsrc, const float *ddst, const int32_t *where, int n, int K, int d) {
#pragma omp parallel for schedule(static) if ((size_t)n * K * d > PAR_MIN)
    for (int t = 0; t < n; t++) {
        float *y = dsrc + (size_t)t * d;
        for (int k = 0; k < K; k++) {
            if (where[(size_t)t * K + k] < 0) continue;
            const float *x = ddst + (size_t)where[(size_t)t * K + k] * d;
#pragma omp simd
            for (int j = 0; j < d; j++) y[j] += x[j];
        }
    }
}

void ds_cpu_moe_combine(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d) {
#pragma omp parallel for schedule(static) if ((size_t)n * K * d > PAR_MIN)
    for (int t = 0; t < n; t++) {
        float *yt = y + (size_t)t * d;
        for (int k = 0; k < K; k++) {
            size_t s = (size_t)t * K + k;
            if (where[s] < 0) continue;
            const float *x = ye + (size_t)where[s] * d;
            float a = w[s];
#pragma omp simd
            for (int j = 0; j < d; j++) yt[j] += a * x[j];
        }
    }
}

void ds_cpu_moe_scale_rows(float *x, const float *w, const int32_t *order, int m, int d) {
#pragma omp parallel for schedule(static) if ((size_t)m * d > PAR_MIN)
    for (int r = 0; r < m; r++) {
        float a = w[order[r]], *xr = x + (size_t)r * d;
#pragma omp simd
        for (int j = 0; j < d; j++) xr[j] *= a;
    }
}

void ds_cpu_moe_combine_bwd_row(float *dact, float *dw, const float *z, const float *act, float w, int I) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < I; j++) dot += z[j] * act[j];
    *dw = dot;
#pragma omp simd
    for (int j = 0; j < I; j++) dact[j] = w * z[j];
}

void ds_cpu_moe_combine_bwd(float *dact, float *dw, const float *z, const float *act, const float *w,
                            const int32_t *order, int m, int I) {
#pragma omp parallel for schedule(static) if ((size_t)m * I > PAR_MIN)
    for (int r = 0; r < m; r++)
        ds_cpu_moe_combine_bwd_row(dact + (size_t)r * I, dw + order[r], z + (size_t)r * I, act + (size_t)r * I,
                                   w[order[r]], I);
}
