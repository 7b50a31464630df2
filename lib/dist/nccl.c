#include "dist/nccl.h"

#include "core/err.h"
#include "dist/dp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- plans (every build) ---- */

int ds_nccl_even_slices(size_t n, int p) { return p >= 1 && n % (size_t)p == 0; }

int ds_nccl_a2a_plan(int rank, int n, const int64_t *scount, const int64_t *sdispl, const int64_t *rcount,
                     const int64_t *rdispl, ds_nccl_op *ops, int *n_ops, int64_t *self_bytes) {
    *n_ops = 0;
    *self_bytes = 0;
    for (int j = 0; j < n; j++)
        if (scount[j] < 0 || rcount[j] < 0 || sdispl[j] < 0 || rdispl[j] < 0)
            return ds_fail(DS_ERR, "nccl: all-to-all: negative count or displacement for peer %d: rank %d", j, rank);
    if (scount[rank] != rcount[rank])
        return ds_fail(DS_ERR, "nccl: all-to-all: self block sizes differ (%lld vs %lld): rank %d", (long long)scount[rank],
                       (long long)rcount[rank], rank);
    *self_bytes = scount[rank];
    int k = 0;
    /* receives first, then sends in the rotated order of dist/a2a.c; inside one NCCL group the order
     * only decides which connections NCCL services first */
    for (int i = 1; i < n; i++) {
        int src = (rank - i + n) % n;
        if (rcount[src]) ops[k++] = (ds_nccl_op){.peer = src, .is_recv = 1, .offset = rdispl[src], .bytes = rcount[src]};
    }
    for (int i = 1; i < n; i++) {
        int dst = (rank + i) % n;
        if (scount[dst]) ops[k++] = (ds_nccl_op){.peer = dst, .is_recv = 0, .offset = sdispl[dst], .bytes = scount[dst]};
    }
    *n_ops = k;
    return 0;
}

#if defined(DS_HAVE_CUDA) && defined(DS_HAVE_NCCL)

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <pthread.h>
#include <time.h>

/* NCCL's entry points, resolved at run time: the programs must start (and train on the CPU) where
 * libnccl is absent, and a machine's NCCL may be newer than the headers we built with. */
static struct {
    int tried, ok;
    char why[512];
    void *h;
    ncclResult_t (*GetVersion)(int *);
    ncclResult_t (*GetUniqueId)(ncclUniqueId *);
    ncclResult_t (*CommInitRank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*CommDestroy)(ncclComm_t);
    ncclResult_t (*CommAbort)(ncclComm_t);
    ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t *);
    const char *(*GetErrorString)(ncclResult_t);
    const char *(*GetLastError)(ncclComm_t); /* NCCL 2.13+: optional */
    ncclResult_t (*AllReduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*ReduceScatter)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*AllGather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
    ncclResult_t (*Reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*Broadcast)(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*Send)(const void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*Recv)(void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*GroupStart)(void);
    ncclResult_t (*GroupEnd)(void);
} L;
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

