/* ops_cuda.cu — the CUDA backend table (see ops_cuda.h): device memory, the sticky error, scratch
 * buffers, and the GEMM family through kernels/blaslt (fp32 tensors; bf16, TF32 or fp32 arithmetic). */
#include "ops_cuda_internal.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "blaslt.h"
#include "cuda_rt.h"
#include "mla_decode_cuda.h"
#include "ops_cuda.h"
}

static char g_err[512];
static int g_err_set;
static ds_blaslt *g_lt;
static ds_cuda_gemm_mode g_mode = DS_CUDA_GEMM_BF16;
static void *g_scr[SCR_COUNT];
static size_t g_scr_bytes[SCR_COUNT];

void ds_cuda_ops_note(const char *what, cudaError_t e) {
    if (g_err_set) return;
    snprintf(g_err, sizeof g_err, "cuda: %s: %s", what, e == cudaSuccess ? "failed" : cudaGetErrorString(e));
    g_err_set = 1;
}

static void note_lib(const char *what) {
    if (g_err_set) return;
    snprintf(g_err, sizeof g_err, "cuda: %s: %s", what, ds_errmsg());
    g_err_set = 1;
}

extern "C" int ds_ops_cuda_status(void) {
    if (!g_err_set) {
        cudaError_t e = cudaGetLastError();
        if (e == cudaSuccess) return DS_OK;
        ds_cuda_ops_note("asynchronous error", e);
    }
    g_err_set = 0;
    return ds_fail(DS_ERR, "%s", g_err);
}

void *ds_cuda_scratch(int slot, size_t bytes) {
    if (bytes <= g_scr_bytes[slot]) return g_scr[slot];
    if (g_scr[slot]) cudaFree(g_scr[slot]);
    g_scr[slot] = NULL;
    g_scr_bytes[slot] = 0;
    size_t want = bytes + bytes / 4; /* room to grow a little without another allocation */
    cudaError_t e = cudaMalloc(&g_scr[slot], want);
    if (e != cudaSuccess) {
        g_scr[slot] = NULL;
        ds_cuda_ops_note("scratch allocation", e);
        return NULL;
    }
    g_scr_bytes[slot] = want;
    return g_scr[slot];
}

/* ---- bf16 shadows of parameter buffers ------------------------------------------------------------------ */

/* A parameter buffer announced through params_changed gets a bf16 copy, rebuilt (one conversion pass) the
 * first time a bf16 GEMM reads from the buffer after a change, instead of converting the weight operand on
 * every call: a training step converts each weight once instead of once per GEMM that reads it (forward,
 * recomputation, backward), and inference converts once per load. Staleness: every write path into a
 * buffer marks it (copy, zero and copy2d of this table through ds_cuda_params_touched; the optimizer
 * through params_changed); freeing the buffer drops its shadow. */
struct shadow {
    const float *base;
    size_t n;
    __nv_bfloat16 *b16;
    size_t cap;
    bool dirty;
};
enum { MAX_SHADOWS = 8 };
static shadow g_sh[MAX_SHADOWS];

static shadow *shadow_holding(const void *p) {
    for (int i = 0; i < MAX_SHADOWS; i++) {
        shadow &s = g_sh[i];
        if (s.base && (const float *)p >= s.base && (const float *)p < s.base + s.n) return &s;
    }
    return NULL;
}

void ds_cuda_params_touched(const void *dst) {
    shadow *s = shadow_holding(dst);
    if (s) s->dirty = true;
}

static void cu_params_changed(const float *base, size_t n) {
    if (!base || !n) return;
    shadow *s = NULL;
    for (int i = 0; i < MAX_SHADOWS && !s; i++)
        if (g_sh[i].base == base) s = &g_sh[i];
    for (int i = 0; i < MAX_SHADOWS && !s; i++)
        if (!g_sh[i].base) s = &g_sh[i];
    if (!s) return; /* all slots taken: GEMMs on this buffer keep converting per call (correct, slower) */
    s->base = base;
    s->n = n;
    s->dirty = true;
}

__global__ void to_bf16_flat_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

