/* kvstream.h — prefill/decode disaggregation: the stream between `ds-generate --prefill-only` and
 * `ds-generate --decode-from`.
 *
 * Owns: the stream format (docs/formats.md "Prefill stream"): a header with the model's config
 * fingerprint, one record per prompt (its sequence id and sampling settings, the prompt, the first
 * token, the MTP draft and the distribution it was drawn from, and the latent KV cache rows of every
 * layer the decoding side needs), each with its own CRC-32C, and a trailer with the record count so a
 * cut stream is detected; writing it from the engine's cache as the prefill side hands sequences off
 * (generate.h on_prefilled), and reading it back as the decoding side's prompt source (next, seq_opts,
 * restore), writing the rows into the decoding engine's cache. Everything the decoding side continues
 * from is carried bit for bit, so its output is that of one process.
 */
#ifndef DS_INFER_KVSTREAM_H
#define DS_INFER_KVSTREAM_H

#include <stdint.h>
#include <stdio.h>

#include "infer/forward.h"
#include "infer/generate.h"
#include "io/config.h"

#define DS_KVS_VERSION 1

/* FNV-1a 64 of the config as ds_config_to_json writes it: two models whose configs differ in any field
 * have different fingerprints. */
int ds_kvs_fingerprint(const ds_config *cfg, uint64_t *out);

/* ---- writing ---- */
typedef struct ds_kvs_writer ds_kvs_writer;

/* Write the header to f (named `where` in messages). mtp_layers: MTP cache layers carried (0 or 1). */
int ds_kvs_writer_open(ds_kvs_writer **out, FILE *f, const char *where, const ds_config *cfg, int mtp_layers);
/* ds_gen_io.on_prefilled (sink = the writer): one record from the engine's cache slot. */
int ds_kvs_on_prefilled(void *w, ds_infer *e, const ds_gen_seq *s, const ds_gen_seq_opts *so, const ds_gen_handoff *h);
/* Counts so far: records, bytes written (header and trailer included), prompt tokens carried. */
void ds_kvs_writer_counts(const ds_kvs_writer *w, int64_t *records, int64_t *bytes, int64_t *tokens);
/* ok: write the trailer and flush. Frees w either way. */
int ds_kvs_writer_close(ds_kvs_writer *w, int ok);

/* ---- reading ---- */
typedef struct ds_kvs_reader ds_kvs_reader;

/* Read and check the header. cfg: the decoding model (its fingerprint, layer count and width must be
 * the stream's); NULL accepts any header within the format's limits (the fuzz target). */
int ds_kvs_reader_open(ds_kvs_reader **out, FILE *f, const char *where, const ds_config *cfg);
void ds_kvs_reader_free(ds_kvs_reader *r);
int ds_kvs_reader_mtp_layers(const ds_kvs_reader *r);

/* One record as read (valid until the next read). */
typedef struct {
    uint64_t id, stream;
    ds_sampling sampling;
    int prompt_len, truncated;
    const int32_t *prompt;
    int32_t token;
    float logprob;
    int has_draft;
    int32_t draft;
    int q_n;
    const int32_t *q_ids; /* ascending */
    const double *q_p;
    const float *rows;    /* [n_layers][prompt_len][width] */
} ds_kvs_record;

/* The next record (*got = 1), or the trailer (*got = 0; the record count and the end of the stream
 * checked). Errors: "prefill stream: <problem>: <where>". */
int ds_kvs_read(ds_kvs_reader *r, const ds_kvs_record **rec, int *got);

/* ds_gen_io callbacks (src = the reader): the next record's prompt; its sampling and stream; its cache
 * rows into the engine (layers the engine lacks are skipped; an engine that speculates needs MTP state). */
int ds_kvs_next_cb(void *r, uint64_t *id, const int32_t **ids, int *n, int *got);
int ds_kvs_seq_opts_cb(void *r, uint64_t id, ds_gen_seq_opts *so);
int ds_kvs_restore_cb(void *r, ds_infer *e, ds_gen_handoff *h);

/* Point io at the stream: the prefill side's hand-off into w, or the decoding side's prompts from r. */
void ds_kvs_io_prefill(ds_gen_io *io, ds_kvs_writer *w);
void ds_kvs_io_decode(ds_gen_io *io, ds_kvs_reader *r);

#endif
