/* fp8_quant.cu — see fp8_quant.h. Memory-bound elementwise kernels: one pass over x, one write of q. */
#include "cuda_check.cuh"

#include <cuda_fp8.h>

extern "C" {
#include "cuda_rt.h"
#include "fp8_quant.h"
}

#define E4M3_MAX 448.0f
#define SCALE_MIN 0x1p-126f /* as lib/fp8/quant.h: the tile's own amax, the scale kept normal */

__device__ __forceinline__ float tile_scale(float amax, int pow2) {
    float s = fmaxf(amax / E4M3_MAX, SCALE_MIN);
    if (pow2) { /* 2^ceil(log2 s) from the bits: s is a positive normal number here */
        uint32_t b = __float_as_uint(s);
        if (b & 0x7fffffu) b = (b & 0x7f800000u) + 0x800000u;
        s = __uint_as_float(b);
    }
    return s;
}

__device__ __forceinline__ uint8_t to_e4m3(float v) {
    return (uint8_t)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* One warp per 128-element group: lane l owns elements 4l..4l+3. */
template <typename T>
__global__ void quant_1x128_kernel(const T *x, int rows, int cols, int ldx, uint8_t *q, int ldq, float *scale,
                                   int scale_ld, int rows_contig, int pow2) {
    int groups_per_row = cols / 128;
    long long g = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (g >= (long long)rows * groups_per_row) return;
    int lane = threadIdx.x & 31;
    int r = (int)(g / groups_per_row), cb = (int)(g % groups_per_row);
    const T *src = x + (size_t)r * ldx + cb * 128 + lane * 4;
    float v[4], amax = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        v[i] = ds_ld_f32<T>(src + i);
        amax = fmaxf(amax, fabsf(v[i]));
    }
    amax = warp_max(amax);
    float s = tile_scale(amax, pow2);
    uint32_t packed = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) packed |= (uint32_t)to_e4m3(v[i] / s) << (8 * i);
    uint8_t *dst = q + (size_t)r * ldq + cb * 128 + lane * 4;
    if ((((uintptr_t)dst) & 3) == 0) {
        *(uint32_t *)dst = packed;
    } else {
        for (int i = 0; i < 4; i++) dst[i] = (uint8_t)(packed >> (8 * i));
    }
    if (lane == 0) scale[rows_contig ? (size_t)cb * scale_ld + r : (size_t)r * scale_ld + cb] = s;
}

/* A block quantizes 128 rows x 32 columns and writes them transposed: 32 rows of q, 128 bytes each. */
template <typename T>
__global__ void quant_128x1_t_kernel(const T *x, int rows, int cols, int ldx, uint8_t *q, int ldq, float *scale,
                                     int scale_ld, int rows_contig, int pow2) {
    __shared__ float tile[128][33];
    __shared__ float col_scale[32];
    int r0 = blockIdx.y * 128, c0 = blockIdx.x * 32;
    int tx = threadIdx.x & 31, ty = threadIdx.x >> 5; /* 8 warps */
    for (int i = 0; i < 16; i++) {
        int rr = i * 8 + ty, r = r0 + rr, c = c0 + tx;
        tile[rr][tx] = (r < rows && c < cols) ? ds_ld_f32<T>(x + (size_t)r * ldx + c) : 0.f;
    }
    __syncthreads();
    /* warp ty owns columns 4ty..4ty+3; lane l reads rows 4l..4l+3 of each */
    for (int j = 0; j < 4; j++) {
        int cc = ty * 4 + j;
        float m = 0.f;
        for (int i = 0; i < 4; i++) m = fmaxf(m, fabsf(tile[tx * 4 + i][cc]));
        m = warp_max(m);
        float s = tile_scale(m, pow2);
        if (tx == 0) col_scale[cc] = s;
        int c = c0 + cc;
        if (c >= cols) continue;
        uint32_t packed = 0;
        for (int i = 0; i < 4; i++) packed |= (uint32_t)to_e4m3(tile[tx * 4 + i][cc] / s) << (8 * i);
        uint8_t *dst = q + (size_t)c * ldq + r0 + tx * 4;
        int left = rows - (r0 + tx * 4);
        if (left >= 4 && (((uintptr_t)dst) & 3) == 0) {
            *(uint32_t *)dst = packed;
        } else {
            for (int i = 0; i < 4 && i < left; i++) dst[i] = (uint8_t)(packed >> (8 * i));
        }
    }
    __syncthreads();
    if (threadIdx.x < 32 && c0 + threadIdx.x < cols) {
        int c = c0 + threadIdx.x, rb = blockIdx.y;
        scale[rows_contig ? (size_t)rb * scale_ld + c : (size_t)c * scale_ld + rb] = col_scale[threadIdx.x];
    }
}