/* The bf16 element of the shadow at p (a pointer into an announced buffer), the shadow rebuilt first when
 * stale; NULL when p lies in no announced buffer or the shadow cannot be allocated. */
static const __nv_bfloat16 *shadow_of(const float *p) {
    shadow *s = shadow_holding(p);
    if (!s) return NULL;
    if (s->cap < s->n) {
        if (s->b16) cudaFree(s->b16);
        s->b16 = NULL;
        s->cap = 0;
        if (cudaMalloc(&s->b16, s->n * sizeof(__nv_bfloat16)) != cudaSuccess) {
            cudaGetLastError();
            s->b16 = NULL;
            return NULL; /* no room for the copy: convert per call */
        }
        s->cap = s->n;
        s->dirty = true;
    }
    if (s->dirty) {
        to_bf16_flat_kernel<<<8192, 256>>>(s->b16, s->base, s->n);
        OPS_LAUNCHED("bf16 copy of the parameters");
        s->dirty = false;
    }
    return s->b16 + (p - s->base);
}

const __nv_bfloat16 *ds_cuda_shadow_of(const float *p) { return shadow_of(p); }

/* The optimizer's side (ops_cuda.h): the storage of the shadow that mirrors exactly [base, base + n), when
 * it exists and no other shadow overlaps that range (an update that writes it then leaves no stale mirror
 * of any element behind); anything else (part of a buffer, as under ZeRO-1, or no copy allocated yet) is
 * NULL, and the conversion pass stays. */
static shadow *shadow_exactly(const float *base, size_t n) {
    shadow *hit = NULL;
    for (int i = 0; i < MAX_SHADOWS; i++) {
        shadow &s = g_sh[i];
        if (!s.base) continue;
        if (s.base == base && s.n == n && s.b16 && s.cap >= s.n && !hit) hit = &s;
        else if (s.base < base + n && base < s.base + s.n) return NULL;
    }
    return hit;
}

extern "C" uint16_t *ds_ops_cuda_shadow_target(const float *base, size_t n) {
    shadow *s = base && n ? shadow_exactly(base, n) : NULL;
    return s ? (uint16_t *)s->b16 : NULL;
}

extern "C" void ds_ops_cuda_shadow_written(const float *base, size_t n) {
    shadow *s = base && n ? shadow_exactly(base, n) : NULL;
    if (s) s->dirty = false;
}

/* ---- memory ------------------------------------------------------------------------------------------ */

static void *cu_alloc(size_t bytes) {
    if (!bytes) return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return NULL; /* the caller reports out-of-memory with the size */
    }
    return p;
}

static void cu_free(void *p) {
    if (!p) return;
    for (int i = 0; i < MAX_SHADOWS; i++)
        if (g_sh[i].base == (const float *)p) {
            if (g_sh[i].b16) cudaFree(g_sh[i].b16);
            g_sh[i] = shadow{};
        }
    cudaFree(p);
}

static void cu_copy(void *dst, const void *src, size_t bytes, ds_copy_kind kind) {
    if (!bytes || dst == src) return;
    cudaMemcpyKind k = kind == DS_COPY_H2D ? cudaMemcpyHostToDevice
                     : kind == DS_COPY_D2H ? cudaMemcpyDeviceToHost
                                           : cudaMemcpyDeviceToDevice;
    if (kind != DS_COPY_D2H) ds_cuda_params_touched(dst);
    cudaError_t e = cudaMemcpy(dst, src, bytes, k);
    if (e != cudaSuccess) ds_cuda_ops_note("copy", e);
}

static void cu_zero(void *p, size_t bytes) {
    if (!bytes) return;
    ds_cuda_params_touched(p);
    cudaError_t e = cudaMemsetAsync(p, 0, bytes, 0);
    if (e != cudaSuccess) ds_cuda_ops_note("zero", e);
}

static void cu_sync(void) {
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) ds_cuda_ops_note("synchronize", e);
}

/* ---- GEMM ---------------------------------------------------------------------------------------------- */

