/* sft.h — the SFT data source: chat conversations rendered through the chat template, tokenized with
 * a per-token loss mask, and packed several to a row with sample masking (DeepSeek-V3 SFT, spec 11.4).
 *
 * Owns (docs/DESIGN.md "SFT data"):
 * - Checking conversations (records read by io/jsonl.h): every message has a role of
 *   system/user/assistant and non-empty string content, at least one assistant turn, and the encoded
 *   sample fits in a row. A bad conversation is reported with its line number and either skipped or
 *   rejected (the load fails), as the caller chooses.
 * - Samples: the tokens of one rendered conversation and its loss mask (tok/chat.h: 1 on assistant
 *   content and the text closing an assistant turn). A sample of n tokens takes n-1 slots of a row:
 *   inputs x_0..x_{n-2}, targets x_1..x_{n-1}, where target x_t is kept only if mask[t] = 1 (else -1).
 *   So the loss the trainer's ds_loss_pretrain computes over a row is the mean cross-entropy over
 *   assistant tokens only.
 * - Packing: each epoch visits the training samples in a seeded permutation and places each into the
 *   first of a window of open rows it fits; when none has room and the window is full, the oldest
 *   open row is emitted. Rows carry sample ids (seg: attention never crosses samples) and positions
 *   restarting at 0 per sample, as if each sample ran alone. The unused tail of a row is padding:
 *   its own segment, targets -1.
 * - Held-out conversations for validation (a seeded choice of a fraction of the samples), packed the
 *   same way in file order, never trained on.
 * - The source's position: {"epoch": e, "row": r}. An epoch's plan is a pure function of the seed and
 *   the epoch, so a resumed run reads exactly the rows the uninterrupted run would have read.
 */
#ifndef DS_TRAIN_SFT_H
#define DS_TRAIN_SFT_H

#include <stdint.h>

#include "tok/chat.h"
#include "tok/tokenizer.h"
#include "train/data.h"

/* ---- samples ---- */

typedef struct {
    int64_t n, cap;
    int64_t *off;     /* [n + 1] token offsets of each sample */
    int32_t *tokens;  /* [off[n]] */
    uint8_t *mask;    /* [off[n]]: 1 = token is trained on (predicted from what comes before it) */
    int64_t *line;    /* [n] 1-based line of the source (0 for samples added directly) */
    int64_t tok_cap;
    /* what loading saw */
    int64_t lines, bad;     /* non-blank lines read; conversations skipped */
    int64_t n_trained;      /* tokens with mask = 1 */
} ds_sft_set;

void ds_sft_set_free(ds_sft_set *s);
/* Append one sample (tokens and mask copied). Samples need at least 2 tokens. */
int ds_sft_set_add(ds_sft_set *s, const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t line);
static inline int64_t ds_sft_len(const ds_sft_set *s, int64_t i) { return s->off[i + 1] - s->off[i]; }

typedef enum { DS_SFT_SKIP_BAD = 0, DS_SFT_REJECT_BAD = 1 } ds_sft_on_bad;

typedef struct {
    const ds_tokenizer *tok;
    const ds_chat_template *tmpl;
    int seq_len;          /* a sample may have up to seq_len + 1 tokens */
    ds_sft_on_bad on_bad;
    int max_warnings;     /* skipped conversations listed one per line on stderr (then only counted); <0: all */
    int32_t vocab;        /* ids must be below this (the model's vocabulary); 0: no check */
} ds_sft_load_opts;

/* Render, encode and check one conversation; the sample is appended to s. Returns DS_ERR with the
 * problem (unprefixed, e.g. "no assistant turn", "412 tokens: longer than a row of 256") when the
 * conversation is unusable. */
int ds_sft_add_conversation(ds_sft_set *s, const ds_chat_msg *msgs, int n_msgs, const ds_sft_load_opts *o, int64_t line);

/* Read a JSONL file ("-" = stdin) into s: records through io/jsonl.h (shape, roles, string content,
 * an assistant turn), then this module's checks (empty content, length, vocabulary). With
 * DS_SFT_SKIP_BAD, a bad conversation is reported as a warning "jsonl: line N: <problem>: <path>
 * (skipped)" and counted in s->bad; with DS_SFT_REJECT_BAD the first one fails the load with
 * "jsonl: line N: <problem>: <path>". A read error fails the load either way. */
