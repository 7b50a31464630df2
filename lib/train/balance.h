/* balance.h — auxiliary-loss-free load balancing (DeepSeek-V3 section 2.1.2) and its measurements.
 *
 * Owns: the per-step expert load counts (summed over every micro-batch of an optimizer step, and in
 * parallel runs over every rank, so the update sees the whole batch), the bias update
 *   b_i += gamma * sign(mean_j c_j - c_i)      per MoE layer, after the optimizer step,
 * and the balance statistics logged per layer: min/max load and the maximal violation
 *   MaxVio = max_i c_i / mean_j c_j - 1       (Wang et al., "Auxiliary-Loss-Free Load Balancing").
 * The bias has no gradient and is not touched by the optimizer; it only steers top-k selection.
 */
#ifndef DS_TRAIN_BALANCE_H
#define DS_TRAIN_BALANCE_H

#include <stdint.h>

typedef struct {
    int n_layers, n_experts;
    int64_t *count; /* [n_layers][n_experts] tokens routed during the current step */
} ds_balance;

typedef struct {
    double max_vio; /* max load / mean load - 1 (0 when perfectly balanced or no tokens) */
    int64_t min_load, max_load;
} ds_balance_stats;

int ds_balance_init(ds_balance *b, int n_layers, int n_experts);
void ds_balance_free(ds_balance *b);
void ds_balance_reset(ds_balance *b);
/* Add one forward pass's loads: [n_layers][n_experts]. */
void ds_balance_add(ds_balance *b, const int32_t *load);
/* Apply the sign update to bias[l][0..n_experts) for every layer (bias[l] may be NULL: skipped). */
void ds_balance_update_bias(const ds_balance *b, float *const *bias, double gamma);
void ds_balance_layer_stats(const ds_balance *b, int layer, ds_balance_stats *out);

#endif
