/* grouped_gemm.cu — the routed experts' grouped GEMMs in one launch each, reading the per-expert row
 * offsets from device memory (ds_ops.gemm_rows_dev / gemm_wgrad_dev, ops/ops.h; CPU references in
 * lib/ops/grouped.c): the forward and the activation gradient (C[r] = alpha A[r] op(B_g) + beta C[r] for the
 * rows r of group g) and the weight gradient (C_g = alpha A_g^T B_g + beta C_g).
 *
 * Why our own kernel: cuBLASLt has no grouped bf16 GEMM with an fp32 output whose group sizes live on the
 * device, so the backend used to copy the offsets to the host (a synchronisation per MoE layer) and issue one
 * cuBLASLt call per expert. Here a block computes one 128x128 output tile with bf16 mma.sync (m16n8k16,
 * kernels/mma.cuh) and fp32 accumulators; operands are read in their stored type (fp32 activations, the
 * weights' bf16 shadow or fp32) and rounded to bf16 on the way to shared memory, so no conversion pass and no
 * scratch is needed. The next k-slice is loaded into registers while the current one is multiplied (two
 * shared-memory buffers, one barrier per slice).
 *
 * Work split: rows — the blocks along x are the (group, 128-row tile) pairs in group order, found by each
 * block from the offsets with a block-wide prefix sum over the groups' tile counts; the launch has
 * max_rows/128 + ng blocks along x (a bound on the tiles), surplus blocks return at once. wgrad — a block per
 * (group, output tile), looping over the group's rows. Each output element is owned by one block and summed
 * in a fixed order: results are the same bits run to run. Numerics: those of bf16 autocast (operands rounded
 * to bf16, products summed in fp32), as the backend's cuBLASLt path.
 */
#include "ops_cuda_internal.cuh"

#include <cub/cub.cuh>

#include <vector>

#include "mma.cuh"

extern "C" {
#include "ops_cuda.h"
}

namespace {

constexpr int BM = 128, BN = 128, BK = 32, LDS = BK + 8; /* +8 bf16 per row: ldmatrix rows miss each other's banks */
constexpr int THREADS = 256, PER_THREAD = BM * BK / THREADS;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

/* One operand's 128 x 32 tile (i: the output row or column index, k: the reduction index) in registers.
 * KC: k is contiguous in memory (element (i, k) at p[i*ld + k]); else i is (at p[k*ld + i]). i < ni and
 * k < nk are inside the operand, the rest is zero. Consecutive threads read consecutive addresses. */
template <typename T, bool KC> struct Tile {
    float v[PER_THREAD];
    __device__ __forceinline__ void load(const T *p, long long ld, int ni, int nk) {
#pragma unroll
        for (int j = 0; j < PER_THREAD; j++) {
            int idx = threadIdx.x + j * THREADS;
            int i = KC ? idx / BK : idx % BM, k = KC ? idx % BK : idx / BM;
            v[j] = i < ni && k < nk ? to_f(p[KC ? (long long)i * ld + k : (long long)k * ld + i]) : 0.f;
        }
    }
    __device__ __forceinline__ void store(__nv_bfloat16 *s) const {
#pragma unroll
        for (int j = 0; j < PER_THREAD; j++) {
            int idx = threadIdx.x + j * THREADS;
            int i = KC ? idx / BK : idx % BM, k = KC ? idx % BK : idx / BM;
            s[i * LDS + k] = __float2bfloat16_rn(v[j]);
        }
    }
};

/* acc (this thread's part of the 128x128 tile) += sa (128 x 32, [i][k]) * sb^T (sb: 128 x 32, [n][k]).
 * Warps 2 x 4, each 64 x 32: 4 x 4 mma tiles of 16 x 8. */
__device__ __forceinline__ void tile_mma(float acc[4][4][4], const __nv_bfloat16 *sa, const __nv_bfloat16 *sb) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, wm = w >> 2, wn = w & 3;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        uint32_t a[4][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
            ldmatrix_x4(smem_u32(sa + (wm * 64 + mi * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8), a[mi][0],
                        a[mi][1], a[mi][2], a[mi][3]);
#pragma unroll
        for (int p = 0; p < 2; p++) /* matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) */
            ldmatrix_x4(smem_u32(sb + (wn * 32 + p * 16 + ((lane >> 4) << 3) + (lane & 7)) * LDS + kk +
                                 ((lane >> 3) & 1) * 8),
                        b[2 * p][0], b[2 * p][1], b[2 * p + 1][0], b[2 * p + 1][1]);
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int nj = 0; nj < 4; nj++) mma_bf16_16816(acc[mi][nj], a[mi], b[nj][0], b[nj][1]);
    }
}

