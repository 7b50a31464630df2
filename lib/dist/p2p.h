/* p2p.h — non-blocking point-to-point messages between pipeline stages, with an injectable delay.
 *
 * Owns: posting and completing the activations and gradients one stage sends another (MPI_Isend /
 * MPI_Irecv on a ds_comm, usually the layout's pp_comm), and the artificial transfer delay that shows how
 * much communication a schedule hides. A message carries its payload after a small header holding the
 * sender's send time (CLOCK_MONOTONIC, the same clock for every process of a host); with a delay of d
 * seconds a received message counts as complete only once d has passed since that send time, as if the
 * link took d to deliver it. The delay is the environment variable DS_PP_DELAY_MS (milliseconds, default
 * 0), read once; on several hosts the clocks differ and the delay is approximate.
 *
 * Progress: MPI moves a message only inside MPI calls, so an executor calls ds_p2p_test on its open
 * messages between pieces of computation (the model's layer loop), not only when it needs the data.
 */
#ifndef DS_DIST_P2P_H
#define DS_DIST_P2P_H

#include <stddef.h>
#include <stdint.h>

#include "dist/comm.h"

typedef struct {
    void *buf;        /* header + payload, owned by the message (ds_p2p_alloc) */
    size_t bytes;     /* payload bytes */
    uint64_t req;     /* the MPI request (opaque) */
    int active;       /* posted and not yet completed */
    int is_recv;
    double sent_at;   /* a completed receive: the sender's send time */
} ds_p2p_msg;

/* Room for a payload of `bytes` (buffers are reused across messages of the same size or smaller). */
int ds_p2p_alloc(ds_p2p_msg *m, size_t bytes);
void ds_p2p_free(ds_p2p_msg *m);
static inline void *ds_p2p_payload(ds_p2p_msg *m) { return (char *)m->buf + 64; }

/* Post a send of the payload (stamped with the time now) or a receive into it, to/from rank peer of c. */
int ds_p2p_isend(const ds_comm *c, int peer, int tag, ds_p2p_msg *m);
int ds_p2p_irecv(const ds_comm *c, int peer, int tag, ds_p2p_msg *m);
/* *done = 1 once the message is complete (a receive: and its delay has passed). Drives MPI's progress. */
int ds_p2p_test(ds_p2p_msg *m, int *done);
/* Block until complete (a receive: sleeping out the rest of its delay). */
int ds_p2p_wait(ds_p2p_msg *m);

/* The injected delay in seconds (DS_PP_DELAY_MS / 1000). */
double ds_p2p_delay(void);
/* Seconds on the monotonic clock the headers use. */
double ds_p2p_now(void);
/* Sleep until monotonic time t (no-op when past). */
void ds_p2p_sleep_until(double t);

#endif
