/* mla_decode.cu — MLA decode attention on the GPU; see mla_decode_cuda.h and ops/mla_decode.h.
 *
 * Tensor-core path (kv_rank 512 + rope 64, bf16): a CTA owns ROWS query rows (heads x query tokens of one
 * sequence, flattened) and one split of that sequence's cache. Cache tiles of NT tokens stream through
 * shared memory with cp.async, STAGES deep; each tile is read once from HBM and used by all ROWS rows.
 * Warps form RG = ROWS/16 row groups x TH token parts x DQ dim parts (see mla_decode_tc):
 *   S = Q K^T   16 rows x NT/TH tokens over 576/DQ dims per warp (mma m16n8k16, independent accumulator
 *               chains), DQ partials summed through shared memory in a fixed order
 *   softmax     online, log2 domain, in registers; P stays in registers: the accumulator layout of two
 *               n8 tiles is the A-fragment layout of one k16 step
 *   O += P V    16 rows x 512/DQ output dims per warp; V = the first 512 dims of the cached rows;
 *               the TH token parts run separate online softmaxes and merge once at the end
 * Two barriers per tile: tile ready (and the previous tile's buffer free for the next prefetch), and
 * the partial-S exchange. With several splits each writes a normalized fp32 partial and its
 * log-sum-exp, and a combine kernel merges them; splits are chosen on the host to fill whole waves.
 * Measured designs and their numbers: docs/BENCHMARKS.md (GPU section).
 */
#include "cuda_check.cuh"
#include "mma.cuh"

#include <math.h>

extern "C" {
#include "cuda_rt.h"
#include "mla_decode_cuda.h"
}

namespace {

constexpr int DQK = 576, DV = 512, KSTEPS = DQK / 16;
constexpr int SROW = DQK + 8; /* bf16 per shared row: a 16-byte pad makes ldmatrix conflict-free */
constexpr int CHUNKS = DQK * 2 / 16; /* 16-byte chunks per cache row */
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

struct Params {
    const __nv_bfloat16 *q, *kv;
    const int32_t *kv_len, *block_table;
    int q_len, heads, rows; /* rows = q_len * heads per sequence */
    int page_size, max_pages;
    float scale_log2;
    void *out;
    int out_f32;
    float *lse;
    float *part_o, *part_lse; /* NULL when splits == 1 */
    int splits, row_blocks, rows_pad;
};

template <int ROWS, int TH, int DQ, int NT, int STAGES> struct Cfg {
    static constexpr int RG = ROWS / 16, WARPS = RG * TH * DQ, THREADS = WARPS * 32;
    static constexpr int S_TOK = NT / TH, SN = S_TOK / 8; /* tokens (n8 tiles) of S per warp */
    static constexpr int KS = KSTEPS / DQ;                /* k16 steps of S per warp */
    static constexpr int O_COLS = DV / DQ, ON = O_COLS / 8;
    static constexpr int SPAD = S_TOK + 8; /* fp32 partial-S row stride: conflict-free float2 access */
    static constexpr int LOADS = (NT * CHUNKS + THREADS - 1) / THREADS; /* 16-byte copies per thread per tile */
    static constexpr size_t SMEM =
        (size_t)(ROWS * SROW + STAGES * NT * SROW) * 2 + (size_t)WARPS * 16 * SPAD * 4;
    static_assert(KSTEPS % DQ == 0 && S_TOK % 16 == 0 && ON % 2 == 0 && STAGES >= 2 && WARPS <= 16, "shape");
    /* the token halves merge through the (then idle) tile buffers */
    static_assert(TH == 1 || (size_t)RG * DQ * 32 * (ON * 4 + 4) * 4 <= (size_t)STAGES * NT * SROW * 2, "merge");
};

__device__ __forceinline__ const __nv_bfloat16 *cache_row(const Params &p, int b, int t) {
    int page = p.block_table ? p.block_table[(size_t)b * p.max_pages + t / p.page_size] : b;
    return p.kv + ((size_t)page * p.page_size + t % p.page_size) * DQK;
}

/* Warp (rg, th, dq) — row group, token part, dim part:
 *   S    rows rg, tokens th*S_TOK.. of each tile, dims dq*KS*16.. (partial); partials of the DQ warps
 *        sharing (rg, th) are summed through shared memory in a fixed order, so they hold identical S
 *   P V  the same rows and tokens, output dims dq*O_COLS..: each token part keeps its own online softmax
 *        (an in-CTA split of the cache), and the TH parts merge once at the end. */
template <int ROWS, int TH, int DQ, int NT, int STAGES>
__global__ void __launch_bounds__(Cfg<ROWS, TH, DQ, NT, STAGES>::THREADS, 1) mla_decode_tc(Params p) {
    using C = Cfg<ROWS, TH, DQ, NT, STAGES>;
    extern __shared__ __align__(16) unsigned char smem[];
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)smem;
    __nv_bfloat16 *Ks = Qs + ROWS * SROW;
    float *red_s = (float *)(Ks + STAGES * NT * SROW);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int dq = warp % DQ, th = (warp / DQ) % TH, rg = warp / (DQ * TH);
    const int g = lane >> 2, c4 = lane & 3;
    const int rb = blockIdx.x % p.row_blocks, split = blockIdx.x / p.row_blocks, b = blockIdx.y;
    const int row0 = rb * ROWS;
    const int len = p.kv_len[b];
    const int n_tiles = (len + NT - 1) / NT;
    const int per_split = (n_tiles + p.splits - 1) / p.splits;
    const int tile_begin = split * per_split;
    const int n_iter = max(0, min(n_tiles, tile_begin + per_split) - tile_begin);
    /* tiles never straddle a page: one row pointer per tile, rows contiguous inside it */
    const bool page_tiles = !p.block_table || p.page_size % NT == 0;

