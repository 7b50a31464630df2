/* blaslt.cu — see blaslt.h. */
#include "cuda_check.cuh"

#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "blaslt.h"
#include "cuda_rt.h"
}

#define DS_LT_TRY(call)                                                                                \
    do {                                                                                               \
        cublasStatus_t ds_lt_s_ = (call);                                                              \
        if (ds_lt_s_ != CUBLAS_STATUS_SUCCESS)                                                         \
            return ds_fail(DS_ERR, "cublasLt: %s: %s (%d): %s:%d", #call,                              \
                           cublasLtGetStatusString(ds_lt_s_), (int)ds_lt_s_, __FILE__, __LINE__);       \
    } while (0)

/* Everything that decides the descriptors and the algorithm; pointers only through their alignment. The
 * sizes enter rounded up to powers of two: MoE experts see a different row count on every call, and one
 * heuristic query per bucket (checked against the exact shape with cublasLtMatmulAlgoCheck) replaces one
 * per shape, which cost ~0.1 ms each. */
struct lt_key {
    int m, n, k, lda, ldb, ldc, a_trans, b_trans;
    int a_type, b_type, c_type, a_mode, b_mode, beta_nonzero, batch, tf32;
    long long sa, sb, sc;
    int align_a, align_b, align_c;
};

struct lt_entry {
    lt_key key;
    int used;
    int em, en, ek; /* the exact sizes the layouts currently describe */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    size_t ws_needed;
    char text[160];
};

#define LT_CACHE 128

struct ds_blaslt {
    cublasLtHandle_t lt;
    cudaStream_t stream;
    void *ws;
    size_t ws_bytes;
    lt_entry cache[LT_CACHE];
    int next_victim;
};

static cudaDataType_t lt_type(ds_dtype t) {
    switch (t) {
    case DS_F32: return CUDA_R_32F;
    case DS_BF16: return CUDA_R_16BF;
    case DS_F16: return CUDA_R_16F;
    case DS_F8_E4M3: return CUDA_R_8F_E4M3;
    case DS_F8_E5M2: return CUDA_R_8F_E5M2;
    default: return (cudaDataType_t)-1;
    }
}

static int ptr_align(const void *p) {
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 1 && (u % (uintptr_t)a)) a >>= 1;
    return a;
}

static void entry_release(lt_entry *e) {
    if (!e->used) return;
    cublasLtMatrixLayoutDestroy(e->la);
    cublasLtMatrixLayoutDestroy(e->lb);
    cublasLtMatrixLayoutDestroy(e->lc);
    cublasLtMatmulDescDestroy(e->desc);
    e->used = 0;
}

extern "C" int ds_blaslt_create(ds_blaslt **out, void *stream, size_t workspace_bytes) {
    *out = NULL;
    ds_blaslt *h = (ds_blaslt *)calloc(1, sizeof *h);
    if (!h) return ds_fail(DS_ERR, "out of memory: cublasLt handle");
    h->stream = (cudaStream_t)stream;
    h->ws_bytes = workspace_bytes ? workspace_bytes : (size_t)32 << 20;
    cublasStatus_t s = cublasLtCreate(&h->lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        free(h);
        return ds_fail(DS_ERR, "cublasLt: create: %s", cublasLtGetStatusString(s));
    }
    if (ds_cuda_alloc(&h->ws, h->ws_bytes)) {
        cublasLtDestroy(h->lt);
        free(h);
        return ds_fail_ctx(DS_ERR, "cublasLt workspace");
    }
    *out = h;
    return DS_OK;
}

extern "C" void ds_blaslt_free(ds_blaslt *h) {
    if (!h) return;
    for (int i = 0; i < LT_CACHE; i++) entry_release(&h->cache[i]);
    ds_cuda_free(h->ws);
    cublasLtDestroy(h->lt);
    free(h);
}

extern "C" int ds_blaslt_set_stream(ds_blaslt *h, void *stream) {
    h->stream = (cudaStream_t)stream;
    return DS_OK;
}

