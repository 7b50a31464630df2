/* adamw.h — the optimizer: AdamW over the model's flat fp32 parameter buffer, global-norm gradient
 * clipping, and the non-finite check that stops a diverging run.
 *
 * Owns: the moments (fp32, or bf16 rounded to nearest even to halve their memory), the step count
 * behind bias correction, weight-decay groups (by ds_param kind: matrices, embedding, head and router
 * decay; RMSNorm gains do not), and the update rule, which is PyTorch's torch.optim.AdamW:
 *   p -= lr*wd*p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
 *   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 * with g already scaled by the clipping factor. The parameters themselves are the fp32 master copy.
 * Every loop is element-wise or a fixed-order reduction, so results do not depend on the thread count.
 */
#ifndef DS_TRAIN_ADAMW_H
#define DS_TRAIN_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct {
    double beta1, beta2, eps, weight_decay;
    int bf16_moments;
    int decay_embed; /* 1: the embedding table decays like the matrices (default 1) */
} ds_adamw_opts;

/* V3: beta1 0.9, beta2 0.95, weight decay 0.1; eps (not given by the paper) 1e-8 as in PyTorch/Megatron. */
void ds_adamw_defaults(ds_adamw_opts *o);

typedef struct {
    ds_adamw_opts o;
    size_t n;
    int64_t t;          /* updates applied so far */
    float *m32, *v32;   /* fp32 moments (NULL with bf16_moments) */
    uint16_t *m16, *v16;/* bf16 moments (NULL without) */
    uint8_t *decay;     /* per parameter tensor: 1 = weight decay applies */
    const ds_param *info;
    int n_info;
} ds_adamw;

/* Whether tensors of this kind get weight decay (the decay groups above), and the check that a
 * parameter table tiles [0, n) exactly: shared with the GPU optimizer (train/optim.h). */
int ds_adamw_kind_decays(const ds_adamw_opts *o, ds_param_kind k);
int ds_adamw_check_table(size_t n, const ds_param *info, int n_info);

/* info: the parameter table (decay groups; every element of [0, n) must lie in exactly one entry). */
int ds_adamw_init(ds_adamw *a, const ds_adamw_opts *o, size_t n, const ds_param *info, int n_info);
void ds_adamw_free(ds_adamw *a);

/* Global L2 norm of g[0..n), summed in double in fixed-size chunks and a fixed order. */
double ds_grad_norm(const float *g, size_t n);
/* The sum of squares behind it (a share of a norm summed across ranks). */
double ds_grad_sumsq(const float *g, size_t n);
/* PyTorch's clip_grad_norm_ factor: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0. */
float ds_clip_factor(double norm, double max_norm);

/* One update of params with grads * grad_scale at learning rate lr. */
void ds_adamw_step(ds_adamw *a, float *params, const float *grads, float grad_scale, double lr);
/* The same update in one pass that also writes the things a training step otherwise makes in passes of
 * their own: params_bf16 (non-NULL) gets bf16(p_new), rounded to nearest even (core/dtype.h: the bf16
 * working copy of the weights a bf16 GEMM reads), and zero_grads sets every gradient to 0 once read (the
 * next step's gradient accumulation starts from zeros without a zeroing pass). Parameters and moments are
 * bit for bit ds_adamw_step's. The CPU reference of kernels/adamw_cuda.h ds_cuda_adamw_step_fused. */
void ds_adamw_step_fused(ds_adamw *a, float *params, float *grads, float grad_scale, double lr, uint16_t *params_bf16,
                         int zero_grads);

/* Moment of element i as float (for saving/inspection); which = 0: m, 1: v. */
float ds_adamw_moment(const ds_adamw *a, int which, size_t i);
/* Copy out / in one parameter tensor's moments as float32 (offset, numel in elements). */
void ds_adamw_get(const ds_adamw *a, int which, size_t offset, size_t numel, float *out);
void ds_adamw_set(ds_adamw *a, int which, size_t offset, size_t numel, const float *in);

#endif
