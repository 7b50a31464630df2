#include "train/net.h"

#include "core/err.h"
#include "fp8/linear.h"
#include "ops/device.h"
#include "train/flops.h"

#include <stdlib.h>
#include <string.h>

/* The adapter. On the CPU it passes straight through. On a device the trainer still reads forward outputs
 * and writes loss coefficients in host memory (the loss hooks are plain C over host arrays), so the adapter
 * copies B*T (x MTP depth) floats each way per micro-batch, and keeps the expert biases on the host (the
 * trainer's bias update and its state file work on them) with the model's device copy refreshed when the
 * trainer says they changed. */
typedef struct {
    ds_model *m;
    const ds_ops *ops;
    int on_host, depth, n_moe, E;
    size_t cap;              /* tokens the buffers below hold */
    float *logp, *mtp, *ent; /* host copies of the forward's outputs */
    float *d_dlogp, *d_dmtp; /* device copies of the loss coefficients */
    float *bias_host;        /* [n_moe][E]: what ds_train_net.expert_bias points into */
    float **bias_dev;        /* [n_moe]: the model's own */
} net_impl;

static int reserve(net_impl *x, size_t n) {
    if (n <= x->cap) return 0;
    const size_t d = (size_t)(x->depth > 0 ? x->depth : 1);
    free(x->logp), free(x->mtp), free(x->ent);
    x->ops->free(x->d_dlogp), x->ops->free(x->d_dmtp);
    x->logp = malloc(n * sizeof(float)), x->mtp = malloc(d * n * sizeof(float)), x->ent = malloc(n * sizeof(float));
    x->d_dlogp = x->ops->alloc(n * sizeof(float)), x->d_dmtp = x->ops->alloc(d * n * sizeof(float));
    x->cap = x->logp && x->mtp && x->ent && x->d_dlogp && x->d_dmtp ? n : 0;
    return x->cap ? 0 : ds_fail(DS_ERR, "out of memory: loss buffers for %zu tokens", n);
}

static int fwd(void *impl, const ds_batch *b, ds_fwd_out *out) {
    net_impl *x = impl;
    DS_TRY(ds_model_forward(x->m, b, out));
    if (x->on_host) return ds_fp8_linear_status(); /* the FP8 Linear GEMMs (--fp8, host only) return nothing */
    const size_t n = (size_t)b->B * b->T, f = sizeof(float);
    DS_TRY(reserve(x, n));
    const ds_ops *o = x->ops;
    o->copy(x->logp, out->logp, n * f, DS_COPY_D2H);
    if (out->mtp_logp) o->copy(x->mtp, out->mtp_logp, (size_t)x->depth * n * f, DS_COPY_D2H);
    if (out->entropy) o->copy(x->ent, out->entropy, n * f, DS_COPY_D2H);
    o->sync();
    DS_TRY(o->status());
    out->logp = x->logp;
    out->mtp_logp = out->mtp_logp ? x->mtp : NULL;
    out->entropy = out->entropy ? x->ent : NULL;
    out->logits = NULL; /* device memory: of no use to host code */
    return 0;
}

static int bwd(void *impl, const ds_batch *b, const float *dlogp, const float *dmtp) {
    net_impl *x = impl;
    if (x->on_host) {
        DS_TRY(ds_model_backward(x->m, b, dlogp, dmtp));
        return ds_fp8_linear_status();
    }
    const size_t n = (size_t)b->B * b->T, f = sizeof(float);
    DS_TRY(reserve(x, n));
    x->ops->copy(x->d_dlogp, dlogp, n * f, DS_COPY_H2D);
    if (dmtp) x->ops->copy(x->d_dmtp, dmtp, (size_t)x->depth * n * f, DS_COPY_H2D);
    DS_TRY(ds_model_backward(x->m, b, x->d_dlogp, dmtp ? x->d_dmtp : NULL));
    return x->ops->status();
}

static int idle(void *impl, int T, int backward, int mtp) {
    net_impl *x = impl;
    return backward ? ds_model_ep_idle_bwd(x->m, T, mtp) : ds_model_ep_idle_fwd(x->m, T);
}

