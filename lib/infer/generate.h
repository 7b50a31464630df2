/* generate.h — the batched decode engine: prompts in, sampled tokens out.
 *
 * Owns: scheduling (up to `batch` sequences share each forward; a finished sequence's slot is given
 * to the next prompt at once), prefill in chunks, sampling each sequence with its own Philox stream
 * (sequence id = the prompt's index in the input), the context limit, the finish rules (EOS, max new
 * tokens, a stop decided by the caller), and MTP speculative decoding: the MTP module drafts one
 * token, the next main-model step verifies it together with the token before it, and the draft is
 * accepted by rejection sampling (greedy: iff it is the main model's argmax), so the output
 * distribution — and under greedy decoding the output itself — is that of plain decoding.
 *
 * Text is not handled here: the caller reads prompts as token ids and sees every new token through
 * a callback (where it decodes, streams, and checks stop strings).
 */
#ifndef DS_INFER_GENERATE_H
#define DS_INFER_GENERATE_H

#include <stdint.h>

#include "infer/forward.h"
#include "infer/gencfg.h"
#include "infer/sampler.h"

typedef struct {
    ds_sampling sampling;
    int max_new;              /* new tokens per prompt, >= 1 */
    int eos_id;               /* -1: none */
    ds_eos_ids eos_more;      /* further ids that end a sequence as EOS does (generation_config.json's list) */
    int max_length;           /* 0: off; else a sequence ends when prompt + new tokens reach it (transformers') */
    int mtp;                  /* speculative decoding with MTP module 1 (the engine must have it) */
    int batch;                /* sequences in flight, <= the engine's slots */
    int prefill_chunk;        /* prompt tokens per forward, <= the engine's max_tokens */
    ds_attn_form prefill_form;
    int truncate;             /* prompt + max_new over the context: keep the prompt's last tokens */
} ds_gen_opts;

typedef enum { DS_FINISH_NONE = 0, DS_FINISH_LENGTH, DS_FINISH_EOS, DS_FINISH_STOP } ds_finish;
const char *ds_finish_name(ds_finish f); /* "length", "eos", "stop" */

/* One sequence as the callbacks see it. Arrays are owned by the engine, valid during the callback. */
typedef struct {
    uint64_t id;            /* the caller's sequence id (also the sampling stream) */
    const int32_t *prompt;  /* as used (after truncation) */
    int prompt_len, truncated; /* truncated: tokens dropped from the front */
    const int32_t *tokens;  /* generated so far, EOS included when it ended the sequence */
    const float *logprobs;  /* log p(token | everything before) under the model itself (temperature 1) */
    const float *logits;    /* in on_token only: the raw logits [V] the newest token was chosen from (else NULL) */
    int n;
    ds_finish finish;
    double t_admit, t_first, t_end; /* ds_now() when admitted, when the first token came, when done */
    int drafted, accepted;  /* speculative decoding: drafts verified and accepted */
} ds_gen_seq;

/* One sequence's own settings (ds_gen_io.seq_opts): they start as ds_gen_opts' sampling and max_new with
 * the sequence id as the sampling stream. The draws of a sequence are a function of (sampling.seed,
 * stream, step) only, so a server can give each request its own seed and number its choices 0..n-1. */
typedef struct {
    ds_sampling sampling;
    uint64_t stream;
    int max_new; /* in [1, ds_gen_opts.max_new] */
} ds_gen_seq_opts;

/* Prefill/decode disaggregation (infer/kvstream.h): a sequence handed from the engine that ran its prompt
 * to one that decodes it. The prompt's latents stay in the engine's cache slot `slot`, positions
 * [0, prompt_len), main layers and (with MTP) the MTP layer; the rest is here. */
typedef struct {
    int slot;
    int truncated;     /* prompt tokens dropped from the front by the prefill side */
    int32_t token;     /* the first generated token, sampled at step 0 */
    float logprob;     /* its model log-probability */
    int has_draft;     /* MTP drafted the second token: draft, drawn from q */
    int32_t draft;
    ds_dist *q;        /* the engine's: read in on_prefilled, filled by restore */
} ds_gen_handoff;

#define DS_GEN_WAIT 2 /* next's *got: no prompt now, more may come (a server between requests) */

typedef struct {
    void *src;
    /* The next prompt: set *got = 1 with *id, *ids, *n (the ids are copied before next is called again),
     * *got = 0 when there are no more, or *got = DS_GEN_WAIT when there is none yet: the engine runs a
     * step with the sequences it has and asks again (with none in flight it asks again at once, so the
     * source should then block until it has a prompt). Return 0, or an error code (message set) to abort. */
    int (*next)(void *src, uint64_t *id, const int32_t **ids, int *n, int *got);
    /* Optional (NULL: every sequence uses ds_gen_opts): adjust the settings of the sequence `next` just
     * returned. Return 0 or an error code. */
    int (*seq_opts)(void *src, uint64_t id, ds_gen_seq_opts *so);
    void *sink;
    /* A new token (already appended to s->tokens). Set *stop = 1 to end the sequence ("stop").
     * Return 0, or an error code that aborts generation. */
    int (*on_token)(void *sink, const ds_gen_seq *s, int *stop);
    /* The sequence is finished (s->finish set). Return 0 or an error code. */
    int (*on_done)(void *sink, const ds_gen_seq *s);
    /* Optional, prefill only: called once a sequence's prompt is in the cache with its first token sampled
     * (s->tokens[0], not passed to on_token) and, with mtp, its MTP draft made; the sequence then leaves the
     * engine without on_token or on_done (its finish is decided where it is decoded). */
    int (*on_prefilled)(void *sink, ds_infer *e, const ds_gen_seq *s, const ds_gen_seq_opts *so,
                        const ds_gen_handoff *h);
    /* Optional, decode only: the prompt `next` just returned was prefilled elsewhere. Write its latents into
     * cache slot h->slot (positions [0, n)) and set h's other fields (h->q: fill it when has_draft). The
     * first token then goes through on_token as if sampled here. */
    int (*restore)(void *src, ds_infer *e, ds_gen_handoff *h);
} ds_gen_io;

typedef struct {
    int64_t prompts, prompt_tokens, new_tokens;
    int64_t prefill_calls, decode_steps, drafted, accepted;
    double prefill_s, decode_s, mtp_s; /* wall time in prefill forwards, decode forwards, MTP forwards */
} ds_gen_stats;

int ds_generate(ds_infer *e, const ds_gen_opts *o, const ds_gen_io *io, ds_gen_stats *stats);

#endif
