/* Unit tests for io/config: parsing, defaults, validation messages, round trips, parameter counts,
 * and io/json number formatting. Reference checks against transformers are in tests/ref/config.bats. */
#include "tap.h"

#include "core/err.h"
#include "core/file.h"
#include "io/json.h"
#include "io/config.h"

#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

static const char *root(void) {
    const char *r = getenv("DS_ROOT");
    return r && *r ? r : ".";
}

static int load_share(ds_config *c, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/share/configs/%s", root(), name);
    return ds_config_load_file(c, path);
}

static int parse(ds_config *c, const char *json) { return ds_config_parse(c, json, strlen(json), "t.json"); }

TEST(real_671b_counts_match_spec) {
    ds_config c;
    int rc = load_share(&c, "deepseek-v3-671b.json");
    CHECK(rc == 0, "loads: %s", ds_errmsg());
    if (rc) return;
    ds_param_counts p;
    ds_config_counts(&c, &p);
    /* spec 1.3: 671.03B total, 37.55B activated (direct count), 11.61B MTP; MLA 187.1M per layer;
     * dense FFN 396.4M; one expert 44.04M; MoE layer 11.32B */
    CHECK_REL((double)p.total, 671.03e9, 5e-5, "total");
    CHECK_REL((double)p.activated, 37.55e9, 5e-4, "activated");
    CHECK_REL((double)p.mtp, 11.61e9, 5e-4, "mtp");
    CHECK_REL((double)p.attention_per_layer, 187.1e6, 5e-4, "attention per layer");
    CHECK(p.dense_ffn_per_layer == 3LL * 7168 * 18432, "dense ffn %lld", (long long)p.dense_ffn_per_layer);
    CHECK(p.expert == 3LL * 7168 * 2048, "expert %lld", (long long)p.expert);
    CHECK(p.router == 256LL * 7168 + 256, "router with bias %lld", (long long)p.router);
    CHECK_REL((double)p.moe_layer, 11.32e9, 5e-4, "moe layer");
    CHECK(p.embedding == 129280LL * 7168 && p.head == p.embedding, "embedding and head");
    char buf[128];
    ds_param_counts_format(&p, buf, sizeof buf);
    CHECK(!strcmp(buf, "671.03B total, 37.55B activated per token, 11.61B MTP"), "format: %s", buf);
    CHECK(c.rope_scaling.enabled && c.rope_scaling.factor == 40 && c.rope_scaling.original_max_position_embeddings == 4096 &&
              c.rope_scaling.mscale == 1.0 && c.rope_scaling.mscale_all_dim == 1.0 && c.rope_scaling.beta_fast == 32 &&
              c.rope_scaling.beta_slow == 1 && c.rope_scaling.truncate == 1 && c.rope_scaling.attention_factor == 0,
          "yarn parsed");
    CHECK(c.quantization_config.enabled && !strcmp(c.quantization_config.quant_method, "fp8") &&
              !strcmp(c.quantization_config.fmt, "e4m3") && c.quantization_config.weight_block_size[0] == 128 &&
              c.quantization_config.weight_block_size[1] == 128 && !strcmp(c.quantization_config.scale_fmt, ""),
          "quantization_config parsed");
    CHECK(c.scoring_func == DS_SCORE_SIGMOID && !strcmp(c.topk_method, "noaux_tc") && c.norm_topk_prob == 1,
          "routing keys");
    CHECK(c.max_position_embeddings == 163840 && c.first_k_dense_replace == 3, "positions, dense layers");
    CHECK(ds_cfg_is_moe_layer(&c, 2) == 0 && ds_cfg_is_moe_layer(&c, 3) == 1 && ds_cfg_is_moe_layer(&c, 61) == 1,
          "layer kinds");
    ds_config_free(&c);
}

