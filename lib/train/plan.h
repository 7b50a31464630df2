/* plan.h — what a training run costs on a cluster before it runs (ds-pretrain --plan).
 *
 * Owns: the cluster description (the files in share/clusters/, docs/formats.md "Cluster files") and its
 * parser; the cost model of one optimizer step of a layout (PP x DP x EP, a pipeline schedule, micro-
 * batch, recomputation, FP8): memory per GPU, FLOPs per token and per stage, the time of F, B and W of
 * each pipeline chunk from a roofline of every op, the expert-parallel all-to-all (bytes per token,
 * node-limited routing, the two-hop path, time on IB and NVLink), and an event simulation of the
 * schedule (dist/pipesched.h: the functions the trainer executes) giving step time, bubble, exposed
 * communication, throughput, MFU and GPU-hours per trillion tokens; the search over layouts; the
 * plan as a JSON object, a text table and a PNG of the simulated timeline.
 * Model and its one calibrated assumption: docs/DESIGN.md "Planning at cluster scale".
 */
#ifndef DS_TRAIN_PLAN_H
#define DS_TRAIN_PLAN_H

#include "core/jsonw.h"
#include "core/strbuf.h"
#include "io/config.h"

/* One cluster: nodes of identical devices (GPUs, or the cores of a CPU seen as one device). */
typedef struct {
    char name[64];
    int nodes, gpus_per_node;
    double memory_bytes;   /* per device */
    double gemm_flops;     /* dense GEMM peak per device, FLOP/s, in gemm_dtype (BF16 tensor cores, fp32 sgemm) */
    double fp8_flops;      /* dense FP8 GEMM peak, FLOP/s (0: no FP8 GEMMs) */
    double hbm_bw;         /* device memory bandwidth, B/s */
    double nvlink_bw;      /* intra-node bandwidth per device and direction, B/s */
    double ib_bw;          /* inter-node bandwidth per device and direction, B/s (0 with one node) */
    double latency;        /* one point-to-point message, s */
    double attn_scores;    /* query-key scores per s the attention kernels sustain, forward and again backward
                              (0: attention on the GEMM roofline alone) */
    int sms, comm_sms;     /* streaming multiprocessors, and those given to communication (0 0: none) */
    double efficiency;     /* share of the roofline the kernels reach end to end: THE calibrated number */
    int elem_bytes;        /* 2 (bf16) or 4 (fp32): activations, weights and memory-bound traffic */
    int oversubscribe;     /* more ranks than devices allowed; they share a device's rates */
    int cores;             /* ranks a device runs at once, each at its rate / cores (a CPU's cores); default 1 */
} ds_cluster;

/* Parse a cluster file's text (`where` names it in messages: "<where>: <key>: <problem>"). */
int ds_cluster_parse(ds_cluster *c, const char *json, size_t len, const char *where);
int ds_cluster_load(ds_cluster *c, const char *path);

typedef enum { DS_RECOMPUTE_NONE = 0, DS_RECOMPUTE_V3 = 1, DS_RECOMPUTE_FULL = 2 } ds_recompute;
/* "none", "v3" (RMSNorm and the MLA up-projections, what the trainer does), "full" (the whole layer) */
int ds_recompute_parse(const char *s, ds_recompute *r);
const char *ds_recompute_name(ds_recompute r);

typedef struct {
    int pp, dp, ep;        /* dp 0: the cluster's devices / pp */
    int batch, micro_batch, seq_len; /* sequences per step (global), per micro-batch, tokens per sequence */
    int micro_batches;     /* per step and pipeline: 0 = batch / (dp x micro_batch), else it must be that */
    int schedule;          /* ds_pipe_kind */
    int fp8;               /* V3's FP8 recipe: FP8 Linear GEMMs and weights, FP8 activation caches, bf16 moments */
    int bf16_moments;
    int zero;              /* ZeRO-1: optimizer state sharded over the data-parallel ranks (1, the default) */
    int node_limit;        /* routing limited to topk_group nodes when the routing groups are the EP nodes (1);
                            * 0: every node (for the comparison) */
    int two_hop;           /* dispatch crosses IB once per node, then NVLink (1); 0: one copy per GPU over IB */
    ds_recompute recompute;
    const char *stages;    /* --stages "0-3,4-7,...", or NULL: the trainer's split by estimated cost */
} ds_plan_opts;
void ds_plan_opts_defaults(ds_plan_opts *o); /* V3's: pp 1, ep 1, micro-batch 1, ZeRO-1, two-hop, node limit, v3 */

typedef struct {
    double params, weights, grads, optimizer, activations, fp8_cache, a2a_buffers, workspace, total;
} ds_plan_mem;

typedef struct {
    double gemm, attn, mem, comm; /* seconds: Linear/head GEMMs, attention core, memory-bound ops, exposed a2a */
    double total;                 /* compute (gemm + attn + mem) + a2a when not hidden */
} ds_plan_time;

