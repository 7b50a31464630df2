/* server.h — ds-generate --serve: an OpenAI-compatible HTTP server over the decode engine.
 *
 * Owns: the HTTP side (libmicrohttpd, one thread per connection: /v1/chat/completions and
 * /v1/completions with and without server-sent events, /v1/models, /health, OpenAI-style JSON errors
 * for everything refused: infer/oai.h), turning requests into token ids (the chat template; BOS +
 * text for completions, as ds-generate's --prompt), and continuous batching: one scheduler — the
 * thread that calls ds_serve_run, the only one touching the model — runs ds_generate (infer/generate.h)
 * with a source that hands it queued sequences whenever a slot frees, so requests that arrive while
 * others decode join the next step. Each sequence samples with its request's settings and its own
 * Philox stream (the request's seed, the choice index), so a seeded or greedy request's answer does
 * not depend on what else is being served. A request whose client disconnects is cancelled: its
 * sequences end at their next token and free their slots. Stopping is graceful: requests already
 * accepted finish, new ones get 503, then the call returns.
 */
#ifndef DS_INFER_SERVER_H
#define DS_INFER_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "infer/generate.h"
#include "tok/chat.h"
#include "tok/tokenizer.h"

typedef struct {
    char host[256];  /* a numeric IPv4 address or a name that resolves to one */
    int port;        /* 0: any free port (ds_serve_port says which) */
    const char *model_name;        /* what /v1/models lists and requests must name */
    const ds_tokenizer *tok;       /* required: requests are text */
    const ds_chat_template *chat;  /* NULL: /v1/chat/completions answers 400 */
    int64_t bos;                   /* prepended to completion prompts; -1: none */
    /* the engine's settings: batch (slots), prefill, mtp, EOS ids; sampling holds the defaults a request
     * does not override (temperature, top_k, top_p; seed: the base of unseeded requests' seeds) */
    ds_gen_opts gen;
    int default_max_tokens;        /* when a request gives none (capped by the context) */
    int max_length;                /* 0: off; else prompt + new tokens stop there by default */
    int max_n;                     /* completions per request */
    size_t max_body;               /* bytes; larger bodies get 413 */
} ds_serve_opts;

/* The name a checkpoint is served under: the last component of its path, without ".safetensors"
 * ("ckpt/sft/" -> "sft"; "-" -> "model"). */
void ds_serve_model_name(const char *path, char *buf, size_t n);

/* "HOST:PORT", ":PORT" or "PORT" (host 127.0.0.1). Usage errors name the text. */
int ds_serve_parse_addr(const char *text, ds_serve_opts *o);

typedef struct ds_server ds_server;

typedef struct {
    int64_t requests, errors, cancelled, prompt_tokens, completion_tokens;
    ds_gen_stats gen;
} ds_serve_stats;

/* Bind and start answering (the engine e, with at least o->gen.batch slots, is used by ds_serve_run
 * only). Errors: the address cannot be bound. */
int ds_serve_start(ds_server **out, ds_infer *e, const ds_serve_opts *o);
int ds_serve_port(const ds_server *s);
/* Run the scheduler in this thread until ds_serve_stop; then wait for the accepted requests. */
int ds_serve_run(ds_server *s, ds_serve_stats *st);
/* From any thread: graceful (hard = 0: accepted requests finish), or hard (they end now). */
void ds_serve_stop(ds_server *s, int hard);
void ds_serve_free(ds_server *s);

/* The whole life of a server in a tool: SIGINT/SIGTERM blocked in every thread and taken by a thread of
 * their own (the first stops gracefully, the second hard), start, ready(ctx, port) once listening,
 * run, stop. Returns 0 after a signal, or an error. */
int ds_serve_until_signal(ds_infer *e, const ds_serve_opts *o, void (*ready)(void *ctx, int port), void *ctx,
                          ds_serve_stats *st);

#endif