TEST(share_configs_load_and_count) {
    const char *names[] = {"tiny.json", "demo.json"};
    for (int i = 0; i < 2; i++) {
        ds_config c;
        int rc = load_share(&c, names[i]);
        CHECK(rc == 0, "%s loads: %s", names[i], ds_errmsg());
        if (rc) continue;
        ds_param_counts p;
        ds_config_counts(&c, &p);
        CHECK(p.total > 0 && p.activated > 0 && p.activated < p.total && p.mtp > 0, "%s counts %lld %lld %lld", names[i],
              (long long)p.total, (long long)p.activated, (long long)p.mtp);
        ds_config_free(&c);
    }
}

TEST(counts_by_hand_tiny) {
    /* a config small enough to count every tensor by hand */
    ds_config c;
    int rc = parse(&c, "{\"vocab_size\":10,\"hidden_size\":4,\"num_hidden_layers\":2,\"first_k_dense_replace\":1,"
                       "\"num_attention_heads\":2,\"num_key_value_heads\":2,\"q_lora_rank\":0,\"kv_lora_rank\":3,"
                       "\"qk_nope_head_dim\":2,\"qk_rope_head_dim\":2,\"v_head_dim\":1,\"intermediate_size\":5,"
                       "\"moe_intermediate_size\":3,\"n_routed_experts\":4,\"n_shared_experts\":1,\"num_experts_per_tok\":2,"
                       "\"n_group\":2,\"topk_group\":1,\"num_nextn_predict_layers\":1,\"bos_token_id\":0,\"eos_token_id\":1}");
    CHECK(rc == 0, "parses: %s", ds_errmsg());
    if (rc) return;
    ds_param_counts p;
    ds_config_counts(&c, &p);
    /* q_proj 2*4*4=32, kv_a 4*(3+2)=20, kv_a_norm 3, kv_b 3*2*(2+1)=18, o 2*1*4=8 */
    CHECK(p.attention_per_layer == 32 + 20 + 3 + 18 + 8, "attention %lld", (long long)p.attention_per_layer);
    int64_t attn = 81, norms = 8, dense = 3 * 4 * 5, expert = 3 * 4 * 3, router = 4 * 4 + 4;
    int64_t emb = 40, total = emb * 2 + 4 + (attn + norms + dense) + (attn + norms + 5 * expert + router);
    CHECK(p.total == total, "total %lld vs %lld", (long long)p.total, (long long)total);
    int64_t active = emb * 2 + 4 + (attn + norms + dense) + (attn + norms + 3 * expert + router);
    CHECK(p.activated == active, "activated %lld vs %lld", (long long)p.activated, (long long)active);
    int64_t mtp = 3 * 4 + 4 * 8 + attn + norms + 5 * expert + router;
    CHECK(p.mtp == mtp, "mtp %lld vs %lld", (long long)p.mtp, (long long)mtp);
    ds_config_free(&c);
}