    int vis[2]; /* cache positions visible to the two rows this thread holds */
    for (int h = 0; h < 2; h++) {
        int r = row0 + rg * 16 + g + 8 * h;
        vis[h] = r < p.rows ? len - p.q_len + 1 + r / p.heads : len;
    }

    auto load_tile = [&](int tile, int stage) {
        const uint32_t dst = smem_u32(Ks + stage * NT * SROW);
        const int t0 = (tile_begin + tile) * NT;
        if (page_tiles) {
            const __nv_bfloat16 *base = cache_row(p, b, t0);
#pragma unroll
            for (int i = 0; i < C::LOADS; i++) {
                int c = threadIdx.x + i * C::THREADS;
                if (C::LOADS * C::THREADS != NT * CHUNKS && c >= NT * CHUNKS) break;
                int tok = c / CHUNKS, ch = c % CHUNKS;
                bool ok = t0 + tok < len;
                cp_async_16(dst + tok * SROW * 2 + ch * 16, ok ? base + tok * DQK + ch * 8 : p.kv, ok ? 16 : 0);
            }
        } else {
            for (int tok = warp; tok < NT; tok += C::WARPS) {
                int t = t0 + tok;
                bool ok = t < len;
                const __nv_bfloat16 *src = ok ? cache_row(p, b, t) : p.kv;
                for (int ch = lane; ch < CHUNKS; ch += 32)
                    cp_async_16(dst + tok * SROW * 2 + ch * 16, src + ch * 8, ok ? 16 : 0);
            }
        }
    };

    if (n_iter > 0) {
        for (int r = warp; r < ROWS; r += C::WARPS) {
            bool ok = row0 + r < p.rows;
            const __nv_bfloat16 *src = ok ? p.q + ((size_t)b * p.rows + row0 + r) * DQK : p.q;
            uint32_t d = smem_u32(Qs + r * SROW);
            for (int ch = lane; ch < CHUNKS; ch += 32) cp_async_16(d + ch * 16, src + ch * 8, ok ? 16 : 0);
        }
        load_tile(0, 0);
        cp_async_commit();
        for (int s = 1; s < STAGES - 1; s++) {
            if (s < n_iter) load_tile(s, s);
            cp_async_commit();
        }
    }

    float oacc[C::ON][4];
#pragma unroll
    for (int n = 0; n < C::ON; n++) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

