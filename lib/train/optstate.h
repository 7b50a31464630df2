/* optstate.h — the optimizer state of a training checkpoint: one file, or shards with an index.
 *
 * Owns: how AdamW's moments are stored and found again whatever the layout that reads them
 * (docs/formats.md "Optimizer state"):
 *   optimizer.safetensors  the whole state, "<HF name>.exp_avg" / ".exp_avg_sq" in the tensor's shape:
 *                          written when one rank holds all of it (one process, or --no-zero)
 *   optimizer.index.json + optimizer-RRRRR-of-WWWWW.safetensors   ZeRO-1 (or any layout where ranks
 *                          hold different parts): rank R's file holds the flat element ranges of the
 *                          tensors it writes, 1-D; the index lists, per HF tensor name, its element
 *                          count and the pieces (file, [start, end)) that tile it.
 * A reader takes the part of each tensor it holds from whichever pieces overlap it, so a run resumes on
 * another number of ranks (or with ranks owning other tensors: expert or pipeline parallelism).
 * Moments are stored as kept: fp32, or bf16 with --bf16-moments (exact either way).
 */
#ifndef DS_TRAIN_OPTSTATE_H
#define DS_TRAIN_OPTSTATE_H

#include "model/model.h"
#include "train/zero.h"

#define DS_OPTSTATE_FILE "optimizer.safetensors"
#define DS_OPTSTATE_INDEX "optimizer.index.json"

/* Whether a run of `world` ranks with this optimizer saves shards (else rank 0 writes the one file). The
 * same answer on every rank of a run. */
int ds_optstate_sharded(const ds_zero *z, int world);
/* Shard file name of rank r of world. */
void ds_optstate_shard_name(int r, int world, char *buf, size_t n);

/* The one file (this rank holds every moment of the table). */
int ds_optstate_write_file(const ds_zero *z, const ds_param *info, int n_info, const char *path);
/* This rank's shard: the pieces it writes (its slice of a sharded group; a replicated group's range on
 * the group's rank 0 only, so every element is written once). */
int ds_optstate_write_shard(const ds_zero *z, const ds_param *info, int n_info, const char *path);
/* The index over the shards in dir (files 0..world-1, read back): every tensor's pieces must tile it.
 * *json: malloc'd text. */
int ds_optstate_index(const char *dir, int world, char **json);

/* Moments for what this rank holds, from the checkpoint directory dir (either form). */
int ds_optstate_load(ds_zero *z, const ds_param *info, int n_info, const char *dir);

#endif
