/* internal.h — the network's private state shared by the files of lib/model (not installed API).
 *
 * Owns: the model struct, the per-layer activation record ("tape") kept between forward and backward,
 * the shared scratch buffers, and the prototypes that connect params.c, layer.c, mla.c, ffn.c, moe.c,
 * head.c and model.c.
 */
#ifndef DS_MODEL_INTERNAL_H
#define DS_MODEL_INTERNAL_H

#include "dist/ep.h"
#include "model/layer.h"
#include "model/model.h"
#include "ops/ops.h"
#include "ops/prof.h"

/* A bump allocator over one backend block. With base == NULL it only counts (the memory plan). */
typedef struct {
    char *base;
    size_t cap, used;
} ds_bump;

void *ds_bump_take(ds_bump *b, size_t bytes); /* 64-byte aligned; NULL when base is NULL or full */
#define DS_TAKE(bump, type, count) ((type *)ds_bump_take((bump), sizeof(type) * (size_t)(count)))

/* Deferred weight gradients (wgrad.c): records of the Wgrad products a B pass left for W. */
typedef struct ds_wgrad_op ds_wgrad_op;
typedef struct {
    void *p;
    size_t bytes;
    int used, host;
} ds_wgrad_buf;
typedef struct {
    int key;             /* < 0: weight gradients run at once; else they are recorded under this key */
    ds_wgrad_op *op;
    int n_op, cap_op;
    ds_wgrad_buf *pool;  /* operand copies, reused after their replay */
    int n_pool, cap_pool;
    int err;             /* a recording that failed (out of memory), reported by the next run */
} ds_wgrad_queue;

/* Expert parallelism (moe_ep.c): what a MoE layer's forward leaves for its backward. Kept per activation
 * slot, so the backward of a stored micro-batch exchanges by its own plan whatever ran in between. */
struct ep_layer {
    ds_ep ep;               /* the exchange plan: rows per peer, tokens sent, experts and weights received */
    int have_ep;
    int nc;                 /* routed tokens (padding left out) */
    int32_t *tok;           /* [n_max] their token index */
    float *xr;              /* [ep_n n_max, D] rows received (allocated at the layer's first forward) */
};

/* One activation slot's arena and the host state that goes with a stored forward (ds_model_act_select). */
typedef struct {
    ds_bump act;
    int64_t **off_h; /* per layer */
    int B, T, n, T_main, has_seg, has_pad, have_fwd;
    double bal_loss;
    struct ep_layer *epl; /* per layer: the expert-parallel exchanges of the stored forward (NULL without EP) */
} ds_act_slot;

struct ds_model {
    ds_config cfg;
    ds_model_opts opts;
    const ds_ops *ops;
    ds_ops lin_tab;             /* copy of opts.linear_ops */
    const ds_ops *lin, *lin_kvb; /* the block Linear layers' GEMMs (ops when none given); kv_b's */
    ds_ops lin_o_tab;           /* copy of opts.o_proj_ops */
    const ds_ops *lin_o;        /* o_proj's GEMMs when the attention output is kept in E5M6 (ds_o_proj_ops) */
    int attn_e5m6;              /* the tapes keep the attention output in E5M6 (opts.attn_out_e5m6 && train) */
    ds_ops lin_pow2_tab;        /* copy of opts.linear_ops_pow2 */
    ds_dims dims;
    ds_rope rope;

    ds_param *params;
    int n_params;
    size_t n_floats;
    size_t resident_floats;     /* of them, resident (never touched): FP8 or bf16 */
    double fp8_bytes;           /* the FP8-resident weights' codes and scales */
    double bf16_bytes, bf16_mapped; /* the bf16-resident weights; of them, borrowed from the checkpoint */
    /* FP8-resident on the GPU (ds_params_compact): w holds only the n_held float parameters, parameter i at
     * w + dev_off[i]; a resident one (dev_off[i] == SIZE_MAX) has the address keys + offset, in a reserved
     * host range no device allocation can take (a key for fp8/resident.h, never dereferenced), and its
     * codes and scales in fp8_dev. Otherwise dev_off is NULL and n_held == n_floats. */
    size_t *dev_off;
    size_t n_held;
    float *keys;
    void *fp8_dev;
    float *w, *g; /* parameters, gradients */
    float *ebias; /* expert biases, n_moe x E */
    ds_weights W, G;
    int mtp_depth;              /* active MTP modules */
    int n_layers_total;         /* L + mtp layers allocated */
    int n_moe;                  /* MoE layers among the allocated ones */
    int *moe_slot;              /* layer -> MoE index, or -1 */

