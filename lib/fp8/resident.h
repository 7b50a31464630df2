/* resident.h — FP8-resident Linear weights: E4M3 codes kept as they are (memory-mapped from the checkpoint)
 * with their 128x128 block scales, multiplied without ever expanding the whole matrix.
 *
 * Owns: the table of resident weights and the Linear GEMMs over them. A resident weight has an address in
 * the model's fp32 parameter buffer like any other (so the network's weight pointers, expert strides and
 * slices are unchanged), but those floats are never written or read: the address is a key into this table,
 * which holds the codes (borrowed: the checkpoint's mapping, alive as long as the entry) and a copy of the
 * scales. The ops of ds_fp8_resident_ops recognise such a B operand in the forward GEMMs (y = x W^T: gemm
 * with ta = 0, tb = 1, and gemm_rows with tb = 1) and dequantize W by panels of whole 128-row blocks into a
 * per-thread scratch of about 1 MiB (codes x block scale, exactly the floats ds_fp8_dequantize writes), each
 * panel multiplied by the base backend's fp32 GEMM; any other operand goes to the base backend unchanged.
 * Activations stay fp32 (weight-only FP8; --w8a8 is the W8A8 path). A resident weight in a backward GEMM
 * is an error (ds_fp8_resident_status): resident models are for inference.
 *
 * Results differ from the expanded weights' only by the order of fp32 additions over K inside the base
 * GEMM (the same products of the same values): |diff| <= 2 gamma_K sum_k |x_k w_k|, gamma_K = K u / (1 - K u),
 * u = 2^-24 (tests/unit/test_fp8_resident.c holds it to that bound).
 * The table is process-wide (the ops tables take no context); entries are added at load and removed with
 * their model; lookups do not lock (no adds or removes while GEMMs run).
 *
 * On the GPU (ds_fp8_resident_add_device, ds_fp8_resident_ops_device): the codes are copied once from the
 * checkpoint's mapping into device memory the caller provides (ds_fp8_resident_device_bytes each: codes,
 * then the scales with rows padded as cuBLASLt reads them), the key is an address no device allocation
 * can have (the model reserves a range for them), and a forward Linear GEMM on a resident B runs
 * kernels/fp8_resident_cuda.h: the activation quantized 1x128 on the device and cuBLASLt's block-scaled
 * E4M3 GEMM, i.e. W8A8 as DeepSeek's inference code and --w8a8 on the CPU compute it (not the weight-only
 * numerics of the CPU table). Shapes it takes: ds_fp8_resident_device_ok.
 */
#ifndef DS_FP8_RESIDENT_H
#define DS_FP8_RESIDENT_H

#include <stddef.h>
#include <stdint.h>

struct ds_ops;

/* Register W [rows, cols] at key `base` (rows * cols floats of address space, never touched): codes q
 * [rows, cols] (borrowed), scales [ceil(rows/br), ceil(cols/bc)] row-major (copied). Keys must not overlap. */
int ds_fp8_resident_add(const float *base, int64_t rows, int64_t cols, const uint8_t *q, const float *scale,
                        int64_t br, int64_t bc);
/* Register a bf16 weight W [rows, cols] at key `base`: h [rows, cols] bf16, borrowed (owned = 0: it must
 * outlive the entry) or owned (owned = 1: malloc'd, freed with the entry, also on failure). */
int ds_bf16_resident_add(const float *base, int64_t rows, int64_t cols, const uint16_t *h, int owned);
/* The same from float32 values w [rows, cols], rounded to bf16 (nearest even) into an owned copy. */
int ds_bf16_resident_add_f32(const float *base, int64_t rows, int64_t cols, const float *w);

/* Remove every entry whose key lies in [lo, lo + n floats). */
void ds_fp8_resident_remove(const float *lo, size_t n);
/* Bytes held for the entries in [lo, lo + n floats): codes (mapped) and scales; device entries: their
 * ds_fp8_resident_device_bytes; bf16 entries: 2 per element. */
size_t ds_fp8_resident_bytes(const float *lo, size_t n);

/* base with gemm, gemm_rows and embed_fwd replaced by the resident-aware versions (base's table is copied and
 * used for everything else and for the panels' products; its fused expert FFN is dropped). */
void ds_fp8_resident_ops(struct ds_ops *out, const struct ds_ops *base);
/* When ops is the table ds_fp8_resident_ops made over the CPU backend: *out = its decode form, whose base is
 * ops/gemm_small.h ds_ops_cpu_small_m and which multiplies a few rows by bf16 weights with the bf16 few-row
 * kernels (what the inference engine uses where the backend would get ds_ops_cpu_small_m); returns 1.
 * Otherwise 0, *out untouched. */
int ds_resident_ops_few_rows(struct ds_ops *out, const struct ds_ops *ops);

/* Whether the GPU's block-scaled GEMM takes a [rows, cols] weight in br x bc blocks: 128x128 blocks, cols
 * (the reduction) a multiple of 128, rows a multiple of 4 (cuBLASLt's rules on sm_90, kernels/blaslt.h). */
int ds_fp8_resident_device_ok(int64_t rows, int64_t cols, int64_t br, int64_t bc);
/* Device bytes one resident [rows, cols] weight takes: its codes, then its scales [ceil(rows/128)][ld] with
 * ld = ceil(cols/128) rounded up to 4, each rounded up to 256 bytes. What ds_fp8_resident_add_device uses. */
size_t ds_fp8_resident_device_bytes(int64_t rows, int64_t cols);
/* Register a device weight at key `base`: codes q [rows, cols] (host, e.g. the checkpoint's mapping) and
 * scales [ceil(rows/128), cols/128] row-major (host) are copied through ops->copy into dev
 * (ds_fp8_resident_device_bytes of device memory, 256-byte aligned); nothing host-side is kept. */
int ds_fp8_resident_add_device(const float *base, int64_t rows, int64_t cols, const uint8_t *q, const float *scale,
                               int64_t br, int64_t bc, void *dev, const struct ds_ops *ops);
/* base (the CUDA backend) with gemm and gemm_rows replaced by versions that run resident B operands through
 * the block-scaled FP8 GEMM; fails when base is not the CUDA backend or the build has none. */
int ds_fp8_resident_ops_device(struct ds_ops *out, const struct ds_ops *base);

/* The float an E4M3 code decodes to, as the GEMMs here compute it (equal to fp8.h's ds_e4m3_to_f32). */
float ds_fp8_resident_decode(uint8_t code);

/* The first failure inside a GEMM (out of memory, a resident weight used where it cannot be), then cleared. */
int ds_fp8_resident_status(void);

#endif
