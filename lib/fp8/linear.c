#include "fp8/linear.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "fp8/gemm.h"
#include "ops/ops.h"

static ds_fp8_train_opts g_opts = {DS_FP8_SCALE_F32, DS_FP8_SCALE_F32, DS_FP8_SCALE_F32, 1, {DS_FP8_ACCUM_EXACT, 0}};
static int g_status;

void ds_fp8_train_set(const ds_fp8_train_opts *o) { g_opts = *o; }
ds_fp8_train_opts ds_fp8_train_get(void) { return g_opts; }

int ds_fp8_linear_status(void) {
    int rc = g_status;
    g_status = DS_OK;
    return rc;
}

/* Per-thread scratch, grown on demand and kept: GEMMs inside a training step never allocate once the
 * largest shape has been seen. */
static _Thread_local struct {
    char *p;
    size_t cap;
} scratch;

static char *scratch_get(size_t bytes) {
    if (bytes > scratch.cap) {
        void *p = NULL;
        size_t cap = bytes + bytes / 4;
        if (posix_memalign(&p, 64, cap)) {
            if (!g_status) g_status = ds_fail(DS_ERR, "out of memory: fp8 gemm scratch of %zu bytes", cap);
            return NULL;
        }
        free(scratch.p);
        scratch.p = p, scratch.cap = cap;
    }
    return scratch.p;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* x[rows, cols] with row stride ld, as a contiguous array (packed into tmp when strided). */
static const float *contiguous(const float *x, int64_t rows, int64_t cols, int64_t ld, float *tmp) {
    if (ld == cols) return x;
    for (int64_t r = 0; r < rows; r++) memcpy(tmp + r * cols, x + r * ld, (size_t)cols * sizeof *tmp);
    return tmp;
}

/* C = beta * C (beta = 0 clears, ignoring NaN) */
static void scale_c(float *C, int M, int N, int ldc, float beta) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j];
}

/* gemm_with's `in` flags: IN_POW2, the 1x128 quantizations of activations and gradients (A when ta = 0,
 * Wgrad's cached x) take power-of-two scales (the pow2 table below); IN_STORED, Wgrad's x is taken as given
 * (the stored table below). */
enum { IN_POW2 = 1, IN_STORED = 2 };

/* The GEMM under the process-wide options and the `in` flags */
static void gemm_with(int in, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0) {
        scale_c(C, M, N, ldc, beta);
        return;
    }
    ds_fp8_train_opts o = g_opts;
    const int pow2_in = in & IN_POW2;
    if (in & IN_STORED) o.cache_input_fp8 = 0;
    const int64_t kb = ds_fp8_nblocks(K, DS_FP8_BLOCK), m = M, n = N, k = K;
    const int weight_b = ta == 0; /* see linear.h: ta = 0 is Fprop/Dgrad, B the weight */
    const size_t big = (size_t)(m > n ? m : n) * (size_t)k;            /* the larger operand */
    /* scales: A [M, kb]; B at most [N, kb]; the temporary one at most [K, ceil(N/128)] (Wgrad's x tiles) */
    const size_t sa = (size_t)(m * kb) * 4, sb = (size_t)(n * kb) * 4;
    const size_t st = (size_t)(k * ds_fp8_nblocks(n, DS_FP8_BLOCK)) * 4;
    const size_t sizes[] = {big, sa, big, sb, big, st, big * 4, big * 4, (size_t)(m * n) * 4,
                            ds_fp8_gemm_accum_workspace(m, n, k, &o.accum)};
    enum { AQ, AS, BQ, BS, TQ, TS, TMP, TMP2, PROD, WS, NBUF };
    size_t total = 0;
    for (int i = 0; i < NBUF; i++) total += align64(sizes[i]);
    char *base = scratch_get(total), *buf[NBUF];
    if (!base) return;
    for (int i = 0; i < NBUF; i++) buf[i] = base, base += align64(sizes[i]);
    uint8_t *aq = (uint8_t *)buf[AQ], *bq = (uint8_t *)buf[BQ], *tq = (uint8_t *)buf[TQ];
    float *as = (float *)buf[AS], *bs = (float *)buf[BS], *ts = (float *)buf[TS];
    float *tmp = (float *)buf[TMP], *tmp2 = (float *)buf[TMP2], *prod = (float *)buf[PROD];
    void *ws = buf[WS];

    /* A: [M, K] in 1x128 tiles (Fprop x: activation scales, Dgrad dy: gradient scales), or for Wgrad the
     * stored [K, M] gradient quantized as its transpose in 128x1 tiles */
    if (!ta) {
        const ds_fp8_scale_fmt fa = pow2_in ? DS_FP8_SCALE_UE8M0 : tb ? o.act_scale_fmt : o.grad_scale_fmt;
        ds_fp8_quantize(aq, as, contiguous(A, m, k, lda, tmp), m, k, 1, DS_FP8_BLOCK, fa);
    } else {
        ds_fp8_quantize_transposed(aq, as, contiguous(A, k, m, lda, tmp), k, m, o.grad_scale_fmt);
    }
    ds_fp8_mat Am = {aq, as, 1, 0}, Bm = {bq, bs, weight_b ? DS_FP8_BLOCK : 1, 0};
    if (weight_b && tb) { /* Fprop: W [N, K] */
        ds_fp8_quantize(bq, bs, contiguous(B, n, k, ldb, tmp), n, k, DS_FP8_BLOCK, DS_FP8_BLOCK, o.weight_scale_fmt);
    } else if (weight_b) { /* Dgrad: W stored [K, N]; quantize it as stored, then transpose the blocks */
        ds_fp8_quantize(tq, ts, contiguous(B, k, n, ldb, tmp), k, n, DS_FP8_BLOCK, DS_FP8_BLOCK, o.weight_scale_fmt);
        ds_fp8_transpose_blocks(bq, bs, tq, ts, k, n, DS_FP8_BLOCK);
    } else if (!tb) { /* Wgrad: x stored [K, N] (tokens x channels) */
        const float *x = contiguous(B, k, n, ldb, tmp);
        if (o.cache_input_fp8) { /* the forward's 1x128 FP8 tiles, dequantized, then requantized 128x1 */
            ds_fp8_quantize(tq, ts, x, k, n, 1, DS_FP8_BLOCK, pow2_in ? DS_FP8_SCALE_UE8M0 : o.act_scale_fmt);
            ds_fp8_dequantize(tmp2, tq, ts, k, n, 1, DS_FP8_BLOCK);
            x = tmp2;
        }
        ds_fp8_quantize_transposed(bq, bs, x, k, n, o.act_scale_fmt);
    } else { /* not a Linear shape: B [N, K] treated as an activation in 1x128 tiles */
        ds_fp8_quantize(bq, bs, contiguous(B, n, k, ldb, tmp), n, k, 1, DS_FP8_BLOCK, o.act_scale_fmt);
    }

    const int direct = alpha == 1 && (beta == 0 || beta == 1) && ldc == N;
    int rc = ds_fp8_gemm_accum(direct ? C : prod, &Am, &Bm, m, n, k, direct && beta == 1, ws, &o.accum);
    if (rc) {
        if (!g_status) g_status = rc;
        return;
    }
    if (direct) return;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float *c = &C[i * ldc + j];
            *c = beta == 0 ? alpha * prod[i * n + j] : alpha * prod[i * n + j] + beta * *c;
        }
}

