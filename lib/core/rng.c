#include "core/rng.h"

#include <math.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

uint64_t ds_seed_draw(void) {
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) == (ssize_t)sizeof s) return s;
    FILE *f = fopen("/dev/urandom", "rb");
    int got = f && fread(&s, sizeof s, 1, f) == 1;
    if (f) fclose(f);
    if (got) return s;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 32);
}

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void ds_philox4x32(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)index, c1 = (uint32_t)(index >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void ds_rng_init(ds_rng *r, uint64_t seed, uint64_t stream) {
    r->seed = seed;
    r->stream = stream;
    r->index = 0;
    r->left = 0;
}

uint32_t ds_rng_u32(ds_rng *r) {
    if (r->left == 0) {
        ds_philox4x32(r->seed, r->stream, r->index++, r->buf);
        r->left = 4;
    }
    return r->buf[4 - r->left--];
}

uint64_t ds_rng_u64(ds_rng *r) {
    uint64_t hi = ds_rng_u32(r);
    return (hi << 32) | ds_rng_u32(r);
}

double ds_rng_uniform(ds_rng *r) { return (double)(ds_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

uint64_t ds_rng_below(ds_rng *r, uint64_t n) {
    if (n <= 1) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    for (;;) {
        uint64_t x = ds_rng_u64(r);
        if (x < limit) return x % n;
    }
}

double ds_rng_normal(ds_rng *r) {
    double u1 = ds_rng_uniform(r), u2 = ds_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void ds_randn_fill(float *x, size_t n, uint64_t seed, uint64_t stream, float std) {
    /* block i gives elements 2i and 2i+1 via Box-Muller on two 32-bit pairs */
    size_t nblocks = (n + 1) / 2;
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nblocks; b++) {
        uint32_t w[4];
        ds_philox4x32(seed, stream, b, w);
        /* 53-bit uniforms from two words each; u1 in (0, 1) so log(u1) is finite */
        double u1 = ((double)((w[0] >> 5) * 67108864.0 + (w[1] >> 6)) + 0.5) * (1.0 / 9007199254740992.0);
        double u2 = (double)((w[2] >> 5) * 67108864.0 + (w[3] >> 6)) * (1.0 / 9007199254740992.0);
        double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        x[2 * b] = (float)(std * rad * cos(th));
        if (2 * b + 1 < n) x[2 * b + 1] = (float)(std * rad * sin(th));
    }
}

void ds_permutation(uint32_t *perm, size_t n, uint64_t seed, uint64_t stream) {
    ds_rng r;
    ds_rng_init(&r, seed, stream);
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)ds_rng_below(&r, i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

uint64_t ds_stream_id(const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h;
}
