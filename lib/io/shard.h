/* shard.h — token shards (design.md 4.3): the files ds-tokenize encode writes and the data loader reads.
 *
 * Owns: the .tok byte layout (docs/formats.md): a fixed little-endian header (magic, version, token
 * width 2 or 4 bytes chosen from the vocabulary size, vocab size, EOS id, counts, frame size), the
 * tokens in independent zstd frames (random access and parallel decode), each behind a small record
 * with its CRC-32C, then a frame index and a trailer. Documents are separated by the EOS id.
 *
 * Writing goes to a file (temp + fsync + rename; the header's counts are filled in at the end) or to
 * a pipe ("-"; the header says "streamed" and the counts live only in the trailer, after the index).
 * Reading a file validates the header, trailer and index at open and every frame when it is decoded
 * (zstd errors, checksum, token ids < vocab, EOS count). Reading a pipe is sequential: each frame is
 * checked as it arrives and the index and trailer are checked against what was seen at the end, so a
 * consumer of a pipe learns about a bad trailer only after the last token.
 *
 * A handle is not thread-safe: use one per thread (ds_shard_read decodes in parallel inside).
 */
#ifndef DS_IO_SHARD_H
#define DS_IO_SHARD_H

#include <stddef.h>
#include <stdint.h>

#define DS_SHARD_VERSION 1
#define DS_SHARD_FRAME_TOKENS (1u << 20) /* default tokens per frame */
#define DS_SHARD_MAX_FRAME_TOKENS (1u << 26)

typedef struct {
    uint32_t vocab_size;   /* token ids are < vocab_size */
    uint32_t eos_id;       /* appended after every document */
    uint32_t frame_tokens; /* 0: DS_SHARD_FRAME_TOKENS */
    int level;             /* zstd level; 0: 3 */
} ds_shard_meta;

typedef struct {
    uint32_t vocab_size, eos_id;
    int token_bytes;       /* 2 when vocab_size <= 65536, else 4 */
    uint32_t frame_tokens;
    uint64_t n_tokens;     /* EOS tokens included */
    uint64_t n_docs;       /* = number of EOS tokens */
    uint64_t n_frames;
    int streamed;          /* opened from a pipe: counts are 0 until ds_shard_next reaches the end */
} ds_shard_info_t;

typedef struct ds_shard_writer ds_shard_writer;
typedef struct ds_shard ds_shard;

/* path: a file, or "-" for stdout. */
int ds_shard_writer_open(ds_shard_writer **w, const char *path, const ds_shard_meta *meta);
/* Append a document: the ids, then EOS. Ids must be < vocab_size and must not be the EOS id. */
int ds_shard_writer_add_doc(ds_shard_writer *w, const uint32_t *ids, size_t n);
/* Tokens written so far (EOS included), documents so far. */
uint64_t ds_shard_writer_tokens(const ds_shard_writer *w);
uint64_t ds_shard_writer_docs(const ds_shard_writer *w);
/* Flush the last frame, write index + trailer, fill in the header, fsync, rename. Frees w. */
int ds_shard_writer_close(ds_shard_writer *w);
void ds_shard_writer_abort(ds_shard_writer *w); /* removes the temp file; frees w */

/* path: a file (random access), or "-" / a pipe (sequential). */
int ds_shard_open(ds_shard **s, const char *path);
/* Parse an image in memory (random access; buf must outlive s). For tests and fuzzing. */
int ds_shard_open_memory(ds_shard **s, const void *buf, size_t len, const char *where);
const ds_shard_info_t *ds_shard_info(const ds_shard *s);
/* Tokens [start, start + n) into out (random access; files only). Frames are decoded in parallel
 * (OpenMP); the last decoded frame is cached, so small sequential reads stay cheap. */
int ds_shard_read(ds_shard *s, uint64_t start, size_t n, uint32_t *out);
/* Sequential reading (files and pipes): up to cap tokens; *got = 0 at the end. For a pipe, the end
 * is where the trailer has been checked; the info counts are then filled in. */
int ds_shard_next(ds_shard *s, uint32_t *out, size_t cap, size_t *got);
void ds_shard_close(ds_shard *s);

#endif
