#include "fp8/resident.h"

#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/err.h"
#include "ops/gemm_small.h"
#include "ops/ops.h"

#ifdef DS_HAVE_CUDA
#include "fp8_resident_cuda.h"
#endif

typedef struct {
    const float *base;
    int64_t rows, cols, br, bc;
    /* bf16 entry (ds_bf16_resident_add): the weight rounded to bf16, borrowed or owned (then freed with it) */
    const uint16_t *h;
    uint16_t *h_own;
    const uint8_t *q; /* host codes (borrowed); NULL for a device or bf16 entry */
    float *scale;     /* host copy of the scales; NULL for a device entry */
    /* device entry (ds_fp8_resident_add_device): codes and padded scales in the caller's device memory */
    const uint8_t *dq;
    const float *dscale;
    int dld;
} entry;

static entry *g_tab; /* sorted by base */
static size_t g_n, g_cap;
static ds_ops g_base, g_base_dev; /* the CPU table's base, the device table's */
static ds_ops g_few;               /* the few-row table's base: ops/gemm_small.h ds_ops_cpu_small_m */
static int g_status;

int ds_fp8_resident_status(void) {
    int rc = g_status;
    g_status = DS_OK;
    return rc;
}

static void fail_once(int rc) {
    if (!g_status) g_status = rc;
}

/* Insert e (its scale, when set, owned by the table from here on, freed on failure). */
static int insert(entry e) {
    if (g_n == g_cap) {
        size_t cap = g_cap ? 2 * g_cap : 256;
        entry *t = realloc(g_tab, cap * sizeof *t);
        if (!t) {
            free(e.scale), free(e.h_own);
            return ds_fail(DS_ERR, "out of memory: fp8 resident table");
        }
        g_tab = t;
        g_cap = cap;
    }
    size_t i = g_n; /* keep the table sorted (loads add in address order: this is an append) */
    while (i > 0 && g_tab[i - 1].base > e.base) i--;
    if ((i > 0 && g_tab[i - 1].base + g_tab[i - 1].rows * g_tab[i - 1].cols > e.base) ||
        (i < g_n && e.base + e.rows * e.cols > g_tab[i].base)) {
        free(e.scale), free(e.h_own);
        return ds_fail(DS_ERR, "resident weight: its range overlaps another");
    }
    memmove(g_tab + i + 1, g_tab + i, (g_n - i) * sizeof *g_tab);
    g_tab[i] = e;
    g_n++;
    return DS_OK;
}

static int check_shape(int64_t rows, int64_t cols, int64_t br, int64_t bc) {
    if (rows <= 0 || cols <= 0 || br <= 0 || bc <= 0)
        return ds_fail(DS_ERR, "fp8 resident weight: bad shape [%lld, %lld] or block %lldx%lld", (long long)rows,
                       (long long)cols, (long long)br, (long long)bc);
    return DS_OK;
}

int ds_fp8_resident_add(const float *base, int64_t rows, int64_t cols, const uint8_t *q, const float *scale,
                        int64_t br, int64_t bc) {
    DS_TRY(check_shape(rows, cols, br, bc));
    const size_t ns = (size_t)((rows + br - 1) / br) * (size_t)((cols + bc - 1) / bc);
    float *s = malloc(ns * sizeof *s);
    if (!s) return ds_fail(DS_ERR, "out of memory: fp8 resident scales");
    memcpy(s, scale, ns * sizeof *s);
    return insert((entry){.base = base, .rows = rows, .cols = cols, .br = br, .bc = bc, .q = q, .scale = s});
}

int ds_bf16_resident_add(const float *base, int64_t rows, int64_t cols, const uint16_t *h, int owned) {
    if (rows <= 0 || cols <= 0) {
        if (owned) free((void *)h);
        return ds_fail(DS_ERR, "bf16 resident weight: bad shape [%lld, %lld]", (long long)rows, (long long)cols);
    }
    return insert((entry){.base = base, .rows = rows, .cols = cols, .br = 1, .bc = 1, .h = h,
                          .h_own = owned ? (uint16_t *)h : NULL});
}

int ds_bf16_resident_add_f32(const float *base, int64_t rows, int64_t cols, const float *w) {
    const size_t n = (size_t)rows * (size_t)cols;
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) return ds_fail(DS_ERR, "out of memory: bf16 weight [%lld, %lld]", (long long)rows, (long long)cols);
    for (size_t i = 0; i < n; i++) h[i] = ds_f32_to_bf16(w[i]);
    return ds_bf16_resident_add(base, rows, cols, h, 1);
}