    const uint32_t q_addr = smem_u32(Qs + (rg * 16 + (lane & 15)) * SROW + 8 * (lane >> 4)) + dq * C::KS * 32;
    const int warp_slot = (rg * TH + th) * DQ; /* first partial-S slot of this (rg, th) */
    float *red_mine = red_s + ((size_t)(warp_slot + dq) * 16 + g) * C::SPAD + 2 * c4;
    const float *red_row = red_s + ((size_t)warp_slot * 16 + g) * C::SPAD + 2 * c4;

    for (int it = 0; it < n_iter; it++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* tile `it` landed for every thread; tile it-1's buffer is free */
        if (it + STAGES - 1 < n_iter) load_tile(it + STAGES - 1, (it + STAGES - 1) % STAGES);
        cp_async_commit();

        const __nv_bfloat16 *Kt = Ks + (it % STAGES) * NT * SROW + th * C::S_TOK * SROW;
        const int t0 = (tile_begin + it) * NT + th * C::S_TOK;

        float sacc[C::SN][4];
#pragma unroll
        for (int n = 0; n < C::SN; n++) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.f;
        const uint32_t k_addr =
            smem_u32(Kt + ((lane & 7) + 8 * (lane >> 4)) * SROW + 8 * ((lane >> 3) & 1)) + dq * C::KS * 32;
#pragma unroll
        for (int ks = 0; ks < C::KS; ks++) {
            uint32_t a[4];
            ldmatrix_x4(q_addr + ks * 32, a[0], a[1], a[2], a[3]);
#pragma unroll
            for (int n = 0; n < C::SN; n += 2) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4(k_addr + n * 8 * SROW * 2 + ks * 32, b0, b1, b2, b3);
                mma_bf16_16816(sacc[n], a, b0, b1);
                mma_bf16_16816(sacc[n + 1], a, b2, b3);
            }
        }
        if (DQ > 1) {
#pragma unroll
            for (int n = 0; n < C::SN; n++) {
                *(float2 *)(red_mine + n * 8) = make_float2(sacc[n][0], sacc[n][1]);
                *(float2 *)(red_mine + 8 * C::SPAD + n * 8) = make_float2(sacc[n][2], sacc[n][3]);
            }
            __syncthreads();
#pragma unroll
            for (int n = 0; n < C::SN; n++) {
                float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll
                for (int w = 0; w < DQ; w++) {
                    const float *src = red_row + (size_t)w * 16 * C::SPAD + n * 8;
                    float2 u = *(const float2 *)src, v = *(const float2 *)(src + 8 * C::SPAD);
                    s0 += u.x; s1 += u.y; s2 += v.x; s3 += v.y;
                }
                sacc[n][0] = s0; sacc[n][1] = s1; sacc[n][2] = s2; sacc[n][3] = s3;
            }
        }

