/* Unit tests of E5M6 (lib/fp8/e5m6.h): the codec bit for bit against the independent numpy reference
 * tests/ref/e5m6_ref.py (against_numpy: every float16, E5M6 boundaries and their neighbours, random float32;
 * every code's decoding; tiled quantization with its packing, scales and dequantization), and properties
 * that need no reference: round trips, idempotent quantization, the error bound, the byte counts. */
#include "tap.h"

#include "core/rng.h"
#include "fp8/e5m6.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int rd(FILE *f, void *p, size_t bytes) { return fread(p, 1, bytes, f) == bytes; }

TEST(against_numpy) {
    const char *path = getenv("DS_E5M6_REF");
    if (!path || !*path) {
        tap_count++;
        printf("ok %d - against_numpy # skip DS_E5M6_REF not set (tests/ref/fp8.bats sets it)\n", tap_count);
        return;
    }
    FILE *f = fopen(path, "rb");
    char magic[8];
    uint64_t n = 0;
    int ok = f && rd(f, magic, 8) && !memcmp(magic, "DSE56RF1", 8) && rd(f, &n, 8) && n > 0 && n < (1u << 26);
    CHECK(ok, "reference file %s: %llu inputs", path, (unsigned long long)n);
    if (!ok) return;
    float *x = malloc(n * 4);
    uint16_t *e = malloc(n * 2), *es = malloc(n * 2);
    float dec[4096];
    ok = rd(f, x, n * 4) && rd(f, e, n * 2) && rd(f, es, n * 2) && rd(f, dec, sizeof dec);
    CHECK(ok, "reference arrays read");
    size_t bad = 0, bad_sat = 0, first = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        if (ds_f32_to_e5m6(x[i]) != e[i]) bad++, first = first == SIZE_MAX ? i : first;
        if (ds_f32_to_e5m6_sat(x[i]) != es[i]) bad_sat++;
    }
    CHECK(bad == 0, "ds_f32_to_e5m6 on %llu inputs (all 2^16 float16s first): %zu differ%s", (unsigned long long)n,
          bad, bad ? "" : "");
    if (bad) printf("#   first: x %08x ours %03x ref %03x\n", fbits(x[first]), ds_f32_to_e5m6(x[first]), e[first]);
    CHECK(bad_sat == 0, "ds_f32_to_e5m6_sat: %zu differ", bad_sat);
    int bad_dec = 0;
    for (int c = 0; c < 4096; c++) bad_dec += fbits(ds_e5m6_to_f32((uint16_t)c)) != fbits(dec[c]);
    CHECK(bad_dec == 0, "every one of the 4096 codes decodes to the reference's bits: %d differ", bad_dec);
    free(x), free(e), free(es);

    uint64_t nc = 0;
    ok = rd(f, &nc, 8) && nc > 0 && nc < 64;
    CHECK(ok, "%llu quantization cases", (unsigned long long)nc);
    for (uint64_t k = 0; ok && k < nc; k++) {
        uint64_t shape[2];
        if (!rd(f, shape, 16)) break;
        const int64_t rows = (int64_t)shape[0], cols = (int64_t)shape[1], m = rows * cols;
        const size_t cb = (size_t)rows * ds_e5m6_row_bytes(cols), sb = ds_e5m6_scale_bytes(rows, cols);
        float *xq = malloc(m * 4), *dq = malloc(m * 4), *ours = malloc(m * 4);
        uint8_t *codes = malloc(cb), *scales = malloc(sb), *oc = malloc(cb), *os = malloc(sb);
        ok = rd(f, xq, m * 4) && rd(f, codes, cb) && rd(f, scales, sb) && rd(f, dq, m * 4);
        CHECK(ok && ds_e5m6_quantize(oc, os, xq, rows, cols) == 0, "case %llu [%lld, %lld] quantized",
              (unsigned long long)k, (long long)rows, (long long)cols);
        CHECK(!memcmp(oc, codes, cb) && !memcmp(os, scales, sb),
              "case %llu: %zu packed code bytes and %zu UE8M0 scales identical", (unsigned long long)k, cb, sb);
        CHECK(ds_e5m6_dequantize(ours, oc, os, rows, cols) == 0 && !memcmp(ours, dq, m * 4),
              "case %llu: dequantization bit-identical", (unsigned long long)k);
        free(xq), free(dq), free(ours), free(codes), free(scales), free(oc), free(os);
    }
    fclose(f);
}

