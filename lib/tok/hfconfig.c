#include "tok/hfconfig.h"

#include "core/err.h"
#include "tok/chat.h"
#include "tok/tokenizer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* The text of token id (a JSON string), or null when the tokenizer has no such token. */
static json_t *token_text(const ds_tokenizer *tok, int id) {
    size_t n;
    const uint8_t *b = id >= 0 ? ds_tok_token_bytes(tok, (uint32_t)id, &n) : NULL;
    json_t *s = b ? json_stringn((const char *)b, n) : NULL; /* NULL also for invalid UTF-8 */
    return s ? s : json_null();
}

int ds_tok_hf_config(const char *tok_json, size_t tok_len, const ds_config *cfg, const char *chat_template_jinja,
                     char **out) {
    *out = NULL;
    char *builtin_jinja = NULL;
    if (!chat_template_jinja) { /* the built-in template's */
        ds_chat_template builtin;
        DS_TRY(ds_chat_template_load(&builtin, NULL));
        int rc = ds_chat_template_to_jinja(&builtin, &builtin_jinja);
        ds_chat_template_free(&builtin);
        DS_TRY(rc);
        chat_template_jinja = builtin_jinja;
    }
    ds_tokenizer *tok;
    int trc = ds_tok_from_json(&tok, tok_json, tok_len, "tokenizer.json");
    if (trc) {
        free(builtin_jinja);
        return trc;
    }
    int pad = cfg->pad_token_id >= 0 ? cfg->pad_token_id : cfg->eos_token_id;
    json_t *o = json_object();
    int bad = !o;
    bad |= json_object_set_new(o, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    bad |= json_object_set_new(o, "bos_token", token_text(tok, cfg->bos_token_id));
    bad |= json_object_set_new(o, "eos_token", token_text(tok, cfg->eos_token_id));
    bad |= json_object_set_new(o, "pad_token", token_text(tok, pad));
    /* as ds-generate encodes a plain prompt: BOS first (DeepSeek-V3's tokenizer_config says the same) */
    bad |= json_object_set_new(o, "add_bos_token", json_true());
    bad |= json_object_set_new(o, "add_eos_token", json_false());
    bad |= json_object_set_new(o, "model_max_length", json_integer(cfg->max_position_embeddings));
    bad |= json_object_set_new(o, "clean_up_tokenization_spaces", json_false());
    bad |= json_object_set_new(o, "chat_template", json_string(chat_template_jinja));
    ds_tok_free(tok);
    free(builtin_jinja);
    char *s = bad ? NULL : json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s) return ds_fail(DS_ERR, "tokenizer_config.json: out of memory (or a chat template that is not UTF-8)");
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return ds_fail(DS_ERR, "tokenizer_config.json: out of memory");
    }
    t[n] = '\n', t[n + 1] = 0;
    *out = t;
    return 0;
}

int ds_tok_hf_config_chat_template(const char *json, size_t len, char **out) {
    *out = NULL;
    json_t *o = json_loadb(json, len, 0, NULL);
    json_t *ct = json_object_get(o, "chat_template");
    if (json_is_string(ct) && !(*out = strdup(json_string_value(ct)))) {
        json_decref(o);
        return ds_fail(DS_ERR, "tokenizer_config.json: out of memory");
    }
    json_decref(o);
    return 0;
}