/* Shape and type rules, checked before cuBLASLt sees the problem so the message says what is wrong. */
static int validate(const ds_gemm *g) {
    if (g->m <= 0 || g->n <= 0 || g->k <= 0)
        return ds_fail(DS_EUSAGE, "gemm: bad shape m=%d n=%d k=%d", g->m, g->n, g->k);
    if (!g->a || !g->b || !g->c) return ds_fail(DS_EUSAGE, "gemm: NULL operand");
    int lda_min = g->a_trans ? g->m : g->k, ldb_min = g->b_trans ? g->k : g->n;
    if (g->lda < lda_min || g->ldb < ldb_min || g->ldc < g->n)
        return ds_fail(DS_EUSAGE, "gemm: leading dimension too small (lda %d ldb %d ldc %d for m=%d n=%d k=%d)",
                       g->lda, g->ldb, g->ldc, g->m, g->n, g->k);
    if (lt_type(g->a_type) == (cudaDataType_t)-1 || lt_type(g->b_type) == (cudaDataType_t)-1 ||
        (g->c_type != DS_F32 && g->c_type != DS_BF16 && g->c_type != DS_F16))
        return ds_fail(DS_EUSAGE, "gemm: unsupported types %s x %s -> %s", ds_dtype_name(g->a_type),
                       ds_dtype_name(g->b_type), ds_dtype_name(g->c_type));
    int fp8 = g->a_type == DS_F8_E4M3 || g->a_type == DS_F8_E5M2;
    if (!fp8) {
        if (g->a_type != g->b_type)
            return ds_fail(DS_EUSAGE, "gemm: mixed input types %s x %s", ds_dtype_name(g->a_type),
                           ds_dtype_name(g->b_type));
        if (g->a_scale_mode || g->b_scale_mode) return ds_fail(DS_EUSAGE, "gemm: block scales need FP8 operands");
        if (g->a_type == DS_F32 && g->c_type != DS_F32)
            return ds_fail(DS_EUSAGE, "gemm: f32 inputs need an f32 output (cuBLASLt has no f32 -> %s kernel)",
                           ds_dtype_name(g->c_type));
        return DS_OK;
    }
    if (g->a_type != DS_F8_E4M3 || g->b_type != DS_F8_E4M3)
        return ds_fail(DS_EUSAGE, "gemm: FP8 products take E4M3 operands");
    if (g->a_trans || !g->b_trans)
        return ds_fail(DS_EUSAGE, "gemm: FP8 needs both operands k-contiguous (a_trans=0, b_trans=1)");
    if (g->k % 128 || g->m % 4 || g->n % 4)
        return ds_fail(DS_EUSAGE, "gemm: FP8 needs k %% 128 == 0 and m, n multiples of 4 (m=%d n=%d k=%d)",
                       g->m, g->n, g->k);
    int am = g->a_scale_mode, bm = g->b_scale_mode;
    if (am == DS_SCALE_NONE || bm == DS_SCALE_NONE || (am == DS_SCALE_128X128 && bm == DS_SCALE_128X128))
        return ds_fail(DS_EUSAGE, "gemm: FP8 scale modes must be 1x128/128x128, 1x128/1x128 or 128x128/1x128");
    if (!g->a_scale || !g->b_scale) return ds_fail(DS_EUSAGE, "gemm: FP8 without scale tensors");
    if (g->c_type == DS_F16 || (g->beta != 0 && g->c_type != DS_F32 && g->c_type != DS_BF16))
        return ds_fail(DS_EUSAGE, "gemm: FP8 output must be bf16 or f32");
    return DS_OK;
}

static int size_bucket(int x) {
    int b = 64;
    while (b < x && b < (1 << 30)) b <<= 1;
    return b;
}

static lt_key make_key(const ds_gemm *g) {
    lt_key k;
    memset(&k, 0, sizeof k);
    k.m = size_bucket(g->m); k.n = size_bucket(g->n); k.k = size_bucket(g->k);
    k.lda = g->lda; k.ldb = g->ldb; k.ldc = g->ldc;
    k.a_trans = !!g->a_trans; k.b_trans = !!g->b_trans;
    k.a_type = g->a_type; k.b_type = g->b_type; k.c_type = g->c_type;
    k.a_mode = g->a_scale_mode; k.b_mode = g->b_scale_mode;
    k.beta_nonzero = g->beta != 0;
    k.tf32 = g->tf32 && g->a_type == DS_F32;
    k.batch = g->batch > 1 ? g->batch : 1;
    if (k.batch > 1) { k.sa = g->stride_a; k.sb = g->stride_b; k.sc = g->stride_c; }
    k.align_a = ptr_align(g->a); k.align_b = ptr_align(g->b); k.align_c = ptr_align(g->c);
    return k;
}

static int set_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int rows, int cols, int ld, int batch,
                      long long stride) {
    DS_LT_TRY(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, (int64_t)ld));
    if (batch > 1) {
        int32_t b = batch;
        int64_t s = stride;
        DS_LT_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof b));
        DS_LT_TRY(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &s, sizeof s));
    }
    return DS_OK;
}