        /* scale into the log2 domain, mask, online softmax (identical in the DQ warps of (rg, th)) */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < C::SN; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int t = t0 + n * 8 + 2 * c4 + (e & 1);
                float v = t < vis[e >> 1] ? sacc[n][e] * p.scale_log2 : -INFINITY;
                sacc[n][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        float corr[2], m_use[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
            float m_new = fmaxf(m_run[h], mx[h]);
            m_use[h] = m_new == -INFINITY ? 0.f : m_new;
            corr[h] = exp2f(m_run[h] - m_use[h]);
            m_run[h] = m_new;
        }
        float psum[2] = {0.f, 0.f};
#pragma unroll
        for (int n = 0; n < C::SN; n++) {
            sacc[n][0] = exp2f(sacc[n][0] - m_use[0]);
            sacc[n][1] = exp2f(sacc[n][1] - m_use[0]);
            sacc[n][2] = exp2f(sacc[n][2] - m_use[1]);
            sacc[n][3] = exp2f(sacc[n][3] - m_use[1]);
            psum[0] += sacc[n][0] + sacc[n][1];
            psum[1] += sacc[n][2] + sacc[n][3];
        }
        l_run[0] = l_run[0] * corr[0] + psum[0];
        l_run[1] = l_run[1] * corr[1] + psum[1];
#pragma unroll
        for (int n = 0; n < C::ON; n++) {
            oacc[n][0] *= corr[0]; oacc[n][1] *= corr[0];
            oacc[n][2] *= corr[1]; oacc[n][3] *= corr[1];
        }

        /* O += P V: P from registers, V (this warp's tokens and output columns) from the tile */
        const uint32_t v_addr =
            smem_u32(Kt + ((lane & 7) + 8 * ((lane >> 3) & 1)) * SROW + dq * C::O_COLS + 8 * (lane >> 4));
#pragma unroll
        for (int j = 0; j < C::S_TOK / 16; j++) {
            uint32_t a[4];
            a[0] = pack_bf16x2(sacc[2 * j][0], sacc[2 * j][1]);
            a[1] = pack_bf16x2(sacc[2 * j][2], sacc[2 * j][3]);
            a[2] = pack_bf16x2(sacc[2 * j + 1][0], sacc[2 * j + 1][1]);
            a[3] = pack_bf16x2(sacc[2 * j + 1][2], sacc[2 * j + 1][3]);
#pragma unroll
            for (int n = 0; n < C::ON; n += 2) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4_trans(v_addr + (j * 16 * SROW + n * 8) * 2, b0, b1, b2, b3);
                mma_bf16_16816(oacc[n], a, b0, b1);
                mma_bf16_16816(oacc[n + 1], a, b2, b3);
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int h = 0; h < 2; h++) {
        l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
        l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
    }
    if (TH > 1) {
        /* token parts th > 0 hand (m, l, O) to part 0 through the idle tile buffers; part 0 merges */
        __syncthreads();
        float *mrg = (float *)Ks;
        const size_t per_warp = (size_t)32 * (C::ON * 4 + 4);
        for (int part = 1; part < TH; part++) {
            float *slot = mrg + (size_t)(rg * DQ + dq) * per_warp;
            if (th == part) {
#pragma unroll
                for (int n = 0; n < C::ON; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) slot[(n * 4 + e) * 32 + lane] = oacc[n][e];
                slot[(C::ON * 4 + 0) * 32 + lane] = m_run[0];
                slot[(C::ON * 4 + 1) * 32 + lane] = m_run[1];
                slot[(C::ON * 4 + 2) * 32 + lane] = l_run[0];
                slot[(C::ON * 4 + 3) * 32 + lane] = l_run[1];
            }
            __syncthreads();
            if (th == 0) {
                float w0[2], w1[2];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float m1 = slot[(C::ON * 4 + h) * 32 + lane], l1 = slot[(C::ON * 4 + 2 + h) * 32 + lane];
                    float m = fmaxf(m_run[h], m1);
                    float mu = m == -INFINITY ? 0.f : m;
                    w0[h] = exp2f(m_run[h] - mu);
                    w1[h] = exp2f(m1 - mu);
                    l_run[h] = l_run[h] * w0[h] + l1 * w1[h];
                    m_run[h] = m;
                }
#pragma unroll
                for (int n = 0; n < C::ON; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        oacc[n][e] = oacc[n][e] * w0[e >> 1] + slot[(n * 4 + e) * 32 + lane] * w1[e >> 1];
            }
            __syncthreads();
        }
        if (th != 0) return;
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int r = row0 + rg * 16 + g + 8 * h;
        float l = l_run[h];
        float inv = l > 0.f ? 1.f / l : 0.f;
        float lse2 = l > 0.f ? m_run[h] + log2f(l) : -INFINITY;
        if (r >= p.rows) continue;
        if (p.splits == 1) {
            size_t orow = (size_t)b * p.rows + r;
#pragma unroll
            for (int n = 0; n < C::ON; n++) {
                int col = dq * C::O_COLS + n * 8 + 2 * c4;
                float v0 = oacc[n][2 * h] * inv, v1 = oacc[n][2 * h + 1] * inv;
                if (p.out_f32) {
                    *(float2 *)((float *)p.out + orow * DV + col) = make_float2(v0, v1);
                } else {
                    *(uint32_t *)((__nv_bfloat16 *)p.out + orow * DV + col) = pack_bf16x2(v0, v1);
                }
            }
            if (dq == 0 && c4 == 0 && p.lse) p.lse[orow] = lse2 * LN2;
        } else {
            size_t prow = ((size_t)b * p.splits + split) * p.rows_pad + r;
#pragma unroll
            for (int n = 0; n < C::ON; n++) {
                int col = dq * C::O_COLS + n * 8 + 2 * c4;
                *(float2 *)(p.part_o + prow * DV + col) =
                    make_float2(oacc[n][2 * h] * inv, oacc[n][2 * h + 1] * inv);
            }
            if (dq == 0 && c4 == 0) p.part_lse[prow] = lse2;
        }
    }
}

/* Merges the splits of one (sequence, row): weights 2^(lse_i - max). 128 threads x 4 columns. */
__global__ void mla_decode_combine(Params p) {
    const int r = blockIdx.x, b = blockIdx.y;
    const size_t base = (size_t)b * p.splits * p.rows_pad + r;
    float mx = -INFINITY;
    for (int s = 0; s < p.splits; s++) mx = fmaxf(mx, p.part_lse[base + (size_t)s * p.rows_pad]);
    float sum = 0.f;
    for (int s = 0; s < p.splits; s++) {
        float l = p.part_lse[base + (size_t)s * p.rows_pad];
        sum += l == -INFINITY ? 0.f : exp2f(l - mx);
    }
    float inv = sum > 0.f ? 1.f / sum : 0.f;
    int col = threadIdx.x * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s = 0; s < p.splits; s++) {
        float l = p.part_lse[base + (size_t)s * p.rows_pad];
        if (l == -INFINITY) continue;
        float w = exp2f(l - mx) * inv;
        float4 v = *(const float4 *)(p.part_o + (base + (size_t)s * p.rows_pad) * DV + col);
        acc.x += w * v.x; acc.y += w * v.y; acc.z += w * v.z; acc.w += w * v.w;
    }
    size_t orow = (size_t)b * p.rows + r;
    if (p.out_f32) {
        *(float4 *)((float *)p.out + orow * DV + col) = acc;
    } else {
        uint2 v;
        v.x = pack_bf16x2(acc.x, acc.y);
        v.y = pack_bf16x2(acc.z, acc.w);
        *(uint2 *)((__nv_bfloat16 *)p.out + orow * DV + col) = v;
    }
    if (threadIdx.x == 0 && p.lse) p.lse[orow] = sum > 0.f ? (mx + log2f(sum)) * LN2 : -INFINITY;
}