void ds_fp8_linear_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                        int ldb, float beta, float *C, int ldc) {
    gemm_with(0, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ds_fp8_linear_gemm_stored(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                               const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_with(IN_STORED, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void gemm_rows_with(int in, int ng, const int64_t *off, int tb, int N, int K, float alpha,
                           const float *A, int lda, const float *B, size_t strideB, int ldb, float beta, float *C,
                           int ldc) {
    for (int g = 0; g < ng; g++) {
        const int64_t r0 = off[g], r1 = off[g + 1];
        if (r1 <= r0) continue;
        gemm_with(in, 0, tb, (int)(r1 - r0), N, K, alpha, A + r0 * lda, lda, B + g * strideB, ldb, beta,
                  C + r0 * ldc, ldc);
    }
}

static void gemm_wgrad_with(int in, int ng, const int64_t *off, int M, int N, float alpha, const float *A,
                            int lda, const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    for (int g = 0; g < ng; g++) {
        const int64_t r0 = off[g], r1 = off[g + 1];
        gemm_with(in, 1, 0, M, N, (int)(r1 > r0 ? r1 - r0 : 0), alpha, A + r0 * lda, lda, B + r0 * ldb, ldb, beta,
                  C + g * strideC, ldc);
    }
}

void ds_fp8_linear_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                             const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    gemm_rows_with(0, ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
}

void ds_fp8_linear_gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                              const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    gemm_wgrad_with(0, ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
}

static void pow2_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
    gemm_with(IN_POW2, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

static void pow2_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                           const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    gemm_rows_with(IN_POW2, ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
}

static void pow2_gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    gemm_wgrad_with(IN_POW2, ng, off, M, N, alpha, A, lda, B, ldb, beta, C, strideC, ldc);
}

void ds_fp8_linear_ops_pow2(ds_ops *out, const ds_ops *base) {
    *out = *base;
    out->gemm = pow2_gemm;
    out->gemm_rows = pow2_gemm_rows;
    out->gemm_wgrad = pow2_gemm_wgrad;
}

void ds_fp8_linear_ops(ds_ops *out, const ds_ops *base) {
    *out = *base;
    out->gemm = ds_fp8_linear_gemm;
    out->gemm_rows = ds_fp8_linear_gemm_rows;
    out->gemm_wgrad = ds_fp8_linear_gemm_wgrad;
    out->gemm_rows_dev = NULL, out->gemm_wgrad_dev = NULL; /* the experts take the FP8 host-offset path */
}

void ds_fp8_linear_ops_stored(ds_ops *out, const ds_ops *base) {
    ds_fp8_linear_ops(out, base);
    out->gemm = ds_fp8_linear_gemm_stored;
}
