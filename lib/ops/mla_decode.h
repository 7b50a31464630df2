/* mla_decode.h — MLA decode attention over the latent KV cache (spec 3.5, the "absorbed" path).
 *
 * Owns: the op's one signature (an argument struct shared by the CPU reference here and the CUDA kernel
 * ds_cuda_mla_decode in kernels/mla_decode.cu), its argument validation, and the CPU implementation.
 *
 * Decode MLA is multi-query attention with `heads` query heads and one shared KV head whose rows are
 * the cached [c_KV (kv_rank) ; k_pe (rope_dim)] vectors; V is the first kv_rank dims of the same row:
 *     s_t   = scale * (q[0:kv_rank] . c_KV_t + q[kv_rank:] . k_pe_t)        (q = [W_UK^T q_nope ; q_pe])
 *     out   = sum_t softmax(s)_t c_KV_t,     lse = log sum_t exp(s_t)   (natural log)
 * Each sequence b has kv_len[b] cached tokens, the q_len new ones included (q_len 1, or 2 for MTP
 * verification): query token j sees cache positions t < kv_len[b] - q_len + 1 + j (causal offset).
 *
 * Layouts (elements, row = kv_rank + rope_dim):
 *   q    [batch][q_len][heads][row]          out [batch][q_len][heads][kv_rank]     lse [batch][q_len][heads]
 *   kv   pages [n_pages][page_size][row]; token t of sequence b is row (t % page_size) of page
 *        block_table[b * max_pages + t / page_size]. block_table NULL = one page per sequence:
 *        sequence b is page b and page_size is its capacity (a contiguous [batch][capacity][row] cache).
 * dtypes: q, kv, out are DS_F32 or DS_BF16 (any mix on the CPU; the GPU kernel's set is in
 * kernels/mla_decode.cu). Arithmetic is fp32. A sequence with no visible token (kv_len 0) gives out = 0
 * and lse = -inf.
 */
#ifndef DS_OPS_MLA_DECODE_H
#define DS_OPS_MLA_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

typedef struct {
    int batch, q_len, heads;
    int kv_rank, rope_dim;
    float scale;                /* softmax scale, YaRN's mscale^2 folded in (spec 3.3) */
    const void *q;      ds_dtype q_type;
    const void *kv;     ds_dtype kv_type;
    const int32_t *kv_len;      /* [batch]; on the GPU a device pointer */
    const int32_t *block_table; /* [batch][max_pages] or NULL; on the GPU a device pointer */
    int page_size, max_pages, n_pages;
    void *out;          ds_dtype out_type;
    float *lse;                 /* may be NULL */
    /* GPU only (ignored on the CPU): scratch for split-KV partials, see ds_cuda_mla_decode_workspace,
       the stream (NULL = default), and an upper bound on kv_len (0 = page capacity) that sizes the grid. */
    void *workspace; size_t workspace_bytes;
    void *stream;
    int max_kv_len;
} ds_mla_decode_args;

/* Shape/type checks shared by both backends (no data is read). */
int ds_mla_decode_check(const ds_mla_decode_args *a);

/* CPU reference. Reads kv_len/block_table from host memory and validates them (lengths within the
 * pages, page ids < n_pages). Deterministic: each output is a fixed-order reduction. */
int ds_mla_decode(const ds_mla_decode_args *a);

#endif
