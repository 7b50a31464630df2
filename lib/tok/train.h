/* train.h — learning byte-level BPE merges from text, as HF tokenizers' BpeTrainer does.
 *
 * Owns: counting pre-token frequencies (DeepSeek-V3 pre-tokenizer, one hash table of unique pre-tokens,
 * so memory follows the corpus' vocabulary, not its size), and the incremental merge loop: pair counts
 * and the words each pair occurs in are updated only where a merge happens, and the next merge comes
 * from a lazy max-heap (count descending, then pair of ids ascending — HF's order).
 *
 * Vocabulary layout, as HF's BpeTrainer with initial_alphabet = ByteLevel.alphabet(): special tokens
 * first (ids 0..S-1, in the order given), then the 256 byte-level characters sorted by code point, then
 * one token per merge (a merge whose result already exists reuses that id). vocab_size counts them all.
 */
#ifndef DS_TOK_TRAIN_H
#define DS_TOK_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "tok/tokenizer.h"

/* DeepSeek's special tokens in order: BOS (id 0), EOS (1), pad, FIM begin/hole/end, User, Assistant,
 * System, <think>, </think>. */
extern const char *const ds_tok_default_specials[];
extern const int ds_tok_n_default_specials;

typedef struct ds_tok_trainer ds_tok_trainer;

int ds_tok_trainer_new(ds_tok_trainer **out);
void ds_tok_trainer_free(ds_tok_trainer *tr);
/* Count the pre-tokens of one piece of text. Text may be fed in blocks only if cut where
 * ds_tok_train_cut says (a document boundary is always fine). Uses ds_tok_threads() threads. */
int ds_tok_trainer_feed(ds_tok_trainer *tr, const char *text, size_t len);
/* Where a block of a long document may end without changing any pre-token: the largest cut <= len
 * just after a '\n' followed by a printable ASCII character other than space; 0 when there is none. */
size_t ds_tok_train_cut(const char *text, size_t len);
/* Count many documents at once, in parallel across them (a ds_text_sink). */
int ds_tok_trainer_feed_many(void *tr, const char *const *texts, const size_t *lens, size_t n);

uint64_t ds_tok_trainer_words(const ds_tok_trainer *tr);    /* unique pre-tokens so far */
uint64_t ds_tok_trainer_pretokens(const ds_tok_trainer *tr); /* all pre-tokens so far */

typedef struct {
    uint32_t vocab_size;
    const char *const *specials; /* added as special tokens, ids 0..n_specials-1 */
    int n_specials;
    uint64_t min_frequency; /* stop when the best pair is rarer (HF default 0) */
    int progress;           /* progress line on stderr */
} ds_tok_train_opts;

/* Learn merges and build the tokenizer. The trainer may be fed no more afterwards. */
int ds_tok_trainer_finish(ds_tok_trainer *tr, const ds_tok_train_opts *o, ds_tokenizer **out);

#endif
