#include "train/flops.h"

#include "core/log.h"

#include <cblas.h>
#include <stdlib.h>

void ds_train_flops(const ds_config *c, int seq_len, int mtp_depth, ds_flops *out) {
    ds_param_counts p;
    ds_config_counts(c, &p);
    const double d = c->hidden_size;
    const double moe_active = (double)(c->num_experts_per_tok + c->n_shared_experts) * (double)p.expert + (double)p.router;
    out->params_main = (double)(p.activated - p.embedding);
    out->params_mtp = 0;
    for (int k = 0; k < mtp_depth; k++) {
        int moe = ds_cfg_is_moe_layer(c, c->num_hidden_layers + k);
        out->params_mtp += 3 * d + 2 * d * d + (double)p.attention_per_layer + (double)p.layer_norms +
                           (moe ? moe_active : (double)p.dense_ffn_per_layer) + (double)p.head;
    }
    out->attention = 6.0 * (c->num_hidden_layers + mtp_depth) * c->num_attention_heads * (double)seq_len *
                     (c->qk_nope_head_dim + c->qk_rope_head_dim + c->v_head_dim);
    out->total = 6 * (out->params_main + out->params_mtp) + out->attention;
}

double ds_measure_peak_flops(double seconds) {
    enum { N = 1024 };
    float *a = malloc(sizeof(float) * N * N), *b = malloc(sizeof(float) * N * N), *cm = malloc(sizeof(float) * N * N);
    if (!a || !b || !cm) {
        free(a), free(b), free(cm);
        return 0;
    }
    for (size_t i = 0; i < (size_t)N * N; i++) a[i] = b[i] = (float)(i % 7) * 0.1f, cm[i] = 0;
    double best = 0, t_end = ds_now() + seconds;
    do {
        double t0 = ds_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, cm, N);
        double dt = ds_now() - t0;
        if (dt > 0 && 2.0 * N * N * N / dt > best) best = 2.0 * N * N * N / dt;
    } while (ds_now() < t_end);
    free(a), free(b), free(cm);
    return best;
}
