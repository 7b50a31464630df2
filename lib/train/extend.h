/* extend.h — context extension with YaRN (spec 7 and 11.3): what a phase of ds-extend-ctx writes into
 * a model's config, and the RoPE tables that config gives.
 *
 * Owns (docs/DESIGN.md "Context extension"):
 * - The rope_scaling block of a phase: type "yarn", factor s, original_max_position_embeddings L0 (the
 *   pre-training context), beta_fast 32, beta_slow 1, mscale and mscale_all_dim (V3: 1.0 and 1.0, so
 *   cos/sin keep magnitude 1 and the softmax scale grows by (0.1 ln s + 1)^2), and
 *   max_position_embeddings = L0 * s. Later phases keep what the first wrote unless told otherwise
 *   (V3 runs 4K -> 32K -> 128K with s = 40 throughout: only the training length changes).
 * - The resolved tables as JSON (ds-extend-ctx --print-rope), computed by the model's own
 *   ds_rope_init, for users and for the reference check against transformers.
 */
#ifndef DS_TRAIN_EXTEND_H
#define DS_TRAIN_EXTEND_H

#include "core/jsonw.h"
#include "io/config.h"

typedef struct {
    double factor;                 /* s >= 1; 0: keep the config's (required when it has none) */
    int original;                  /* L0; 0: keep rope_scaling's, else the config's max_position_embeddings */
    double beta_fast, beta_slow;   /* 0: keep the config's, else 32 and 1 */
    double mscale, mscale_all_dim; /* < 0: keep the config's, else 1.0 (V3); 0 writes the key as absent */
} ds_extend_opts;

void ds_extend_opts_defaults(ds_extend_opts *o); /* keep everything */

/* Apply a phase to c. Errors name the option: "--factor: ...". */
int ds_extend_config(ds_config *c, const ds_extend_opts *o);

/* One JSON object: "rope_scaling" (as the config now reads, or null), "max_position_embeddings",
 * "qk_rope_head_dim", "rope_theta", "inv_freq" [dr/2], "wavelength" [dr/2] (2 pi / inv_freq, tokens),
 * "cos_scale", "softmax_scale", "softmax_scale_plain" (qk_head_dim^-1/2). */
int ds_extend_rope_json(const ds_config *c, ds_jsonw *w);

#endif
