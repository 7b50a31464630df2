/* rlep.h — GRPO with expert parallelism (ds-rl --ep N): the whole policy the rollout engine decodes with.
 *
 * Owns: a second, inference-only ds_model with every expert (the one-process layout) on each rank, and
 * bringing its weights up to the policy's: the EP group's experts (and the replicated tensors) gathered
 * by name onto the group's first rank (train/distckpt.h) and broadcast over the group, once per rollout
 * batch or evaluation after an optimizer step (rl.h opts.sync_rollout). The routing biases are copied
 * (identical on every rank). Every rank then decodes with the same bits the policy has, so the
 * completions are those a one-process run with these weights draws.
 *
 * Memory: one more fp32 copy of the whole model per rank (plus the engine's KV cache, as without EP).
 * This is what makes the rollouts simple and bit-reproducible at demo sizes; at V3's scale the engine
 * itself would decode with the experts split (ds-generate --ep's exchange) instead of holding a copy.
 */
#ifndef DS_RL_RLEP_H
#define DS_RL_RLEP_H

#include "model/model.h"
#include "train/eprun.h"

typedef struct ds_rl_ep_rollout ds_rl_ep_rollout;

/* A whole-model copy for policy (an EP model of ep's layout), sized for the engine only; filled by the
 * first sync. */
int ds_rl_ep_rollout_create(ds_rl_ep_rollout **out, ds_model *policy, const ds_ep_run *ep);
ds_model *ds_rl_ep_rollout_model(ds_rl_ep_rollout *x);
/* Collective over the EP group (rl.h sync_rollout; ctx = x): the copy takes the policy's weights. */
int ds_rl_ep_rollout_sync(void *ctx);
/* Bytes of the copy's weights (for the memory report). */
size_t ds_rl_ep_rollout_bytes(const ds_rl_ep_rollout *x);
void ds_rl_ep_rollout_free(ds_rl_ep_rollout *x);

#endif