static void zero(void *impl) { ds_model_zero_grad(((net_impl *)impl)->m); }
static void set_alpha(void *impl, double alpha) { ds_model_set_balance_alpha(((net_impl *)impl)->m, alpha); }

static int push_biases(void *impl) {
    net_impl *x = impl;
    for (int k = 0; k < x->n_moe; k++)
        x->ops->copy(x->bias_dev[k], x->bias_host + (size_t)k * x->E, sizeof(float) * (size_t)x->E, DS_COPY_H2D);
    return x->ops->status();
}

/* Host nets: the optimizer wrote the weights in place (or a resume set the state); a table that keeps derived
 * copies of them (--bf16's packed GEMM operands) is told (the device net's optimizer tells its own). */
static int params_stepped(void *impl) {
    net_impl *x = impl;
    x->ops->params_changed(ds_model_params(x->m), ds_model_num_params(x->m));
    return 0;
}

int ds_train_net_from_model(ds_train_net *n, ds_model *m, int seq_len) {
    memset(n, 0, sizeof *n);
    if (!ds_model_grads(m))
        return ds_fail(DS_ERR, "trainer: the model was created without gradients (ds_model_opts.train = 0)");
    const ds_config *c = ds_model_config(m);
    const int depth = ds_model_mtp_depth(m);
    const int layers = c->num_hidden_layers + depth;
    net_impl *x = calloc(1, sizeof *x);
    n->expert_bias = calloc((size_t)layers + 1, sizeof *n->expert_bias);
    if (!x || !n->expert_bias) {
        free(x);
        ds_train_net_release(n);
        return ds_fail(DS_ERR, "out of memory: trainer network");
    }
    n->impl = x;
    x->m = m;
    x->ops = ds_model_ops(m);
    x->on_host = ds_ops_on_host(x->ops);
    x->depth = depth;
    x->E = c->n_routed_experts;
    for (int l = 0; l < layers; l++)
        if (ds_cfg_is_moe_layer(c, l)) n->expert_bias[n->n_moe_layers++] = ds_model_expert_bias(m, l);
    x->n_moe = n->n_moe_layers;
    if (!x->on_host && x->n_moe > 0) { /* the trainer's copy of the biases lives on the host */
        x->bias_host = malloc(sizeof(float) * (size_t)x->n_moe * x->E);
        x->bias_dev = malloc(sizeof *x->bias_dev * (size_t)x->n_moe);
        if (!x->bias_host || !x->bias_dev) {
            ds_train_net_release(n);
            return ds_fail(DS_ERR, "out of memory: trainer network");
        }
        for (int k = 0; k < x->n_moe; k++) {
            x->bias_dev[k] = n->expert_bias[k];
            n->expert_bias[k] = x->bias_host + (size_t)k * x->E;
            x->ops->copy(n->expert_bias[k], x->bias_dev[k], sizeof(float) * (size_t)x->E, DS_COPY_D2H);
        }
        n->state_changed = push_biases;
    }
    if (x->on_host) n->state_changed = params_stepped;
    n->ops = x->on_host ? NULL : x->ops;
    n->params = ds_model_params(m);
    n->grads = ds_model_grads(m);
    n->n_params = ds_model_num_params(m);
    n->info = ds_model_params_info(m, &n->n_info);
    n->mtp_depth = depth;
    n->n_experts = n->n_moe_layers ? c->n_routed_experts : 0;
    n->forward = fwd;
    n->backward = bwd;
    n->zero_grad = zero;
    n->set_balance_alpha = set_alpha;
    size_t eoff, en;
    ds_model_expert_range(m, &eoff, &en, NULL, NULL);
    if (en) n->idle = idle; /* expert parallelism: every micro-batch round exchanges tokens */
    ds_flops f;
    ds_train_flops(c, seq_len, depth, &f);
    n->flops_per_token = f.total;
    return x->on_host ? 0 : x->ops->status();
}

void ds_train_net_release(ds_train_net *n) {
    net_impl *x = n->impl;
    if (x) {
        free(x->logp), free(x->mtp), free(x->ent), free(x->bias_host), free(x->bias_dev);
        if (x->ops) x->ops->free(x->d_dlogp), x->ops->free(x->d_dmtp);
        free(x);
    }
    free(n->expert_bias);
    memset(n, 0, sizeof *n);
}
