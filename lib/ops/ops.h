/* ops.h — the op layer: one C signature per numeric op, dispatched through a backend table.
 *
 * Owns: the contract every backend implements (the CPU one in lib/ops/cpu_*.c, CUDA kernels in kernels/
 * with the same signatures) and the precise semantics of each op. The network (lib/model) calls ops only
 * through a `const ds_ops *`, never touching tensor memory itself, so the same model code runs on both
 * backends. Host-side decisions that need device data (expert token counts for the grouped GEMMs) go
 * through the explicit synchronization point `copy(..., DS_COPY_D2H)` followed by `sync()`.
 *
 * Conventions, for every op unless its comment says otherwise:
 *  - Tensors are fp32, row-major, contiguous: "[n, d]" means n rows of d floats. Integer tensors are int32.
 *    Pointers are backend memory (device memory on an accelerator); int64_t offset arrays marked "host"
 *    live in host memory.
 *  - `ld*` arguments are row strides in elements (>= the row length), so ops can read or write a column
 *    slice of a wider matrix in place (e.g. the first kv_lora_rank columns of kv_a's output).
 *  - Forward ops overwrite their outputs. Backward ops ACCUMULATE (+=) into gradients of parameters and of
 *    inputs, unless the comment says "written"; callers zero a gradient buffer before its first use.
 *  - In-place use (output == input) is allowed only where stated.
 *  - Reductions over rows (parameter gradients such as RMSNorm gains) use a fixed order for a given
 *    thread count, so results are reproducible bit for bit.
 *  - Shapes are validated by the caller (lib/model); ops trust them.
 */
#ifndef DS_OPS_OPS_H
#define DS_OPS_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "ops/mla_decode.h"

typedef enum { DS_COPY_H2D = 0, DS_COPY_D2H = 1, DS_COPY_D2D = 2 } ds_copy_kind;

/* Expert scoring function (config scoring_func). */
typedef enum { DS_SCORE_FN_SIGMOID = 0, DS_SCORE_FN_SOFTMAX = 1 } ds_score_fn;

/* How a group's score is formed for group-limited routing (spec 4.1/4.2). */
typedef enum {
    DS_GROUP_NONE = 0,    /* no group limit ("greedy"): top-k over all experts */
    DS_GROUP_TOP2SUM = 1, /* V3 "noaux_tc": sum of the two highest biased scores in the group */
    DS_GROUP_MAX = 2,     /* V2 "group_limited_greedy": the highest score in the group */
} ds_group_rule;

/* Added to the sum of the K selected scores before the weights are divided by it (transformers'
 * DeepseekV3 adds the same): when every selected sigmoid score underflows to 0 the weights are 0, not
 * 0/0, and their backward is 0 too (the sigmoid's derivative is 0 there). It changes no weight of
 * ordinary size: 1e-20 is below float32's resolution of any sum of scores above 1e-13. */
#define DS_ROUTE_RENORM_EPS 1e-20f

/* Routing parameters shared by moe_topk and moe_topk_bwd. */
typedef struct {
    int n_experts;     /* E */
    int top_k;         /* K */
    int n_group;       /* groups of E/n_group experts (1 or rule NONE: no groups) */
    int topk_group;    /* groups kept */
    ds_group_rule group_rule;
    ds_score_fn score_fn;
    int renorm;        /* 1: the K weights are divided by their sum (norm_topk_prob) */
    float route_scale; /* routed_scaling_factor, multiplies the (renormalised) weights */
} ds_route_params;