/* dst[(g*rows + r)*cols + c] = bf16(src[g*stride + r*lds + c]): groups of [rows, cols] matrices packed */
__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, int groups, int rows, int cols, int lds,
                               size_t stride) {
    size_t n = (size_t)groups * rows * cols;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t c = i % cols, gr = i / cols, r = gr % rows, g = gr / rows;
        dst[i] = __float2bfloat16_rn(src[g * stride + r * lds + c]);
    }
}

__global__ void scale_rows_kernel(float *C, int M, int N, int ldc, float beta) {
    size_t n = (size_t)M * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float *c = C + (i / N) * ldc + i % N;
        *c = beta == 0.0f ? 0.0f : *c * beta; /* beta 0 clears NaN, as the contract says */
    }
}

static unsigned grid_for(size_t n) {
    size_t g = (n + 255) / 256;
    return (unsigned)(g > 8192 ? 8192 : (g ? g : 1));
}

/* Packed bf16 copies of `groups` [rows, cols] matrices (row stride lds, group stride `stride` floats) in
 * scratch slot `slot`; group g starts at g*rows*cols. */
static const __nv_bfloat16 *as_bf16(int slot, const float *src, int groups, int rows, int cols, int lds,
                                    size_t stride) {
    size_t n = (size_t)groups * rows * cols;
    __nv_bfloat16 *dst = (__nv_bfloat16 *)ds_cuda_scratch(slot, n * 2 + 2);
    if (!dst) return NULL;
    if (n) {
        to_bf16_kernel<<<grid_for(n), 256>>>(dst, src, groups, rows, cols, lds, stride);
        OPS_LAUNCHED("convert to bf16");
    }
    return dst;
}

const __nv_bfloat16 *ds_cuda_to_bf16(int slot, const float *src, int groups, int rows, int cols, int lds, size_t stride) {
    return as_bf16(slot, src, groups, rows, cols, lds, stride);
}

/* C = alpha op(A) op(B) + beta C with A, B already in the GEMM's input type (bf16: packed copies). */
static void gemm_run(int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda, const void *B, int ldb,
                     float beta, float *C, int ldc, ds_dtype in_type) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        if (beta != 1.0f) {
            scale_rows_kernel<<<grid_for((size_t)M * N), 256>>>(C, M, N, ldc, beta);
            OPS_LAUNCHED("gemm beta");
        }
        return;
    }
    ds_gemm g;
    memset(&g, 0, sizeof g);
    g.m = M; g.n = N; g.k = K;
    g.a = A; g.a_type = in_type; g.lda = lda; g.a_trans = ta;
    g.b = B; g.b_type = in_type; g.ldb = ldb; g.b_trans = tb;
    g.c = C; g.c_type = DS_F32; g.ldc = ldc;
    g.alpha = alpha; g.beta = beta;
    g.tf32 = in_type == DS_F32 && g_mode == DS_CUDA_GEMM_TF32;
    if (ds_blaslt_gemm(g_lt, &g)) note_lib("gemm");
}

void ds_cuda_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const __nv_bfloat16 *A, int lda,
                       const __nv_bfloat16 *B, int ldb, float beta, float *C, int ldc) {
    gemm_run(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, DS_BF16);
}

bool ds_cuda_gemm_bf16_batched(int ta, int tb, int M, int N, int K, float alpha, const __nv_bfloat16 *A, int lda,
                               long long sa, const __nv_bfloat16 *B, int ldb, long long sb, float beta, float *C,
                               int ldc, long long sc, int batch) {
    if (M <= 0 || N <= 0 || K <= 0 || batch <= 0) return true;
    ds_gemm g;
    memset(&g, 0, sizeof g);
    g.m = M; g.n = N; g.k = K;
    g.a = A; g.a_type = DS_BF16; g.lda = lda; g.a_trans = ta;
    g.b = B; g.b_type = DS_BF16; g.ldb = ldb; g.b_trans = tb;
    g.c = C; g.c_type = DS_F32; g.ldc = ldc;
    g.alpha = alpha; g.beta = beta;
    g.batch = batch; g.stride_a = sa; g.stride_b = sb; g.stride_c = sc;
    return ds_blaslt_gemm(g_lt, &g) == 0;
}

