/* tokdoc.h — where encoded documents go and where decoded ones come from.
 *
 * Owns: the id-line text form (one document per line, ids separated by one space), writing documents
 * to id lines and/or token shards (OUT is a .tok file, '-' for stdout, or a directory that receives
 * numbered shards 000000.tok, 000001.tok, ... of at most shard_tokens tokens each, documents never
 * split), decoding shards or id lines back to bytes, and finding a tokenizer's BOS / EOS tokens.
 */
#ifndef DS_TOK_TOKDOC_H
#define DS_TOK_TOKDOC_H

#include <stdint.h>
#include <stdio.h>

#include "core/file.h"
#include "tok/corpus.h"
#include "tok/tokenizer.h"

/* BOS / EOS by name: DeepSeek's, then <|begin_of_text|>/<|end_of_text|>, <s>/</s>, <|endoftext|> (both).
 * A NULL pointer is not looked up; a missing token is an error naming the candidates. */
int ds_tokdoc_special_ids(const ds_tokenizer *t, int64_t *bos, int64_t *eos);

typedef struct {
    const ds_tokenizer *t;
    FILE *ids; /* id lines, or NULL */
    char *line;
    size_t line_cap;
    int64_t eos_id;
    /* shards */
    void *shard; /* the open shard writer, or NULL */
    const char *shard_out;
    int shard_dir, shard_index, force;
    uint64_t shard_tokens, in_shard;
    ds_dir_lock lock; /* a directory of shards: held while writing it */
} ds_tokdoc_out;

/* ids_path: "-" or NULL; shard_out: OUT or NULL. An existing OUT file, or numbered shards already in
 * an OUT directory, are replaced only with force (else DS_ERR naming OUT and --force). */
int ds_tokdoc_out_open(ds_tokdoc_out *w, const ds_tokenizer *t, const char *ids_path, const char *shard_out, int64_t eos_id,
                       uint64_t shard_tokens, int force);
int ds_tokdoc_out_doc(void *w, const uint32_t *ids, size_t n); /* a ds_doc_sink */
int ds_tokdoc_out_close(ds_tokdoc_out *w);
void ds_tokdoc_out_abort(ds_tokdoc_out *w);

/* Decode inputs (shards, detected by their magic, or id lines; none = stdin) to out ("-" = stdout). */
int ds_tokdoc_decode(const ds_tokenizer *t, const char *const *paths, int npaths, const char *out, int lines,
                     ds_corpus_stats *st);

#endif
