/* ep.h — expert-parallel dispatch and combine (design.md section 6).
 *
 * Owns: moving each token to the ranks that own its routed experts and bringing the expert outputs
 * back. Experts are laid out in contiguous blocks: rank r owns experts [r*E/N, (r+1)*E/N). A token
 * travels to a rank once, however many of its top-k experts live there (as DeepEP does), carrying the
 * local expert ids and gate weights; the rank applies its experts and returns one weighted row per
 * received token; combine sums the rows from each rank in rank order (deterministic).
 * The payload is opaque bytes (row_bytes per token), so fp32, bf16 or FP8 rows all travel the same way.
 */
#ifndef DS_DIST_EP_H
#define DS_DIST_EP_H

#include <stddef.h>
#include <stdint.h>

#include "dist/a2a.h"
#include "dist/comm.h"

typedef struct {
    int n_ranks, rank, topk, n_experts, experts_per_rank;
    ds_a2a_algo algo;
    /* plan of the current batch */
    int n_tokens;                   /* local tokens */
    int64_t n_send, n_recv;         /* rows leaving and arriving */
    int64_t *send_rows, *recv_rows; /* [n_ranks] rows per peer */
    int64_t *send_off, *recv_off;   /* [n_ranks] row offsets */
    int32_t *send_token;            /* [n_send] local token of each row sent, grouped by destination */
    int32_t *recv_expert;           /* [n_recv*topk] local expert ids of each arriving row, -1 padded */
    float *recv_weight;             /* [n_recv*topk] their gate weights */
    /* scratch, grown as needed */
    int64_t *bcount, *boff, *bcount2, *boff2; /* byte counts/offsets [n_ranks] each */
    char *sendbuf;
    size_t sendbuf_cap;
    int32_t *meta_send;
    size_t meta_cap;
    int64_t send_cap, recv_cap;
} ds_ep;

int ds_ep_init(ds_ep *ep, const ds_comm *c, int n_experts, int topk, ds_a2a_algo algo);
void ds_ep_free(ds_ep *ep);

/* Build the plan from the router's choice: topk_idx/topk_w [n_tokens*topk] (global expert ids).
 * Exchanges row counts and the per-row expert ids and weights. */
int ds_ep_plan(ds_ep *ep, const ds_comm *c, const int32_t *topk_idx, const float *topk_w, int n_tokens);

/* Send token rows x [n_tokens][row_bytes] to their expert ranks; recv [n_recv][row_bytes]. */
int ds_ep_dispatch(ds_ep *ep, const ds_comm *c, const void *x, void *recv, size_t row_bytes);

/* Return rows y [n_recv][D] (each already the weighted sum over that rank's experts) and sum them
 * per token into out [n_tokens][D] (overwritten). fp32 rows. */
int ds_ep_combine(ds_ep *ep, const ds_comm *c, const float *y, float *out, int D);

/* The backward of the plan's gate weights: g [n_recv][topk] holds, for each arriving row, one value per
 * slot in the order the row's expert ids arrived (recv_expert; -1 slots ignored); each value goes back to
 * the token and slot of topk_idx (the plan's) it came from: out [n_tokens][topk], 0 where no value came.
 * (The backward of the combine is ds_ep_dispatch of d(out), that of the dispatch ds_ep_combine of dx.) */
int ds_ep_combine_slots(ds_ep *ep, const ds_comm *c, const float *g, const int32_t *topk_idx, float *out);

#endif
