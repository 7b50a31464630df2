/* safetensors.h — the safetensors format: reading (mmap, memory, or a pipe without seeking), writing
 * (to a file atomically, or to a pipe), and sharded checkpoints (model.safetensors.index.json).
 *
 * Owns: header parsing and its validation (every problem is a one-line "safetensors: ...: <where>"
 * error, never a crash), the byte layout we write (docs/formats.md: header padded with spaces to a
 * multiple of 8, "format":"pt" in __metadata__, tensors contiguous in header order), the shard plan
 * and index, and reading any tensor as float32 (F32/F16/BF16/F64/ints here; FP8 through a decoder
 * that fp8/ registers, since the FP8 codecs live there).
 *
 * Validation follows the Rust safetensors crate (the reference implementation): the header is at most
 * 100,000,000 bytes of JSON starting with '{'; names are unique; byte lengths equal numel x dtype
 * size; the tensors' [begin, end) ranges, sorted, tile the data region exactly: no overlap, no gap,
 * nothing after the last tensor (for a pipe: up to the last tensor's end, nothing further is read).
 */
#ifndef DS_IO_SAFETENSORS_H
#define DS_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/dtype.h"

#define DS_ST_MAX_DIMS 8
#define DS_ST_MAX_HEADER 100000000u

typedef struct {
    const char *name;
    ds_dtype dtype;
    int ndim;
    int64_t shape[DS_ST_MAX_DIMS];
    int64_t numel;
    uint64_t offset, nbytes; /* within the data region (after the header) */
    /* The bytes; NULL for a stream tensor not yet read. Not necessarily aligned to the element size
     * in files from elsewhere: use memcpy or ds_st_read_f32. */
    const void *data;
} ds_st_tensor;

/* ---- reading a whole file (mmap for regular files; "-" and pipes are read into memory) ---------- */

typedef struct ds_st_file ds_st_file;

int ds_st_open(ds_st_file **out, const char *path);
/* Parse a safetensors image in memory. The buffer must outlive the handle unless copy != 0. */
int ds_st_open_memory(ds_st_file **out, const void *buf, size_t len, int copy, const char *where);
void ds_st_close(ds_st_file *f);

int ds_st_count(const ds_st_file *f);
const ds_st_tensor *ds_st_tensor_at(const ds_st_file *f, int i); /* in header (file) order */
const ds_st_tensor *ds_st_find(const ds_st_file *f, const char *name); /* NULL when absent */
/* __metadata__ string map. */
int ds_st_meta_count(const ds_st_file *f);
void ds_st_meta_at(const ds_st_file *f, int i, const char **key, const char **value);
const char *ds_st_meta(const ds_st_file *f, const char *key); /* NULL when absent */
const char *ds_st_where(const ds_st_file *f);

/* ---- reading a stream (a pipe): header first, then tensors in offset order --------------------- */

typedef struct ds_st_stream ds_st_stream;

/* Reads and validates the header from f (not closed by ds_st_stream_close). */
int ds_st_stream_open(ds_st_stream **out, FILE *f, const char *where);
/* Read the next tensor's bytes: *t points at it with data valid until the next call. At the end,
 * returns 0 with *t == NULL. Nothing past the last tensor is read. */
int ds_st_stream_next(ds_st_stream *s, const ds_st_tensor **t);
int ds_st_stream_count(const ds_st_stream *s);
const ds_st_tensor *ds_st_stream_tensor_at(const ds_st_stream *s, int i); /* offset order; data NULL */
int ds_st_stream_meta_count(const ds_st_stream *s);
void ds_st_stream_meta_at(const ds_st_stream *s, int i, const char **key, const char **value);
const char *ds_st_stream_meta(const ds_st_stream *s, const char *key);
void ds_st_stream_close(ds_st_stream *s);

/* ---- converting ----------------------------------------------------------------------------- */

