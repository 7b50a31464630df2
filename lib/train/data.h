/* data.h — where training rows come from: the data-source interface the trainer pulls micro-batches
 * through, and the batch buffer they are written into.
 *
 * Owns: ds_data_source (pretraining packs token shards; SFT packs chat samples with sample ids;
 * RL hands over rollouts — each is one implementation of this interface), ds_batch_buf (rows of
 * seq_len tokens with targets and optional positions / sample ids, viewed as ds_batch), and the
 * rule that a source's position is a small JSON value saved in trainer_state.json, so a resumed run
 * reads exactly the rows the uninterrupted run would have read.
 */
#ifndef DS_TRAIN_DATA_H
#define DS_TRAIN_DATA_H

#include <stdint.h>

#include "core/jsonw.h"
#include "model/model.h"

typedef struct {
    int seq_len, cap_rows, rows;
    int32_t *tokens, *targets; /* [cap_rows * seq_len] */
    int32_t *pos, *seg;        /* same size; used when has_pos / has_seg */
    int32_t *len;              /* [cap_rows] tokens per row, padding after them (ds_batch.len); used when has_len */
    int has_pos, has_seg, has_len;
} ds_batch_buf;

int ds_batch_buf_init(ds_batch_buf *b, int cap_rows, int seq_len);
void ds_batch_buf_free(ds_batch_buf *b);
/* Grow to hold at least cap_rows rows (keeps content). */
int ds_batch_buf_reserve(ds_batch_buf *b, int cap_rows);
/* A ds_batch over rows [row0, row0 + rows). */
ds_batch ds_batch_buf_view(const ds_batch_buf *b, int row0, int rows);
/* Valid targets (!= -1) in rows [row0, row0 + rows). */
int64_t ds_batch_buf_count_targets(const ds_batch_buf *b, int row0, int rows);

typedef struct ds_data_source ds_data_source;
struct ds_data_source {
    const char *kind; /* "packed", "sft", "rollouts": for messages and the state record */
    int seq_len;
    /* Append `rows` rows to buf (buf->rows grows by rows; capacity is the caller's job). A finite
     * source that runs out returns DS_ERR with a message naming it. */
    int (*next)(ds_data_source *s, ds_batch_buf *buf, int rows);
    /* Rows one pass holds (a validation set's size), or -1 when the source repeats forever. */
    int64_t (*rows_per_pass)(const ds_data_source *s);
    /* Back to the first row (validation sources restart for every evaluation). */
    void (*rewind)(ds_data_source *s);
    /* The position as one JSON value; and restoring it from what state_write wrote (jansson json_t*). */
    void (*state_write)(const ds_data_source *s, ds_jsonw *w);
    int (*state_read)(ds_data_source *s, const void *json, const char *where);
    void (*free)(ds_data_source *s);
    void *impl;
};

void ds_data_source_free(ds_data_source *s); /* NULL-safe */

#endif
