/* tap_mpi.h — main() for unit tests that run under mpirun (test_dist, test_ep_hops).
 *
 *   TAP_MPI_MAIN(comm)   defines main(): starts MPI into the static ds_comm `comm`, runs every
 *                        registered test on every rank; only rank 0's TAP reaches the runner, with any
 *                        rank's failures folded in, so a check that fails on rank 3 alone still fails.
 *
 * Under SANITIZE=1: Open MPI keeps its own allocations (op tables, plugin state) past MPI_Finalize, some in
 * plugins already unloaded, so LeakSanitizer cannot name them for a suppression; the MPI bats suites turn
 * leak detection off the same way. ASan calls __asan_default_options at start; other builds never do.
 */
#ifndef DS_TESTS_TAP_MPI_H
#define DS_TESTS_TAP_MPI_H

#include "core/err.h"
#include "dist/comm.h"
#include "dist/dp.h"

#define TAP_MPI_MAIN(comm)                                                                             \
    const char *__asan_default_options(void);                                                          \
    const char *__asan_default_options(void) { return "detect_leaks=0"; }                              \
    int main(int argc, char **argv) {                                                                  \
        if (ds_comm_init(&comm, &argc, &argv)) {                                                       \
            printf("not ok 1 - MPI init: %s\n1..1\n", ds_errmsg());                                    \
            return 1;                                                                                  \
        }                                                                                              \
        if (comm.rank != 0 && !freopen("/dev/null", "w", stdout)) return 1;                            \
        for (int i = 0; i < tap_ntests; i++) {                                                         \
            tap_current = tap_tests[i].name;                                                           \
            tap_tests[i].fn();                                                                         \
        }                                                                                              \
        int64_t failed = tap_failed;                                                                   \
        ds_dp_allreduce_i64(&comm, &failed, 1);                                                        \
        if (failed && !tap_failed) {                                                                   \
            tap_count++;                                                                               \
            printf("not ok %d - another rank failed %lld checks\n", tap_count, (long long)failed);     \
        }                                                                                              \
        printf("1..%d\n", tap_count);                                                                  \
        ds_comm_finalize(&comm);                                                                       \
        return failed ? 1 : 0;                                                                         \
    }

#endif
