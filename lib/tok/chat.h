/* chat.h — the chat template: turning a list of messages into the text (and tokens) a model sees.
 *
 * Owns: the template file format (share/chat_template; the DeepSeek-V3 format of spec section 8.1 is
 * built in), rendering messages with or without a generation prompt, and the spans of the rendered
 * text that say which bytes are template text (special tokens recognised) and which are message
 * content (literal text), and which bytes are trained on in SFT (assistant content plus the text
 * closing the assistant turn). ds-generate --chat and ds-sft use the same renderer, so the prompt a
 * model is trained on and the one it is asked with cannot drift apart.
 *
 * Encoding (ds_chat_encode) tokenizes each span on its own: template text with special tokens
 * recognised, message content as literal text, so user text can never forge a control token and the
 * SFT mask is exact per token.
 *
 * Template file: lines `KEY = "JSON string"`, '#' comment lines, blank lines. Keys: bos, system,
 * system_sep, user, assistant, generation. system/user/assistant hold "{content}" exactly once.
 */
#ifndef DS_TOK_CHAT_H
#define DS_TOK_CHAT_H

#include <stddef.h>

#include "tok/tokenizer.h"

typedef struct {
    char *bos, *system, *system_sep, *user, *assistant, *generation; /* NUL-terminated, owned */
} ds_chat_template;

/* The built-in template (identical to share/chat_template). */
extern const char ds_chat_template_default_text[];

/* Parse template text; `where` names it in messages ("chat template: line 7: ...: FILE"). */
int ds_chat_template_parse(ds_chat_template *t, const char *text, size_t len, const char *where);
/* Load from a file ("-" = stdin), or the built-in template when path is NULL. The file may also be a
 * Jinja template or a tokenizer_config.json (read as ds_chat_template_from_jinja says). */
int ds_chat_template_load(ds_chat_template *t, const char *path);
void ds_chat_template_free(ds_chat_template *t);

/* Hugging Face's form: tokenizer_config.json's "chat_template", a Jinja template. to_jinja writes one
 * that renders exactly what ds_chat_render renders (system messages gathered after bos and joined by
 * system_sep, user and assistant turns in order, the generation text with add_generation_prompt); it
 * starts with a Jinja comment holding the six fields. from_jinja accepts such a template unchanged
 * (the fields from the comment), and DeepSeek-V3's released template (recognised whatever its
 * whitespace; the built-in template renders the same), and refuses any other Jinja template with a
 * hint to --chat-template FILE: the tools do not run Jinja. */
int ds_chat_template_to_jinja(const ds_chat_template *t, char **out);
int ds_chat_template_from_jinja(ds_chat_template *t, const char *jinja, size_t len, const char *where);
/* A tokenizer_config.json's chat_template (none: the built-in template). */
int ds_chat_template_from_hf_config(ds_chat_template *t, const char *json, size_t len, const char *where);
/* The template of a run: the file given (--chat-template), else the checkpoint's tokenizer_config.json
 * (hf_config, NULL when it has none), else the built-in one. */
int ds_chat_template_select(ds_chat_template *t, const char *path, const char *hf_config, size_t len, const char *where);
/* As ds_chat_template_select, for runs that may not render a conversation at all (ds-generate without
 * --chat, ds-rl without --chat): a checkpoint template that cannot be read is a warning, *have = 0 and
 * t zeroed (conversations then fail where they are met); otherwise *have = 1. */
int ds_chat_template_select_if_readable(ds_chat_template *t, const char *path, const char *hf_config, size_t len,
                                        const char *where, int *have);

typedef enum { DS_ROLE_SYSTEM = 0, DS_ROLE_USER = 1, DS_ROLE_ASSISTANT = 2 } ds_chat_role;

/* "system" | "user" | "assistant" -> role; -1 for anything else. */
int ds_chat_role_from_name(const char *name);

typedef struct {
    ds_chat_role role;
    const char *content; /* not necessarily NUL-terminated */
    size_t len;
} ds_chat_msg;

typedef struct {
    size_t off, len; /* bytes of the rendered text */
    int content;     /* 1: message text (encode without special tokens); 0: template text */
    int train;       /* 1: assistant content or the text closing an assistant turn */
} ds_chat_span;

typedef struct {
    char *text; /* NUL-terminated */
    size_t len;
    ds_chat_span *spans; /* cover text exactly, in order, no empty spans */
    int n_spans;
} ds_chat_rendered;

/* Render msgs (system messages gathered after bos, the rest in order); with add_generation_prompt
 * the generation text is appended. An empty conversation is an error. */
int ds_chat_render(const ds_chat_template *t, const ds_chat_msg *msgs, int n, int add_generation_prompt,
                   ds_chat_rendered *out);
void ds_chat_rendered_free(ds_chat_rendered *r);

/* Append the token ids of a rendered conversation to ids; when train is not NULL, append one byte per
 * token: 1 where the token comes from a train span (assistant content and its closing text), else 0. */
int ds_chat_encode(const ds_tokenizer *tok, const ds_chat_rendered *r, ds_ids *ids, ds_bytes *train);

#endif
