/* chatsess.h — a conversation with the model, turn by turn, over one slot of the latent KV cache.
 *
 * Owns: the conversation (messages in order), rendering the whole history through the chat template
 * at every turn, reusing the cache of earlier turns (only the tokens after the longest common prefix
 * of the new rendering and the cached tokens are prefilled: a re-encoded reply that tokenizes
 * differently from what was sampled, or a dropped oldest turn, is recomputed from where it differs),
 * decoding one reply with its bytes streamed as they come, stop strings, interruption (a flag set
 * from a signal handler ends the reply where it is; what was shown is kept as the reply), and the
 * context limit (a refusal that leaves the conversation as it was, or the oldest turns dropped).
 * And the terminal loop of `ds-generate --chat` on a TTY: prompt, lines, /reset, /exit, Ctrl-C.
 *
 * Sampling draws are (seed, turn index in the conversation, reply step), so /reset and the same
 * question give the same reply; greedy replies equal a one-shot generation of the rendered history.
 */
#ifndef DS_INFER_CHATSESS_H
#define DS_INFER_CHATSESS_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "infer/forward.h"
#include "infer/gencfg.h"
#include "infer/generate.h"
#include "infer/sampler.h"
#include "tok/chat.h"
#include "tok/tokenizer.h"

typedef struct {
    const ds_tokenizer *tok;       /* required */
    const ds_chat_template *tpl;   /* required */
    ds_sampling sampling;
    int max_new;                   /* reply tokens at most (also bounded by the context) */
    ds_eos_ids eos;                /* ids that end a reply (not shown) */
    const char *const *stops;      /* stop strings (borrowed) */
    int n_stops;
    int prefill_chunk;             /* tokens per prefill forward (<= the engine's max_tokens) */
    ds_attn_form prefill_form;     /* for a prefill from position 0; later ones are absorbed */
    int drop_oldest;               /* context full: drop the oldest exchanges instead of refusing */
    volatile sig_atomic_t *interrupt; /* nonzero: stop the reply now (NULL: never) */
} ds_chat_opts;

typedef struct {
    int prompt_tokens;  /* the rendered history with the generation prompt */
    int reused;         /* of them, found in the cache */
    int prefilled;      /* of them, computed this turn (prompt_tokens - reused) */
    int new_tokens;     /* reply tokens sampled */
    int dropped;        /* messages dropped for the context (drop_oldest) */
    int interrupted;    /* the reply was stopped by the interrupt flag */
    int context_full;   /* refused: the turn does not fit (message holds why); nothing changed */
    ds_finish finish;
    double prefill_s, decode_s;
    char message[256];
} ds_chat_turn_stats;

typedef struct ds_chat_session ds_chat_session;

/* e: an engine with at least one slot (slot 0 is used) and max_tokens >= o->prefill_chunk. */
int ds_chat_session_create(ds_chat_session **out, ds_infer *e, const ds_chat_opts *o);
void ds_chat_session_free(ds_chat_session *s);
/* Forget the conversation (and what the cache holds). */
void ds_chat_session_reset(ds_chat_session *s);
int ds_chat_session_turns(const ds_chat_session *s); /* user turns in the conversation */

/* One user turn: on_text gets the reply's bytes as they become safe to show (stop strings held back).
 * A turn that does not fit the context returns DS_OK with st->context_full set and changes nothing. */
int ds_chat_session_turn(ds_chat_session *s, const char *user, size_t len,
                         int (*on_text)(void *ctx, const char *bytes, size_t n), void *ctx, ds_chat_turn_stats *st);

/* The terminal loop: write the prompt to out, read a line from fd in_fd, answer it streaming to out;
 * "/reset", "/exit" (or end of input) and "/help". The interrupt flag (o->interrupt, set by the
 * caller's SIGINT handler, which must not restart reads) stops a reply; at the prompt, twice in a row
 * ends the loop. Each turn's statistics go to the verbose log. Returns DS_OK at the end. */
int ds_chat_repl(ds_chat_session *s, int in_fd, FILE *out, const char *prompt);

/* ds-generate's terminal chat on model m: an engine of one slot over a context of ctx tokens (its
 * Linear GEMMs from linear_ops, NULL: the model's backend), a session with o, and the loop. */
int ds_chat_terminal(ds_model *m, const ds_chat_opts *o, int ctx, const ds_ops *linear_ops, int in_fd, FILE *out);

#endif
