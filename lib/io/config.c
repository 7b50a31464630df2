/* config.c — DeepseekV3Config keys <-> ds_config.
 *
 * Every key is described once in a field table (name, alias, type, limits, default); parsing,
 * defaults, and writing back are loops over those tables. Writing starts from the JSON object that
 * was loaded and replaces a key only when its value no longer reads back as the struct's value, so
 * unknown keys, key order, spelling (1 vs 1.0, "type" vs "rope_type", an eos list) all survive a
 * load/save round trip.
 */
#include "io/config.h"
#include "io/kind.h"

#include "core/err.h"
#include "core/file.h"
#include "io/json.h"

#include <limits.h>
#include <math.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    K_INT,   /* int */
    K_REAL,  /* double; JSON integers accepted */
    K_BOOL,  /* int 0/1; JSON true/false only */
    K_STR,   /* char[size]; optional list of accepted values */
    K_ENUM,  /* int index into choices */
    K_TOKID, /* int token id: integer >= 0, null (-1), or a list whose first element is used */
    K_INT2,  /* int[2] of positive integers */
} kind_t;

enum {
    F_POS = 1,       /* > 0 */
    F_NONNEG = 2,    /* >= 0 */
    F_NULL_ZERO = 4, /* null reads as 0 */
    F_OPTIONAL = 8,  /* not written back when absent from the file and equal to the default */
    F_NULL_EMPTY = 16, /* strings: null reads as "" */
    F_ZERO_NULL = 32,  /* 0 writes as null: Hugging Face's "absent" (transformers reads q_lora_rank 0 as a
                          rank-0 projection, null as q_proj) */
};

typedef struct {
    const char *key, *alias;
    kind_t kind;
    size_t off, size;
    int flags;
    double dflt;
    const char *dflt_s;
    const char *const *choices; /* NULL-terminated */
} field_t;

#define FLD(k, a, kind, member, flags, d, ds, ch) {k, a, kind, offsetof(ds_config, member), sizeof(((ds_config *)0)->member), flags, d, ds, ch}

static const char *const k_score[] = {"sigmoid", "softmax", NULL};
static const char *const k_topk[] = {"noaux_tc", "greedy", "group_limited_greedy", NULL};
static const char *const k_act[] = {"silu", NULL};
static const char *const k_dtype[] = {"bfloat16", "float32", "float16", NULL};

/* Defaults: transformers' DeepseekV3Config; for keys it dropped (moe_layer_freq, scoring_func,
 * topk_method, aux_loss_alpha, seq_aux) the DeepSeek-V3 remote code's configuration_deepseek.py. */