/* The k loop over nk reduction elements: A tile at pa (ni_a valid i), B tile at pb (ni_b valid); k-slice
 * t starts BK*t elements further along k (by kstep_* elements in memory). */
template <typename TA, bool KCA, typename TB, bool KCB>
__device__ __forceinline__ void tile_product(float acc[4][4][4], const TA *pa, long long lda, int ni_a, const TB *pb,
                                             long long ldb, int ni_b, int nk) {
    __shared__ __align__(16) __nv_bfloat16 sa[2][BM * LDS], sb[2][BN * LDS];
    Tile<TA, KCA> ta;
    Tile<TB, KCB> tb;
    const long long step_a = KCA ? BK : (long long)BK * lda, step_b = KCB ? BK : (long long)BK * ldb;
    const int nt = (nk + BK - 1) / BK;
    ta.load(pa, lda, ni_a, nk);
    tb.load(pb, ldb, ni_b, nk);
    ta.store(sa[0]);
    tb.store(sb[0]);
    __syncthreads();
    for (int t = 0; t < nt; t++) {
        const int cur = t & 1;
        const bool more = t + 1 < nt;
        if (more) { /* the next slice's global loads are in flight while this one multiplies */
            ta.load(pa + (t + 1) * step_a, lda, ni_a, nk - (t + 1) * BK);
            tb.load(pb + (t + 1) * step_b, ldb, ni_b, nk - (t + 1) * BK);
        }
        tile_mma(acc, sa[cur], sb[cur]);
        if (more) {
            ta.store(sa[cur ^ 1]);
            tb.store(sb[cur ^ 1]);
        }
        __syncthreads();
    }
}

/* C[i, j] = alpha acc + beta C[i, j] for i < ni, j < nj of the tile at C (beta 0: C's old value unread) */
__device__ __forceinline__ void tile_store(const float acc[4][4][4], float *C, long long ldc, int ni, int nj,
                                           float alpha, float beta) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, wm = w >> 2, wn = w & 3, g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int nj2 = 0; nj2 < 4; nj2++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = wm * 64 + mi * 16 + g + (e >> 1) * 8, j = wn * 32 + nj2 * 8 + 2 * c + (e & 1);
                if (i >= ni || j >= nj) continue;
                float *p = C + (long long)i * ldc + j;
                *p = beta == 0.f ? alpha * acc[mi][nj2][e] : alpha * acc[mi][nj2][e] + beta * *p;
            }
}

/* Forward / activation gradient. blockIdx.x: the tile in group order, blockIdx.y: the 128-column block.
 * B_g = B + g*strideB stored [N, K] (KCB: the forward, tb = 1) or [K, N] (the activation gradient). */
template <typename TB, bool KCB>
__global__ void __launch_bounds__(THREADS) k_rows(int ng, const int32_t *off, int N, int K, float alpha, const float *A,
                                                  int lda, const TB *B, size_t strideB, int ldb, float beta, float *C,
                                                  int ldc) {
    typedef cub::BlockScan<int, THREADS> Scan;
    __shared__ typename Scan::TempStorage scan;
    __shared__ int s_group, s_tile;
    const int want = blockIdx.x;
    if (threadIdx.x == 0) s_group = -1;
    int before = 0; /* tiles of the groups before this chunk */
    for (int g0 = 0; g0 < ng; g0 += THREADS) {
        const int g = g0 + threadIdx.x;
        const int tiles = g < ng ? (off[g + 1] - off[g] + BM - 1) / BM : 0;
        int incl, total;
        Scan(scan).InclusiveSum(tiles, incl, total);
        const int first = before + incl - tiles;
        if (tiles > 0 && want >= first && want < first + tiles) s_group = g, s_tile = want - first;
        before += total;
        __syncthreads(); /* scan storage reused; s_group seen by all */
    }
    const int g = s_group;
    if (g < 0) return; /* past the last tile (the grid is a bound) */
    const int r0 = off[g] + s_tile * BM, rows = min(BM, off[g + 1] - r0), n0 = blockIdx.y * BN;
    float acc[4][4][4] = {};
    const TB *bg = B + g * strideB + (KCB ? (size_t)n0 * ldb : (size_t)n0);
    tile_product<float, true, TB, KCB>(acc, A + (size_t)r0 * lda, lda, rows, bg, ldb, N - n0, K);
    tile_store(acc, C + (size_t)r0 * ldc + n0, ldc, rows, N - n0, alpha, beta);
}