/* Decoder for F8_E4M3 / F8_E5M2 -> float32, registered by fp8/ (fp8.h ds_fp8_register_st_decoder: the
 * code values, no scale). Returns 0 or -1 (unsupported). Without one, FP8 reads fail with a message. */
typedef int (*ds_st_fp8_decoder)(float *dst, const void *src, ds_dtype t, size_t n);
void ds_st_set_fp8_decoder(ds_st_fp8_decoder fn);

/* Convert t (with data) to float32: out holds t->numel floats. `where` names the file for messages.
 * Multi-threaded (OpenMP) for large tensors; the result does not depend on the thread count. */
int ds_st_read_f32(const ds_st_tensor *t, float *out, const char *where);
/* Element count and shape helpers. */
int ds_st_shape_is(const ds_st_tensor *t, int ndim, const int64_t *shape);
/* "[7168, 2048]" */
void ds_st_shape_str(const ds_st_tensor *t, char *buf, size_t n);

/* ---- writing -------------------------------------------------------------------------------- */

typedef struct ds_st_writer ds_st_writer;

typedef struct {
    /* 0: one file. Otherwise tensors are split in order into shards of at most this many data bytes
     * (a larger tensor gets a shard of its own): <stem>-0000N-of-0000M.safetensors next to <path>,
     * plus <stem>.safetensors.index.json. When everything fits in one shard, just <path>. */
    uint64_t max_shard_bytes;
    int no_format_pt; /* leave out "format":"pt" (tests only) */
} ds_st_write_opts;

/* path: "<dir>/<stem>.safetensors" or "-" (stdout; no sharding). Files appear atomically at close. */
int ds_st_writer_open(ds_st_writer **out, const char *path, const ds_st_write_opts *opts);
/* Header entries, before any data. Metadata values are strings; setting a key twice replaces it. */
int ds_st_writer_meta(ds_st_writer *w, const char *key, const char *value);
int ds_st_writer_declare(ds_st_writer *w, const char *name, ds_dtype dtype, int ndim, const int64_t *shape);
/* Data, in declaration order, in as many pieces as convenient (a piece may span tensors). */
int ds_st_writer_data(ds_st_writer *w, const void *bytes, size_t n);
/* Data for the current tensor given as float32, converted to its dtype (F32, F16, BF16). */
int ds_st_writer_data_f32(ds_st_writer *w, const float *src, size_t n);
/* Checks every declared byte was written; writes the index when sharded; renames into place. */
int ds_st_writer_close(ds_st_writer *w);
void ds_st_writer_abort(ds_st_writer *w); /* removes temp files */

/* One call: write n tensors (data pointers in t[i].data) and optional metadata pairs. */
int ds_st_save(const char *path, const ds_st_tensor *t, int n, const char *const *meta_kv, int n_meta,
               const ds_st_write_opts *opts);

/* ---- a set of tensors: one file, or shards through an index ---------------------------------- */

typedef struct ds_st_set ds_st_set;

/* path: a .safetensors file, a model.safetensors.index.json, or a directory holding either
 * (model.safetensors.index.json preferred, then model.safetensors). Shards are mmapped; every
 * weight_map entry must exist in its shard. */
int ds_st_set_open(ds_st_set **out, const char *path);
/* A set over one already open file (taking ownership of f, also on error); name is used for messages. */
int ds_st_set_from_file(ds_st_set **out, ds_st_file *f, const char *name);
void ds_st_set_close(ds_st_set *s);
int ds_st_set_count(const ds_st_set *s);
const ds_st_tensor *ds_st_set_tensor_at(const ds_st_set *s, int i); /* shard order, then file order */
const ds_st_tensor *ds_st_set_find(const ds_st_set *s, const char *name);
/* The shard file name holding `name` (for messages), and the first shard's __metadata__ value. */
const char *ds_st_set_file_of(const ds_st_set *s, const char *name);
const char *ds_st_set_meta(const ds_st_set *s, const char *key);
int ds_st_set_shard_count(const ds_st_set *s);

#endif