static const field_t top_fields[] = {
    FLD("vocab_size", NULL, K_INT, vocab_size, F_POS, 129280, NULL, NULL),
    FLD("hidden_size", NULL, K_INT, hidden_size, F_POS, 7168, NULL, NULL),
    FLD("intermediate_size", NULL, K_INT, intermediate_size, F_POS, 18432, NULL, NULL),
    FLD("moe_intermediate_size", NULL, K_INT, moe_intermediate_size, F_POS, 2048, NULL, NULL),
    FLD("num_hidden_layers", NULL, K_INT, num_hidden_layers, F_POS, 61, NULL, NULL),
    FLD("num_nextn_predict_layers", "num_mtp_layers", K_INT, num_nextn_predict_layers, F_NONNEG, 1, NULL, NULL),
    FLD("first_k_dense_replace", NULL, K_INT, first_k_dense_replace, F_NONNEG, 3, NULL, NULL),
    FLD("moe_layer_freq", NULL, K_INT, moe_layer_freq, F_POS, 1, NULL, NULL),
    FLD("num_attention_heads", NULL, K_INT, num_attention_heads, F_POS, 128, NULL, NULL),
    FLD("num_key_value_heads", NULL, K_INT, num_key_value_heads, F_POS | F_NULL_ZERO, 128, NULL, NULL),
    FLD("n_routed_experts", NULL, K_INT, n_routed_experts, F_NONNEG | F_NULL_ZERO, 256, NULL, NULL),
    FLD("n_shared_experts", NULL, K_INT, n_shared_experts, F_NONNEG | F_NULL_ZERO, 1, NULL, NULL),
    FLD("num_experts_per_tok", NULL, K_INT, num_experts_per_tok, F_POS, 8, NULL, NULL),
    FLD("n_group", NULL, K_INT, n_group, F_POS, 8, NULL, NULL),
    FLD("topk_group", NULL, K_INT, topk_group, F_POS, 4, NULL, NULL),
    FLD("scoring_func", NULL, K_ENUM, scoring_func, 0, 0, NULL, k_score),
    FLD("topk_method", NULL, K_STR, topk_method, 0, 0, "noaux_tc", k_topk),
    FLD("norm_topk_prob", NULL, K_BOOL, norm_topk_prob, 0, 1, NULL, NULL),
    FLD("routed_scaling_factor", NULL, K_REAL, routed_scaling_factor, F_POS, 2.5, NULL, NULL),
    FLD("q_lora_rank", NULL, K_INT, q_lora_rank, F_NONNEG | F_NULL_ZERO | F_ZERO_NULL, 1536, NULL, NULL),
    FLD("kv_lora_rank", NULL, K_INT, kv_lora_rank, F_POS, 512, NULL, NULL),
    FLD("qk_nope_head_dim", NULL, K_INT, qk_nope_head_dim, F_POS, 128, NULL, NULL),
    FLD("qk_rope_head_dim", NULL, K_INT, qk_rope_head_dim, F_POS, 64, NULL, NULL),
    FLD("v_head_dim", NULL, K_INT, v_head_dim, F_POS, 128, NULL, NULL),
    FLD("rope_theta", NULL, K_REAL, rope_theta, F_POS, 10000, NULL, NULL),
    FLD("max_position_embeddings", NULL, K_INT, max_position_embeddings, F_POS, 4096, NULL, NULL),
    FLD("rope_interleave", NULL, K_BOOL, rope_interleave, 0, 1, NULL, NULL),
    FLD("rms_norm_eps", NULL, K_REAL, rms_norm_eps, F_POS, 1e-6, NULL, NULL),
    FLD("hidden_act", NULL, K_STR, hidden_act, 0, 0, "silu", k_act),
    FLD("tie_word_embeddings", NULL, K_BOOL, tie_word_embeddings, 0, 0, NULL, NULL),
    FLD("aux_loss_alpha", NULL, K_REAL, aux_loss_alpha, F_NONNEG, 0.001, NULL, NULL),
    FLD("seq_aux", NULL, K_BOOL, seq_aux, 0, 1, NULL, NULL),
    FLD("bos_token_id", NULL, K_TOKID, bos_token_id, 0, 0, NULL, NULL),
    FLD("eos_token_id", NULL, K_TOKID, eos_token_id, 0, 1, NULL, NULL),
    FLD("pad_token_id", NULL, K_TOKID, pad_token_id, 0, -1, NULL, NULL),
    FLD("initializer_range", NULL, K_REAL, initializer_range, F_NONNEG, 0.02, NULL, NULL),
    FLD("torch_dtype", "dtype", K_STR, torch_dtype, 0, 0, "bfloat16", k_dtype),
    FLD("ds_init_std", NULL, K_REAL, ds_init_std, F_POS, 0.006, NULL, NULL),
};
#undef FLD

#define RFLD(k, kind, member, flags, d) {k, NULL, kind, offsetof(ds_rope_scaling, member), sizeof(((ds_rope_scaling *)0)->member), flags, d, NULL, NULL}
/* rope_scaling keys read when type is "yarn" (spec section 7.4). 0 = absent for the mscales and
 * attention_factor, as in transformers, which tests them for truth. */
static const field_t rope_fields[] = {
    RFLD("factor", K_REAL, factor, F_POS, 0),
    RFLD("original_max_position_embeddings", K_INT, original_max_position_embeddings, F_POS, 4096),
    RFLD("beta_fast", K_REAL, beta_fast, F_POS, 32),
    RFLD("beta_slow", K_REAL, beta_slow, F_POS, 1),
    RFLD("mscale", K_REAL, mscale, F_NONNEG | F_OPTIONAL, 0),
    RFLD("mscale_all_dim", K_REAL, mscale_all_dim, F_NONNEG | F_OPTIONAL, 0),
    RFLD("attention_factor", K_REAL, attention_factor, F_NONNEG | F_OPTIONAL, 0),
    RFLD("truncate", K_BOOL, truncate, F_OPTIONAL, 1),
};
#undef RFLD

static const char *const k_qmethod[] = {"fp8", NULL};
static const char *const k_qfmt[] = {"e4m3", NULL};
static const char *const k_qact[] = {"dynamic", NULL};
static const char *const k_qscale[] = {"", "ue8m0", NULL};
#define QFLD(k, kind, member, flags, d, ds, ch) {k, NULL, kind, offsetof(ds_quant_config, member), sizeof(((ds_quant_config *)0)->member), flags, d, ds, ch}
/* in the order of DeepSeek's config.json (V3, and V3.1 with scale_fmt), which a new object is written in */
static const field_t quant_fields[] = {
    QFLD("activation_scheme", K_STR, activation_scheme, 0, 0, "dynamic", k_qact),
    QFLD("fmt", K_STR, fmt, 0, 0, "e4m3", k_qfmt),
    QFLD("quant_method", K_STR, quant_method, 0, 0, "fp8", k_qmethod),
    QFLD("scale_fmt", K_STR, scale_fmt, F_OPTIONAL | F_NULL_EMPTY, 0, "", k_qscale),
    QFLD("weight_block_size", K_INT2, weight_block_size, 0, 128, NULL, NULL),
};
#undef QFLD

#define NFIELDS(t) (sizeof(t) / sizeof((t)[0]))

