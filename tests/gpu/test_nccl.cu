/* GPU test: dist/nccl.h on one GPU (a world of one, no MPI: the multi-rank logic of the same plans is
 * covered by the MPI tests and tests/unit/test_nccl.c). What one GPU can show: the library loads, a
 * communicator of one and the layout's four groups are made, every collective moves the right bytes between
 * device buffers, and the communication stream is ordered against the compute stream by events (a large
 * write queued on the compute stream just before an exchange must be what the exchange reads, and a read
 * queued just after must see what it wrote). */
#include "gpu_test.h"

#include <cuda_runtime.h>
#include <vector>

extern "C" {
#include "dist/ep.h"
#include "dist/layout.h"
#include "dist/nccl.h"
}

static ds_comm solo;
static ds_nccl *nc;

static void setup(void) {
    if (nc) return;
    ds_comm_init_solo(&solo);
    int dev = -1;
    int rc = ds_nccl_select_device(&solo, &dev);
    CHECK(rc == 0 && dev == 0, "GPU of local rank 0 (%s)", rc ? ds_errmsg() : "GPU 0");
    if (!rc) rc = ds_nccl_create(&nc, &solo, NULL);
    CHECK_OK(rc, "communicator of one");
    if (rc) exit(1);
}

static std::vector<float> randv(size_t n, uint64_t stream) {
    std::vector<float> v(n);
    ds_randn_fill(v.data(), n, gpu_test_seed, stream, 1.0f);
    return v;
}

TEST(collectives_of_one_move_the_right_values) {
    setup();
    CHECK(ds_nccl_rank(nc) == 0 && ds_nccl_size(nc) == 1 && ds_nccl_stream(nc) != NULL, "rank 0 of 1, own stream");
    const size_t n = 1000003;
    std::vector<float> x = randv(n, 1), y(n);
    dbuf d;
    dbuf_up(&d, x.data(), n * 4);
    int rc = ds_nccl_allreduce_f32(nc, (float *)d.p, n);
    if (!rc) rc = ds_nccl_reduce_scatter_f32(nc, (float *)d.p, n);
    if (!rc) rc = ds_nccl_allgather_f32(nc, (float *)d.p, n);
    if (!rc) rc = ds_nccl_wait(nc);
    CHECK_OK(rc, "all-reduce, reduce-scatter, all-gather");
    ds_cuda_d2h(y.data(), d.p, n * 4);
    CHECK(!memcmp(x.data(), y.data(), n * 4), "a sum over one rank is the input, bit for bit");
    dbuf_free(&d);
}

TEST(alltoall_and_p2p_copy_through_nccl) {
    setup();
    const size_t bytes = 3 << 20;
    std::vector<float> x = randv(bytes / 4, 2), y(bytes / 4);
    dbuf s, r;
    dbuf_up(&s, x.data(), bytes);
    dbuf_alloc(&r, bytes);
    ds_cuda_poison(r.p, bytes);
    int64_t sc[1] = {(int64_t)bytes - 64}, sd[1] = {64}, rc_[1] = {(int64_t)bytes - 64}, rd[1] = {0};
    int rc = ds_nccl_alltoallv_bytes(nc, s.p, sc, sd, r.p, rc_, rd);
    if (!rc) rc = ds_nccl_wait(nc);
    CHECK_OK(rc, "all-to-all of one");
    ds_cuda_d2h(y.data(), r.p, bytes);
    CHECK(!memcmp(y.data(), x.data() + 16, bytes - 64), "the own block arrives at its displacement");
    /* a send to itself and the matching receive in one group (how pipeline stages exchange) */
    ds_cuda_poison(r.p, bytes);
    ds_nccl_xfer xf[2] = {{0, 1, r.p, bytes}, {0, 0, s.p, bytes}};
    rc = ds_nccl_p2p(nc, xf, 2);
    if (!rc) rc = ds_nccl_wait(nc);
    CHECK_OK(rc, "grouped send/recv to itself");
    ds_cuda_d2h(y.data(), r.p, bytes);
    CHECK(!memcmp(y.data(), x.data(), bytes), "send/recv delivers every byte");
    ds_nccl_xfer bad = {1, 0, s.p, 4};
    CHECK(ds_nccl_p2p(nc, &bad, 1) == DS_ERR && !strcmp(ds_errmsg(), "nccl: transfer to rank 1 of a group of 1: rank 0"),
          "a peer outside the group: %s", ds_errmsg());
    dbuf_free(&s);
    dbuf_free(&r);
}

TEST(streams_ordered_by_events) {
    setup();
    /* 512 MiB written on the compute (default) stream, exchanged, read back on the compute stream, with no
     * host synchronisation in between: without the events the exchange would read the old bytes or the
     * read would overtake the exchange */
    const size_t bytes = (size_t)512 << 20;
    dbuf s, r;
    int ok = !dbuf_alloc(&s, bytes) && !dbuf_alloc(&r, bytes);
    CHECK(ok, "buffers");
    if (!ok) return;
    for (int round = 0; round < 3; round++) {
        const int v = 0x11 * (round + 1);
        cudaMemsetAsync(r.p, 0, bytes, 0);
        cudaMemsetAsync(s.p, v, bytes, 0);
        int64_t c[1] = {(int64_t)bytes}, z[1] = {0};
        int rc = ds_nccl_alltoallv_bytes(nc, s.p, c, z, r.p, c, z);
        std::vector<unsigned char> h(bytes);
        cudaMemcpyAsync(h.data(), r.p, bytes, cudaMemcpyDeviceToHost, 0);
        cudaStreamSynchronize(0);
        size_t wrong = 0;
        for (size_t i = 0; i < bytes; i += 4096) wrong += h[i] != v || h[i + 4095] != v;
        CHECK(!rc && wrong == 0, "round %d: the exchange saw the write before it and the read saw the exchange (%zu pages wrong)",
              round, wrong);
    }
    dbuf_free(&s);
    dbuf_free(&r);
}

