#include "dist/a2a.h"

#include "core/err.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

/* Messages larger than this are split so counts fit MPI's int and large blocks pipeline. */
#define A2A_CHUNK ((int64_t)1 << 30)

static int a2a_ours(const ds_comm *c, const char *send, const int64_t *scount, const int64_t *sdispl, char *recv,
                    const int64_t *rcount, const int64_t *rdispl) {
    int n = c->size, me = c->rank;
    MPI_Comm w = c->world ? *(MPI_Comm *)c->world : MPI_COMM_NULL; /* no world: a solo group, own block only */
    int max_req = 0;
    for (int j = 0; j < n; j++) {
        if (j == me) continue;
        max_req += (int)((scount[j] + A2A_CHUNK - 1) / A2A_CHUNK) + (int)((rcount[j] + A2A_CHUNK - 1) / A2A_CHUNK);
    }
    MPI_Request *req = malloc(((size_t)max_req + 1) * sizeof *req);
    if (!req) return ds_fail(DS_ERR, "out of memory");
    int nr = 0, err = MPI_SUCCESS;
    /* receives first, so every send finds a posted buffer (no unexpected-message copies) */
    for (int i = 1; i < n && err == MPI_SUCCESS; i++) {
        int src = (me - i + n) % n;
        for (int64_t off = 0; off < rcount[src] && err == MPI_SUCCESS; off += A2A_CHUNK) {
            int64_t len = rcount[src] - off < A2A_CHUNK ? rcount[src] - off : A2A_CHUNK;
            err = MPI_Irecv(recv + rdispl[src] + off, (int)len, MPI_BYTE, src, 7, w, &req[nr++]);
        }
    }
    /* sends to me+1, me+2, ...: at any moment each rank is the target of about one sender */
    for (int i = 1; i < n && err == MPI_SUCCESS; i++) {
        int dst = (me + i) % n;
        for (int64_t off = 0; off < scount[dst] && err == MPI_SUCCESS; off += A2A_CHUNK) {
            int64_t len = scount[dst] - off < A2A_CHUNK ? scount[dst] - off : A2A_CHUNK;
            err = MPI_Isend(send + sdispl[dst] + off, (int)len, MPI_BYTE, dst, 7, w, &req[nr++]);
        }
    }
    if (scount[me] != rcount[me]) {
        free(req);
        return ds_fail(DS_ERR, "all-to-all: self block sizes differ (%lld vs %lld): rank %d", (long long)scount[me],
                       (long long)rcount[me], me);
    }
    if (scount[me]) memcpy(recv + rdispl[me], send + sdispl[me], (size_t)scount[me]);
    if (err == MPI_SUCCESS && nr) err = MPI_Waitall(nr, req, MPI_STATUSES_IGNORE);
    free(req);
    if (err != MPI_SUCCESS) return ds_fail(DS_ERR, "all-to-all failed: rank %d: %s:%d", me, __FILE__, __LINE__);
    return 0;
}

int ds_a2a_bytes(const ds_comm *c, ds_a2a_algo algo, const void *send, const int64_t *scount,
                 const int64_t *sdispl, void *recv, const int64_t *rcount, const int64_t *rdispl) {
    if (algo == DS_A2A_MPI) return ds_comm_alltoallv_bytes(c, send, scount, sdispl, recv, rcount, rdispl);
    return a2a_ours(c, send, scount, sdispl, recv, rcount, rdispl);
}
