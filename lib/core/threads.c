#include "core/threads.h"

#include "core/err.h"

#include <stdlib.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* OpenBLAS's own setter; declared here so core does not depend on cblas.h. */
void openblas_set_num_threads(int num_threads);

static int n_threads = 1;

void ds_threads_set(int n) {
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    n_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    openblas_set_num_threads(n);
}

int ds_threads_get(void) { return n_threads; }

int ds_arena_init(ds_arena *a, size_t cap) {
    a->used = a->peak = 0;
    a->cap = cap;
    a->base = NULL;
    if (cap && posix_memalign((void **)&a->base, 64, cap))
        return ds_fail(DS_ERR, "out of memory: arena of %zu bytes", cap);
    return 0;
}

void *ds_arena_alloc(ds_arena *a, size_t bytes) {
    size_t start = (a->used + 63) & ~(size_t)63;
    if (start > a->cap || bytes > a->cap - start) return NULL;
    a->used = start + bytes;
    if (a->used > a->peak) a->peak = a->used;
    return a->base + start;
}

void ds_arena_reset(ds_arena *a) { a->used = 0; }

void ds_arena_free(ds_arena *a) {
    free(a->base);
    a->base = NULL;
    a->cap = a->used = 0;
}
