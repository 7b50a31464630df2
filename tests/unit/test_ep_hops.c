/* lib/dist/ep: the one-hop and two-hop transports of expert-parallel dispatch/combine. Under mpirun
 * (tests/bats/dist.bats: 1, 2, 4 and 6 ranks) every rank checks, for every node size that divides the
 * world, that the two transports give the same plan, the same received rows and bit-identical combined
 * sums; that combine equals a sum this test forms itself in the documented order (per node in rank
 * order, then over nodes); and that the bytes each transport sends inside and across nodes are exactly
 * those counted here from every rank's routing (which each rank regenerates from the seed). */
#include "tap.h"
#include "mpi_tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "dist/comm.h"
#include "dist/dp.h"
#include "dist/ep.h"

#include <stdint.h>

static ds_comm comm;

enum { EPR = 5, K = 4, D = 19 }; /* experts per rank, top-k, row width */

static int tokens_of(int rank) { return 23 + 7 * rank; } /* uneven on purpose */

/* rank r's routing: K distinct experts per token, weights that are not dyadic (sums round) */
static void routing(int r, int n, int32_t *idx, float *w) {
    ds_rng g;
    ds_rng_init(&g, 7, 300 + (uint64_t)r);
    int E = EPR * n;
    for (int t = 0; t < tokens_of(r); t++)
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = (int)ds_rng_below(&g, (uint64_t)E);
                dup = 0;
                for (int k2 = 0; k2 < k; k2++) dup |= idx[t * K + k2] == e;
            } while (dup);
            idx[t * K + k] = e;
            w[t * K + k] = (float)(0.1 + 0.8 * ds_rng_uniform(&g));
        }
}

static float xval(int r, int t, int d) {
    uint32_t v[4];
    ds_philox4x32(11, (uint64_t)r, (uint64_t)t * D + d, v);
    float m = (float)(v[0] >> 8) / 16777216.0f - 0.5f;
    return m * (float)(1u << (v[1] % 20)) / 1024.0f; /* many binades: the order of addition shows */
}

/* What rank `rank` returns for one row: sum over the row's slots, in top-k order, of w * scale(e) * x. */
static void expert_row(const int32_t *gid, const float *w, int nslots, const float *x, float *y) {
    for (int d = 0; d < D; d++) {
        float s = 0;
        for (int k = 0; k < nslots; k++) s += w[k] * (1.0f + (float)gid[k] / 7.0f) * x[d];
        y[d] = s;
    }
}

/* Combine as documented, formed here: per node (ranks_per_node P) the rows of its ranks in rank order
 * from zero, then the node sums in node order from zero. */
static void reference_combine(int n, int P, const int32_t *idx, const float *w, const float *x, int T, float *out) {
    for (int t = 0; t < T; t++) {
        float *o = out + (size_t)t * D;
        for (int d = 0; d < D; d++) o[d] = 0;
        for (int g = 0; g < n / P; g++) {
            float part[D] = {0};
            int touched = 0;
            for (int r = g * P; r < (g + 1) * P; r++) {
                int32_t gid[K];
                float ww[K];
                int ns = 0;
                for (int k = 0; k < K; k++)
                    if (idx[t * K + k] / EPR == r) gid[ns] = idx[t * K + k], ww[ns++] = w[t * K + k];
                if (!ns) continue;
                float y[D];
                expert_row(gid, ww, ns, x + (size_t)t * D, y);
                for (int d = 0; d < D; d++) part[d] += y[d];
                touched = 1;
            }
            if (touched)
                for (int d = 0; d < D; d++) o[d] += part[d];
        }
    }
}

typedef struct {
    int64_t onehop_inter, onehop_intra; /* rows this rank sends on the one-hop path */
    int64_t hop1_inter, hop2_intra;     /* rows on the two-hop path: to other nodes, inside the node */
    /* rows arriving from other ranks, which combine sends back: one hop; hop 1 from other nodes (at me
     * as a relay); hop 2 from the other relays of my node */
    int64_t onehop_in_inter, onehop_in_intra, hop1_in_inter, hop2_in_intra;
} row_counts;

/* Rows rank `me` sends and receives, counted from every rank's routing. One hop: one row per token and
 * target rank. Two hops: one row per token and target node (to the relay there, the rank with the
 * source's local index, so across nodes unless it is the source's node), and from the relay one row per
 * target rank on its node. Rows a rank sends itself are not counted. */
