/* Derived sizes and the RoPE/YaRN tables (spec 3.2, 3.3, 7). */
#include "model/layer.h"

#include "core/err.h"

#include <math.h>
#include <string.h>

void ds_dims_from_config(ds_dims *d, const ds_config *c) {
    memset(d, 0, sizeof *d);
    d->D = c->hidden_size;
    d->V = c->vocab_size;
    d->H = c->num_attention_heads;
    d->dn = c->qk_nope_head_dim;
    d->dr = c->qk_rope_head_dim;
    d->dqk = d->dn + d->dr;
    d->dv = c->v_head_dim;
    d->rope_interleave = c->rope_interleave;
    d->Rq = c->q_lora_rank;
    d->Rkv = c->kv_lora_rank;
    d->I = c->intermediate_size;
    d->E = c->n_routed_experts;
    d->K = c->num_experts_per_tok;
    d->Ie = c->moe_intermediate_size;
    d->Is = c->n_shared_experts * c->moe_intermediate_size;
    d->eps = (float)c->rms_norm_eps;
    ds_route_params *r = &d->route;
    r->n_experts = d->E;
    r->top_k = d->K;
    r->n_group = c->n_group > 0 ? c->n_group : 1;
    r->topk_group = c->topk_group > 0 ? c->topk_group : r->n_group;
    r->score_fn = c->scoring_func == DS_SCORE_SOFTMAX ? DS_SCORE_FN_SOFTMAX : DS_SCORE_FN_SIGMOID;
    r->renorm = c->norm_topk_prob;
    r->route_scale = (float)c->routed_scaling_factor;
    /* "noaux_tc" (V3, also the meaning of an absent key): bias-corrected selection with top-2 group sums.
     * "group_limited_greedy" (V2): groups by their best score. "greedy": no groups. */
    if (!strcmp(c->topk_method, "greedy")) {
        r->group_rule = DS_GROUP_NONE;
    } else if (!strcmp(c->topk_method, "group_limited_greedy")) {
        r->group_rule = DS_GROUP_MAX;
    } else {
        r->group_rule = DS_GROUP_TOP2SUM;
        d->has_bias = 1;
    }
    if (r->n_group <= 1) r->group_rule = DS_GROUP_NONE;
}

/* m(s, c) = 0.1 c ln s + 1 for s > 1, else 1 (c = 0 gives 1) */
static double yarn_m(double s, double c) { return s <= 1.0 ? 1.0 : 0.1 * c * log(s) + 1.0; }

static double correction_dim(double rotations, int dim, double base, double L0) {
    return dim * log(L0 / (rotations * 2.0 * M_PI)) / (2.0 * log(base));
}

int ds_rope_init(ds_rope *r, const ds_config *c) {
    memset(r, 0, sizeof *r);
    int dr = c->qk_rope_head_dim, dqk = c->qk_nope_head_dim + dr;
    if (dr <= 0 || dr % 2 || dr / 2 > DS_ROPE_MAX_HALF)
        return ds_fail(DS_ERR, "config: qk_rope_head_dim: must be even and in [2, %d]", 2 * DS_ROPE_MAX_HALF);
    r->half = dr / 2;
    float theta = (float)c->rope_theta;
    /* as the references: theta^(2j/dr) in fp32, inverted */
    for (int j = 0; j < r->half; j++) r->inv_freq[j] = 1.0f / powf(theta, (float)(2 * j) / (float)dr);
    r->cos_scale = 1.0f;
    r->softmax_scale = (float)(1.0 / sqrt((double)dqk));
    const ds_rope_scaling *y = &c->rope_scaling;
    if (!y->enabled) return 0;

    int L0 = y->original_max_position_embeddings;
    double s = y->factor;
    if (s <= 0.0 && L0 > 0) s = (double)c->max_position_embeddings / L0;
    if (L0 <= 0 || s <= 0.0) return ds_fail(DS_ERR, "config: rope_scaling: yarn needs factor and original_max_position_embeddings");
    double bf = y->beta_fast > 0 ? y->beta_fast : 32.0, bs = y->beta_slow > 0 ? y->beta_slow : 1.0;
    double low = correction_dim(bf, dr, theta, L0), high = correction_dim(bs, dr, theta, L0);
    if (y->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0) low = 0;
    if (high > dr - 1) high = dr - 1;
    if (low == high) high += 0.001;
    for (int j = 0; j < r->half; j++) {
        float ramp = ((float)j - (float)low) / (float)(high - low);
        ramp = ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp);
        float keep = 1.0f - ramp; /* 1: high frequencies keep their value; 0: divided by s */
        float f = r->inv_freq[j];
        r->inv_freq[j] = f / (float)s * (1.0f - keep) + f * keep;
    }
    /* transformers' rule (docs/DESIGN.md): the ratio only when both mscales are given (non-zero), else
     * YaRN's own 0.1 ln s + 1; DeepSeek's remote code would take an absent mscale as 1 and an absent
     * mscale_all_dim as 0, which differs when exactly one is given */
    double cos_f = y->mscale > 0 && y->mscale_all_dim > 0 ? yarn_m(s, y->mscale) / yarn_m(s, y->mscale_all_dim)
                                                          : yarn_m(s, 1.0);
    r->cos_scale = (float)(y->attention_factor > 0 ? y->attention_factor : cos_f);
    double m = yarn_m(s, y->mscale_all_dim);
    r->softmax_scale = (float)(m * m / sqrt((double)dqk));
    return 0;
}