TEST(counts_match_a_layer_by_layer_sum) {
    /* the closed form for dense/MoE layer counts against ds_cfg_is_moe_layer, layer by layer */
    int ok = 1, cases = 0;
    for (int freq = 1; freq <= 4; freq++)
        for (int k = 0; k <= 5; k++)
            for (int L = 1; L <= 9; L++)
                for (int E = 0; E <= 8; E += 8) {
                    if (k > L) continue;
                    char json[400];
                    snprintf(json, sizeof json,
                             "{\"vocab_size\":50,\"hidden_size\":8,\"num_hidden_layers\":%d,\"first_k_dense_replace\":%d,"
                             "\"moe_layer_freq\":%d,\"n_routed_experts\":%d,\"num_experts_per_tok\":2,\"n_group\":1,"
                             "\"topk_group\":1,\"num_attention_heads\":2,\"num_key_value_heads\":2,\"q_lora_rank\":4,"
                             "\"kv_lora_rank\":4,\"qk_nope_head_dim\":2,\"qk_rope_head_dim\":2,\"v_head_dim\":2,"
                             "\"intermediate_size\":6,\"moe_intermediate_size\":3,\"num_nextn_predict_layers\":2}",
                             L, k, freq, E);
                    ds_config c;
                    if (parse(&c, json)) {
                        ok = 0;
                        printf("# %s\n", ds_errmsg());
                        continue;
                    }
                    ds_param_counts p;
                    ds_config_counts(&c, &p);
                    int64_t moe_active = (2 + c.n_shared_experts) * p.expert + p.router;
                    int64_t total = p.embedding + p.head + 8, active = total, mtp = 0;
                    for (int l = 0; l < L + 2; l++) {
                        int moe = ds_cfg_is_moe_layer(&c, l);
                        int64_t common = p.attention_per_layer + p.layer_norms;
                        if (l >= L) {
                            mtp += 3 * 8 + 8 * 16 + common + (moe ? p.moe_layer : p.dense_ffn_per_layer);
                            continue;
                        }
                        total += common + (moe ? p.moe_layer : p.dense_ffn_per_layer);
                        active += common + (moe ? moe_active : p.dense_ffn_per_layer);
                    }
                    ok &= p.total == total && p.activated == active && p.mtp == mtp;
                    cases++;
                    ds_config_free(&c);
                }
    CHECK(ok, "closed-form counts equal the per-layer sums in %d configs", cases);
    ds_config c;
    CHECK(parse(&c, "{\"num_hidden_layers\":529529280}") == 0, "half a billion layers count instantly");
    ds_config_free(&c);
}

TEST(defaults_for_absent_keys) {
    ds_config c;
    /* a JSON object with none of the model's keys is some other file, not the 671B default */
    static const char *others[] = {"{}", "{\"bos_token_id\": 0, \"eos_token_id\": 1}",
                                   "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\", \"vocab\": {}}}"};
    for (int i = 0; i < 3; i++) {
        int bad = parse(&c, others[i]);
        CHECK(bad == DS_ERR && !strcmp(ds_errmsg(), "config: none of the model's keys (model_type, hidden_size, "
                                                    "num_hidden_layers, ...): t.json"),
              "%s is not a model config: %s", others[i], ds_errmsg());
    }
    int rc = parse(&c, "{\"model_type\": \"deepseek_v3\"}");
    CHECK(rc == 0, "model_type alone is the 671B default config: %s", ds_errmsg());
    CHECK(c.vocab_size == 129280 && c.hidden_size == 7168 && c.num_hidden_layers == 61 && c.q_lora_rank == 1536 &&
              c.max_position_embeddings == 4096 && c.num_key_value_heads == 128 && c.pad_token_id == -1 &&
              c.bos_token_id == 0 && c.eos_token_id == 1 && c.rope_theta == 10000 && c.rms_norm_eps == 1e-6 &&
              c.rope_interleave == 1 && c.num_nextn_predict_layers == 1 && !c.rope_scaling.enabled &&
              !c.quantization_config.enabled && c.ds_init_std == 0.006 && c.moe_layer_freq == 1 &&
              c.aux_loss_alpha == 0.001 && c.seq_aux == 1,
          "HF DeepseekV3Config defaults");
    ds_config_free(&c);
}

