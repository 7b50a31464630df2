/* convert.h — checkpoint precision conversion: FP8 (E4M3 + 128x128 weight_scale_inv), BF16, FP32.
 *
 * Owns: which tensors DeepSeek-V3 stores in FP8 (spec 9.2: every Linear weight inside the decoder
 * blocks, MTP blocks included; never the embeddings, heads, norms, the router matrix, eh_proj or the
 * router bias), the conversion plan (output tensors from input tensors), and running it tensor by
 * tensor in panels of whole 128-row blocks (about 2^20 elements, at least 128 rows), so memory stays
 * bounded by one panel whatever the checkpoint size.
 *
 *   to fp8   quantized weights -> F8_E4M3 [out, in] followed by <name>_scale_inv F32 [ceil(out/128),
 *            ceil(in/128)] (quant.h's rule); every other tensor untouched (same dtype, same bytes);
 *            tensors already FP8 pass through with their scales.
 *   to bf16  FP8 weights dequantized as DeepSeek's fp8_cast_bf16 does (float32 product, then RNE to
 *            bf16), their _scale_inv dropped; other floating tensors cast to BF16, except the router
 *            bias (e_score_correction_bias), which DeepSeek keeps in F32.
 *   to fp32  FP8 weights dequantized; every floating tensor cast to F32.
 * Integer and bool tensors are always copied. Non-finite weights refuse quantization (named error).
 * The I/O is abstract (a source that reads byte ranges of input tensors, a sink that takes output bytes
 * in plan order), so the same engine serves mmapped shards, pipes and tests.
 */
#ifndef DS_FP8_CONVERT_H
#define DS_FP8_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"
#include "fp8/quant.h"

#define DS_CONV_MAX_DIMS 8

typedef enum { DS_CONV_TO_FP8 = 0, DS_CONV_TO_BF16 = 1, DS_CONV_TO_F32 = 2 } ds_conv_target;

typedef struct {
    const char *name;
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_CONV_MAX_DIMS];
} ds_tensor_desc;

/* 1 when DeepSeek stores this tensor in FP8 (by its Hugging Face name). */
int ds_fp8_is_quantized_name(const char *name);
/* 1 for tensors kept in F32 whatever the target dtype (the router bias). */
int ds_fp8_keeps_f32(const char *name);

typedef enum {
    DS_CONV_COPY,        /* bytes unchanged */
    DS_CONV_CAST,        /* float dtype -> float dtype through float32 */
    DS_CONV_QUANT,       /* -> F8_E4M3 in 128x128 blocks (the next step writes the scales) */
    DS_CONV_QUANT_SCALE, /* the scales of the preceding DS_CONV_QUANT */
    DS_CONV_DEQUANT,     /* F8_E4M3 + scale_inv -> float */
} ds_conv_op;

typedef struct {
    ds_tensor_desc out; /* out.name is owned by the plan */
    ds_conv_op op;
    int src;            /* input tensor index */
    int src_scale;      /* DS_CONV_DEQUANT: the input index of <name>_scale_inv; otherwise -1 */
} ds_conv_step;

typedef struct {
    ds_conv_step *steps;
    int n;
    ds_conv_target target;
    ds_fp8_scale_fmt scale_fmt;
    int n_quantized, n_dequantized; /* weights */
} ds_conv_plan;

/* Plan the output of converting tensors in[0..n_in) (in checkpoint order; the output keeps it, with each
 * new _scale_inv right after its weight). Errors name the tensor: an FP8 tensor without its
 * _scale_inv (or with a scale of the wrong shape or dtype), a _scale_inv without its weight, an FP8
 * weight that is not 2-D, a quantizable name that is not a 2-D float tensor. */
int ds_conv_plan_make(ds_conv_plan *p, const ds_tensor_desc *in, int n_in, ds_conv_target target,
                      ds_fp8_scale_fmt scale_fmt);
void ds_conv_plan_free(ds_conv_plan *p);

/* Where the bytes come from and go to. read(): bytes [offset, offset + n) of input tensor i (offsets in
 * bytes from the tensor's start). The engine reads the steps' sources in plan order, within a tensor in
 * increasing offsets; a DEQUANT step reads its whole scale tensor before the weight's panels, unless
 * `sequential` is set: then every read is at a (tensor index, offset) at or after the previous one, for
 * sources that are pipes (tensors indexed in data order), and a weight whose scale comes later is held
 * in memory (one byte per element) until the scale has been read. write(): the next n output bytes
 * (tensor data, in plan order, back to back). Both return 0 or a DS_ error code with the message set. */
typedef struct {
    void *ctx;
    int (*read)(void *ctx, int i, uint64_t offset, void *dst, size_t n);
    int sequential;
} ds_conv_source;

typedef struct {
    void *ctx;
    int (*write)(void *ctx, const void *bytes, size_t n);
} ds_conv_sink;

/* What one output tensor cost: err compares the values written with the values read (both as float64;
 * for QUANT the input against dequantize(quantize(input)), for DEQUANT the exact float32 dequantization
 * against the written dtype). QUANT_SCALE steps are not reported (the weight's report has its scales). */
typedef struct {
    const ds_conv_step *step;
    ds_dtype from;         /* input dtype */
    int64_t numel;
    ds_fp8_err err;
    float scale_min, scale_max; /* QUANT / DEQUANT: the range of the block scales */
    double seconds;
} ds_conv_report;

typedef int (*ds_conv_report_fn)(void *ctx, const ds_conv_report *r);

/* Run the plan. `in` is the list the plan was made from. report may be NULL. Returns 0 or a DS_ code. */
int ds_conv_run(const ds_conv_plan *p, const ds_tensor_desc *in, const ds_conv_source *src, const ds_conv_sink *dst,
                ds_conv_report_fn report, void *report_ctx);

/* Element count of a descriptor (-1 on overflow or a negative dimension). */
int64_t ds_tensor_desc_numel(const ds_tensor_desc *t);

#endif
