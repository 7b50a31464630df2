/* forward.h — the inference forward pass of DeepSeek-V3 over the MLA latent KV cache.
 *
 * Owns: running the network on a ragged batch of new tokens, each belonging to a cache slot (one
 * sequence) at a position, so one call does prefill, plain decoding and speculative verification
 * alike; the absorbed MLA attention over the latent cache (spec 3.5) and the expanded ("naive")
 * form for prompts (spec 3.4); logits and final hidden states for chosen rows; and the MTP module's
 * forward for drafting (spec 6), with its own cache layer.
 *
 * Every numeric step goes through the op layer (ops/ops.h), with the same building blocks as the
 * training forward (lib/model): RMSNorm, RoPE/YaRN tables, routing, grouped expert GEMMs.
 *
 * Call contract: within one call, the tokens of a slot have consecutive positions; the cache must
 * already hold positions [0, first position) of every slot touched. A call writes the latents of its
 * tokens into the cache and each token attends to positions [0, its own position] of its slot, so the
 * new tokens of a slot see each other causally. The cache's per-slot lengths are not changed here
 * (the caller decides what is kept, e.g. after verification).
 */
#ifndef DS_INFER_FORWARD_H
#define DS_INFER_FORWARD_H

#include <stdint.h>

#include "infer/kvcache.h"
#include "io/config.h"
#include "model/model.h"
#include "ops/ops.h"

/* The weights the forward reads (borrowed; for a ds_model see ds_infer_model_of). */
typedef struct {
    const ds_config *cfg;
    const ds_weights *w;
    const float *const *expert_bias; /* [num_hidden_layers + num_nextn_predict_layers]; NULL for dense layers */
    int mtp_depth;                   /* MTP modules with weights (0: none) */
} ds_infer_model;

/* The weights of a ds_model (borrowed). bias: storage for num_hidden_layers + num_nextn_predict_layers
 * pointers, referenced by *out. */
void ds_infer_model_of(ds_model *m, ds_infer_model *out, const float **bias);

typedef enum {
    DS_ATTN_ABSORBED = 0, /* scores against the cached latent with W_UK folded into the query (decode form) */
    DS_ATTN_NAIVE = 1,    /* per-head keys and values expanded from the latent (training form) */
} ds_attn_form;

typedef struct {
    int max_tokens; /* rows per call (prefill chunk, or batch x tokens per step) */
    int slots;      /* sequences held at once */
    int max_len;    /* context: positions per slot */
    int max_out;    /* rows a call may ask logits for; 0: min(max_tokens, 2 * slots) (every slot's
                       verified token and draft), so the logits buffer need not scale with the prefill chunk */
    int mtp;        /* 1: prepare the first MTP module (its cache layer and buffers) */
    double serial_flops; /* a step estimated below this many FLOPs runs on one thread (0: never). Every
                            parallel region wakes and joins all threads; on a small decode step that costs
                            more than the arithmetic, and far more on a busy machine. */
    /* The Linear projections' GEMMs (q_a, q_b / q, kv_a, o, dense FFN, shared and routed experts), e.g.
     * W8A8 FP8 (fp8/linear.h ds_fp8_linear_ops: weights in 128x128 blocks, activations in 1x128 tiles);
     * NULL: the backend's. kv_b's products (absorbed or expanded), the router, the head and eh_proj stay
     * on the backend, as in DeepSeek's inference. Copied; must share the backend's memory. */
    const ds_ops *linear_ops;
} ds_infer_opts;

typedef struct ds_infer ds_infer;

int ds_infer_create(ds_infer **out, const ds_infer_model *m, const ds_ops *ops, const ds_infer_opts *o);
void ds_infer_free(ds_infer *e);
ds_kvcache *ds_infer_cache(ds_infer *e);
const ds_config *ds_infer_config(const ds_infer *e);

/* One forward over n tokens (host arrays). form applies to the attention of every token of the call;
 * DS_ATTN_NAIVE requires every slot's tokens in the call to start at position 0. Outputs (host memory,
 * either may be NULL): logits [n_out, V] for the rows listed in out_rows (NULL: rows 0..n_out-1;
 * n_out <= ds_infer_max_out), and the final hidden states of every row [n, D] (the input the MTP
 * module takes). */
typedef struct {
    int n;
    const int32_t *tok, *slot, *pos;
    ds_attn_form form;
    int n_out;
    const int32_t *out_rows;
    float *logits;
    float *hidden;
} ds_infer_step;

int ds_infer_forward(ds_infer *e, const ds_infer_step *s);

/* MTP module 1 over n rows: row i combines the main model's hidden state h[i] (at position pos[i]) with
 * the embedding of the token that follows it, next_tok[i]; its attention uses the MTP cache layer of
 * slot[i] up to pos[i]. Writes logits [n_out, V] (host) for the rows in out_rows (NULL: 0..n_out-1),
 * predicting the token after next_tok; rows without logits only fill the MTP cache. */
int ds_infer_mtp(ds_infer *e, int n, const int32_t *next_tok, const float *h, const int32_t *slot,
                 const int32_t *pos, int n_out, const int32_t *out_rows, float *logits);

/* The most rows a call may ask logits for (opts.max_out resolved). */
int ds_infer_max_out(const ds_infer *e);

/* Expert parallelism (infer/epinfer.h, borrowed; NULL: every expert here): the routed experts of every
 * MoE layer go through ep, and on rank 0 each forward is announced to the other ranks first. */
struct ds_infer_ep;
void ds_infer_set_ep(ds_infer *e, struct ds_infer_ep *ep);

/* Count the router's choices of every forward into loads[l * n_routed_experts + expert] (+1 per token and
 * chosen expert; MTP layers after the main ones), on the CPU; NULL stops. Borrowed. */
void ds_infer_count_loads(ds_infer *e, double *loads);

/* Change opts.serial_flops of a live engine. */
void ds_infer_set_serial_flops(ds_infer *e, double flops);

/* Bytes of scratch held by the engine (activations; the cache is accounted separately). */
size_t ds_infer_scratch_bytes(const ds_infer *e);

#endif