int ds_sft_load(ds_sft_set *s, const char *path, const ds_sft_load_opts *o);

/* ---- packing ---- */

/* One pass over a list of samples: row r holds samples idx[row_off[r] .. row_off[r + 1]), in order. */
typedef struct {
    int64_t n_rows;
    int64_t *row_off; /* [n_rows + 1] */
    int64_t *idx;     /* sample indices, as many as the pass packs */
    int64_t slots;    /* row slots occupied by samples (the rest is padding) */
} ds_sft_plan;

/* Pack samples order[0..n) (indices into s) into rows of seq_len slots with a first-fit window of
 * `window` open rows (1 = plain sequential packing). Every sample must fit (len - 1 <= seq_len). */
int ds_sft_plan_build(ds_sft_plan *p, const ds_sft_set *s, const int64_t *order, int64_t n, int seq_len, int window);
void ds_sft_plan_free(ds_sft_plan *p);

/* Write row r of a plan: tokens, targets, positions and sample ids, seq_len each. Samples get seg ids
 * 0, 1, 2, ... in row order; padding gets the next id, token pad_id, targets -1, positions from 0.
 * Returns the row's length before the padding (ds_batch.len). */
int ds_sft_fill_row(const ds_sft_set *s, const ds_sft_plan *p, int64_t r, int seq_len, int32_t pad_id, int32_t *tokens,
                    int32_t *targets, int32_t *pos, int32_t *seg);

/* ---- the data source ---- */

typedef struct {
    int seq_len;
    uint64_t seed;
    double val_frac;  /* share of samples held out (0: none); at least one when > 0 and there are >= 2 */
    int window;       /* open rows for first-fit packing; 0 = 8 */
    int32_t pad_id;
} ds_sft_source_opts;

/* The training source (repeats forever, epoch after epoch) and, when val_frac > 0 and val != NULL,
 * the validation source (one pass, rewound for each evaluation). The held-out samples depend only on
 * the set, val_frac and the seed (never trained on, whether or not val is asked for). Both borrow
 * `set`, which must outlive them. */
int ds_sft_source_create(ds_data_source **train, ds_data_source **val, const ds_sft_set *set,
                         const ds_sft_source_opts *o);

/* Rows the training source hands out over its first `epochs` epochs (for a step count), the samples
 * in one epoch, and the padding share of the first epoch's rows (0..1). */
typedef struct {
    int64_t rows, samples, val_samples, val_rows;
    double fill;      /* slots holding samples / all slots, first epoch */
    double trained;   /* targets kept (assistant tokens) / slots holding samples, first epoch */
} ds_sft_stats;
int ds_sft_source_stats(ds_data_source *train, ds_data_source *val, int epochs, ds_sft_stats *st);
/* Epoch the next row will come from (0-based) and its row within the epoch. */
void ds_sft_source_position(const ds_data_source *train, int64_t *epoch, int64_t *row);

/* ---- a conversations file, start to finish (what ds-sft and ds-extend-ctx --chat share) ---- */

typedef struct {
    const char *path;          /* JSONL conversations ("-" = stdin) */
    const char *template_path; /* NULL: the built-in template */
    const char *model;         /* names the checkpoint in "no tokenizer" */
    const char *tokenizer_json; /* the session's tokenizer.json text (NULL: an error with a hint) */
    size_t tokenizer_len;
    const char *tokenizer_config; /* the checkpoint's tokenizer_config.json: its chat template when no
                                     template_path (NULL: the built-in one) */
    size_t tokenizer_config_len;
    int32_t vocab, eos;        /* the model's vocabulary and eos id (padding when the tokenizer lacks V3's) */
    ds_sft_on_bad on_bad;
    int max_warnings;
    ds_sft_source_opts src;    /* pad_id is set here: the tokenizer's end-of-sentence token */
} ds_sft_data_opts;

typedef struct {
    ds_tokenizer *tok;
    ds_chat_template tmpl;
    int have_tmpl;
    ds_sft_set set;
    ds_data_source *train, *val; /* as ds_sft_source_create makes them */
} ds_sft_data;

/* Tokenizer, template, conversations (at least one usable) and the packed sources. On failure the
 * message says what and where (with a hint for a rejected conversation or a missing tokenizer) and
 * whatever was opened is closed. */
int ds_sft_data_open(ds_sft_data *d, const ds_sft_data_opts *o);
void ds_sft_data_close(ds_sft_data *d);

#endif
