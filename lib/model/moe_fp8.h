/* moe_fp8.h — DeepSeek-V3's low-precision storage and communication inside a MoE layer (V3 report section
 * 3.3.3; spec section 10 "Low-precision storage and communication"; docs/DESIGN.md "FP8 in the MoE layers").
 *
 * Owns two things the model switches on with ds_model_opts.moe_cache_fp8 / moe_dispatch_fp8:
 *   - the FP8 cache of the SwiGLU inputs: the routed and shared experts' gate/up outputs are kept for the
 *     backward as E4M3 codes in 1x128 tiles (the process-wide activation scale format, fp8/linear.h)
 *     instead of float32; the forward's SwiGLU reads the float32 values, the backward dequantizes the
 *     cache into scratch and recomputes SwiGLU (and its derivative) from it;
 *   - the FP8 wire format of the dispatch: a token row of D floats travels as D E4M3 codes followed by
 *     ceil(D/128) one-byte exponents (UE8M0: the tile's power-of-two scale 2^(e-127)), quantized once
 *     where the dispatch is. One process quantizes at the same point through the same packing, so the
 *     experts see the same values whether or not expert parallelism splits them.
 * Internal to lib/model (the layout in layer.c, the calls in ffn.c and moe_ep.c).
 */
#ifndef DS_MODEL_MOE_FP8_H
#define DS_MODEL_MOE_FP8_H

#include <stddef.h>
#include <stdint.h>

#include "model/internal.h"

/* Layout (layer.c): a MoE tape's codes and scales, with ge/ue/gs/us pointed at the shared scratch; and that
 * scratch (training only), plus the one-process dispatch buffers. */
void ds_moe_fp8_take(ds_bump *b, const ds_model *m, ds_tape *t, int n);
void ds_moe_fp8_take_scratch(ds_bump *b, ds_model *m, int n);

/* The cache: after the forward has used x [rows, cols] (put), before the backward reads it (get). No-ops
 * unless the model caches in FP8. */
void ds_moe_fp8_put(const ds_model *m, const ds_act_fp8 *a, const float *x, int rows, int cols);
void ds_moe_fp8_get(const ds_model *m, const ds_act_fp8 *a, float *x, int rows, int cols);

/* The wire format: bytes per row of D floats, and rows [rows, D] to and from it. */
size_t ds_moe_fp8_row_bytes(int D);
void ds_moe_fp8_pack(uint8_t *wire, const float *x, int rows, int D);
void ds_moe_fp8_unpack(float *x, const uint8_t *wire, int rows, int D);

/* One process (no dispatch): x [rows, D] as the dispatch would deliver it, in out (scratch xq or dyq); x
 * itself when the model does not dispatch in FP8. */
const float *ds_moe_fp8_as_dispatched(ds_model *m, const float *x, float *out, int rows);

#endif