static row_counts count_rows(int me, int n, int P) {
    row_counts c = {0};
    int32_t *idx = malloc(sizeof(int32_t) * K * 256);
    float *w = malloc(sizeof(float) * K * 256);
    for (int s = 0; s < n; s++) {
        routing(s, n, idx, w);
        for (int t = 0; t < tokens_of(s); t++) {
            int hit_rank[64] = {0}, hit_node[64] = {0};
            for (int k = 0; k < K; k++) {
                int r = idx[t * K + k] / EPR;
                hit_rank[r] = 1;
                hit_node[r / P] = 1;
            }
            if (s == me)
                for (int r = 0; r < n; r++) {
                    if (hit_rank[r] && r != me) *(r / P == me / P ? &c.onehop_intra : &c.onehop_inter) += 1;
                    if (r < n / P && hit_node[r] && r != me / P) c.hop1_inter++;
                }
            if (s % P == me % P) /* I am the relay on my node for s's tokens */
                for (int r = me / P * P; r < (me / P + 1) * P; r++)
                    if (hit_rank[r] && r != me) c.hop2_intra++;
            if (s != me && hit_rank[me]) *(s / P == me / P ? &c.onehop_in_intra : &c.onehop_in_inter) += 1;
            if (s % P == me % P && s / P != me / P && hit_node[me / P]) c.hop1_in_inter++;
            if (s % P != me % P && hit_rank[me]) c.hop2_in_intra++; /* through relay (my node, s's local index) */
        }
    }
    free(idx);
    free(w);
    return c;
}

/* The bytes one transport counted against the rows counted here: dispatch sent 2- and 4-byte rows, combine
 * and combine_slots send D and K floats back along the rows that arrived, the plan sent one metadata row per row out
 * (meta_inter / meta_intra bytes: the two hops' rows differ). */
static void check_bytes(const ds_ep *e, const char *what, int n, int P, int64_t out_inter, int64_t out_intra,
                        int64_t in_inter, int64_t in_intra, int64_t meta_inter, int64_t meta_intra) {
    int64_t row4 = D * 4, row2 = D * 2, back = row4 + K * 4; /* combine and combine_slots */
    CHECK(e->sent_dispatch.inter == out_inter * (row2 + row4) && e->sent_dispatch.intra == out_intra * (row2 + row4) &&
              e->sent_combine.inter == in_inter * back && e->sent_combine.intra == in_intra * back &&
              e->sent_plan.inter == out_inter * meta_inter && e->sent_plan.intra == out_intra * meta_intra,
          "%d ranks, %d per node: %s bytes: dispatch %lld/%lld, combine %lld/%lld, plan %lld/%lld inter/intra "
          "(counted: %lld/%lld rows out, %lld/%lld in)", n, P, what, (long long)e->sent_dispatch.inter,
          (long long)e->sent_dispatch.intra, (long long)e->sent_combine.inter, (long long)e->sent_combine.intra,
          (long long)e->sent_plan.inter, (long long)e->sent_plan.intra, (long long)out_inter, (long long)out_intra,
          (long long)in_inter, (long long)in_intra);
}

static int same_i64(const int64_t *a, const int64_t *b, int64_t n) { return !n || !memcmp(a, b, (size_t)n * 8); }

/* Run one transport: plan, dispatch fp32 and 2-byte rows, the experts, combine. */
typedef struct {
    ds_ep ep;
    float *recv, *y, *out, *slots;
    char *recv2;
    int rc;
} run_result;

