/* train/devcomm.h: --comm's choice, and the MPI fallback for gradients in device memory (copied out,
 * reduced by dist/dp.h, copied back) on a stand-in device backend (the CPU's ops under another name, so
 * ds_ops_on_host says "device" while the memory stays readable here). Runs on every rank of an MPI job
 * (tests/bats/nccl.bats: 2 and 3 ranks) and as one process. The NCCL path runs in tests/gpu/test_nccl.*. */
#include "tap.h"

#include "core/err.h"
#include "dist/dp.h"
#include "train/devcomm.h"
#include "train/zero.h"

#include <stdlib.h>
#include <string.h>

static ds_comm comm;
#include "mpi_tap.h"

static ds_ops fake;
static int copies[3]; /* by ds_copy_kind */
static void fake_copy(void *dst, const void *src, size_t bytes, ds_copy_kind kind) {
    copies[kind]++;
    ds_ops_cpu()->copy(dst, src, bytes, kind);
}
static const ds_ops *fake_gpu(void) {
    fake = *ds_ops_cpu();
    fake.name = "fakegpu";
    fake.copy = fake_copy;
    return &fake;
}

TEST(comm_choice) {
    ds_devcomm_kind k = 9;
    CHECK(ds_devcomm_kind_parse(NULL, "cpu", &k) == 0 && k == DS_DEVCOMM_MPI, "auto on the CPU: mpi");
    CHECK(ds_devcomm_kind_parse("auto", "cuda", &k) == 0 && k == (ds_nccl_built() ? DS_DEVCOMM_NCCL : DS_DEVCOMM_MPI),
          "auto on a GPU: nccl where built (%d)", ds_nccl_built());
    CHECK(ds_devcomm_kind_parse("mpi", "cuda", &k) == 0 && k == DS_DEVCOMM_MPI, "mpi on a GPU: host copies");
    CHECK(ds_devcomm_kind_parse("nccl", "cpu", &k) == DS_EUSAGE &&
              !strcmp(ds_errmsg(), "--comm nccl reduces GPU buffers: it needs --device cuda"),
          "nccl on the CPU: %s", ds_errmsg());
    CHECK(ds_devcomm_kind_parse("gloo", "cuda", &k) == DS_EUSAGE && !strcmp(ds_errmsg(), "--comm gloo: expected nccl, mpi or auto"),
          "unknown: %s", ds_errmsg());
    int rc = ds_devcomm_kind_parse("nccl", "cuda", &k);
    if (ds_nccl_built()) CHECK(rc == 0 && k == DS_DEVCOMM_NCCL, "nccl on a GPU in a build with NCCL");
    else CHECK(rc == DS_EUSAGE && strstr(ds_errmsg(), "--comm nccl: this build has no NCCL") == ds_errmsg(), "no NCCL: %s", ds_errmsg());
}

/* The staged reductions give the bits dist/dp.h gives on host memory, one copy out and one back per call. */
TEST(mpi_staging_equals_host_reduction) {
    ds_devcomm d;
    CHECK(ds_devcomm_open(&d, &comm, DS_DEVCOMM_MPI) == 0 && d.device == -1 && !d.nccl, "open (mpi)");
    ds_train_comm tc = ds_devcomm_train_comm(&d);
    CHECK(tc.device == 1 && tc.rank == comm.rank && tc.size == comm.size, "the trainer's view: device memory, the group's ranks");
    float one = 1;
    CHECK(tc.allreduce_f32(tc.ctx, &one, 1) == DS_ERR && strstr(ds_errmsg(), "before the model exists"), "no backend yet: %s",
          ds_errmsg());
    d.ops = fake_gpu();
    const size_t sizes[2] = {37, 10007}; /* the small gather and the reduce-scatter + all-gather paths, uneven slices */
    for (int si = 0; si < 2; si++) {
        const size_t n = sizes[si];
        float *x = malloc(n * 4), *y = malloc(n * 4);
        for (int op = 0; op < 3; op++) {
            for (size_t i = 0; i < n; i++) x[i] = y[i] = (float)((i * 7 + (size_t)comm.rank * 13) % 29) * 0.37f - 3.1f;
            memset(copies, 0, sizeof copies);
            int rc = op == 0 ? tc.allreduce_f32(tc.ctx, x, n) : op == 1 ? tc.reduce_scatter_f32(tc.ctx, x, n) : tc.allgather_f32(tc.ctx, x, n);
            int rh = op == 0 ? ds_dp_allreduce_f32(&comm, y, n) : op == 1 ? ds_dp_reduce_scatter_f32(&comm, y, n) : ds_dp_allgather_f32(&comm, y, n);
            static const char *name[3] = {"all-reduce", "reduce-scatter", "all-gather"};
            CHECK(rc == 0 && rh == 0 && !memcmp(x, y, n * 4), "%s of %zu: the host reduction's bits", name[op], n);
            CHECK(copies[DS_COPY_D2H] == 1 && copies[DS_COPY_H2D] == 1, "%s of %zu: one copy out, one back (%d, %d)", name[op], n,
                  copies[DS_COPY_D2H], copies[DS_COPY_H2D]);
        }
        free(x);
        free(y);
    }
    double v[2] = {1.5, (double)comm.rank};
    int64_t c[1] = {comm.rank + 1};
    CHECK(tc.allreduce_f64(tc.ctx, v, 2) == 0 && tc.allreduce_i64(tc.ctx, c, 1) == 0 && v[0] == 1.5 * comm.size &&
              c[0] == (int64_t)comm.size * (comm.size + 1) / 2,
          "loss terms and counts: host values over MPI");
    ds_devcomm_close(&d, 0);
}

/* ZeRO over ranks with the parameters on a device: a group whose reductions take host memory is refused. */
TEST(zero_refuses_host_reductions_of_device_parameters) {
    if (comm.size < 2) {
        CHECK(1, "one rank: no group to refuse (run under mpirun)");
        return;
    }
    float params[64] = {0}, grads[64] = {0};
    ds_param info = {.name = "w", .offset = 0, .numel = 64};
    ds_train_net net = {.ops = fake_gpu(), .params = params, .grads = grads, .n_params = 64, .info = &info, .n_info = 1};
    ds_adamw_opts o = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8};
    ds_train_comm host = {.rank = comm.rank, .size = comm.size};
    ds_train_group g = {.offset = 0, .numel = 64, .comm = &host};
    ds_zero z;
    CHECK(ds_zero_create(&z, &net, &o, &g, 1, NULL, 1) == DS_ERR &&
              !strcmp(ds_errmsg(), "trainer: parameter group 0 over several ranks reduces host memory, and the parameters "
                                   "live on device 'fakegpu'"),
          "refused: %s", ds_errmsg());
    host.device = 1; /* what train/devcomm.h declares: past the check, to the optimizer (no GPU optimizer here) */
    int rc = ds_zero_create(&z, &net, &o, &g, 1, NULL, 1);
    CHECK(rc == 0 || !strstr(ds_errmsg(), "reduces host memory"), "a device group passes the check (%s)", rc ? ds_errmsg() : "made");
    if (!rc) ds_zero_free(&z);
}

MPI_TAP_MAIN()
