/* The CPU backend table: host memory, OpenBLAS sgemm, and the OpenMP ops of cpu_*.c. */
#include "ops/cpu_internal.h"

#include "core/dtype.h"
#include "ops/gemm_bf16.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_max_threads(void) { return 1; }
#endif

void *ds_cpu_alloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) return NULL;
    if (posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63)) return NULL;
    return p;
}

void ds_cpu_free(void *p) { free(p); }

void ds_cpu_copy(void *dst, const void *src, size_t bytes, ds_copy_kind kind) {
    (void)kind;
    if (bytes && dst != src) memmove(dst, src, bytes);
}

void ds_cpu_zero(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}

void ds_cpu_sync(void) {}

static int cpu_status(void) { return 0; }
static void cpu_params_changed(const float *base, size_t n) { (void)base, (void)n; }

/* C = alpha op(A) op(B) + beta C with OpenBLAS running single-threaded (see ds_cpu_blas_single) */
void ds_cpu_gemm1(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc) {
    if (M <= 2) {
        /* One or two rows (decode steps, experts holding one token): sgemm packs all of B on every call,
         * which costs several times the product itself; gemv streams B once per row (3-8x faster). */
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            if (beta == 0.0f) memset(c, 0, sizeof(float) * (size_t)N); /* gemv's y*0 would keep NaN */
            const float *x = ta ? A + i : A + (size_t)i * lda;
            cblas_sgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, tb ? N : K, tb ? K : N, alpha, B, ldb, x,
                        ta ? lda : 1, beta, c, 1);
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                lda, B, ldb, beta, C, ldc);
}

/* OpenBLAS's own pthread pool and our OpenMP pool would both spin on the same cores; the backend keeps
 * OpenBLAS single-threaded and splits work across OpenMP threads itself. */
void ds_cpu_blas_single(void) {
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

/* The B operand of a product: float32 (h NULL), or bf16 weights (ds_cpu_gemm_bf16) that each single-threaded
 * product widens (exactly) into a per-thread scratch before sgemm reads them, so the bf16 products make the
 * same OpenBLAS calls on the same values as the float32 ones: bit-identical results. */
typedef struct {
    const float *f;
    const uint16_t *h;
} gemm_b;

static _Thread_local struct {
    float *p;
    size_t cap;
} widened;
static int widen_failed; /* a scratch that could not be allocated (ds_cpu_gemm_bf16 reports it) */

/* ds_cpu_gemm1 on columns [j0, j0 + N) of op(B) */
static void gemm1_b(int ta, int tb, int M, int j0, int N, int K, float alpha, const float *A, int lda, gemm_b b,
                    int ldb, float beta, float *C, int ldc) {
    if (!b.h) {
        ds_cpu_gemm1(ta, tb, M, N, K, alpha, A, lda, tb ? b.f + (size_t)j0 * ldb : b.f + j0, ldb, beta, C, ldc);
        return;
    }
    const size_t n = (size_t)N * (size_t)K;
    if (n > widened.cap) {
        free(widened.p);
        widened.p = ds_cpu_alloc(n * sizeof(float));
        widened.cap = widened.p ? n : 0;
        if (!widened.p) {
            widen_failed = 1;
            return;
        }
    }
    float *w = widened.p;
    const int rows = tb ? N : K, cols = tb ? K : N; /* op(B)'s slab as stored: [N, K] rows, or [K, N] columns */
    const uint16_t *h = b.h + (tb ? (size_t)j0 * ldb : (size_t)j0);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) w[(size_t)r * cols + c] = ds_bf16_to_f32(h[(size_t)r * ldb + c]);
    ds_cpu_gemm1(ta, tb, M, N, K, alpha, A, lda, w, cols, beta, C, ldc);
}

static void gemm_any(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, gemm_b b, int ldb,
                     float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        /* sgemm would still scale C by beta; beta == 0 must clear NaNs too */
        for (int i = 0; i < M; i++) {
            float *c = C + (size_t)i * ldc;
            if (beta == 0.0f)
                memset(c, 0, sizeof(float) * (size_t)N);
            else if (beta != 1.0f)
                for (int j = 0; j < N; j++) c[j] *= beta;
        }
        return;
    }
    ds_cpu_blas_single();
    int nt = omp_get_max_threads();
    if (nt <= 1 || (double)M * N * K < (double)(1 << 20)) {
        gemm1_b(ta, tb, M, 0, N, K, alpha, A, lda, b, ldb, beta, C, ldc);
        return;
    }
    /* split the longer side of C into one slab per thread (multiples of 16 rows/columns) */
    int split_m = M >= N, len = split_m ? M : N;
    int chunk = ((len + nt - 1) / nt + 15) & ~15;
    int parts = (len + chunk - 1) / chunk;