static void run_transport(run_result *R, int n, int P, int transport, const int32_t *idx, const float *w,
                          const float *x, const uint16_t *x2, int T) {
    memset(R, 0, sizeof *R);
    int node_of[64];
    for (int j = 0; j < n; j++) node_of[j] = 10 * (j / P) + 5; /* labels need not be 0, 1, ... */
    R->rc = ds_ep_init(&R->ep, &comm, EPR * n, K, DS_A2A_OURS);
    if (!R->rc && transport >= 0) R->rc = ds_ep_set_nodes(&R->ep, node_of, (ds_ep_transport)transport);
    if (!R->rc) R->rc = ds_ep_plan(&R->ep, &comm, idx, w, T);
    if (R->rc) return;
    int64_t nr = R->ep.n_recv;
    R->recv = malloc((size_t)nr * D * 4 + 4);
    R->recv2 = malloc((size_t)nr * D * 2 + 2);
    R->y = malloc((size_t)nr * D * 4 + 4);
    R->out = malloc((size_t)T * D * 4 + 4);
    R->rc = ds_ep_dispatch(&R->ep, &comm, x2, R->recv2, (size_t)D * 2);
    if (!R->rc) R->rc = ds_ep_dispatch(&R->ep, &comm, x, R->recv, (size_t)D * 4);
    for (int64_t r = 0; r < nr && !R->rc; r++) {
        int32_t gid[K];
        int ns = 0;
        while (ns < K && R->ep.recv_expert[r * K + ns] >= 0) {
            gid[ns] = R->ep.recv_expert[r * K + ns] + comm.rank * EPR;
            ns++;
        }
        expert_row(gid, R->ep.recv_weight + r * K, ns, R->recv + r * D, R->y + r * D);
    }
    if (!R->rc) R->rc = ds_ep_combine(&R->ep, &comm, R->y, R->out, D);
    /* the gate weights' backward: a value per arriving slot, w * (e + 1), goes back to its token's slot;
     * unused slots hold NaN, which must not travel */
    float *g = malloc((size_t)nr * K * 4 + 4);
    for (int64_t r = 0; r < nr; r++)
        for (int k = 0; k < K; k++) {
            int le = R->ep.recv_expert[r * K + k];
            g[r * K + k] = le < 0 ? NAN : R->ep.recv_weight[r * K + k] * (float)(le + comm.rank * EPR + 1);
        }
    R->slots = malloc((size_t)T * K * 4 + 4);
    if (!R->rc) R->rc = ds_ep_combine_slots(&R->ep, &comm, g, idx, R->slots);
    free(g);
}

static void run_free(run_result *R) {
    free(R->recv);
    free(R->recv2);
    free(R->y);
    free(R->out);
    free(R->slots);
    ds_ep_free(&R->ep);
}

