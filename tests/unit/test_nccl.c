/* dist/nccl.h: the host-side plans behind the NCCL collectives (which NCCL calls reduce-scatter and
 * all-gather become, the all-to-all's send/receive list, a rank's GPU), and the refusals this machine can
 * reach without a GPU. The collectives themselves run in tests/gpu/test_nccl.cu. */
#include "tap.h"

#include "core/err.h"
#include "dist/dp.h"
#include "dist/ep.h"
#include "dist/nccl.h"

#include <stdlib.h>

TEST(even_slices_decide_the_collective) {
    /* ncclReduceScatter/ncclAllGather in place need every slice of ds_dp_slice the same size */
    CHECK(ds_nccl_even_slices(12, 4) && ds_nccl_even_slices(0, 3) && ds_nccl_even_slices(7, 1), "divisible sizes are even");
    CHECK(!ds_nccl_even_slices(10, 4) && !ds_nccl_even_slices(5, 8), "10 over 4, 5 over 8 are not");
    for (size_t n = 1; n < 40; n++)
        for (int p = 1; p < 9; p++) {
            size_t lo0, hi0, lo, hi;
            int same = 1;
            ds_dp_slice(n, p, 0, &lo0, &hi0);
            for (int j = 1; j < p; j++) {
                ds_dp_slice(n, p, j, &lo, &hi);
                same &= hi - lo == hi0 - lo0;
            }
            if (same != ds_nccl_even_slices(n, p)) {
                CHECK(0, "n %zu p %d: equal slices %d, even_slices %d", n, p, same, ds_nccl_even_slices(n, p));
                return;
            }
        }
    CHECK(1, "even_slices agrees with ds_dp_slice for n < 40, p < 9");
}

TEST(device_of_local_rank) {
    CHECK(ds_nccl_device_of(0, 8) == 0 && ds_nccl_device_of(7, 8) == 7, "one process per GPU");
    CHECK(ds_nccl_device_of(9, 8) == 1, "local rank 9 of a host with 8 GPUs: GPU 1 (NCCL refuses the duplicate)");
    CHECK(ds_nccl_device_of(0, 0) == -1, "no GPU: -1");
}

TEST(a2a_plan_rotated_receives_then_sends) {
    /* rank 1 of 4; peer 3 sends nothing, peer 0 receives nothing; the own block is 5 bytes */
    int64_t sc[4] = {0, 5, 7, 2}, sd[4] = {0, 0, 5, 12}, rc[4] = {3, 5, 4, 0}, rd[4] = {0, 3, 8, 12};
    ds_nccl_op ops[8];
    int n_ops = -1;
    int64_t self = -1;
    CHECK(ds_nccl_a2a_plan(1, 4, sc, sd, rc, rd, ops, &n_ops, &self) == 0, "plan");
    CHECK(self == 5, "own block 5 bytes, got %lld", (long long)self);
    /* receives from 0, 3, 2 (rank-1, rank-2, rank-3), 3's empty; sends to 2, 3, 0 (0's empty) */
    const ds_nccl_op want[4] = {{0, 1, 0, 3}, {2, 1, 8, 4}, {2, 0, 5, 7}, {3, 0, 12, 2}};
    CHECK(n_ops == 4, "4 operations, got %d", n_ops);
    int same = n_ops == 4;
    for (int i = 0; i < 4 && same; i++)
        same = ops[i].peer == want[i].peer && ops[i].is_recv == want[i].is_recv && ops[i].offset == want[i].offset &&
               ops[i].bytes == want[i].bytes;
    CHECK(same, "operations in order: recv 0, recv 2, send 2, send 3 with their offsets and sizes");
}

TEST(a2a_plan_world_of_one_is_the_own_copy) {
    int64_t sc[1] = {64}, sd[1] = {0}, rc[1] = {64}, rd[1] = {128};
    ds_nccl_op ops[2];
    int n_ops = -1;
    int64_t self = 0;
    CHECK(ds_nccl_a2a_plan(0, 1, sc, sd, rc, rd, ops, &n_ops, &self) == 0 && n_ops == 0 && self == 64,
          "one rank: no NCCL operation, a 64-byte device copy");
}

TEST(a2a_plan_refuses_bad_counts) {
    int64_t sc[2] = {4, 1}, sd[2] = {0, 4}, rc[2] = {3, 1}, rd[2] = {0, 3};
    ds_nccl_op ops[4];
    int n_ops;
    int64_t self;
    CHECK(ds_nccl_a2a_plan(0, 2, sc, sd, rc, rd, ops, &n_ops, &self) == DS_ERR &&
              !strcmp(ds_errmsg(), "nccl: all-to-all: self block sizes differ (4 vs 3): rank 0"),
          "own block sizes differ: %s", ds_errmsg());
    int64_t sc2[2] = {1, -2}, rc2[2] = {1, 0};
    CHECK(ds_nccl_a2a_plan(0, 2, sc2, sd, rc2, rd, ops, &n_ops, &self) == DS_ERR &&
              !strcmp(ds_errmsg(), "nccl: all-to-all: negative count or displacement for peer 1: rank 0"),
          "negative count: %s", ds_errmsg());
}