#pragma omp parallel for schedule(static, 1) num_threads(parts)
    for (int p = 0; p < parts; p++) {
        int a = p * chunk, z = a + chunk < len ? a + chunk : len;
        if (split_m)
            gemm1_b(ta, tb, z - a, 0, N, K, alpha, ta ? A + a : A + (size_t)a * lda, lda, b, ldb, beta,
                    C + (size_t)a * ldc, ldc);
        else
            gemm1_b(ta, tb, M, a, z - a, K, alpha, A, lda, b, ldb, beta, C + a, ldc);
    }
}

void ds_cpu_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc) {
    gemm_any(ta, tb, M, N, K, alpha, A, lda, (gemm_b){B, NULL}, ldb, beta, C, ldc);
}

int ds_cpu_gemm_bf16(int tb, int M, int N, int K, float alpha, const float *A, int lda, const uint16_t *B, int ldb,
                     float beta, float *C, int ldc) {
    widen_failed = 0;
    gemm_any(0, tb, M, N, K, alpha, A, lda, (gemm_b){NULL, B}, ldb, beta, C, ldc);
    return widen_failed ? -1 : 0;
}

/* Groups run in parallel, one single-threaded GEMM each (outputs are disjoint); a group much larger than
 * the rest would leave threads idle, so any group above a fair share runs alone on all threads. */
int ds_cpu_group_alone(const int64_t *off, int g, int ng) {
    return (off[g + 1] - off[g]) * 2 * omp_get_max_threads() > off[ng] - off[0] + 1;
}

/* group g's weight: B + g * strideB, or Bh[g] */
static gemm_b group_b(const float *B, size_t strideB, const uint16_t *const *Bh, int g) {
    return Bh ? (gemm_b){NULL, Bh[g]} : (gemm_b){B + (size_t)g * strideB, NULL};
}

static void rows_any(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                     const float *B, size_t strideB, const uint16_t *const *Bh, int ldb, float beta, float *C, int ldc) {
    ds_cpu_blas_single();
#pragma omp parallel for schedule(dynamic, 1)
    for (int g = 0; g < ng; g++) {
        int64_t r0 = off[g], r1 = off[g + 1];
        if (r1 <= r0 || ds_cpu_group_alone(off, g, ng)) continue;
        gemm1_b(0, tb, (int)(r1 - r0), 0, N, K, alpha, A + (size_t)r0 * lda, lda, group_b(B, strideB, Bh, g), ldb, beta,
                C + (size_t)r0 * ldc, ldc);
    }
    for (int g = 0; g < ng; g++)
        if (off[g + 1] > off[g] && ds_cpu_group_alone(off, g, ng))
            gemm_any(0, tb, (int)(off[g + 1] - off[g]), N, K, alpha, A + (size_t)off[g] * lda, lda,
                     group_b(B, strideB, Bh, g), ldb, beta, C + (size_t)off[g] * ldc, ldc);
}

void ds_cpu_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                      const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    rows_any(ng, off, tb, N, K, alpha, A, lda, B, strideB, NULL, ldb, beta, C, ldc);
}

int ds_cpu_gemm_rows_bf16(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                          const uint16_t *const *B, int ldb, float beta, float *C, int ldc) {
    widen_failed = 0;
    rows_any(ng, off, tb, N, K, alpha, A, lda, NULL, 0, B, ldb, beta, C, ldc);
    return widen_failed ? -1 : 0;
}

void ds_cpu_gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    ds_cpu_blas_single();
#pragma omp parallel for schedule(dynamic, 1)
    for (int g = 0; g < ng; g++) {
        int64_t r0 = off[g], r1 = off[g + 1];
        if (ds_cpu_group_alone(off, g, ng)) continue;
        if (r1 > r0)
            ds_cpu_gemm1(1, 0, M, N, (int)(r1 - r0), alpha, A + (size_t)r0 * lda, lda, B + (size_t)r0 * ldb, ldb, beta,
                  C + (size_t)g * strideC, ldc);
        else if (beta != 1.0f)
            ds_cpu_gemm(0, 0, M, N, 0, 0.0f, A, lda, B, ldb, beta, C + (size_t)g * strideC, ldc);
    }
    for (int g = 0; g < ng; g++)
        if (ds_cpu_group_alone(off, g, ng))
            ds_cpu_gemm(1, 0, M, N, (int)(off[g + 1] - off[g]), alpha, A + (size_t)off[g] * lda, lda,
                        B + (size_t)off[g] * ldb, ldb, beta, C + (size_t)g * strideC, ldc);
}

const char *ds_ops_cpu_blas_core(void) { return openblas_get_corename(); }

/* OpenBLAS's kernels for CPUs without AVX2. OpenBLAS picks its kernel from CPUID once, when it loads; a CPU
 * it does not know falls back to one of these (0.3.21, Debian 12's, reports "Prescott", its SSE3 kernel,
 * on Sapphire Rapids-class Xeons in VMs: sgemm ~20x below its AVX-512 kernel). */
