/* bf16.h — bf16 training numerics as a backend table wrapped around another (--bf16, V3's baseline).
 *
 * Owns: what "bf16 training" means in libds. The mixed-precision recipe V3 compares FP8 against: tensors
 * stored in bf16, every matrix product taking bf16 operands and accumulating in fp32, its output stored in
 * bf16; fp32 master weights, weight gradients and optimizer state (the weights are rounded to bf16 where a
 * product reads them, as the bf16 copy of the master weights would be). Emulated in fp32 memory by rounding
 * to nearest even (core/dtype.h; the base table's round_bf16 entry, ops/ops.h) at the points where a bf16
 * tensor would be stored:
 *   - every GEMM's two operands (never in place: the fp32 masters are never touched), and its output except
 *     the weight gradients (ds_ops.gemm with ta = 1, and gemm_wgrad: fp32, as Megatron's main_grad);
 *   - the outputs of the residual add, RMSNorm (y, and dx of its backward), RoPE (in place), attention (o,
 *     and dq, dk, dv), SwiGLU (h, and dg, du), the embedding lookup and the MoE combine.
 * Inside an op the arithmetic stays fp32 (norm statistics, softmax, logsumexp, the loss on bf16 logits), as
 * on a GPU. The table keeps the base's name, memory and every other op; the device-offset expert GEMMs and
 * the fused expert FFN are dropped (the model runs the rounded host-offset sequence instead).
 * The products depend on the base:
 *   - the CPU backend (its sgemm; a copy of its table too): ops/gemm_bf16.h (AMX tiles where the CPU has
 *     them, rounding while packing; else the CPU backend's sgemm on rounded copies, DS_AMX=0 forces that),
 *     with cached weight packs (params_changed, free);
 *   - any other base (the CUDA backend, --device cuda): the base's own GEMMs, which must take bf16 operands
 *     and accumulate in fp32 (the CUDA backend's bf16 GEMM mode, its default; device.h's
 *     ds_ops_check_bf16_gemm says whether it is on), their outputs rounded through the base's round_bf16.
 *     Compiled, and tested over the CPU table posing as such a base (tests/unit/test_bf16_generic.c); the
 *     GPU tests (tests/gpu/test_bf16_cuda.cu, test_tools.sh) are not yet run on a GPU.
 */
#ifndef DS_OPS_BF16_H
#define DS_OPS_BF16_H

#include <stddef.h>

struct ds_ops;

/* The bf16 table around `base` (process-wide: one base at a time, a later call rewires the same table; it
 * lives until exit). NULL (message set) when the base has no round_bf16 entry. */
const struct ds_ops *ds_bf16_ops(const struct ds_ops *base);

#endif
