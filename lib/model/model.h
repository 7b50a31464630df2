/* model.h — the DeepSeek-V3 network: parameters, forward, backward, losses.
 *
 * Owns: the parameter layout (one contiguous fp32 buffer with Hugging Face tensor names, gradients in
 * the same layout, the non-trainable expert biases in a separate buffer), weight init, and the
 * training forward/backward of the whole network including MTP and the sequence-wise balance loss.
 * The network is written against the op layer (ops/), so the same code runs on both backends.
 *
 * Loss interface: the forward pass produces per-token log-probabilities of the targets (main head
 * and each MTP module); the backward pass takes d(loss)/d(logprob) per token. Cross-entropy, masked
 * SFT loss and GRPO's surrogate are then all the caller's choice of coefficients:
 *   pretrain:  dlogp[t] = -1/N for every valid target;  MTP: dmtp[k][t] = -lambda/(D*N)
 *   SFT:       the same over assistant tokens only (targets -1 elsewhere)
 *   GRPO:      dlogp[t] = d(surrogate + KL)/d(logp_t)
 * Spec: ../shared/spec/deepseek-v3.md sections 2-8.
 */
#ifndef DS_MODEL_MODEL_H
#define DS_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "dist/comm.h"
#include "io/config.h"

enum { DS_RESIDENT_FP8 = 1, DS_RESIDENT_BF16 = 2 }; /* ds_param.resident */

typedef enum {
    DS_PARAM_MATRIX = 0, /* linear weights: weight decay applies */
    DS_PARAM_EMBED,      /* embedding table */
    DS_PARAM_HEAD,       /* lm_head */
    DS_PARAM_NORM,       /* RMSNorm gains: no weight decay */
    DS_PARAM_ROUTER,     /* MoE gate weight */
} ds_param_kind;

typedef struct {
    char name[112]; /* HF name, e.g. "model.layers.3.mlp.experts.7.up_proj.weight" */
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats, into params/grads */
    size_t numel;
    ds_param_kind kind;
    int layer;  /* -1 for embedding, final norm, head */
    int expert; /* routed expert index, or -1 */
    int resident; /* resident (DS_RESIDENT_FP8: opts.fp8_resident, DS_RESIDENT_BF16: opts.bf16_resident): its
                     floats are an address range, never touched; 0: an ordinary float parameter */
} ds_param;

/* Pointers into the parameter (or gradient) buffer for one decoder layer. NULL where absent. */
typedef struct ds_layer_w {
    float *attn_norm;                    /* input_layernorm [D] */
    float *q_a, *q_a_norm, *q_b;         /* q_lora_rank > 0: [Rq, D], [Rq], [H*(Dn+Dr), Rq] */
    float *q;                            /* q_lora_rank == 0: [H*(Dn+Dr), D] */
    float *kv_a, *kv_a_norm, *kv_b;      /* [Rkv+Dr, D], [Rkv], [H*(Dn+Dv), Rkv] */
    float *o;                            /* [D, H*Dv] */
    float *ffn_norm;                     /* post_attention_layernorm [D] */
    float *w_gate, *w_up, *w_down;       /* dense FFN: [I, D], [I, D], [D, I] */
    float *router;                       /* MoE gate.weight [E, D] */
    float *exp_gate, *exp_up, *exp_down; /* routed experts, contiguous: [E][Ie, D], [E][Ie, D], [E][D, Ie] */
    float *sh_gate, *sh_up, *sh_down;    /* shared experts: [Is, D], [Is, D], [D, Is], Is = n_shared*Ie */
    float *enorm, *hnorm, *eh_proj;      /* MTP module: [D], [D], [D, 2D] (columns: [enorm(emb) ; hnorm(h)]) */
    float *head_norm;                    /* MTP module: shared_head.norm [D] */
} ds_layer_w;

typedef struct {
    float *embed;      /* [V, D] */
    float *final_norm; /* [D] */
    float *head;       /* lm_head [V, D] */
    ds_layer_w *layer; /* num_hidden_layers + num_nextn_predict_layers entries (MTP modules last) */
} ds_weights;

/* One training micro-batch: B sequences of T tokens. */
typedef struct {
    int B, T;
    const int32_t *tokens;  /* [B*T] input ids */
    const int32_t *targets; /* [B*T] next-token ids; -1 = no prediction at this position */
    const int32_t *pos;     /* [B*T] RoPE positions, or NULL for 0..T-1 in every row */
    const int32_t *seg;     /* [B*T] sample ids for sample masking (attention only within equal ids,
                               positions restart per sample when pos is NULL), or NULL for plain causal */
    const int32_t *len;     /* [B] tokens in each row: positions t >= len[b] are padding (SFT, RL rows), which
                               are not routed to experts and count in no routing statistic (balance loss,
                               expert loads), and MTP modules leave out the positions whose next-k token is
                               padding; NULL: no padding. Padding still runs through everything else (its
                               outputs are ignored: give it target -1) */
} ds_batch;