/* A block per 128x128 block; 256 threads, 64 elements each (coalesced rows). Two passes over the
 * block (amax, then quantize): the second read hits L2, and 64 live values per thread would spill. */
template <typename T>
__global__ void quant_128x128_kernel(const T *x, int rows, int cols, int ldx, uint8_t *q, int ldq, float *scale,
                                     int scale_ld, int pow2, uint8_t *qt, int ldqt, float *scale_t, int scale_t_ld) {
    __shared__ float red[8];
    __shared__ uint8_t tq[128][132];
    int rb = blockIdx.y, cb = blockIdx.x, r0 = rb * 128, c0 = cb * 128;
    float amax = 0.f;
    for (int i = 0; i < 64; i++) {
        int idx = i * 256 + threadIdx.x, r = r0 + idx / 128, c = c0 + idx % 128;
        if (r < rows && c < cols) amax = fmaxf(amax, fabsf(ds_ld_f32<T>(x + (size_t)r * ldx + c)));
    }
    amax = warp_max(amax);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = red[0];
    for (int w = 1; w < 8; w++) amax = fmaxf(amax, red[w]);
    float s = tile_scale(amax, pow2);
    for (int i = 0; i < 64; i++) {
        int idx = i * 256 + threadIdx.x, rr = idx / 128, cc = idx % 128, r = r0 + rr, c = c0 + cc;
        if (r >= rows || c >= cols) continue;
        uint8_t b = to_e4m3(ds_ld_f32<T>(x + (size_t)r * ldx + c) / s);
        q[(size_t)r * ldq + c] = b;
        if (qt) tq[cc][rr] = b;
    }
    if (threadIdx.x == 0) {
        scale[(size_t)rb * scale_ld + cb] = s;
        if (qt) scale_t[(size_t)cb * scale_t_ld + rb] = s;
    }
    if (!qt) return;
    __syncthreads();
    for (int i = 0; i < 64; i++) {
        int idx = i * 256 + threadIdx.x, cc = idx / 128, rr = idx % 128, r = r0 + rr, c = c0 + cc;
        if (r < rows && c < cols) qt[(size_t)c * ldqt + r] = tq[cc][rr];
    }
}

template <typename T>
__global__ void dequant_kernel(const uint8_t *q, int rows, int cols, int ldq, const float *scale, int scale_ld,
                               int rows_contig, int mode, T *y, int ldy) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    int r = (int)(i / cols), c = (int)(i % cols);
    float s;
    if (mode == 2) s = scale[(size_t)(r / 128) * scale_ld + c / 128];
    else s = scale[rows_contig ? (size_t)(c / 128) * scale_ld + r : (size_t)r * scale_ld + c / 128];
    __nv_fp8_e4m3 f;
    f.__x = q[(size_t)r * ldq + c];
    ds_st_f32<T>(y + (size_t)r * ldy + c, (float)f * s);
}

static int check_common(const ds_quant_args *a, const char *what) {
    if (a->x_type != DS_F32 && a->x_type != DS_BF16)
        return ds_fail(DS_EUSAGE, "%s: input must be f32 or bf16, not %s", what, ds_dtype_name(a->x_type));
    if (a->rows <= 0 || a->cols <= 0 || a->ldx < a->cols || !a->x || !a->q || !a->scale)
        return ds_fail(DS_EUSAGE, "%s: bad arguments (rows %d cols %d ldx %d)", what, a->rows, a->cols, a->ldx);
    return DS_OK;
}

extern "C" int ds_cuda_quant_1x128(const ds_quant_args *a) {
    DS_TRY(check_common(a, "quant 1x128"));
    if (a->cols % 128 || a->ldq < a->cols)
        return ds_fail(DS_EUSAGE, "quant 1x128: cols %d must be a multiple of 128 (ldq %d)", a->cols, a->ldq);
    if (a->scale_ld < (a->scale_rows_contig ? a->rows : a->cols / 128))
        return ds_fail(DS_EUSAGE, "quant 1x128: scale_ld %d too small", a->scale_ld);
    long long groups = (long long)a->rows * (a->cols / 128);
    int blocks = (int)ds_ceil_div_ll(groups, 8);
    cudaStream_t st = (cudaStream_t)a->stream;
    if (a->x_type == DS_F32)
        quant_1x128_kernel<float><<<blocks, 256, 0, st>>>((const float *)a->x, a->rows, a->cols, a->ldx, a->q, a->ldq,
                                                          a->scale, a->scale_ld, a->scale_rows_contig, a->pow2);
    else
        quant_1x128_kernel<__nv_bfloat16><<<blocks, 256, 0, st>>>((const __nv_bfloat16 *)a->x, a->rows, a->cols,
                                                                  a->ldx, a->q, a->ldq, a->scale, a->scale_ld,
                                                                  a->scale_rows_contig, a->pow2);
    return DS_CUDA_LAUNCHED("quant_1x128");
}