static int load_nccl(void) {
    pthread_mutex_lock(&load_lock);
    if (!L.tried) {
        L.tried = 1;
        const char *env = getenv("DS_NCCL_LIB");
        /* DS_NCCL_LIB names the one library to use; otherwise the loader's search path decides */
        const char *names[3] = {env && *env ? env : "libnccl.so.2", env && *env ? NULL : "libnccl.so", NULL};
        for (int i = 0; i < 2 && !L.h; i++)
            if (names[i]) L.h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!L.h) {
            snprintf(L.why, sizeof L.why, "cannot load %s (%s); set DS_NCCL_LIB or LD_LIBRARY_PATH",
                     env && *env ? env : "libnccl.so.2", dlerror());
        } else {
            int missing = 0;
#define SYM(field, name)                                                                                       \
    do {                                                                                                       \
        *(void **)&L.field = dlsym(L.h, name);                                                                 \
        if (!L.field && !missing) missing = 1, snprintf(L.why, sizeof L.why, "libnccl lacks %s", name);        \
    } while (0)
            SYM(GetVersion, "ncclGetVersion");
            SYM(GetUniqueId, "ncclGetUniqueId");
            SYM(CommInitRank, "ncclCommInitRank");
            SYM(CommDestroy, "ncclCommDestroy");
            SYM(CommAbort, "ncclCommAbort");
            SYM(CommGetAsyncError, "ncclCommGetAsyncError");
            SYM(GetErrorString, "ncclGetErrorString");
            SYM(AllReduce, "ncclAllReduce");
            SYM(ReduceScatter, "ncclReduceScatter");
            SYM(AllGather, "ncclAllGather");
            SYM(Reduce, "ncclReduce");
            SYM(Broadcast, "ncclBroadcast");
            SYM(Send, "ncclSend");
            SYM(Recv, "ncclRecv");
            SYM(GroupStart, "ncclGroupStart");
            SYM(GroupEnd, "ncclGroupEnd");
#undef SYM
            *(void **)&L.GetLastError = dlsym(L.h, "ncclGetLastError");
            int v = 0;
            if (!missing && (L.GetVersion(&v) != ncclSuccess || v < 20700))
                missing = 1, snprintf(L.why, sizeof L.why, "libnccl version %d is older than 2.7 (no send/recv)", v);
            L.ok = !missing;
        }
    }
    pthread_mutex_unlock(&load_lock);
    if (!L.ok) return ds_fail(DS_ERR, "nccl: %s", L.why);
    return 0;
}

struct ds_nccl {
    ncclComm_t comm;
    int rank, size, world_rank;
    cudaStream_t stream, compute;
    cudaEvent_t ready, done;
    int aborted;
};

static int nccl_fail(const ds_nccl *nc, int world_rank, ncclResult_t r, const char *what) {
    const char *last = L.GetLastError ? L.GetLastError(nc ? nc->comm : NULL) : NULL;
    return ds_fail(DS_ERR, "nccl: %s: %s%s%s%s: rank %d", what, L.GetErrorString(r), last && *last ? " (" : "",
                   last && *last ? last : "", last && *last ? ")" : "", nc ? nc->world_rank : world_rank);
}
#define NC_TRY(nc, call, what)                                                                                 \
    do {                                                                                                       \
        ncclResult_t nc_r_ = (call);                                                                           \
        if (nc_r_ != ncclSuccess) return nccl_fail((nc), -1, nc_r_, (what));                                   \
    } while (0)
#define CU_TRY(call, what, rank)                                                                               \
    do {                                                                                                       \
        cudaError_t cu_r_ = (call);                                                                            \
        if (cu_r_ != cudaSuccess) return ds_fail(DS_ERR, "nccl: %s: %s: rank %d", (what), cudaGetErrorString(cu_r_), (rank)); \
    } while (0)

int ds_nccl_built(void) { return 1; }
int ds_nccl_require(const char *what) { return 0; }

int ds_nccl_select_device(const ds_comm *c, int *device) {
    DS_TRY(load_nccl()); /* first: a machine without NCCL hears that, not something about its GPUs */
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        return ds_fail(DS_ERR, "nccl: no usable GPU (%s): rank %d", e != cudaSuccess ? cudaGetErrorString(e) : "no device",
                       c->rank);
    int d = ds_nccl_device_of(c->local_rank, n);
    CU_TRY(cudaSetDevice(d), "selecting the GPU", c->rank);
    if (device) *device = d;
    return 0;
}