/* Outputs of a training forward pass (buffers owned by the model, valid until the next forward). */
typedef struct {
    const float *logp;          /* [B*T] log p(target) from the main head; 0 where target = -1 */
    const float *mtp_logp;      /* [D][B*T]: module k (1-based) at position t of row b scores targets[b][t+k],
                                   the token k+1 places after t, from h^{k-1}_t and Emb(tokens[b][t+k]);
                                   0 where t+k >= T, that target is -1, or seg[t+k] != seg[t] */
    const float *entropy;       /* [B*T] entropy of the main head's distribution (when asked), else NULL */
    const float *logits;        /* [B*T, V] main head logits when opts.keep_logits, else NULL (valid until
                                   the next forward) */
    double bal_loss;            /* alpha * sum_layers mean_seq sum_i f_i P_i (0 when alpha = 0) */
    const int32_t *expert_load; /* [n_moe_layers][n_routed_experts] tokens routed this forward */
    int n_moe_layers;
} ds_fwd_out;

/* What a pipeline stage's model holds (ds_model_opts.hold). */
typedef struct {
    int on, l0[2], l1[2], embed, head;
} ds_model_hold;

typedef struct {
    const struct ds_ops *ops; /* backend (ops/ops.h); NULL: the CPU */
    /* GEMMs of the decoder layers' Linear projections (q_a, q_b / q, kv_a, kv_b, o, dense FFN, shared and
     * routed experts: Fprop, Dgrad and Wgrad), e.g. FP8 (fp8/linear.h ds_fp8_linear_ops); NULL: ops. Must
     * share ops' memory. The embedding, output head, MoE router, MTP eh_proj, norms and the attention core
     * always run on ops. The table is copied. */
    const struct ds_ops *linear_ops;
    int kv_b_on_ops;         /* kv_b's products on ops even with linear_ops (W8A8 inference: DeepSeek's
                                absorbed attention multiplies by the dequantized kv_b weight) */
    int max_batch, max_seq;  /* activation arena is sized for B*T <= max_batch*max_seq */
    int train;               /* keep activations and allocate gradients */
    /* V3's low-precision storage and communication in the MoE layers (section 3.3.3, model/moe_fp8.h; train
     * only, with an FP8 linear_ops): moe_cache_fp8 keeps the SwiGLU inputs of the routed and shared experts
     * (their gate/up outputs) as E4M3 in 1x128 tiles for the backward, which recomputes SwiGLU from them;
     * moe_dispatch_fp8 quantizes the routed experts' inputs and, in the backward, the gradients before the
     * down projection to E4M3 with power-of-two 1x128 scales where the dispatch is (one process: at the
     * same point), runs the GEMMs that consume them on linear_ops_pow2 (fp8/linear.h
     * ds_fp8_linear_ops_pow2; same memory as ops), and under expert parallelism sends the FP8 codes and
     * exponents and combines (forward and backward) in bf16. */
    int moe_cache_fp8, moe_dispatch_fp8;
    const struct ds_ops *linear_ops_pow2;
    int recompute;           /* recompute RMSNorm outputs and MLA up-projections in backward (V3; default 1) */
    int want_entropy;        /* compute per-token entropy in forward */
    int keep_logits;         /* keep the main head's [B*T, V] logits (also spares the backward their
                                recomputation); off: they exist only a chunk of rows at a time */
    double balance_alpha;    /* complementary sequence-wise balance loss weight (0 = off) */
    /* Training: the attention output (o_proj's input, which attention's backward reads too) kept for the
     * backward in E5M6 with power-of-two 1x128 tile scales (fp8/e5m6.h; V3's FP8 recipe) instead of float32:
     * 12 bits + 1/128 byte an element. The o_proj Fprop, its Wgrad and attention's backward read the
     * dequantized values. o_proj's GEMMs then run on o_proj_ops (NULL: the Linear table), which must take
     * Wgrad's input as given (FP8: fp8/linear.h ds_fp8_linear_ops_stored). The CPU backend only; ignored
     * without train. */
    int attn_out_e5m6;
    const struct ds_ops *o_proj_ops;
    /* CPU inference: the Linear weights that the Linear GEMMs take (q_a, q_b / q, kv_a, o, dense and expert
     * FFN matrices) and that fp8_tensors holds as F8_E4M3 with block scales stay FP8 there (fp8/resident.h:
     * the set must outlive the model); their fp32 range is never written, the Linear GEMMs are
     * ds_fp8_resident_ops (linear_ops must be NULL), and the model cannot be saved or trained. */
    int fp8_resident;
    const struct ds_st_set *fp8_tensors;
    /* CPU inference: every other 2-D weight (Linear projections with kv_b and eh_proj, experts, router,
     * embedding, head) held as bf16 (fp8/resident.h ds_bf16_resident_add: rounded to nearest even, or borrowed
     * from fp8_tensors' mapping where it stores BF16; fp8_tensors may then be the checkpoint without
     * fp8_resident); norms and expert biases stay float32. Every GEMM and the embedding go through the
     * resident table (ds_model_ops returns it; linear_ops must be NULL); the model cannot be saved or trained. */
    int bf16_resident;
    /* Expert parallelism (docs/DESIGN.md "Expert parallelism"): with ep_size N > 1 this model holds only
     * the routed experts [ep_rank*E/N, (ep_rank+1)*E/N) of every MoE layer, laid out after every other
     * tensor (ds_model_expert_range), and each MoE layer sends its tokens to the ranks of ep_comm that
     * hold their experts and back (lib/dist/ep.h), forward and backward. Every rank of ep_comm must make
     * the same sequence of forward/backward calls (ds_model_ep_idle_* for a rank without a micro-batch),
     * with the same max_batch x max_seq. The CPU backend only. ep_comm may be NULL for ds_model_plan. */
    int ep_size, ep_rank;
    const ds_comm *ep_comm;
    const int *ep_node;      /* [ep_size] the node of each EP rank, or NULL: one node */
    int ep_two_hop;          /* exchange in two hops, across nodes then inside them (dist/ep.h; bit-identical) */
    /* Pipeline stages (docs/DESIGN.md "Pipeline memory"): with hold.on the model holds (allocates, lists in
     * its table, binds) only the decoder layers [hold.l0[c], hold.l1[c]) of each chunk c (l0 == l1: none),
     * the embedding when hold.embed, and the final norm, head and MTP modules when hold.head. The others'
     * weight pointers are NULL: only the held layers may run. It composes with expert parallelism: a
     * routed expert is held iff its layer is and it is in the rank's range. hold.on 0: every tensor. */
    ds_model_hold hold;
} ds_model_opts;

