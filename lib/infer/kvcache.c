#include "infer/kvcache.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

int ds_kvcache_init(ds_kvcache *c, const ds_config *cfg, int slots, int max_len, int mtp_layers, const ds_ops *ops) {
    memset(c, 0, sizeof *c);
    c->ops = ops && strcmp(ops->name, "cpu") ? ops : NULL; /* NULL: host memory from calloc */
    if (slots <= 0 || max_len <= 0)
        return ds_fail(DS_ERR, "kv cache: %d slots of %d tokens: both must be positive", slots, max_len);
    if (mtp_layers < 0 || mtp_layers > cfg->num_nextn_predict_layers)
        return ds_fail(DS_ERR, "kv cache: %d MTP layers requested, the model has %d", mtp_layers,
                       cfg->num_nextn_predict_layers);
    c->n_main = cfg->num_hidden_layers;
    c->n_layers = c->n_main + mtp_layers;
    c->slots = slots;
    c->max_len = max_len;
    c->rank = cfg->kv_lora_rank;
    c->rope = cfg->qk_rope_head_dim;
    c->width = c->rank + c->rope;
    const size_t per_layer = (size_t)slots * (size_t)max_len * (size_t)c->width;
    if (per_layer / (size_t)slots / (size_t)max_len != (size_t)c->width || per_layer > (SIZE_MAX >> 3))
        return ds_fail(DS_ERR, "kv cache: %d slots x %d tokens x %d floats: too large", slots, max_len, c->width);
    c->layer = calloc((size_t)c->n_layers, sizeof *c->layer);
    c->len = calloc((size_t)slots, sizeof *c->len);
    if (!c->layer || !c->len) goto oom;
    for (int l = 0; l < c->n_layers; l++) {
        /* calloc of a large block maps zero pages lazily: untouched context costs no memory */
        c->layer[l] = c->ops ? c->ops->alloc(per_layer * sizeof(float)) : calloc(per_layer, sizeof(float));
        if (!c->layer[l]) goto oom;
        if (c->ops) c->ops->zero(c->layer[l], per_layer * sizeof(float));
    }
    return DS_OK;
oom:
    ds_kvcache_free(c);
    return ds_fail(DS_ERR, "kv cache: out of memory for %d slots x %d tokens x %d layers", slots, max_len,
                   cfg->num_hidden_layers + mtp_layers);
}

void ds_kvcache_free(ds_kvcache *c) {
    if (c->layer)
        for (int l = 0; l < c->n_layers; l++) {
            if (c->ops) c->ops->free(c->layer[l]);
            else free(c->layer[l]);
        }
    free(c->layer);
    free(c->len);
    memset(c, 0, sizeof *c);
}

void ds_kvcache_bytes_per_token(const ds_config *cfg, size_t elem, ds_kv_bytes *out) {
    const double L = cfg->num_hidden_layers, H = cfg->num_attention_heads, e = (double)elem;
    out->mla = (cfg->kv_lora_rank + cfg->qk_rope_head_dim) * L * e;
    out->mla_full = H * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim + cfg->v_head_dim) * L * e;
    out->mha = 2 * H * cfg->v_head_dim * L * e;
}