TEST(two_hop_matches_one_hop_bit_for_bit_and_counts_bytes_exactly) {
    int n = comm.size, me = comm.rank, T = tokens_of(me);
    if (n > 16) return;
    int32_t *idx = malloc(sizeof(int32_t) * T * K);
    float *w = malloc(sizeof(float) * T * K), *x = malloc(sizeof(float) * T * D);
    float *want = malloc(sizeof(float) * T * D), *flat = malloc(sizeof(float) * T * D);
    uint16_t *x2 = malloc(sizeof(uint16_t) * T * D);
    routing(me, n, idx, w);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
            x[t * D + d] = xval(me, t, d);
            x2[t * D + d] = (uint16_t)(t * 131 + d * 7 + me);
        }
    /* the default (no nodes given) is one node: the plain rank-ordered sum, as before nodes existed */
    run_result def;
    run_transport(&def, n, n, -1, idx, w, x, x2, T);
    reference_combine(n, n, idx, w, x, T, flat);
    CHECK(!def.rc && !memcmp(def.out, flat, sizeof(float) * T * D), "%d ranks, no nodes: combine is the rank-ordered sum", n);
    run_free(&def);
    for (int P = 1; P <= n; P++) {
        if (n % P) continue;
        run_result one, two;
        run_transport(&one, n, P, DS_EP_ONE_HOP, idx, w, x, x2, T);
        run_transport(&two, n, P, DS_EP_TWO_HOP, idx, w, x, x2, T);
        int degenerate = P == 1 || P == n; /* the relay is the target, or the sender: one hop runs */
        CHECK(!one.rc && !two.rc && two.ep.transport == (degenerate ? DS_EP_ONE_HOP : DS_EP_TWO_HOP),
              "%d ranks, %d per node: both transports run, two hops where they differ from one (%s)", n, P, ds_errmsg());
        if (one.rc || two.rc) continue;
        const ds_ep *a = &one.ep, *b = &two.ep;
        int same_plan = a->n_send == b->n_send && a->n_recv == b->n_recv && same_i64(a->send_rows, b->send_rows, n) &&
                        same_i64(a->recv_rows, b->recv_rows, n) && same_i64(a->send_off, b->send_off, n) &&
                        same_i64(a->recv_off, b->recv_off, n) &&
                        !memcmp(a->send_token, b->send_token, (size_t)a->n_send * 4) &&
                        !memcmp(a->recv_expert, b->recv_expert, (size_t)a->n_recv * K * 4) &&
                        !memcmp(a->recv_weight, b->recv_weight, (size_t)a->n_recv * K * 4);
        CHECK(same_plan, "%d ranks, %d per node: the same plan (rows per peer, row order, experts, weights)", n, P);
        CHECK(!memcmp(one.recv, two.recv, (size_t)a->n_recv * D * 4) &&
                  !memcmp(one.recv2, two.recv2, (size_t)a->n_recv * D * 2),
              "%d ranks, %d per node: dispatch delivers the same rows in the same order (4- and 2-byte rows)", n, P);
        reference_combine(n, P, idx, w, x, T, want);
        CHECK(!memcmp(one.out, want, sizeof(float) * T * D), "%d ranks, %d per node: one-hop combine = per-node sums in node order", n, P);
        CHECK(!memcmp(two.out, want, sizeof(float) * T * D), "%d ranks, %d per node: two-hop combine bit-identical to it", n, P);
        int slots_ok = 1;
        for (int i = 0; i < T * K; i++) slots_ok &= one.slots[i] == w[i] * (float)(idx[i] + 1);
        CHECK(slots_ok && !memcmp(one.slots, two.slots, sizeof(float) * T * K),
              "%d ranks, %d per node: combine_slots returns each slot's value to its token and slot on both paths", n, P);
        if (P > 1 && P < n) /* the data is order-sensitive: a plain rank-ordered sum would fail the checks above */
            CHECK(memcmp(want, flat, sizeof(float) * T * D), "%d ranks, %d per node: the node order changes some sum", n, P);

        row_counts rc = count_rows(me, n, P);
        check_bytes(a, "one-hop", n, P, rc.onehop_inter, rc.onehop_intra, rc.onehop_in_inter, rc.onehop_in_intra, 2 * K * 4,
                    2 * K * 4);
        if (degenerate) /* what ran is the one hop */
            check_bytes(b, "two-hop (one hop)", n, P, rc.onehop_inter, rc.onehop_intra, rc.onehop_in_inter,
                        rc.onehop_in_intra, 2 * K * 4, 2 * K * 4);
        else
            check_bytes(b, "two-hop", n, P, rc.hop1_inter, rc.hop2_intra, rc.hop1_in_inter, rc.hop2_in_intra, 2 * K * 4,
                        (2 * K + 1) * 4);
        /* over all ranks: fewer rows cross nodes whenever a node holds more than one rank */
        int64_t tot[2] = {a->sent_dispatch.inter, b->sent_dispatch.inter};
        ds_comm_allreduce_sum_i64(&comm, tot, 2);
        if (P == 1 || P == n)
            CHECK(tot[1] == tot[0], "%d ranks, %d per node: as many inter-node bytes (%lld) on both paths", n, P, (long long)tot[0]);
        else
            CHECK(tot[1] < tot[0], "%d ranks, %d per node: two-hop sends fewer inter-node bytes (%lld < %lld)", n, P,
                  (long long)tot[1], (long long)tot[0]);
        run_free(&one);
        run_free(&two);
    }
    free(idx);
    free(w);
    free(x);
    free(x2);
    free(want);
    free(flat);
}

TEST(two_hop_refuses_nodes_it_cannot_serve) {
    if (comm.size != 4) return;
    ds_ep ep;
    int uneven[4] = {0, 0, 0, 1}, scattered[4] = {0, 1, 0, 1};
    CHECK(!ds_ep_init(&ep, &comm, 8, 2, DS_A2A_OURS), "init");
    int rc = ds_ep_set_nodes(&ep, uneven, DS_EP_TWO_HOP);
    CHECK(rc && strstr(ds_errmsg(), "two-hop dispatch needs the same number of ranks on every node (4 ranks on 2 nodes)"),
          "uneven nodes refused: %s", ds_errmsg());
    CHECK(!ds_ep_set_nodes(&ep, uneven, DS_EP_ONE_HOP), "uneven nodes are fine for one hop");
    rc = ds_ep_set_nodes(&ep, scattered, DS_EP_ONE_HOP);
    CHECK(rc && strstr(ds_errmsg(), "ranks 0 and 2 share node 0 but rank 1 between them does not"),
          "a node's ranks must be consecutive: %s", ds_errmsg());
    ds_ep_free(&ep);
}

MPI_TAP_MAIN()
