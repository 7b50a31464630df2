/* ds-bench-a2a — expert-parallel dispatch/combine benchmark over MPI (or NCCL between GPUs), in the manner of
 * nccl-tests. */
#include "core/cli.h"
#include "core/err.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "dist/a2a_bench.h"
#include "dist/dp.h"
#include "dist/nccl.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    int64_t minbytes, maxbytes;
    int factor, iters, warmup, check, json, two_hop;
    const char *mode, *backend, *dtype;
    ds_ep_bench_cfg ep;
} options;

static int elem_size(const char *dtype) { return !strcmp(dtype, "float") ? 4 : !strcmp(dtype, "bf16") ? 2 : 1; }

static void print_row_json(const char *kind, const char *algo, int64_t bytes, const ds_a2a_result *r, double ratio,
                           const ds_ep_bytes *sent) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "op", kind);
    ds_jsonw_kstr(&w, "impl", algo);
    ds_jsonw_kint(&w, "bytes", bytes);
    ds_jsonw_knum(&w, "time_us", r->time_us);
    ds_jsonw_knum(&w, "algbw_gbps", r->algbw);
    ds_jsonw_knum(&w, "busbw_gbps", r->busbw);
    ds_jsonw_kint(&w, "wrong", r->wrong);
    if (ratio > 0) ds_jsonw_knum(&w, "speedup_vs_mpi", ratio);
    if (sent) {
        ds_jsonw_kint(&w, "inter_node_bytes", sent->inter);
        ds_jsonw_kint(&w, "intra_node_bytes", sent->intra);
    }
    ds_jsonw_obj_end(&w);
    ds_jsonw_emit_line(&w, stdout, "<stdout>");
    ds_jsonw_free(&w);
}

static void wrong_str(char *b, size_t n, int64_t wrong) {
    if (wrong < 0) snprintf(b, n, "N/A");
    else snprintf(b, n, "%lld", (long long)wrong);
}

/* nccl-tests' closing lines: the elements that arrived wrong, and the bus bandwidth averaged over the
 * rows (ours: the implementation under test; MPI's on its own line, worded so that a script reading
 * "Avg bus bandwidth" finds one number). */
static void print_summary(int64_t wrong, double ours_busbw, double ref_busbw, int rows) {
    /* (ours is NCCL's exchange with --backend nccl; the reference stays MPI's, on host buffers) */
    printf("# Out of bounds values : %lld %s\n", (long long)wrong, wrong ? "FAILED" : "OK");
    printf("# Avg bus bandwidth    : %g \n", rows ? ours_busbw / rows : 0);
    printf("# MPI_Alltoallv avg bus bandwidth : %g \n#\n", rows ? ref_busbw / rows : 0);
}

