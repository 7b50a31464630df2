/* Unit tests of the CPU references of the device-offset grouped GEMMs (ops/grouped.h): bit for bit the
 * per-expert path (one gemm per expert on its rows) over ragged groups, empty ones included; rows past the
 * last group and the groups' beta semantics as ops.h says. */
#include "tap.h"

#include "core/rng.h"
#include "fp8/linear.h"
#include "fp8/resident.h"
#include "ops/bf16.h"
#include "ops/grouped.h"
#include "ops/ops.h"
#include "ops/prof.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NG = 6, ROWS = 200, MAX_ROWS = 224 };
/* empty first, middle and last groups; sizes that are no multiple of any tile */
static const int32_t OFF[NG + 1] = {0, 0, 37, 37, 130, 200, 200};

static float *randv(size_t n, uint64_t stream) {
    float *x = malloc(sizeof(float) * n);
    ds_randn_fill(x, n, 77, stream, 1.0f);
    return x;
}

TEST(rows_equal_per_expert) {
    const ds_ops *O = ds_ops_cpu();
    const int N = 45, K = 70, lda = K + 3, ldc = N + 5;
    for (int tb = 0; tb < 2; tb++)
        for (int pass = 0; pass < 2; pass++) {
            const float beta = pass ? 1.0f : 0.0f, alpha = 0.75f;
            const int ldb = tb ? K + 2 : N + 2;
            const size_t strideB = (size_t)(tb ? N : K) * ldb + 9;
            float *A = randv((size_t)MAX_ROWS * lda, 1), *B = randv(strideB * NG, 2);
            float *C = randv((size_t)MAX_ROWS * ldc, 3), *R = malloc(sizeof(float) * MAX_ROWS * ldc);
            if (!pass) C[(size_t)40 * ldc + 3] = NAN; /* beta 0 ignores C, NaN included */
            memcpy(R, C, sizeof(float) * MAX_ROWS * ldc);
            ds_cpu_gemm_rows_dev(NG, OFF, MAX_ROWS, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
            for (int g = 0; g < NG; g++)
                if (OFF[g + 1] > OFF[g])
                    O->gemm(0, tb, OFF[g + 1] - OFF[g], N, K, alpha, A + (size_t)OFF[g] * lda, lda, B + g * strideB, ldb,
                            beta, R + (size_t)OFF[g] * ldc, ldc);
            CHECK(!memcmp(C, R, sizeof(float) * MAX_ROWS * ldc),
                  "gemm_rows_dev tb %d beta %.0f = one gemm per expert, bit for bit (rows past off[ng] untouched)", tb,
                  beta);
            int finite = 1;
            for (size_t i = 0; i < (size_t)ROWS * ldc; i++) finite &= isfinite(C[i]) || (i % ldc) >= (size_t)N;
            CHECK(finite, "gemm_rows_dev tb %d beta %.0f: every output finite", tb, beta);
            free(A), free(B), free(C), free(R);
        }
}

TEST(wgrad_equal_per_expert) {
    const ds_ops *O = ds_ops_cpu();
    const int M = 33, N = 50, lda = M + 1, ldb = N + 3, ldc = N + 2;
    const size_t strideC = (size_t)M * ldc + 4;
    for (int pass = 0; pass < 3; pass++) {
        const float beta = pass == 0 ? 0.0f : pass == 1 ? 1.0f : 0.5f, alpha = 1.25f;
        float *A = randv((size_t)MAX_ROWS * lda, 4), *B = randv((size_t)MAX_ROWS * ldb, 5);
        float *C = randv(strideC * NG, 6), *R = malloc(sizeof(float) * strideC * NG);
        if (!pass) C[strideC * 2 + 7] = NAN; /* group 2 is empty: beta 0 still clears it */
        memcpy(R, C, sizeof(float) * strideC * NG);
        ds_cpu_gemm_wgrad_dev(NG, OFF, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
        for (int g = 0; g < NG; g++) {
            int rows = OFF[g + 1] - OFF[g];
            if (rows > 0 || beta != 1.0f)
                O->gemm(1, 0, M, N, rows, rows ? alpha : 0.0f, A + (size_t)OFF[g] * lda, lda, B + (size_t)OFF[g] * ldb,
                        ldb, beta, R + g * strideC, ldc);
        }
        CHECK(!memcmp(C, R, sizeof(float) * strideC * NG),
              "gemm_wgrad_dev beta %.1f = one gemm per expert, bit for bit (empty groups: beta C)", beta);
        CHECK(pass || C[strideC * 2 + 7] == 0.0f, "beta 0 clears an empty group's NaN");
        free(A), free(B), free(C), free(R);
    }
}

TEST(table_with_dev_offsets) {
    ds_ops t;
    ds_ops_cpu_with_dev_offsets(&t, ds_ops_cpu());
    CHECK(t.gemm_rows_dev == ds_cpu_gemm_rows_dev && t.gemm_wgrad_dev == ds_cpu_gemm_wgrad_dev &&
              t.gemm_rows == ds_ops_cpu()->gemm_rows && !ds_ops_cpu()->gemm_rows_dev,
          "the CPU table has no device-offset entries; the test table takes the references");
}

/* Wrappers that replace the host-offset GEMMs must not let the device-offset ones bypass them (FP8, bf16
 * rounding); the profiler times them. */
TEST(wrappers) {
    ds_ops dev, fp8, res;
    ds_ops_cpu_with_dev_offsets(&dev, ds_ops_cpu());
    ds_fp8_linear_ops(&fp8, &dev);
    ds_fp8_resident_ops(&res, &dev);
    const ds_ops *b16 = ds_bf16_ops(&dev);
    CHECK(!fp8.gemm_rows_dev && !fp8.gemm_wgrad_dev, "FP8 Linear table: no device-offset GEMMs");
    CHECK(!res.gemm_rows_dev && !res.gemm_wgrad_dev, "FP8-resident table: no device-offset GEMMs");
    CHECK(!b16->gemm_rows_dev && !b16->gemm_wgrad_dev, "bf16 emulation table: no device-offset GEMMs");
    const ds_ops *prof = ds_prof_ops(&dev);
    CHECK(prof->gemm_rows_dev && prof->gemm_rows_dev != ds_cpu_gemm_rows_dev && prof->gemm_wgrad_dev &&
              prof->gemm_wgrad_dev != ds_cpu_gemm_wgrad_dev,
          "profiling table: the device-offset GEMMs wrapped");
    const ds_ops *prof_cpu = ds_prof_ops(ds_ops_cpu());
    CHECK(!prof_cpu->gemm_rows_dev && !prof_cpu->gemm_wgrad_dev, "profiling the CPU table adds none");
    /* the profiled entry computes what the reference does */
    float A[6] = {1, 2, 3, 4, 5, 6}, B[4] = {1, 0, 0, 1}, C[6] = {0}, W[8] = {0};
    const int32_t off[3] = {0, 1, 3};
    prof = ds_prof_ops(&dev);
    prof->gemm_rows_dev(2, off, 3, 1, 2, 2, 1.0f, A, 2, B, 0, 2, 0.0f, C, 2);
    prof->gemm_wgrad_dev(2, off, 2, 2, 1.0f, A, 2, A, 2, 0.0f, W, 4, 2);
    const float want[8] = {1, 2, 2, 4, 34, 42, 42, 52}; /* A_g^T A_g of rows {0} and {1, 2} */
    CHECK(!memcmp(C, A, sizeof A) && !memcmp(W, want, sizeof W),
          "profiled entries: identity weights copy the rows; each group's wgrad");
}

TAP_MAIN()