/* ---- device entries ---------------------------------------------------------------------------------- */

enum { DEV_ALIGN = 256 }; /* each piece of a device entry starts 256-byte aligned (cuBLASLt wants 16) */

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
static int64_t scale_ld(int64_t cols) { return ((cols / 128) + 3) / 4 * 4; } /* kernels/blaslt.h ds_blockscale_ld */

int ds_fp8_resident_device_ok(int64_t rows, int64_t cols, int64_t br, int64_t bc) {
    return rows > 0 && cols > 0 && br == 128 && bc == 128 && cols % 128 == 0 && rows % 4 == 0 && cols <= (1 << 30) &&
           rows <= (1 << 30);
}

size_t ds_fp8_resident_device_bytes(int64_t rows, int64_t cols) {
    return round_up((size_t)rows * (size_t)cols, DEV_ALIGN) +
           round_up(sizeof(float) * (size_t)((rows + 127) / 128) * (size_t)scale_ld(cols), DEV_ALIGN);
}

int ds_fp8_resident_add_device(const float *base, int64_t rows, int64_t cols, const uint8_t *q, const float *scale,
                               int64_t br, int64_t bc, void *dev, const ds_ops *ops) {
    DS_TRY(check_shape(rows, cols, br, bc));
    if (!ds_fp8_resident_device_ok(rows, cols, br, bc))
        return ds_fail(DS_ERR, "fp8 resident weight [%lld, %lld] in %lldx%lld blocks: the GPU's block-scaled GEMM takes "
                       "128x128 blocks, columns a multiple of 128 and rows a multiple of 4", (long long)rows,
                       (long long)cols, (long long)br, (long long)bc);
    if ((uintptr_t)dev % DEV_ALIGN) return ds_fail(DS_ERR, "fp8 resident weight: device memory not 256-byte aligned");
    const int64_t rb = (rows + 127) / 128, cb = cols / 128, ld = scale_ld(cols);
    float *s = calloc((size_t)(rb * ld), sizeof *s); /* the padding columns stay 0 */
    if (!s) return ds_fail(DS_ERR, "out of memory: fp8 resident scales");
    for (int64_t r = 0; r < rb; r++) memcpy(s + r * ld, scale + r * cb, sizeof(float) * (size_t)cb);
    uint8_t *dq = dev;
    float *ds = (float *)(dq + round_up((size_t)rows * (size_t)cols, DEV_ALIGN));
    ops->copy(dq, q, (size_t)rows * (size_t)cols, DS_COPY_H2D); /* straight from the checkpoint's mapping */
    ops->copy(ds, s, sizeof(float) * (size_t)(rb * ld), DS_COPY_H2D);
    free(s);
    int rc = ops->status ? ops->status() : DS_OK;
    if (rc) return ds_fail_ctx(rc, "uploading an fp8 resident weight [%lld, %lld]", (long long)rows, (long long)cols);
    return insert((entry){.base = base, .rows = rows, .cols = cols, .br = br, .bc = bc, .dq = dq, .dscale = ds,
                          .dld = (int)ld});
}

void ds_fp8_resident_remove(const float *lo, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < g_n; i++) {
        if (g_tab[i].base >= lo && g_tab[i].base < lo + n) free(g_tab[i].scale), free(g_tab[i].h_own);
        else g_tab[k++] = g_tab[i];
    }
    g_n = k;
    if (!g_n) {
        free(g_tab);
        g_tab = NULL;
        g_cap = 0;
    }
}

size_t ds_fp8_resident_bytes(const float *lo, size_t n) {
    size_t b = 0;
    for (size_t i = 0; i < g_n; i++)
        if (g_tab[i].base >= lo && g_tab[i].base < lo + n) {
            const entry *e = &g_tab[i];
            b += e->h    ? 2 * (size_t)(e->rows * e->cols)
                 : e->dq ? ds_fp8_resident_device_bytes(e->rows, e->cols)
                         : (size_t)(e->rows * e->cols) + sizeof(float) * (size_t)((e->rows + e->br - 1) / e->br) *
                                                             (size_t)((e->cols + e->bc - 1) / e->bc);
        }
    return b;
}

