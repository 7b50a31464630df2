/* layer.h — building blocks of the DeepSeek-V3 decoder layer: sizes, RoPE/YaRN, MLA, dense FFN, MoE.
 *
 * Owns: the derived sizes (ds_dims), the rotary tables with YaRN (ds_rope, spec 7), and the layer-level
 * forward pieces the training network (model.c) is made of, exposed so the decode engine (lib/infer) can
 * build the MLA latent-cache path from the same code: query projection, latent (cache) projection, key/value
 * expansion, routing and the expert FFNs. Everything runs through the op layer (ops/ops.h); pointers are
 * backend memory. The activation record of one layer (ds_tape) is what a training forward keeps for the
 * backward.
 */
#ifndef DS_MODEL_LAYER_H
#define DS_MODEL_LAYER_H

#include <stddef.h>
#include <stdint.h>

#include "io/config.h"
#include "ops/ops.h"

typedef struct ds_layer_w ds_layer_w;

/* Sizes derived from the config (names as in spec 3 and 4). */
typedef struct {
    int D;          /* hidden_size */
    int V;          /* vocab_size */
    int H;          /* num_attention_heads */
    int dn, dr;     /* qk_nope_head_dim, qk_rope_head_dim */
    int dqk, dv;    /* dn + dr, v_head_dim */
    int rope_interleave; /* RoPE pairs of the dr dims: 1, (2j, 2j+1); 0, (j, j + dr/2) (ops rope) */
    int Rq, Rkv;    /* q_lora_rank (0: q_proj), kv_lora_rank */
    int I;          /* dense intermediate_size */
    int E, K;       /* n_routed_experts, num_experts_per_tok */
    int Ie, Is;     /* moe_intermediate_size, n_shared_experts * moe_intermediate_size */
    float eps;      /* rms_norm_eps */
    ds_route_params route;
    int has_bias;   /* e_score_correction_bias used for selection (topk_method "noaux_tc") */
} ds_dims;

void ds_dims_from_config(ds_dims *d, const ds_config *c);

#define DS_ROPE_MAX_HALF 256

/* RoPE with the YaRN correction as transformers computes it (spec 7; decision in docs/DESIGN.md):
 *   inv_freq[j] = theta^(-2j/dr), blended towards inv_freq/s over the ramp [low, high] (beta_fast/slow);
 *   cos/sin are scaled by attention_factor if given, else by m(s, mscale) / m(s, mscale_all_dim) when both
 *   mscales are given, else by m(s, 1), where m(s, c) = 0.1 c ln s + 1 (c = 0 or s <= 1 gives 1);
 *   the softmax scale is qk_head_dim^-1/2 * m(s, mscale_all_dim)^2 (an absent mscale_all_dim gives 1).
 * Without rope_scaling: plain RoPE, factor 1, scale qk_head_dim^-1/2. */
typedef struct {
    int half;                         /* dr / 2 */
    float inv_freq[DS_ROPE_MAX_HALF]; /* host */
    float cos_scale;
    float softmax_scale;
} ds_rope;

int ds_rope_init(ds_rope *r, const ds_config *c);

/* What one call of a layer piece works on: the backend, the sizes, and the batch geometry. */
typedef struct {
    const ds_ops *ops;
    const ds_ops *lin;     /* the Linear projections' GEMMs (q, latent, kv_b expansion); NULL: ops */
    const ds_ops *lin_kvb; /* kv_b's expansion only; NULL: lin */
    const ds_dims *d;
    int B, T, n;          /* n = B*T token rows */
    const int32_t *seg;   /* [n] segment ids or NULL (see ops attn_fwd) */
    const int32_t *keep;  /* [n] 0 where a position is not routed to experts (padding), or NULL: all are */
    const float *cs;      /* RoPE table [n][dr/2][2] from ops->rope_table */
    float softmax_scale;
    void *attn_ws;        /* ops->attn_ws_bytes(B, T, H, dqk, dv) bytes */
} ds_layer_ctx;

/* An activation [rows, cols] kept as E4M3 codes q and one float32 scale per 1x128 tile s (fp8/quant.h). */
typedef struct {
    uint8_t *q;
    float *s;
} ds_act_fp8;

/* The activations of one decoder layer that a training backward needs. "Saved" buffers are per layer;
 * with recompute (V3's choice) the normalised inputs and the MLA up-projection outputs point into
 * shared scratch and are recomputed in the backward, otherwise they are per layer too. */
