/* pretok.h — pre-tokenization: cutting text into the pieces BPE runs on, as HF tokenizers does.
 *
 * Owns: the supported pre_tokenizer steps of tokenizer.json — Split (Regex or String pattern, every
 * behavior, invert) and ByteLevel (add_prefix_space, use_regex with GPT-2's pattern) — chained as a
 * Sequence; compiling the patterns with PCRE2 (JIT, UTF, Unicode properties, invalid UTF-8 tolerated:
 * such bytes never match and end up in gap pieces); and the per-thread match state.
 *
 * HF runs Oniguruma; the patterns are translated so PCRE2 agrees with it (Oniguruma's \s also matches
 * U+0085). Each step runs on a piece as its own subject, as HF does, so lookaheads stop at the piece's
 * end. Pieces are produced left to right through a callback, without allocation.
 */
#ifndef DS_TOK_PRETOK_H
#define DS_TOK_PRETOK_H

#include <stddef.h>

/* DeepSeek-V3's three Split patterns (spec §8.1), in order, and GPT-2's ByteLevel pattern. */
extern const char *const ds_pretok_deepseek_v3[3];
extern const char ds_pretok_gpt2[];

enum { DS_PRE_SPLIT = 1, DS_PRE_BYTELEVEL = 2 };
enum {
    DS_SPLIT_ISOLATED,
    DS_SPLIT_REMOVED,
    DS_SPLIT_MERGED_PREV,
    DS_SPLIT_MERGED_NEXT,
    DS_SPLIT_CONTIGUOUS,
};
#define DS_PRETOK_MAX 16

typedef struct {
    int kind;
    void *re; /* pcre2_code_8 *, NULL for ByteLevel without regex */
    int jit;  /* JIT compiled */
    int behavior, invert;
    int add_prefix_space, use_regex; /* ByteLevel */
    char *source;                    /* the pattern as written in tokenizer.json */
    int literal;                     /* Split {"String": ...} */
} ds_pretok_step;

typedef struct {
    ds_pretok_step step[DS_PRETOK_MAX];
    int n;
} ds_pretok;

int ds_pretok_add_split(ds_pretok *p, const char *pattern, size_t len, int literal, int behavior, int invert);
int ds_pretok_add_bytelevel(ds_pretok *p, int add_prefix_space, int use_regex);
void ds_pretok_free(ds_pretok *p);

/* True when a document may be cut, for parallel encoding, between a '\n' and a printable non-space
 * ASCII character without changing any piece: holds for the DeepSeek-V3 and GPT-2 patterns (no match
 * crosses such a point — after a newline, a non-space character always starts a new piece — and no
 * gap contains a '\n'); unknown patterns are never cut. */
int ds_pretok_chunkable(const ds_pretok *p);

typedef struct ds_pretok_state ds_pretok_state;
typedef int (*ds_piece_fn)(void *ctx, const char *piece, size_t len);

int ds_pretok_state_new(ds_pretok_state **out, const ds_pretok *p);
void ds_pretok_state_free(ds_pretok_state *s);
/* Call fn on every non-empty piece of text[0..len) in order; a non-zero return from fn stops and is
 * returned. */
int ds_pretok_run(ds_pretok_state *s, const char *text, size_t len, ds_piece_fn fn, void *ctx);

#endif