TEST(aliases_and_hf_v5_spellings) {
    ds_config c;
    int rc = parse(&c, "{\"num_mtp_layers\":2,\"dtype\":\"float32\",\"q_lora_rank\":null,\"num_key_value_heads\":null,"
                       "\"num_attention_heads\":16,\"eos_token_id\":[1,7],\"pad_token_id\":null,"
                       "\"rope_parameters\":{\"rope_type\":\"yarn\",\"factor\":4,\"rope_theta\":50000.0}}");
    CHECK(rc == 0, "parses: %s", ds_errmsg());
    if (rc) return;
    CHECK(c.num_nextn_predict_layers == 2 && !strcmp(c.torch_dtype, "float32") && c.q_lora_rank == 0 &&
              c.num_key_value_heads == 16 && c.eos_token_id == 1 && c.pad_token_id == -1,
          "num_mtp_layers, dtype, nulls, eos list");
    CHECK(c.rope_scaling.enabled && c.rope_scaling.factor == 4 && c.rope_theta == 50000 &&
              c.rope_scaling.original_max_position_embeddings == 4096,
          "rope_parameters (theta inside, original_max_position_embeddings from max_position_embeddings)");
    char *out;
    rc = ds_config_to_json(&c, &out);
    CHECK(rc == 0, "serializes");
    json_t *o = json_loads(out, 0, NULL);
    CHECK(o && !json_object_get(o, "num_nextn_predict_layers") && json_integer_value(json_object_get(o, "num_mtp_layers")) == 2,
          "alias key kept, not duplicated");
    CHECK(json_is_array(json_object_get(o, "eos_token_id")), "eos list kept");
    CHECK(!json_object_get(o, "rope_scaling") && json_object_get(o, "rope_parameters"), "rope_parameters kept");
    CHECK(json_real_value(json_object_get(json_object_get(o, "rope_parameters"), "rope_theta")) == 50000.0 &&
              json_number_value(json_object_get(o, "rope_theta")) == 50000.0,
          "rope_theta agrees inside and at the top level");
    json_decref(o);
    free(out);
    ds_config_free(&c);
}

TEST(unknown_keys_survive_and_changes_are_written) {
    ds_config c, d;
    int rc = load_share(&c, "deepseek-v3-671b.json");
    CHECK(rc == 0, "loads");
    if (rc) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/share/configs/deepseek-v3-671b.json", root());
    json_t *orig = json_load_file(path, 0, NULL);
    char *out;
    CHECK(ds_config_to_json(&c, &out) == 0, "serializes");
    json_t *saved = json_loads(out, 0, NULL);
    int same = 1;
    const char *k;
    json_t *v;
    json_object_foreach(orig, k, v) if (!json_equal(v, json_object_get(saved, k))) {
        same = 0;
        printf("# changed: %s\n", k);
    }
    CHECK(same, "every key of the file comes back unchanged (ep_size, auto-less extras, rope_scaling.type ...)");
    CHECK(!strncmp(out, "{\n  \"architectures\": [\n    \"DeepseekV3ForCausalLM\"\n  ],\n", 52), "key order and layout kept");
    CHECK(strstr(out, "\"rms_norm_eps\": 1e-06,") && strstr(out, "\"rope_theta\": 10000,") &&
              strstr(out, "\"mscale\": 1.0,"),
          "numbers written as Python writes them");
    free(out);
    json_decref(saved);

    /* change values: they are written; round trip through a file */
    c.num_hidden_layers = 4;
    c.rope_scaling.factor = 8;
    c.quantization_config.enabled = 0;
    c.pad_token_id = 2;
    snprintf(path, sizeof path, "cfg-%d.json", (int)getpid());
    CHECK(ds_config_save_file(&c, path) == 0, "saved: %s", ds_errmsg());
    rc = ds_config_load_file(&d, path);
    CHECK(rc == 0, "reloads: %s", ds_errmsg());
    if (!rc) {
        CHECK(d.num_hidden_layers == 4 && d.rope_scaling.factor == 8 && !d.quantization_config.enabled && d.pad_token_id == 2,
              "changed values read back");
        CHECK(json_integer_value(json_object_get(d.json, "ep_size")) == 1 &&
                  !strcmp(json_string_value(json_object_get(d.json, "transformers_version")), "4.46.3"),
              "unknown keys survive a save");
        CHECK(!strcmp(json_string_value(json_object_get(json_object_get(d.json, "rope_scaling"), "type")), "yarn") &&
                  !json_object_get(json_object_get(d.json, "rope_scaling"), "rope_type"),
              "rope_scaling keeps its 'type' spelling");
        ds_config_free(&d);
    }
    unlink(path);
    json_decref(orig);
    ds_config_free(&c);
}

