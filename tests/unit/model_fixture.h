/* model_fixture.h — tiny DeepSeek-V3 configurations for the model's unit tests, built in C so the tests do
 * not depend on config.json parsing (tested by the io module). Values follow HF DeepseekV3Config semantics. */
#ifndef DS_TESTS_MODEL_FIXTURE_H
#define DS_TESTS_MODEL_FIXTURE_H

#include <math.h>
#include <string.h>

#include "core/rng.h"
#include "io/config.h"
#include "model/model.h"

/* A tiny MoE model: 3 layers (1 dense), 8 experts in 4 groups, top-2 of 2 groups, one shared expert,
 * query compression, one MTP module. */
static inline void fixture_tiny(ds_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 64;
    c->hidden_size = 32;
    c->intermediate_size = 48;
    c->moe_intermediate_size = 16;
    c->num_hidden_layers = 3;
    c->first_k_dense_replace = 1;
    c->moe_layer_freq = 1;
    c->num_attention_heads = 2;
    c->num_key_value_heads = 2;
    c->n_routed_experts = 8;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 2;
    c->n_group = 4;
    c->topk_group = 2;
    c->scoring_func = DS_SCORE_SIGMOID;
    strcpy(c->topk_method, "noaux_tc");
    c->norm_topk_prob = 1;
    c->routed_scaling_factor = 2.5;
    c->q_lora_rank = 16;
    c->kv_lora_rank = 8;
    c->qk_nope_head_dim = 8;
    c->qk_rope_head_dim = 4;
    c->v_head_dim = 8;
    c->rope_theta = 10000.0;
    c->max_position_embeddings = 256;
    c->rope_interleave = 1;
    c->rms_norm_eps = 1e-6;
    strcpy(c->hidden_act, "silu");
    c->num_nextn_predict_layers = 1;
    c->aux_loss_alpha = 0.001;
    c->seq_aux = 1;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
    c->pad_token_id = -1;
    c->initializer_range = 0.02;
    strcpy(c->torch_dtype, "float32");
    c->ds_init_std = 0.006;
    c->rope_scaling.truncate = 1;
}

static inline void fixture_yarn(ds_config *c, double factor, int original, double mscale, double mscale_all_dim) {
    c->rope_scaling.enabled = 1;
    c->rope_scaling.factor = factor;
    c->rope_scaling.original_max_position_embeddings = original;
    c->rope_scaling.beta_fast = 32;
    c->rope_scaling.beta_slow = 1;
    c->rope_scaling.mscale = mscale;
    c->rope_scaling.mscale_all_dim = mscale_all_dim;
    c->rope_scaling.truncate = 1;
}

/* The 671B DeepSeek-V3 shape (HUB config.json values, spec 1.2). */
static inline void fixture_671b(ds_config *c) {
    fixture_tiny(c);
    c->vocab_size = 129280;
    c->hidden_size = 7168;
    c->intermediate_size = 18432;
    c->moe_intermediate_size = 2048;
    c->num_hidden_layers = 61;
    c->first_k_dense_replace = 3;
    c->num_attention_heads = 128;
    c->num_key_value_heads = 128;
    c->n_routed_experts = 256;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 8;
    c->n_group = 8;
    c->topk_group = 4;
    c->q_lora_rank = 1536;
    c->kv_lora_rank = 512;
    c->qk_nope_head_dim = 128;
    c->qk_rope_head_dim = 64;
    c->v_head_dim = 128;
    c->max_position_embeddings = 163840;
    fixture_yarn(c, 40, 4096, 1.0, 1.0);
    c->num_nextn_predict_layers = 1;
    strcpy(c->torch_dtype, "bfloat16");
}

/* Weights at a generic operating point, larger than the init so every nonlinearity matters: Linear
 * outputs of variance ~scale^2 (routers 3x sharper, so routing decisions sit further from ties), norm
 * gains 1 + N(0, norm_std). */
static inline void fixture_generic_weights(ds_model *m, uint64_t seed, float norm_std, float scale) {
    ds_model_init(m, seed);
    int np;
    const ds_param *p = ds_model_params_info(m, &np);
    float *w = ds_model_params(m);
    for (int i = 0; i < np; i++) {
        float *x = w + p[i].offset;
        if (p[i].kind == DS_PARAM_NORM) {
            ds_randn_fill(x, p[i].numel, seed + 1, ds_stream_id(p[i].name), norm_std);
            for (size_t j = 0; j < p[i].numel; j++) x[j] += 1.0f;
        } else {
            float std = (p[i].kind == DS_PARAM_ROUTER ? 3.0f : scale) / sqrtf((float)p[i].shape[1]);
            ds_randn_fill(x, p[i].numel, seed + 2, ds_stream_id(p[i].name), std);
        }
    }
}

#endif
