/* lib/dist: deterministic data-parallel reductions and expert-parallel plans. Run alone it checks the
 * one-rank paths; tests/bats/dist.bats runs it under mpirun, where every rank checks the sums bit for
 * bit against a local rank-ordered sum. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "dist/comm.h"
#include "dist/dp.h"
#include "dist/layout.h"

#include <stdint.h>

static ds_comm comm;

#include "mpi_tap.h"

/* rank r's contribution to element i: magnitudes spread over many binades so the order of addition
 * changes the rounded result */
static float contrib(int r, size_t i) {
    uint32_t w[4];
    ds_philox4x32(99, (uint64_t)r, i, w);
    float m = (float)(w[0] >> 8) / 16777216.0f - 0.5f;
    return m * (float)(1u << (w[1] % 24)) / 4096.0f;
}

/* This rank's contributions x[n] and the rank-ordered sums want[n] every rank must end with. */
static void contributions(size_t n, float **x, float **want) {
    *x = malloc(n * sizeof **x + 4), *want = malloc(n * sizeof **want + 4);
    for (size_t i = 0; i < n; i++) {
        (*x)[i] = contrib(comm.rank, i);
        float s = 0;
        for (int r = 0; r < comm.size; r++) s += contrib(r, i);
        (*want)[i] = s;
    }
}

TEST(allreduce_f32_is_rank_ordered_and_identical) {
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 10007, 300001};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        float *x, *want;
        contributions(n, &x, &want);
        int rc = ds_dp_allreduce_f32(&comm, x, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += memcmp(&x[i], &want[i], 4) != 0;
        CHECK(rc == 0 && bad == 0, "n=%zu on %d ranks: %zu elements differ from the rank-ordered sum", n, comm.size, bad);
        free(x);
        free(want);
    }
}

TEST(reduce_scatter_then_allgather_is_the_allreduce) {
    static const size_t sizes[] = {0, 3, 100, 4096, 10007};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si], lo, hi;
        ds_dp_slice(n, comm.size, comm.rank, &lo, &hi);
        float *x, *want;
        contributions(n, &x, &want);
        int rc = ds_dp_reduce_scatter_f32(&comm, x, n);
        size_t bad = 0;
        for (size_t i = lo; i < hi; i++) bad += memcmp(&x[i], &want[i], 4) != 0;
        CHECK(rc == 0 && bad == 0, "reduce-scatter n=%zu: my slice [%zu, %zu) holds the rank-ordered sums (%zu differ)", n, lo, hi, bad);
        /* every rank now puts a value of its own into its slice: the all-gather must bring each from its owner */
        for (size_t i = lo; i < hi; i++) x[i] = (float)(i * 7 + 1);
        rc = ds_dp_allgather_f32(&comm, x, n);
        bad = 0;
        for (size_t i = 0; i < n; i++) bad += x[i] != (float)(i * 7 + 1);
        CHECK(rc == 0 && bad == 0, "all-gather n=%zu on %d ranks: %zu elements not their owner's", n, comm.size, bad);
        free(x);
        free(want);
    }
}

TEST(allreduce_f64_i64) {
    double d[3] = {0.1 * (comm.rank + 1), 1e16, -(double)comm.rank};
    int64_t k[2] = {comm.rank, (int64_t)1 << 40};
    CHECK(ds_dp_allreduce_f64(&comm, d, 3) == 0 && ds_dp_allreduce_i64(&comm, k, 2) == 0, "reductions succeed");
    double want0 = 0, want2 = 0;
    for (int r = 0; r < comm.size; r++) want0 += 0.1 * (r + 1), want2 += -(double)r;
    int64_t want_k0 = (int64_t)comm.size * (comm.size - 1) / 2;
    CHECK(d[0] == want0 && d[1] == 1e16 * comm.size && d[2] == want2, "f64 sums: %.17g %.17g %.17g", d[0], d[1], d[2]);
    CHECK(k[0] == want_k0 && k[1] == ((int64_t)1 << 40) * comm.size, "i64 sums: %lld %lld", (long long)k[0],
          (long long)k[1]);
}

