/* moe.h — the routed experts of a MoE layer as a function of rows: the seam for expert parallelism.
 *
 * Owns: the contract between a MoE layer's routing and its experts. A MoE layer (spec 4) is
 *   route (layer.h ds_moe_route) -> dispatch -> experts -> combine -> + shared experts.
 * Locally the rows are the tokens and each carries its K routed (expert, weight) pairs. With expert
 * parallelism a dispatch (lib/dist/ep.h) delivers a token once to every rank owning one of its experts,
 * as a row carrying K pairs (the rank's local expert ids, -1 for slots routed elsewhere); the functions
 * below run unchanged on those rows, and the EP combine sums each token's returned rows. The backward
 * mirrors it: the EP combine's backward sends dy to the rows' ranks, ds_moe_experts_bwd returns dx per
 * row and dw per (row, slot), and the dispatch's backward sums dx per token and returns dw to the router.
 */
#ifndef DS_MODEL_MOE_H
#define DS_MODEL_MOE_H

#include <stdint.h>

#include "model/model.h"

/* y[r, :] += Σ_k w[r*K+k] · Expert_{e0 + idx[r*K+k]}(x[r, :]) for rows r < rows, over the slots with
 * 0 <= idx < ne (SwiGLU experts of layer l, spec 4.3; K = num_experts_per_tok). x, y: [rows, D]. Keeps in
 * layer l's training record what ds_moe_experts_bwd needs (rows <= the batch's tokens). The expert row
 * counts come to the host (a synchronization point) for the grouped GEMMs, and *load (may be NULL) gets
 * them; unless the Linear table has device-offset grouped GEMMs and there is no expert parallelism: then
 * nothing waits, and layer l's slot of the model's expert loads is filled by ds_moe_stats_sync. */
int ds_moe_experts_fwd(ds_model *m, int l, int e0, int ne, const float *x, const int32_t *idx, const float *w,
                       int rows, float *y, int32_t *load);
/* What the forward's MoE layers left on the device on that path (their expert loads, balance-loss terms)
 * read into the model's expert_load and bal_loss: one synchronization for all layers; nothing when none are
 * pending. Called where the forward's statistics are handed out (head_fwd, fwd_stats). */
void ds_moe_stats_sync(ds_model *m);
/* Backward of layer l's last ds_moe_experts_fwd (same x, idx, w): dx [rows, D] accumulated, dw [rows, K]
 * written (0 for empty slots), the experts' weight gradients accumulated. */
void ds_moe_experts_bwd(ds_model *m, int l, int e0, int ne, const float *x, const int32_t *idx, const float *w,
                        int rows, const float *dy, float *dx, float *dw);

#endif
