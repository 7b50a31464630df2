/* epinfer.h — expert-parallel inference: the routed experts of every MoE layer spread over the ranks of
 * a communicator, with redundant copies of the busiest ones (DeepSeek-V3's EPLB), and the expert loads
 * each rank carries.
 *
 * Owns: the placement of experts on ranks (physical expert slots: rank r holds slots
 * [r*S, (r+1)*S), S = E/N primary experts — the block [r*E/N, (r+1)*E/N) the model loaded — plus
 * `extra` replica slots filled from a loads file), routing each (token, expert) pair to one copy
 * (round-robin per expert over its copies, counted over the run: deterministic), the per-layer
 * dispatch / local experts / combine through dist/ep.h, the replicas' weights (sent by their owners at
 * start), the lock-step of the ranks (rank 0 runs the sequences; before each forward it tells the
 * others which one follows, and they join its exchanges with no tokens of their own), the (token,
 * expert) pairs each rank computed, and the loads files (docs/formats.md "Expert loads").
 */
#ifndef DS_INFER_EPINFER_H
#define DS_INFER_EPINFER_H

#include <stdint.h>

#include "dist/comm.h"
#include "io/config.h"
#include "model/model.h"

typedef struct ds_infer_ep ds_infer_ep;

/* Per-layer loads of the routed experts: [n_layers][E] (layers that are not MoE hold zeros); n_layers =
 * num_hidden_layers + num_nextn_predict_layers. */
typedef struct {
    int n_layers, E;
    double *load;
} ds_expert_loads;

int ds_expert_loads_read(const char *path, const ds_config *cfg, ds_expert_loads *out);
int ds_expert_loads_write(const char *path, const ds_config *cfg, const ds_expert_loads *l);
void ds_expert_loads_free(ds_expert_loads *l);

/* EPLB's placement for one layer: every rank keeps its E/N primary experts and gets `extra` replica
 * slots; each replica goes to the expert with the largest load per copy, on the least loaded rank
 * (loads split evenly over copies) that has a free slot and no copy yet. phys[r*S + j] = the logical
 * expert in slot j of rank r (S = E/N + extra). */
void ds_eplb_place(const double *load, int E, int N, int extra, int32_t *phys);

/* comm: the EP group (all its ranks run ds-generate on the same model with the same options). m: the
 * model loaded with ep_size = comm size and this rank (only its experts). loads: where replicas go
 * (NULL: none; then extra must be 0). */
int ds_infer_ep_create(ds_infer_ep **out, const ds_comm *comm, ds_model *m, int extra, const ds_expert_loads *loads,
                       int max_tokens);
void ds_infer_ep_free(ds_infer_ep *ep);
int ds_infer_ep_rank(const ds_infer_ep *ep);

/* Routed experts of layer l for n tokens (rank 0; the others pass n = 0): x [n][D] the normalised input,
 * idx/w [n][K] the router's choice; y [n][D] += the weighted sum of their outputs. */
int ds_infer_ep_moe(ds_infer_ep *ep, int l, const float *x, const int32_t *idx, const float *w, int n, float *y);

/* Lock-step: rank 0 announces each forward (1: main layers, 2: the MTP module, 0: the end); the other
 * ranks call ds_infer_ep_serve, which joins the exchanges of every forward announced until the end. */
int ds_infer_ep_announce(ds_infer_ep *ep, int what);
int ds_infer_ep_serve(ds_infer_ep *ep);

/* (token, expert) pairs each rank computed so far, gathered on every rank: per_rank [N] (collective).
 * (Loads per logical expert: forward.h ds_infer_count_loads.) */
int ds_infer_ep_rank_loads(ds_infer_ep *ep, double *per_rank);
/* replica slots per rank, and the placement of layer l (NULL for a dense layer) */
const int32_t *ds_infer_ep_placement(const ds_infer_ep *ep, int l, int *slots_per_rank);

#endif