    /* activations */
    int n_max;                  /* max tokens per batch */
    ds_bump act;                /* tapes and scratch, one backend block */
    ds_tape *tape;              /* one per allocated layer */
    ds_scratch scr;
    float *xs;                  /* residual stream [L+1][n_max][D]: xs[l] is layer l's input */
    float *gx;                  /* gradient of the residual stream [n_max][D] */
    float *ghf;                 /* gradient of the final-norm output [n_max][D] */
    float *inv_freq_d;          /* RoPE inverse frequencies on the backend */
    float *hf;                  /* final-norm output [n][D] (also MTP's h^0) */
    float *rstd_f;
    float *logp, *lse, *ent;    /* main head: [n] each */
    float *logits;              /* [n][V] when opts.keep_logits */
    /* MTP module j (k = j+1) runs on the T-k positions of each row that have a token k places ahead
     * (rows of T-k, "compact" layout): its input embedding, the two normed halves, eh_proj output (the
     * layer input), layer output and its gradient, shared_head.norm output, rstds, compact log-probs,
     * their gradient and lse; shifted tokens and targets, segment ids, positions and RoPE table. */
    struct mtp_act {
        float *e, *en, *hn, *hp, *hk, *hkn, *gh, *rstd_e, *rstd_h, *rstd_k, *logp_c, *dlogp_c, *lse, *cs;
        float *logp;                /* [B][T] view into mtp_logp */
        int32_t *tok, *tgt, *seg, *pos;
        int32_t *keep; /* routed positions (moe_topk's keep): the next-k token exists, is no padding */
    } *mtp;
    float *mtp_logp;            /* [Dm][n] contiguous view handed out */

    /* batch on the backend */
    int B, T, n;                /* the batch, or while an MTP module runs, its compact geometry */
    int T_main;                 /* the batch's T */
    int has_seg;
    int32_t *tok, *tgt, *seg, *pos; /* [n] each */
    int32_t *keep;                  /* [n] 1 for a token, 0 for padding (moe_topk's keep) */
    int has_pad;                    /* the batch has padding (or MTP positions to leave out): keep is used */
    float *cs;                  /* RoPE table [n][dr/2][2] */
    const int32_t *cur_seg;     /* what the layer functions see: main batch or an MTP module's */
    const int32_t *cur_keep;    /* likewise, NULL when every position is routed */
    const float *cur_cs;
    int32_t *h_i32, *h_pos;     /* host staging [n] */
    int32_t *expert_load;       /* host [n_moe][E] */
    int32_t *load_off_d, *load_off_h; /* [n_moe][E+1] the MoE layers' expert offsets: backend, host (ffn.c) */
    unsigned char *load_pending;      /* host [n_moe]: STAT_* bits of what this forward left on the device */
    float *bal_rows, *bal_rows_d; /* per-row balance terms [n_moe][max_batch]: host, backend */
    double bal_loss;
    int have_fwd;               /* a training forward is stored */
    ds_wgrad_queue wq;          /* the B/W split (wgrad.c) */
    ds_act_slot *slot;          /* activation slots (slots.c); NULL until asked for */
    void (*poll)(void *);       /* ds_model_set_poll */
    void *poll_ctx;
    int n_slots, cur_slot;

    /* expert parallelism (moe_ep.c): this rank's experts [e0, e0 + ne) start at float expert_off */
    int ep_n, ep_rank, e0, ne;
    size_t expert_off;
    int *ep_node;               /* [ep_n] */
    int ep_two_hop;             /* the transport of every exchange plan (ds_moe_ep_set_transport) */
    struct ep_layer *epl;       /* [n_layers_total + 1] the selected activation slot's (slots.c) */
    int32_t *ep_idx;            /* host [n_max K]: routed tokens' expert ids, */
    float *ep_w, *ep_dw;        /* their weights, gradients of the weights [n_max K] */
    float *ep_x, *ep_out;       /* [n_max, D]: rows to send, rows combined */
    float *ep_yr, *ep_dxr, *ep_dwr; /* [ep_n n_max, D] x2, [ep_n n_max K] */
    uint8_t *ep_wire, *ep_wire_r;   /* opts.moe_dispatch_fp8: FP8 rows sent [n_max] and received [ep_n n_max] */
    int ep_rc;                  /* first failure of an exchange in a backward (the layer functions return void) */
    ds_moe_ep_stats ep_stats;
};

/* The routed experts' GEMMs whose activation operand was dispatched (gate/up Fprop and Wgrad, down Dgrad):
 * opts.linear_ops_pow2 with the FP8 dispatch (moe_fp8.h), else lin (read at the call: lin may be set late,
 * e.g. for FP8-resident weights). */
static inline const ds_ops *ds_lin_xe(const ds_model *m) {
    return m->opts.moe_dispatch_fp8 ? &m->lin_pow2_tab : m->lin;
}

/* moe_ep.c: the routed experts of layer l across the EP group: f += their combined output (forward), dhn +=
 * their input gradient and s->dw gets the routing weights' gradient (backward). Token rows from t->hn / df. */
