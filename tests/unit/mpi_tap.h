/* mpi_tap.h — TAP tests that run on every rank of an MPI job (tests/bats/dist.bats, ep.bats): every rank
 * checks, only rank 0's TAP reaches the runner, with any other rank's failures folded in. Include after
 * tap.h; the test file defines `static ds_comm comm;` before including this and ends with MPI_TAP_MAIN(). */
#ifndef DS_TESTS_MPI_TAP_H
#define DS_TESTS_MPI_TAP_H

#include <stdio.h>

#include "core/err.h"
#include "dist/comm.h"
#include "dist/dp.h"

/* Under SANITIZE=1: Open MPI keeps its own allocations (op tables, plugin state) past MPI_Finalize, some in
 * plugins already unloaded, so LeakSanitizer cannot name them for a suppression; the MPI bats suites turn
 * leak detection off the same way. ASan calls this hook at start; other builds never do. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }

static inline int mpi_tap_run(ds_comm *c, int argc, char **argv) {
    if (ds_comm_init(c, &argc, &argv)) {
        printf("not ok 1 - MPI init: %s\n1..1\n", ds_errmsg());
        return 1;
    }
    if (c->rank != 0 && !freopen("/dev/null", "w", stdout)) return 1;
    for (int i = 0; i < tap_ntests; i++) {
        tap_current = tap_tests[i].name;
        tap_tests[i].fn();
    }
    int64_t failed = tap_failed;
    ds_dp_allreduce_i64(c, &failed, 1);
    if (failed && !tap_failed) {
        tap_count++;
        printf("not ok %d - another rank failed %lld checks\n", tap_count, (long long)failed);
    }
    printf("1..%d\n", tap_count);
    ds_comm_finalize(c);
    return failed ? 1 : 0;
}

#define MPI_TAP_MAIN()                                                                                 \
    int main(int argc, char **argv) { return mpi_tap_run(&comm, argc, argv); }

#endif
