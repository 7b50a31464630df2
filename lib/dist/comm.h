/* comm.h — the process group: MPI bootstrap, rank identity, and the collectives libds uses on CPU
 * tensors.
 *
 * Owns: MPI initialisation (a program started without mpirun is a group of one), rank/size/local rank,
 * the "[host:rank]" prefix for errors from any rank, and checked wrappers over the MPI calls libds
 * needs. Every MPI call goes through DS_MPI_TRY, which turns a failure into a ds_fail() message naming
 * host:rank file:line. NCCL (GPU tensors) lives in kernels/; this module never touches device memory.
 */
#ifndef DS_DIST_COMM_H
#define DS_DIST_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int rank, size;             /* in the world communicator */
    int local_rank, local_size; /* among ranks on the same host */
    int node, n_nodes;          /* host index (ranks grouped by host), number of hosts */
    char host[64];
    void *world, *local;        /* MPI_Comm handles (opaque so headers need no mpi.h) */
    int owns_mpi;               /* we called MPI_Init and must finalize */
} ds_comm;

int ds_comm_init(ds_comm *c, int *argc, char ***argv);
/* A group of one that never touches MPI (no MPI_Init: a machine may have no MPI installation at all, as
 * the lent GPU machines): every collective below is then the identity or a copy. For a program that was
 * not started by an MPI launcher (ds_dist_launched() is 0). */
void ds_comm_init_solo(ds_comm *c);
void ds_comm_finalize(ds_comm *c);
/* "[host:rank] " for messages when size > 1, "" otherwise. */
const char *ds_comm_prefix(const ds_comm *c);

/* Leave MPI without MPI_Finalize, for a rank that failed while the others may wait in a collective
 * (MPI_Finalize would wait for them): its non-zero exit then makes mpirun end the job. */
void ds_comm_abandon(ds_comm *c);
/* After a phase every rank goes through, each rank's status rc: the status of the lowest rank that
 * failed, on every rank (0 when none did). That rank keeps its message; on the others the error is
 * marked as reported (ds_err_silence), so a failure is printed once, by the rank that met it. */
int ds_comm_agree(const ds_comm *c, int rc);

/* A sub-group of c (collective over c): the ranks with the same color, ordered by key (MPI_Comm_split).
 * The result shares c's host identity (host, node, local rank); free it with ds_comm_free_split. */
int ds_comm_split(const ds_comm *c, int color, int key, ds_comm *out);
void ds_comm_free_split(ds_comm *sub);

int ds_comm_barrier(const ds_comm *c);
/* Rank 0's value, on every rank. */
int ds_comm_bcast_u64(const ds_comm *c, uint64_t *v);
int ds_comm_bcast_bytes(const ds_comm *c, void *buf, int n);
int ds_comm_allreduce_sum_f64(const ds_comm *c, double *v, int n);
int ds_comm_allreduce_max_f64(const ds_comm *c, double *v, int n);
int ds_comm_allreduce_sum_i64(const ds_comm *c, int64_t *v, int n);
int ds_comm_allreduce_sum_f32(const ds_comm *c, float *v, size_t n);
/* Exchange one int64 per peer: recv[j] = what rank j put in its send[rank]. */
int ds_comm_alltoall_i64(const ds_comm *c, const int64_t *send, int64_t *recv);
/* The library's all-to-all with byte counts and displacements (the reference). */
int ds_comm_alltoallv_bytes(const ds_comm *c, const void *send, const int64_t *scount, const int64_t *sdispl,
                            void *recv, const int64_t *rcount, const int64_t *rdispl);

#endif