TEST(config_from_defaults_round_trips) {
    ds_config c, d;
    ds_config_defaults(&c);
    c.rope_scaling.enabled = 1;
    c.rope_scaling.factor = 40;
    c.rope_scaling.original_max_position_embeddings = 4096;
    c.rope_scaling.mscale = 1;
    c.rope_scaling.mscale_all_dim = 1;
    c.quantization_config.enabled = 1;
    snprintf(c.quantization_config.scale_fmt, sizeof c.quantization_config.scale_fmt, "ue8m0");
    char *out;
    CHECK(ds_config_to_json(&c, &out) == 0, "serializes without a loaded JSON object");
    int rc = ds_config_parse(&d, out, strlen(out), "out");
    CHECK(rc == 0, "parses back: %s", ds_errmsg());
    if (!rc) {
        CHECK(!memcmp(&d, &c, offsetof(ds_config, json)), "same struct after a round trip");
        ds_config_free(&d);
    }
    json_t *o = json_loads(out, 0, NULL);
    json_t *r = json_object_get(o, "rope_scaling");
    CHECK(!strcmp(json_string_value(json_object_get(r, "type")), "yarn") &&
              !strcmp(json_string_value(json_object_get(r, "rope_type")), "yarn") && !json_object_get(r, "attention_factor") &&
              !json_object_get(r, "truncate"),
          "new rope_scaling has both type spellings and no absent optional keys");
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(o, "quantization_config"), "scale_fmt")), "ue8m0"),
          "scale_fmt written");
    /* DeepSeek-V3.1's config.json lists them in this order */
    const char *want[] = {"activation_scheme", "fmt", "quant_method", "scale_fmt", "weight_block_size"};
    int k = 0, in_order = 1;
    const char *key;
    json_t *val;
    json_object_foreach(json_object_get(o, "quantization_config"), key, val) {
        in_order &= k < 5 && !strcmp(key, want[k]);
        k++;
    }
    CHECK(in_order && k == 5, "quantization_config keys in DeepSeek's order");
    CHECK(json_is_null(json_object_get(o, "pad_token_id")), "absent pad written as null");
    json_decref(o);
    free(out);
    ds_config_free(&c);
}

