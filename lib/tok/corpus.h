/* corpus.h — encoding whole corpora: documents from files or stdin, in parallel, in order.
 *
 * Owns: what a document is (a whole file; a line without its '\n' with DS_DOC_LINES; the string field
 * KEY of each JSON line with DS_DOC_JSONL), reading inputs in bounded blocks (files are mapped, pipes
 * streamed), cutting very long documents at safe points so one big file still uses every core, encoding
 * batches on ds_tok_threads() threads with one ds_tok_encoder each, handing each document's ids to a
 * sink strictly in input order (output is identical for any thread count), progress on stderr, and the
 * run's totals.
 */
#ifndef DS_TOK_CORPUS_H
#define DS_TOK_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "tok/tokenizer.h"

enum { DS_DOC_FILE, DS_DOC_LINES, DS_DOC_JSONL };

/* Threads for encoding and counting (n <= 0: all online cores). Separate from core/threads.h on purpose:
 * that one also sizes OpenBLAS, and linking OpenBLAS starts its spinning thread pool, which costs a
 * tokenizer on a small machine up to a third of its throughput. */
void ds_tok_set_threads(int n);
int ds_tok_threads(void);

typedef struct {
    int doc_mode;          /* DS_DOC_* */
    const char *jsonl_key; /* DS_DOC_JSONL */
    int flags;             /* DS_TOK_SPECIAL to recognise special tokens in the text */
    int64_t bos_id, eos_id; /* >= 0: put before / after every document's ids */
    int progress;
} ds_corpus_opts;

typedef struct {
    uint64_t docs, bytes, tokens;
    double seconds;
} ds_corpus_stats;

/* Called once per document, in input order. */
typedef int (*ds_doc_sink)(void *ctx, const uint32_t *ids, size_t n);

/* Encode every document of paths ("-" = stdin; none = stdin). Empty input (no bytes at all) is an
 * error. */
int ds_corpus_encode(const ds_tokenizer *t, const ds_corpus_opts *o, const char *const *paths, int npaths,
                     ds_doc_sink sink, void *ctx, ds_corpus_stats *st);

/* Visit the text of every document (no tokenizer): what the trainer counts. The sink gets batches of
 * about `block` bytes; a whole-file document longer than that comes in pieces cut where cut(text, len)
 * allows. */
typedef int (*ds_text_sink)(void *ctx, const char *const *texts, const size_t *lens, size_t n);
int ds_corpus_read(const ds_corpus_opts *o, const char *const *paths, int npaths, size_t block,
                   size_t (*cut)(const char *, size_t), ds_text_sink sink, void *ctx, ds_corpus_stats *st);

#endif