/* ---- one field ------------------------------------------------------------------------------- */

static void set_default(const field_t *f, void *base) {
    char *p = (char *)base + f->off;
    switch (f->kind) {
    case K_INT: case K_BOOL: case K_TOKID: case K_ENUM: *(int *)p = (int)f->dflt; break;
    case K_REAL: *(double *)p = f->dflt; break;
    case K_STR: snprintf(p, f->size, "%s", f->dflt_s); break;
    case K_INT2: ((int *)p)[0] = ((int *)p)[1] = (int)f->dflt; break;
    }
}

static void choices_text(const field_t *f, char *buf, size_t n) {
    size_t o = 0;
    int count = 0;
    while (f->choices[count]) count++;
    o += (size_t)snprintf(buf, n, count == 1 ? "expected " : "expected one of: ");
    for (int i = 0; i < count && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s\"%s\"", i ? ", " : "", f->choices[i]);
}

static int int_problem(const field_t *f, const char *prefix, const char *where) {
    const char *what = (f->flags & F_POS) ? "must be a positive integer"
                       : (f->flags & F_NONNEG) ? "must be a non-negative integer" : "must be an integer";
    return ds_fail(DS_ERR, "config: %s%s: %s: %s", prefix, f->key, what, where);
}

static int read_int(const field_t *f, const json_t *v, int *out, const char *prefix, const char *where) {
    if (!json_is_integer(v)) return int_problem(f, prefix, where);
    json_int_t x = json_integer_value(v);
    if ((f->flags & F_POS) && x <= 0) return int_problem(f, prefix, where);
    if ((f->flags & F_NONNEG) && x < 0) return int_problem(f, prefix, where);
    if (x > INT_MAX || x < INT_MIN)
        return ds_fail(DS_ERR, "config: %s%s: too large (%" JSON_INTEGER_FORMAT " > %d): %s", prefix, f->key, x,
                       INT_MAX, where);
    *out = (int)x;
    return 0;
}

/* Read JSON value v (not NULL) into base+f->off. Messages name the key with its prefix ("rope_scaling."). */
static int read_field(const field_t *f, const json_t *v, void *base, const char *prefix, const char *where) {
    char *p = (char *)base + f->off;
    if (json_is_null(v)) {
        if (f->flags & F_NULL_ZERO) { *(int *)p = 0; return 0; }
        if (f->flags & F_NULL_EMPTY) { p[0] = 0; return 0; }
        if (f->kind == K_TOKID) { *(int *)p = -1; return 0; }
    }
    switch (f->kind) {
    case K_INT: return read_int(f, v, (int *)p, prefix, where);
    case K_REAL: {
        double x = json_number_value(v);
        const char *what = (f->flags & F_POS) ? "must be a positive number"
                           : (f->flags & F_NONNEG) ? "must be a non-negative number" : "must be a number";
        if (!json_is_number(v) || !isfinite(x) || ((f->flags & F_POS) && !(x > 0)) || ((f->flags & F_NONNEG) && x < 0))
            return ds_fail(DS_ERR, "config: %s%s: %s: %s", prefix, f->key, what, where);
        *(double *)p = x;
        return 0;
    }
    case K_BOOL:
        if (!json_is_boolean(v)) return ds_fail(DS_ERR, "config: %s%s: must be true or false: %s", prefix, f->key, where);
        *(int *)p = json_is_true(v);
        return 0;
    case K_STR:
    case K_ENUM: {
        if (!json_is_string(v)) return ds_fail(DS_ERR, "config: %s%s: must be a string: %s", prefix, f->key, where);
        const char *s = json_string_value(v);
        int idx = -1;
        if (f->choices) {
            for (int i = 0; f->choices[i]; i++)
                if (!strcmp(s, f->choices[i])) idx = i;
            if (idx < 0 || strlen(s) != json_string_length(v)) {
                char exp[200];
                choices_text(f, exp, sizeof exp);
                return ds_fail(DS_ERR, "config: %s%s: unsupported value \"%.60s\" (%s): %s", prefix, f->key, s, exp, where);
            }
        }
        if (f->kind == K_ENUM) {
            *(int *)p = idx;
        } else {
            if (json_string_length(v) >= f->size)
                return ds_fail(DS_ERR, "config: %s%s: longer than %zu characters: %s", prefix, f->key, f->size - 1, where);
            memcpy(p, s, json_string_length(v) + 1);
        }
        return 0;
    }
    case K_TOKID: {
        const json_t *x = json_is_array(v) && json_array_size(v) > 0 ? json_array_get(v, 0) : v;
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT_MAX)
            return ds_fail(DS_ERR, "config: %s%s: must be a token id (a non-negative integer) or null: %s", prefix,
                           f->key, where);
        *(int *)p = (int)json_integer_value(x);
        return 0;
    }
    case K_INT2: {
        int *q = (int *)p;
        if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(json_array_get(v, 0)) ||
            !json_is_integer(json_array_get(v, 1)) || json_integer_value(json_array_get(v, 0)) <= 0 ||
            json_integer_value(json_array_get(v, 1)) <= 0 || json_integer_value(json_array_get(v, 0)) > INT_MAX ||
            json_integer_value(json_array_get(v, 1)) > INT_MAX)
            return ds_fail(DS_ERR, "config: %s%s: must be an array of 2 positive integers: %s", prefix, f->key, where);
        q[0] = (int)json_integer_value(json_array_get(v, 0));
        q[1] = (int)json_integer_value(json_array_get(v, 1));
        return 0;
    }
    }
    return 0;
}