static void gemm_impl(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                      int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (g_mode != DS_CUDA_GEMM_BF16 || K <= 0 || alpha == 0.0f) {
        gemm_run(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, DS_F32);
        return;
    }
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    /* weights come from their shadow, in place (same leading dimension); activations are packed */
    const __nv_bfloat16 *a = shadow_of(A), *b = shadow_of(B);
    int la = lda, lb = ldb;
    if (!a) a = as_bf16(SCR_GEMM_A, A, 1, ar, ac, lda, 0), la = ac;
    if (!b) b = as_bf16(SCR_GEMM_B, B, 1, br, bc, ldb, 0), lb = bc;
    if (a && b) gemm_run(ta, tb, M, N, K, alpha, a, la, b, lb, beta, C, ldc, DS_BF16);
}

/* Expert GEMMs: in bf16 mode every group's rows and every group's weights are converted in one launch
 * each, then one product per non-empty group (cuBLASLt has no grouped bf16 GEMM with an fp32 output). */
static void cu_gemm_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                         const float *B, size_t strideB, int ldb, float beta, float *C, int ldc) {
    int rows = (int)off[ng], br = tb ? N : K, bc = tb ? K : N;
    bool bf = g_mode == DS_CUDA_GEMM_BF16;
    const void *a = A, *b = B;
    int la = lda, lb = ldb;
    size_t sb = strideB;
    if (bf) {
        a = as_bf16(SCR_GEMM_A, A, 1, rows, K, lda, 0);
        la = K;
        if (!(b = shadow_of(B))) {
            b = as_bf16(SCR_GEMM_B, B, ng, br, bc, ldb, strideB);
            lb = bc; sb = (size_t)br * bc;
        }
        if (!a || !b) return;
    }
    size_t esz = bf ? 2 : 4;
    for (int g = 0; g < ng; g++) {
        int64_t r0 = off[g], r1 = off[g + 1];
        if (r1 <= r0) continue;
        gemm_run(0, tb, (int)(r1 - r0), N, K, alpha, (const char *)a + (size_t)r0 * la * esz, la,
                 (const char *)b + (size_t)g * sb * esz, lb, beta, C + (size_t)r0 * ldc, ldc, bf ? DS_BF16 : DS_F32);
    }
}

static void cu_gemm_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    int rows = (int)off[ng];
    bool bf = g_mode == DS_CUDA_GEMM_BF16;
    const void *a = A, *b = B;
    int la = lda, lb = ldb;
    if (bf) {
        a = as_bf16(SCR_GEMM_A, A, 1, rows, M, lda, 0);
        b = as_bf16(SCR_GEMM_B, B, 1, rows, N, ldb, 0);
        if (!a || !b) return;
        la = M; lb = N;
    }
    size_t esz = bf ? 2 : 4;
    for (int g = 0; g < ng; g++) {
        int64_t r0 = off[g], r1 = off[g + 1];
        gemm_run(1, 0, M, N, (int)(r1 - r0), alpha, (const char *)a + (size_t)r0 * la * esz, la,
                 (const char *)b + (size_t)r0 * lb * esz, lb, beta, C + (size_t)g * strideC, ldc, bf ? DS_BF16 : DS_F32);
    }
}

static int cu_status(void) { return ds_ops_cuda_status(); }

ds_blaslt *ds_cuda_blaslt(void) { return g_lt; }

static int g_ready;
static size_t g_free_at_start; /* cudaMemGetInfo's free bytes once the context existed, before our first allocation */

extern "C" int ds_ops_cuda_memory_used(double *bytes) {
    size_t free_now = 0, total = 0;
    *bytes = 0;
    if (!g_ready) return ds_fail(DS_ERR, "cuda: the backend is not started");
    DS_CU_TRY(cudaMemGetInfo(&free_now, &total));
    *bytes = (double)g_free_at_start - (double)free_now;
    return DS_OK;
}

/* The decode op with the split-KV workspace from backend scratch when the caller brings none. */
static int cu_mla_decode(const ds_mla_decode_args *a) {
    if (a->workspace) return ds_cuda_mla_decode(a);
    ds_mla_decode_args w = *a;
    size_t need = ds_cuda_mla_decode_workspace(a);
    if (need) {
        w.workspace = ds_cuda_scratch(SCR_MLA, need);
        w.workspace_bytes = w.workspace ? need : 0;
    }
    return ds_cuda_mla_decode(&w);
}