extern "C" int ds_cuda_quant_128x1_t(const ds_quant_args *a) {
    DS_TRY(check_common(a, "quant 128x1"));
    int rblocks = ds_ceil_div(a->rows, 128);
    if (a->ldq < a->rows) return ds_fail(DS_EUSAGE, "quant 128x1: ldq %d < rows %d", a->ldq, a->rows);
    if (a->scale_ld < (a->scale_rows_contig ? a->cols : rblocks))
        return ds_fail(DS_EUSAGE, "quant 128x1: scale_ld %d too small", a->scale_ld);
    dim3 grid(ds_ceil_div(a->cols, 32), rblocks);
    cudaStream_t st = (cudaStream_t)a->stream;
    if (a->x_type == DS_F32)
        quant_128x1_t_kernel<float><<<grid, 256, 0, st>>>((const float *)a->x, a->rows, a->cols, a->ldx, a->q, a->ldq,
                                                          a->scale, a->scale_ld, a->scale_rows_contig, a->pow2);
    else
        quant_128x1_t_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>((const __nv_bfloat16 *)a->x, a->rows, a->cols,
                                                                  a->ldx, a->q, a->ldq, a->scale, a->scale_ld,
                                                                  a->scale_rows_contig, a->pow2);
    return DS_CUDA_LAUNCHED("quant_128x1_t");
}

extern "C" int ds_cuda_quant_128x128(const ds_quant_args *a) {
    DS_TRY(check_common(a, "quant 128x128"));
    int rb = ds_ceil_div(a->rows, 128), cb = ds_ceil_div(a->cols, 128);
    if (a->ldq < a->cols || a->scale_ld < cb)
        return ds_fail(DS_EUSAGE, "quant 128x128: ldq %d / scale_ld %d too small", a->ldq, a->scale_ld);
    if (a->q_t && (a->ldq_t < a->rows || !a->scale_t || a->scale_t_ld < rb))
        return ds_fail(DS_EUSAGE, "quant 128x128: bad transposed output (ldq_t %d scale_t_ld %d)", a->ldq_t,
                       a->scale_t_ld);
    dim3 grid(cb, rb);
    cudaStream_t st = (cudaStream_t)a->stream;
    if (a->x_type == DS_F32)
        quant_128x128_kernel<float><<<grid, 256, 0, st>>>((const float *)a->x, a->rows, a->cols, a->ldx, a->q, a->ldq,
                                                          a->scale, a->scale_ld, a->pow2, a->q_t, a->ldq_t, a->scale_t,
                                                          a->scale_t_ld);
    else
        quant_128x128_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>((const __nv_bfloat16 *)a->x, a->rows, a->cols,
                                                                  a->ldx, a->q, a->ldq, a->scale, a->scale_ld, a->pow2,
                                                                  a->q_t, a->ldq_t, a->scale_t, a->scale_t_ld);
    return DS_CUDA_LAUNCHED("quant_128x128");
}

extern "C" int ds_cuda_dequant(const uint8_t *q, int rows, int cols, int ldq, const float *scale, int scale_ld,
                               int scale_rows_contig, int mode, void *y, ds_dtype y_type, int ldy, void *stream) {
    if (rows <= 0 || cols <= 0 || (y_type != DS_F32 && y_type != DS_BF16))
        return ds_fail(DS_EUSAGE, "dequant: bad arguments");
    long long n = (long long)rows * cols;
    int blocks = (int)ds_ceil_div_ll(n, 256);
    cudaStream_t st = (cudaStream_t)stream;
    if (y_type == DS_F32)
        dequant_kernel<float><<<blocks, 256, 0, st>>>(q, rows, cols, ldq, scale, scale_ld, scale_rows_contig, mode,
                                                      (float *)y, ldy);
    else
        dequant_kernel<__nv_bfloat16><<<blocks, 256, 0, st>>>(q, rows, cols, ldq, scale, scale_ld, scale_rows_contig,
                                                              mode, (__nv_bfloat16 *)y, ldy);
    return DS_CUDA_LAUNCHED("dequant");
}
