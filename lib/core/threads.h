/* threads.h — the thread count libds uses, and the arena allocator for per-step buffers.
 *
 * Owns: one setting (--threads) applied to OpenMP loops and to OpenBLAS, and a bump allocator so inner
 * loops never call malloc: activations are carved from an arena sized at start-up and reset per step.
 */
#ifndef DS_CORE_THREADS_H
#define DS_CORE_THREADS_H

#include <stddef.h>

void ds_threads_set(int n); /* n <= 0: all online cores */
int ds_threads_get(void);

typedef struct {
    char *base;
    size_t cap, used, peak;
} ds_arena;

int ds_arena_init(ds_arena *a, size_t cap); /* DS_ERR (with message) when the allocation fails */
void *ds_arena_alloc(ds_arena *a, size_t bytes); /* 64-byte aligned; NULL when the arena is full */
void ds_arena_reset(ds_arena *a);
void ds_arena_free(ds_arena *a);

#endif
