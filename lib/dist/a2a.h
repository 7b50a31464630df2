/* a2a.h — all-to-all exchange of variable-sized byte blocks between the ranks of a group.
 *
 * Owns: our all-to-all (every receive posted first, then sends in a rotated peer order so no rank is
 * hit by everyone at once, the local block copied directly) and the switch between it and the MPI
 * library's MPI_Alltoallv, which is the reference ds-bench-a2a measures us against.
 * Counts and displacements are in bytes, one per peer, as in MPI_Alltoallv.
 */
#ifndef DS_DIST_A2A_H
#define DS_DIST_A2A_H

#include <stdint.h>

#include "dist/comm.h"

typedef enum { DS_A2A_OURS = 0, DS_A2A_MPI = 1 } ds_a2a_algo;

int ds_a2a_bytes(const ds_comm *c, ds_a2a_algo algo, const void *send, const int64_t *scount,
                 const int64_t *sdispl, void *recv, const int64_t *rcount, const int64_t *rdispl);

#endif
