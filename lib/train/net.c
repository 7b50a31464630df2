#include "train/net.h"

#include "core/err.h"
#include "fp8/linear.h"
#include "train/flops.h"

#include <stdlib.h>
#include <string.h>

/* The FP8 Linear GEMMs (--fp8) return nothing; a failure inside one (out of memory) is collected here. */
static int fwd(void *impl, const ds_batch *b, ds_fwd_out *out) {
    int rc = ds_model_forward(impl, b, out);
    return rc ? rc : ds_fp8_linear_status();
}
static int bwd(void *impl, const ds_batch *b, const float *dlogp, const float *dmtp) {
    int rc = ds_model_backward(impl, b, dlogp, dmtp);
    return rc ? rc : ds_fp8_linear_status();
}
static void zero(void *impl) { ds_model_zero_grad(impl); }
static void set_alpha(void *impl, double alpha) { ds_model_set_balance_alpha(impl, alpha); }

int ds_train_net_from_model(ds_train_net *n, ds_model *m, int seq_len) {
    memset(n, 0, sizeof *n);
    const ds_config *c = ds_model_config(m);
    const int depth = ds_model_mtp_depth(m);
    const int layers = c->num_hidden_layers + depth;
    n->expert_bias = calloc((size_t)layers + 1, sizeof *n->expert_bias);
    if (!n->expert_bias) return ds_fail(DS_ERR, "out of memory: trainer network");
    for (int l = 0; l < layers; l++)
        if (ds_cfg_is_moe_layer(c, l)) n->expert_bias[n->n_moe_layers++] = ds_model_expert_bias(m, l);
    n->impl = m;
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
    ds_flops f;
    ds_train_flops(c, seq_len, depth, &f);
    n->flops_per_token = f.total;
    if (!n->grads) {
        ds_train_net_release(n);
        return ds_fail(DS_ERR, "trainer: the model was created without gradients (ds_model_opts.train = 0)");
    }
    return 0;
}

void ds_train_net_release(ds_train_net *n) {
    free(n->expert_bias);
    memset(n, 0, sizeof *n);
}