/* The simple path: a block of 4 warps per (sequence, row); warp w takes tokens w, w+4, ... with its own
 * online softmax (lane l owns output dims l, l+32, ...), and the warps merge at the end. */
constexpr int SIMPLE_MAX_ROW = 1024, SIMPLE_PER_LANE = SIMPLE_MAX_ROW / 32;

template <typename TQ, typename TKV, typename TO>
__global__ void mla_decode_simple(const TQ *q, const TKV *kv, const int32_t *kv_len, const int32_t *block_table,
                                  int q_len, int heads, int R, int Dr, int page_size, int max_pages, float scale,
                                  TO *out, float *lse) {
    __shared__ float qs[SIMPLE_MAX_ROW];
    __shared__ float wm[4], wl[4];
    __shared__ float wacc[4][SIMPLE_MAX_ROW];
    const int D = R + Dr, rows = q_len * heads;
    const int r = blockIdx.x, b = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t qrow = (size_t)b * rows + r;
    for (int e = threadIdx.x; e < D; e += blockDim.x) qs[e] = ds_ld_f32<TQ>(q + qrow * D + e);
    __syncthreads();
    const int len = kv_len[b];
    const int vis = len == 0 ? 0 : len - q_len + 1 + r / heads;
    float m = -INFINITY, l = 0.f, acc[SIMPLE_PER_LANE];
#pragma unroll
    for (int i = 0; i < SIMPLE_PER_LANE; i++) acc[i] = 0.f;
    for (int t = warp; t < vis; t += 4) {
        int page = block_table ? block_table[(size_t)b * max_pages + t / page_size] : b;
        const TKV *row = kv + ((size_t)page * page_size + t % page_size) * D;
        float d = 0.f;
        for (int e = lane; e < D; e += 32) d += qs[e] * ds_ld_f32<TKV>(row + e);
        for (int o = 16; o; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        float s = d * scale, mn = fmaxf(m, s);
        float corr = m == -INFINITY ? 0.f : expf(m - mn), pw = expf(s - mn);
        l = l * corr + pw;
#pragma unroll
        for (int i = 0; i < SIMPLE_PER_LANE; i++) {
            int e = lane + 32 * i;
            if (e < R) acc[i] = acc[i] * corr + pw * ds_ld_f32<TKV>(row + e);
        }
        m = mn;
    }
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
#pragma unroll
    for (int i = 0; i < SIMPLE_PER_LANE; i++)
        if (lane + 32 * i < R) wacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float M = fmaxf(fmaxf(wm[0], wm[1]), fmaxf(wm[2], wm[3])), L = 0.f, w[4];
    for (int k = 0; k < 4; k++) {
        w[k] = wm[k] == -INFINITY ? 0.f : expf(wm[k] - M);
        L += w[k] * wl[k];
    }
    float inv = L > 0.f ? 1.f / L : 0.f;
    for (int e = threadIdx.x; e < R; e += blockDim.x) {
        float v = 0.f;
        for (int k = 0; k < 4; k++) v += w[k] * wacc[k][e];
        ds_st_f32<TO>(out + qrow * R + e, v * inv);
    }
    if (threadIdx.x == 0 && lse) lse[qrow] = L > 0.f ? M + logf(L) : -INFINITY;
}

ds_mla_decode_tuning g_tune, g_last;

int device_sms() {
    static int sms = 0;
    if (!sms) {
        int dev = 0;
        cudaGetDevice(&dev);
        if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) sms = 1;
    }
    return sms;
}

