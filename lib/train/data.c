#include "train/data.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

int ds_batch_buf_init(ds_batch_buf *b, int cap_rows, int seq_len) {
    memset(b, 0, sizeof *b);
    if (seq_len <= 0) return ds_fail(DS_ERR, "batch buffer: sequence length %d", seq_len);
    b->seq_len = seq_len;
    return ds_batch_buf_reserve(b, cap_rows);
}

void ds_batch_buf_free(ds_batch_buf *b) {
    free(b->tokens), free(b->targets), free(b->pos), free(b->seg), free(b->len);
    memset(b, 0, sizeof *b);
}

int ds_batch_buf_reserve(ds_batch_buf *b, int cap_rows) {
    if (cap_rows <= b->cap_rows) return 0;
    size_t n = (size_t)cap_rows * b->seq_len;
    int32_t **arr[4] = {&b->tokens, &b->targets, &b->pos, &b->seg};
    for (int k = 0; k < 4; k++) {
        int32_t *p = realloc(*arr[k], n * sizeof *p);
        if (!p) return ds_fail(DS_ERR, "out of memory: batch of %d x %d tokens", cap_rows, b->seq_len);
        *arr[k] = p;
    }
    int32_t *len = realloc(b->len, (size_t)cap_rows * sizeof *len);
    if (!len) return ds_fail(DS_ERR, "out of memory: batch of %d x %d tokens", cap_rows, b->seq_len);
    b->len = len;
    b->cap_rows = cap_rows;
    return 0;
}

ds_batch ds_batch_buf_view(const ds_batch_buf *b, int row0, int rows) {
    size_t off = (size_t)row0 * b->seq_len;
    return (ds_batch){
        .B = rows,
        .T = b->seq_len,
        .tokens = b->tokens + off,
        .targets = b->targets + off,
        .pos = b->has_pos ? b->pos + off : NULL,
        .seg = b->has_seg ? b->seg + off : NULL,
        .len = b->has_len ? b->len + row0 : NULL,
    };
}

int64_t ds_batch_buf_count_targets(const ds_batch_buf *b, int row0, int rows) {
    int64_t n = 0;
    const int32_t *t = b->targets + (size_t)row0 * b->seq_len;
    for (size_t i = 0; i < (size_t)rows * b->seq_len; i++) n += t[i] >= 0;
    return n;
}

void ds_data_source_free(ds_data_source *s) {
    if (s && s->free) s->free(s);
}
