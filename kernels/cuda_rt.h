/* cuda_rt.h — the CUDA backend's runtime: device selection, checked device memory, streams, timing.
 *
 * Owns: the one place where CUDA runtime errors become libds errors ("cuda: <what>: <file>:<line>"),
 * device discovery (which tests and tools use to say plainly that no GPU is present), device memory
 * helpers callable from C, and event timing for benchmarks. Everything here is C-callable; the
 * implementation is kernels/cuda_rt.cu. Streams are passed as void* (cudaStream_t) so C code needs no
 * CUDA headers; NULL is the default stream.
 */
#ifndef DS_KERNELS_CUDA_RT_H
#define DS_KERNELS_CUDA_RT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char name[256];
    int sm_major, sm_minor;
    int sm_count;
    size_t mem_total, mem_free;
    size_t l2_bytes;
    size_t smem_per_block_optin;
    int driver_version, runtime_version;
} ds_cuda_info;

/* Number of usable CUDA devices; 0 (never an error) when there is no driver or no device. When 0,
 * why (the runtime's message) is copied into `why` if it is not NULL. */
int ds_cuda_device_count(char *why, size_t why_len);
/* Select device `dev` and fill info (info may be NULL). */
int ds_cuda_init(int dev, ds_cuda_info *info);

int ds_cuda_alloc(void **p, size_t bytes);
void ds_cuda_free(void *p);
int ds_cuda_h2d(void *dst, const void *src, size_t bytes);
int ds_cuda_d2h(void *dst, const void *src, size_t bytes);
int ds_cuda_d2d(void *dst, const void *src, size_t bytes, void *stream);
int ds_cuda_memset(void *dst, int byte, size_t bytes, void *stream);
int ds_cuda_sync(void); /* device-wide synchronize; reports any asynchronous kernel error */
int ds_cuda_stream_sync(void *stream);

/* Fills bytes with 0xFF: NaN in every float format we use (f32, bf16, f16, e4m3) and -1 in integers,
 * so an output element that a kernel failed to write is caught by the comparison. */
int ds_cuda_poison(void *dst, size_t bytes);

/* Event timer on a stream: start, stop, elapsed milliseconds (synchronizes on the stop event). */
typedef struct ds_cuda_timer ds_cuda_timer;
int ds_cuda_timer_create(ds_cuda_timer **t);
void ds_cuda_timer_free(ds_cuda_timer *t);
int ds_cuda_timer_start(ds_cuda_timer *t, void *stream);
int ds_cuda_timer_stop(ds_cuda_timer *t, void *stream, double *ms);

/* Checks the last launch error (cudaGetLastError) with the caller's location. */
int ds_cuda_check_launch(const char *what, const char *file, int line);
#define DS_CUDA_LAUNCHED(what) ds_cuda_check_launch((what), __FILE__, __LINE__)

#ifdef __cplusplus
}
#endif

#endif