typedef struct ds_model ds_model;

/* Create a model for cfg (copied). Parameters are allocated and zeroed; call ds_model_init or load. */
int ds_model_create(ds_model **out, const ds_config *cfg, const ds_model_opts *opts);
void ds_model_free(ds_model *m);

const ds_config *ds_model_config(const ds_model *m);
/* The backend the model runs on (opts.ops, or the CPU): where params, grads and forward outputs live. */
const struct ds_ops *ds_model_ops(const ds_model *m);
/* Parameter table, buffers and weight pointers. */
const ds_param *ds_model_params_info(const ds_model *m, int *count);
/* The same table for a config without building the model (no weights allocated: the 671B shape costs
 * the table only). *params is malloc'd (free it); the offsets are those ds_model_create would use. */
int ds_model_layout(const ds_config *cfg, ds_param **params, int *count);
/* Whether this model holds the tensors of `layer` (-1: embed = 1 the embedding, else the final norm and
 * head), and of the tensor called name (HF name; names of no layer count as held). See opts.hold. */
int ds_model_holds(const ds_model *m, int layer, int embed);
int ds_model_holds_name(const ds_model *m, const char *name);
float *ds_model_params(ds_model *m);
float *ds_model_grads(ds_model *m); /* NULL unless opts.train */
size_t ds_model_num_params(const ds_model *m);
const ds_weights *ds_model_weights(const ds_model *m);
const ds_weights *ds_model_grad_weights(const ds_model *m);
/* e_score_correction_bias of MoE layer l (NULL for dense layers): [n_routed_experts], fp32, no gradient. */
float *ds_model_expert_bias(ds_model *m, int layer);
/* The Linear layers' GEMM table (opts.linear_ops, the FP8-resident table, or the backend's). */
const struct ds_ops *ds_model_linear_ops(const ds_model *m);
/* What the weights hold in memory: fp32 bytes written (parameters and expert biases) and resident bytes
 * (FP8 codes, mapped from the checkpoint, and scales; bf16 weights); known from ds_model_create on. */
void ds_model_weight_memory(const ds_model *m, double *fp32_bytes, double *fp8_bytes);

