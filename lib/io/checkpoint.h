/* checkpoint.h — model checkpoints (design.md 4.1-4.2): a Hugging Face directory, or one safetensors
 * stream carrying the config and tokenizer in its metadata.
 *
 * Owns: what a checkpoint contains and how it is found, read and replaced.
 *   directory  config.json, model.safetensors (or model-0000N-of-0000M.safetensors + index),
 *              tokenizer.json, generation_config.json, and any extra files (trainer_state.json,
 *              optimizer.safetensors, ...). Written into <dir>.tmp-<pid>, every file fsynced, then
 *              renamed into place; an existing checkpoint is swapped out with renameat2(RENAME_EXCHANGE)
 *              and deleted, so a reader sees the old checkpoint or the new one and a writer killed at
 *              any point leaves the previous checkpoint intact.
 *   stream     a single safetensors file or pipe whose __metadata__ holds "config" (config.json text),
 *              "tokenizer" (tokenizer.json text) and "file:<name>" for other small text files
 *              (generation_config.json, ...). Readable from a pipe: the header comes first.
 * Readers accept a directory, a .safetensors file (its config from the metadata, or config.json next
 * to it), or "-" (a stream on stdin, read into memory).
 */
#ifndef DS_IO_CHECKPOINT_H
#define DS_IO_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"
#include "io/config.h"

/* ---- reading -------------------------------------------------------------------------------- */

typedef struct ds_ckpt ds_ckpt;

int ds_ckpt_open(ds_ckpt **out, const char *path);
void ds_ckpt_close(ds_ckpt *c);

const ds_config *ds_ckpt_config(const ds_ckpt *c);
/* tokenizer.json text (NUL-terminated) or NULL when the checkpoint has none. */
const char *ds_ckpt_tokenizer(const ds_ckpt *c, size_t *len);
/* Tensors (HF names). */
const ds_st_set *ds_ckpt_tensors(const ds_ckpt *c); /* the whole set, for ds_model_load_weights */
int ds_ckpt_count(const ds_ckpt *c);
const ds_st_tensor *ds_ckpt_tensor_at(const ds_ckpt *c, int i);
const ds_st_tensor *ds_ckpt_find(const ds_ckpt *c, const char *name);
/* Read a tensor as float32 after checking it exists with this shape. Errors:
 * "checkpoint: missing tensor <name>: <path>", "checkpoint: <name> has shape [a, b], expected [c, d]: <file>".
 * An FP8 tensor reads as its code values (the fp8 decoder, ds_st_set_fp8_decoder) unless a
 * "<name>_scale_inv" sits beside it: a block-scaled weight is refused here (fp8/ckpt_convert.h
 * ds_fp8_ckpt_read_f32 dequantizes it). */
int ds_ckpt_read_f32(const ds_ckpt *c, const char *name, int ndim, const int64_t *shape, float *out);
/* Extra files: a directory's <name>, or a stream's "file:<name>" metadata (also "config.json" and
 * "tokenizer.json" by those names). *data is malloc'd and NUL-terminated; returns DS_ERR with
 * "checkpoint: no <name>: <path>" when absent (check ds_ckpt_has_file first for optional ones). */
int ds_ckpt_has_file(const ds_ckpt *c, const char *name);
int ds_ckpt_read_file(const ds_ckpt *c, const char *name, char **data, size_t *len);
/* The directory (NULL for a stream), for files read by other means (optimizer.safetensors). */
const char *ds_ckpt_dir(const ds_ckpt *c);
const char *ds_ckpt_where(const ds_ckpt *c);
int ds_ckpt_is_stream(const ds_ckpt *c);

/* Is `dir` a complete checkpoint directory (config.json and model weights present)? */
int ds_ckpt_is_complete(const char *dir);
/* For --resume: `dir` itself when it is a complete checkpoint, else its newest complete checkpoint
 * subdirectory (highest "step" in trainer_state.json, then newest config.json), skipping the
 * temporary directories of unfinished writes. DS_ERR "checkpoint: none found under <dir>" if none. */
int ds_ckpt_find_latest(const char *dir, char *out, size_t n);

