/* bf16.h — bf16 training numerics as a backend table wrapped around another (--bf16, V3's baseline).
 *
 * Owns: what "bf16 training" means in libds. The mixed-precision recipe V3 compares FP8 against: tensors
 * stored in bf16, every matrix product taking bf16 operands and accumulating in fp32 (sgemm on the
 * operands rounded to bf16), its output stored in bf16; fp32 master weights, weight gradients and optimizer
 * state (the weights are rounded to bf16 where a product reads them, as the bf16 copy of the master weights
 * would be). Emulated on the host by rounding to nearest even (core/dtype.h) at the points where a bf16
 * tensor would be stored:
 *   - every GEMM's two operands (a scratch copy: the fp32 masters are never touched), and its output except
 *     the weight gradients (ds_ops.gemm with ta = 1, and gemm_wgrad: fp32, as Megatron's main_grad);
 *   - the outputs of the residual add, RMSNorm (y, and dx of its backward), RoPE (in place), attention (o,
 *     and dq, dk, dv), SwiGLU (h, and dg, du), the embedding lookup and the MoE combine.
 * Inside an op the arithmetic stays fp32 (norm statistics, softmax, logsumexp, the loss on bf16 logits), as
 * on a GPU. The table keeps the base's name, memory and every other op. The CPU only (it reads host memory):
 * the three GEMM entries run ops/gemm_bf16.h whatever the base (AMX tiles where the CPU has them, rounding
 * while packing; else the CPU backend's sgemm on rounded copies, DS_AMX=0 forces that).
 */
#ifndef DS_OPS_BF16_H
#define DS_OPS_BF16_H

#include <stddef.h>

struct ds_ops;

/* The bf16 table around `base` (process-wide: one base at a time; the returned table lives until exit). */
const struct ds_ops *ds_bf16_ops(const struct ds_ops *base);

/* Round n floats to bf16 (nearest even) in place. */
void ds_bf16_round(float *x, size_t n);

#endif