static int pre_avx2_core(const char *c) {
    static const char *const old[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge", "Atom",
                                      "Nano", "Barcelona", "Opteron", "Opteron(SSE3)", "Bobcat", "Katmai",
                                      "Coppermine", "Northwood", "Banias", "Athlon", "Unknown"};
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++)
        if (!strcasecmp(c, old[i])) return 1;
    return 0;
}

const char *ds_ops_cpu_blas_better_core(void) {
    if (getenv("OPENBLAS_CORETYPE")) return NULL; /* the environment's choice stands */
    if (!pre_avx2_core(openblas_get_corename())) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq"))
        return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return NULL;
}

void ds_ops_cpu_blas_reexec(char *const argv[]) {
    const char *core = ds_ops_cpu_blas_better_core();
    if (!core) return;
    /* OpenBLAS reads OPENBLAS_CORETYPE only when it loads: run this program again with it set */
    if (setenv("DS_OPENBLAS_DETECTED", openblas_get_corename(), 1) || setenv("OPENBLAS_CORETYPE", core, 1)) return;
    /* the program's own path, not /proc/self/exe: exec names the process after the file (ps, top, kill) */
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len > 0) self[len] = 0, execv(self, argv);
    unsetenv("OPENBLAS_CORETYPE"); /* no re-exec (no /proc): keep the detected kernel */
}

void ds_ops_cpu_blas_note(char *buf, size_t n) {
    const char *env = getenv("OPENBLAS_CORETYPE"), *det = getenv("DS_OPENBLAS_DETECTED"), *better;
    if (env && det)
        snprintf(buf, n, "OpenBLAS kernel %s (OPENBLAS_CORETYPE=%s set by libds: OpenBLAS detected %s, a pre-AVX2 kernel, on this CPU)",
                 openblas_get_corename(), env, det);
    else if (env)
        snprintf(buf, n, "OpenBLAS kernel %s (OPENBLAS_CORETYPE=%s from the environment)", openblas_get_corename(), env);
    else if ((better = ds_ops_cpu_blas_better_core()))
        snprintf(buf, n, "OpenBLAS kernel %s, detected wrongly: this CPU runs %s (set OPENBLAS_CORETYPE=%s)",
                 openblas_get_corename(), better, better);
    else
        snprintf(buf, n, "OpenBLAS kernel %s (detected)", openblas_get_corename());
}

static const ds_ops cpu_ops = {
    .name = "cpu",
    .alloc = ds_cpu_alloc,
    .free = ds_cpu_free,
    .copy = ds_cpu_copy,
    .zero = ds_cpu_zero,
    .sync = ds_cpu_sync,
    .status = cpu_status,
    .params_changed = cpu_params_changed,
    .gemm = ds_cpu_gemm,
    .gemm_rows = ds_cpu_gemm_rows,
    .gemm_wgrad = ds_cpu_gemm_wgrad,
    .add = ds_cpu_add,
    .axpy = ds_cpu_axpy,
    .scale = ds_cpu_scale,
    .copy2d = ds_cpu_copy2d,
    .round_bf16 = ds_bf16_round_rows,
    .rmsnorm_fwd = ds_cpu_rmsnorm_fwd,
    .rmsnorm_bwd = ds_cpu_rmsnorm_bwd,
    .rope_table = ds_cpu_rope_table,
    .rope = ds_cpu_rope,
    .attn_ws_bytes = ds_cpu_attn_ws_bytes,
    .attn_fwd = ds_cpu_attn_fwd,
    .attn_bwd = ds_cpu_attn_bwd,
    .swiglu_fwd = ds_cpu_swiglu_fwd,
    .swiglu_bwd = ds_cpu_swiglu_bwd,
    .embed_fwd = ds_cpu_embed_fwd,
    .embed_bwd = ds_cpu_embed_bwd,
    .logsoftmax_fwd = ds_cpu_logsoftmax_fwd,
    .logsoftmax_bwd = ds_cpu_logsoftmax_bwd,
    .router_scores = ds_cpu_router_scores,
    .moe_topk = ds_cpu_moe_topk,
    .moe_topk_bwd = ds_cpu_moe_topk_bwd,
    .moe_balance = ds_cpu_moe_balance,
    .moe_bucket = ds_cpu_moe_bucket,
    .moe_gather = ds_cpu_moe_gather,
    .moe_gather_bwd = ds_cpu_moe_gather_bwd,
    .moe_combine = ds_cpu_moe_combine,
    .moe_scale_rows = ds_cpu_moe_scale_rows,
    .moe_combine_bwd = ds_cpu_moe_combine_bwd,
    .moe_ffn_fwd = ds_cpu_moe_ffn_fwd,
    .moe_ffn_bwd = ds_cpu_moe_ffn_bwd,
    .mla_kv_expand = ds_cpu_mla_kv_expand,
    .mla_kv_expand_bwd = ds_cpu_mla_kv_expand_bwd,
    .mla_decode = ds_mla_decode,
};

const ds_ops *ds_ops_cpu(void) { return &cpu_ops; }
