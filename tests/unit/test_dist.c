/* lib/dist: deterministic data-parallel reductions and expert-parallel plans. Run alone it checks the
 * one-rank paths; tests/bats/dist.bats runs it under mpirun, where every rank checks the sums bit for
 * bit against a local rank-ordered sum. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "dist/comm.h"
#include "dist/dp.h"

#include <stdint.h>

static ds_comm comm;

/* rank r's contribution to element i: magnitudes spread over many binades so the order of addition
 * changes the rounded result */
static float contrib(int r, size_t i) {
    uint32_t w[4];
    ds_philox4x32(99, (uint64_t)r, i, w);
    float m = (float)(w[0] >> 8) / 16777216.0f - 0.5f;
    return m * (float)(1u << (w[1] % 24)) / 4096.0f;
}

TEST(allreduce_f32_is_rank_ordered_and_identical) {
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 10007, 300001};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        float *x = malloc(n * sizeof *x + 4), *want = malloc(n * sizeof *want + 4);
        for (size_t i = 0; i < n; i++) {
            x[i] = contrib(comm.rank, i);
            float s = 0;
            for (int r = 0; r < comm.size; r++) s += contrib(r, i);
            want[i] = s;
        }
        int rc = ds_dp_allreduce_f32(&comm, x, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += memcmp(&x[i], &want[i], 4) != 0;
        CHECK(rc == 0 && bad == 0, "n=%zu on %d ranks: %zu elements differ from the rank-ordered sum", n, comm.size, bad);
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

/* Under SANITIZE=1: Open MPI keeps its own allocations (op tables, plugin state) past MPI_Finalize, some in
 * plugins already unloaded, so LeakSanitizer cannot name them for a suppression; the MPI bats suites turn
 * leak detection off the same way. ASan calls this hook at start; other builds never do. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }

int main(int argc, char **argv) {
    if (ds_comm_init(&comm, &argc, &argv)) {
        printf("not ok 1 - MPI init: %s\n1..1\n", ds_errmsg());
        return 1;
    }
    /* every rank checks; only rank 0's TAP reaches the runner, with any rank's failure folded in */
    if (comm.rank != 0 && !freopen("/dev/null", "w", stdout)) return 1;
    for (int i = 0; i < tap_ntests; i++) {
        tap_current = tap_tests[i].name;
        tap_tests[i].fn();
    }
    int64_t failed = tap_failed;
    ds_dp_allreduce_i64(&comm, &failed, 1);
    if (failed && !tap_failed) {
        tap_count++;
        printf("not ok %d - another rank failed %lld checks\n", tap_count, (long long)failed);
    }
    printf("1..%d\n", tap_count);
    ds_comm_finalize(&comm);
    return failed ? 1 : 0;
}
