/* gemm_bf16.h — GEMMs on bf16 operands with fp32 accumulation: Intel AMX tiles where the CPU has them.
 *
 * Owns: the host's bf16 matrix products (what --bf16 training runs, ops/bf16.h) and the choice of kernel.
 * The operands arrive as fp32 (rounded to bf16 to nearest even, exactly core/dtype.h's ds_f32_to_bf16,
 * while they are packed: no separate rounding pass) or as bf16 (uint16_t, read as is); the products
 * accumulate in fp32 and the result is fp32, or rounded to bf16 on the way out.
 *
 * Kernels, chosen once per process (ds_gemm_bf16_kernel says which):
 *  - AMX: CPUID AMX-BF16 + AMX-TILE, the OS's XTILEDATA state, and the kernel's permission
 *    (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) asked for once, before any thread uses a tile.
 *    Operands are packed (per call, shared by the threads) into 16 x 32 bf16 tiles of op(A) and VNNI-paired
 *    16 x (16 pairs) tiles of op(B), zero-padded to multiples of 32 rows/columns/K; each thread computes
 *    32 x 32 blocks of C in four fp32 tiles with _tile_dpbf16ps, then C = alpha acc + beta C in fp32.
 *  - fallback (no AMX, or DS_AMX=0 in the environment): the operands rounded to bf16 into fp32 scratch and
 *    the CPU backend's sgemm (OpenBLAS) on them; the same numbers up to the order of the fp32 sums and the
 *    denormals below.
 * Denormals: AMX's TDPBF16PS treats bf16 denormal inputs as zero (DAZ) and flushes fp32 denormal results
 * of its products and sums to zero (FTZ), whatever MXCSR says (Intel SDM, TDPBF16PS; test_gemm_bf16 checks
 * both on this CPU). The fallback's sgemm keeps denormals (MXCSR default). Values below 2^-126 are far
 * below anything training produces; the two paths differ only there.
 * NaN and Inf propagate as in any fp32 product (a NaN operand or 0 * Inf makes the sums it enters NaN);
 * beta = 0 ignores C's old contents, NaN included; K = 0 or alpha = 0 gives beta C (ops.h's contract).
 *
 * Threads: OpenMP (the caller's thread count); the calls are not reentrant across threads of one parallel
 * region (the packs live in the calling thread's scratch, grown on demand and kept).
 */
#ifndef DS_OPS_GEMM_BF16_H
#define DS_OPS_GEMM_BF16_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

/* 1 when the AMX kernel runs (decided on the first call of any function here; DS_AMX=0 forces 0). */
int ds_gemm_bf16_amx(void);
/* Tests and benchmarks: on = 0 runs the fallback from now on, on = 1 the AMX kernel again where it is
 * available; returns whether AMX was in use. Not to be called while a GEMM runs. */
int ds_gemm_bf16_use_amx(int on);
/* One line for logs: which kernel runs, and why when it is the fallback. */
const char *ds_gemm_bf16_kernel(void);

/* ds_ops.gemm's contract (ops/ops.h) on A and B rounded to bf16; round_c = 1 also rounds the stored result
 * to bf16 (kept as fp32 values on the bf16 grid: --bf16's emulated bf16 storage). */
void ds_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc, int round_c);
/* ds_ops.gemm_rows's contract (row groups of A, one B_g each), operands rounded to bf16; round_c as above. */
void ds_gemm_bf16_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                       const float *B, size_t strideB, int ldb, float beta, float *C, int ldc, int round_c);
/* ds_ops.gemm_wgrad's contract (C_g = alpha A_g^T B_g + beta C_g), operands rounded to bf16, fp32 result. */
void ds_gemm_bf16_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, size_t strideC, int ldc);
/* rows x cols of x (row stride ld) put on the bf16 grid in place (round_c's rounding; --bf16's other outputs;
 * the CPU table's round_bf16, ops/ops.h): one parallel loop over the rows, as a parallel region per short row
 * costs more than its rounding; contiguous rows (ld == cols) and one long row as one flat loop. */
void ds_bf16_round_rows(float *x, int64_t ld, int64_t rows, int64_t cols);

/* Cached weight packs (--bf16 training): op(B) of a product whose B lies inside a parameter buffer announced
 * through ds_gemm_bf16_params_changed (ops.h params_changed, which ops/bf16.h's table forwards here) is packed
 * into AMX tiles, kept per (pointer, layout tb, N, K, ldb) and reused by every later product until the next
 * announcement, which makes every pack stale (a generation counter; rebuilt on next use). So the weights of a
 * forward and its Dgrad are read as fp32 and rounded once per optimizer step, not once per micro-batch and call.
 * Only weights read at least twice per generation keep a pack (the second read fills it; one not reused in its
 * generation is dropped at the next): a step of one micro-batch reads most weights once per layout.
 * Memory: a weight used in both layouts (Fprop tb = 1, Dgrad tb = 0) has two bf16 packs, together the size of its
 * fp32 copy; the packs are bounded by 1.25x the announced fp32 bytes (past it, products pack per call).
 * DS_BF16_PACK in the environment: 0 = no cache (every call packs), check = every reuse is compared with a fresh
 * pack (the product runs on the fresh one; a difference counts as stale: a weight written without the
 * announcement), anything else or unset = the cache. The AMX kernel only (the fallback converts per call).
 * Callers must announce every write to an announced buffer before the next product reads it. */
void ds_gemm_bf16_params_changed(const float *base, size_t n);
/* The buffer that starts at p is being freed: its range and its packs are dropped (ops/bf16.h's free). */
void ds_gemm_bf16_params_freed(const void *p);
typedef struct {
    long long built;  /* packs (re)built from the fp32 weights */
    long long reused; /* products that read a cached pack */
    long long stale;  /* check mode: cached packs that differed from a fresh pack (a missed announcement) */
    long long over;   /* weight products packed per call because the memory bound was reached */
    size_t bytes;     /* held by the packs now */
    size_t limit;     /* the bound on bytes */
} ds_gemm_bf16_pack_stats;
void ds_gemm_bf16_pack_stats_get(ds_gemm_bf16_pack_stats *out);
/* Tests: 0 = off, 1 = on, 2 = check from now on (-1: unchanged); returns the mode in use before. */
int ds_gemm_bf16_pack_mode(int mode);

/* The dtype-carrying GEMM (the signature a bf16-storage model and the GPU's bf16 GEMM share): ds_ops.gemm's
 * contract with each operand's element type given: at, bt in {DS_F32 (rounded to bf16 while packing),
 * DS_BF16 (uint16_t bits)}, ct in {DS_F32, DS_BF16 (the result rounded to nearest even; with beta != 0 the
 * old bf16 C is read)}. Strides are in elements. Returns 0, or -1 for a dtype outside those sets. */
int ds_gemm_dt(int ta, int tb, int M, int N, int K, float alpha, const void *A, ds_dtype at, int lda, const void *B,
               ds_dtype bt, int ldb, float beta, void *C, ds_dtype ct, int ldc);

#endif
