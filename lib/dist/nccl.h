/* nccl.h — NCCL communicators and collectives on device buffers (one process per GPU).
 *
 * Owns: the GPU a rank uses (its local rank modulo the host's GPUs), NCCL communicators over a ds_comm's
 * ranks (rank 0 makes the ncclUniqueId, MPI broadcasts it, so NCCL needs no launcher of its own), one per
 * group of the rank layout (dist/layout.h: dp, ep, expert_dp, pp; each from its own unique id over the
 * layout's MPI sub-communicator, so an NCCL group ranks its members exactly as the MPI group does and
 * ZeRO-1's slices are the same on both transports), and the collectives libds needs on device memory:
 * sum all-reduce, reduce-scatter and all-gather in dist/dp.h's slicing, the all-to-all of variable byte
 * blocks as grouped ncclSend/ncclRecv (the counts of dist/ep.h's plans), and grouped point-to-point
 * transfers (pipeline stages).
 *
 * Streams: every communicator enqueues on a stream of its own (the communication stream). A collective
 * first makes that stream wait for an event recorded on the caller's compute stream (the work that
 * produced its input), and afterwards makes the compute stream wait for an event recorded behind the
 * collective: ordering without a host synchronisation. ds_nccl_wait is the host's synchronisation point,
 * and the one place that notices an asynchronous NCCL failure (a peer that died).
 *
 * Failures: "nccl: <what>: <NCCL's reason>: rank R", as ds_fail messages. A rank that failed while its
 * peers may be inside a collective aborts its communicators (ncclCommAbort: never waits for them) and
 * exits non-zero, which ends the job under mpirun (tests/bats/faults.bats); the peers are then killed by
 * the launcher. NCCL is loaded at run time (dlopen of libnccl.so.2, or DS_NCCL_LIB), so the programs
 * start on machines without it; a build without nccl.h or without CUDA refuses every call with one line.
 */
#ifndef DS_DIST_NCCL_H
#define DS_DIST_NCCL_H

#include <stddef.h>
#include <stdint.h>

#include "dist/comm.h"
#include "dist/ep.h"
#include "dist/layout.h"

typedef struct ds_nccl ds_nccl;

/* 1 when this build can use NCCL (CUDA and nccl.h were found by make); 0 otherwise. */
int ds_nccl_built(void);
/* Fails with "<what>: this build has no NCCL (...)" (DS_EUSAGE) when ds_nccl_built() is 0, else 0. */
int ds_nccl_require(const char *what);

/* The GPU of a process: local_rank modulo the host's devices (one process per GPU when the host runs as
 * many ranks as it has GPUs). Several ranks on one GPU are refused by NCCL itself. */
static inline int ds_nccl_device_of(int local_rank, int n_devices) { return n_devices > 0 ? local_rank % n_devices : -1; }
/* Select c's local rank's GPU for this process (before the CUDA backend starts: it takes the current
 * device). *device may be NULL. */
int ds_nccl_select_device(const ds_comm *c, int *device);

/* Collective over c: a communicator over c's ranks, in c's order. compute_stream: the cudaStream_t the
 * caller's kernels run on (NULL: the legacy default stream). */
int ds_nccl_create(ds_nccl **out, const ds_comm *c, void *compute_stream);
/* Destroy (every rank of the group calls it) or abort (a rank that failed alone: returns at once). */
void ds_nccl_free(ds_nccl *n);
void ds_nccl_abort(ds_nccl *n);
int ds_nccl_rank(const ds_nccl *n);
int ds_nccl_size(const ds_nccl *n);
void *ds_nccl_stream(const ds_nccl *n); /* the communication stream (cudaStream_t) */

/* In place on device memory, ordered after the compute stream's work and before its next (see above). */
int ds_nccl_allreduce_f32(ds_nccl *nc, float *x, size_t n);
/* dist/dp.h semantics: after reduce_scatter slice rank (ds_dp_slice) of x holds the sums; allgather
 * gives every rank every rank's slice. */
