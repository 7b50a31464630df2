#include "fp8/quant.h"

#include <math.h>
#include <string.h>

#include "core/dtype.h"
#include "core/err.h"
#include "fp8/fp8.h"

/* OpenMP only above this many elements: small calls stay on the calling thread. */
#define PARALLEL_MIN (1 << 16)

float ds_fp8_scale_for_amax(float amax, ds_fp8_scale_fmt fmt) {
    float s = fmaxf(amax / DS_E4M3_MAX, DS_FP8_SCALE_MIN); /* NaN amax cannot occur (abs_bits drops NaN) */
    if (fmt == DS_FP8_SCALE_UE8M0) {
        /* ceil to a power of two on the bits: the exponent, plus one when any mantissa bit is set */
        const uint32_t u = ds_f32_bits(s);
        int32_t e = (int32_t)((u >> 23) & 0xffu) + ((u & 0x7fffffu) != 0);
        e = e < 1 ? 1 : e > 254 ? 254 : e;
        s = ds_f32_from_bits((uint32_t)e << 23);
    }
    return s;
}

/* |x| as bits, NaN as 0: for non-negative floats the bit order is the numeric order, so an integer max
 * is fmaxf (which skips NaN, as the CUDA kernels' fmaxf reduction does) and vectorises. */
static inline uint32_t abs_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u &= 0x7fffffffu;
    return u > 0x7f800000u ? 0 : u;
}

static inline uint32_t amax_bits(const float *x, int64_t n) {
    uint32_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = abs_bits(x[i]);
        m = u > m ? u : m;
    }
    return m;
}

static inline float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void encode_scaled(uint8_t *q, const float *x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) q[i] = ds_f32_to_e4m3_sat(x[i] / s);
}

static int check_dims(const char *what, int64_t rows, int64_t cols, int64_t br, int64_t bc) {
    if (rows < 0 || cols < 0 || br < 1 || bc < 1 || (cols > 0 && rows > INT64_MAX / cols))
        return ds_fail(DS_ERR, "%s: bad shape [%lld, %lld] with blocks [%lld, %lld]", what, (long long)rows,
                       (long long)cols, (long long)br, (long long)bc);
    return DS_OK;
}

int ds_fp8_quantize(uint8_t *q, float *scale, const float *x, int64_t rows, int64_t cols, int64_t br, int64_t bc,
                    ds_fp8_scale_fmt fmt) {
    DS_TRY(check_dims("fp8 quantize", rows, cols, br, bc));
    const int64_t nbr = ds_fp8_nblocks(rows, br), nbc = ds_fp8_nblocks(cols, bc);
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
    for (int64_t i = 0; i < nbr; i++) {
        const int64_t r0 = i * br, r1 = r0 + br < rows ? r0 + br : rows;
        for (int64_t j = 0; j < nbc; j++) {
            const int64_t c0 = j * bc, w = c0 + bc < cols ? bc : cols - c0;
            uint32_t m = 0;
            for (int64_t r = r0; r < r1; r++) {
                uint32_t mr = amax_bits(x + r * cols + c0, w);
                m = mr > m ? mr : m;
            }
            const float s = ds_fp8_scale_for_amax(bits_float(m), fmt);
            scale[i * nbc + j] = s;
            for (int64_t r = r0; r < r1; r++) encode_scaled(q + r * cols + c0, x + r * cols + c0, w, s);
        }
    }
    return DS_OK;
}

int ds_fp8_quantize_transposed(uint8_t *qt, float *scale_t, const float *x, int64_t rows, int64_t cols,
                               ds_fp8_scale_fmt fmt) {
    DS_TRY(check_dims("fp8 quantize (transposed)", rows, cols, DS_FP8_BLOCK, 1));
    const int64_t nrb = ds_fp8_nblocks(rows, DS_FP8_BLOCK);
    /* one task = one 128-row block x a strip of columns; the strip's rows stay in cache while every column
     * of the strip is reduced and encoded */
    enum { STRIP = 64 };
    const int64_t nstrips = ds_fp8_nblocks(cols, STRIP);
#pragma omp parallel for collapse(2) schedule(static) if (rows * cols >= PARALLEL_MIN)
    for (int64_t i = 0; i < nrb; i++) {
        for (int64_t sj = 0; sj < nstrips; sj++) {
            const int64_t r0 = i * DS_FP8_BLOCK, h = r0 + DS_FP8_BLOCK < rows ? DS_FP8_BLOCK : rows - r0;
            const int64_t c0 = sj * STRIP, c1 = c0 + STRIP < cols ? c0 + STRIP : cols;
            uint32_t m[STRIP] = {0};
            for (int64_t r = r0; r < r0 + h; r++) {
                const float *xr = x + r * cols;
                for (int64_t c = c0; c < c1; c++) {
                    uint32_t u = abs_bits(xr[c]);
                    m[c - c0] = u > m[c - c0] ? u : m[c - c0];
                }
            }
            float s[STRIP];
            for (int64_t c = c0; c < c1; c++) {
                s[c - c0] = ds_fp8_scale_for_amax(bits_float(m[c - c0]), fmt);
                scale_t[c * nrb + i] = s[c - c0];
            }
            /* transpose through a local tile so qt is written in contiguous runs of h bytes */
            uint8_t tile[STRIP][DS_FP8_BLOCK];
            for (int64_t r = r0; r < r0 + h; r++) {
                const float *xr = x + r * cols;
                for (int64_t c = c0; c < c1; c++) tile[c - c0][r - r0] = ds_f32_to_e4m3_sat(xr[c] / s[c - c0]);
            }
            for (int64_t c = c0; c < c1; c++) memcpy(qt + c * rows + r0, tile[c - c0], (size_t)h);
        }
    }
    return DS_OK;
}

