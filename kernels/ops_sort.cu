/* ops_sort.cu — CUDA ops built on a stable radix sort (CUB): the MoE counting sort by expert (moe_bucket)
 * and the embedding gradient, which sums the rows of each token in position order (deterministic, no
 * floating-point atomics). */
#include "ops_cuda_internal.cuh"

#include <cub/cub.cuh>

#define BLK 256

__global__ void k_iota(int32_t *v, int n) {
    int i = blockIdx.x * BLK + threadIdx.x;
    if (i < n) v[i] = i;
}

/* sort (key, position) pairs by key, stably; results in *keys_out / *pos_out (scratch) */
static int sort_pairs(const int32_t *keys_in, int n, int bits, int32_t **keys_out, int32_t **pos_out) {
    int32_t *pos_in = (int32_t *)ds_cuda_scratch(SCR_SORT_VALS, sizeof(int32_t) * n);
    int32_t *ko = (int32_t *)ds_cuda_scratch(SCR_SORT_KEYS2, sizeof(int32_t) * n);
    int32_t *po = (int32_t *)ds_cuda_scratch(SCR_SORT_VALS2, sizeof(int32_t) * n);
    if (!pos_in || !ko || !po) return 1;
    k_iota<<<grid1d(n, BLK), BLK>>>(pos_in, n);
    size_t tmp_bytes = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, tmp_bytes, (const uint32_t *)keys_in, (uint32_t *)ko, pos_in, po, n, 0,
                                    bits);
    void *tmp = ds_cuda_scratch(SCR_SORT_TMP, tmp_bytes ? tmp_bytes : 1);
    if (!tmp) return 1;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(tmp, tmp_bytes, (const uint32_t *)keys_in, (uint32_t *)ko, pos_in,
                                                    po, n, 0, bits);
    if (e != cudaSuccess) {
        ds_cuda_ops_note("radix sort", e);
        return 1;
    }
    *keys_out = ko;
    *pos_out = po;
    return 0;
}

/* ---- MoE: counting sort of (token, slot) assignments by expert ---------------------------------------- */

/* the sort key of a slot: its expert, or E for a slot left out (idx outside [0, E): sorts after all) */
__global__ void k_bucket_keys(int32_t *keys, const int32_t *idx, int m, int E) {
    int r = blockIdx.x * BLK + threadIdx.x;
    if (r < m) keys[r] = idx[r] >= 0 && idx[r] < E ? idx[r] : E;
}

__global__ void k_bucket_where(int32_t *where, const int32_t *order, const int32_t *keys, int m, int E) {
    int r = blockIdx.x * BLK + threadIdx.x;
    if (r < m) where[order[r]] = keys[r] < E ? r : -1;
}

/* off[e] = first sorted position with key >= e, for e in [0, E] */
__global__ void k_bucket_off(int32_t *off, const int32_t *keys, int m, int E) {
    int r = blockIdx.x * BLK + threadIdx.x;
    if (r > m) return;
    int prev = r == 0 ? -1 : keys[r - 1], cur = r == m ? E : keys[r];
    for (int e = prev + 1; e <= cur; e++) off[e] = r;
}

void cu_moe_bucket(int32_t *off, int32_t *order, int32_t *where, const int32_t *idx, int n, int K, int E) {
    int m = n * K;
    if (m <= 0) {
        cudaMemsetAsync(off, 0, sizeof(int32_t) * (size_t)(E + 1), 0);
        return;
    }
    int bits = 1;
    while ((1 << bits) <= E) bits++; /* keys 0..E */
    int32_t *kin = (int32_t *)ds_cuda_scratch(SCR_SORT_KEYS, sizeof(int32_t) * (size_t)m), *keys, *pos;
    if (!kin) return;
    k_bucket_keys<<<grid1d(m, BLK), BLK>>>(kin, idx, m, E);
    if (sort_pairs(kin, m, bits, &keys, &pos)) return;
    cudaMemcpyAsync(order, pos, sizeof(int32_t) * (size_t)m, cudaMemcpyDeviceToDevice, 0);
    k_bucket_where<<<grid1d(m, BLK), BLK>>>(where, pos, keys, m, E);
    k_bucket_off<<<grid1d(m + 1, BLK), BLK>>>(off, keys, m, E);
    OPS_LAUNCHED("moe_bucket");
}

/* ---- embedding gradient: each token's rows summed in position order ------------------------------------ */

__global__ void k_embed_bwd(float *dtable, const float *dx, const int32_t *keys, const int32_t *pos, int n, int d) {
    int p = blockIdx.x, j = blockIdx.y * BLK + threadIdx.x;
    int tok = keys[p];
    if (j >= d || tok < 0 || (p > 0 && keys[p - 1] == tok)) return; /* one thread column per run start */
    float acc = 0.f;
    for (int q = p; q < n && keys[q] == tok; q++) acc += dx[(size_t)pos[q] * d + j];
    dtable[(size_t)tok * d + j] += acc;
}

void cu_embed_bwd(float *dtable, const float *dx, const int32_t *tok, int n, int d) {
    if (n <= 0) return;
    int32_t *keys, *pos;
    if (sort_pairs(tok, n, 32, &keys, &pos)) return; /* negative ids sort last (as unsigned) and are skipped */
    k_embed_bwd<<<dim3(n, grid1d(d, BLK)), BLK>>>(dtable, dx, keys, pos, n, d);
    OPS_LAUNCHED("embed_bwd");
}