int ds_nccl_create(ds_nccl **out, const ds_comm *c, void *compute_stream) {
    *out = NULL;
    DS_TRY(load_nccl());
    int dev = -1;
    CU_TRY(cudaGetDevice(&dev), "no current GPU", c->rank);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    /* rank 0's id reaches the others over MPI; a failure there must not leave them waiting in the
     * broadcast, so rank 0 sends a zeroed id and the status travels with it */
    int32_t status = 0;
    if (c->rank == 0 && L.GetUniqueId(&id) != ncclSuccess) status = 1;
    char msg[sizeof id + sizeof status];
    memcpy(msg, &id, sizeof id);
    memcpy(msg + sizeof id, &status, sizeof status);
    if (c->size > 1) DS_TRY(ds_comm_bcast_bytes(c, msg, (int)sizeof msg));
    memcpy(&id, msg, sizeof id);
    memcpy(&status, msg + sizeof id, sizeof status);
    if (status) return ds_fail(DS_ERR, "nccl: ncclGetUniqueId failed on rank 0 of the group: rank %d", c->rank);
    ds_nccl *nc = calloc(1, sizeof *nc);
    if (!nc) return ds_fail(DS_ERR, "out of memory: nccl communicator");
    nc->rank = c->rank, nc->size = c->size, nc->world_rank = c->rank, nc->compute = (cudaStream_t)compute_stream;
    int rc = 0;
    cudaError_t e = cudaStreamCreateWithFlags(&nc->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&nc->ready, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventCreateWithFlags(&nc->done, cudaEventDisableTiming);
    if (e != cudaSuccess) rc = ds_fail(DS_ERR, "nccl: communication stream on GPU %d: %s: rank %d", dev, cudaGetErrorString(e), c->rank);
    if (!rc) {
        ncclResult_t r = L.CommInitRank(&nc->comm, c->size, id, c->rank);
        if (r != ncclSuccess) {
            nc->comm = NULL;
            rc = nccl_fail(NULL, c->rank, r, "ncclCommInitRank");
        }
    }
    if (rc) {
        ds_nccl_free(nc);
        return rc;
    }
    *out = nc;
    return 0;
}

static void release(ds_nccl *nc, int abort) {
    if (!nc) return;
    if (nc->comm) (abort ? L.CommAbort : L.CommDestroy)(nc->comm);
    if (nc->ready) cudaEventDestroy(nc->ready);
    if (nc->done) cudaEventDestroy(nc->done);
    if (nc->stream) cudaStreamDestroy(nc->stream);
    free(nc);
}
void ds_nccl_free(ds_nccl *nc) { release(nc, nc && nc->aborted); }
void ds_nccl_abort(ds_nccl *nc) { release(nc, 1); }
int ds_nccl_rank(const ds_nccl *nc) { return nc->rank; }
int ds_nccl_size(const ds_nccl *nc) { return nc->size; }
void *ds_nccl_stream(const ds_nccl *nc) { return nc->stream; }

/* The communication stream waits for the compute stream's work so far ... */
static int begin(ds_nccl *nc) {
    if (nc->aborted) return ds_fail(DS_ERR, "nccl: the communicator was aborted after an error: rank %d", nc->world_rank);
    CU_TRY(cudaEventRecord(nc->ready, nc->compute), "recording the compute stream", nc->world_rank);
    CU_TRY(cudaStreamWaitEvent(nc->stream, nc->ready, 0), "ordering the communication stream", nc->world_rank);
    return 0;
}
/* ... and the compute stream's next work waits for the communication. */
static int end(ds_nccl *nc) {
    CU_TRY(cudaEventRecord(nc->done, nc->stream), "recording the communication stream", nc->world_rank);
    CU_TRY(cudaStreamWaitEvent(nc->compute, nc->done, 0), "ordering the compute stream", nc->world_rank);
    return 0;
}

int ds_nccl_allreduce_f32(ds_nccl *nc, float *x, size_t n) {
    if (!n) return 0;
    DS_TRY(begin(nc));
    NC_TRY(nc, L.AllReduce(x, x, n, ncclFloat32, ncclSum, nc->comm, nc->stream), "all-reduce");
    return end(nc);
}

int ds_nccl_reduce_scatter_f32(ds_nccl *nc, float *x, size_t n) {
    if (!n) return 0;
    const int p = nc->size;
    DS_TRY(begin(nc));
    if (ds_nccl_even_slices(n, p)) { /* in place: rank r's slice is where NCCL writes r's sums */
        const size_t per = n / (size_t)p;
        NC_TRY(nc, L.ReduceScatter(x, x + per * (size_t)nc->rank, per, ncclFloat32, ncclSum, nc->comm, nc->stream),
               "reduce-scatter");
    } else { /* uneven slices: each slice reduced onto its owner, all in one group */
        NC_TRY(nc, L.GroupStart(), "group start");
        for (int j = 0; j < p; j++) {
            size_t lo, hi;
            ds_dp_slice(n, p, j, &lo, &hi);
            ncclResult_t r = L.Reduce(x + lo, x + lo, hi - lo, ncclFloat32, ncclSum, j, nc->comm, nc->stream);
            if (r != ncclSuccess) {
                L.GroupEnd();
                return nccl_fail(nc, -1, r, "reduce-scatter (reduce)");
            }
        }
        NC_TRY(nc, L.GroupEnd(), "reduce-scatter (group)");
    }
    return end(nc);
}

int ds_nccl_allgather_f32(ds_nccl *nc, float *x, size_t n) {
    if (!n) return 0;
    const int p = nc->size;
    DS_TRY(begin(nc));
    if (ds_nccl_even_slices(n, p)) {
        const size_t per = n / (size_t)p;
        NC_TRY(nc, L.AllGather(x + per * (size_t)nc->rank, x, per, ncclFloat32, nc->comm, nc->stream), "all-gather");
    } else {
        NC_TRY(nc, L.GroupStart(), "group start");
        for (int j = 0; j < p; j++) {
            size_t lo, hi;
            ds_dp_slice(n, p, j, &lo, &hi);
            ncclResult_t r = L.Broadcast(x + lo, x + lo, hi - lo, ncclFloat32, j, nc->comm, nc->stream);
            if (r != ncclSuccess) {
                L.GroupEnd();
                return nccl_fail(nc, -1, r, "all-gather (broadcast)");
            }
        }
        NC_TRY(nc, L.GroupEnd(), "all-gather (group)");
    }
    return end(nc);
}

/* Issue ops inside one group; on failure the group is closed before the error returns. */
static int issue_group(ds_nccl *nc, const ds_nccl_op *ops, int n_ops, const char *sendb, char *recvb, const char *what) {
    NC_TRY(nc, L.GroupStart(), "group start");
    for (int i = 0; i < n_ops; i++) {
        const ds_nccl_op *o = &ops[i];
        ncclResult_t r = o->is_recv ? L.Recv(recvb + o->offset, (size_t)o->bytes, ncclUint8, o->peer, nc->comm, nc->stream)
                                    : L.Send(sendb + o->offset, (size_t)o->bytes, ncclUint8, o->peer, nc->comm, nc->stream);
        if (r != ncclSuccess) {
            L.GroupEnd();
            return nccl_fail(nc, -1, r, what);
        }
    }
    NC_TRY(nc, L.GroupEnd(), what);
    return 0;
}

int ds_nccl_alltoallv_bytes(ds_nccl *nc, const void *send, const int64_t *scount, const int64_t *sdispl, void *recv,
                            const int64_t *rcount, const int64_t *rdispl) {
    const int n = nc->size;
    ds_nccl_op *ops = malloc(2 * (size_t)n * sizeof *ops);
    if (!ops) return ds_fail(DS_ERR, "out of memory: nccl all-to-all");
    int n_ops = 0;
    int64_t self = 0;
    int rc = ds_nccl_a2a_plan(nc->rank, n, scount, sdispl, rcount, rdispl, ops, &n_ops, &self);
    if (!rc) rc = begin(nc);
    if (!rc && self) {
        cudaError_t e = cudaMemcpyAsync((char *)recv + rdispl[nc->rank], (const char *)send + sdispl[nc->rank], (size_t)self,
                                        cudaMemcpyDeviceToDevice, nc->stream);
        if (e != cudaSuccess) rc = ds_fail(DS_ERR, "nccl: all-to-all: own block: %s: rank %d", cudaGetErrorString(e), nc->world_rank);
    }
    if (!rc && n_ops) rc = issue_group(nc, ops, n_ops, send, recv, "all-to-all (send/recv)");
    if (!rc) rc = end(nc);
    free(ops);
    return rc;
}

static int ep_exchange(ds_nccl *nc, ds_ep *ep, ds_ep_bytes *acct, const void *send, const int64_t *send_rows,
                       void *recv, const int64_t *recv_rows, size_t row_bytes) {
    if (ep->transport == DS_EP_TWO_HOP)
        return ds_fail(DS_ERR, "nccl: expert-parallel exchange over two hops: MPI only: rank %d", nc->world_rank);
    if (ep->n_ranks != nc->size || ep->rank != nc->rank)
        return ds_fail(DS_ERR, "nccl: the EP plan is for rank %d of %d, the communicator's rank %d of %d", ep->rank,
                       ep->n_ranks, nc->rank, nc->size);
    ds_ep_exchange_layout(ep, acct, send_rows, recv_rows, row_bytes);
    return ds_nccl_alltoallv_bytes(nc, send, ep->bcount, ep->boff, recv, ep->bcount2, ep->boff2);
}

int ds_nccl_ep_dispatch(ds_nccl *nc, ds_ep *ep, const void *grouped, void *recv, size_t row_bytes) {
    return ep_exchange(nc, ep, &ep->sent_dispatch, grouped, ep->send_rows, recv, ep->recv_rows, row_bytes);
}

int ds_nccl_ep_return(ds_nccl *nc, ds_ep *ep, const void *rows, void *back, size_t row_bytes) {
    return ep_exchange(nc, ep, &ep->sent_combine, rows, ep->recv_rows, back, ep->send_rows, row_bytes);
}

int ds_nccl_p2p(ds_nccl *nc, const ds_nccl_xfer *x, int count) {
    for (int i = 0; i < count; i++)
        if (x[i].peer < 0 || x[i].peer >= nc->size)
            return ds_fail(DS_ERR, "nccl: transfer to rank %d of a group of %d: rank %d", x[i].peer, nc->size, nc->world_rank);
    DS_TRY(begin(nc));
    NC_TRY(nc, L.GroupStart(), "group start");
    for (int i = 0; i < count; i++) {
        ncclResult_t r = x[i].is_recv ? L.Recv(x[i].buf, x[i].bytes, ncclUint8, x[i].peer, nc->comm, nc->stream)
                                      : L.Send(x[i].buf, x[i].bytes, ncclUint8, x[i].peer, nc->comm, nc->stream);
        if (r != ncclSuccess) {
            L.GroupEnd();
            return nccl_fail(nc, -1, r, "point-to-point");
        }
    }
    NC_TRY(nc, L.GroupEnd(), "point-to-point (group)");
    return end(nc);
}

int ds_nccl_wait(ds_nccl *nc) {
    for (;;) {
        cudaError_t e = cudaStreamQuery(nc->stream);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady)
            return ds_fail(DS_ERR, "nccl: communication stream: %s: rank %d", cudaGetErrorString(e), nc->world_rank);
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = L.CommGetAsyncError(nc->comm, &async);
        if (r == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
            /* a peer failed (or the network did): the communicator cannot finish; abort rather than hang */
            int rc = nccl_fail(nc, -1, async, "asynchronous error");
            L.CommAbort(nc->comm);
            nc->comm = NULL;
            nc->aborted = 1;
            return rc;
        }
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
}

int ds_nccl_dev_alloc(void **p, size_t bytes) {
    *p = NULL;
    CU_TRY(cudaMalloc(p, bytes ? bytes : 1), "device memory", -1);
    return 0;
}
void ds_nccl_dev_free(void *p) {
    if (p) cudaFree(p);
}
int ds_nccl_h2d(void *dst, const void *src, size_t bytes) {
    CU_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to the GPU", -1);
    return 0;
}
int ds_nccl_d2h(void *dst, const void *src, size_t bytes) {
    CU_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy from the GPU", -1);
    return 0;
}

int ds_nccl_groups_make(ds_nccl_groups *g, const ds_layout *L_, void *compute_stream) {
    memset(g, 0, sizeof *g);
    if (!L_->have_comms) return ds_fail(DS_ERR, "nccl: the layout has no communicators");
    /* every rank creates the groups in the same order: each creation is collective over its group */
    int rc = ds_nccl_create(&g->dp, &L_->dp_comm, compute_stream);
    if (!rc) rc = ds_nccl_create(&g->ep, &L_->ep_comm, compute_stream);
    if (!rc) rc = ds_nccl_create(&g->expert_dp, &L_->expert_dp_comm, compute_stream);
    if (!rc) rc = ds_nccl_create(&g->pp, &L_->pp_comm, compute_stream);
    if (rc) ds_nccl_groups_free(g, 1);
    return rc;
}

#else /* no NCCL in this build: every entry point refuses with one line */

#define NO_NCCL "this build has no NCCL (built without CUDA, or make found no nccl.h; see docs/DESIGN.md \"NCCL\")"
struct ds_nccl {
    int unused;
};
int ds_nccl_built(void) { return 0; }
int ds_nccl_require(const char *what) { return ds_fail(DS_EUSAGE, "%s: " NO_NCCL, what); }
static int no_nccl(void) { return ds_fail(DS_EUSAGE, "nccl: " NO_NCCL); }
int ds_nccl_select_device(const ds_comm *c, int *device) { return no_nccl(); }
int ds_nccl_create(ds_nccl **out, const ds_comm *c, void *compute_stream) {
    *out = NULL;
    return no_nccl();
}
void ds_nccl_free(ds_nccl *n) {}
void ds_nccl_abort(ds_nccl *n) {}
int ds_nccl_rank(const ds_nccl *n) { return 0; }
int ds_nccl_size(const ds_nccl *n) { return 1; }
void *ds_nccl_stream(const ds_nccl *n) { return NULL; }
int ds_nccl_allreduce_f32(ds_nccl *nc, float *x, size_t n) { return no_nccl(); }
int ds_nccl_reduce_scatter_f32(ds_nccl *nc, float *x, size_t n) { return no_nccl(); }
int ds_nccl_allgather_f32(ds_nccl *nc, float *x, size_t n) { return no_nccl(); }
int ds_nccl_alltoallv_bytes(ds_nccl *nc, const void *send, const int64_t *scount, const int64_t *sdispl, void *recv,
                            const int64_t *rcount, const int64_t *rdispl) {
    return no_nccl();
}
int ds_nccl_p2p(ds_nccl *nc, const ds_nccl_xfer *x, int count) { return no_nccl(); }
int ds_nccl_ep_dispatch(ds_nccl *nc, ds_ep *ep, const void *grouped, void *recv, size_t row_bytes) { return no_nccl(); }
int ds_nccl_ep_return(ds_nccl *nc, ds_ep *ep, const void *rows, void *back, size_t row_bytes) { return no_nccl(); }
int ds_nccl_wait(ds_nccl *nc) { return no_nccl(); }
int ds_nccl_dev_alloc(void **p, size_t bytes) {
    *p = NULL;
    return no_nccl();
}
void ds_nccl_dev_free(void *p) {}
int ds_nccl_h2d(void *dst, const void *src, size_t bytes) { return no_nccl(); }
int ds_nccl_d2h(void *dst, const void *src, size_t bytes) { return no_nccl(); }
int ds_nccl_groups_make(ds_nccl_groups *g, const ds_layout *L_, void *compute_stream) {
    memset(g, 0, sizeof *g);
    return no_nccl();
}

#endif

void ds_nccl_groups_free(ds_nccl_groups *g, int abort) {
    ds_nccl **all[4] = {&g->dp, &g->ep, &g->expert_dp, &g->pp};
    for (int i = 0; i < 4; i++) {
        if (*all[i]) (abort ? ds_nccl_abort : ds_nccl_free)(*all[i]);
        *all[i] = NULL;
    }
}
