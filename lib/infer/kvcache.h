/* kvcache.h — the MLA latent KV cache used for decoding.
 *
 * Owns: the cache layout and its size accounting. Per layer (main layers first, then one per MTP
 * module) and per token it holds only what absorbed MLA attention needs (spec 3.5): the normalised
 * KV latent c_KV (kv_lora_rank floats) followed by the RoPE-rotated shared key k_pe
 * (qk_rope_head_dim floats). Layout per layer: [slots][max_len][kv_lora_rank + qk_rope_head_dim],
 * fp32, slot-major so one sequence's history is contiguous. A slot holds one sequence; its
 * length is the number of positions written (the engine advances it after verification, so
 * speculative positions beyond it are simply overwritten).
 *
 * The layers live in the memory of the op backend the engine runs on (device memory on a GPU; the
 * per-slot lengths stay on the host). On the CPU, memory is reserved up front (slots x max_len) but only
 * touched pages become resident, so a long context costs what the sequences actually use; a GPU
 * allocates the whole reservation.
 */
#ifndef DS_INFER_KVCACHE_H
#define DS_INFER_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "io/config.h"
#include "ops/ops.h"

typedef struct {
    int n_layers; /* num_hidden_layers + MTP modules cached */
    int n_main;   /* num_hidden_layers */
    int slots, max_len;
    int rank, rope, width; /* kv_lora_rank, qk_rope_head_dim, their sum */
    float **layer;         /* [n_layers] -> [slots * max_len * width], backend memory */
    int32_t *len;          /* [slots] positions held (host) */
    const ds_ops *ops;     /* the backend holding the layers */
} ds_kvcache;

/* mtp_layers: how many MTP modules get a cache layer (0 without speculation). ops: the backend whose
 * memory holds the layers (NULL: the CPU). */
int ds_kvcache_init(ds_kvcache *c, const ds_config *cfg, int slots, int max_len, int mtp_layers, const ds_ops *ops);
void ds_kvcache_free(ds_kvcache *c);

/* Row of (layer, slot, pos): width floats [c_KV | k_pe] (backend memory). */
static inline float *ds_kvcache_row(const ds_kvcache *c, int layer, int slot, int pos) {
    return c->layer[layer] + ((size_t)slot * (size_t)c->max_len + (size_t)pos) * (size_t)c->width;
}

/* Sizes per token of context, in bytes, for a given element size (4 = fp32 as held here, 2 = bf16
 * as a GPU cache would hold it), over the main model's layers. */
typedef struct {
    double mla;      /* (kv_lora_rank + qk_rope_head_dim) * layers * elem */
    double mla_full; /* MLA with K and V expanded per head, as the naive path caches them:
                        heads * (qk_nope + qk_rope + v_head) * layers * elem */
    double mha;      /* standard multi-head attention with the same heads: K and V of heads x
                        v_head_dim each, 2 * heads * v_head_dim * layers * elem */
} ds_kv_bytes;

void ds_kvcache_bytes_per_token(const ds_config *cfg, size_t elem, ds_kv_bytes *out);

#endif
