/* oai.h — the OpenAI API's request bodies and error bodies, as ds-generate --serve speaks them.
 *
 * Owns: reading the JSON body of POST /v1/chat/completions and /v1/completions into what generation
 * needs (the messages or the prompts, the sampling parameters under OpenAI's names: temperature,
 * top_p, max_tokens / max_completion_tokens, stop, seed, n, logprobs / top_logprobs, stream,
 * stream_options.include_usage; top_k as vLLM accepts it), and refusing what this server cannot do
 * with the error OpenAI would give: an HTTP status (400 bad value, 404 unknown model), a type, the
 * parameter at fault and a message. Parameters we do not implement (penalties, logit_bias, tools,
 * echo, suffix, best_of, response formats other than text) are accepted only at their neutral values,
 * so a client never gets an answer computed without what it asked for. Unknown keys are ignored, as
 * vLLM and llama-server ignore them. Pure functions of the body: the request fuzzer drives them.
 */
#ifndef DS_INFER_OAI_H
#define DS_INFER_OAI_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/jsonw.h"
#include "tok/chat.h"

typedef enum { DS_OAI_CHAT = 0, DS_OAI_COMPLETION = 1 } ds_oai_kind;

typedef struct {
    int status;       /* HTTP status: 400, 404, 405, 413, 500, 503 */
    const char *type; /* "invalid_request_error", "not_found_error", "server_error", ... */
    const char *code; /* NULL, or "model_not_found", "context_length_exceeded", ... */
    char param[64];   /* the parameter at fault ("" when none) */
    char message[512];
} ds_oai_error;

/* Fill *e and return its status (so a caller can `return ds_oai_fail(...)`). */
int ds_oai_fail(ds_oai_error *e, int status, const char *type, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* {"error": {"message", "type", "param", "code"}} */
void ds_oai_error_json(const ds_oai_error *e, ds_jsonw *w);

/* What a request may ask for (set by the server). */
typedef struct {
    const char *model; /* the one model served: requests must name it */
    int max_n;         /* choices per request (and prompts x choices for completions) */
    int vocab;         /* token-id prompts must be below it */
} ds_oai_limits;

#define DS_OAI_MAX_STOPS 4 /* OpenAI's limit */
#define DS_OAI_MAX_TOP_LOGPROBS 20

/* One completion prompt: text, or token ids (a list of integers in the request). */
typedef struct {
    const char *text; /* NULL for ids */
    size_t len;
    int32_t *ids;
    int n_ids;
} ds_oai_prompt;

typedef struct {
    ds_oai_kind kind;
    json_t *root; /* owned: the strings below point into it */
    /* chat: the conversation (system/developer, user, assistant; text parts joined) */
    ds_chat_msg *msgs;
    int n_msgs;
    char **joined; /* [n_msgs]: content built from several text parts (NULL where borrowed) */
    /* completions: one or more prompts */
    ds_oai_prompt *prompts;
    int n_prompts;
    int has_max_tokens, max_tokens;
    int has_temperature, has_top_p, has_top_k, has_seed;
    double temperature, top_p;
    int top_k;
    uint64_t seed;
    int n;             /* choices per prompt */
    const char *stops[DS_OAI_MAX_STOPS];
    int n_stops;
    int logprobs;      /* report the chosen tokens' log-probabilities */
    int top_logprobs;  /* and this many alternatives per position */
    int stream, include_usage;
} ds_oai_request;

/* Parse and validate a body. Returns 0, or the HTTP status with *err filled (r is then empty). */
int ds_oai_parse(ds_oai_kind kind, const char *body, size_t len, const ds_oai_limits *lim, ds_oai_request *r,
                 ds_oai_error *err);
void ds_oai_request_free(ds_oai_request *r);

/* Bytes of text[0..n) that can be sent now without splitting a UTF-8 character: all of it, less an
 * incomplete (but so far valid) sequence at the end, which the next token may complete. */
size_t ds_utf8_complete_prefix(const char *text, size_t n);

#endif
