#include "dist/comm.h"

#include "core/err.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local char prefix_buf[96];

#define WORLD(c) (*(MPI_Comm *)(c)->world)

/* MPI failures become one error line naming the host, rank and call site. */
#define DS_MPI_TRY(c, call)                                                                            \
    do {                                                                                               \
        int ds_mpi_rc_ = (call);                                                                       \
        if (ds_mpi_rc_ != MPI_SUCCESS) {                                                               \
            char ds_mpi_msg_[MPI_MAX_ERROR_STRING];                                                    \
            int ds_mpi_len_ = 0;                                                                       \
            MPI_Error_string(ds_mpi_rc_, ds_mpi_msg_, &ds_mpi_len_);                                   \
            return ds_fail(DS_ERR, "%s: %s: %s:%d", #call, ds_mpi_msg_, __FILE__, __LINE__);           \
        }                                                                                              \
    } while (0)

int ds_comm_init(ds_comm *c, int *argc, char ***argv) {
    memset(c, 0, sizeof *c);
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return ds_fail(DS_ERR, "MPI_Init failed");
        c->owns_mpi = 1;
    }
    /* errors come back as codes so they reach ds_fail instead of aborting the job */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    c->world = malloc(sizeof(MPI_Comm));
    c->local = malloc(sizeof(MPI_Comm));
    if (!c->world || !c->local) return ds_fail(DS_ERR, "out of memory");
    *(MPI_Comm *)c->world = MPI_COMM_WORLD;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    if (gethostname(c->host, sizeof c->host)) snprintf(c->host, sizeof c->host, "unknown");
    c->host[sizeof c->host - 1] = 0;
    DS_MPI_TRY(c, MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL,
                                      (MPI_Comm *)c->local));
    MPI_Comm_rank(*(MPI_Comm *)c->local, &c->local_rank);
    MPI_Comm_size(*(MPI_Comm *)c->local, &c->local_size);
    /* node index: the world rank of each host's local rank 0, ranked among those leaders */
    int is_leader = c->local_rank == 0, leaders_before = 0, my_leader = c->rank;
    DS_MPI_TRY(c, MPI_Bcast(&my_leader, 1, MPI_INT, 0, *(MPI_Comm *)c->local));
    int *lead = calloc((size_t)c->size, sizeof *lead);
    if (!lead) return ds_fail(DS_ERR, "out of memory");
    DS_MPI_TRY(c, MPI_Allgather(&is_leader, 1, MPI_INT, lead, 1, MPI_INT, MPI_COMM_WORLD));
    for (int r = 0; r < c->size; r++) {
        if (lead[r] && r < my_leader) leaders_before++;
        c->n_nodes += lead[r];
    }
    free(lead);
    c->node = leaders_before;
    return 0;
}

void ds_comm_init_solo(ds_comm *c) {
    memset(c, 0, sizeof *c);
    c->size = c->local_size = c->n_nodes = 1;
    if (gethostname(c->host, sizeof c->host)) snprintf(c->host, sizeof c->host, "unknown");
    c->host[sizeof c->host - 1] = 0;
}

void ds_comm_finalize(ds_comm *c) {
    if (c->local && *(MPI_Comm *)c->local != MPI_COMM_NULL) MPI_Comm_free((MPI_Comm *)c->local);
    ds_comm_abandon(c);
    if (c->owns_mpi) MPI_Finalize();
}

void ds_comm_abandon(ds_comm *c) {
    free(c->world);
    free(c->local);
    c->world = c->local = NULL;
}

int ds_comm_split(const ds_comm *c, int color, int key, ds_comm *out) {
    *out = *c;
    if (!c->world) return 0; /* a solo group splits into itself */
    out->owns_mpi = 0;
    out->local = NULL;
    out->world = malloc(sizeof(MPI_Comm));
    if (!out->world) return ds_fail(DS_ERR, "out of memory: splitting a communicator");
    *(MPI_Comm *)out->world = MPI_COMM_NULL;
    DS_MPI_TRY(c, MPI_Comm_split(WORLD(c), color, key, (MPI_Comm *)out->world));
    MPI_Comm_rank(WORLD(out), &out->rank);
    MPI_Comm_size(WORLD(out), &out->size);
    return 0;
}

void ds_comm_free_split(ds_comm *sub) {
    if (sub->world && *(MPI_Comm *)sub->world != MPI_COMM_NULL) MPI_Comm_free((MPI_Comm *)sub->world);
    free(sub->world);
    sub->world = NULL;
}