typedef struct ds_ops {
    const char *name; /* "cpu", "cuda" */

    /* ---- memory ---------------------------------------------------------------------------------- */
    void *(*alloc)(size_t bytes);  /* 64-byte aligned; NULL when out of memory; alloc(0) may return NULL */
    void (*free)(void *p);         /* free(NULL) is a no-op */
    void (*copy)(void *dst, const void *src, size_t bytes, ds_copy_kind kind);
    void (*zero)(void *p, size_t bytes);
    void (*sync)(void);            /* wait until all queued work is done (no-op on the CPU) */
    /* DS_OK, or the first failure the backend recorded since the last call (message set), cleared by
     * the call. The ops return nothing, so callers ask at their own synchronization points (after a
     * training step's backward, after a decode step's logits). Always DS_OK on the CPU. */
    int (*status)(void);
    /* The parameter buffer [base, base + n floats) was written (initialised, loaded, updated by the
     * optimizer). Backends that keep derived copies of weights (the CUDA backend's bf16 GEMM operands)
     * rebuild them before their next use; a GEMM operand inside a buffer never announced is converted
     * on every call. No-op on the CPU; the --bf16 table (ops/bf16.h) keeps packed bf16 copies (ops/gemm_bf16.h).
     * Callers announce every change: a stale copy is a wrong result. */
    void (*params_changed)(const float *base, size_t n);

    /* ---- GEMM ------------------------------------------------------------------------------------ */
    /* C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X (t=0) or X^T (t=1). op(A) is [M,K], op(B) is
     * [K,N]; A is stored [M,K] (ta=0) or [K,M] (ta=1), likewise B. beta = 0 ignores C's old contents
     * (NaN included). A linear layer y = x W^T with W [out,in] is gemm(0,1, n,out,in, 1, x,in, W,in, 0, y,out). */
    void (*gemm)(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);
    /* Row-grouped GEMM (MoE experts, contiguous layout): for g in [0, ng), rows r in [off[g], off[g+1])
     * (off: host, off[0] = 0):  C[r, :N] = alpha * A[r, :K] * op(B_g) + beta * C[r, :N], B_g = B + g*strideB,
     * stored [N,K] (tb=1) or [K,N] (tb=0). Empty groups are skipped. */
    void (*gemm_rows)(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                      const float *B, size_t strideB, int ldb, float beta, float *C, int ldc);
    /* Grouped weight gradient: for g in [0, ng), with rows r in [off[g], off[g+1]) (off: host):
     * C_g[M,N] = alpha * A_g^T * B_g + beta * C_g, A_g = rows of A [*, M], B_g = rows of B [*, N],
     * C_g = C + g*strideC with row stride ldc. An empty group leaves C_g * beta (beta = 1: untouched). */
    void (*gemm_wgrad)(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, size_t strideC, int ldc);
    /* gemm_rows and gemm_wgrad with the group offsets in backend memory (device memory on an accelerator),
     * so the MoE layers need no host round trip for them: off [ng+1] int32, off[0] = 0, nondecreasing.
     * gemm_rows_dev: max_rows >= off[ng] is a host bound on the rows (it sizes the launch); rows r >= off[ng]
     * of C are left alone. NULL in a table without such kernels (the CPU's: its gemm_rows needs no round
     * trip), and a wrapper that replaces gemm_rows/gemm_wgrad sets them NULL unless it wraps them too; the
     * CPU references with these signatures are in ops/grouped.h. */
    void (*gemm_rows_dev)(int ng, const int32_t *off, int max_rows, int tb, int N, int K, float alpha,
                          const float *A, int lda, const float *B, size_t strideB, int ldb, float beta, float *C,
                          int ldc);
    void (*gemm_wgrad_dev)(int ng, const int32_t *off, int M, int N, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, size_t strideC, int ldc);

    /* ---- elementwise ------------------------------------------------------------------------------ */
    void (*add)(float *y, const float *a, const float *b, size_t n);   /* y = a + b; y may alias a or b */
    void (*axpy)(float *y, float alpha, const float *x, size_t n);     /* y += alpha * x */
    void (*scale)(float *y, float alpha, size_t n);                    /* y *= alpha */
    /* dst[i, :cols] = src[i, :cols] for i < rows (a strided 2-D copy; no overlap). */
    void (*copy2d)(float *dst, int ldd, const float *src, int lds, int rows, int cols);
    /* x[r*ld + c] for r < rows, c < cols put on the bf16 grid in place, exactly core/dtype.h's ds_bf16_grid:
     * round to nearest even, Inf and overflow to Inf kept, NaN kept (made quiet), denormals rounded like any
     * value (no flush). Elements between rows are left alone. The --bf16 table's storage rounding (ops/bf16.h):
     * the CPU's is ds_bf16_round_rows (ops/gemm_bf16.h), the CUDA one a kernel with the same integer rule. */
    void (*round_bf16)(float *x, int64_t ld, int64_t rows, int64_t cols);

    /* ---- RMSNorm (spec 8) -------------------------------------------------------------------------- */
    /* y[i,:] = w ⊙ x[i,:] * r_i, r_i = 1/sqrt(mean_j x[i,j]^2 + eps), computed in fp32. rstd[i] = r_i
     * (rstd may be NULL). In place (y == x, ldy == ldx) allowed. */
    void (*rmsnorm_fwd)(float *y, int ldy, float *rstd, const float *x, int ldx, const float *w, int n, int d,
                        float eps);
    /* Gradients of rmsnorm_fwd given dy and the saved rstd: dx[i,:] += r_i (w⊙dy - x̂ mean_j(w⊙dy⊙x̂)),
     * x̂ = x r_i; dw += Σ_i dy[i,:] ⊙ x̂[i,:] (dw may be NULL). */
    void (*rmsnorm_bwd)(float *dx, int lddx, float *dw, const float *dy, int lddy, const float *x, int ldx,
                        const float *w, const float *rstd, int n, int d);

    /* ---- RoPE (spec 3.2, 7) ------------------------------------------------------------------------- */
    /* cs[i, j] = (cos, sin)(pos[i] * inv_freq[j]) * mscale for j < half, angle computed in fp32 as the
     * product of the float position and inv_freq (as the references do). cs is [n, half, 2]. */
    void (*rope_table)(float *cs, const int32_t *pos, int n, const float *inv_freq, int half, float mscale);
    /* Rotate pair j of v = x[i, h, off : off + 2*half] in place by the angle in cs[i, j], for rows i < n and
     * heads h < nh, element (i, h, c) at x[i*ld_row + h*ld_head + c]. The pairs: interleaved = 1,
     * (v[2j], v[2j+1]) (DeepSeek's layout, rope_interleave true); interleaved = 0, (v[j], v[j+half])
     * (rotate-half, rope_interleave false). inverse = 1 applies the transpose (angle negated, magnitude
     * kept): the backward of the forward rotation. */
    void (*rope)(float *x, int n, int nh, int ld_row, int ld_head, int off, int half, int interleaved,
                 const float *cs, int inverse);

    /* ---- causal attention with per-row logsumexp (flash-style: no [T,T] tensor kept) ---------------- */
    /* q, k: [B*T, H, dqk], v: [B*T, H, dv], o: [B*T, H, dv] (written), lse: [B*T, H] (written).
     * seg [B*T] (or NULL: one segment per row) splits each row into segments, the maximal runs of equal ids;
     * query (b,i) attends key (b,j) iff j <= i and j is in i's segment. (Packed samples carry distinct
     * consecutive ids, so this is "attention only within equal ids".)
     * s_ij = scale * q_i·k_j; o_i = Σ_j softmax_j(s_i·) v_j; lse_i = log Σ_j exp(s_ij) (natural log).
     * ws: backend scratch of attn_ws_bytes(B, T, H, dqk, dv) bytes (sized for the current thread count). */
    size_t (*attn_ws_bytes)(int B, int T, int H, int dqk, int dv);
    void (*attn_fwd)(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg,
                     int B, int T, int H, int dqk, int dv, float scale, void *ws);
    /* Gradients from dout and the forward's o and lse (probabilities are recomputed): dq, dk, dv written. */
    void (*attn_bwd)(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                     const float *v, const float *o, const float *lse, const int32_t *seg, int B, int T, int H,
                     int dqk, int dv_dim, float scale, void *ws);

    /* ---- SwiGLU -------------------------------------------------------------------------------------- */
    /* h = silu(g) ⊙ u over n elements (silu(x) = x / (1 + e^-x)). */
    void (*swiglu_fwd)(float *h, const float *g, const float *u, size_t n);
    /* dg, du written: dg = dh ⊙ u ⊙ silu'(g), du = dh ⊙ silu(g). */
    void (*swiglu_bwd)(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);

    /* ---- embedding ----------------------------------------------------------------------------------- */
    /* x[i,:] = table[tok[i], :] for tok[i] >= 0, zeros for tok[i] < 0. */
    void (*embed_fwd)(float *x, const float *table, const int32_t *tok, int n, int d);
    /* dtable[tok[i], :] += dx[i, :] for tok[i] >= 0, in row order i = 0..n-1 (deterministic). */
    void (*embed_bwd)(float *dtable, const float *dx, const int32_t *tok, int n, int d);

    /* ---- log-softmax at the targets (fused with the head in chunks by the caller) -------------------- */
    /* Per row i of logits [n, V]: lse[i] = log Σ_j exp(logits[i,j]); logp[i] = logits[i,t_i] - lse[i] where
     * t_i = tgt[i] >= 0, else 0; ent[i] = -Σ_j p_ij log p_ij (ent may be NULL). All written. */
    void (*logsoftmax_fwd)(float *logp, float *lse, float *ent, const float *logits, const int32_t *tgt, int n,
                           int V);
    /* dlogits[i,j] (written) = dlogp[i] * (1[j == t_i] - exp(logits[i,j] - lse[i])); zero rows where tgt < 0.
     * In place (dlogits == logits) allowed. */
    void (*logsoftmax_bwd)(float *dlogits, const float *logits, const float *lse, const int32_t *tgt,
                           const float *dlogp, int n, int V);

    /* ---- MoE routing (spec 4.1, 4.2) ----------------------------------------------------------------- */
    /* scores[n, E] (written) = sigmoid(logits) or softmax over each row. In place allowed. */
    void (*router_scores)(float *scores, const float *logits, int n, int E, ds_score_fn fn);
    /* Select K experts per token and their weights. Selection uses s + bias (bias: [E] or NULL) with the
     * group limit of rp: groups scored by rp.group_rule, the best topk_group groups kept, experts of other
     * groups excluded (-inf), then the K best of the rest (ties: lower index first). idx [n, K] lists the
     * chosen experts in descending biased score. Weights use the UNBIASED scores: w = s[idx], divided by
     * Σ_k s[idx_k] + DS_ROUTE_RENORM_EPS when rp.renorm, times rp.route_scale. keep ([n] or NULL): a token
     * with keep[t] == 0 (padding, an MTP position with no next token) is not routed: its K slots get
     * idx -1 and weight 0, so no expert computes it and no routing statistic counts it. */
    void (*moe_topk)(int32_t *idx, float *w, const float *scores, const float *bias, const int32_t *keep, int n,
                     const ds_route_params *rp);
    /* Backward of the weights to the router logits: dlogits [n, E] += d w/d logits · dw (selection is
     * piecewise constant and gets no gradient). Needs the scores of the forward. Tokens not routed (idx -1)
     * get nothing. */
    void (*moe_topk_bwd)(float *dlogits, const float *dw, const float *scores, const int32_t *idx, int n,
                         const ds_route_params *rp);
    /* Complementary sequence-wise balance loss (spec 5.2), per sequence b of T positions (n = B*T), over
     * its T_b routed tokens (those whose idx is not -1; moe_topk's keep): f_i = E/(K T_b) · #{t : i in
     * idx[t]}, P_i = (1/T_b) Σ_t s'_{t,i} over the routed t, s' = s / (Σ_j s_j + DS_ROUTE_RENORM_EPS) (the
     * scores normalised over all experts; for softmax scores s' = s). loss[b] (written) = Σ_i f_i P_i (0 when
     * T_b = 0). When dlogits != NULL, it also accumulates coef * d(Σ_b loss[b])/d logits into dlogits
     * [n, E] (f treated as a constant; nothing for tokens not routed). */
    void (*moe_balance)(float *loss, float *dlogits, float coef, const float *scores, const int32_t *idx,
                        int B, int T, const ds_route_params *rp);
    /* Counting sort of the n*K (row, slot) assignments by expert, stable in slot order s = r*K + k; slots
     * with idx outside [0, E) (-1: an expert-parallel row's empty slot) are left out:
     * off[e] .. off[e+1] (off: [E+1], device) is expert e's range in the sorted order (off[E] = the valid
     * slots); order[r] = the slot at sorted position r; where[s] = its position, or -1 when left out. The
     * slots left out follow in slot order: order[r] for r in [off[E], n*K) (so every order entry is a valid
     * slot, and ops run over all n*K rows, as the device-offset MoE path does, read in bounds). */
    void (*moe_bucket)(int32_t *off, int32_t *order, int32_t *where, const int32_t *idx, int n, int K, int E);
    /* Dispatch gather: dst[r, :] = src[order[r] / K, :] for r < m. */
    void (*moe_gather)(float *dst, const float *src, const int32_t *order, int m, int K, int d);
    /* Gather backward: dsrc[t, :] += Σ_k ddst[where[t*K + k], :] over slots with where >= 0, for t < n
     * (deterministic per row). */
    void (*moe_gather_bwd)(float *dsrc, const float *ddst, const int32_t *where, int n, int K, int d);
    /* Combine: y[t, :] += Σ_k w[t*K+k] * ye[where[t*K + k], :] over slots with where >= 0, for t < n. */
    void (*moe_combine)(float *y, const float *ye, const float *w, const int32_t *where, int n, int K, int d);
    /* x[r, :] *= w[order[r]] for r < m (the routing weight of each dispatched row). */
    void (*moe_scale_rows)(float *x, const float *w, const int32_t *order, int m, int d);
    /* Combine backward through the down projection: with z[r, :] = (dy gathered to row r) · W_down already
     * formed ([m, I]) and act [m, I] the expert activations: dw[order[r]] (written) = z[r,:]·act[r,:] and
     * dact[r, :] (written) = w[order[r]] * z[r, :]. In place (dact == z) allowed. */
    void (*moe_combine_bwd)(float *dact, float *dw, const float *z, const float *act, const float *w,
                            const int32_t *order, int m, int I);
    /* The routed experts' SwiGLU FFN over rows sorted by expert (ne experts, host offsets off [ne+1]; expert
     * e's gate and up [I, D] and down [D, I] at Wg/Wu/Wd + e*stride), exactly the sequence of this table's
     * gemm_rows and swiglu ops below, in one pass over the experts (cpu_moe_ffn.c: one parallel region,
     * each expert's rows through all of its steps while they are in cache). Optional: NULL runs the
     * sequence; a wrapper that replaces gemm_rows, gemm_wgrad or the swiglu ops sets both NULL.
     * fwd: g = x Wg^T, u = x Wu^T, act = swiglu(g, u), y = act Wd^T (all written, [rows, I] / [rows, D]). */
    void (*moe_ffn_fwd)(int ne, const int64_t *off, int D, int I, const float *x, const float *Wg,
                        const float *Wu, const float *Wd, size_t stride, float *g, float *u, float *act, float *y);
    /* bwd, from the forward's x, g, u, the rows' dy and routing weights w[order[r]]: act = swiglu(g, u)
     * scaled by w (written), dg = w (dy Wd) through SwiGLU's gradient, du likewise (written), dw[order[r]]
     * (written) = (dy Wd)·act, dx = dg Wg + du Wu (written); with gWg, gWu, gWd (NULL: the caller runs
     * them, e.g. deferred) also the weight gradients gWd_e += dy^T act, gWg_e += dg^T x, gWu_e += du^T x. */
    void (*moe_ffn_bwd)(int ne, const int64_t *off, int D, int I, const float *x, const float *dy, const float *w,
                        const int32_t *order, const float *Wg, const float *Wu, const float *Wd, size_t stride,
                        const float *g, const float *u, float *act, float *dg, float *du, float *dw, float *dx,
                        float *gWg, float *gWu, float *gWd);

    /* ---- MLA helpers (spec 3.1) --------------------------------------------------------------------- */
    /* Assemble per-head keys and values from the kv_b output kvb [n, H, dn+dv] (head h: [k_nope | v]) and
     * the shared rotated key kpe [n, dr] (row stride ld_kpe): k [n, H, dn+dr] = [k_nope_h | kpe],
     * v [n, H, dv]. Both written. */
    void (*mla_kv_expand)(float *k, float *v, const float *kvb, const float *kpe, int ld_kpe, int n, int H,
                          int dn, int dr, int dv);
    /* Backward: dkvb [n, H, dn+dv] written from dk's nope part and dv; dkpe[i, :] (row stride ld_dkpe)
     * written = Σ_h dk[i, h, dn:]. */
    void (*mla_kv_expand_bwd)(float *dkvb, float *dkpe, int ld_dkpe, const float *dk, const float *dv, int n,
                              int H, int dn, int dr, int dv_dim);

    /* ---- MLA decode attention over the latent cache (ops/mla_decode.h: the arguments and semantics) --- */
    /* Pointers in the arguments (kv_len and block_table included) are backend memory. The CPU entry is
     * ds_mla_decode, the CUDA one kernels/mla_decode.cu's (its split-KV workspace held by the backend
     * when the caller passes none). */
    int (*mla_decode)(const ds_mla_decode_args *a);
} ds_ops;