TEST(ep_dispatch_and_return_with_the_plan) {
    setup();
    /* a routed plan made over MPI's rules (dist/ep.h) in a group of one; the NCCL exchange of the rows in
     * destination order must deliver what the host dispatch delivers, and the return trip bring them back */
    const int T = 257, K = 4, E = 16, D = 96;
    ds_ep ep;
    int rc = ds_ep_init(&ep, &solo, E, K, DS_A2A_OURS);
    std::vector<int32_t> idx((size_t)T * K);
    std::vector<float> w((size_t)T * K, 0.25f);
    for (int t = 0; t < T; t++) /* distinct experts per token */
        for (int k = 0; k < K; k++) idx[(size_t)t * K + k] = (t + k * 4) % E;
    if (!rc) rc = ds_ep_plan(&ep, &solo, idx.data(), w.data(), T);
    CHECK_OK(rc, "plan");
    if (rc) return;
    std::vector<float> x = randv((size_t)T * D, 4), ref((size_t)ep.n_recv * D), grouped((size_t)ep.n_send * D),
                       got((size_t)ep.n_recv * D), back((size_t)ep.n_send * D);
    rc = ds_ep_dispatch(&ep, &solo, x.data(), ref.data(), (size_t)D * 4);
    for (int64_t i = 0; i < ep.n_send; i++) memcpy(&grouped[(size_t)i * D], &x[(size_t)ep.send_token[i] * D], (size_t)D * 4);
    dbuf dg, dr, db;
    dbuf_up(&dg, grouped.data(), grouped.size() * 4);
    dbuf_alloc(&dr, got.size() * 4);
    dbuf_alloc(&db, back.size() * 4);
    ds_cuda_poison(dr.p, dr.bytes);
    ds_cuda_poison(db.p, db.bytes);
    if (!rc) rc = ds_nccl_ep_dispatch(nc, &ep, dg.p, dr.p, (size_t)D * 4);
    if (!rc) rc = ds_nccl_ep_return(nc, &ep, dr.p, db.p, (size_t)D * 4);
    if (!rc) rc = ds_nccl_wait(nc);
    CHECK_OK(rc, "dispatch and return over NCCL");
    ds_cuda_d2h(got.data(), dr.p, got.size() * 4);
    ds_cuda_d2h(back.data(), db.p, back.size() * 4);
    CHECK(!memcmp(got.data(), ref.data(), got.size() * 4), "dispatch: the host dispatch's %lld rows, bit for bit", (long long)ep.n_recv);
    CHECK(!memcmp(back.data(), grouped.data(), back.size() * 4), "return: the rows back in send order");
    dbuf_free(&dg);
    dbuf_free(&dr);
    dbuf_free(&db);
    ds_ep_free(&ep);
}

TEST(layout_groups_of_one) {
    setup();
    ds_layout L;
    int rc = ds_layout_make(&L, &solo, 1, 1, 1, 0);
    CHECK_OK(rc, "layout of one");
    if (rc) return;
    ds_nccl_groups g;
    rc = ds_nccl_groups_make(&g, &L, NULL);
    CHECK(!rc && g.dp && g.ep && g.expert_dp && g.pp && ds_nccl_size(g.ep) == 1, "dp, ep, expert_dp, pp communicators (%s)",
          rc ? ds_errmsg() : "made");
    if (!rc) {
        dbuf d;
        std::vector<float> x = randv(4096, 3), y(4096);
        dbuf_up(&d, x.data(), x.size() * 4);
        rc = ds_nccl_allreduce_f32(g.expert_dp, (float *)d.p, x.size());
        if (!rc) rc = ds_nccl_wait(g.expert_dp);
        ds_cuda_d2h(y.data(), d.p, x.size() * 4);
        CHECK(!rc && !memcmp(x.data(), y.data(), x.size() * 4), "a group's all-reduce");
        dbuf_free(&d);
    }
    ds_nccl_groups_free(&g, 0);
    ds_layout_free(&L);
    /* abort is what a failed rank does: it must return at once and leave nothing behind */
    ds_nccl *extra = NULL;
    rc = ds_nccl_create(&extra, &solo, NULL);
    if (!rc) ds_nccl_abort(extra);
    CHECK_OK(rc, "a communicator made and aborted");
}

int main(int argc, char **argv) {
    gpu_test_begin("test_nccl");
    if (!ds_nccl_built()) {
        printf("1..0 # SKIP this build has no NCCL\n");
        return 0;
    }
    int rc = tap_run(argc, argv);
    ds_nccl_free(nc);
    return rc;
}
