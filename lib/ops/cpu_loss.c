/* CPU ops: log-softmax at the targets (the fused head's loss core) and its backward. */
#include "ops/cpu_internal.h"
#include "ops/cpu_math.h"

#include <math.h>

void ds_cpu_logsoftmax_fwd(float *logp, float *lse, float *ent, const float *logits, const int32_t *tgt, int n,
                           int V) {
#pragma omp parallel for schedule(static) if ((size_t)n * V > 65536)
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * V;
        float mx = -INFINITY;
        for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
        float s = 0.0f, sz = 0.0f;
#pragma omp simd reduction(+ : s, sz)
        for (int j = 0; j < V; j++) {
            float e = ds_expf(z[j] - mx);
            s += e;
            sz += e * (z[j] - mx);
        }
        float l = mx + logf(s);
        lse[i] = l;
        logp[i] = tgt[i] >= 0 ? z[tgt[i]] - l : 0.0f;
        /* H = -Σ p log p = log s - Σ e (z - mx) / s */
        if (ent) ent[i] = logf(s) - sz / s;
    }
}

void ds_cpu_logsoftmax_bwd(float *dlogits, const float *logits, const float *lse, const int32_t *tgt,
                           const float *dlogp, int n, int V) {
#pragma omp parallel for schedule(static) if ((size_t)n * V > 65536)
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * V;
        float *dz = dlogits + (size_t)i * V;
        float g = tgt[i] >= 0 ? dlogp[i] : 0.0f;
        if (g == 0.0f) {
            for (int j = 0; j < V; j++) dz[j] = 0.0f;
            continue;
        }
        float l = lse[i];
#pragma omp simd
        for (int j = 0; j < V; j++) dz[j] = -g * ds_expf(z[j] - l);
        dz[tgt[i]] += g;
    }
}