/* One pipeline stage, one micro-batch. */
typedef struct {
    int first, end;                     /* decoder layers [first, end); the last stage also runs head and MTP */
    double flops;                       /* F + B + W, executed */
    double f, b, w, a2a;                /* compute seconds of F, B, W; all-to-all seconds of F (B the same) */
    double params;                      /* held by one rank (routed experts / EP) */
    double act_bytes;                   /* kept for backward */
} ds_plan_stage;

typedef struct {
    ds_plan_opts o;
    ds_cluster cluster;
    int world, n_mb, ranks_per_device, ep_nodes, zero_group, expert_zero_group;
    int rank_share;                     /* a rank gets the device's rates / this */
    int layers_max;                     /* most decoder layers (MTP counted) on one stage */
    double tokens_per_mb;
    /* FLOPs */
    double flops_per_token;             /* docs/METRICS.md's count (MFU) */
    double flops_per_token_exec;        /* what the GPUs execute: causal attention, recomputation */
    double stage_flops_max;             /* per micro-batch, the heaviest stage, F+B+W, executed */
    /* per chunk of the heaviest stage, one micro-batch */
    double f, b, w, fb;                 /* what the schedule is simulated with */
    double f_compute, b_compute, w_compute;
    double a2a_f, a2a_b;                /* all-to-all time of F and of B (dispatch + combine) */
    double p2p;
    /* all-to-all per token and MoE layer, forward (backward moves the same) */
    double nodes_per_token, gpus_per_token, nodes_per_token_unlimited;
    double dispatch_ib_bytes, dispatch_nvlink_bytes, combine_ib_bytes, combine_nvlink_bytes;
    double dispatch_ib_bytes_one_hop, dispatch_ib_bytes_unlimited, combine_ib_bytes_unlimited;
    /* on the stage with the most MoE layers, one micro-batch's F: */
    int ratio_stage;
    double ratio_stage_f;               /* its compute */
    double a2a_ib_s, a2a_nvlink_s;      /* IB and NVLink busy time of its all-to-all */
    double a2a_f_unlimited;             /* its all-to-all without node-limited routing */
    double comm_compute_ratio;          /* all-to-all / compute */
    double comm_compute_ratio_unlimited;
    /* memory: the fullest rank */
    ds_plan_mem mem;
    int mem_rank, peak_act;
    int fits;
    /* time */
    double pipe_s, pipe_nocomm_s, dp_comm_s, optimizer_s, step_s;
    double bubble_s, bubble_fraction, exposed_comm_s;
    double tokens_per_s_per_gpu, mfu, gpu_hours_per_t;
    /* owned: the stages (pp of them; NULL in --search's results) and the simulated timeline (for the PNG) */
    ds_plan_stage *stages;
    void *sched, *sim;
} ds_plan;

/* Cost a layout (after checks: one-line usage errors naming the option). */
int ds_plan_run(ds_plan *p, const ds_config *cfg, const ds_cluster *c, const ds_plan_opts *o);
void ds_plan_free(ds_plan *p);

/* Every layout of the cluster's devices that fits (pp dividing the devices and at most the layers, ep
 * dividing dp and the experts, each schedule the micro-batches allow, micro-batch 1, 2, 4), best
 * (fewest GPU-hours) first. *out malloc'd; each entry's timeline freed. */
int ds_plan_search(const ds_config *cfg, const ds_cluster *c, const ds_plan_opts *base, ds_plan **out, int *n);

/* Training phases of one run (--phases SEQ:BATCH:STEPS,...: V3's context extension is 32768:1920:1000,
 * 131072:480:1000), each costed with the same layout options (or, with search, the phase's best layout):
 * GPU-hours = steps x step x devices used; `busy` leaves the pipeline bubble out (what a schedule with
 * no bubble would cost). */
typedef struct {
    int seq_len, batch, steps;
    ds_plan plan;                       /* its timeline freed */
    double gpu_hours, gpu_hours_busy;
} ds_plan_phase;
/* "SEQ:BATCH:STEPS[,...]", at most 16 phases: one-line usage errors naming the part. */
int ds_plan_phases_parse(const char *s, ds_plan_phase **out, int *n);
/* Plan every phase: o's layout with the phase's seq_len and batch (micro_batch 0: batch / dp, one
 * micro-batch per pipeline), or with search the best layout that fits (an error naming the phase when
 * none does). */
int ds_plan_phases_run(ds_plan_phase *ph, int n, const ds_config *cfg, const ds_cluster *c, const ds_plan_opts *o, int search);
void ds_plan_phases_jsonw(const ds_plan_phase *ph, int n, ds_jsonw *w);
void ds_plan_phases_table(const ds_plan_phase *ph, int n, ds_strbuf *out);

/* The plan as one JSON object (keys in docs/formats.md "Plans"), the table, the timeline PNG. */
void ds_plan_jsonw(const ds_plan *p, ds_jsonw *w);
void ds_plan_table(const ds_plan *p, ds_strbuf *out);
void ds_plan_search_table(const ds_plan *v, int n, int top, ds_strbuf *out);
int ds_plan_png(const ds_plan *p, const char *path);

#endif