TEST(layout_coordinates_follow_the_documented_convention) {
    ds_layout L;
    /* 8 ranks, PP 2 x DP 4, EP 2, 2 ranks per node: rank 5 is stage 1, dp 1, ep group 0, ep rank 1 */
    CHECK(ds_layout_coords(&L, 5, 8, 2, 4, 2, 2) == 0, "coords: %s", ds_errmsg());
    CHECK(L.stage == 1 && L.dp_rank == 1 && L.ep_group == 0 && L.ep_rank == 1 && L.node == 2 && L.ep_nodes == 1,
          "rank 5: stage %d dp %d ep group %d ep rank %d node %d ep nodes %d", L.stage, L.dp_rank, L.ep_group,
          L.ep_rank, L.node, L.ep_nodes);
    CHECK(ds_layout_world_rank(&L, 1, 3) == 7 && ds_layout_node_of_ep_rank(&L, 0) == 2, "world rank / node of ep rank");
    /* 4 ranks, DP 4, EP 4, one rank per node: the EP group spans 4 nodes */
    CHECK(ds_layout_coords(&L, 2, 4, 1, 4, 4, 1) == 0 && L.ep_nodes == 4 && L.ep_rank == 2 &&
              ds_layout_node_of_ep_rank(&L, 3) == 3, "EP over 4 emulated nodes: ep_nodes %d", L.ep_nodes);
    char buf[128];
    ds_layout_describe(&L, buf, sizeof buf);
    CHECK(strcmp(buf, "rank 2: stage 0, dp 2 (ep group 0, ep rank 2), node 2") == 0, "describe: %s", buf);
}

TEST(layout_refusals_name_the_numbers) {
    static const struct { int world, pp, dp, ep, rpn, experts; const char *msg; } bad[] = {
        {4, 2, 4, 1, 0, 0, "--pp 2 x --dp 4 = 8 ranks, but 4 processes were started"},
        {4, 1, 4, 3, 0, 0, "--ep 3 does not divide the 4 data-parallel ranks (--dp 4)"},
        {4, 1, 4, 4, 3, 0, "--ranks-per-node 3 does not divide the 4 ranks"},
        {4, 1, 4, 4, 0, 6, "--ep 4 does not divide the config's 6 routed experts"},
        {2, 1, 2, 2, 0, -1, NULL},
        {2, 1, 2, 2, 0, 0, "--ep 2 needs routed experts, and the config has none"},
        {4, 1, 4, 0, 0, 8, "--pp 1, --dp 4 and --ep 0 must each be at least 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = ds_layout_check(bad[i].world, bad[i].pp, bad[i].dp, bad[i].ep, bad[i].rpn, bad[i].experts);
        if (bad[i].msg)
            CHECK(rc == DS_EUSAGE && strcmp(ds_errmsg(), bad[i].msg) == 0, "case %zu: rc %d, %s", i, rc, ds_errmsg());
        else
            CHECK(rc == 0, "case %zu accepted: %s", i, ds_errmsg());
    }
}

/* Every rank's groups have the sizes and members the convention gives; with 4 ranks: PP 2 x DP 2 (EP 2) and
 * PP 1 x DP 4 (EP 2); a sum over each group tells who is in it. */
TEST(layout_communicators_hold_the_right_ranks) {
    if (comm.size != 4) return;
    static const int shapes[2][3] = {{2, 2, 2}, {1, 4, 2}};
    for (int k = 0; k < 2; k++) {
        ds_layout L;
        int rc = ds_layout_make(&L, &comm, shapes[k][0], shapes[k][1], shapes[k][2], 1);
        CHECK(rc == 0, "make: %s", ds_errmsg());
        if (rc) continue;
        int64_t members[4];
        const ds_comm *g[4] = {&L.dp_comm, &L.ep_comm, &L.expert_dp_comm, &L.pp_comm};
        for (int j = 0; j < 4; j++) {
            members[j] = (int64_t)1 << comm.rank;
            ds_comm_allreduce_sum_i64(g[j], &members[j], 1);
        }
        int64_t want[4] = {0, 0, 0, 0};
        for (int r = 0; r < 4; r++) {
            ds_layout o;
            ds_layout_coords(&o, r, 4, shapes[k][0], shapes[k][1], shapes[k][2], 1);
            if (o.stage == L.stage) want[0] |= 1 << r;
            if (o.stage == L.stage && o.ep_group == L.ep_group) want[1] |= 1 << r;
            if (o.stage == L.stage && o.ep_rank == L.ep_rank) want[2] |= 1 << r;
            if (o.dp_rank == L.dp_rank) want[3] |= 1 << r;
        }
        CHECK(memcmp(members, want, sizeof want) == 0, "shape %d rank %d: dp %llx/%llx ep %llx/%llx edp %llx/%llx pp %llx/%llx",
              k, comm.rank, (long long)members[0], (long long)want[0], (long long)members[1], (long long)want[1],
              (long long)members[2], (long long)want[2], (long long)members[3], (long long)want[3]);
        CHECK(L.pp_comm.rank == L.stage && L.dp_comm.rank == L.dp_rank && L.ep_comm.rank == L.ep_rank,
              "ranks within the groups follow stage, dp rank, ep rank");
        ds_layout_free(&L);
    }
}

MPI_TAP_MAIN()
