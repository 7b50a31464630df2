/* distckpt.h — moving tensors between ranks by name, for checkpoints of runs whose ranks hold different
 * parts of the model (expert parallelism: each rank its experts; pipeline stages: each its layers).
 *
 * Owns: gathering every tensor of a wanted table (e.g. the one-process model's, ds_model_layout) onto
 * one rank from whichever ranks hold it, and the reverse scatter. Tensors are matched by name
 * (ds_param.name) and must have the same element count on both sides; where several ranks hold a
 * tensor (replicas), the lowest rank's copy is taken. Values are fp32, offsets are in floats into the
 * caller's buffers. Collective over c: every rank calls with its own table. Memory: the root holds the
 * whole wanted buffer (the caller's), each other rank a send buffer of what it contributes. A rank's
 * table may hold any subset (its experts, its stage's layers, both).
 *
 *   rank with some tensors  --gather-->  root with the wanted table (then written as one HF checkpoint)
 *   root with a full table  --scatter-->  each rank the tensors of its own table
 */
#ifndef DS_TRAIN_DISTCKPT_H
#define DS_TRAIN_DISTCKPT_H

#include "dist/comm.h"
#include "model/model.h"

/* have/have_buf: this rank's tensors and values. want/want_buf: the table to fill on root (its buffer is
 * written there only; other ranks may pass NULL buffers but the same want table). An error names a
 * wanted tensor no rank holds, or a count that differs. */
int ds_distckpt_gather(const ds_comm *c, int root, const ds_param *have, int n_have, const float *have_buf,
                       const ds_param *want, int n_want, float *want_buf);

/* The reverse: root's table src/src_buf (other ranks: the same table, NULL buffer); every rank receives
 * the tensors of its table dst into dst_buf. An error names a tensor root does not have. */
int ds_distckpt_scatter(const ds_comm *c, int root, const ds_param *src, int n_src, const float *src_buf,
                        const ds_param *dst, int n_dst, float *dst_buf);

/* A whole model for a checkpoint of a run whose ranks hold parts of it (expert parallelism, pipeline
 * stages): the one-process model's table (ds_model_layout, every rank) and its values (root only). */
typedef struct {
    ds_param *info;
    int n;
    float *buf;
} ds_distckpt_full;

/* Every tensor of the one-process model gathered onto root of c from the ranks holding it, src being
 * values in m's layout (its parameters): the checkpoint then is the one-process run's, bit for bit when
 * the weights are. The table is made at the first call and kept. Collective. */
int ds_distckpt_gather_model(ds_distckpt_full *f, const ds_model *m, const ds_comm *c, int root, const float *src);
void ds_distckpt_full_free(ds_distckpt_full *f);

#endif
