/* adamw_cuda.h — the optimizer step on the GPU: AdamW over a flat fp32 parameter buffer in device memory,
 * and the global gradient norm that clipping needs.
 *
 * Owns: device-resident moments (fp32, or bf16 rounded to nearest even), the per-tensor weight-decay table,
 * and an update that is bit-identical to lib/train's CPU rule (PyTorch's torch.optim.AdamW order, fp32,
 * no fused multiply-adds): with g = grad * grad_scale,
 *   m = m + (1-b1)(g - m);  v = v b2 + (1-b2) g^2;  p = p * decay_mul + (-step_size m) / (sqrt(v)/sqrt(bc2) + eps)
 * where step_size = lr / (1 - b1^t), bc2 = 1 - b2^t, decay_mul = 1 - lr wd (1 for tensors without decay),
 * all scalars formed in double on the host and rounded to float, as the CPU does.
 * The fused step does the same update in one pass that also writes the bf16 working copy of the parameters
 * (bf16(p_new), round to nearest even: the conversion the CUDA backend's bf16 shadow makes) and zeroes the
 * gradients once read; its CPU reference is train/adamw.h ds_adamw_step_fused (tests/gpu/test_adamw.cu).
 * The norm is a fixed-order reduction in double (same bits run to run; it may differ from the CPU's chunked
 * sum in the last bits).
 */
#ifndef DS_KERNELS_ADAMW_CUDA_H
#define DS_KERNELS_ADAMW_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    size_t offset, numel; /* a parameter tensor's elements in the flat buffer */
    int decay;            /* 1: weight decay applies */
} ds_cuda_adamw_seg;

typedef struct {
    double beta1, beta2, eps, weight_decay;
    int bf16_moments;
} ds_cuda_adamw_opts;

typedef struct ds_cuda_adamw ds_cuda_adamw;

/* Moments for n parameters (zeroed), the tensors listed in segs (every element in exactly one). */
int ds_cuda_adamw_create(ds_cuda_adamw **out, const ds_cuda_adamw_opts *o, size_t n, const ds_cuda_adamw_seg *segs,
                         int nseg);
void ds_cuda_adamw_free(ds_cuda_adamw *a);
/* Update t (1-based: the number of updates including this one) of params (device) with grads (device). */
int ds_cuda_adamw_step(ds_cuda_adamw *a, float *params, const float *grads, float grad_scale, double lr, int64_t t);
/* The same update, and in the same pass: params_bf16 (device, n bf16 values, or NULL) gets bf16(p_new);
 * zero_grads sets grads to 0 after reading them. Parameters and moments are ds_cuda_adamw_step's bits. */
int ds_cuda_adamw_step_fused(ds_cuda_adamw *a, float *params, float *grads, float grad_scale, double lr, int64_t t,
                             uint16_t *params_bf16, int zero_grads);
/* Copy moments of [offset, offset + numel) out to / in from host float32 (which: 0 = m, 1 = v). */
int ds_cuda_adamw_get(const ds_cuda_adamw *a, int which, size_t offset, size_t numel, float *host);
int ds_cuda_adamw_set(ds_cuda_adamw *a, int which, size_t offset, size_t numel, const float *host);

/* sqrt(sum g^2) over n device floats, in double (synchronizes; NaN/Inf propagate). */
int ds_cuda_grad_norm(const float *g, size_t n, double *norm);
/* sum g^2 in the same fixed order (the norm's square before the root): a rank's share of a norm over ranks. */
int ds_cuda_grad_sumsq(const float *g, size_t n, double *sumsq);

#ifdef __cplusplus
}
#endif

#endif
