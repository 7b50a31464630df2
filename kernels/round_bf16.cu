/* round_bf16.cu — the CUDA table's round_bf16 (ops/ops.h): fp32 values put on the bf16 grid in place, the
 * storage rounding of --bf16 training (ops/bf16.h) over the CUDA backend.
 *
 * The rule is core/dtype.h's ds_f32_to_bf16 followed by ds_bf16_to_f32, on the bits, so the GPU and the CPU
 * round every value alike bit for bit (tests/gpu/test_bf16_cuda.cu): add 0x7fff plus the lowest kept bit
 * (nearest, ties to even; a carry into the exponent rounds up to the next binade or to Inf) and clear the
 * low half; NaN keeps its sign and top payload bits and is made quiet; denormals round like any value (no
 * flush-to-zero: integer arithmetic only, so no compiler flag can change it). */
#include "ops_cuda_internal.cuh"

__device__ __forceinline__ float bf16_grid(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u; /* NaN: quiet, payload's top bits kept */
    else u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}

__global__ void k_round_bf16(float *x, int64_t ld, int64_t rows, int64_t cols) {
    const int64_t n = rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float *p = x + (i / cols) * ld + i % cols;
        *p = bf16_grid(*p);
    }
}

void cu_round_bf16(float *x, int64_t ld, int64_t rows, int64_t cols) {
    if (rows <= 0 || cols <= 0) return;
    const int64_t n = rows * cols, blocks = (n + 255) / 256;
    k_round_bf16<<<(unsigned)(blocks > 16384 ? 16384 : blocks), 256>>>(x, ld, rows, cols);
    OPS_LAUNCHED("round to bf16");
}