int fast_path_ok(const ds_mla_decode_args *a) {
    return a->kv_rank == 512 && a->rope_dim == 64 && a->q_type == DS_BF16 && a->kv_type == DS_BF16 &&
           (a->out_type == DS_BF16 || a->out_type == DS_F32) && ((uintptr_t)a->q % 16) == 0 &&
           ((uintptr_t)a->kv % 16) == 0;
}

/* The tensor-core kernel's instantiations: rows per CTA, column groups (warps = rows/16 x CG), tile
 * tokens, pipeline stages. make_plan picks the first entry for the shape's rows unless a tuning call
 * forces another (bench/gpu_mla_decode sweeps them). */
struct TcConfig {
    int rows, th, dq, nt, stages;
    size_t smem;
    int threads;
    void (*kernel)(Params);
};

#define TC_CONFIG(R, T, D, N, S)                                                                       \
    { R, T, D, N, S, Cfg<R, T, D, N, S>::SMEM, Cfg<R, T, D, N, S>::THREADS, mla_decode_tc<R, T, D, N, S> }
const TcConfig tc_configs[] = {
    /* first of each row count = the default (fastest in bench/gpu_mla_decode's sweep on an H100) */
    TC_CONFIG(16, 2, 4, 64, 2), TC_CONFIG(16, 2, 4, 32, 4), TC_CONFIG(16, 4, 2, 64, 2),
    TC_CONFIG(32, 2, 2, 64, 2), TC_CONFIG(32, 1, 4, 64, 2), TC_CONFIG(32, 1, 4, 32, 4),
    TC_CONFIG(64, 1, 2, 32, 2), TC_CONFIG(64, 1, 2, 32, 3), TC_CONFIG(64, 1, 4, 32, 3),
};
const int n_tc_configs = (int)(sizeof tc_configs / sizeof tc_configs[0]);

struct Plan {
    const TcConfig *cfg;
    int row_blocks, rows_pad, splits;
};