/* Each bad input gives exactly this one line. */
TEST(bad_inputs_name_the_key) {
    static const struct { const char *json, *msg; } cases[] = {
        {"", "config: bad JSON: empty input: t.json"},
        {"{\"a\":", "config: bad JSON: line 1 column 5: unexpected token near end of file: t.json"},
        {"{\"a\":1,\"a\":2}", "config: bad JSON: line 1 column 10: duplicate object key near '\"a\"': t.json"},
        {"[1]", "config: not a JSON object: t.json"},
        {"{\"hidden_size\":0}", "config: hidden_size: must be a positive integer: t.json"},
        {"{\"hidden_size\":64.5}", "config: hidden_size: must be a positive integer: t.json"},
        {"{\"hidden_size\":\"64\"}", "config: hidden_size: must be a positive integer: t.json"},
        {"{\"hidden_size\":4294967296}", "config: hidden_size: too large (4294967296 > 2147483647): t.json"},
        {"{\"first_k_dense_replace\":-1}", "config: first_k_dense_replace: must be a non-negative integer: t.json"},
        {"{\"first_k_dense_replace\":62}", "config: first_k_dense_replace: must not exceed num_hidden_layers (62 > 61): t.json"},
        {"{\"rms_norm_eps\":0}", "config: rms_norm_eps: must be a positive number: t.json"},
        {"{\"rope_theta\":\"x\"}", "config: rope_theta: must be a positive number: t.json"},
        {"{\"norm_topk_prob\":1}", "config: norm_topk_prob: must be true or false: t.json"},
        {"{\"scoring_func\":\"relu\"}",
         "config: scoring_func: unsupported value \"relu\" (expected one of: \"sigmoid\", \"softmax\"): t.json"},
        {"{\"hidden_act\":\"gelu\"}", "config: hidden_act: unsupported value \"gelu\" (expected \"silu\"): t.json"},
        {"{\"topk_method\":5}", "config: topk_method: must be a string: t.json"},
        {"{\"tie_word_embeddings\":true}",
         "config: tie_word_embeddings: tied embeddings are not supported (DeepSeek-V3 has a separate lm_head): t.json"},
        {"{\"qk_rope_head_dim\":7}", "config: qk_rope_head_dim: must be even (RoPE rotates pairs): t.json"},
        {"{\"num_experts_per_tok\":300}", "config: num_experts_per_tok: must not exceed n_routed_experts (300 > 256): t.json"},
        {"{\"n_group\":7}", "config: n_group: must divide n_routed_experts (256 % 7 != 0): t.json"},
        {"{\"topk_group\":9}", "config: topk_group: must not exceed n_group (9 > 8): t.json"},
        {"{\"topk_group\":1,\"num_experts_per_tok\":33}",
         "config: num_experts_per_tok: more than the 32 experts in topk_group groups (33 > 32): t.json"},
        {"{\"eos_token_id\":129280}", "config: eos_token_id: must be below vocab_size (129280 >= 129280): t.json"},
        {"{\"bos_token_id\":-3}", "config: bos_token_id: must be a token id (a non-negative integer) or null: t.json"},
        {"{\"rope_scaling\":5}", "config: rope_scaling: must be an object or null: t.json"},
        {"{\"rope_scaling\":{\"type\":\"linear\",\"factor\":2}}",
         "config: rope_scaling.type: unsupported value \"linear\" (expected \"yarn\" or \"default\"): t.json"},
        {"{\"rope_scaling\":{\"type\":\"yarn\"}}", "config: rope_scaling.factor: required for yarn: t.json"},
        {"{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":0.5}}", "config: rope_scaling.factor: must be at least 1: t.json"},
        {"{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,\"beta_fast\":-1}}",
         "config: rope_scaling.beta_fast: must be a positive number: t.json"},
        {"{\"rope_parameters\":{\"rope_type\":\"yarn\",\"factor\":4,\"original_max_position_embeddings\":0}}",
         "config: rope_parameters.original_max_position_embeddings: must be a positive integer: t.json"},
        {"{\"quantization_config\":[]}", "config: quantization_config: must be an object or null: t.json"},
        {"{\"quantization_config\":{\"fmt\":\"e4m3\"}}", "config: quantization_config.quant_method: required: t.json"},
        {"{\"quantization_config\":{\"quant_method\":\"awq\"}}",
         "config: quantization_config.quant_method: unsupported value \"awq\" (expected \"fp8\"): t.json"},
        {"{\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128]}}",
         "config: quantization_config.weight_block_size: must be an array of 2 positive integers: t.json"},
        {"{\"attention_bias\":true}", "config: attention_bias: unsupported (DeepSeek-V3 projections have no bias): t.json"},
        {"{\"torch_dtype\":\"int8\"}",
         "config: torch_dtype: unsupported value \"int8\" (expected one of: \"bfloat16\", \"float32\", \"float16\"): t.json"},
        {"{\"hidden_size\":1000000000,\"moe_intermediate_size\":2000000000}", "config: model too large (parameter count overflows): t.json"},
        {"{\"num_attention_heads\":100000000}", "config: num_attention_heads: derived projection width 19200000000 too large: t.json"},
        {"{\"hidden_size\":2000000000}", "config: hidden_size: derived projection width 4000000000 too large: t.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ds_config c;
        ds_err_clear();
        int rc = parse(&c, cases[i].json);
        CHECK(rc == DS_ERR && !strcmp(ds_errmsg(), cases[i].msg) && c.json == NULL, "%s -> %s", cases[i].json, ds_errmsg());
        if (!rc) ds_config_free(&c);
    }
    ds_config c;
    CHECK(ds_config_load_file(&c, "/nonexistent/config.json") == DS_ERR &&
              !strcmp(ds_errmsg(), "cannot open: No such file or directory: /nonexistent/config.json"),
          "missing file: %s", ds_errmsg());
}