/* The entry whose range holds p, or NULL. */
static const entry *find(const float *p) {
    size_t lo = 0, hi = g_n;
    while (lo < hi) { /* first entry with base > p */
        size_t mid = (lo + hi) / 2;
        if (g_tab[mid].base <= p) lo = mid + 1;
        else hi = mid;
    }
    if (!lo) return NULL;
    const entry *e = &g_tab[lo - 1];
    return p < e->base + e->rows * e->cols ? e : NULL;
}

static _Thread_local struct {
    float *p;
    size_t cap;
} scratch;

static float *scratch_get(size_t floats) {
    if (floats > scratch.cap) {
        free(scratch.p);
        scratch.p = NULL;
        scratch.cap = 0;
        void *p = NULL;
        if (posix_memalign(&p, 64, floats * sizeof(float))) return NULL;
        scratch.p = p;
        scratch.cap = floats;
    }
    return scratch.p;
}

/* E4M3 code -> float by bit arithmetic rather than ds_e4m3_table: the same values (checked code by code in
 * test_fp8_resident), but the loop below vectorizes, where table loads run one element at a time and made
 * the dequantization cost several times the product itself. */
static inline float e4m3_bits(uint32_t b) {
    const uint32_t sign = (b & 0x80u) << 24, em = b & 0x7Fu;
    const uint32_t normal = sign | ((em + (120u << 3)) << 20); /* exponent e + 127 - 7, mantissa m << 20 */
    const float subf = (float)(int32_t)em * 0x1p-9f;          /* e = 0: m * 2^-9 */
    uint32_t sub;
    memcpy(&sub, &subf, 4);
    const uint32_t is_sub = 0u - (uint32_t)(em < 8), is_nan = 0u - (uint32_t)(em == 0x7Fu); /* masks: no branches */
    uint32_t bits = (normal & ~is_sub) | ((sub | sign) & is_sub);
    bits = (bits & ~is_nan) | ((0x7FC00000u | sign) & is_nan);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float ds_fp8_resident_decode(uint8_t code) { return e4m3_bits(code); }

enum { PANEL_BYTES = 1 << 20 }; /* the dequantized panel: stays in L2 while the product reads it (4 MiB was slower) */

/* The tables: the host's (base: what ds_fp8_resident_ops was given), the host's for decode steps (few rows
 * of bf16 weights through ops/gemm_small.h's kernels, the rest as ds_ops_cpu_small_m does it), the GPU's. */
enum { HOST = 0, FEW = 1, DEV = 2 };

static const ds_ops *base_of(int v) { return v == DEV ? &g_base_dev : v == FEW ? &g_few : &g_base; }

/* y[M, N] = alpha x[M, K] W[r0 .. r0+N)^T + beta y, W FP8-resident in e. */
static void resident_gemm(const ds_ops *base, const entry *e, int64_t r0, int M, int N, int K, float alpha,
                          const float *A, int lda, float beta, float *C, int ldc) {
    int64_t P = PANEL_BYTES / ((int64_t)K * 4) / e->br * e->br;
    if (P < e->br) P = e->br;
    if (P > N) P = N;
    float *w = scratch_get((size_t)P * (size_t)K);
    if (!w) {
        fail_once(ds_fail(DS_ERR, "out of memory: fp8 resident panel of %lld x %d", (long long)P, K));
        return;
    }
    const int64_t nbc = (e->cols + e->bc - 1) / e->bc;
    for (int64_t n0 = 0; n0 < N; n0 += P) {
        const int64_t np = N - n0 < P ? N - n0 : P;
        /* codes x block scale: the floats ds_fp8_dequantize writes for these rows */
#pragma omp parallel for schedule(static) if (np * K >= (1 << 16))
        for (int64_t i = 0; i < np; i++) {
            const int64_t r = r0 + n0 + i;
            const float *sr = e->scale + (r / e->br) * nbc;
            const uint8_t *qr = e->q + r * e->cols;
            float *wr = w + i * K;
            for (int64_t c0 = 0; c0 < K; c0 += e->bc) {
                const int64_t c1 = c0 + e->bc < K ? c0 + e->bc : K;
                const float s = sr[c0 / e->bc];
                for (int64_t c = c0; c < c1; c++) wr[c] = e4m3_bits(qr[c]) * s;
            }
        }
        base->gemm(0, 1, M, (int)np, K, alpha, A, lda, w, K, beta, C + n0, ldc);
    }
}

static inline float bf16_at(const uint16_t *h, int64_t i) { return ds_bf16_to_f32(h[i]); }

/* y = alpha x op(B) + beta y with B a block of a bf16 entry (row stride e->cols), as the base table (HOST:
 * ds_ops_cpu) or the decode one (FEW: ds_ops_cpu_small_m) computes it over float32: ops/gemm_small.h. */
static void bf16_gemm(int v, const entry *e, const uint16_t *B, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, float beta, float *C, int ldc) {
    if (ds_gemm_bf16w(v == FEW, tb, M, N, K, alpha, A, lda, B, (int)e->cols, beta, C, ldc))
        fail_once(ds_fail(DS_ERR, "out of memory: widening a bf16 weight [%lld, %lld]", (long long)e->rows,
                          (long long)e->cols));
}

/* The resident entry behind B (NULL: an ordinary operand), checked: an FP8 entry only as a forward Linear
 * product's weight (y = x W^T over whole rows), a bf16 one as any block of itself read in place (the absorbed
 * attention multiplies by W_UK of kv_b untransposed). *off: B's offset in the entry, in elements. */
static const entry *resident_b(const float *B, int tb, int N, int K, int ldb, int64_t *off) {
    const entry *e = find(B);
    if (!e) return NULL;
    *off = B - e->base;
    const int64_t r = *off / e->cols, c = *off % e->cols;
    const int ok = e->h ? ldb == e->cols && (tb ? c + K <= e->cols && r + N <= e->rows : c + N <= e->cols && r + K <= e->rows)
                        : tb && K == e->cols && ldb == K && !c && r + N <= e->rows;
    if (!ok)
        fail_once(ds_fail(DS_ERR, "%s resident weight [%lld, %lld] used as %s operand [%d, %d] (ld %d): %s",
                          e->h ? "bf16" : "fp8", (long long)e->rows, (long long)e->cols, tb ? "a" : "a transposed", N,
                          K, ldb, e->h ? "not a block of it" : "only forward Linear products read resident weights"));
    return ok ? e : NULL;
}

/* The product on entry e: FP8 on the host (codes dequantized by panels) or on the GPU (cuBLASLt), bf16 on
 * the host. */
static void resident_product(int v, const entry *e, int64_t off, int tb, int M, int N, int K, float alpha,
                             const float *A, int lda, float beta, float *C, int ldc) {
    const int dev = v == DEV;
    if (dev != (e->dq != NULL)) {
        fail_once(ds_fail(DS_ERR, "%s resident weight [%lld, %lld] held on the %s, multiplied on the %s",
                          e->h ? "bf16" : "fp8", (long long)e->rows, (long long)e->cols, e->dq ? "GPU" : "host",
                          dev ? "GPU" : "host"));
        return;
    }
    if (e->h) {
        bf16_gemm(v, e, e->h + off, tb, M, N, K, alpha, A, lda, beta, C, ldc);
        return;
    }
    const int64_t r0 = off / e->cols;
    if (!dev) {
        resident_gemm(base_of(v), e, r0, M, N, K, alpha, A, lda, beta, C, ldc);
        return;
    }
#ifdef DS_HAVE_CUDA
    const ds_cuda_fp8_weight w = {e->dq, e->dscale, e->rows, e->cols, e->dld};
    if (ds_cuda_fp8_linear(&w, r0, M, N, alpha, A, lda, beta, C, ldc)) fail_once(DS_ERR);
#else
    fail_once(ds_fail(DS_ERR, "fp8 resident weight on the GPU: this build has no CUDA backend"));
#endif
}

static void gemm_on(int v, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                    int ldb, float beta, float *C, int ldc) {
    if (ta || !find(B)) {
        if (ta && find(B)) fail_once(ds_fail(DS_ERR, "resident weight used in a weight-gradient product"));
        base_of(v)->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int64_t off = 0;
    const entry *e = resident_b(B, tb, N, K, ldb, &off);
    if (e && M > 0 && N > 0 && !g_status) resident_product(v, e, off, tb, M, N, K, alpha, A, lda, beta, C, ldc);
}

static _Thread_local struct {
    const uint16_t **p;
    int cap;
} ptrs;

static void gemm_rows_on(int v, int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                         const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    if (ng <= 0) return;
    const entry *e0 = find(B);
    if (!e0) { /* experts are all resident or none: the first one tells */
        base_of(v)->gemm_rows(ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);
        return;
    }
    if (e0->h && v != DEV) { /* bf16 experts: the grouped product the base table would run, on their weights */
        if (ng > ptrs.cap) {
            const uint16_t **p = realloc(ptrs.p, sizeof *p * (size_t)ng);
            if (!p) {
                fail_once(ds_fail(DS_ERR, "out of memory: bf16 expert table"));
                return;
            }
            ptrs.p = p, ptrs.cap = ng;
        }
        for (int g = 0; g < ng; g++) {
            int64_t o = 0;
            const entry *e = off[g + 1] > off[g] ? resident_b(B + g * strideB, tb, N, K, ldb, &o) : NULL;
            if (off[g + 1] > off[g] && (!e || !e->h)) {
                if (e) fail_once(ds_fail(DS_ERR, "resident experts of mixed kinds"));
                return;
            }
            ptrs.p[g] = e ? e->h + o : NULL;
        }
        if (ds_gemm_rows_bf16w(v == FEW, ng, off, tb, N, K, alpha, A, lda, ptrs.p, ldb, beta, C, ldc))
            fail_once(ds_fail(DS_ERR, "out of memory: widening bf16 experts"));
        return;
    }
    for (int g = 0; g < ng; g++) { /* only the experts that have rows: the others' pages stay untouched */
        const int64_t a = off[g], b = off[g + 1];
        if (b > a)
            gemm_on(v, 0, tb, (int)(b - a), N, K, alpha, A + a * lda, lda, B + g * strideB, ldb, beta, C + a * ldc, ldc);
    }
}

/* Embedding rows of a bf16-resident table, widened to float32 (exact). */
static void embed_on(int v, float *x, const float *table, const int32_t *tok, int n, int d) {
    const entry *e = find(table);
    if (!e) {
        base_of(v)->embed_fwd(x, table, tok, n, d);
        return;
    }
    if (!e->h || table != e->base || e->cols != d) {
        fail_once(ds_fail(DS_ERR, "resident weight [%lld, %lld] read as an embedding table of width %d",
                          (long long)e->rows, (long long)e->cols, d));
        return;
    }
    for (int i = 0; i < n; i++) {
        const uint16_t *hr = e->h + (int64_t)tok[i] * e->cols;
        float *xr = x + (size_t)i * d;
        for (int c = 0; c < d; c++) xr[c] = bf16_at(hr, c);
    }
}

#define TABLE(name, v)                                                                                                 \
    static void gemm_##name(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, \
                            int ldb, float beta, float *C, int ldc) {                                                  \
        gemm_on(v, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);                                              \
    }                                                                                                                  \
    static void gemm_rows_##name(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A,        \
                                 int lda, const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {    \
        gemm_rows_on(v, ng, off, tb, N, K, alpha, A, lda, B, strideB, ldb, beta, C, ldc);                              \
    }                                                                                                                  \
    static void embed_##name(float *x, const float *table, const int32_t *tok, int n, int d) {                         \
        embed_on(v, x, table, tok, n, d);                                                                              \
    }                                                                                                                  \
    __attribute__((unused)) static void table_##name(ds_ops *out, const ds_ops *base) {                                                    \
        *out = *base;                                                                                                  \
        out->gemm = gemm_##name;                                                                                       \
        out->gemm_rows = gemm_rows_##name;                                                                             \
        out->embed_fwd = embed_##name;                                                                                 \
        out->gemm_rows_dev = NULL, out->gemm_wgrad_dev = NULL; /* resident experts: through gemm_rows */              \
        out->moe_ffn_fwd = NULL, out->moe_ffn_bwd = NULL;      /* they read the expert weights themselves */          \
    }
TABLE(host, HOST)
TABLE(few, FEW)
TABLE(dev, DEV)

void ds_fp8_resident_ops(ds_ops *out, const ds_ops *base) {
    g_base = *base;
    table_host(out, base);
}

int ds_resident_ops_few_rows(ds_ops *out, const ds_ops *ops) {
    if (ops->gemm != gemm_host || g_base.gemm != ds_ops_cpu()->gemm) return 0;
    ds_ops_cpu_small_m(&g_few);
    table_few(out, &g_few);
    return 1;
}

int ds_fp8_resident_ops_device(ds_ops *out, const ds_ops *base) {
#ifdef DS_HAVE_CUDA
    if (strcmp(base->name, "cuda"))
        return ds_fail(DS_ERR, "fp8 resident weights on a device: the %s backend has no block-scaled FP8 GEMM", base->name);
    g_base_dev = *base;
    table_dev(out, base);
    return DS_OK;
#else
    *out = *base;
    return ds_fail(DS_ERR, "fp8 resident weights on %s: this build has no CUDA backend", base->name);
#endif
}