static int field_equal(const field_t *f, const void *a, const void *b) {
    const char *p = (const char *)a + f->off, *q = (const char *)b + f->off;
    switch (f->kind) {
    case K_REAL: return *(const double *)p == *(const double *)q;
    case K_STR: return !strcmp(p, q);
    default: return !memcmp(p, q, f->size);
    }
}

static int field_is_default(const field_t *f, const void *base) {
    _Alignas(max_align_t) unsigned char tmp[sizeof(ds_config)];
    set_default(f, tmp);
    return field_equal(f, base, tmp);
}

static json_t *field_to_json(const field_t *f, const void *base) {
    const char *p = (const char *)base + f->off;
    if ((f->flags & F_ZERO_NULL) && *(const int *)p == 0) return json_null();
    switch (f->kind) {
    case K_INT: return json_integer(*(const int *)p);
    case K_REAL: return json_real(*(const double *)p);
    case K_BOOL: return json_boolean(*(const int *)p);
    case K_STR: return json_string(p);
    case K_ENUM: return json_string(f->choices[*(const int *)p]);
    case K_TOKID: return *(const int *)p < 0 ? json_null() : json_integer(*(const int *)p);
    case K_INT2: return json_pack("[ii]", ((const int *)p)[0], ((const int *)p)[1]);
    }
    return json_null();
}

/* ---- a table of fields ----------------------------------------------------------------------- */

static json_t *get_key(const json_t *obj, const field_t *f, const char **used) {
    json_t *v = json_object_get(obj, f->key);
    *used = f->key;
    if (!v && f->alias && (v = json_object_get(obj, f->alias))) *used = f->alias;
    return v;
}

static const field_t *find_field(const field_t *t, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].key, key)) return &t[i];
    return NULL;
}

static void table_defaults(const field_t *t, size_t n, void *base) {
    for (size_t i = 0; i < n; i++) set_default(&t[i], base);
}

static int table_read(const field_t *t, size_t n, const json_t *obj, void *base, const char *prefix, const char *where) {
    for (size_t i = 0; i < n; i++) {
        const char *used;
        const json_t *v = get_key(obj, &t[i], &used);
        if (v) DS_TRY(read_field(&t[i], v, base, prefix, where));
    }
    return 0;
}

/* Bring obj up to date with base: a key is rewritten only when its current value does not read back
 * as the struct's; new keys are appended in table order. */
static int table_update(const field_t *t, size_t n, json_t *obj, const void *base) {
    for (size_t i = 0; i < n; i++) {
        const char *used;
        const json_t *v = get_key(obj, &t[i], &used);
        if (v) {
            _Alignas(max_align_t) unsigned char tmp[sizeof(ds_config)];
            memset(tmp, 0, sizeof tmp);
            /* a 0 written as 0 (not null) is rewritten even though it reads back the same */
            int zero_as_int = (t[i].flags & F_ZERO_NULL) && !*(const int *)((const char *)base + t[i].off) && !json_is_null(v);
            if (!zero_as_int && read_field(&t[i], v, tmp, "", "") == 0 && field_equal(&t[i], tmp, base)) continue;
        } else if ((t[i].flags & F_OPTIONAL) && field_is_default(&t[i], base)) {
            continue;
        }
        if (json_object_set_new(obj, used, field_to_json(&t[i], base)))
            return ds_fail(DS_ERR, "config: out of memory writing %s", used);
    }
    ds_err_clear();
    return 0;
}

/* ---- rope_scaling / quantization_config ------------------------------------------------------ */

static const char *rope_key(const json_t *obj) {
    return !json_object_get(obj, "rope_scaling") && json_object_get(obj, "rope_parameters") ? "rope_parameters"
                                                                                            : "rope_scaling";
}

