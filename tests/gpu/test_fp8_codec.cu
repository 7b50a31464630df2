/* GPU test: the FP8 codecs of lib/fp8/fp8.h against CUDA's conversion intrinsics, on the device (the
 * hardware cvt.rn[.satfinite] instructions of sm_89+) and in CUDA's host emulation (cuda_fp8.hpp).
 * Inputs: every E4M3/E5M2 value, every midpoint between neighbours (the ties), one float32 ulp either
 * side of each, +-0, +-Inf, float32 subnormals, NaNs with random payloads and 2^22 random bit patterns.
 * Plain casts must equal __NV_NOSAT, the _sat casts __NV_SATFINITE, bit for bit for every non-NaN input.
 * NaN inputs must give a NaN code (CUDA writes 0x7F whatever the sign and format; ml_dtypes, which the
 * CPU codec follows, keeps the sign and uses 0x7E for E5M2 — docs/DESIGN.md). Decoding all 256 codes
 * of each format must give the same values (NaN for NaN). Self-contained (no GPU harness needed). */
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "tap.h"

extern "C" {
#include "core/rng.h"
#include "fp8/fp8.h"
}

__global__ void encode_kernel(const float *x, uint8_t *out, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[4 * i + 0] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E4M3);
    out[4 * i + 1] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3);
    out[4 * i + 2] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E5M2);
    out[4 * i + 3] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E5M2);
}

__global__ void decode_kernel(float *out) {
    int c = threadIdx.x;
    out[c] = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3)));
    out[256 + c] = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E5M2)));
}


static std::vector<float> inputs(void) {
    std::vector<float> x = {0.f, -0.f, INFINITY, -INFINITY, 448.f, 464.f, 480.f, 57344.f, 61440.f, 65536.f, 3.4e38f};
    const float *tables[2] = {ds_e4m3_table, ds_e5m2_table};
    for (int t = 0; t < 2; t++)
        for (int c = 0; c < 0x7f; c++) {
            float v = tables[t][c], w = tables[t][c + 1];
            if (!isfinite(v)) continue;
            float pts[2] = {v, isfinite(w) ? (float)(((double)v + w) / 2) : v * 1.0625f};
            for (float p : pts)
                for (float q : {p, nextafterf(p, INFINITY), nextafterf(p, -INFINITY)}) x.push_back(q), x.push_back(-q);
        }
    ds_rng r;
    ds_rng_init(&r, 2024, 7);
    for (int i = 0; i < 4096; i++) x.push_back(ds_f32_from_bits(0x7f800001u + (ds_rng_u32(&r) % 0x7fffffu) | (ds_rng_u32(&r) << 31)));
    for (int i = 0; i < 4096; i++) x.push_back(ds_f32_from_bits((ds_rng_u32(&r) % 0x7fffffu + 1) | (ds_rng_u32(&r) << 31)));
    for (int i = 0; i < (1 << 22); i++) x.push_back(ds_f32_from_bits(ds_rng_u32(&r)));
    return x;
}

static int is_nan_code(uint8_t c, int e5m2) { return e5m2 ? (c & 0x7c) == 0x7c && (c & 3) : (c & 0x7f) == 0x7f; }

static void compare(const char *where, const std::vector<float> &x, const uint8_t *got) {
    static const char *names[4] = {"e4m3 (NOSAT)", "e4m3_sat (SATFINITE)", "e5m2 (NOSAT)", "e5m2_sat (SATFINITE)"};
    for (int k = 0; k < 4; k++) {
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < x.size(); i++) {
            uint8_t ours = k == 0 ? ds_f32_to_e4m3(x[i]) : k == 1 ? ds_f32_to_e4m3_sat(x[i]) : k == 2 ? ds_f32_to_e5m2(x[i])
                                                                                                  : ds_f32_to_e5m2_sat(x[i]);
            uint8_t cuda = got[4 * i + k];
            int ok = isnan(x[i]) ? is_nan_code(cuda, k >= 2) && is_nan_code(ours, k >= 2) : cuda == ours;
            if (!ok && !bad++) first = i;
        }
        CHECK(bad == 0, "%s %s: %zu of %zu inputs differ (first %#010x: cuda %#04x, ours %#04x)", where, names[k], bad,
              x.size(), bad ? ds_f32_bits(x[first]) : 0, bad ? got[4 * first + k] : 0,
              bad ? (k == 0 ? ds_f32_to_e4m3(x[first]) : k == 1 ? ds_f32_to_e4m3_sat(x[first]) : k == 2 ? ds_f32_to_e5m2(x[first]) : ds_f32_to_e5m2_sat(x[first])) : 0);
    }
}

static void decode_check(const char *where, const float *got) {
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        float a = got[c], b = got[256 + c], ea = ds_e4m3_to_f32((uint8_t)c), eb = ds_e5m2_to_f32((uint8_t)c);
        bad += !(isnan(ea) ? isnan(a) : ds_f32_bits(a) == ds_f32_bits(ea));
        bad += !(isnan(eb) ? isnan(b) : ds_f32_bits(b) == ds_f32_bits(eb));
    }
    CHECK(bad == 0, "%s decode: %d of 512 codes differ", where, bad);
}

TEST(host_emulation) {
    std::vector<float> x = inputs();
    std::vector<uint8_t> got(4 * x.size());
    for (size_t i = 0; i < x.size(); i++) {
        got[4 * i + 0] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E4M3);
        got[4 * i + 1] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3);
        got[4 * i + 2] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_NOSAT, __NV_E5M2);
        got[4 * i + 3] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E5M2);
    }
    compare("host", x, got.data());
    float dec[512];
    for (int c = 0; c < 256; c++) {
        dec[c] = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3)));
        dec[256 + c] = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E5M2)));
    }
    decode_check("host", dec);
}

TEST(device) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        tap_count++;
        printf("ok %d - device # skip no GPU present\n", tap_count);
        return;
    }
    std::vector<float> x = inputs();
    std::vector<uint8_t> got(4 * x.size());
    float *dx = NULL, *ddec = NULL;
    uint8_t *dout = NULL;
    int ok = cudaMalloc(&dx, x.size() * 4) == cudaSuccess && cudaMalloc(&dout, got.size()) == cudaSuccess &&
             cudaMalloc(&ddec, 512 * 4) == cudaSuccess &&
             cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess &&
             cudaMemset(dout, 0xAB, got.size()) == cudaSuccess;
    if (ok) {
        encode_kernel<<<(unsigned)((x.size() + 255) / 256), 256>>>(dx, dout, x.size());
        decode_kernel<<<1, 256>>>(ddec);
        ok = cudaDeviceSynchronize() == cudaSuccess &&
             cudaMemcpy(got.data(), dout, got.size(), cudaMemcpyDeviceToHost) == cudaSuccess;
    }
    float dec[512];
    ok = ok && cudaMemcpy(dec, ddec, sizeof dec, cudaMemcpyDeviceToHost) == cudaSuccess;
    CHECK(ok, "device conversion ran (%s)", cudaGetErrorString(cudaGetLastError()));
    if (ok) {
        compare("device", x, got.data());
        decode_check("device", dec);
    }
    cudaFree(dx), cudaFree(dout), cudaFree(ddec);
}

TAP_MAIN()