TEST(copy_is_deep) {
    ds_config c, d;
    CHECK(load_share(&c, "tiny.json") == 0, "loads");
    CHECK(ds_config_copy(&d, &c) == 0 && d.json && d.json != c.json, "copied");
    ds_config_free(&c);
    char *out;
    CHECK(ds_config_to_json(&d, &out) == 0 && strstr(out, "\"model_type\": \"deepseek_v3\""), "copy usable after the original is freed");
    free(out);
    ds_config_free(&d);
}

TEST(json_real_format_is_python_repr) {
    static const struct { double v; const char *s; } cases[] = {
        {1e-6, "1e-06"}, {0.001, "0.001"}, {10000.0, "10000.0"}, {2.5, "2.5"}, {0.1, "0.1"}, {-0.0, "-0.0"},
        {1e16, "1e+16"}, {1234567890123456.0, "1234567890123456.0"}, {0.0001, "0.0001"}, {0.00001, "1e-05"},
        {1.0 / 3, "0.3333333333333333"}, {5e-324, "5e-324"}, {1.7976931348623157e308, "1.7976931348623157e+308"},
        {123.456, "123.456"}, {0.006, "0.006"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[32];
        ds_json_format_real(cases[i].v, buf, sizeof buf);
        CHECK(!strcmp(buf, cases[i].s), "%s (want %s)", buf, cases[i].s);
    }
}

/* Used by tests/ref/config.bats: DS_CONFIG_DUMP=in.json:out.json writes our view of in.json (the config
 * as we save it, plus parameter counts) for the reference side to compare. */
TEST(reference_dump) {
    const char *spec = getenv("DS_CONFIG_DUMP");
    if (!spec) return;
    char in[4096];
    const char *colon = strchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof in) return;
    memcpy(in, spec, (size_t)(colon - spec));
    in[colon - spec] = 0;
    ds_config c;
    int rc = ds_config_load_file(&c, in);
    CHECK(rc == 0, "loads %.200s: %s", in, ds_errmsg());
    if (rc) return;
    char *text;
    CHECK(ds_config_to_json(&c, &text) == 0, "serializes");
    ds_param_counts p;
    ds_config_counts(&c, &p);
    json_t *o = json_pack("{s:o,s:{s:I,s:I,s:I}}", "config", json_loads(text, 0, NULL), "counts", "total",
                          (json_int_t)p.total, "activated", (json_int_t)p.activated, "mtp", (json_int_t)p.mtp);
    CHECK(json_dump_file(o, colon + 1, JSON_INDENT(1)) == 0, "wrote %.200s", colon + 1);
    json_decref(o);
    free(text);
    ds_config_free(&c);
}

/* Used by tests/ref/config.bats: DS_JSON_REDUMP=in.json:out.json re-serializes any JSON with
 * ds_json_dump (compact), to compare with Python's json.dumps on random numbers and strings. */
TEST(reference_json_redump) {
    const char *spec = getenv("DS_JSON_REDUMP");
    if (!spec) return;
    char in[4096];
    const char *colon = strchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof in) return;
    memcpy(in, spec, (size_t)(colon - spec));
    in[colon - spec] = 0;
    char *text, *out;
    size_t len;
    CHECK(ds_read_file(in, &text, &len, 0) == 0, "read %.200s", in);
    json_t *v = ds_json_parse(text, len, "redump", in);
    CHECK(v && ds_json_dump(v, 0, &out) == 0, "dumped");
    FILE *f = fopen(colon + 1, "w");
    fputs(out, f);
    fclose(f);
    free(out);
    free(text);
    json_decref(v);
}

TAP_MAIN()