static int read_rope(ds_config *c, const json_t *obj, const char *where) {
    const char *key = rope_key(obj);
    const json_t *r = json_object_get(obj, key);
    if (!r || json_is_null(r)) return 0;
    if (!json_is_object(r)) return ds_fail(DS_ERR, "config: %s: must be an object or null: %s", key, where);
    const char *tkey = json_object_get(r, "rope_type") ? "rope_type" : "type";
    const json_t *type = json_object_get(r, tkey);
    if (type && !json_is_string(type)) return ds_fail(DS_ERR, "config: %s.%s: must be a string: %s", key, tkey, where);
    const char *ts = type ? json_string_value(type) : "default";
    /* transformers v5 writes rope_parameters with rope_theta inside; it wins over the top-level key */
    const json_t *theta = json_object_get(r, "rope_theta");
    if (theta) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "%s.", key);
        DS_TRY(read_field(find_field(top_fields, NFIELDS(top_fields), "rope_theta"), theta, c, prefix, where));
    }
    if (!strcmp(ts, "default")) return 0;
    if (strcmp(ts, "yarn"))
        return ds_fail(DS_ERR, "config: %s.%s: unsupported value \"%.60s\" (expected \"yarn\" or \"default\"): %s", key,
                       tkey, ts, where);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.", key);
    ds_rope_scaling *rs = &c->rope_scaling;
    rs->original_max_position_embeddings = c->max_position_embeddings; /* transformers' default */
    DS_TRY(table_read(rope_fields, NFIELDS(rope_fields), r, rs, prefix, where));
    if (!json_object_get(r, "factor")) return ds_fail(DS_ERR, "config: %s.factor: required for yarn: %s", key, where);
    if (rs->factor < 1) return ds_fail(DS_ERR, "config: %s.factor: must be at least 1: %s", key, where);
    rs->enabled = 1;
    return 0;
}

static int write_rope(const ds_config *c, json_t *obj) {
    const char *key = rope_key(obj);
    json_t *r = json_object_get(obj, key);
    if (!c->rope_scaling.enabled) {
        const json_t *type = json_is_object(r) ? json_object_get(r, "rope_type") : NULL;
        if (!type && json_is_object(r)) type = json_object_get(r, "type");
        if (json_is_string(type) && !strcmp(json_string_value(type), "yarn")) json_object_del(obj, key);
        else if (json_is_object(r) && json_object_get(r, "rope_theta"))
            json_object_set_new(r, "rope_theta", json_real(c->rope_theta));
        return 0;
    }
    json_t *nr = json_is_object(r) ? json_deep_copy(r) : json_object();
    if (!nr) return ds_fail(DS_ERR, "config: out of memory writing %s", key);
    int has_type = json_object_get(nr, "type") != NULL, has_rope_type = json_object_get(nr, "rope_type") != NULL;
    if (has_type || !has_rope_type) json_object_set_new(nr, "type", json_string("yarn"));
    if (has_rope_type || !has_type) json_object_set_new(nr, "rope_type", json_string("yarn"));
    int rc = table_update(rope_fields, NFIELDS(rope_fields), nr, &c->rope_scaling);
    const json_t *theta = json_object_get(nr, "rope_theta");
    if (!rc && theta && json_number_value(theta) != c->rope_theta)
        json_object_set_new(nr, "rope_theta", json_real(c->rope_theta));
    if (!rc && json_object_set_new(obj, key, nr)) rc = ds_fail(DS_ERR, "config: out of memory writing %s", key);
    else if (rc) json_decref(nr);
    return rc;
}

static int read_quant(ds_config *c, const json_t *obj, const char *where) {
    const json_t *q = json_object_get(obj, "quantization_config");
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q)) return ds_fail(DS_ERR, "config: quantization_config: must be an object or null: %s", where);
    if (!json_object_get(q, "quant_method"))
        return ds_fail(DS_ERR, "config: quantization_config.quant_method: required: %s", where);
    DS_TRY(table_read(quant_fields, NFIELDS(quant_fields), q, &c->quantization_config, "quantization_config.", where));
    c->quantization_config.enabled = 1;
    return 0;
}

static int write_quant(const ds_config *c, json_t *obj) {
    json_t *q = json_object_get(obj, "quantization_config");
    if (!c->quantization_config.enabled) {
        if (json_is_object(q)) json_object_del(obj, "quantization_config");
        return 0;
    }
    json_t *nq = json_is_object(q) ? json_deep_copy(q) : json_object();
    if (!nq) return ds_fail(DS_ERR, "config: out of memory writing quantization_config");
    int rc = table_update(quant_fields, NFIELDS(quant_fields), nq, &c->quantization_config);
    if (!rc && json_object_set_new(obj, "quantization_config", nq))
        rc = ds_fail(DS_ERR, "config: out of memory writing quantization_config");
    else if (rc) json_decref(nq);
    return rc;
}

/* ---- public ---------------------------------------------------------------------------------- */

/* Does obj describe a model: a size of the network, or Hugging Face's model_type / architectures (with
 * which {"model_type": "deepseek_v3"} is, as in transformers, the full V3)? Token ids or a dtype alone
 * (generation_config.json, tokenizer_config.json) do not. */