/* cuBLASLt A = our B: stored [k,n] (N: rows n, cols k) or [n,k] (T: rows k, cols n); cuBLASLt B = our A */
static int make_layouts(lt_entry *e, const ds_gemm *g) {
    int batch = e->key.batch;
    DS_TRY(set_layout(&e->la, lt_type(g->b_type), g->b_trans ? g->k : g->n, g->b_trans ? g->n : g->k, g->ldb,
                      batch, g->stride_b));
    DS_TRY(set_layout(&e->lb, lt_type(g->a_type), g->a_trans ? g->m : g->k, g->a_trans ? g->k : g->m, g->lda,
                      batch, g->stride_a));
    DS_TRY(set_layout(&e->lc, lt_type(g->c_type), g->n, g->m, g->ldc, batch, g->stride_c));
    e->em = g->m; e->en = g->n; e->ek = g->k;
    return DS_OK;
}

static int heuristic(ds_blaslt *h, lt_entry *e, cublasLtMatmulHeuristicResult_t *res, int want, int *found) {
    cublasLtMatmulPreference_t pref;
    DS_LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = h->ws_bytes;
    uint32_t al_a = (uint32_t)e->key.align_b, al_b = (uint32_t)e->key.align_a, al_c = (uint32_t)e->key.align_c;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c);
    *found = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h->lt, e->desc, e->la, e->lb, e->lc, e->lc, pref, want, res,
                                                       found);
    cublasLtMatmulPreferenceDestroy(pref);
    return st == CUBLAS_STATUS_SUCCESS ? DS_OK : DS_ERR;
}

/* Point a cached entry (same bucket) at g's exact sizes: new layouts, and the cached algorithm if it
 * supports them, else a fresh heuristic choice. */
static int retarget(ds_blaslt *h, lt_entry *e, const ds_gemm *g) {
    cublasLtMatrixLayoutDestroy(e->la);
    cublasLtMatrixLayoutDestroy(e->lb);
    cublasLtMatrixLayoutDestroy(e->lc);
    e->la = e->lb = e->lc = NULL;
    if (make_layouts(e, g)) {
        entry_release(e);
        return DS_ERR;
    }
    cublasLtMatmulHeuristicResult_t chk;
    if (cublasLtMatmulAlgoCheck(h->lt, e->desc, e->la, e->lb, e->lc, e->lc, &e->algo, &chk) == CUBLAS_STATUS_SUCCESS &&
        chk.workspaceSize <= h->ws_bytes)
        return DS_OK;
    int found = 0;
    if (heuristic(h, e, &chk, 1, &found) || !found) {
        entry_release(e);
        return ds_fail(DS_ERR, "cublasLt: no algorithm for m=%d n=%d k=%d", g->m, g->n, g->k);
    }
    e->algo = chk.algo;
    e->ws_needed = chk.workspaceSize;
    return DS_OK;
}

static void describe(lt_entry *e, const char *how) {
    int id = 0, tile = 0, stages = 0;
    size_t w;
    cublasLtMatmulAlgoConfigGetAttribute(&e->algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&e->algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
    cublasLtMatmulAlgoConfigGetAttribute(&e->algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
    snprintf(e->text, sizeof e->text, "algo %d tile %d stages %d ws %zu (%s)", id, tile, stages, e->ws_needed, how);
}

/* Descriptors for the column-major product C^T[n,m] = op(B)^T op(A)^T: cuBLASLt's "A" is our B and its
 * "B" is our A. Our b_trans = 1 (B stored [n,k]) is its op T; our a_trans = 0 (A stored [m,k]) its op N. */
static int build_entry(ds_blaslt *h, const ds_gemm *g, lt_entry *e) {
    memset(e, 0, sizeof *e);
    e->key = make_key(g);
    int fp8 = g->a_type == DS_F8_E4M3;
    cublasComputeType_t ct = e->key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    DS_LT_TRY(cublasLtMatmulDescCreate(&e->desc, ct, CUDA_R_32F));
    cublasOperation_t opA = g->b_trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opB = g->a_trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
    DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
    if (fp8) {
        int32_t lt_amode = g->b_scale_mode == DS_SCALE_128X128 ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                                                               : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        int32_t lt_bmode = g->a_scale_mode == DS_SCALE_128X128 ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                                                               : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &lt_amode, sizeof lt_amode));
        DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &lt_bmode, sizeof lt_bmode));
        /* placeholders so the heuristic sees a complete block-scaled problem; set per call */
        const void *sa = g->b_scale, *sb = g->a_scale;
        DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa));
        DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb));
    }
    DS_TRY(make_layouts(e, g));

    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    int hs = heuristic(h, e, &res, 1, &found);
    e->used = 1; /* from here on entry_release must free the descriptors */
    if (hs || found == 0) {
        entry_release(e);
        return ds_fail(DS_ERR, "cublasLt: no algorithm for %s x %s -> %s, m=%d n=%d k=%d%s: %s",
                       ds_dtype_name(g->a_type), ds_dtype_name(g->b_type), ds_dtype_name(g->c_type), g->m, g->n,
                       g->k, fp8 ? " (block-scaled FP8)" : "",
                       hs ? "heuristic query failed" : "heuristic returned none");
    }
    e->algo = res.algo;
    e->ws_needed = res.workspaceSize;
    describe(e, "heuristic");
    return DS_OK;
}

