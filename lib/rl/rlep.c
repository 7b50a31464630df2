#include "rl/rlep.h"

#include "core/err.h"
#include "train/distckpt.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

struct ds_rl_ep_rollout {
    ds_model *copy, *policy;
    const ds_comm *ep_comm;
};

int ds_rl_ep_rollout_create(ds_rl_ep_rollout **out, ds_model *policy, const ds_ep_run *ep) {
    *out = NULL;
    if (!ep->have_layout) return ds_fail(DS_ERR, "rollouts: no expert-parallel layout");
    ds_rl_ep_rollout *x = calloc(1, sizeof *x);
    if (!x) return ds_fail(DS_ERR, "out of memory: rollout model");
    x->policy = policy;
    x->ep_comm = &ep->L.ep_comm;
    /* the engine keeps its own activations: the model's arena is never used, one token is enough */
    ds_model_opts mo = {.max_batch = 1, .max_seq = 1, .train = 0, .recompute = 1};
    int rc = ds_model_create(&x->copy, ds_model_config(policy), &mo);
    if (rc) {
        free(x);
        return ds_fail_ctx(rc, "rollout model (every expert, for the engine)");
    }
    *out = x;
    return 0;
}

ds_model *ds_rl_ep_rollout_model(ds_rl_ep_rollout *x) { return x->copy; }

int ds_rl_ep_rollout_sync(void *ctx) {
    ds_rl_ep_rollout *x = ctx;
    int n_have, n_want;
    const ds_param *have = ds_model_params_info(x->policy, &n_have), *want = ds_model_params_info(x->copy, &n_want);
    float *dst = ds_model_params(x->copy);
    DS_TRY(ds_distckpt_gather(x->ep_comm, 0, have, n_have, ds_model_params(x->policy), want, n_want, dst));
    const size_t n = ds_model_num_params(x->copy);
    for (size_t o = 0; o < n;) { /* MPI counts are ints */
        const size_t k = n - o < (size_t)(INT_MAX / 4) ? n - o : (size_t)(INT_MAX / 4);
        DS_TRY(ds_comm_bcast_bytes(x->ep_comm, dst + o, (int)(k * sizeof(float))));
        o += k;
    }
    const ds_config *c = ds_model_config(x->policy);
    for (int l = 0; l < c->num_hidden_layers + c->num_nextn_predict_layers; l++) {
        float *b = ds_model_expert_bias(x->copy, l);
        const float *src = ds_model_expert_bias(x->policy, l);
        if (b && src) memcpy(b, src, sizeof(float) * (size_t)c->n_routed_experts);
    }
    return 0;
}

size_t ds_rl_ep_rollout_bytes(const ds_rl_ep_rollout *x) { return ds_model_num_params(x->copy) * sizeof(float); }

void ds_rl_ep_rollout_free(ds_rl_ep_rollout *x) {
    if (!x) return;
    ds_model_free(x->copy);
    free(x);
}
