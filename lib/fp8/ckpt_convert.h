/* ckpt_convert.h — converting a whole checkpoint between FP8, BF16 and FP32 (what ds-quantize does).
 *
 * Owns: reading a checkpoint from any of its three forms (a directory: config.json + model.safetensors
 * or shards + index + tokenizer files; a single .safetensors file; "-", a checkpoint stream whose
 * __metadata__ carries "config" and "tokenizer"), running the conversion plan of convert.h over it
 * tensor by tensor, and writing the result in any of the three forms, with config.json updated:
 *   to fp8   quantization_config = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
 *            ["scale_fmt": "ue8m0",] "weight_block_size": [128, 128]} (DeepSeek's keys, sorted as
 *            DeepSeek's files have them); torch_dtype left as it is
 *   to bf16  quantization_config removed, torch_dtype "bfloat16"
 *   to fp32  quantization_config removed, torch_dtype "float32"
 * A directory is written to "<out>.tmp-<pid>" and renamed into place at the end; an existing <out> is an
 * error. tokenizer.json, tokenizer_config.json, generation_config.json and special_tokens_map.json are
 * carried over (a stream's "tokenizer" becomes tokenizer.json and back). Memory: one 128-row panel of
 * the widest weight, plus (from a pipe) at most one FP8 weight held until its scale arrives; inputs are
 * mmapped, so checkpoints larger than RAM convert.
 */
#ifndef DS_FP8_CKPT_CONVERT_H
#define DS_FP8_CKPT_CONVERT_H

#include <stdint.h>

#include "fp8/convert.h"

typedef struct {
    ds_conv_target target;
    ds_fp8_scale_fmt scale_fmt;
    uint64_t max_shard_bytes;   /* directory output: split into shards of at most this many bytes (0: one) */
    ds_conv_report_fn report;   /* per output tensor (may be NULL) */
    void *report_ctx;
    int progress;               /* show progress on stderr (core/log.h) */
} ds_ckpt_convert_opts;

typedef struct {
    int tensors_in, tensors_out, quantized, dequantized, cast;
    uint64_t bytes_in, bytes_out;
    ds_fp8_err err_quant;       /* over every quantized weight together */
    double worst_rel_fro;       /* the largest per-weight relative Frobenius error ... */
    char worst_name[256];       /* ... and its tensor */
    double seconds;
} ds_ckpt_convert_stats;

/* in: directory, .safetensors file or "-"; out: directory, path ending in .safetensors, or "-". */
int ds_ckpt_convert(const char *in, const char *out, const ds_ckpt_convert_opts *o, ds_ckpt_convert_stats *stats);

/* config.json text for the converted checkpoint (see above); *out is malloc'd. `where` names the
 * source for messages. */
int ds_ckpt_convert_config(const char *json, size_t len, ds_conv_target target, ds_fp8_scale_fmt scale_fmt,
                           const char *where, char **out);

#endif