int ds_moe_ep_fwd(ds_model *m, int l, ds_tape *t, float *f);
int ds_moe_ep_bwd(ds_model *m, int l, ds_tape *t, const float *df, float *dhn);
int ds_moe_ep_alloc(ds_model *m);
void ds_moe_ep_free(ds_model *m);
/* One activation slot's per-layer exchange records (m's group and transport), and their release. */
int ds_moe_ep_layers_new(ds_model *m, struct ep_layer **out);
void ds_moe_ep_layers_free(ds_model *m, struct ep_layer *epl);
/* Every MoE layer's exchange over m->ep_node's nodes, in one hop or two (after the nodes are set). */
int ds_moe_ep_set_transport(ds_model *m, int two_hop);

/* slots.c */
void ds_slots_free(ds_model *m);

/* params.c */
int ds_params_layout(ds_model *m, int alloc);
void ds_params_bind(ds_model *m, float *base, ds_weights *out);
/* GPU FP8-resident layout (see dev_off above) after ds_model_mark_resident: fills dev_off and n_held and
 * reserves the key range. ds_model_free releases both. */
int ds_params_compact(ds_model *m);
void ds_params_compact_free(ds_model *m);
/* Where parameter i lives: m->w + offset, or its place in the compact layout. */
float *ds_param_ptr(const ds_model *m, int i);

/* The call context of the current batch. */
ds_layer_ctx ds_model_ctx(const ds_model *m);

/* wgrad.c: every weight-gradient product of the backward, run at once or deferred (ds_model_wgrad_defer).
 * gemm: C += op(A) op(B) (alpha 1, beta 1); grouped: ops->gemm_wgrad with alpha 1, beta 1; embed: embed_bwd. */
void ds_wgrad_gemm(ds_model *m, const ds_ops *ops, int ta, int tb, int M, int N, int K, const float *A, int lda,
                   const float *B, int ldb, float *C, int ldc);
void ds_wgrad_grouped(ds_model *m, const ds_ops *ops, int ng, const int64_t *off, int M, int N, const float *A,
                      int lda, const float *B, int ldb, float *C, size_t strideC, int ldc);
/* grouped with the group offsets in backend memory (ops->gemm_wgrad_dev); max_rows bounds the rows read */
void ds_wgrad_grouped_dev(ds_model *m, const ds_ops *ops, int ng, const int32_t *off, int max_rows, int M, int N,
                          const float *A, int lda, const float *B, int ldb, float *C, size_t strideC, int ldc);
void ds_wgrad_embed(ds_model *m, float *dtable, const float *dx, const int32_t *tok, int n, int d);
int ds_wgrad_status(ds_model *m); /* a recording's failure since the last call, cleared */
void ds_wgrad_free(ds_model *m);

/* o_proj's GEMMs: its own table under the E5M6 cache, else the Linear table (which FP8-resident inference
 * replaces after the shape is set) */
static inline const ds_ops *ds_o_proj_ops(const ds_model *m) { return m->attn_e5m6 ? m->lin_o : m->lin; }

/* y[n, out] = x[n, in] W^T */
void ds_linear(const ds_ops *ops, float *y, const float *x, const float *W, int n, int out, int in);
/* dW[out, in] += dy^T x (through ds_wgrad_gemm: deferrable); dx (if not NULL) = beta * dx + dy W */
void ds_linear_bwd(ds_model *m, const ds_ops *ops, float *dx, float beta, float *dW, const float *dy, const float *x,
                   const float *W, int n, int out, int in);

/* mla.c: attention of layer l from t->xn into y [n, D]; backward from dy [n, D] to dxn (written) */
void ds_mla_fwd(ds_model *m, int l, ds_tape *t, float *y);
void ds_mla_bwd(ds_model *m, int l, ds_tape *t, const float *dy, float *dxn);
void ds_mla_project(const ds_layer_ctx *c, const ds_layer_w *w, ds_tape *t);

/* ffn.c: FFN of layer l (dense or MoE) from t->hn into f [n, D]; backward from df to dhn (written) */
int ds_ffn_fwd(ds_model *m, int l, ds_tape *t, float *f);
void ds_ffn_bwd(ds_model *m, int l, ds_tape *t, const float *df, float *dhn);

/* layer.c: activation layout (plan mode when b->base is NULL) and one decoder layer */
void ds_act_layout(ds_model *m, ds_bump *b, int n);
int ds_layer_fwd(ds_model *m, int l, const float *x, float *out);
void ds_layer_bwd(ds_model *m, int l, const float *x, float *gx);

/* head.c: logits (when not NULL) keeps all [n, V] rows; the backward then reads them instead of
 * recomputing */
void ds_head_fwd(ds_model *m, const float *h, const int32_t *tgt, int n, float *logp, float *lse, float *ent,
                 float *logits);
void ds_head_bwd(ds_model *m, const float *h, const int32_t *tgt, int n, const float *lse, const float *dlogp,
                 float *dh, const float *logits);

#endif
