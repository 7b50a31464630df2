/* passkey.h — long-context evaluation: passkey retrieval (a needle in a haystack) over a grid of
 * context lengths and needle depths, and log-likelihood by position.
 *
 * Owns (docs/DESIGN.md "Context extension"):
 * - The task: an intro, a filler text repeated to the wanted length, a needle sentence holding a
 *   random number (the passkey) at a chosen depth of the filler, and a question whose answer is the
 *   number. Every piece is plain text tokenized once (the number once per example), so an example of
 *   exactly `len` tokens is built for any length by repeating and cutting filler tokens.
 * - Scoring by greedy retrieval: the example (prompt + answer) runs through the inference forward in
 *   one teacher-forced pass and the example counts as retrieved when the model's argmax equals the
 *   answer token at every answer position. That is exactly "greedy decoding reproduces the passkey"
 *   (greedy decoding picks the argmax after the correct prefix, which is what the pass conditions
 *   on), without a decode loop. The mean log-probability of the answer tokens is kept as a smooth
 *   second measure.
 * - Log-likelihood by position: mean log p(x_t | x_<t) over documents, in position buckets, which shows
 *   whether a model uses context beyond its training length (it should keep falling with t).
 * - The grid as a text table and a PNG heat map (core/plot.h).
 * Keys come from (seed, length, depth, trial) through Philox, so a grid is reproducible and two models
 * are asked the same questions.
 */
#ifndef DS_INFER_PASSKEY_H
#define DS_INFER_PASSKEY_H

#include <stdint.h>

#include "infer/forward.h"
#include "tok/tokenizer.h"

/* The texts. needle and answer contain "{key}" (every occurrence is the key); the prompt ends with question, the answer
 * follows it directly (so question + answer read as one sentence). */
typedef struct {
    const char *intro, *filler, *needle, *question, *answer;
    int digits; /* passkey digits (1..18); the first digit is never 0 */
} ds_passkey_text;

extern const ds_passkey_text ds_passkey_default_text;

/* A wording from a JSON file ("-": stdin) holding an object with any of "intro", "filler", "needle",
 * "question", "answer" (strings) and "digits" (1..18); a key left out keeps the default text's, any
 * other key is refused, and so are a needle or an answer without "{key}". The strings are malloc'd: free them with ds_passkey_text_free. */
int ds_passkey_text_load(ds_passkey_text *t, const char *path);
/* The same from len bytes in memory; `path` names them in messages. */
int ds_passkey_text_parse(ds_passkey_text *t, const char *data, size_t len, const char *path);
void ds_passkey_text_free(ds_passkey_text *t);

typedef struct ds_passkey ds_passkey;

/* Tokenize the pieces (bos >= 0 is put first). */
int ds_passkey_prepare(ds_passkey **out, const ds_tokenizer *tok, const ds_passkey_text *t, int64_t bos);
void ds_passkey_free(ds_passkey *p);
/* Tokens an example needs besides filler (so lengths below this + one filler token are refused). */
int ds_passkey_min_len(const ds_passkey *p);

typedef struct {
    int32_t *tokens; /* [n] prompt then answer */
    int n;
    int answer_start; /* tokens[answer_start..n) are the answer */
    int needle_start, needle_len;
    char key[24];
} ds_passkey_example;

/* Build the example of exactly len tokens with the needle after round(depth * filler) filler tokens
 * (depth in [0, 1], rounded to whole filler sentences where the filler allows). ex->tokens is malloc'd
 * (or reused when ex->tokens is set with enough room: pass ex zeroed the first time). */
int ds_passkey_make(const ds_passkey *p, int len, double depth, uint64_t seed, uint64_t index, ds_passkey_example *ex);
void ds_passkey_example_free(ds_passkey_example *ex);

typedef struct {
    const int *lengths;
    int n_lengths;
    const double *depths; /* in [0, 1] */
    int n_depths;
    int trials;           /* examples per cell */
    uint64_t seed;
    int chunk;            /* tokens per forward call (prefill chunk); 0: 2048 */
    int progress;         /* progress line on stderr */
} ds_passkey_opts;

typedef struct {
    int rows, cols;       /* lengths x depths */
    int *lengths;
    double *depths;
    double *accuracy;     /* [rows*cols] share of trials retrieved */
    double *answer_logp;  /* [rows*cols] mean log p of the answer tokens */
    int trials;
} ds_passkey_grid;

int ds_passkey_eval(const ds_infer_model *m, const ds_ops *ops, const ds_passkey *p, const ds_passkey_opts *o,
                    ds_passkey_grid *g);
/* The check behind each grid cell, for any token sequence: one teacher-forced pass over tokens[0..n);
 * *right = 1 when the argmax at every position before tokens[answer_start..n) picks that token (greedy
 * decoding after tokens[0..answer_start) would produce exactly the answer); *logp = their mean log p. */
int ds_passkey_check(const ds_infer_model *m, const ds_ops *ops, const int32_t *tokens, int n, int answer_start, int chunk,
                     int *right, double *logp);
void ds_passkey_grid_free(ds_passkey_grid *g);

/* The grid as aligned text (malloc'd): one row per length, one column per depth, accuracy in percent,
 * and a last column with the row mean. */
int ds_passkey_table(const ds_passkey_grid *g, char **out);
/* The grid as a PNG heat map (rows: lengths, columns: depths, colour: accuracy 0..1). */
int ds_passkey_heatmap(const ds_passkey_grid *g, const char *png_path, const char *title);
/* One JSON object per line for each cell: {"eval": "passkey", "length", "depth", "accuracy", "answer_logp",
 * "trials"} into a ds_metrics file (core/jsonw.h). */
int ds_passkey_metrics(const ds_passkey_grid *g, void *metrics);

/* ---- likelihood by position ---- */

/* Mean log p(x_t | x_<t) of docs[d][0..len) for t = 1..len-1, averaged over the documents and over
 * n_buckets equal ranges of positions: bucket b covers positions [1 + b*(len-1)/n_buckets, ...).
 * logp[n_buckets] is written; bucket_end[b] (may be NULL) gets the last position of each bucket. */
int ds_position_logp(const ds_infer_model *m, const ds_ops *ops, const int32_t *docs, int n_docs, int len, int n_buckets,
                     int chunk, double *logp, int *bucket_end);
/* As text (malloc'd): one line per bucket, "positions A-B  mean log p  perplexity". */
int ds_position_table(const double *logp, const int *bucket_end, int n_buckets, int n_docs, char **out);

/* ---- both, as ds-extend-ctx runs them ---- */

typedef struct {
    const int *lengths;          /* passkey lengths; those the task cannot fit are skipped with a warning */
    int n_lengths;
    const double *depths;
    int n_depths, trials;
    uint64_t seed;
    int chunk;                   /* tokens per forward call; 0: 2048 */
    const ds_tokenizer *tok;     /* NULL: no passkey grid (a warning says so) */
    const ds_passkey_text *text; /* NULL: ds_passkey_default_text */
    int64_t bos;                 /* put first in every passkey example; -1: none */
    const int32_t *docs;         /* [n_docs * doc_len] for log-likelihood by position; n_docs 0: none */
    int n_docs, doc_len, buckets;
    const char *png;             /* heat map of the grid, or NULL */
    void *metrics;               /* ds_metrics* for the records, or NULL */
} ds_longctx_opts;

/* The passkey grid (o->text, else the default text) and the position log-likelihood; *text (malloc'd) gets their tables
 * for the caller to print; records go to o->metrics. */
int ds_longctx_eval(const ds_infer_model *m, const ds_ops *ops, const ds_longctx_opts *o, char **text);

#endif
