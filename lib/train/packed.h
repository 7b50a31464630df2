/* packed.h — the pretraining data source: one token stream cut into fixed-length rows, in a seeded
 * order, with a held-out validation tail and optional fill-in-the-middle.
 *
 * Owns (docs/DESIGN.md "Pretraining data"):
 * - Packing as in V3 pre-training: documents (separated by EOS in the stream) are concatenated and
 *   cut into windows of T+1 tokens (window k = tokens [kT, kT+T]); a row's inputs are the first T,
 *   its targets the last T. No cross-document mask: positions run 0..T-1 in every row.
 * - Order: a keyed pseudo-random permutation of the training windows per epoch (a Feistel network
 *   with cycle walking: O(1) memory for any corpus size, random access by row number). The source's
 *   whole state is the number of rows it has handed out.
 * - Validation: the last ceil(val_frac * windows) windows, never trained on, read in order.
 * - FIM (fill-in-the-middle, PSM form) per document piece of a training row with probability
 *   fim_rate: <fim_begin> prefix <fim_hole> suffix <fim_end> middle, cut at two uniform token
 *   positions; the row is then cut back to T+1 tokens (as in BigCode's Megatron-LM).
 */
#ifndef DS_TRAIN_PACKED_H
#define DS_TRAIN_PACKED_H

#include <stdint.h>

#include "train/data.h"

/* Random access to a token stream (a set of shards, an in-memory array). */
typedef struct ds_token_reader {
    int64_t n_tokens;
    const char *where; /* for messages */
    int (*read)(struct ds_token_reader *r, int64_t off, int64_t n, int32_t *dst);
    void (*free)(struct ds_token_reader *r);
    void *impl;
} ds_token_reader;

/* Over `n` tokens in memory. own: the reader frees `tokens` (malloc'd) when freed. */
int ds_token_reader_memory(ds_token_reader *r, int32_t *tokens, int64_t n, int own, const char *where);
void ds_token_reader_free(ds_token_reader *r);

typedef struct {
    int seq_len;
    uint64_t seed;
    double val_frac;     /* share of windows held out for validation (0: none) */
    double fim_rate;     /* 0: off */
    int32_t eos;         /* document separator in the stream */
    int32_t fim_begin, fim_hole, fim_end;
} ds_packed_opts;

/* Create the training source (and the validation source when val_frac > 0 and val != NULL). The
 * sources share the reader, which must outlive them. */
int ds_packed_create(ds_data_source **train, ds_data_source **val, ds_token_reader *reader, const ds_packed_opts *o);

/* The keyed permutation used for the order (exposed for tests): a bijection of [0, n). */
uint64_t ds_keyed_permute(uint64_t i, uint64_t n, uint64_t seed, uint64_t stream);

/* PSM transform of one row of len tokens in place: pieces between EOS tokens become FIM examples
 * with probability o->fim_rate, then the row is cut back to len. scratch holds len tokens; the
 * random words come from (o->seed, stream). Exposed for tests. */
void ds_fim_row(int32_t *row, int len, int32_t *scratch, const ds_packed_opts *o, uint64_t stream);

#endif