int capacity(const ds_mla_decode_args *a) {
    long long cap = a->block_table ? (long long)a->page_size * a->max_pages : a->page_size;
    if (a->max_kv_len > 0 && a->max_kv_len < cap) cap = a->max_kv_len;
    return (int)(cap > 0x7fffffff ? 0x7fffffff : cap);
}

size_t split_bytes(const ds_mla_decode_args *a, const Plan &pl, int splits) {
    return (size_t)a->batch * splits * pl.rows_pad * (DV + 1) * sizeof(float);
}

/* Rows per CTA by rows per sequence; splits minimize (waves x tiles per split) for the longest
 * sequence, a whole-wave model of a GPU running one CTA per SM. */
Plan make_plan(const ds_mla_decode_args *a, size_t ws_bytes) {
    Plan pl;
    int rows = a->q_len * a->heads;
    int want = rows <= 16 ? 16 : rows <= 32 ? 32 : 64;
    pl.cfg = nullptr;
    for (int i = 0; i < n_tc_configs && !pl.cfg; i++)
        if (g_tune.force_config > 0 ? i == g_tune.force_config - 1 : tc_configs[i].rows == want) pl.cfg = &tc_configs[i];
    if (!pl.cfg) pl.cfg = &tc_configs[0];
    pl.row_blocks = (rows + pl.cfg->rows - 1) / pl.cfg->rows;
    pl.rows_pad = pl.row_blocks * pl.cfg->rows;
    long long ctas = (long long)pl.row_blocks * a->batch;
    int tiles = (capacity(a) + pl.cfg->nt - 1) / pl.cfg->nt;
    int sms = device_sms(), best = 1;
    double best_cost = 1e300;
    for (int s = 1; s <= tiles && s <= 64; s++) {
        if (s > 1 && split_bytes(a, pl, s) > ws_bytes) break;
        double waves = (double)((ctas * s + sms - 1) / sms);
        /* a CTA also pays ~2 tiles of fixed cost (queries, epilogue); the combine pass ~2% */
        double cost = waves * ((tiles + s - 1) / s + 2) * (s > 1 ? 1.02 : 1.0);
        if (cost < best_cost - 1e-9) { best_cost = cost; best = s; }
    }
    pl.splits = g_tune.force_splits > 0 ? g_tune.force_splits : best;
    return pl;
}

int launch_tc(const TcConfig *c, const Params &p, int batch, cudaStream_t st) {
    static bool attr_set[16];
    int i = (int)(c - tc_configs);
    if (!attr_set[i]) {
        DS_CU_TRY(cudaFuncSetAttribute(c->kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)c->smem));
        attr_set[i] = true;
    }
    dim3 grid(p.row_blocks * p.splits, batch);
    c->kernel<<<grid, c->threads, c->smem, st>>>(p);
    return DS_CUDA_LAUNCHED("mla_decode_tc");
}

template <typename TQ, typename TKV>
int launch_simple_out(const ds_mla_decode_args *a, cudaStream_t st) {
    dim3 grid(a->q_len * a->heads, a->batch);
    const TQ *q = (const TQ *)a->q;
    const TKV *kv = (const TKV *)a->kv;
    if (a->out_type == DS_F32)
        mla_decode_simple<TQ, TKV, float><<<grid, 128, 0, st>>>(q, kv, a->kv_len, a->block_table, a->q_len, a->heads,
                                                                a->kv_rank, a->rope_dim, a->page_size, a->max_pages,
                                                                a->scale, (float *)a->out, a->lse);
    else
        mla_decode_simple<TQ, TKV, __nv_bfloat16><<<grid, 128, 0, st>>>(
            q, kv, a->kv_len, a->block_table, a->q_len, a->heads, a->kv_rank, a->rope_dim, a->page_size,
            a->max_pages, a->scale, (__nv_bfloat16 *)a->out, a->lse);
    return DS_CUDA_LAUNCHED("mla_decode_simple");
}

