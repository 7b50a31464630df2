/* prof.h — where a training step's time goes (--profile): per op kind, per region of the step (layer
 * kinds, data, loss, optimizer), and the FLOPs and rate of each GEMM class.
 *
 * Owns: the process-wide profile. Two halves:
 *  - A backend table wrapped around another (ds_prof_ops, like ops/bf16.h): every op call is timed (wall
 *    clock, synchronised on a device backend) and counted under its kind; GEMMs also count 2·M·N·K FLOPs
 *    under the region they run in, which names their class (attention projections, routed experts, ...).
 *  - Regions: callers mark what part of the step runs (ds_prof_enter / ds_prof_leave, nested). Each
 *    region gets its exclusive wall time, so the regions of a step add up to the step.
 * Every wall time has a process CPU time beside it (all threads together): on a shared machine wall time
 * also counts the waits for a core, CPU time only the work, so FLOPs per CPU-second stay comparable
 * between runs at different loads, and CPU time / (wall time x threads) says how busy the threads were.
 * Off (the default) costs one test of a global flag per region mark and nothing per op: the model gets
 * the plain table. Not thread-safe: the ops are called from one host thread (OpenMP runs inside them).
 */
#ifndef DS_OPS_PROF_H
#define DS_OPS_PROF_H

#include <stdint.h>

struct ds_ops;

/* Regions of a training step. A GEMM's class is the region it runs in. */
typedef enum {
    DS_PROF_OTHER = 0, /* inside the step, outside every named region (batch staging, bookkeeping) */
    DS_PROF_DATA,      /* fetching the step's rows */
    DS_PROF_EMBED,     /* embedding lookup and its gradient */
    DS_PROF_ATTN,      /* attention block: norm, MLA projections, attention, output projection, residual */
    DS_PROF_DENSE,     /* dense FFN block: norm, SwiGLU MLP, residual */
    DS_PROF_MOE,       /* MoE block outside the three below: norm, residual, zeroing */
    DS_PROF_ROUTER,    /* router GEMM, scores, top-k, balance loss and their backward */
    DS_PROF_SHARED,    /* shared experts */
    DS_PROF_EXPERTS,   /* routed experts: bucket, gather, grouped GEMMs, SwiGLU, combine (and an EP exchange) */
    DS_PROF_HEAD,      /* final norm, output head, log-softmax */
    DS_PROF_MTP,       /* MTP modules' own parts: embedding, enorm/hnorm, eh_proj (their layer and head count above) */
    DS_PROF_LOSS,      /* the trainer's loss terms from the log-probs */
    DS_PROF_OPTIM,     /* zeroing gradients, reductions, gradient norm, AdamW, bias update */
    DS_PROF_NREGION
} ds_prof_region;

/* Op kinds (one per ds_ops entry that does work). */
typedef enum {
    DS_PROF_OP_GEMM = 0, DS_PROF_OP_GEMM_ROWS, DS_PROF_OP_GEMM_WGRAD, DS_PROF_OP_COPY, DS_PROF_OP_ZERO,
    DS_PROF_OP_ADD, DS_PROF_OP_AXPY, DS_PROF_OP_SCALE, DS_PROF_OP_COPY2D, DS_PROF_OP_RMSNORM_FWD,
    DS_PROF_OP_RMSNORM_BWD, DS_PROF_OP_ROPE_TABLE, DS_PROF_OP_ROPE, DS_PROF_OP_ATTN_FWD, DS_PROF_OP_ATTN_BWD,
    DS_PROF_OP_SWIGLU_FWD, DS_PROF_OP_SWIGLU_BWD, DS_PROF_OP_EMBED_FWD, DS_PROF_OP_EMBED_BWD,
    DS_PROF_OP_LOGSOFTMAX_FWD, DS_PROF_OP_LOGSOFTMAX_BWD, DS_PROF_OP_ROUTER_SCORES, DS_PROF_OP_MOE_TOPK,
    DS_PROF_OP_MOE_TOPK_BWD, DS_PROF_OP_MOE_BALANCE, DS_PROF_OP_MOE_BUCKET, DS_PROF_OP_MOE_GATHER,
    DS_PROF_OP_MOE_GATHER_BWD, DS_PROF_OP_MOE_COMBINE, DS_PROF_OP_MOE_SCALE_ROWS, DS_PROF_OP_MOE_COMBINE_BWD,
    DS_PROF_OP_MLA_KV_EXPAND, DS_PROF_OP_MLA_KV_EXPAND_BWD,
    DS_PROF_OP_MOE_FFN_FWD, DS_PROF_OP_MOE_FFN_BWD, /* the fused expert FFN: its GEMMs' FLOPs, and all of its
                                                      * time (SwiGLU and the combine's backward inside) as GEMM time */
    DS_PROF_NOP
} ds_prof_op;