/* ---- writing -------------------------------------------------------------------------------- */

/* ds-generate's sampling defaults, which the generation_config.json written with a checkpoint states
 * (transformers' generate then samples the same way: top_k 0 = all tokens). */
#define DS_GEN_TEMPERATURE 1.0
#define DS_GEN_TOP_K 0
#define DS_GEN_TOP_P 1.0
#define DS_GEN_MAX_NEW 128

/* Before any work: may a tool write its output to `out` (a directory, a .safetensors file, or "-")?
 * No silent loss: an existing checkpoint (a directory with config.json, model weights or training
 * state, or a .safetensors file) is replaced only with force, or, for a directory, when resuming the
 * run saved there (resume: --resume's path, naming out or holding it as its newest checkpoint;
 * resumable: the tool has --resume, which the message then offers);
 * out naming the same file or directory as the input `in` (device and inode) needs force; a
 * directory holding anything else is never replaced. Absent, empty, "-": fine. Errors name the
 * directory and the flag ("output directory holds a checkpoint (give --force ...): <out>"). */
int ds_ckpt_check_out(const char *out, const char *in, int force, int resumable, const char *resume);
/* Does a writer given `path` write the directory form (not "-", not a file ending in .safetensors)? */
int ds_ckpt_out_is_dir(const char *path);

typedef struct ds_ckpt_writer ds_ckpt_writer;

typedef struct {
    uint64_t max_shard_bytes; /* directory form: split model.safetensors (0: one file) */
    int stream;               /* write the stream form to a file path (default for "-" or *.safetensors) */
} ds_ckpt_write_opts;

/* path: a directory (created or replaced), "-" (stream to stdout), or a *.safetensors file (stream
 * form, atomically). An existing directory is replaced only if it is a checkpoint or empty. */
int ds_ckpt_writer_begin(ds_ckpt_writer **out, const char *path, const ds_ckpt_write_opts *opts);
/* Metadata. In the stream form these must come before the first tensor data; in the directory form
 * any time before commit. The config is required. */
int ds_ckpt_writer_set_config(ds_ckpt_writer *w, const ds_config *cfg);
int ds_ckpt_writer_set_tokenizer(ds_ckpt_writer *w, const char *json, size_t len);
/* An extra file (directory: <name>; stream: "file:<name>" metadata, text only). Replaces a file of
 * the same name; "generation_config.json" replaces the default one written from the config. */
int ds_ckpt_writer_add_file(ds_ckpt_writer *w, const char *name, const void *data, size_t len);
/* Directory form only: the path of <name> inside the temporary directory, for files written by other
 * means (optimizer.safetensors through ds_st_save). They are fsynced at commit. */
int ds_ckpt_writer_file_path(ds_ckpt_writer *w, const char *name, char *out, size_t n);

/* Tensors, all declared before the first data, in the order they are stored.
 * add_f32 / add_raw declare a tensor whose data is taken from the pointer when its turn comes (the
 * pointer must stay valid until commit); declare + data stream the bytes instead, in declaration order
 * (tensors added by pointer in between are written automatically). */
int ds_ckpt_writer_add_f32(ds_ckpt_writer *w, const char *name, int ndim, const int64_t *shape, const float *data,
                           ds_dtype store_as /* F32, BF16 or F16 */);
int ds_ckpt_writer_add_raw(ds_ckpt_writer *w, const char *name, ds_dtype dtype, int ndim, const int64_t *shape,
                           const void *bytes);
int ds_ckpt_writer_declare(ds_ckpt_writer *w, const char *name, ds_dtype dtype, int ndim, const int64_t *shape);
int ds_ckpt_writer_data(ds_ckpt_writer *w, const void *bytes, size_t n);
int ds_ckpt_writer_data_f32(ds_ckpt_writer *w, const float *src, size_t n);

/* Write what is pending, fsync, rename into place (replacing an existing checkpoint atomically).
 * Frees w, also on error (then nothing at the destination changed). */
int ds_ckpt_writer_commit(ds_ckpt_writer *w);
void ds_ckpt_writer_abort(ds_ckpt_writer *w);

#endif
