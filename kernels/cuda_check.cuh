/* cuda_check.cuh — check macros shared by the .cu files (C++ only, never included from C).
 *
 * Owns: turning cudaError_t / cublasStatus_t into a libds error "cuda: <call>: <message>: file:line"
 * that the caller returns, and the small device-side helpers every kernel file uses (bf16 <-> f32,
 * ceil division). Kernels report launch failures through DS_CUDA_LAUNCHED (cuda_rt.h).
 */
#ifndef DS_KERNELS_CUDA_CHECK_CUH
#define DS_KERNELS_CUDA_CHECK_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "core/err.h"
}

#define DS_CU_TRY(call)                                                                                \
    do {                                                                                               \
        cudaError_t ds_cu_e_ = (call);                                                                 \
        if (ds_cu_e_ != cudaSuccess)                                                                   \
            return ds_fail(DS_ERR, "cuda: %s: %s: %s:%d", #call, cudaGetErrorString(ds_cu_e_),         \
                           __FILE__, __LINE__);                                                        \
    } while (0)

static inline int ds_ceil_div(int a, int b) { return (a + b - 1) / b; }
static inline long long ds_ceil_div_ll(long long a, long long b) { return (a + b - 1) / b; }

/* Loads of the element types every kernel takes (f32 or bf16), converted to f32. */
template <typename T> __device__ __forceinline__ float ds_ld_f32(const T *p);
template <> __device__ __forceinline__ float ds_ld_f32<float>(const float *p) { return *p; }
template <> __device__ __forceinline__ float ds_ld_f32<__nv_bfloat16>(const __nv_bfloat16 *p) {
    return __bfloat162float(*p);
}
template <typename T> __device__ __forceinline__ void ds_st_f32(T *p, float v);
template <> __device__ __forceinline__ void ds_st_f32<float>(float *p, float v) { *p = v; }
template <> __device__ __forceinline__ void ds_st_f32<__nv_bfloat16>(__nv_bfloat16 *p, float v) {
    *p = __float2bfloat16_rn(v);
}

#endif