int launch_simple(const ds_mla_decode_args *a, cudaStream_t st) {
    if (a->kv_rank + a->rope_dim > SIMPLE_MAX_ROW)
        return ds_fail(DS_EUSAGE, "mla decode (cuda): rows of %d elements exceed %d", a->kv_rank + a->rope_dim,
                       SIMPLE_MAX_ROW);
    bool qf = a->q_type == DS_F32, kf = a->kv_type == DS_F32;
    if (qf && kf) return launch_simple_out<float, float>(a, st);
    if (qf) return launch_simple_out<float, __nv_bfloat16>(a, st);
    if (kf) return launch_simple_out<__nv_bfloat16, float>(a, st);
    return launch_simple_out<__nv_bfloat16, __nv_bfloat16>(a, st);
}

} // namespace

extern "C" size_t ds_cuda_mla_decode_workspace(const ds_mla_decode_args *a) {
    if (ds_mla_decode_check(a) || !fast_path_ok(a)) return 0;
    Plan pl = make_plan(a, (size_t)-1);
    return pl.splits > 1 ? split_bytes(a, pl, pl.splits) : 0;
}

extern "C" void ds_cuda_mla_decode_tune(ds_mla_decode_tuning *t) {
    if (t) g_tune = *t;
    else memset(&g_tune, 0, sizeof g_tune);
}

extern "C" void ds_cuda_mla_decode_last(ds_mla_decode_tuning *t) { *t = g_last; }

extern "C" int ds_cuda_mla_decode_configs(int i, int *rows, int *th, int *dq, int *nt, int *stages) {
    if (i < 1 || i > n_tc_configs) return 0;
    const TcConfig &c = tc_configs[i - 1];
    *rows = c.rows; *th = c.th; *dq = c.dq; *nt = c.nt; *stages = c.stages;
    return n_tc_configs;
}

extern "C" int ds_cuda_mla_decode(const ds_mla_decode_args *a) {
    DS_TRY(ds_mla_decode_check(a));
    cudaStream_t st = (cudaStream_t)a->stream;
    memset(&g_last, 0, sizeof g_last);
    bool fast = fast_path_ok(a);
    if (g_tune.force_path == 1 && !fast)
        return ds_fail(DS_EUSAGE, "mla decode (cuda): the tensor-core kernel needs kv_rank 512, rope 64, bf16");
    if (!fast || g_tune.force_path == 2) {
        g_last.used_path = 2;
        g_last.used_splits = 1;
        return launch_simple(a, st);
    }
    Plan pl = make_plan(a, a->workspace ? a->workspace_bytes : 0);
    if (pl.splits > 1 && (!a->workspace || a->workspace_bytes < split_bytes(a, pl, pl.splits)))
        return ds_fail(DS_EUSAGE, "mla decode (cuda): %d splits need %zu bytes of workspace", pl.splits,
                       split_bytes(a, pl, pl.splits));
    Params p;
    memset(&p, 0, sizeof p);
    p.q = (const __nv_bfloat16 *)a->q;
    p.kv = (const __nv_bfloat16 *)a->kv;
    p.kv_len = a->kv_len;
    p.block_table = a->block_table;
    p.q_len = a->q_len;
    p.heads = a->heads;
    p.rows = a->q_len * a->heads;
    p.page_size = a->page_size;
    p.max_pages = a->max_pages;
    p.scale_log2 = a->scale * LOG2E;
    p.out = a->out;
    p.out_f32 = a->out_type == DS_F32;
    p.lse = a->lse;
    p.splits = pl.splits;
    p.row_blocks = pl.row_blocks;
    p.rows_pad = pl.rows_pad;
    if (pl.splits > 1) {
        p.part_o = (float *)a->workspace;
        p.part_lse = p.part_o + (size_t)a->batch * pl.splits * pl.rows_pad * DV;
    }
    g_last.used_path = 1;
    g_last.used_splits = pl.splits;
    g_last.used_rows = pl.cfg->rows;
    g_last.used_config = (int)(pl.cfg - tc_configs) + 1;
    DS_TRY(launch_tc(pl.cfg, p, a->batch, st));
    if (pl.splits == 1) return DS_OK;
    mla_decode_combine<<<dim3(p.rows, a->batch), 128, 0, st>>>(p);
    return DS_CUDA_LAUNCHED("mla_decode_combine");
}