/* Weight gradient: blockIdx.y the group, blockIdx.x the output tile of C_g [M, N]; the reduction runs over
 * the group's rows: C_g[m, n] = alpha Σ_r A[r, m] B[r, n] + beta C_g[m, n]. */
__global__ void __launch_bounds__(THREADS) k_wgrad(const int32_t *off, int M, int N, float alpha, const float *A,
                                                   int lda, const float *B, int ldb, float beta, float *C,
                                                   size_t strideC, int ldc) {
    const int g = blockIdx.y, tn = (N + BN - 1) / BN, m0 = (blockIdx.x / tn) * BM, n0 = (blockIdx.x % tn) * BN;
    const int r0 = off[g], nk = off[g + 1] - r0;
    if (nk <= 0 && beta == 1.f) return; /* an empty group leaves C_g * beta */
    float acc[4][4][4] = {};
    if (nk > 0)
        tile_product<float, false, float, false>(acc, A + (size_t)r0 * lda + m0, lda, M - m0, B + (size_t)r0 * ldb + n0,
                                                 ldb, N - n0, nk);
    tile_store(acc, C + g * strideC + (size_t)m0 * ldc + n0, ldc, M - m0, N - n0, alpha, beta);
}

/* Outside bf16 mode (DS_CUDA_GEMM=tf32|f32) the products keep the backend's cuBLASLt path: the offsets
 * come to the host (a synchronisation) and go through gemm_rows / gemm_wgrad. */
const int64_t *host_offsets(const int32_t *off, int ng) {
    static std::vector<int32_t> h32;
    static std::vector<int64_t> h64;
    h32.resize((size_t)ng + 1);
    h64.resize((size_t)ng + 1);
    cudaError_t e = cudaMemcpy(h32.data(), off, sizeof(int32_t) * (ng + 1), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
        ds_cuda_ops_note("grouped GEMM offsets", e);
        return NULL;
    }
    for (int g = 0; g <= ng; g++) h64[g] = h32[g];
    return h64.data();
}

} // namespace

void cu_gemm_rows_dev(int ng, const int32_t *off, int max_rows, int tb, int N, int K, float alpha, const float *A,
                      int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    if (ng <= 0 || max_rows <= 0 || N <= 0) return;
    if (ds_ops_cuda_gemm() != DS_CUDA_GEMM_BF16) {
        const int64_t *h = host_offsets(off, ng);
        if (h) ds_ops_cuda()->gemm_rows(ng, h, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
        return;
    }
    const dim3 grid((unsigned)(max_rows / BM + ng), (unsigned)((N + BN - 1) / BN));
    const __nv_bfloat16 *b16 = ds_cuda_shadow_of(B); /* a parameter buffer's bf16 copy: half the bytes */
    if (b16 && tb) k_rows<__nv_bfloat16, true><<<grid, THREADS>>>(ng, off, N, K, alpha, A, lda, b16, strideB, ldb, beta, C, ldc);
    else if (b16) k_rows<__nv_bfloat16, false><<<grid, THREADS>>>(ng, off, N, K, alpha, A, lda, b16, strideB, ldb, beta, C, ldc);
    else if (tb) k_rows<float, true><<<grid, THREADS>>>(ng, off, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
    else k_rows<float, false><<<grid, THREADS>>>(ng, off, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
    OPS_LAUNCHED("gemm_rows_dev");
}

void cu_gemm_wgrad_dev(int ng, const int32_t *off, int M, int N, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, size_t strideC, int ldc) {
    if (ng <= 0 || M <= 0 || N <= 0) return;
    if (ds_ops_cuda_gemm() != DS_CUDA_GEMM_BF16) {
        const int64_t *h = host_offsets(off, ng);
        if (h) ds_ops_cuda()->gemm_wgrad(ng, h, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
        return;
    }
    const dim3 grid((unsigned)(((M + BM - 1) / BM) * ((N + BN - 1) / BN)), (unsigned)ng);
    k_wgrad<<<grid, THREADS>>>(off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
    OPS_LAUNCHED("gemm_wgrad_dev");
}