/* nc: --backend nccl's communicator (ours = NCCL's grouped send/recv between GPU buffers), else NULL */
static int run_alltoall(const ds_comm *c, ds_nccl *nc, const options *o) {
    int es = elem_size(o->dtype);
    if (c->rank == 0 && !o->json) {
        printf("# all-to-all, %d ranks on %d node(s); ours = %s, ref = %s\n", c->size, c->n_nodes,
               nc ? "NCCL grouped ncclSend/ncclRecv between GPU buffers (one GPU per rank)" : "pairwise point-to-point",
               c->world ? "MPI_Alltoallv" : "the own block's host copy (one process without MPI)");
        printf("#%11s %12s %6s %6s %4s   %9s %7s %7s %6s   %9s %7s %7s %6s  %8s\n", "size", "count", "type", "redop",
               "root", "ours(us)", "algbw", "busbw", "#wrong", "mpi(us)", "algbw", "busbw", "#wrong", "speed-up");
        printf("#%11s %12s %6s %6s %4s   %9s %7s %7s %6s   %9s %7s %7s %6s  %8s\n", "(B)", "(elements)", "", "", "", "(us)",
               "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)", "", "");
    }
    int64_t total_wrong = 0;
    double sum_ours = 0, sum_ref = 0;
    int rows = 0;
    for (int64_t bytes = o->minbytes; bytes <= o->maxbytes; bytes *= o->factor) {
        ds_a2a_result ours, ref;
        if (nc) DS_TRY(ds_a2a_bench_uniform_nccl(c, nc, bytes, es, o->iters, o->warmup, o->check, &ours));
        else DS_TRY(ds_a2a_bench_uniform(c, DS_A2A_OURS, bytes, es, o->iters, o->warmup, o->check, &ours));
        DS_TRY(ds_a2a_bench_uniform(c, DS_A2A_MPI, bytes, es, o->iters, o->warmup, o->check, &ref));
        double ratio = ours.time_us > 0 ? ref.time_us / ours.time_us : 0;
        total_wrong += (ours.wrong > 0 ? ours.wrong : 0) + (ref.wrong > 0 ? ref.wrong : 0);
        sum_ours += ours.busbw, sum_ref += ref.busbw, rows++;
        if (c->rank == 0) {
            if (o->json) {
                print_row_json("alltoall", nc ? "nccl" : "ours", bytes, &ours, ratio, NULL);
                print_row_json("alltoall", "mpi", bytes, &ref, 0, NULL);
            } else {
                char w1[24], w2[24];
                wrong_str(w1, sizeof w1, ours.wrong);
                wrong_str(w2, sizeof w2, ref.wrong);
                printf("%12lld %12lld %6s %6s %4d   %9.1f %7.2f %7.2f %6s   %9.1f %7.2f %7.2f %6s  %7.2fx\n",
                       (long long)bytes, (long long)(bytes / es), o->dtype, "none", -1, ours.time_us, ours.algbw,
                       ours.busbw, w1, ref.time_us, ref.algbw, ref.busbw, w2, ratio);
            }
            fflush(stdout);
        }
        if (o->factor <= 1) break;
    }
    if (c->rank == 0 && !o->json) print_summary(total_wrong, sum_ours, sum_ref, rows);
    if (total_wrong) return ds_fail(DS_ERR, "%lld wrong elements received", (long long)total_wrong);
    return 0;
}

/* --two-hop: one row per exchange and transport (ours one hop, ours two hops, MPI_Alltoallv one hop) with
 * the bytes each sends inside and across nodes, summed over the ranks. */
static void print_two_hop(const ds_comm *c, const ds_ep_bench_cfg *cfg, const ds_ep_bench_result *res[3], const char *dtype) {
    static const char *impl[3] = {"one-hop", "two-hop", "mpi"};
    printf("# expert-parallel dispatch/combine, one hop vs two hops: %d ranks on %d node(s) of %d, %d tokens/rank, "
           "hidden %d, top-%d of %d experts, node limit %d, dispatch %s / combine float\n",
           c->size, res[0]->n_nodes, c->size / res[0]->n_nodes, cfg->tokens, cfg->hidden, cfg->topk, cfg->experts,
           cfg->node_limit, dtype);
    printf("# destination ranks per token: %.2f, destination nodes per token: %.2f\n", res[0]->rows_per_token,
           res[0]->nodes_per_token);
    printf("#%9s %9s %10s %8s %8s %7s %14s %14s\n", "op", "transport", "time", "algbw", "busbw", "#wrong", "inter-node",
           "intra-node");
    printf("#%9s %9s %10s %8s %8s %7s %14s %14s\n", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(B, all ranks)",
           "(B, all ranks)");
    for (int op = 0; op < 2; op++)
        for (int i = 0; i < 3; i++) {
            const ds_a2a_result *r = op ? &res[i]->combine : &res[i]->dispatch;
            const ds_ep_bytes *b = op ? &res[i]->combine_bytes : &res[i]->dispatch_bytes;
            char w[24];
            wrong_str(w, sizeof w, r->wrong);
            printf("%10s %9s %10.1f %8.2f %8.2f %7s %14lld %14lld\n", op ? "combine" : "dispatch", impl[i], r->time_us,
                   r->algbw, r->busbw, w, (long long)b->inter, (long long)b->intra);
        }
    const ds_ep_bytes *d1 = &res[0]->dispatch_bytes, *d2 = &res[1]->dispatch_bytes;
    printf("# inter-node bytes, two-hop / one-hop: %.3f (%lld / %lld per dispatch, the same per combine)\n",
           d1->inter ? (double)d2->inter / (double)d1->inter : 1.0, (long long)d2->inter, (long long)d1->inter);
    printf("# one-hop avg bus bandwidth : %g \n", (res[0]->dispatch.busbw + res[0]->combine.busbw) / 2);
}

