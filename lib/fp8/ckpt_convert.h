/* ckpt_convert.h — converting a whole checkpoint between FP8, BF16 and FP32 (what ds-quantize does).
 *
 * Owns: running the conversion plan of convert.h over a checkpoint, tensor by tensor, from any of its
 * forms to any other (io/checkpoint.h: a directory, a .safetensors file, or "-", a stream), and what
 * the conversion changes in config.json:
 *   to fp8   quantization_config = {quant_method "fp8", fmt "e4m3", activation_scheme "dynamic",
 *            weight_block_size [128, 128], [scale_fmt "ue8m0"]} (DeepSeek's keys); torch_dtype kept
 *   to bf16  quantization_config removed, torch_dtype "bfloat16"
 *   to fp32  quantization_config removed, torch_dtype "float32"
 * tokenizer.json, generation_config.json, tokenizer_config.json and special_tokens_map.json are carried
 * over; training state (trainer_state.json, optimizer.safetensors) is not. Writing goes through
 * io/checkpoint.h (temporary directory, fsync, atomic rename or exchange). Memory: one panel (128-row blocks, ~2^20 elements) of
 * the widest weight; a directory or file input is mmapped (page cache, so checkpoints larger than RAM
 * convert); a pipe is read tensor by tensor with ds_st_stream (not ds_ckpt_open, which would read it
 * whole), holding at most one FP8 weight until its scale arrives.
 * Also: reading one weight of a checkpoint as float32 whatever its storage (FP8 + scale_inv included),
 * for the inference and training code that loads FP8 checkpoints.
 */
#ifndef DS_FP8_CKPT_CONVERT_H
#define DS_FP8_CKPT_CONVERT_H

#include <stdint.h>

#include "fp8/convert.h"
#include "io/checkpoint.h"
#include "io/config.h"

typedef struct {
    ds_conv_target target;
    ds_fp8_scale_fmt scale_fmt;
    uint64_t max_shard_bytes;   /* directory output: split into shards of at most this many bytes (0: one) */
    ds_conv_report_fn report;   /* per output tensor (may be NULL) */
    void *report_ctx;
    int progress;               /* show progress on stderr (core/log.h) */
    /* Called with the input's config and tensor list before anything is written (ds-quantize checks
     * them against each other with model/weights.h, a layer above this one); non-zero stops. */
    int (*check)(void *ctx, const ds_config *cfg, const ds_st_tensor *const *t, int n, const char *where);
    void *check_ctx;
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

/* Set cfg's quantization_config / torch_dtype for a checkpoint converted to `target` (see above). */
void ds_ckpt_convert_set_config(ds_config *cfg, ds_conv_target target, ds_fp8_scale_fmt scale_fmt);

/* Read weight `name` of checkpoint c as float32 [shape]: an F8_E4M3 weight is dequantized block-wise
 * with its <name>_scale_inv (exactly as ds-quantize --to fp32 would write it); any other dtype reads
 * through ds_ckpt_read_f32. Errors name the tensor (missing, wrong shape, FP8 without its scale). */
int ds_fp8_ckpt_read_f32(const ds_ckpt *c, const char *name, int ndim, const int64_t *shape, float *out);

#endif
