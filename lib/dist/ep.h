/* ep.h — expert-parallel dispatch and combine (design.md section 6).
 *
 * Owns: moving each token to the ranks that own its routed experts and bringing the expert outputs
 * back. Experts are laid out in contiguous blocks: rank r owns experts [r*E/N, (r+1)*E/N). A token
 * travels to a rank once, however many of its top-k experts live there (as DeepEP does), carrying the
 * local expert ids and gate weights; the rank applies its experts and returns one weighted row per
 * received token; combine sums the rows from each rank in rank order (deterministic).
 * The payload is opaque bytes (row_bytes per token), so fp32, bf16 or FP8 rows all travel the same way.
 *
 * Nodes and transports (ds_ep_set_nodes; default: every rank on one node, one hop). Ranks of a node are
 * consecutive (layout.h: node = rank / ranks_per_node). The one-hop transport sends each token straight
 * to its expert ranks. The two-hop transport is DeepSeek-V3's IB-then-NVLink exchange: a token crosses
 * to each target node once, to the rank with its own local index there (the relay), which forwards it
 * to the ranks of that node holding its experts; combine reverses both hops, the relay summing its
 * node's rows so one row per token and node crosses back. The ranks see no difference: the plan fields
 * below, the received rows and their order are those of the one-hop path (rows grouped by source rank,
 * in token order), and combine sums in the same order on both paths: per node, the node's rows in rank
 * order starting from zero, then those node sums in node order starting from zero. Results are bit for
 * bit the same; only the bytes that cross nodes change (sent_* below count them).
 */
#ifndef DS_DIST_EP_H
#define DS_DIST_EP_H

#include <stddef.h>
#include <stdint.h>

#include "dist/a2a.h"
#include "dist/comm.h"

typedef enum { DS_EP_ONE_HOP = 0, DS_EP_TWO_HOP = 1 } ds_ep_transport;

/* Bytes a rank sent to other ranks of its own node and of other nodes (copies to itself not counted). */
typedef struct {
    int64_t intra, inter;
} ds_ep_bytes;

struct ds_ep_hops; /* the two-hop plan (ep.c) */

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
    /* where the ranks sit and how rows travel (ds_ep_set_nodes) */
    ds_ep_transport transport;
    int n_nodes;
    int *node_of;                   /* [n_ranks] node index (0 .. n_nodes-1) of each rank */
    /* bytes this rank sent: routing metadata (plan), token rows (dispatch), rows going back (combine and
     * combine_slots);
     * they add up over calls until the caller clears them. The per-peer row counts are not counted. */
    ds_ep_bytes sent_plan, sent_dispatch, sent_combine;
    struct ds_ep_hops *hops;        /* the two-hop transport's own plan */
    float *partial;                 /* combine scratch: per-node sums [n_tokens][D] */
    size_t partial_cap;
    uint16_t *wire16;               /* ds_ep_combine_bf16's rows as sent and received */
    size_t wire16_cap;
} ds_ep;

int ds_ep_init(ds_ep *ep, const ds_comm *c, int n_experts, int topk, ds_a2a_algo algo);
void ds_ep_free(ds_ep *ep);

/* Say where c's ranks sit and pick the transport; after ds_ep_init, before ds_ep_plan.
 * node_of[j]: any label for the node of rank j of c, equal labels consecutive (NULL: one node). For an
 * EP group of layout.h, node_of[e] = ds_layout_node_of_ep_rank(L, e). Two hops need every node to hold
 * the same number of the group's ranks (an error otherwise); with one rank per node, or one node, they
 * are the one hop, which then runs (ep->transport reads DS_EP_ONE_HOP). Every rank passes the same
 * values. */
int ds_ep_set_nodes(ds_ep *ep, const int *node_of, ds_ep_transport transport);

/* The byte counts and offsets of one exchange of rows grouped by peer (send_rows / recv_rows [n_ranks]:
 * the plan's, or the reverse for the combine) into ep->bcount/boff (send) and bcount2/boff2 (receive),
 * and the bytes into acct (NULL: not counted). Every transport moves the plan's rows with these: dist/a2a.h
 * over MPI, dist/nccl.h between GPUs. */
void ds_ep_exchange_layout(ds_ep *ep, ds_ep_bytes *acct, const int64_t *send_rows, const int64_t *recv_rows,
                           size_t row_bytes);

/* Build the plan from the router's choice: topk_idx/topk_w [n_tokens*topk] (global expert ids).
 * Exchanges row counts and the per-row expert ids and weights. */
int ds_ep_plan(ds_ep *ep, const ds_comm *c, const int32_t *topk_idx, const float *topk_w, int n_tokens);

/* Send token rows x [n_tokens][row_bytes] to their expert ranks; recv [n_recv][row_bytes]. */
int ds_ep_dispatch(ds_ep *ep, const ds_comm *c, const void *x, void *recv, size_t row_bytes);

/* Return rows y [n_recv][D] (each already the weighted sum over that rank's experts) and sum them
 * per token into out [n_tokens][D] (overwritten). fp32 rows. */
int ds_ep_combine(ds_ep *ep, const ds_comm *c, const float *y, float *out, int D);

/* The same with the rows on the wire in bf16 (round to nearest even; V3 combines in bf16, forward and
 * backward): each exchange sends bf16 rows and widens what arrives, the sums stay float32 in the same order
 * (a two-hop relay sums its node's rows in float32 and sends the sum in bf16). Bytes: 2 D per row. */
int ds_ep_combine_bf16(ds_ep *ep, const ds_comm *c, const float *y, float *out, int D);

/* The backward of the plan's gate weights: g [n_recv][topk] holds, for each arriving row, one value per
 * slot in the order the row's expert ids arrived (recv_expert; -1 slots ignored); each value goes back to
 * the token and slot of topk_idx (the plan's) it came from: out [n_tokens][topk], 0 where no value came.
 * (The backward of the combine is ds_ep_dispatch of d(out), that of the dispatch ds_ep_combine of dx.) */
int ds_ep_combine_slots(ds_ep *ep, const ds_comm *c, const float *g, const int32_t *topk_idx, float *out);

#endif
