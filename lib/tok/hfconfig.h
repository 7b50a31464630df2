/* hfconfig.h — tokenizer_config.json, the file through which Hugging Face's tokenizers find a
 * checkpoint's special tokens, context length and chat template.
 *
 * Owns: writing it for a checkpoint: tokenizer_class PreTrainedTokenizerFast (it reads tokenizer.json),
 * bos/eos/pad tokens by their text (the config's ids looked up in tokenizer.json; pad is the eos
 * token when the config has no pad id, as in DeepSeek-V3's), model_max_length (the config's
 * max_position_embeddings) and chat_template (a Jinja text, see tok/chat.h). With it,
 * transformers' AutoTokenizer + apply_chat_template + generate work on the checkpoint.
 */
#ifndef DS_TOK_HFCONFIG_H
#define DS_TOK_HFCONFIG_H

#include <stddef.h>

#include "io/config.h"

/* tokenizer_config.json text (malloc'd, NUL-terminated) for tokenizer.json text tok_json; the chat
 * template's Jinja text, or NULL for the built-in template's. */
int ds_tok_hf_config(const char *tok_json, size_t tok_len, const ds_config *cfg, const char *chat_template_jinja,
                     char **out);

/* The "chat_template" string of tokenizer_config.json text, malloc'd; NULL (and 0) when absent or not a
 * string. */
int ds_tok_hf_config_chat_template(const char *json, size_t len, char **out);

#endif