static int has_model_key(const json_t *obj) {
    static const char *keys[] = {"model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
                                 "moe_intermediate_size", "num_hidden_layers", "num_attention_heads", "n_routed_experts",
                                 "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (json_object_get(obj, keys[i])) return 1;
    return 0;
}

int ds_config_has_key(const ds_config *c, const char *key) {
    return c->json && json_object_get(c->json, key) != NULL;
}

void ds_config_defaults(ds_config *c) {
    memset(c, 0, sizeof *c);
    table_defaults(top_fields, NFIELDS(top_fields), c);
    table_defaults(rope_fields, NFIELDS(rope_fields), &c->rope_scaling);
    table_defaults(quant_fields, NFIELDS(quant_fields), &c->quantization_config);
    c->rope_scaling.enabled = 0;
    c->rope_scaling.factor = 1;
    c->quantization_config.enabled = 0;
}

int ds_config_parse(ds_config *c, const char *text, size_t len, const char *where) {
    ds_config_defaults(c);
    json_t *obj = ds_json_parse(text, len, "config", where);
    if (!obj) return DS_ERR;
    if (!json_is_object(obj)) {
        json_decref(obj);
        return ds_fail(DS_ERR, "config: not a JSON object: %s", where);
    }
    int rc = table_read(top_fields, NFIELDS(top_fields), obj, c, "", where);
    if (!rc) rc = read_rope(c, obj, where);
    if (!rc) rc = read_quant(c, obj, where);
    if (!rc && c->num_key_value_heads == 0) c->num_key_value_heads = c->num_attention_heads; /* null */
    if (!rc) {
        const json_t *bias = json_object_get(obj, "attention_bias");
        if (bias && !json_is_false(bias) && !json_is_null(bias))
            rc = ds_fail(DS_ERR, "config: attention_bias: unsupported (DeepSeek-V3 projections have no bias): %s", where);
    }
    if (!rc) rc = ds_config_validate(c, where);
    if (!rc && !has_model_key(obj)) /* a JSON file of something else would become the 671B default */
        rc = ds_fail(DS_ERR, "config: none of the model's keys (model_type, hidden_size, num_hidden_layers, ...): %s", where);
    if (rc) {
        json_decref(obj);
        c->json = NULL;
        return rc;
    }
    c->json = obj;
    return 0;
}

int ds_config_load_file(ds_config *c, const char *path) {
    static const ds_kind takes[] = {DS_KIND_CONFIG, DS_KIND_JSON, DS_KIND_UNKNOWN};
    char *text;
    size_t len;
    ds_config_defaults(c);
    int rc = ds_read_file(path, &text, &len, 64u << 20);
    if (rc) return ds_kind_explain(rc, path, "config", "a model config.json", takes);
    rc = ds_config_parse(c, text, len, ds_is_stdio(path) ? "<stdin>" : path);
    free(text);
    return ds_kind_explain(rc, path, "config", "a model config.json", takes);
}

int ds_config_to_json(const ds_config *c, char **out) {
    json_t *obj = c->json ? json_deep_copy(c->json) : json_object();
    if (!obj) return ds_fail(DS_ERR, "config: out of memory");
    int rc = table_update(top_fields, NFIELDS(top_fields), obj, c);
    if (!rc) rc = write_rope(c, obj);
    if (!rc) rc = write_quant(c, obj);
    if (!rc) rc = ds_json_dump(obj, 2, out);
    json_decref(obj);
    return rc;
}

int ds_config_save_file(const ds_config *c, const char *path) {
    char *text;
    DS_TRY(ds_config_to_json(c, &text));
    int rc = ds_atomic_write_file(path, text, strlen(text));
    free(text);
    return rc;
}

int ds_config_copy(ds_config *dst, const ds_config *src) {
    *dst = *src;
    dst->json = NULL;
    if (src->json && !(dst->json = json_deep_copy(src->json))) return ds_fail(DS_ERR, "config: out of memory");
    return 0;
}

void ds_config_free(ds_config *c) {
    if (c && c->json) json_decref(c->json);
    if (c) c->json = NULL;
}

/* ---- parameter counts ------------------------------------------------------------------------ */

typedef struct {
    int overflow;
} acc_t;

static int64_t mul(acc_t *a, int64_t x, int64_t y) {
    int64_t r;
    if (__builtin_mul_overflow(x, y, &r)) a->overflow = 1;
    return r;
}
static int64_t add(acc_t *a, int64_t x, int64_t y) {
    int64_t r;
    if (__builtin_add_overflow(x, y, &r)) a->overflow = 1;
    return r;
}

static int counts_checked(const ds_config *c, ds_param_counts *p) {
    acc_t a = {0};
    memset(p, 0, sizeof *p);
    int64_t d = c->hidden_size, H = c->num_attention_heads;
    int64_t qk = (int64_t)c->qk_nope_head_dim + c->qk_rope_head_dim;
    int64_t attn;
    if (c->q_lora_rank > 0) /* q_a_proj, q_a_layernorm, q_b_proj */
        attn = add(&a, add(&a, mul(&a, d, c->q_lora_rank), c->q_lora_rank), mul(&a, c->q_lora_rank, mul(&a, H, qk)));
    else /* q_proj */
        attn = mul(&a, d, mul(&a, H, qk));
    attn = add(&a, attn, mul(&a, d, (int64_t)c->kv_lora_rank + c->qk_rope_head_dim)); /* kv_a_proj_with_mqa */
    attn = add(&a, attn, c->kv_lora_rank);                                              /* kv_a_layernorm */
    attn = add(&a, attn, mul(&a, c->kv_lora_rank, mul(&a, H, (int64_t)c->qk_nope_head_dim + c->v_head_dim)));
    attn = add(&a, attn, mul(&a, mul(&a, H, c->v_head_dim), d)); /* o_proj */
    p->attention_per_layer = attn;
    p->layer_norms = 2 * d;
    p->dense_ffn_per_layer = mul(&a, 3, mul(&a, d, c->intermediate_size));
    p->expert = mul(&a, 3, mul(&a, d, c->moe_intermediate_size));
    int has_bias = !strcmp(c->topk_method, "noaux_tc");
    p->router = c->n_routed_experts > 0 ? add(&a, mul(&a, c->n_routed_experts, d), has_bias ? c->n_routed_experts : 0) : 0;
    p->moe_layer = add(&a, mul(&a, (int64_t)c->n_routed_experts + c->n_shared_experts, p->expert), p->router);
    int64_t moe_active = add(&a, mul(&a, (int64_t)c->num_experts_per_tok + c->n_shared_experts, p->expert), p->router);
    p->embedding = mul(&a, c->vocab_size, d);
    p->head = c->tie_word_embeddings ? 0 : p->embedding;

    int64_t base = add(&a, add(&a, p->embedding, p->head), d); /* + final norm */
    /* Layer kinds in closed form (ds_cfg_is_moe_layer), so absurd layer counts cost nothing. */
    int64_t L = c->num_hidden_layers, k0 = c->first_k_dense_replace < L ? c->first_k_dense_replace : L, n_moe = 0;
    if (c->n_routed_experts > 0) {
        int64_t f = c->moe_layer_freq <= 1 ? 1 : c->moe_layer_freq;
        n_moe = (L + f - 1) / f - (k0 + f - 1) / f; /* multiples of f in [k0, L) */
    }
    int64_t n_dense = L - n_moe, common = add(&a, attn, p->layer_norms);
    int64_t total = add(&a, base, mul(&a, L, common)), active = total;
    total = add(&a, total, add(&a, mul(&a, n_moe, p->moe_layer), mul(&a, n_dense, p->dense_ffn_per_layer)));
    active = add(&a, active, add(&a, mul(&a, n_moe, moe_active), mul(&a, n_dense, p->dense_ffn_per_layer)));
    /* MTP module: enorm, hnorm, eh_proj [d, 2d], one block (MoE when the model has experts), shared_head.norm;
     * the embedding and head are shared */
    int64_t one = add(&a, mul(&a, 3, d), mul(&a, d, 2 * d));
    one = add(&a, one, add(&a, common, c->n_routed_experts > 0 ? p->moe_layer : p->dense_ffn_per_layer));
    int64_t mtp = mul(&a, c->num_nextn_predict_layers, one);
    p->total = total;
    p->activated = active;
    p->mtp = mtp;
    if (a.overflow) memset(p, 0xff, sizeof *p); /* every field -1 */
    return a.overflow;
}

void ds_config_counts(const ds_config *c, ds_param_counts *out) { counts_checked(c, out); }

void ds_param_count_str(int64_t n, char *buf, size_t size) {
    static const struct { double div; const char *unit; } u[] = {{1e12, "T"}, {1e9, "B"}, {1e6, "M"}, {1e3, "K"}};
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++)
        if ((double)n >= u[i].div) {
            snprintf(buf, size, "%.2f%s", (double)n / u[i].div, u[i].unit);
            return;
        }
    snprintf(buf, size, "%lld", (long long)n);
}