static int run_ep(const ds_comm *c, const options *o) {
    ds_ep_bench_cfg cfg = o->ep;
    cfg.elem_bytes = elem_size(o->dtype);
    ds_ep_bench_result ours, ref, two;
    DS_TRY(ds_ep_bench(c, DS_A2A_OURS, &cfg, o->iters, o->warmup, o->check, &ours));
    DS_TRY(ds_ep_bench(c, DS_A2A_MPI, &cfg, o->iters, o->warmup, o->check, &ref));
    if (o->two_hop) {
        ds_ep_bench_cfg cfg2 = cfg;
        cfg2.transport = DS_EP_TWO_HOP;
        DS_TRY(ds_ep_bench(c, DS_A2A_OURS, &cfg2, o->iters, o->warmup, o->check, &two));
    }
    int64_t wrong = 0;
    for (int i = 0; i < 2 + o->two_hop; i++) {
        const ds_ep_bench_result *r = i == 0 ? &ours : i == 1 ? &ref : &two;
        wrong += (r->dispatch.wrong > 0 ? r->dispatch.wrong : 0) + (r->combine.wrong > 0 ? r->combine.wrong : 0);
    }
    if (c->rank == 0) {
        int64_t bytes = (int64_t)cfg.tokens * cfg.hidden * cfg.elem_bytes;
        if (o->json) {
            const ds_ep_bench_result *res[3] = {&ours, &two, &ref};
            static const char *impl[3] = {"ours", "two-hop", "mpi"};
            for (int op = 0; op < 2; op++)
                for (int i = 0; i < 3; i++) {
                    if (i == 1 && !o->two_hop) continue;
                    const ds_a2a_result *r = op ? &res[i]->combine : &res[i]->dispatch;
                    double mpi_us = op ? ref.combine.time_us : ref.dispatch.time_us;
                    print_row_json(op ? "combine" : "dispatch", impl[i], bytes, r, i < 2 ? mpi_us / r->time_us : 0,
                                   op ? &res[i]->combine_bytes : &res[i]->dispatch_bytes);
                }
        } else if (o->two_hop) {
            const ds_ep_bench_result *res[3] = {&ours, &two, &ref};
            print_two_hop(c, &cfg, res, o->dtype);
            print_summary(wrong, two.dispatch.busbw + two.combine.busbw, ref.dispatch.busbw + ref.combine.busbw, 2);
        } else {
            printf("# expert-parallel dispatch/combine: %d ranks on %d node(s), %d tokens/rank, hidden %d, top-%d of "
                   "%d experts, node limit %d, dispatch %s / combine float\n",
                   c->size, ours.n_nodes, cfg.tokens, cfg.hidden, cfg.topk, cfg.experts, cfg.node_limit, o->dtype);
            printf("# destinations per token (after per-rank de-duplication): %.2f\n", ours.rows_per_token);
            printf("#%9s %10s %8s %8s %7s   %10s %8s %8s %7s  %8s\n", "op", "ours(us)", "algbw", "busbw", "#wrong",
                   "mpi(us)", "algbw", "busbw", "#wrong", "speed-up");
            printf("#%9s %10s %8s %8s %7s   %10s %8s %8s %7s  %8s\n", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)",
                   "(GB/s)", "", "");
            const ds_a2a_result *a[2][2] = {{&ours.dispatch, &ref.dispatch}, {&ours.combine, &ref.combine}};
            const char *names[2] = {"dispatch", "combine"};
            for (int i = 0; i < 2; i++) {
                char w1[24], w2[24];
                wrong_str(w1, sizeof w1, a[i][0]->wrong);
                wrong_str(w2, sizeof w2, a[i][1]->wrong);
                printf("%10s %10.1f %8.2f %8.2f %7s   %10.1f %8.2f %8.2f %7s  %7.2fx\n", names[i], a[i][0]->time_us,
                       a[i][0]->algbw, a[i][0]->busbw, w1, a[i][1]->time_us, a[i][1]->algbw, a[i][1]->busbw, w2,
                       a[i][1]->time_us / a[i][0]->time_us);
            }
            print_summary(wrong, a[0][0]->busbw + a[1][0]->busbw, a[0][1]->busbw + a[1][1]->busbw, 2);
        }
    }
    if (wrong)
        return ds_fail(DS_ERR, "combine(dispatch(x)) differs from the reference in %lld elements", (long long)wrong);
    return 0;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-bench-a2a");
    options o = {.minbytes = 1024, .maxbytes = 16 << 20, .factor = 4, .iters = 20, .warmup = 5, .check = 1,
                 .mode = "alltoall", .backend = "mpi", .dtype = "float",
                 .ep = {.tokens = 512, .hidden = 1024, .topk = 8, .experts = 64, .node_limit = 0, .seed = 1}};
    uint64_t seed = 1;
    const ds_opt opts[] = {
        {"mode", 0, DS_OPT_CHOICE, &o.mode, "MODE", "alltoall: size sweep; ep: routed dispatch/combine", "alltoall|ep"},
        {"backend", 0, DS_OPT_CHOICE, &o.backend, "NAME", "transport (nccl: GPU buffers, one GPU per rank; alltoall mode)", "mpi|nccl|verbs"},
        {"minbytes", 'b', DS_OPT_BYTES, &o.minbytes, "SIZE", "smallest size per rank (K/M/G = 1024^n)", .min = 1, .max = 1e15},
        {"maxbytes", 'e', DS_OPT_BYTES, &o.maxbytes, "SIZE", "largest size per rank", .min = 1, .max = 1e15},
        {"stepfactor", 'f', DS_OPT_INT, &o.factor, "F", "multiply the size by F each step", .min = 1, .max = 1024},
        {"iters", 'n', DS_OPT_INT, &o.iters, "N", "timed iterations per size", .min = 1, .max = 1e7},
        {"warmup_iters", 'w', DS_OPT_INT, &o.warmup, "N", "untimed warm-up iterations", .min = 0, .max = 1e7},
        {"check", 'c', DS_OPT_INT, &o.check, "0|1", "check every received element", .min = 0, .max = 1},
        {"dtype", 'd', DS_OPT_CHOICE, &o.dtype, "TYPE", "element type (sets count = size / element size)", "float|bf16|fp8"},
        {"tokens", 0, DS_OPT_INT, &o.ep.tokens, "N", "ep: tokens per rank", .min = 1, .max = 1e7},
        {"hidden", 0, DS_OPT_INT, &o.ep.hidden, "D", "ep: hidden size", .min = 1, .max = 1e6},
        {"topk", 0, DS_OPT_INT, &o.ep.topk, "K", "ep: experts per token", .min = 1, .max = 64},
        {"experts", 0, DS_OPT_INT, &o.ep.experts, "E", "ep: routed experts (a multiple of the ranks)", .min = 1, .max = 1e6},
        {"node-limit", 0, DS_OPT_INT, &o.ep.node_limit, "M", "ep: nodes a token may reach (0 = off)", .min = 0, .max = 1e6},
        {"ranks-per-node", 0, DS_OPT_INT, &o.ep.ranks_per_node, "K",
         "ep: consecutive ranks per node (default: the hosts; on one host it emulates nodes)", .min = 1, .max = 1e6},
        {"two-hop", 0, DS_OPT_FLAG, &o.two_hop, NULL,
         "ep (implied): also run the two-hop exchange (across nodes to the same local rank, then inside the node) and "
         "report the bytes inside and across nodes"},
        {"seed", 0, DS_OPT_U64, &seed, "S", "routing and data seed (fixed by default: runs compare)"},
        {"json", 0, DS_OPT_FLAG, &o.json, NULL, "one JSON object per result on stdout"},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-bench-a2a",
        .usage = "[OPTIONS]   (launch with mpirun -np N)",
        .summary = "Measures all-to-all exchange (a size sweep in the manner of nccl-tests) and expert-parallel\n"
                   "dispatch/combine with routed tokens, our implementation against MPI_Alltoallv in the same run.\n"
                   "Bandwidth: algbw = bytes a rank sends / time; busbw = algbw * (n-1)/n (docs/METRICS.md); for the\n"
                   "two-hop exchange the bytes are the one-hop rows' (the payload delivered), so the rows compare.\n"
                   "--backend nccl: the sweep between GPU buffers over NCCL, one GPU per rank (mpirun -np <GPUs>; one\n"
                   "process without mpirun is a world of one and needs no MPI), against MPI_Alltoallv on host buffers.",
        .example = "  mpirun -np 4 ds-bench-a2a -b 1K -e 64M -f 4\n"
                   "  mpirun -np 4 ds-bench-a2a --mode ep --tokens 4096 --hidden 7168 --topk 8 --experts 256 -d bf16\n"
                   "  mpirun -np 4 ds-bench-a2a --two-hop --ranks-per-node 2 --tokens 4096 --hidden 7168 --topk 8 --experts 64 -d bf16",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (first < argc) return ds_usage_error("unexpected argument '%s'", argv[first]);
    if (o.minbytes > o.maxbytes)
        return ds_usage_error("%s is larger than %s", ds_cli_opt(&o.minbytes, "--minbytes"), ds_cli_opt(&o.maxbytes, "--maxbytes"));
    o.ep.seed = seed;
    if (o.two_hop) {
        if (ds_cli_given(&o.mode) && strcmp(o.mode, "ep"))
            return ds_usage_error("--two-hop measures the expert-parallel exchange: not with --mode %s", o.mode);
        o.mode = "ep";
    }
    if (ds_dist_check_launch()) return ds_tool_report(DS_EUSAGE);
    const int nccl = !strcmp(o.backend, "nccl");
    if (!strcmp(o.backend, "verbs")) {
        /* verbs needs an RDMA device, which this build's test setting lacks: refused plainly, not faked */
        ds_fail(DS_ERR, "backend '%s' is not available in this build: --backend", o.backend);
        ds_hint("use --backend mpi (or nccl between GPUs); the verbs transport is planned (docs/DESIGN.md)");
        return ds_tool_report(DS_ERR);
    }
    if (nccl && !strcmp(o.mode, "ep"))
        return ds_usage_error("--backend nccl measures the all-to-all sweep: the routed exchange (--mode ep) runs over MPI only");
    if (nccl && ds_nccl_require("--backend nccl")) return ds_tool_report(DS_EUSAGE);
    ds_comm comm;
    /* one GPU without a launcher: no MPI at all (a GPU machine may have none installed) */
    const int solo = nccl && !ds_dist_launched();
    if (solo) ds_comm_init_solo(&comm);
    else rc = ds_comm_init(&comm, &argc, &argv);
    if (!solo && rc) return ds_tool_report(rc);
    ds_log_set_prefix(ds_comm_prefix(&comm));
    ds_nccl *nc = NULL;
    if (nccl) { /* one GPU per rank: the host's local rank picks it */
        rc = ds_nccl_select_device(&comm, NULL);
        rc = ds_comm_agree(&comm, rc);
        if (!rc) rc = ds_comm_agree(&comm, ds_nccl_create(&nc, &comm, NULL));
    }
    if (!rc) rc = !strcmp(o.mode, "ep") ? run_ep(&comm, &o) : run_alltoall(&comm, nc, &o);
    int failed_alone = rc != 0;
    rc = ds_comm_agree(&comm, rc); /* every rank checks the same things: one of them reports */
    ds_tool_report(rc);
    if (nc && failed_alone) ds_nccl_abort(nc); /* never wait for peers that may be gone */
    else ds_nccl_free(nc);
    ds_comm_finalize(&comm);
    return rc;
}
