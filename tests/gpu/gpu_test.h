/* gpu_test.h — shared helpers of the GPU test programs (tests/gpu/test_*.cu, TAP via tests/unit/tap.h).
 *
 * Owns: the "no GPU present" skip (a TAP plan of 0 with the reason, exit 0), the per-run seed (fresh
 * random inputs every run; DS_SEED=n reproduces one, and the seed is printed), device buffers that are
 * poisoned (0xFF = NaN) before every kernel call, and error norms: ||out - ref|| / ||ref|| and the count of
 * non-finite outputs (an unwritten element stays NaN).
 */
#ifndef DS_TESTS_GPU_TEST_H
#define DS_TESTS_GPU_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tap.h"

extern "C" {
#include "core/dtype.h"
#include "core/err.h"
#include "core/rng.h"
#include "cuda_rt.h"
}

static uint64_t gpu_test_seed;

/* Call first in main: skips the whole program when no GPU is there. */
static inline void gpu_test_begin(const char *name) {
    char why[256] = "";
    if (ds_cuda_device_count(why, sizeof why) == 0) {
        printf("1..0 # SKIP no GPU present (%s)\n", why);
        exit(0);
    }
    ds_cuda_info info;
    if (ds_cuda_init(0, &info)) {
        printf("Bail out! %s: cannot initialize the GPU: %s\n", name, ds_errmsg());
        exit(1);
    }
    const char *s = getenv("DS_SEED");
    gpu_test_seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    printf("# %s on %s (sm_%d%d, %d SMs), seed %llu (DS_SEED=%llu reproduces)\n", name, info.name, info.sm_major,
           info.sm_minor, info.sm_count, (unsigned long long)gpu_test_seed, (unsigned long long)gpu_test_seed);
}

/* Host-side random values. */
static inline void rand_normal(float *x, size_t n, ds_rng *r, float std) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(ds_rng_normal(r) * std);
}
static inline void round_bf16(const float *x, uint16_t *h, float *xr, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h[i] = ds_f32_to_bf16(x[i]);
        if (xr) xr[i] = ds_bf16_to_f32(h[i]);
    }
}

/* Device buffer with its size, for poisoning and download. */
struct dbuf {
    void *p = nullptr;
    size_t bytes = 0;
};
static inline int dbuf_alloc(dbuf *b, size_t bytes) {
    b->bytes = bytes;
    return ds_cuda_alloc(&b->p, bytes);
}
static inline int dbuf_up(dbuf *b, const void *host, size_t bytes) {
    if (!b->p && dbuf_alloc(b, bytes)) return 1;
    return ds_cuda_h2d(b->p, host, bytes);
}
static inline void dbuf_free(dbuf *b) {
    ds_cuda_free(b->p);
    b->p = nullptr;
}

/* Element i of a host array of type t as double. */
static inline double elem(const void *p, ds_dtype t, size_t i) {
    switch (t) {
    case DS_F32: return ((const float *)p)[i];
    case DS_BF16: return ds_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return NAN;
    }
}

struct err_stats {
    double rel;    /* ||out - ref||_2 / ||ref||_2 */
    double maxabs; /* max |out - ref| */
    size_t nonfinite;
};
static inline err_stats compare(const void *out, ds_dtype t, const double *ref, size_t n) {
    err_stats e = {0, 0, 0};
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double o = elem(out, t, i);
        if (!isfinite(o)) { e.nonfinite++; continue; }
        double d = o - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
        if (fabs(d) > e.maxabs) e.maxabs = fabs(d);
    }
    e.rel = den > 0 ? sqrt(num / den) : sqrt(num);
    return e;
}

/* main(): skip without a GPU, then run every TEST (or the one named by argv[1]). */
#define GPU_TAP_MAIN(prog)                                                                             \
    int main(int argc, char **argv) {                                                                  \
        gpu_test_begin(prog);                                                                          \
        return tap_run(argc, argv);                                                                    \
    }

#define CHECK_OK(rc, what) CHECK((rc) == 0, "%s (%s)", what, ds_errmsg())

#endif