int ds_nccl_reduce_scatter_f32(ds_nccl *nc, float *x, size_t n);
int ds_nccl_allgather_f32(ds_nccl *nc, float *x, size_t n);
/* dist/a2a.h's exchange on device buffers: byte counts and displacements per peer. */
int ds_nccl_alltoallv_bytes(ds_nccl *nc, const void *send, const int64_t *scount, const int64_t *sdispl, void *recv,
                            const int64_t *rcount, const int64_t *rdispl);

/* Expert parallelism's one-hop exchanges between GPU buffers with ep's plan (dist/ep.h; the plan itself is
 * made over MPI, host metadata): dispatch sends ep->n_send rows grouped by destination (the order of
 * ep->send_token) and receives ep->n_recv rows grouped by source, as ds_ep_dispatch's; the return trip
 * sends those n_recv rows (expert outputs) back and receives n_send rows in the dispatch's send order.
 * Gathering token rows into destination order and the weighted per-token sum after the return are the
 * caller's device work. The bytes are counted in ep->sent_dispatch / sent_combine. Two hops: MPI only. */
int ds_nccl_ep_dispatch(ds_nccl *nc, ds_ep *ep, const void *grouped, void *recv, size_t row_bytes);
int ds_nccl_ep_return(ds_nccl *nc, ds_ep *ep, const void *rows, void *back, size_t row_bytes);

/* One transfer of a group of point-to-point transfers (pipeline activations and gradients). */
typedef struct {
    int peer;    /* rank in the communicator */
    int is_recv; /* 1: receive into buf, 0: send buf */
    void *buf;   /* device memory */
    size_t bytes;
} ds_nccl_xfer;
/* All of them in one NCCL group (sends and receives may not deadlock each other). */
int ds_nccl_p2p(ds_nccl *nc, const ds_nccl_xfer *x, int count);

/* Block until the communicator's work so far is done. On an asynchronous NCCL error the communicator is
 * aborted and the error returned. */
int ds_nccl_wait(ds_nccl *nc);

/* Device memory for callers without a backend of their own (ds-bench-a2a, tests): synchronous copies. */
int ds_nccl_dev_alloc(void **p, size_t bytes);
void ds_nccl_dev_free(void *p);
int ds_nccl_h2d(void *dst, const void *src, size_t bytes);
int ds_nccl_d2h(void *dst, const void *src, size_t bytes);

/* The layout's groups as NCCL communicators (collective over the layout's world; a group of one rank
 * gets a communicator too, so the code paths are those of a real run). */
typedef struct {
    ds_nccl *dp, *ep, *expert_dp, *pp;
} ds_nccl_groups;
int ds_nccl_groups_make(ds_nccl_groups *g, const ds_layout *L, void *compute_stream);
/* abort: the rank failed alone (ds_nccl_abort on each), else ds_nccl_free. */
void ds_nccl_groups_free(ds_nccl_groups *g, int abort);

/* ---- the plans behind the calls (host only; unit-tested without a GPU) ---- */

/* Whether reduce-scatter / all-gather of n values over p ranks maps onto ncclReduceScatter /
 * ncclAllGather in place (every slice the same size), or needs one ncclReduce / ncclBroadcast per slice. */
int ds_nccl_even_slices(size_t n, int p);

/* The point-to-point operations of one all-to-all on rank `rank` of n, in issue order: receives from
 * rank-1, rank-2, ... then sends to rank+1, rank+2, ... (dist/a2a.c's rotation: no rank is everyone's
 * first target); empty blocks and the rank's own block are left out (*self_bytes: the own block, copied
 * on the device). ops: room for 2n. Counts must be >= 0 and the own block the same size both ways. */
typedef struct {
    int peer, is_recv;
    int64_t offset, bytes;
} ds_nccl_op;
int ds_nccl_a2a_plan(int rank, int n, const int64_t *scount, const int64_t *sdispl, const int64_t *rcount,
                     const int64_t *rdispl, ds_nccl_op *ops, int *n_ops, int64_t *self_bytes);

#endif
