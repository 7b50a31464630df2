#include "train/extend.h"

#include "core/err.h"
#include "model/layer.h"

#include <math.h>
#include <string.h>

void ds_extend_opts_defaults(ds_extend_opts *o) {
    memset(o, 0, sizeof *o);
    o->mscale = -1;
    o->mscale_all_dim = -1;
}

int ds_extend_config(ds_config *c, const ds_extend_opts *o) {
    ds_rope_scaling *y = &c->rope_scaling;
    const int had = y->enabled;
    if (o->factor != 0 && !(o->factor >= 1 && isfinite(o->factor)))
        return ds_fail(DS_EUSAGE, "--factor: must be at least 1, got %g", o->factor);
    if (o->original < 0) return ds_fail(DS_EUSAGE, "--original-len: must be positive, got %d", o->original);
    if (o->beta_fast < 0 || o->beta_slow < 0) return ds_fail(DS_EUSAGE, "--beta-fast/--beta-slow: must be positive");
    if (!had && o->factor == 0)
        return ds_fail(DS_EUSAGE, "--factor: required: the checkpoint has no rope_scaling yet (V3 uses 40)");
    if (!had) {
        /* first phase: V3's values for what is not given */
        y->enabled = 1;
        y->original_max_position_embeddings = c->max_position_embeddings;
        y->beta_fast = 32, y->beta_slow = 1;
        y->mscale = 1.0, y->mscale_all_dim = 1.0;
        y->attention_factor = 0;
        y->truncate = 1;
    }
    if (o->factor != 0) y->factor = o->factor;
    if (o->original > 0) y->original_max_position_embeddings = o->original;
    if (o->beta_fast > 0) y->beta_fast = o->beta_fast;
    if (o->beta_slow > 0) y->beta_slow = o->beta_slow;
    if (o->mscale >= 0) y->mscale = o->mscale;
    if (o->mscale_all_dim >= 0) y->mscale_all_dim = o->mscale_all_dim;
    if (!(y->beta_fast > y->beta_slow))
        return ds_fail(DS_EUSAGE, "--beta-fast %g must exceed --beta-slow %g", y->beta_fast, y->beta_slow);
    double maxpos = (double)y->original_max_position_embeddings * y->factor;
    if (maxpos > 2147483647.0) return ds_fail(DS_EUSAGE, "--factor: original length x factor overflows: %.0f", maxpos);
    c->max_position_embeddings = (int)llround(maxpos);
    ds_rope r; /* the model's own check of the result (dimensions, ranges) */
    return ds_rope_init(&r, c);
}

int ds_extend_rope_json(const ds_config *c, ds_jsonw *w) {
    ds_rope r;
    DS_TRY(ds_rope_init(&r, c));
    const ds_rope_scaling *y = &c->rope_scaling;
    ds_jsonw_obj_begin(w);
    ds_jsonw_key(w, "rope_scaling");
    if (y->enabled) {
        ds_jsonw_obj_begin(w);
        ds_jsonw_kstr(w, "type", "yarn");
        ds_jsonw_knum(w, "factor", y->factor);
        ds_jsonw_kint(w, "original_max_position_embeddings", y->original_max_position_embeddings);
        ds_jsonw_knum(w, "beta_fast", y->beta_fast);
        ds_jsonw_knum(w, "beta_slow", y->beta_slow);
        ds_jsonw_knum(w, "mscale", y->mscale);
        ds_jsonw_knum(w, "mscale_all_dim", y->mscale_all_dim);
        ds_jsonw_knum(w, "attention_factor", y->attention_factor);
        ds_jsonw_kbool(w, "truncate", y->truncate);
        ds_jsonw_obj_end(w);
    } else {
        ds_jsonw_null(w);
    }
    ds_jsonw_kint(w, "max_position_embeddings", c->max_position_embeddings);
    ds_jsonw_kint(w, "qk_rope_head_dim", c->qk_rope_head_dim);
    ds_jsonw_knum(w, "rope_theta", c->rope_theta);
    ds_jsonw_key(w, "inv_freq");
    ds_jsonw_arr_begin(w);
    for (int j = 0; j < r.half; j++) ds_jsonw_numf(w, r.inv_freq[j]);
    ds_jsonw_arr_end(w);
    ds_jsonw_key(w, "wavelength");
    ds_jsonw_arr_begin(w);
    for (int j = 0; j < r.half; j++) ds_jsonw_num(w, 2 * M_PI / r.inv_freq[j]);
    ds_jsonw_arr_end(w);
    ds_jsonw_knum(w, "cos_scale", r.cos_scale);
    ds_jsonw_knum(w, "softmax_scale", r.softmax_scale);
    ds_jsonw_knum(w, "softmax_scale_plain", 1.0 / sqrt((double)ds_cfg_qk_head_dim(c)));
    ds_jsonw_obj_end(w);
    return 0;
}
