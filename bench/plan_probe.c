/* This machine's numbers for share/clusters/cpu-2core.json: the best sgemm rate OpenBLAS reaches with 1
 * and with 2 threads (lib/train/flops.c's measurement, 1024^3, wall clock), one thread's sgemm rate and
 * copy bandwidth (bytes read + written, 256 MiB) and the attention kernel's query-key scores per second
 * (the mean of its forward and its backward, demo.json's heads at 256 tokens) in that thread's CPU time, best of 10: the shared
 * machine's load moves the wall-clock numbers, not these much. Build and run: bench/plan_small.sh probe.
 * Usage: plan_probe [SECONDS per wall-clock sgemm measurement]
 *        mpirun -np N plan_probe mpi   the latency of one 8-byte MPI_Allreduce and of one 8-byte message
 *                                      (half a ping-pong of ranks 0 and 1), wall clock: the best of 20 batches
 *                                      of 200 (what a rank sees when the others are scheduled at once) and
 *                                      the median batch (with the load's scheduling delays) */
#include "core/log.h"
#include "core/threads.h"
#include "ops/ops.h"
#include "train/flops.h"

#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* One thread's sgemm rate in its own CPU time: what a core does when no other process takes it away
 * (this machine is shared; wall-clock rates move with the load). */
static double sgemm_cpu_rate(int n, int reps) {
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f, c[i] = 0;
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = thread_cpu();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = thread_cpu() - t0;
        if (dt > 0 && 2.0 * n * n * n / dt > best) best = 2.0 * n * n * n / dt;
    }
    free(a), free(b), free(c);
    return best;
}

/* Scores (query-key pairs, causal) per second of one thread through libds's CPU attention, the mean of the
 * forward and the backward per score: the planner's attn_gscores_s. */
static double attn_score_rate(void) {
    const int B = 8, T = 256, H = 4, dqk = 48, dv = 32;
    const ds_ops *ops = ds_ops_cpu();
    const size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv;
    float *q = malloc(4 * nq), *k = malloc(4 * nq), *v = malloc(4 * nv), *o = malloc(4 * nv), *d = malloc(4 * nv),
          *dq = malloc(4 * nq), *dk = malloc(4 * nq), *dvv = malloc(4 * nv), *lse = malloc(4 * (size_t)B * T * H);
    void *ws = malloc(ops->attn_ws_bytes(B, T, H, dqk, dv) + 64);
    for (size_t i = 0; i < nq; i++) q[i] = 0.01f * (float)(i % 13), k[i] = 0.02f * (float)(i % 11);
    for (size_t i = 0; i < nv; i++) v[i] = 0.1f * (float)(i % 5), d[i] = 0.01f * (float)(i % 3);
    double best_f = 1e30, best_b = 1e30;
    for (int r = 0; r < 10; r++) {
        double t0 = thread_cpu();
        ops->attn_fwd(o, lse, q, k, v, NULL, B, T, H, dqk, dv, 0.1f, ws);
        double t1 = thread_cpu();
        ops->attn_bwd(dq, dk, dvv, d, q, k, v, o, lse, NULL, B, T, H, dqk, dv, 0.1f, ws);
        double t2 = thread_cpu();
        if (t1 - t0 < best_f) best_f = t1 - t0;
        if (t2 - t1 < best_b) best_b = t2 - t1;
    }
    free(q), free(k), free(v), free(o), free(d), free(dq), free(dk), free(dvv), free(lse), free(ws);
    return (double)B * H * T * T / 2 / ((best_f + best_b) / 2);
}

static int cmp_d(const void *a, const void *b) { return (*(const double *)a > *(const double *)b) - (*(const double *)a < *(const double *)b); }

/* seconds per operation: the best and the median of 20 batches of 200 */
static void mpi_probe(void) {
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    enum { BATCHES = 20, REPS = 200 };
    double ar[BATCHES], pp[BATCHES], x = 1, y = 0;
    for (int kind = 0; kind < 2; kind++)
        for (int b = 0; b < BATCHES; b++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            for (int i = 0; i < REPS; i++) {
                if (kind == 0) MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
                else if (rank == 0) MPI_Send(&x, 1, MPI_DOUBLE, 1, 0, MPI_COMM_WORLD), MPI_Recv(&y, 1, MPI_DOUBLE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                else if (rank == 1) MPI_Recv(&y, 1, MPI_DOUBLE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE), MPI_Send(&x, 1, MPI_DOUBLE, 0, 0, MPI_COMM_WORLD);
            }
            (kind == 0 ? ar : pp)[b] = (MPI_Wtime() - t0) / REPS / (kind == 0 ? 1 : 2);
        }
    qsort(ar, BATCHES, sizeof *ar, cmp_d), qsort(pp, BATCHES, sizeof *pp, cmp_d);
    if (rank == 0)
        printf("ranks %d allreduce_us best %.1f median %.1f message_us best %.1f median %.1f\n", n, ar[0] * 1e6,
               ar[BATCHES / 2] * 1e6, pp[0] * 1e6, pp[BATCHES / 2] * 1e6);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "mpi")) {
        MPI_Init(&argc, &argv);
        mpi_probe();
        MPI_Finalize();
        return 0;
    }
    double secs = argc > 1 ? atof(argv[1]) : 2;
    for (int t = 1; t <= 2; t++) {
        ds_threads_set(t);
        printf("sgemm_gflops_%dthread %.1f\n", t, ds_measure_peak_flops(secs) / 1e9);
    }
    ds_threads_set(1);
    printf("sgemm_gflops_1thread_cpu_time %.1f\n", sgemm_cpu_rate(1024, 10) / 1e9);
    const size_t n = (size_t)256 << 20;
    char *a = malloc(n), *b = malloc(n);
    if (!a || !b) return 1;
    memset(a, 1, n), memset(b, 2, n);
    double best = 0;
    for (int i = 0; i < 10; i++) {
        double t0 = thread_cpu();
        memcpy(b, a, n);
        double dt = thread_cpu() - t0;
        if (2.0 * n / dt > best) best = 2.0 * n / dt;
        a[i] = b[i + 1]; /* keep the copies */
    }
    printf("copy_gb_s_cpu_time %.1f\n", best / 1e9);
    printf("attn_gscores_s_1thread_cpu_time %.3f\n", attn_score_rate() / 1e9);
    free(a), free(b);
    return 0;
}