void ds_param_counts_format(const ds_param_counts *p, char *buf, size_t n) {
    char t[32], a[32], m[32];
    ds_param_count_str(p->total, t, sizeof t);
    ds_param_count_str(p->activated, a, sizeof a);
    ds_param_count_str(p->mtp, m, sizeof m);
    snprintf(buf, n, "%s total, %s activated per token, %s MTP", t, a, m);
}

void ds_param_counts_jsonw(const ds_param_counts *p, ds_jsonw *w) {
    ds_jsonw_kint(w, "params_total", p->total);
    ds_jsonw_kint(w, "params_activated", p->activated);
    ds_jsonw_kint(w, "params_mtp", p->mtp);
}

/* ---- validation ------------------------------------------------------------------------------ */

int ds_config_validate(const ds_config *c, const char *where) {
#define BAD(key, ...) return ds_fail(DS_ERR, "config: " key ": " __VA_ARGS__)
    /* per-key limits again, for configs built in code rather than parsed */
    for (size_t i = 0; i < NFIELDS(top_fields); i++) {
        const field_t *f = &top_fields[i];
        const char *p = (const char *)c + f->off;
        if (f->kind == K_INT && (f->flags & F_POS) && *(const int *)p <= 0 && !(f->flags & F_NULL_ZERO))
            return int_problem(f, "", where);
        if (f->kind == K_INT && (f->flags & F_NONNEG) && *(const int *)p < 0) return int_problem(f, "", where);
        if (f->kind == K_REAL && (!isfinite(*(const double *)p) || ((f->flags & F_POS) && !(*(const double *)p > 0)) ||
                                  ((f->flags & F_NONNEG) && *(const double *)p < 0)))
            return ds_fail(DS_ERR, "config: %s: must be a %s number: %s", f->key,
                           (f->flags & F_POS) ? "positive" : "non-negative", where);
    }
    if (c->num_key_value_heads <= 0) BAD("num_key_value_heads", "must be a positive integer: %s", where);
    if (c->first_k_dense_replace > c->num_hidden_layers)
        BAD("first_k_dense_replace", "must not exceed num_hidden_layers (%d > %d): %s", c->first_k_dense_replace,
            c->num_hidden_layers, where);
    if (c->qk_rope_head_dim % 2) BAD("qk_rope_head_dim", "must be even (RoPE rotates pairs): %s", where);
    if (c->tie_word_embeddings)
        BAD("tie_word_embeddings", "tied embeddings are not supported (DeepSeek-V3 has a separate lm_head): %s", where);
    if (c->scoring_func != DS_SCORE_SIGMOID && c->scoring_func != DS_SCORE_SOFTMAX)
        BAD("scoring_func", "unsupported value: %s", where);
    if (c->n_routed_experts > 0) {
        if (c->num_experts_per_tok > c->n_routed_experts)
            BAD("num_experts_per_tok", "must not exceed n_routed_experts (%d > %d): %s", c->num_experts_per_tok,
                c->n_routed_experts, where);
        if (c->n_routed_experts % c->n_group)
            BAD("n_group", "must divide n_routed_experts (%d %% %d != 0): %s", c->n_routed_experts, c->n_group, where);
        if (c->topk_group > c->n_group)
            BAD("topk_group", "must not exceed n_group (%d > %d): %s", c->topk_group, c->n_group, where);
        if (strcmp(c->topk_method, "greedy") && c->num_experts_per_tok > c->topk_group * (c->n_routed_experts / c->n_group))
            BAD("num_experts_per_tok", "more than the %d experts in topk_group groups (%d > %d): %s",
                c->topk_group * (c->n_routed_experts / c->n_group), c->num_experts_per_tok,
                c->topk_group * (c->n_routed_experts / c->n_group), where);
    }
    const struct { const char *key; int id; } toks[] = {
        {"bos_token_id", c->bos_token_id}, {"eos_token_id", c->eos_token_id}, {"pad_token_id", c->pad_token_id}};
    for (int i = 0; i < 3; i++)
        if (toks[i].id >= c->vocab_size)
            return ds_fail(DS_ERR, "config: %s: must be below vocab_size (%d >= %d): %s", toks[i].key, toks[i].id,
                           c->vocab_size, where);
    if (c->rope_scaling.enabled) {
        const ds_rope_scaling *r = &c->rope_scaling;
        if (!(r->factor >= 1) || !isfinite(r->factor)) BAD("rope_scaling.factor", "must be at least 1: %s", where);
        if (r->original_max_position_embeddings <= 0)
            BAD("rope_scaling.original_max_position_embeddings", "must be a positive integer: %s", where);
        if (!(r->beta_fast > 0) || !(r->beta_slow > 0)) BAD("rope_scaling.beta_fast", "must be a positive number: %s", where);
    }
    if (c->quantization_config.enabled) {
        const int *b = c->quantization_config.weight_block_size;
        if (b[0] <= 0 || b[1] <= 0)
            BAD("quantization_config.weight_block_size", "must be an array of 2 positive integers: %s", where);
    }
    /* Derived widths must fit an int (tensor shapes) and the counts an int64. */
    int64_t H = c->num_attention_heads;
    const struct { const char *key; int64_t width; } widths[] = {
        {"num_attention_heads", H * (c->qk_nope_head_dim + (int64_t)c->qk_rope_head_dim)},
        {"num_attention_heads", H * (c->qk_nope_head_dim + (int64_t)c->v_head_dim)},
        {"kv_lora_rank", (int64_t)c->kv_lora_rank + c->qk_rope_head_dim},
        {"hidden_size", 2 * (int64_t)c->hidden_size}, /* MTP eh_proj input */
    };
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++)
        if (widths[i].width > INT_MAX)
            return ds_fail(DS_ERR, "config: %s: derived projection width %lld too large: %s", widths[i].key,
                           (long long)widths[i].width, where);
    ds_param_counts pc;
    if (counts_checked(c, &pc)) return ds_fail(DS_ERR, "config: model too large (parameter count overflows): %s", where);
    return 0;
#undef BAD
}