/* The CPU backend (OpenBLAS sgemm + OpenMP). Never NULL. */
const ds_ops *ds_ops_cpu(void);

/* The BLAS kernel OpenBLAS selected at load time (e.g. "Haswell", "Cooperlake"), for logs and benchmarks.
 * OPENBLAS_CORETYPE in the environment overrides the detection and is read once when the process starts. */
const char *ds_ops_cpu_blas_core(void);
/* The OPENBLAS_CORETYPE this CPU should run when OpenBLAS's own detection picked a kernel without AVX2 on a
 * CPU with AVX2/AVX-512 (a CPU newer than the library knows), or NULL: OPENBLAS_CORETYPE is set already, or
 * the detected kernel is right. */
const char *ds_ops_cpu_blas_better_core(void);
/* For a tool's main, before anything else: when ds_ops_cpu_blas_better_core() names a kernel, set
 * OPENBLAS_CORETYPE to it (and DS_OPENBLAS_DETECTED to what OpenBLAS detected) and exec the program again
 * with the same argv (OpenBLAS reads the variable only when it loads). Returns when there is nothing to do
 * or the exec failed. The one libds function that may replace the process: a tool asks for it. */
void ds_ops_cpu_blas_reexec(char *const argv[]);
/* One line for a log header: the kernel in use and where the choice came from. */
void ds_ops_cpu_blas_note(char *buf, size_t n);

#endif