typedef struct {
    /* saved */
    float *rstd_attn, *cq, *rstd_q, *kva, *rstd_kv, *o, *lse, *h, *rstd_ffn;
    uint8_t *o_q, *o_s;        /* the attention output in E5M6 (model.h attn_out_e5m6): packed codes and UE8M0
                                  scales (fp8/e5m6.h); o then points to scratch the backward dequantizes into */
    float *g, *u;              /* dense FFN gate/up outputs [n, I] */
    float *scores, *w;         /* MoE: router scores [n, E], routing weights [n, K] */
    int32_t *idx, *order, *where, *off; /* [n, K], [n K], [n K], [E + 1] */
    int64_t *off_h;            /* host copy of off */
    float *ge, *ue;            /* routed experts' gate/up outputs [n K, Ie], rows in expert order */
    float *gs, *us;            /* shared experts' gate/up outputs [n, Is] */
    /* with opts.moe_cache_fp8 (V3's FP8 cache of the MoE SwiGLU inputs, model/moe_fp8.h): ge, ue, gs, us point
     * into scratch and these keep them between forward and backward */
    ds_act_fp8 ge8, ue8, gs8, us8;
    /* recomputable */
    float *xn, *cqn, *q, *ckv, *kpe, *kvb, *k, *v, *hn;
} ds_tape;

/* Temporaries shared by all layers (sized for the largest layer). */
typedef struct {
    float *xn, *cqn, *q, *ckv, *kpe, *kvb, *k, *v, *hn; /* recomputed values (recompute mode) */
    float *tmpD;               /* [n, D]: attention / FFN outputs */
    float *o;                  /* [n, H dv]: the attention output, when the tapes keep it in E5M6 */
    float *act;                /* [n, max(I, Is)] */
    float *logits;             /* [n, E] router logits / their gradient */
    float *xg, *ye;            /* [n K, D] gathered inputs, expert outputs */
    float *acte;               /* [n K, Ie] */
    float *ge, *ue, *gs, *us;  /* opts.moe_cache_fp8: the tapes' ge, ue [n K, Ie], gs, us [n, Is] */
    float *xq, *dyq;           /* opts.moe_dispatch_fp8, one process: the experts' x and dy on the FP8 grid [n, D] */
    uint8_t *wire;             /* opts.moe_dispatch_fp8, one process: their FP8 rows (moe_fp8.h) [n, D + D/128] */
    /* backward */
    float *dxn, *dout_attn;    /* [n, D], [n, H dv] */
    float *dq, *dk, *dv, *dkvb, *dkpe, *dckv, *dkva, *dcqn, *dcq;
    float *dg, *du;            /* [n, max(I, Is)] */
    float *dyg, *dxg;          /* [n K, D] */
    float *dge, *due;          /* [n K, Ie] */
    float *dw;                 /* [n, K] */
    float *head;               /* [head_rows, V] logits chunk */
    int head_rows;
    const float *head_of;      /* the h whose logits head holds whole (a forward of one chunk), else NULL */
    void *attn_ws;
} ds_scratch;

/* The tables a context's Linear projections use. */
static inline const ds_ops *ds_ctx_lin(const ds_layer_ctx *c) { return c->lin ? c->lin : c->ops; }
static inline const ds_ops *ds_ctx_lin_kvb(const ds_layer_ctx *c) { return c->lin_kvb ? c->lin_kvb : ds_ctx_lin(c); }

/* ---- MLA pieces (spec 3): xn is the attn_norm output [n, D] ---------------------------------------- */
/* Queries with RoPE applied: q [n, H, dqk]. With q_lora_rank > 0: cq = xn W_qa^T (kept), cqn = RMSNorm(cq)
 * (rstd_q kept), q = cqn W_qb^T; else q = xn W_q^T (cq, cqn, rstd_q unused, may be NULL). */
void ds_mla_query(const ds_layer_ctx *c, const ds_layer_w *w, const float *xn, float *cq, float *rstd_q,
                  float *cqn, float *q);
/* The latent the decode cache keeps: kva = xn W_kva^T [n, Rkv + dr] (kept), ckv = RMSNorm(kva[:, :Rkv])
 * [n, Rkv] (rstd_kv kept), kpe = RoPE(kva[:, Rkv:]) [n, dr]. */
void ds_mla_latent(const ds_layer_ctx *c, const ds_layer_w *w, const float *xn, float *kva, float *rstd_kv,
                   float *ckv, float *kpe);
/* Per-head keys and values from the latent: kvb = ckv W_kvb^T, k [n, H, dqk], v [n, H, dv]. */
void ds_mla_expand(const ds_layer_ctx *c, const ds_layer_w *w, const float *ckv, const float *kpe, float *kvb,
                   float *k, float *v);

/* ---- FFN pieces (spec 4.3): hn is the ffn_norm output [n, D] ---------------------------------------- */
/* Router: scores [n, E] (logits scratch [n, E]), then idx/w [n, K] with the layer's bias (may be NULL).
 * The gating GEMM runs on c->ops (high precision), never on c->lin. */
void ds_moe_route(const ds_layer_ctx *c, const ds_layer_w *w, const float *bias, const float *hn, float *logits,
                  float *scores, int32_t *idx, float *wts);

#endif