int ds_comm_agree(const ds_comm *c, int rc) {
    if (!c->world) return rc;
    int *all = malloc((size_t)c->size * sizeof *all);
    if (!all) return ds_fail(DS_ERR, "out of memory: agreeing on the status");
    int err = MPI_Allgather(&rc, 1, MPI_INT, all, 1, MPI_INT, WORLD(c));
    if (err != MPI_SUCCESS) {
        free(all);
        return ds_fail(DS_ERR, "MPI_Allgather failed: rank %d: %s:%d", c->rank, __FILE__, __LINE__);
    }
    int out = 0;
    for (int r = 0; r < c->size && !out; r++)
        if (all[r]) {
            out = all[r];
            if (r != c->rank) {
                ds_fail(out, "failed on rank %d", r);
                ds_err_silence();
            }
        }
    free(all);
    return out;
}

const char *ds_comm_prefix(const ds_comm *c) {
    if (c->size <= 1) return "";
    snprintf(prefix_buf, sizeof prefix_buf, "[%s:%d] ", c->host, c->rank);
    return prefix_buf;
}

int ds_comm_barrier(const ds_comm *c) {
    if (!c->world) return 0; /* solo */
    DS_MPI_TRY(c, MPI_Barrier(WORLD(c)));
    return 0;
}

int ds_comm_bcast_u64(const ds_comm *c, uint64_t *v) {
    if (!c->world) return 0; /* solo */
    DS_MPI_TRY(c, MPI_Bcast(v, 1, MPI_UINT64_T, 0, WORLD(c)));
    return 0;
}

int ds_comm_bcast_bytes(const ds_comm *c, void *buf, int n) {
    if (!c->world) return 0; /* solo */
    DS_MPI_TRY(c, MPI_Bcast(buf, n, MPI_BYTE, 0, WORLD(c)));
    return 0;
}

int ds_comm_allreduce_sum_f64(const ds_comm *c, double *v, int n) {
    if (!c->world) return 0; /* solo */
    DS_MPI_TRY(c, MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, WORLD(c)));
    return 0;
}

int ds_comm_allreduce_max_f64(const ds_comm *c, double *v, int n) {
    if (!c->world) return 0; /* solo */
    DS_MPI_TRY(c, MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, WORLD(c)));
    return 0;
}

int ds_comm_allreduce_sum_i64(const ds_comm *c, int64_t *v, int n) {
    if (!c->world) return 0; /* solo */
    DS_MPI_TRY(c, MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_SUM, WORLD(c)));
    return 0;
}

int ds_comm_allreduce_sum_f32(const ds_comm *c, float *v, size_t n) {
    if (!c->world) return 0; /* solo */
    /* MPI counts are int: reduce in chunks */
    const size_t chunk = (size_t)1 << 28;
    for (size_t off = 0; off < n; off += chunk) {
        int m = (int)(n - off < chunk ? n - off : chunk);
        DS_MPI_TRY(c, MPI_Allreduce(MPI_IN_PLACE, v + off, m, MPI_FLOAT, MPI_SUM, WORLD(c)));
    }
    return 0;
}

int ds_comm_alltoall_i64(const ds_comm *c, const int64_t *send, int64_t *recv) {
    if (!c->world) return recv[0] = send[0], 0;
    DS_MPI_TRY(c, MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, WORLD(c)));
    return 0;
}

int ds_comm_alltoallv_bytes(const ds_comm *c, const void *send, const int64_t *scount, const int64_t *sdispl,
                            void *recv, const int64_t *rcount, const int64_t *rdispl) {
    if (!c->world) { /* solo: the own block */
        if (scount[0] != rcount[0]) return ds_fail(DS_ERR, "all-to-all: self block sizes differ: rank 0");
        if (scount[0]) memcpy((char *)recv + rdispl[0], (const char *)send + sdispl[0], (size_t)scount[0]);
        return 0;
    }
    int n = c->size;
    int *v = malloc(4 * (size_t)n * sizeof *v);
    if (!v) return ds_fail(DS_ERR, "out of memory");
    int *sc = v, *rc = v + n, *sd = v + 2 * n, *rd = v + 3 * n;
    for (int j = 0; j < n; j++) {
        /* MPI-3 counts are int; a peer's share of 2 GiB or more needs the large-count API */
        if (scount[j] > INT32_MAX || rcount[j] > INT32_MAX || sdispl[j] > INT32_MAX || rdispl[j] > INT32_MAX) {
            free(v);
            return ds_fail(DS_ERR, "all-to-all: a peer's share exceeds 2 GiB: rank %d", c->rank);
        }
        sc[j] = (int)scount[j];
        rc[j] = (int)rcount[j];
        sd[j] = (int)sdispl[j];
        rd[j] = (int)rdispl[j];
    }
    int err = MPI_Alltoallv(send, sc, sd, MPI_BYTE, recv, rc, rd, MPI_BYTE, WORLD(c));
    free(v);
    if (err != MPI_SUCCESS) return ds_fail(DS_ERR, "MPI_Alltoallv failed: rank %d: %s:%d", c->rank, __FILE__, __LINE__);
    return 0;
}
