/* tokenizer.h — byte-level BPE tokenizers in Hugging Face's tokenizer.json form.
 *
 * Owns: loading a tokenizer.json (model type BPE over the GPT-2 byte-level alphabet; merges spelled
 * "a b" or ["a", "b"]; added tokens; pre-tokenizers Split / ByteLevel / Sequence, see tok/pretok.h),
 * encoding text to ids exactly as HF tokenizers does, decoding ids back to the exact bytes, and
 * looking up special tokens. This is the API other tools use (ds-generate, ds-sft, ds-rl):
 *
 *   ds_tokenizer *t;  ds_tok_load(&t, "tokenizer.json")            (or ds_tok_from_json for text)
 *   ds_ids ids = {0}; ds_tok_encode(t, text, len, DS_TOK_SPECIAL, &ids)   chat templates
 *   ds_bytes out = {0}; ds_tok_decode(t, ids.v, ids.n, &out)
 *   int64_t eos = ds_tok_token_id(t, "<｜end▁of▁sentence｜>")       -1 when absent
 *
 * A loaded tokenizer is immutable and may be shared by threads. ds_tok_encode allocates a scratch
 * encoder per call; bulk encoders keep a ds_tok_encoder per thread (it owns the regex match data and
 * a cache of frequent pre-tokens).
 */
#ifndef DS_TOK_TOKENIZER_H
#define DS_TOK_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct ds_tokenizer ds_tokenizer;
typedef struct ds_tok_encoder ds_tok_encoder;

typedef struct {
    uint32_t *v;
    size_t n, cap;
} ds_ids;

typedef struct {
    uint8_t *v;
    size_t n, cap;
} ds_bytes;

void ds_ids_free(ds_ids *v);
void ds_bytes_free(ds_bytes *b);

/* encode flags */
enum {
    /* Recognise special added tokens in the text (chat templates, FIM). Without it they are encoded as
     * plain text, so a corpus can never produce a control token by accident. Non-special added tokens
     * are always recognised, as in HF tokenizers. */
    DS_TOK_SPECIAL = 1,
};

/* Load from a file ("-" = stdin) or from JSON text; `where` names the source in error messages. */
int ds_tok_load(ds_tokenizer **out, const char *path);
int ds_tok_from_json(ds_tokenizer **out, const char *json, size_t len, const char *where);
/* After reading the tokenizer at path failed (rc): name the file's kind when it is another one
 * ("tokenizer.json: a token shard, not a tokenizer.json: x.tok", io/kind.h). Returns rc. */
int ds_tok_explain_kind(int rc, const char *path);
void ds_tok_free(ds_tokenizer *t);

/* Serialise as tokenizer.json text (malloc'd, NUL-terminated). A loaded tokenizer returns its source
 * text unchanged; a trained one is rendered in HF's layout. */
int ds_tok_to_json(const ds_tokenizer *t, char **json, size_t *len);
/* Write tokenizer.json atomically ("-" = stdout). */
int ds_tok_save(const ds_tokenizer *t, const char *path);

uint32_t ds_tok_vocab_size(const ds_tokenizer *t); /* max id + 1 */
size_t ds_tok_n_merges(const ds_tokenizer *t);
/* id of an added token (special or not) or of a model token given as its decoded text; -1 if none */
int64_t ds_tok_token_id(const ds_tokenizer *t, const char *text);
int ds_tok_is_special(const ds_tokenizer *t, uint32_t id);
/* The bytes one id decodes to (NULL, 0 for an unused id). */
const uint8_t *ds_tok_token_bytes(const ds_tokenizer *t, uint32_t id, size_t *len);

/* Append the ids of text[0..len) to out. Any bytes are accepted (invalid UTF-8 becomes byte tokens). */
int ds_tok_encode(const ds_tokenizer *t, const char *text, size_t len, int flags, ds_ids *out);
/* Append the bytes of ids to out; an id outside the vocabulary is an error. Byte-exact inverse of
 * encode for any input. */
int ds_tok_decode(const ds_tokenizer *t, const uint32_t *ids, size_t n, ds_bytes *out);

/* Per-thread encoder for bulk work. */
int ds_tok_encoder_new(ds_tok_encoder **out, const ds_tokenizer *t);
void ds_tok_encoder_free(ds_tok_encoder *e);
int ds_tok_encoder_encode(ds_tok_encoder *e, const char *text, size_t len, int flags, ds_ids *out);

#endif