TEST(solo_group_needs_no_mpi) {
    /* the GPU checks run one process without mpirun on machines with no MPI installed: every collective
     * of a solo group is the identity (MPI is never initialised in this test program) */
    ds_comm c;
    ds_comm_init_solo(&c);
    CHECK(c.rank == 0 && c.size == 1 && c.local_size == 1 && c.n_nodes == 1 && c.world == NULL && c.host[0],
          "rank 0 of 1 on one node, no MPI handle");
    double d[2] = {1.5, -2};
    int64_t i[1] = {7}, si[1] = {3}, ri[1] = {0};
    float f[3] = {1, 2, 3};
    uint64_t u = 42;
    int rc = ds_comm_barrier(&c) | ds_comm_allreduce_sum_f64(&c, d, 2) | ds_comm_allreduce_max_f64(&c, d, 2) |
             ds_comm_allreduce_sum_i64(&c, i, 1) | ds_comm_allreduce_sum_f32(&c, f, 3) | ds_comm_bcast_u64(&c, &u) |
             ds_comm_alltoall_i64(&c, si, ri);
    CHECK(rc == 0 && d[0] == 1.5 && d[1] == -2 && i[0] == 7 && f[2] == 3 && u == 42 && ri[0] == 3, "collectives of one");
    char send[8] = "abcdefg", recv[8] = {0};
    int64_t sc[1] = {3}, sd[1] = {2}, rcnt[1] = {3}, rd[1] = {4};
    CHECK(ds_comm_alltoallv_bytes(&c, send, sc, sd, recv, rcnt, rd) == 0 && !memcmp(recv + 4, "cde", 3), "the own block copied");
    CHECK(ds_comm_agree(&c, DS_ERR) == DS_ERR && ds_comm_agree(&c, 0) == 0, "agree returns the rank's own status");
    ds_layout L;
    CHECK(ds_layout_make(&L, &c, 1, 1, 1, 0) == 0 && L.dp_comm.size == 1 && L.pp_comm.world == NULL, "a layout of one (%s)",
          ds_errmsg());
    ds_layout_free(&L);
    ds_comm_finalize(&c);
}

TEST(ep_exchange_layout_of_the_plan) {
    /* rank 1 of 3; ranks 0 and 1 on node 0, rank 2 on node 1: bytes per peer and the node accounting
     * every transport (MPI, NCCL) moves the plan's rows with */
    int64_t bc[3], bo[3], bc2[3], bo2[3];
    int node_of[3] = {0, 0, 1};
    ds_ep ep = {.n_ranks = 3, .rank = 1, .node_of = node_of, .bcount = bc, .boff = bo, .bcount2 = bc2, .boff2 = bo2};
    const int64_t send_rows[3] = {2, 5, 1}, recv_rows[3] = {0, 5, 4};
    ds_ep_bytes acct = {0, 0};
    ds_ep_exchange_layout(&ep, &acct, send_rows, recv_rows, 12);
    CHECK(bc[0] == 24 && bc[1] == 60 && bc[2] == 12 && bo[0] == 0 && bo[1] == 24 && bo[2] == 84, "send bytes and offsets");
    CHECK(bc2[0] == 0 && bc2[1] == 60 && bc2[2] == 48 && bo2[1] == 0 && bo2[2] == 60, "receive bytes and offsets");
    CHECK(acct.intra == 24 && acct.inter == 12, "24 bytes to its node, 12 across, its own 60 not counted (%lld, %lld)",
          (long long)acct.intra, (long long)acct.inter);
}

TEST(ep_plan_in_a_solo_group) {
    /* what tests/gpu/test_nccl.cu runs on one GPU: the plan and the host dispatch of a group of one */
    ds_comm c;
    ds_comm_init_solo(&c);
    ds_ep ep;
    int rc = ds_ep_init(&ep, &c, 8, 2, DS_A2A_OURS);
    int32_t idx[2 * 5] = {0, 3, 7, 1, 2, 5, 6, 4, 1, 0};
    float w[2 * 5] = {1, 0.5f, 1, 0.5f, 1, 0.5f, 1, 0.5f, 1, 0.5f};
    if (!rc) rc = ds_ep_plan(&ep, &c, idx, w, 5);
    float x[5 * 3], recv[5 * 3];
    for (int i = 0; i < 15; i++) x[i] = (float)i;
    if (!rc) rc = ds_ep_dispatch(&ep, &c, x, recv, 12);
    CHECK(!rc && ep.n_send == 5 && ep.n_recv == 5 && !memcmp(recv, x, sizeof x), "one rank: every token once, in order (%s)",
          rc ? ds_errmsg() : "ok");
    ds_ep_free(&ep);
}

TEST(refusals_without_a_usable_nccl) {
    ds_comm c = {.rank = 0, .size = 1, .local_rank = 0, .local_size = 1};
    if (!ds_nccl_built()) {
        CHECK(ds_nccl_require("--comm nccl") == DS_EUSAGE && strstr(ds_errmsg(), "--comm nccl: this build has no NCCL") == ds_errmsg(),
              "a build without NCCL: %s", ds_errmsg());
        CHECK(ds_nccl_select_device(&c, NULL) == DS_EUSAGE && strstr(ds_errmsg(), "nccl: this build has no NCCL"),
              "and every entry point says so: %s", ds_errmsg());
        return;
    }
    CHECK(ds_nccl_require("--comm nccl") == 0, "a build with NCCL accepts it");
    /* the library is looked up once per process: the name given is the one tried */
    setenv("DS_NCCL_LIB", "/no/such/dir/libnccl.so.2", 1);
    int rc = ds_nccl_select_device(&c, NULL);
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), "nccl: cannot load /no/such/dir/libnccl.so.2 (") == ds_errmsg() &&
              strstr(ds_errmsg(), "); set DS_NCCL_LIB or LD_LIBRARY_PATH"),
          "a missing library: %s", ds_errmsg());
    ds_nccl *nc = (ds_nccl *)1;
    CHECK(ds_nccl_create(&nc, &c, NULL) == DS_ERR && nc == NULL && strstr(ds_errmsg(), "nccl: cannot load"),
          "no communicator without the library: %s", ds_errmsg());
}

TAP_MAIN()