/* What the profile holds (sums over the profiled steps; seconds). */
typedef struct {
    int64_t steps;
    double step_s;                      /* the caller's measure of the steps (ds_prof_step_end) */
    double step_cpu_s;                  /* process CPU time between ds_prof_step_begin and _end */
    double region_s[DS_PROF_NREGION];   /* exclusive wall time per region: they sum to the profiler's step time */
    double region_cpu_s[DS_PROF_NREGION]; /* ... and process CPU time (they sum to step_cpu_s) */
    double op_s[DS_PROF_NOP];           /* time inside ops of each kind */
    double op_cpu_s[DS_PROF_NOP];
    int64_t op_calls[DS_PROF_NOP];
    double gemm_s[DS_PROF_NREGION];     /* GEMM time (gemm, gemm_rows, gemm_wgrad) per class (region) */
    double gemm_cpu_s[DS_PROF_NREGION];
    double gemm_flop[DS_PROF_NREGION];  /* 2·M·N·K of every GEMM in the class ... */
    double gemm_flop_rc[DS_PROF_NREGION]; /* ... of which in recomputation (not in the model FLOPs count) */
} ds_prof_stats;

extern int ds_prof_on; /* a step is being profiled (read by the inline marks) */

int ds_prof_enter_(ds_prof_region r);
void ds_prof_leave_(int prev);
int ds_prof_recompute_(int on);

/* Mark the start of region r; returns what ds_prof_leave needs to restore the enclosing one. */
static inline int ds_prof_enter(ds_prof_region r) { return ds_prof_on ? ds_prof_enter_(r) : 0; }
static inline void ds_prof_leave(int prev) {
    if (ds_prof_on) ds_prof_leave_(prev);
}
/* GEMMs until the matching call with the returned value are recomputation (recompute on/off). */
static inline int ds_prof_recompute(int on) { return ds_prof_on ? ds_prof_recompute_(on) : 0; }

/* The timing table around `base` (process-wide: one base at a time; the table lives until exit). */
const struct ds_ops *ds_prof_ops(const struct ds_ops *base);
/* The same for a second table that only supplies GEMMs (the model's Linear table, e.g. --fp8's): its
 * gemm, gemm_rows and gemm_wgrad are timed, everything else is the base's. */
const struct ds_ops *ds_prof_linear_ops(const struct ds_ops *base);
/* The same for a second Linear table (o_proj's beside the others when the attention output is kept in E5M6). */
const struct ds_ops *ds_prof_linear_ops2(const struct ds_ops *base);

/* A step: begin starts the clock in region OTHER; end stops it and adds step_s (the caller's own measure
 * of the same step) to the totals. Outside begin/end nothing is counted. */
void ds_prof_step_begin(void);
void ds_prof_step_end(double step_s);

void ds_prof_get(ds_prof_stats *out);
void ds_prof_reset(void);

const char *ds_prof_region_name(ds_prof_region r);
const char *ds_prof_region_key(ds_prof_region r); /* short, for JSON: "attn", "experts", ... */
/* The GEMM class a region's GEMMs make up ("attention projections", ...); NULL for regions without GEMMs. */
const char *ds_prof_gemm_class(ds_prof_region r);
const char *ds_prof_op_name(ds_prof_op k);

#endif
