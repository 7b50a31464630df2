/* config.h — the DeepSeek-V3 model configuration record (Hugging Face DeepseekV3Config keys).
 *
 * A plain record of config.json: the formats layer (checkpoints, FP8 conversion) reads and writes it
 * without knowing the network, and lib/model builds the network from it. The parameter counts here
 * are the spec's closed form over the record's numbers (validation needs them to refuse configs whose
 * sizes overflow), not a walk of the network's tensors (that is lib/model/params.c).
 *
 * Owns: the ds_config struct, loading it from config.json text (validation errors name the key),
 * writing it back (unknown keys survive a load/save round trip), derived sizes, and parameter counts
 * (total, activated per token, MTP). Our own extra keys are prefixed "ds_".
 * Spec: ../shared/spec/deepseek-v3.md section 1; formats in docs/formats.md.
 */
#ifndef DS_IO_CONFIG_H
#define DS_IO_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "core/jsonw.h"

typedef enum { DS_SCORE_SIGMOID = 0, DS_SCORE_SOFTMAX = 1 } ds_score_func;

typedef struct {
    int enabled;                     /* rope_scaling present with type/rope_type "yarn" */
    double factor;                   /* s */
    int original_max_position_embeddings;
    double beta_fast, beta_slow;     /* 32, 1 */
    double mscale, mscale_all_dim;   /* 0 when absent */
    double attention_factor;         /* 0 when absent (then derived from mscale ratio) */
    int truncate;                    /* 1 (default): floor/ceil the correction range */
} ds_rope_scaling;

typedef struct {
    int enabled;                     /* quantization_config present */
    char quant_method[16];           /* "fp8" */
    char fmt[16];                    /* "e4m3" */
    char activation_scheme[16];      /* "dynamic" */
    int weight_block_size[2];        /* 128, 128 */
    char scale_fmt[16];              /* "" or "ue8m0" */
} ds_quant_config;

typedef struct {
    /* sizes */
    int vocab_size;
    int hidden_size;
    int intermediate_size;           /* dense FFN hidden */
    int moe_intermediate_size;       /* per expert */
    int num_hidden_layers;           /* main model layers (MTP not included) */
    int first_k_dense_replace;       /* layers [0, k) are dense */
    int moe_layer_freq;              /* 1: every layer from k on is MoE */
    int num_attention_heads;
    int num_key_value_heads;         /* meaningless for MLA; kept for HF */
    /* MoE */
    int n_routed_experts;
    int n_shared_experts;
    int num_experts_per_tok;         /* top-k */
    int n_group, topk_group;         /* group-limited routing */
    ds_score_func scoring_func;
    char topk_method[24];            /* "noaux_tc" (V3), "greedy", "group_limited_greedy" */
    int norm_topk_prob;
    double routed_scaling_factor;
    /* MLA */
    int q_lora_rank;                 /* 0: no query compression (q_proj) */
    int kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    /* positions */
    double rope_theta;
    ds_rope_scaling rope_scaling;
    int max_position_embeddings;
    int rope_interleave;             /* 1: RoPE pairs are adjacent (DeepSeek's layout) */
    /* misc */
    double rms_norm_eps;
    char hidden_act[16];             /* "silu" */
    int tie_word_embeddings;         /* must be 0 for V3 */
    int num_nextn_predict_layers;    /* MTP depth D */
    double aux_loss_alpha;
    int seq_aux;
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when absent */
    double initializer_range;
    char torch_dtype[16];            /* "bfloat16", "float32" */
    ds_quant_config quantization_config;
    /* ours */
    double ds_init_std;              /* ds_init_std, default 0.006 (PAPER) */

    /* The parsed JSON object (jansson json_t*), kept so unknown keys are written back unchanged. */
    void *json;
} ds_config;

typedef struct {
    int64_t total;            /* main model: embedding + layers + final norm + head */
    int64_t activated;        /* per token: embedding + head + attention + dense FFN + router + top-k + shared experts */
    int64_t mtp;              /* unique parameters of the MTP modules (embedding/head shared, not counted) */
    int64_t embedding, head;
    int64_t attention_per_layer;
    int64_t dense_ffn_per_layer;
    int64_t expert;           /* one routed expert */
    int64_t moe_layer;        /* all experts + shared + router (+ bias) */
    int64_t router;           /* gate matrix + e_score_correction_bias (noaux_tc) */
    int64_t layer_norms;      /* input + post-attention RMSNorm gains of one layer */
} ds_param_counts;

/* Derived sizes. */
static inline int ds_cfg_qk_head_dim(const ds_config *c) { return c->qk_nope_head_dim + c->qk_rope_head_dim; }
static inline int ds_cfg_is_moe_layer(const ds_config *c, int layer) {
    /* MTP layers (layer >= num_hidden_layers) are MoE when the model has experts */
    if (c->n_routed_experts <= 0) return 0;
    if (layer >= c->num_hidden_layers) return 1;
    return layer >= c->first_k_dense_replace && (c->moe_layer_freq <= 1 || layer % c->moe_layer_freq == 0);
}

/* Defaults of HF DeepseekV3Config for keys the file leaves out (then validation). */
void ds_config_defaults(ds_config *c);
/* Parse config.json text. `where` names the source for messages ("ckpt/config.json").
 * Errors: "config: <key>: <problem>: <where>". */
int ds_config_parse(ds_config *c, const char *json, size_t len, const char *where);
int ds_config_load_file(ds_config *c, const char *path);
/* Serialize (pretty, sorted as loaded, unknown keys kept). *out is malloc'd, NUL-terminated. */
int ds_config_to_json(const ds_config *c, char **out);
/* Write config.json atomically ("-" = stdout). */
int ds_config_save_file(const ds_config *c, const char *path);
int ds_config_validate(const ds_config *c, const char *where);
/* Parameter counts (spec section 1.3). Every field is -1 if the config is so large that a count
 * would overflow int64 (ds_config_validate rejects such configs). */
void ds_config_counts(const ds_config *c, ds_param_counts *out);
/* "671.03B total, 37.55B activated per token, 11.61B MTP" (units K/M/B/T). */
void ds_param_counts_format(const ds_param_counts *p, char *buf, size_t n);
/* One parameter count as text with a unit: 671026419200 -> "671.03B", 512 -> "512". */
void ds_param_count_str(int64_t n, char *buf, size_t size);
/* Keys "params_total", "params_activated", "params_mtp" into an open JSON object (metrics records). */
void ds_param_counts_jsonw(const ds_param_counts *p, ds_jsonw *w);
int ds_config_copy(ds_config *dst, const ds_config *src);
/* Did the parsed config.json set `key` (0: the default was used, or the config was built in code)? */
int ds_config_has_key(const ds_config *c, const char *key);
void ds_config_free(ds_config *c);

#endif
