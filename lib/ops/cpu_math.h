/* cpu_math.h — scalar math the CPU ops inline into vectorized loops.
 *
 * Owns: an exp that GCC vectorizes without -ffast-math (glibc's vector expf needs it), for the softmaxes of
 * attention, the head and the router. Accuracy: relative error below 2e-7 over the whole float range;
 * exp(x) = 0 for x < -87.3 (so -inf gives 0) and +inf above 88.7.
 */
#ifndef DS_OPS_CPU_MATH_H
#define DS_OPS_CPU_MATH_H

#include <stdint.h>
#include <string.h>

static inline float ds_expf(float x) {
    const float hi = 88.72283f, lo = -87.33654f;
    float xc = x > hi ? hi : (x < lo ? lo : x);
    if (!(xc == xc)) xc = 0.0f; /* NaN: computed on 0, returned as NaN below */
    /* x = k ln2 + r, |r| <= ln2/2; k rounded to nearest by the 1.5*2^23 trick */
    float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - kf * 0.693145751953125f;
    r = r - kf * 1.428606765330187e-06f;
    /* e^r by its Taylor series to r^7 (error < 1e-8 on |r| <= 0.347) */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* scale by 2^k in two steps so k = 128 (x near the top) does not overflow the exponent field */
    int32_t k = (int32_t)kf;
    int32_t k1 = k >> 1, k2 = k - k1;
    int32_t b1 = (k1 + 127) << 23, b2 = (k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    float y = p * s1 * s2;
    if (x < lo) y = 0.0f;
    if (x > hi) y = __builtin_inff();
    if (!(x == x)) y = x;
    return y;
}

static inline float ds_sigmoidf(float x) { return 1.0f / (1.0f + ds_expf(-x)); }

/* SwiGLU's elements, shared by the swiglu ops and the fused expert FFN (cpu_moe_ffn.c) so both give the
 * same bits: h = silu(g) u; and its gradient dg, du from dh. */
static inline float ds_swiglu(float g, float u) { return g * ds_sigmoidf(g) * u; }
static inline void ds_swiglu_grad(float *dg, float *du, float dh, float g, float u) {
    float s = ds_sigmoidf(g);
    *du = dh * g * s;
    *dg = dh * u * s * (1.0f + g * (1.0f - s));
}

#endif
