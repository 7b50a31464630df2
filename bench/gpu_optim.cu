/* bench/gpu_optim — the optimizer's part of a training step on the GPU, the one-pass update
 * (train/optim.h, default) against the separate passes (DS_FUSED_OPTIM=0), through the same seam the trainer
 * uses (ds_optim over the CUDA backend's table):
 *   separate  the gradient zeroing pass (ops->zero, as the trainer's zero_grad), the AdamW update, then the
 *             first bf16 GEMM after it, which rebuilds the parameters' bf16 shadow (a conversion pass)
 *   fused     the AdamW update that also writes the shadow and zeroes the gradients; the first GEMM finds
 *             the shadow current
 * Each mode: the median over reps of the update, zeroing and first-GEMM times (CUDA events on the default
 * stream, which the backend uses), a second GEMM (the GEMM alone: first - second is the conversion), the
 * total (update to the end of the first GEMM), the bytes the passes must move and the rate that makes
 * (bytes / (total - GEMM alone)), to set against the device's copy bandwidth.
 * Parameters: n floats in two tensors (a matrix that decays, a norm-sized one that does not); the GEMM is
 * y[M,N] = x[M,K] W[N,K]^T with W the first N*K parameters (M = 4096 tokens, N = K = 2048).
 * Output: one TSV row per mode (bench/gpu_optim.sh). Usage: gpu_optim [n_params] [reps] [bf16_moments]
 */
#include "gpu_test.h"

#include <algorithm>
#include <vector>

extern "C" {
#include "ops_cuda.h"
#include "train/optim.h"
}

#define TRY(x)                                                                                         \
    do {                                                                                               \
        if (x) {                                                                                       \
            fprintf(stderr, "gpu_optim: %s: %s\n", #x, ds_errmsg());                                   \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

/* deterministic values without a host round trip: a hash of the index, scaled */
__global__ void fill(float *x, size_t n, uint32_t salt, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ salt;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        x[i] = scale * ((float)(h & 0xffffff) / 8388608.0f - 1.0f);
    }
}

static float ms_between(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main(int argc, char **argv) {
    const size_t n = argc > 1 ? (size_t)atof(argv[1]) : (size_t)1.2e9;
    const int reps = argc > 2 ? atoi(argv[2]) : 10, bf16m = argc > 3 ? atoi(argv[3]) : 0;
    const int M = 4096, N = 2048, K = 2048;
    if (n < (size_t)N * K + 64 || reps < 1) {
        fprintf(stderr, "gpu_optim: n_params must exceed %d, reps >= 1\n", N * K + 64);
        return 2;
    }
    const ds_ops *ops = ds_ops_cuda();
    if (!ops) {
        fprintf(stderr, "gpu_optim: %s\n", ds_errmsg());
        return 1;
    }
    ds_param info[2];
    memset(info, 0, sizeof info);
    snprintf(info[0].name, sizeof info[0].name, "w");
    info[0].numel = n - 64, info[0].kind = DS_PARAM_MATRIX;
    snprintf(info[1].name, sizeof info[1].name, "norm");
    info[1].offset = n - 64, info[1].numel = 64, info[1].kind = DS_PARAM_NORM;
    ds_adamw_opts ao;
    ds_adamw_defaults(&ao);
    ao.bf16_moments = bf16m;
    float *p = (float *)ops->alloc(n * 4), *g = (float *)ops->alloc(n * 4);
    float *x = (float *)ops->alloc((size_t)M * K * 4), *y = (float *)ops->alloc((size_t)M * N * 4);
    if (!p || !g || !x || !y) {
        fprintf(stderr, "gpu_optim: out of device memory for %zu parameters\n", n);
        return 1;
    }
    fill<<<4096, 256>>>(p, n, 1, 0.02f);
    fill<<<4096, 256>>>(x, (size_t)M * K, 3, 1.0f);
    ops->params_changed(p, n);
    ops->gemm(0, 1, M, N, K, 1.0f, x, K, p, K, 0.0f, y, N); /* allocates the shadow, as a first forward does */
    ops->sync();
    TRY(ops->status());
    cudaEvent_t ev[5];
    for (auto &e : ev) cudaEventCreate(&e);
    int dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, dev);
    printf("# %s, %zu parameters (%.2f GB fp32), %s moments, %d reps; GEMM %dx%dx%d bf16\n", prop.name, n, n * 4e-9,
           bf16m ? "bf16" : "fp32", reps, M, N, K);
    printf("mode\tstep_ms\tzero_ms\tfirst_gemm_ms\tgemm_ms\ttotal_ms\tbytes_GB\tGB_per_s\n");
    for (int fused = 0; fused < 2; fused++) {
        if (!fused) setenv("DS_FUSED_OPTIM", "0", 1);
        ds_optim *q = NULL;
        TRY(ds_optim_create(&q, ops, &ao, n, info, 2));
        unsetenv("DS_FUSED_OPTIM");
        std::vector<double> tz, ts, tg1, tg2, tt;
        for (int r = 0; r < reps + 1; r++) { /* the first is a warm-up */
            fill<<<4096, 256>>>(g, n, 100 + r, 1e-3f); /* the backward's gradients (not timed) */
            cudaEventRecord(ev[0]);
            TRY(ds_optim_step(q, p, g, 1.0f, 1e-4, 1));
            cudaEventRecord(ev[1]);
            if (!fused) ops->zero(g, n * 4); /* the trainer's zeroing pass before the next backward */
            cudaEventRecord(ev[2]);
            ops->gemm(0, 1, M, N, K, 1.0f, x, K, p, K, 0.0f, y, N);
            cudaEventRecord(ev[3]);
            ops->gemm(0, 1, M, N, K, 1.0f, x, K, p, K, 0.0f, y, N);
            cudaEventRecord(ev[4]);
            cudaEventSynchronize(ev[4]);
            TRY(ops->status());
            if (!r) continue;
            ts.push_back(ms_between(ev[0], ev[1]));
            tz.push_back(ms_between(ev[1], ev[2]));
            tg1.push_back(ms_between(ev[2], ev[3]));
            tg2.push_back(ms_between(ev[3], ev[4]));
            tt.push_back(ms_between(ev[0], ev[3]));
        }
        /* bytes per parameter the passes must move: the update reads p, g, m, v and writes p, m, v; separate:
         * + the zeroing's write (4) + the conversion's read and write (4 + 2); fused: + the gradient's 0 (4) +
         * the shadow (2) */
        const double mom = bf16m ? 2 : 4, upd = 4 + 4 + 2 * mom + 4 + 2 * mom;
        const double bytes = (double)n * (upd + (fused ? 6 : 10)), total = median(tt) - median(tg2);
        printf("%s\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.2f\t%.0f\n", fused ? "fused" : "separate", median(ts), median(tz),
               median(tg1), median(tg2), median(tt), bytes * 1e-9, total > 0 ? bytes * 1e-9 / (total * 1e-3) : 0.0);
        ds_optim_free(q);
    }
    for (auto &e : ev) cudaEventDestroy(e);
    ops->free(p), ops->free(g), ops->free(x), ops->free(y);
    return 0;
}
