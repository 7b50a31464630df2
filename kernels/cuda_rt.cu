/* cuda_rt.cu — see cuda_rt.h. */
#include "cuda_check.cuh"

#include <stdio.h>
#include <string.h>

extern "C" {
#include "cuda_rt.h"
}

extern "C" int ds_cuda_device_count(char *why, size_t why_len) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why && why_len) snprintf(why, why_len, "%s", cudaGetErrorString(e));
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    if (n == 0 && why && why_len) snprintf(why, why_len, "no CUDA device");
    return n;
}

extern "C" int ds_cuda_init(int dev, ds_cuda_info *info) {
    DS_CU_TRY(cudaSetDevice(dev));
    if (!info) return DS_OK;
    cudaDeviceProp p;
    DS_CU_TRY(cudaGetDeviceProperties(&p, dev));
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", p.name);
    info->sm_major = p.major;
    info->sm_minor = p.minor;
    info->sm_count = p.multiProcessorCount;
    info->l2_bytes = (size_t)p.l2CacheSize;
    info->smem_per_block_optin = p.sharedMemPerBlockOptin;
    DS_CU_TRY(cudaMemGetInfo(&info->mem_free, &info->mem_total));
    DS_CU_TRY(cudaDriverGetVersion(&info->driver_version));
    DS_CU_TRY(cudaRuntimeGetVersion(&info->runtime_version));
    return DS_OK;
}

extern "C" int ds_cuda_alloc(void **p, size_t bytes) {
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        return ds_fail(DS_ERR, "cuda: out of device memory: %zu bytes: %s", bytes, cudaGetErrorString(e));
    }
    return DS_OK;
}

extern "C" void ds_cuda_free(void *p) {
    if (p) cudaFree(p);
}

extern "C" int ds_cuda_h2d(void *dst, const void *src, size_t bytes) {
    DS_CU_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return DS_OK;
}

extern "C" int ds_cuda_d2h(void *dst, const void *src, size_t bytes) {
    DS_CU_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return DS_OK;
}

extern "C" int ds_cuda_d2d(void *dst, const void *src, size_t bytes, void *stream) {
    DS_CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)stream));
    return DS_OK;
}

extern "C" int ds_cuda_memset(void *dst, int byte, size_t bytes, void *stream) {
    DS_CU_TRY(cudaMemsetAsync(dst, byte, bytes, (cudaStream_t)stream));
    return DS_OK;
}

extern "C" int ds_cuda_poison(void *dst, size_t bytes) {
    DS_CU_TRY(cudaMemset(dst, 0xFF, bytes));
    return DS_OK;
}

extern "C" int ds_cuda_sync(void) {
    DS_CU_TRY(cudaDeviceSynchronize());
    return DS_OK;
}

extern "C" int ds_cuda_stream_sync(void *stream) {
    DS_CU_TRY(cudaStreamSynchronize((cudaStream_t)stream));
    return DS_OK;
}

struct ds_cuda_timer {
    cudaEvent_t a, b;
};

extern "C" int ds_cuda_timer_create(ds_cuda_timer **t) {
    *t = (ds_cuda_timer *)calloc(1, sizeof **t);
    if (!*t) return ds_fail(DS_ERR, "out of memory: timer");
    DS_CU_TRY(cudaEventCreate(&(*t)->a));
    DS_CU_TRY(cudaEventCreate(&(*t)->b));
    return DS_OK;
}

extern "C" void ds_cuda_timer_free(ds_cuda_timer *t) {
    if (!t) return;
    cudaEventDestroy(t->a);
    cudaEventDestroy(t->b);
    free(t);
}

extern "C" int ds_cuda_timer_start(ds_cuda_timer *t, void *stream) {
    DS_CU_TRY(cudaEventRecord(t->a, (cudaStream_t)stream));
    return DS_OK;
}

extern "C" int ds_cuda_timer_stop(ds_cuda_timer *t, void *stream, double *ms) {
    float f = 0;
    DS_CU_TRY(cudaEventRecord(t->b, (cudaStream_t)stream));
    DS_CU_TRY(cudaEventSynchronize(t->b));
    DS_CU_TRY(cudaEventElapsedTime(&f, t->a, t->b));
    *ms = f;
    return DS_OK;
}

extern "C" int ds_cuda_check_launch(const char *what, const char *file, int line) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return ds_fail(DS_ERR, "cuda: launch %s: %s: %s:%d", what, cudaGetErrorString(e), file, line);
    return DS_OK;
}