static ds_ops cuda_ops;

extern "C" void ds_ops_cuda_set_gemm(ds_cuda_gemm_mode mode) { g_mode = mode; }
extern "C" ds_cuda_gemm_mode ds_ops_cuda_gemm(void) { return g_mode; }

extern "C" const ds_ops *ds_ops_cuda(void) {
    if (g_ready) return &cuda_ops;
    char why[256];
    if (ds_cuda_device_count(why, sizeof why) == 0) {
        ds_fail(DS_ERR, "--device cuda: no usable GPU (%s)", why);
        return NULL;
    }
    size_t total = 0;
    int dev = 0; /* the process's GPU: with several per host, lib/dist/nccl.h selected its local rank's first */
    if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
    if (ds_cuda_init(dev, NULL) || cudaMemGetInfo(&g_free_at_start, &total) != cudaSuccess ||
        ds_blaslt_create(&g_lt, NULL, 0)) {
        ds_fail_ctx(DS_ERR, "--device cuda");
        return NULL;
    }
    const char *m = getenv("DS_CUDA_GEMM");
    if (m && !strcmp(m, "tf32")) g_mode = DS_CUDA_GEMM_TF32;
    else if (m && !strcmp(m, "f32")) g_mode = DS_CUDA_GEMM_F32;
    ds_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.alloc = cu_alloc; o.free = cu_free; o.copy = cu_copy; o.zero = cu_zero; o.sync = cu_sync;
    o.status = cu_status; o.params_changed = cu_params_changed;
    o.gemm = gemm_impl; o.gemm_rows = cu_gemm_rows; o.gemm_wgrad = cu_gemm_wgrad;
    /* DS_CUDA_GROUPED=0: no device-offset GEMMs, so the MoE layers take the host-offset path (one cuBLASLt
     * call per expert): the "before" of bench/gpu_moe.sh */
    const char *grouped = getenv("DS_CUDA_GROUPED");
    if (!grouped || strcmp(grouped, "0")) o.gemm_rows_dev = cu_gemm_rows_dev, o.gemm_wgrad_dev = cu_gemm_wgrad_dev;
    o.add = cu_add; o.axpy = cu_axpy; o.scale = cu_scale; o.copy2d = cu_copy2d;
    o.round_bf16 = cu_round_bf16; /* --bf16's storage rounding (ops/bf16.h) */
    o.rmsnorm_fwd = cu_rmsnorm_fwd; o.rmsnorm_bwd = cu_rmsnorm_bwd;
    o.rope_table = cu_rope_table; o.rope = cu_rope;
    o.attn_ws_bytes = cu_attn_ws_bytes; o.attn_fwd = cu_attn_fwd; o.attn_bwd = cu_attn_bwd;
    o.swiglu_fwd = cu_swiglu_fwd; o.swiglu_bwd = cu_swiglu_bwd;
    o.embed_fwd = cu_embed_fwd; o.embed_bwd = cu_embed_bwd;
    o.logsoftmax_fwd = cu_logsoftmax_fwd; o.logsoftmax_bwd = cu_logsoftmax_bwd;
    o.router_scores = cu_router_scores; o.moe_topk = cu_moe_topk; o.moe_topk_bwd = cu_moe_topk_bwd;
    o.moe_balance = cu_moe_balance; o.moe_bucket = cu_moe_bucket; o.moe_gather = cu_moe_gather;
    o.moe_gather_bwd = cu_moe_gather_bwd; o.moe_combine = cu_moe_combine; o.moe_scale_rows = cu_moe_scale_rows;
    o.moe_combine_bwd = cu_moe_combine_bwd;
    o.mla_kv_expand = cu_mla_kv_expand; o.mla_kv_expand_bwd = cu_mla_kv_expand_bwd;
    o.mla_decode = cu_mla_decode;
    cuda_ops = o;
    g_ready = 1;
    return &cuda_ops;
}