/* What the weights take on the backend, as ds_model_create lays them out. */
typedef struct {
    double fp32;     /* float parameters (everything not FP8-resident) and expert biases */
    double bf16;     /* the backend's bf16 copy of the float parameters (the CUDA backend's bf16 GEMMs), if asked */
    double fp8;      /* FP8-resident codes and block scales: mapped on the host; on a GPU, device memory with
                        the scale rows padded as cuBLASLt reads them (fp8/resident.h) */
    double bf16w;    /* bf16-resident weights (opts.bf16_resident), 2 bytes an element */
    double bf16_mapped; /* of them, borrowed from a BF16 checkpoint's mapping (the rest rounded into memory) */
    double expanded; /* fp32 + bf16 with every weight expanded: the same load without FP8 residency */
    int resident;    /* FP8-resident tensors */
} ds_weight_bytes;
void ds_model_weight_bytes(const ds_model *m, int bf16_copy, ds_weight_bytes *out);
/* The same for cfg's model loaded from s with opts.fp8_resident, without building it (no GPU needed): on a
 * device (device = 1) or on the host. What ds-generate reports before loading. */
int ds_model_weight_plan(const ds_config *cfg, const struct ds_st_set *s, int device, int bf16_copy,
                         ds_weight_bytes *out);

/* Whether MTP modules are active (0 when the checkpoint had no MTP tensors). */
int ds_model_mtp_depth(const ds_model *m);

/* Normal init with std (0.006 by default, cfg->ds_init_std), norms to 1, expert biases to 0.
 * Deterministic in seed (each tensor its own Philox stream keyed by its name). */
int ds_model_init(ds_model *m, uint64_t seed);

/* Training pass. forward keeps what backward needs; backward ACCUMULATES into the gradients
 * (call ds_model_zero_grad at the start of each optimizer step). dlogp: [B*T]; dmtp: [D][B*T] or NULL. */
int ds_model_forward(ds_model *m, const ds_batch *b, ds_fwd_out *out);
int ds_model_backward(ds_model *m, const ds_batch *b, const float *dlogp, const float *dmtp);
void ds_model_zero_grad(ds_model *m);

/* Pieces of the forward/backward, for pipeline stages (a stage runs a contiguous range of layers) and
 * expert-parallel drivers. ds_model_forward = prepare, embed_fwd, layers_fwd(0, L), head_fwd; backward =
 * head_bwd, layers_bwd(0, L), embed_bwd. A stage that starts at layer l0 writes its input activations
 * into ds_model_hidden(m, l0) and reads its output from ds_model_hidden(m, l1); in the backward, the
 * gradient of the running activation is ds_model_hidden_grad(m) (d/d hidden(l1) before layers_bwd(l0, l1),
 * d/d hidden(l0) after). The embedding and the head/MTP run on the stages holding layer 0 and layer L
 * (DualPipe places both on the same rank, as MTP shares them). */
int ds_model_prepare(ds_model *m, const ds_batch *b); /* validates and uploads the batch */
int ds_model_embed_fwd(ds_model *m);
int ds_model_layers_fwd(ds_model *m, int l0, int l1);
int ds_model_head_fwd(ds_model *m, ds_fwd_out *out);
int ds_model_head_bwd(ds_model *m, const float *dlogp, const float *dmtp);
int ds_model_layers_bwd(ds_model *m, int l0, int l1);
int ds_model_embed_bwd(ds_model *m);
float *ds_model_hidden(ds_model *m, int l); /* [B*T, D] input of layer l (l = L: the last layer's output) */
float *ds_model_hidden_grad(ds_model *m);   /* [B*T, D] */

/* Backward split into B and W (zero-bubble schedules, DualPipe). While a key >= 0 is set, the backward
 * pieces above (head_bwd, layers_bwd, embed_bwd, and ds_model_backward) compute the input gradients (B)
 * and record their weight-gradient products under that key instead of running them: every Linear (MLA,
 * dense FFN, shared experts, router, head, MTP eh_proj), the routed experts' grouped Wgrads and the
 * embedding's scatter-add. ds_model_wgrad_run(key) runs the key's records in order (W). B then W adds the
 * same products in the same order as the undeferred backward: identical gradients. RMSNorm gains get
 * their gradient in B. key -1 (the default) runs weight gradients at once. A record keeps copies of its
 * activation operands until it runs. */
int ds_model_wgrad_defer(ds_model *m, int key);
int ds_model_wgrad_run(ds_model *m, int key);
int ds_model_wgrad_pending(const ds_model *m, int key); /* records queued under key (-1: all keys) */