/* Codes times their block's scale, into f32 (xf) or bf16 (xb): one of the two is NULL. */
static inline int dequantize(float *xf, uint16_t *xb, const uint8_t *q, const float *scale, int64_t rows, int64_t cols,
                             int64_t br, int64_t bc) {
    DS_TRY(check_dims("fp8 dequantize", rows, cols, br, bc));
    const int64_t nbc = ds_fp8_nblocks(cols, bc);
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *sr = scale + (r / br) * nbc;
        for (int64_t c0 = 0; c0 < cols; c0 += bc) {
            const int64_t end = r * cols + (c0 + bc < cols ? c0 + bc : cols);
            const float s = sr[c0 / bc];
            if (xf)
                for (int64_t i = r * cols + c0; i < end; i++) xf[i] = ds_e4m3_table[q[i]] * s;
            else
                for (int64_t i = r * cols + c0; i < end; i++) xb[i] = ds_f32_to_bf16(ds_e4m3_table[q[i]] * s);
        }
    }
    return DS_OK;
}

int ds_fp8_dequantize(float *x, const uint8_t *q, const float *scale, int64_t rows, int64_t cols, int64_t br,
                      int64_t bc) {
    return dequantize(x, NULL, q, scale, rows, cols, br, bc);
}

int ds_fp8_dequantize_bf16(uint16_t *x, const uint8_t *q, const float *scale, int64_t rows, int64_t cols,
                           int64_t br, int64_t bc) {
    return dequantize(NULL, x, q, scale, rows, cols, br, bc);
}

int ds_fp8_transpose_blocks(uint8_t *qt, float *scale_t, const uint8_t *q, const float *scale, int64_t rows,
                            int64_t cols, int64_t b) {
    DS_TRY(check_dims("fp8 transpose", rows, cols, b, b));
    const int64_t nbr = ds_fp8_nblocks(rows, b), nbc = ds_fp8_nblocks(cols, b);
    for (int64_t i = 0; i < nbr; i++)
        for (int64_t j = 0; j < nbc; j++) scale_t[j * nbr + i] = scale[i * nbc + j];
    enum { T = 32 };
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
    for (int64_t c0 = 0; c0 < cols; c0 += T)
        for (int64_t r0 = 0; r0 < rows; r0 += T)
            for (int64_t c = c0; c < c0 + T && c < cols; c++)
                for (int64_t r = r0; r < r0 + T && r < rows; r++) qt[c * rows + r] = q[r * cols + c];
    return DS_OK;
}

/* Eight independent lanes (fixed order, so the sums are deterministic) let the compiler vectorise
 * the double-precision reductions without -ffast-math; non-finite pairs are masked out. */
void ds_fp8_err_add(ds_fp8_err *e, const float *x, const float *x_approx, size_t n) {
    enum { L = 8 };
    double se[L] = {0}, sr[L] = {0}, mx[L] = {0};
    int64_t bad[L] = {0};
    size_t i = 0;
    for (; i + L <= n; i += L)
        for (int l = 0; l < L; l++) {
            uint32_t ua, ub;
            memcpy(&ua, &x[i + l], 4);
            memcpy(&ub, &x_approx[i + l], 4);
            const int ok = (ua & 0x7f800000u) != 0x7f800000u && (ub & 0x7f800000u) != 0x7f800000u;
            const double a = ok ? (double)x[i + l] : 0, d = ok ? a - (double)x_approx[i + l] : 0;
            se[l] += d * d;
            sr[l] += a * a;
            mx[l] = fabs(d) > mx[l] ? fabs(d) : mx[l];
            bad[l] += !ok;
        }
    for (; i < n; i++) {
        const int ok = isfinite(x[i]) && isfinite(x_approx[i]);
        const double a = ok ? (double)x[i] : 0, d = ok ? a - (double)x_approx[i] : 0;
        se[0] += d * d;
        sr[0] += a * a;
        mx[0] = fabs(d) > mx[0] ? fabs(d) : mx[0];
        bad[0] += !ok;
    }
    for (int l = 0; l < L; l++) {
        e->sq_err += se[l];
        e->sq_ref += sr[l];
        e->max_abs = mx[l] > e->max_abs ? mx[l] : e->max_abs;
        e->nonfinite += bad[l];
    }
    e->n += (int64_t)n;
}

double ds_fp8_err_rel_fro(const ds_fp8_err *e) {
    if (e->sq_ref > 0) return sqrt(e->sq_err / e->sq_ref);
    return e->sq_err > 0 ? INFINITY : 0.0;
}