TEST(round_trips) {
    int bad = 0, bad_sat = 0;
    for (int c = 0; c < 4096; c++) {
        const int e = (c >> 6) & 31, nan = e == 31 && (c & 63);
        const uint16_t want = nan ? (uint16_t)((c & 0x800) | 0x7e0) : (uint16_t)c;
        const float v = ds_e5m6_to_f32((uint16_t)c);
        bad += ds_f32_to_e5m6(v) != want;
        const int inf = e == 31 && !(c & 63);
        bad_sat += ds_f32_to_e5m6_sat(v) != (inf ? (uint16_t)((c & 0x800) | 0x7bf) : want);
    }
    CHECK(bad == 0, "decode then encode gives every code back (NaNs canonical): %d differ", bad);
    CHECK(bad_sat == 0, "the saturating encoder too, Inf clamped to 65024: %d differ", bad_sat);
    CHECK(ds_e5m6_to_f32(0x7bf) == DS_E5M6_MAX && ds_e5m6_to_f32(0x001) == 0x1p-20f && ds_e5m6_to_f32(0x040) == 0x1p-14f,
          "65024, 2^-20, 2^-14 at their codes");
    CHECK(ds_f32_to_e5m6(65279.99f) == 0x7bf && ds_f32_to_e5m6(65280.0f) == 0x7c0 && ds_f32_to_e5m6_sat(1e30f) == 0x7bf &&
              ds_f32_to_e5m6(-INFINITY) == 0xfc0 && ds_f32_to_e5m6(-NAN) == 0xfe0,
          "overflow: below the tie 65024, at it Inf; saturation; -Inf; -NaN keeps its sign");

    ds_rng rng;
    ds_rng_init(&rng, 7, 0);
    uint16_t c[11], back[11];
    uint8_t buf[18];
    int bad_pack = 0;
    for (int n = 0; n <= 11; n++) {
        for (int i = 0; i < n; i++) c[i] = (uint16_t)(ds_rng_u32(&rng) & 0xfff);
        memset(buf, 0xa5, sizeof buf);
        ds_e5m6_pack(buf, c, n);
        ds_e5m6_unpack(back, buf, n);
        bad_pack += memcmp(c, back, (size_t)n * 2) != 0 || buf[ds_e5m6_row_bytes(n)] != 0xa5;
    }
    CHECK(bad_pack == 0, "pack/unpack of 0..11 codes round-trips and writes exactly ceil(1.5 n) bytes");
}

TEST(scale_rule) {
    CHECK(ds_e5m6_scale_exp(0) == -126 && ds_e5m6_scale_exp(1e-40f) == -126, "zero and subnormal amax: 2^-126");
    int bad = 0;
    for (int k = -110; k <= 112; k++) {
        const float b = ldexpf(DS_E5M6_MAX, k);
        bad += ds_e5m6_scale_exp(b) != k || ds_e5m6_scale_exp(nextafterf(b, INFINITY)) != k + 1 ||
               ds_e5m6_scale_exp(ldexpf(1, k + 15)) != k; /* 2^(k+15) <= 65024 2^k < 2^(k+16) */
    }
    CHECK(bad == 0, "amax = 65024 2^k gives k, one ulp more k + 1, for k in [-110, 112]: %d wrong", bad);
}

TEST(quantize_properties) {
    enum { R = 9, C = 300 };
    static float x[R * C], y[R * C], z[R * C];
    static uint8_t q[R * 450], s[R * 3], q2[R * 450], s2[R * 3];
    ds_rng rng;
    ds_rng_init(&rng, 11, 0);
    for (int r = 0; r < R; r++)
        for (int i = 0; i < C; i++) x[r * C + i] = ds_rng_normal(&rng) * ldexpf(1, 4 * r - 16);
    ds_e5m6_quantize(q, s, x, R, C);
    ds_e5m6_dequantize(y, q, s, R, C);
    double worst = 0;
    for (int r = 0; r < R; r++)
        for (int j = 0; j < 3; j++) {
            float amax = 0;
            for (int i = j * 128; i < C && i < j * 128 + 128; i++) amax = fmaxf(amax, fabsf(x[r * C + i]));
            for (int i = j * 128; i < C && i < j * 128 + 128; i++) {
                const float a = fabsf(x[r * C + i]);
                /* normal range of the tile: relative error <= 2^-7 (half an ulp of 6 mantissa bits) */
                if (a >= amax * 0x1p-29f) worst = fmax(worst, fabs(x[r * C + i] - y[r * C + i]) / a);
            }
        }
    CHECK(worst <= 0x1p-7, "relative error within a tile's normal range <= 2^-7: %.3g", worst);
    CHECK(worst > 0x1p-9, "and the rounding is real (not exact): %.3g", worst);
    ds_e5m6_quantize(q2, s2, y, R, C);
    ds_e5m6_dequantize(z, q2, s2, R, C);
    CHECK(!memcmp(q, q2, sizeof q) && !memcmp(s, s2, sizeof s) && !memcmp(y, z, sizeof y),
          "quantizing the dequantized values gives the same codes, scales and values");
    int pow2_ok = 1;
    for (int i = 0; i < R * 3; i++) pow2_ok &= s[i] >= 1 && s[i] <= 253;
    CHECK(pow2_ok, "UE8M0 scale bytes in [1, 253] (exponents in [-126, 126])");
}

TEST(cache_bytes) {
    CHECK(ds_e5m6_cache_bytes(64, 256) == 64 * 384 + 64 * 2, "[64, 256]: 1.5 bytes per element + one byte per tile");
    CHECK(ds_e5m6_cache_bytes(3, 5) == 3 * 8 + 3 && ds_e5m6_row_bytes(1) == 2 && ds_e5m6_row_bytes(0) == 0,
          "an odd row ends in two bytes");
    CHECK(ds_e5m6_cache_bytes(1000, 1024) * 128 == (size_t)1000 * 1024 * (12 * 16 + 1),
          "12 bits + 1/128 byte per element at width 1024");
}

TAP_MAIN()
