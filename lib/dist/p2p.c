/* Point-to-point messages for pipeline stages (p2p.h): MPI_Isend/Irecv with a send-time header. */
#include "dist/p2p.h"

#include "core/err.h"

#include <errno.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

_Static_assert(sizeof(MPI_Request) <= sizeof(uint64_t), "an MPI_Request fits the opaque field");

enum { HEADER = 64 }; /* keeps the payload 64-byte aligned */

static MPI_Request *req_of(ds_p2p_msg *m) { return (MPI_Request *)(void *)&m->req; }

static int mpi_check(int rc, const char *what, int peer) {
    if (rc == MPI_SUCCESS) return 0;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return ds_fail(DS_ERR, "pipeline %s (peer %d): %s", what, peer, msg);
}

double ds_p2p_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ds_p2p_sleep_until(double t) {
    double left = t - ds_p2p_now();
    if (left <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)left, .tv_nsec = (long)((left - (double)(time_t)left) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

double ds_p2p_delay(void) {
    static double delay = -1;
    if (delay < 0) {
        const char *e = getenv("DS_PP_DELAY_MS");
        double v = e ? strtod(e, NULL) : 0;
        delay = v > 0 ? v / 1000.0 : 0;
    }
    return delay;
}

int ds_p2p_alloc(ds_p2p_msg *m, size_t bytes) {
    if (m->buf && m->bytes >= bytes) {
        m->bytes = bytes;
        return 0;
    }
    free(m->buf);
    m->buf = aligned_alloc(64, (HEADER + bytes + 63) / 64 * 64);
    m->bytes = m->buf ? bytes : 0;
    return m->buf ? 0 : ds_fail(DS_ERR, "out of memory: a pipeline message of %zu bytes", bytes);
}

void ds_p2p_free(ds_p2p_msg *m) {
    if (m->active) MPI_Cancel(req_of(m)), MPI_Request_free(req_of(m));
    free(m->buf);
    memset(m, 0, sizeof *m);
}

int ds_p2p_isend(const ds_comm *c, int peer, int tag, ds_p2p_msg *m) {
    double now = ds_p2p_now();
    memcpy(m->buf, &now, sizeof now);
    DS_TRY(mpi_check(MPI_Isend(m->buf, (int)(HEADER + m->bytes), MPI_BYTE, peer, tag, *(MPI_Comm *)c->world, req_of(m)),
                     "send", peer));
    m->active = 1;
    m->is_recv = 0;
    return 0;
}

int ds_p2p_irecv(const ds_comm *c, int peer, int tag, ds_p2p_msg *m) {
    DS_TRY(mpi_check(MPI_Irecv(m->buf, (int)(HEADER + m->bytes), MPI_BYTE, peer, tag, *(MPI_Comm *)c->world, req_of(m)),
                     "receive", peer));
    m->active = 1;
    m->is_recv = 1;
    return 0;
}

/* a completed receive's header */
static void stamp(ds_p2p_msg *m) {
    if (m->is_recv) memcpy(&m->sent_at, m->buf, sizeof m->sent_at);
}

int ds_p2p_test(ds_p2p_msg *m, int *done) {
    *done = 0;
    if (m->active) {
        int flag = 0;
        DS_TRY(mpi_check(MPI_Test(req_of(m), &flag, MPI_STATUS_IGNORE), "test", -1));
        if (!flag) return 0;
        m->active = 0;
        stamp(m);
    }
    *done = !m->is_recv || ds_p2p_now() >= m->sent_at + ds_p2p_delay();
    return 0;
}

int ds_p2p_wait(ds_p2p_msg *m) {
    if (m->active) {
        DS_TRY(mpi_check(MPI_Wait(req_of(m), MPI_STATUS_IGNORE), "wait", -1));
        m->active = 0;
        stamp(m);
    }
    if (m->is_recv) ds_p2p_sleep_until(m->sent_at + ds_p2p_delay());
    return 0;
}
