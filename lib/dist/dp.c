#include "dist/dp.h"

#include "core/cli.h"
#include "core/err.h"
#include "dist/a2a.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

int ds_dist_launched(void) { return ds_launch_get().mpi; }

int ds_dist_check_launch(void) {
    const ds_launch l = ds_launch_get();
    if (l.mpi || l.size <= 1) return 0;
    ds_fail(DS_EUSAGE, "%s started %d processes without an MPI world (each would run alone, into the same outputs): "
            "launch with mpirun -np %d, or srun --mpi=pmix -n %d", l.launcher, l.size, l.size, l.size);
    if (l.rank != 0) ds_err_silence(); /* the same in every process: rank 0 says it */
    return DS_EUSAGE;
}

/* Below this many elements a whole-array gather is cheaper than two collective phases. */
#define DP_SMALL 4096

static int gather_sum(const ds_comm *c, void *x, size_t n, size_t elem, int is_f64, int is_i64) {
    int p = c->size;
    char *all = malloc((size_t)p * n * elem + 1);
    if (!all) return ds_fail(DS_ERR, "out of memory: data-parallel reduction");
    MPI_Datatype t = elem == 4 ? MPI_FLOAT : is_i64 ? MPI_INT64_T : MPI_DOUBLE;
    int err = MPI_Allgather(x, (int)n, t, all, (int)n, t, *(MPI_Comm *)c->world);
    if (err != MPI_SUCCESS) {
        free(all);
        return ds_fail(DS_ERR, "MPI_Allgather failed: rank %d: %s:%d", c->rank, __FILE__, __LINE__);
    }
    for (size_t i = 0; i < n; i++) {
        if (elem == 4) {
            float s = 0;
            for (int r = 0; r < p; r++) s += ((float *)all)[(size_t)r * n + i];
            ((float *)x)[i] = s;
        } else if (is_f64) {
            double s = 0;
            for (int r = 0; r < p; r++) s += ((double *)all)[(size_t)r * n + i];
            ((double *)x)[i] = s;
        } else {
            int64_t s = 0;
            for (int r = 0; r < p; r++) s += ((int64_t *)all)[(size_t)r * n + i];
            ((int64_t *)x)[i] = s;
        }
    }
    free(all);
    return 0;
}

/* Every rank's copy of its slice, summed in rank order into x's slice. */
static int scatter_sum(const ds_comm *c, float *x, size_t n) {
    int p = c->size;
    size_t lo, hi;
    ds_dp_slice(n, p, c->rank, &lo, &hi);
    size_t mine = hi - lo;
    int64_t *v = malloc(4 * (size_t)p * sizeof *v);
    float *parts = malloc((size_t)p * mine * sizeof *parts + 4);
    if (!v || !parts) {
        free(v);
        free(parts);
        return ds_fail(DS_ERR, "out of memory: data-parallel reduction of %zu floats", n);
    }
    int64_t *sc = v, *sd = v + p, *rc = v + 2 * p, *rd = v + 3 * p;
    for (int j = 0; j < p; j++) {
        size_t a, b;
        ds_dp_slice(n, p, j, &a, &b);
        sc[j] = (int64_t)((b - a) * 4); /* my copy of slice j goes to rank j */
        sd[j] = (int64_t)(a * 4);
        rc[j] = (int64_t)(mine * 4); /* every rank's copy of my slice, in rank order */
        rd[j] = (int64_t)((size_t)j * mine * 4);
    }
    int err = ds_a2a_bytes(c, DS_A2A_OURS, x, sc, sd, parts, rc, rd);
    if (!err)
        for (size_t i = 0; i < mine; i++) {
            float s = 0;
            for (int r = 0; r < p; r++) s += parts[(size_t)r * mine + i];
            x[lo + i] = s;
        }
    free(v);
    free(parts);
    return err;
}

int ds_dp_reduce_scatter_f32(const ds_comm *c, float *x, size_t n) {
    if (c->size <= 1 || n == 0) return 0;
    return n < DP_SMALL ? gather_sum(c, x, n, 4, 0, 0) : scatter_sum(c, x, n);
}

int ds_dp_allgather_f32(const ds_comm *c, float *x, size_t n) {
    int p = c->size;
    if (p <= 1 || n == 0) return 0;
    int *cnt = malloc(2 * (size_t)p * sizeof *cnt);
    if (!cnt) return ds_fail(DS_ERR, "out of memory: all-gather of %zu floats", n);
    for (int j = 0; j < p; j++) {
        size_t a, b;
        ds_dp_slice(n, p, j, &a, &b);
        cnt[j] = (int)(b - a);
        cnt[p + j] = (int)a;
    }
    int err = 0;
    /* slices can exceed MPI's int count only for arrays beyond 2^31 * p floats */
    if (MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, x, cnt, cnt + p, MPI_FLOAT, *(MPI_Comm *)c->world) != MPI_SUCCESS)
        err = ds_fail(DS_ERR, "MPI_Allgatherv failed: rank %d: %s:%d", c->rank, __FILE__, __LINE__);
    free(cnt);
    return err;
}

int ds_dp_allreduce_f32(const ds_comm *c, float *x, size_t n) {
    if (c->size <= 1 || n == 0) return 0;
    if (n < DP_SMALL) return gather_sum(c, x, n, 4, 0, 0);
    DS_TRY(scatter_sum(c, x, n));
    return ds_dp_allgather_f32(c, x, n);
}

int ds_dp_allreduce_f64(const ds_comm *c, double *x, size_t n) {
    return c->size <= 1 || n == 0 ? 0 : gather_sum(c, x, n, 8, 1, 0);
}

int ds_dp_allreduce_i64(const ds_comm *c, int64_t *x, size_t n) {
    return c->size <= 1 || n == 0 ? 0 : gather_sum(c, x, n, 8, 0, 1);
}
