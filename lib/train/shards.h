/* shards.h — the token stream behind ds-pretrain: token shards named by globs (or one shard on stdin),
 * checked against each other and against the model, loaded into memory as one stream.
 *
 * Owns: expanding the patterns (a directory means its *.tok; every pattern must match something;
 * files in sorted order, duplicates dropped), the agreement checks (one vocabulary size and EOS id
 * across shards; a vocabulary no larger than the model's: "vocabulary mismatch: ..."), and the
 * concatenation in that order. Reading whole shards keeps the random window order of packed.h cheap
 * (a window is a memcpy, not a frame decode); corpora beyond memory need a frame-aware order instead.
 */
#ifndef DS_TRAIN_SHARDS_H
#define DS_TRAIN_SHARDS_H

#include <stdint.h>

#include "train/packed.h"

typedef struct {
    uint32_t vocab_size, eos_id;
    uint64_t n_tokens, n_docs;
    int n_shards;
    char first[4096]; /* the first shard's path ("-" for stdin) */
} ds_shards_info;

/* model_vocab: the model's vocab_size (0: no check). */
int ds_shards_load(ds_token_reader *rd, ds_shards_info *info, const char *const *patterns, int n_patterns, int model_vocab);

#endif