static int lookup(ds_blaslt *h, const ds_gemm *g, lt_entry **out) {
    lt_key k = make_key(g);
    for (int i = 0; i < LT_CACHE; i++)
        if (h->cache[i].used && !memcmp(&h->cache[i].key, &k, sizeof k)) {
            lt_entry *e = &h->cache[i];
            if (e->em != g->m || e->en != g->n || e->ek != g->k) DS_TRY(retarget(h, e, g));
            *out = e;
            return DS_OK;
        }
    int slot = -1;
    for (int i = 0; i < LT_CACHE && slot < 0; i++)
        if (!h->cache[i].used) slot = i;
    if (slot < 0) {
        slot = h->next_victim;
        h->next_victim = (h->next_victim + 1) % LT_CACHE;
        entry_release(&h->cache[slot]);
    }
    DS_TRY(build_entry(h, g, &h->cache[slot]));
    *out = &h->cache[slot];
    return DS_OK;
}

static int run_entry(ds_blaslt *h, const ds_gemm *g, lt_entry *e, const cublasLtMatmulAlgo_t *algo) {
    if (g->a_type == DS_F8_E4M3) {
        const void *sa = g->b_scale, *sb = g->a_scale;
        DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa));
        DS_LT_TRY(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb));
    }
    float alpha = g->alpha, beta = g->beta;
    DS_LT_TRY(cublasLtMatmul(h->lt, e->desc, &alpha, g->b, e->la, g->a, e->lb, &beta, g->c, e->lc, g->c, e->lc,
                             algo, h->ws, h->ws_bytes, h->stream));
    return DS_OK;
}

extern "C" int ds_blaslt_gemm(ds_blaslt *h, const ds_gemm *g) {
    DS_TRY(validate(g));
    lt_entry *e;
    DS_TRY(lookup(h, g, &e));
    return run_entry(h, g, e, &e->algo);
}

extern "C" int ds_blaslt_autotune(ds_blaslt *h, const ds_gemm *g, int max_algos, int reps) {
    DS_TRY(validate(g));
    if (g->beta != 0) return ds_fail(DS_EUSAGE, "gemm autotune: beta must be 0");
    lt_entry *e;
    DS_TRY(lookup(h, g, &e));
    if (max_algos < 1) max_algos = 1;
    if (max_algos > 16) max_algos = 16;
    cublasLtMatmulHeuristicResult_t res[16];
    int found = 0;
    cublasLtMatmulPreference_t pref;
    DS_LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = h->ws_bytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(h->lt, e->desc, e->la, e->lb, e->lc, e->lc, pref, max_algos,
                                                      res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS || found == 0) return DS_OK; /* keep the default choice */
    ds_cuda_timer *t;
    DS_TRY(ds_cuda_timer_create(&t));
    double best = 1e30;
    int best_i = -1;
    for (int i = 0; i < found; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        if (run_entry(h, g, e, &res[i].algo)) { ds_err_clear(); continue; } /* warm-up; skip failing ones */
        double ms = 0;
        int rc = ds_cuda_timer_start(t, h->stream);
        for (int r = 0; r < reps && !rc; r++) rc = run_entry(h, g, e, &res[i].algo);
        if (!rc) rc = ds_cuda_timer_stop(t, h->stream, &ms);
        if (rc) { ds_err_clear(); continue; }
        if (ms < best) { best = ms; best_i = i; }
    }
    ds_cuda_timer_free(t);
    if (best_i >= 0) {
        e->algo = res[best_i].algo;
        e->ws_needed = res[best_i].workspaceSize;
        char how[32];
        snprintf(how, sizeof how, "tuned: %d of %d", best_i + 1, found);
        describe(e, how);
    }
    return run_entry(h, g, e, &e->algo);
}

extern "C" const char *ds_blaslt_algo_desc(ds_blaslt *h, const ds_gemm *g) {
    lt_key k = make_key(g);
    for (int i = 0; i < LT_CACHE; i++)
        if (h->cache[i].used && !memcmp(&h->cache[i].key, &k, sizeof k)) return h->cache[i].text;
    return "";
}
