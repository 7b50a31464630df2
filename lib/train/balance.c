#include "train/balance.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

int ds_balance_init(ds_balance *b, int n_layers, int n_experts) {
    memset(b, 0, sizeof *b);
    if (n_layers < 0 || n_experts < 0) return ds_fail(DS_ERR, "balance: bad sizes %d x %d", n_layers, n_experts);
    b->n_layers = n_layers;
    b->n_experts = n_experts;
    b->count = calloc((size_t)n_layers * n_experts + 1, sizeof *b->count);
    if (!b->count) return ds_fail(DS_ERR, "out of memory: expert load counts");
    return 0;
}

void ds_balance_free(ds_balance *b) {
    free(b->count);
    memset(b, 0, sizeof *b);
}

void ds_balance_reset(ds_balance *b) { memset(b->count, 0, (size_t)b->n_layers * b->n_experts * sizeof *b->count); }

void ds_balance_add(ds_balance *b, const int32_t *load) {
    for (size_t i = 0; i < (size_t)b->n_layers * b->n_experts; i++) b->count[i] += load[i];
}

void ds_balance_update_bias(const ds_balance *b, float *const *bias, double gamma) {
    if (gamma == 0) return;
    const float g = (float)gamma;
    for (int l = 0; l < b->n_layers; l++) {
        if (!bias[l]) continue;
        const int64_t *c = b->count + (size_t)l * b->n_experts;
        int64_t total = 0;
        for (int i = 0; i < b->n_experts; i++) total += c[i];
        /* compare n*c_i with the total instead of c_i with a fractional mean: exact in integers */
        for (int i = 0; i < b->n_experts; i++) {
            int64_t d = total - (int64_t)b->n_experts * c[i];
            bias[l][i] += d > 0 ? g : d < 0 ? -g : 0.0f;
        }
    }
}

void ds_balance_layer_stats(const ds_balance *b, int layer, ds_balance_stats *out) {
    const int64_t *c = b->count + (size_t)layer * b->n_experts;
    int64_t total = 0, mn = b->n_experts ? c[0] : 0, mx = mn;
    for (int i = 0; i < b->n_experts; i++) {
        total += c[i];
        if (c[i] < mn) mn = c[i];
        if (c[i] > mx) mx = c[i];
    }
    out->min_load = mn;
    out->max_load = mx;
    out->max_vio = total > 0 ? (double)mx * b->n_experts / (double)total - 1 : 0;
}