/* Activation slots (training models): a pipeline stage keeps several micro-batches between their forward
 * and their backward. ds_model_act_slots makes k records of everything a forward keeps (batch, residual
 * stream, tapes, head and MTP outputs; slot 0 is the model's own); ds_model_act_select makes slot i the one
 * that prepare, the forward and backward pieces, hidden and hidden_grad work on. The parameters, their
 * gradients and the deferred weight gradients are shared. */
int ds_model_act_slots(ds_model *m, int k);
int ds_model_act_select(ds_model *m, int slot);
/* A stage's share of the per-forward statistics of the selected slot's last forward (the layers it ran):
 * bal_loss, expert_load and n_moe_layers of out are set, the rest zeroed. */
void ds_model_fwd_stats(ds_model *m, ds_fwd_out *out);
/* fn(ctx) runs after each decoder layer of layers_fwd and layers_bwd (NULL: nothing): a pipeline stage
 * drives its open transfers there while it computes. */
void ds_model_set_poll(ds_model *m, void (*fn)(void *ctx), void *ctx);

/* ---- expert parallelism ---- */
/* The local routed experts: floats [*off, *off + *n) of params/grads (n = 0 without expert parallelism,
 * and *off = ds_model_num_params). *e0, *ne (may be NULL): the global index of the first and their count. */
void ds_model_expert_range(const ds_model *m, size_t *off, size_t *n, int *e0, int *ne);
/* A micro-batch without rows: take part in the exchanges other ranks' micro-batch makes (this rank still
 * runs its experts on the rows it receives). fwd for a forward of sequences of T tokens (the MTP modules
 * active at that length); bwd for its backward, mtp = whether the MTP modules' backward runs (dmtp given). */
int ds_model_ep_idle_fwd(ds_model *m, int T);
int ds_model_ep_idle_bwd(ds_model *m, int T, int mtp);
/* The same for a pipeline stage that runs decoder layers [l0, l1): its MoE layers, and the MTP modules' when
 * last (the stage with the head; bwd: mtp = the MTP modules' backward runs there). Each activation slot
 * keeps its own exchange plans: a stored micro-batch's backward uses its forward's whatever ran between. */
int ds_model_ep_idle_stage_fwd(ds_model *m, int T, int l0, int l1, int last);
int ds_model_ep_idle_stage_bwd(ds_model *m, int T, int l0, int l1, int mtp);
/* What the MoE exchanges moved since the last reset, forward passes only (the backward moves the same
 * bytes in reverse). Bytes are this rank's sends to other ranks: rows of hidden_size fp32 (4 D bytes), or
 * with opts.moe_dispatch_fp8 FP8 rows out (D + ceil(D/128) bytes, moe_fp8.h) and bf16 rows back (2 D). */
typedef struct {
    int64_t tokens;           /* routed tokens (this rank's, every MoE layer) */
    int64_t nodes_sum;        /* sum over those of the distinct nodes their experts live on */
    int nodes_max;            /* the most nodes one token reached */
    int64_t dispatch_bytes;   /* token rows sent to other ranks */
    int64_t combine_bytes;    /* expert output rows sent back to other ranks */
    int64_t cross_node_bytes; /* of both, those sent to a rank on another node */
    int64_t dispatch_rows;    /* token rows the (one-hop) plan sends to other ranks */
} ds_moe_ep_stats;
void ds_model_ep_stats(ds_model *m, ds_moe_ep_stats *out, int reset);

/* Memory a model would take, without allocating (the 671B config plans on any machine). */
typedef struct {
    int64_t n_params;        /* trainable parameters, MTP modules included */
    int64_t n_params_main;   /* the main model (embedding .. lm_head) */
    int64_t n_params_mtp;    /* the MTP modules' own parameters (embedding and head are shared) */
    int64_t n_expert_bias;   /* e_score_correction_bias entries (not trainable) */
    int n_tensors;
    size_t params_bytes;     /* fp32 parameters */
    size_t grads_bytes;      /* fp32 gradients (train) */
    size_t optimizer_bytes;  /* AdamW moments, two fp32 per parameter (train) */
    size_t activation_bytes; /* tapes and scratch for max_batch x max_seq tokens */
    size_t total_bytes;
} ds_mem_plan;
int ds_model_plan(const ds_config *cfg, const ds_model_opts *opts, ds_mem_plan *out);

/* Change the sequence-wise balance loss weight for the next forward/backward (the trainer scales it
 * by micro-batch rows / step rows, so accumulated micro-batches give the mean over the step's rows). */
void ds_model_set_balance_alpha(ds_model *m, double alpha);

#endif
