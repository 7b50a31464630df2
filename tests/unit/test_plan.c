/* train/plan: the cluster file parser and the cost model against what DeepSeek published about V3's
 * training run (technical report, sections 3.1-3.3): 2048 H800 GPUs, PP16 DualPipe x EP64 over 8 nodes
 * x ZeRO-1 DP, FP8, node-limited routing to 4 nodes; 180K GPU-hours per trillion tokens; roughly 1:1
 * computation to cross-node communication. */
#include "dist/pipesched.h"
#include "io/config.h"
#include "core/err.h"
#include "model/model.h"
#include "tap.h"
#include "train/pipe.h"
#include "train/plan.h"

static const char *root(void) {
    const char *r = getenv("DS_ROOT");
    return r && *r ? r : ".";
}

static int load_cfg(ds_config *c, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/share/configs/%s", root(), name);
    return ds_config_load_file(c, path);
}

static int load_cluster(ds_cluster *c, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/share/clusters/%s", root(), name);
    return ds_cluster_load(c, path);
}

/* V3's layout as the command line gives it: --pp 16 --dp 128 --ep 64 --batch 15360 --seq-len 4096
 * --micro-batch 1 --schedule dualpipe --fp8 */
static ds_plan_opts v3_opts(void) {
    ds_plan_opts o;
    ds_plan_opts_defaults(&o);
    o.pp = 16, o.dp = 128, o.ep = 64, o.batch = 15360, o.seq_len = 4096, o.micro_batch = 1;
    o.schedule = DS_PIPE_DUALPIPE, o.fp8 = 1;
    return o;
}

static const char GOOD[] = "{\"name\": \"t\", \"nodes\": 2, \"gpus_per_node\": 8, \"memory_gb\": 80, \"gemm_dtype\": \"bf16\","
                           " \"gemm_tflops\": 989.4, \"fp8_tflops\": 1978.9, \"hbm_gb_s\": 3350, \"nvlink_gb_s\": 160,"
                           " \"ib_gb_s\": 50, \"latency_us\": 5, \"sms\": 132, \"comm_sms\": 20, \"efficiency\": 0.5}";

TEST(cluster_file_parses) {
    ds_cluster c;
    int rc = ds_cluster_parse(&c, GOOD, strlen(GOOD), "t.json");
    CHECK(rc == 0, "parses: %s", ds_errmsg());
    CHECK(c.nodes == 2 && c.gpus_per_node == 8 && c.elem_bytes == 2 && c.sms == 132 && c.comm_sms == 20, "integers");
    CHECK_REL(c.memory_bytes, 80e9, 1e-12, "memory_gb in 10^9 bytes");
    CHECK_REL(c.fp8_flops, 1978.9e12, 1e-12, "fp8_tflops");
    CHECK_REL(c.ib_bw, 50e9, 1e-12, "ib_gb_s");
    CHECK_REL(c.latency, 5e-6, 1e-12, "latency_us");
    for (const char *const *f = (const char *const[]){"h800-dsv3.json", "h100-sxm.json", "cpu-2core.json", NULL}; *f; f++) {
        rc = load_cluster(&c, *f);
        CHECK(rc == 0, "share/clusters/%s loads: %s", *f, ds_errmsg());
    }
}

/* One edit of GOOD and the message it must give. */
static void bad(const char *from, const char *to, const char *want) {
    char text[1024];
    const char *at = strstr(GOOD, from);
    if (!at) {
        CHECK(0, "test bug: %s not in GOOD", from);
        return;
    }
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - GOOD), GOOD, to, at + strlen(from));
    ds_cluster c;
    ds_err_clear();
    int rc = ds_cluster_parse(&c, text, strlen(text), "t.json");
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), want) && !strchr(ds_errmsg(), '\n'), "edit of %s: %s", from, ds_errmsg());
}

TEST(cluster_file_refusals) {
    bad("\"nodes\": 2, ", "", "cluster: nodes: missing: t.json");
    bad("\"memory_gb\": 80", "\"memory_gb\": -80", "cluster: memory_gb: -80 must be > 0: t.json");
    bad("\"gemm_tflops\": 989.4", "\"gemm_tflops\": 0", "cluster: gemm_tflops: 0 must be > 0");
    bad("\"hbm_gb_s\": 3350, ", "", "cluster: hbm_gb_s: missing");
    bad("\"ib_gb_s\": 50, ", "", "cluster: ib_gb_s: missing"); /* two nodes need a link between them */
    bad("\"latency_us\": 5", "\"latency_us\": -1", "cluster: latency_us: -1 must be >= 0");
    bad("\"gpus_per_node\": 8", "\"gpus_per_node\": 2.5", "cluster: gpus_per_node: expected an integer");
    bad("\"gpus_per_node\": 8", "\"gpus_per_node\": \"8\"", "cluster: gpus_per_node: expected a number");
    bad("\"efficiency\": 0.5", "\"efficiency\": 1.5", "cluster: efficiency: 1.5 is above 1");
    bad("\"efficiency\": 0.5", "\"efficiency\": 0.5, \"effciency\": 1", "cluster: effciency: unknown key");
    bad("\"gemm_dtype\": \"bf16\"", "\"gemm_dtype\": \"fp16\"", "cluster: gemm_dtype: expected \"bf16\" or \"fp32\"");
    bad("\"comm_sms\": 20", "\"comm_sms\": 132", "cluster: comm_sms: 132 leaves no SM of 132 to compute");
    bad("\"latency_us\": 5", "\"latency_us\": 5, \"attn_gscores_s\": 0", "cluster: attn_gscores_s: 0 must be > 0");
    bad("{", "[", "cluster: bad JSON");
    bad("\"name\": \"t\"", "\"name\": \"t\n\"", "cluster: bad JSON"); /* a raw newline inside a string: still one line */
    bad("\"nodes\"", "\"no\\ndes\": 1, \"nodes\"", "cluster: no?des: unknown key");
}

/* attn_gscores_s bounds the attention core by its scores: with a rate far below the GEMM and memory
 * rooflines, halving it adds exactly one more pass of the causal scores (B*H*T^2/2 per layer, MTP's
 * included) at the achieved rate to F and again to B, and nothing to W. */
TEST(attention_score_rate_bounds_the_attention_core) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "demo.json") || load_cluster(&cl, "cpu-2core.json")) {
        CHECK(0, "load: %s", ds_errmsg());
        return;
    }
    ds_plan_opts o;
    ds_plan_opts_defaults(&o);
    o.batch = 8, o.seq_len = 256, o.micro_batch = 8;
    ds_plan p1, p2;
    cl.attn_scores = 1e3; /* scores per second: the score bound dominates everything else */
    int rc = ds_plan_run(&p1, &cfg, &cl, &o);
    cl.attn_scores = 0.5e3;
    rc = rc ? rc : ds_plan_run(&p2, &cfg, &cl, &o);
    CHECK(rc == 0, "plan: %s", ds_errmsg());
    if (rc) {
        ds_config_free(&cfg);
        return;
    }
    const double layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers, T = 256;
    const double scores = 8.0 * cfg.num_attention_heads * T * T / 2 * layers;
    const double pass = scores / (1e3 * cl.efficiency); /* one process on the 2-core device: a share of 1 */
    CHECK_REL(p2.stages[0].f - p1.stages[0].f, pass, 1e-9, "F: one more pass of the scores");
    CHECK_REL(p2.stages[0].b - p1.stages[0].b, pass, 1e-9, "B: one more pass of the scores");
    CHECK_REL(p2.stages[0].w, p1.stages[0].w, 1e-12, "W has no attention");
    ds_plan_free(&p1), ds_plan_free(&p2);
    ds_config_free(&cfg);
}

/* DeepSeek-V3 on its own cluster and layout. The published figures: 180K H800 GPU-hours per trillion
 * tokens (2.664M for 14.8T); the fit in 80 GB without tensor parallelism. The one calibrated number is
 * h800-dsv3.json's efficiency (docs/DESIGN.md). */
TEST(v3_fits_and_costs_180k_gpu_hours_per_trillion_tokens) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "deepseek-v3-671b.json") || load_cluster(&cl, "h800-dsv3.json")) {
        CHECK(0, "load: %s", ds_errmsg());
        return;
    }
    ds_plan_opts o = v3_opts();
    ds_plan p;
    int rc = ds_plan_run(&p, &cfg, &cl, &o);
    CHECK(rc == 0, "plan: %s", ds_errmsg());
    if (rc) return;
    CHECK(p.world == 2048 && p.n_mb == 120 && p.ep_nodes == 8, "2048 GPUs, 120 micro-batches per step, EP over 8 nodes");
    CHECK(p.fits && p.mem.total <= 80e9, "fits in 80 GB: %.2f GB on rank %d", p.mem.total / 1e9, p.mem_rank);
    const double published = 180e3;
    CHECK(fabs(p.gpu_hours_per_t - published) <= 0.15 * published, "GPU-hours per 1T tokens %.0f vs V3's 180K (15%%)",
          p.gpu_hours_per_t);
    /* 2.664M GPU-hours for 14.8T tokens of pre-training */
    CHECK(fabs(p.gpu_hours_per_t * 14.8 - 2.664e6) <= 0.15 * 2.664e6, "pre-training %.3gM GPU-hours vs 2.664M",
          p.gpu_hours_per_t * 14.8 / 1e6);
    /* the parts add up: gradients fp32 for every parameter held, DualPipe holds two stages per rank */
    CHECK_REL(p.mem.grads, 4 * p.mem.params, 1e-12, "gradients = 4 bytes per parameter held");
    const double parts = p.mem.weights + p.mem.fp8_cache + p.mem.grads + p.mem.optimizer + p.mem.activations +
                         p.mem.workspace + p.mem.a2a_buffers;
    CHECK_REL(p.mem.total, parts, 1e-12, "total = sum of the parts");
    CHECK(p.peak_act == 17, "DualPipe holds PP+1 = 17 micro-batch chunks on the fullest rank: %d", p.peak_act);
    /* the stages are the trainer's (train/pipe.h), contiguous over the 61 layers; their FLOPs add up */
    int first[17];
    ds_pipe_split_layers(&cfg, 16, 4096, NULL, first);
    int same = 1;
    double fl = 0;
    for (int s = 0; s < 16; s++) {
        same &= p.stages[s].first == first[s] && p.stages[s].end == first[s + 1];
        fl += p.stages[s].flops;
    }
    CHECK(same && p.stages[15].end == 61, "stages as ds_pipe_split_layers cuts them");
    CHECK_REL(fl / 4096, p.flops_per_token_exec, 1e-9, "executed FLOPs per token = sum over the stages");
    /* throughput and MFU consistent with the GPU-hours */
    CHECK_REL(p.gpu_hours_per_t, 1e12 / p.tokens_per_s_per_gpu / 3600, 1e-12, "GPU-hours from tokens/s");
    CHECK_REL(p.step_s, 15360.0 * 4096 / 2048 / p.tokens_per_s_per_gpu, 1e-12, "step from tokens/s");
    CHECK(p.mfu > 0.2 && p.mfu < 0.6, "MFU %.3f (METRICS.md's count against dense BF16)", p.mfu);
    ds_plan_free(&p);
    ds_config_free(&cfg);
}

/* Parameters per stage come from the model's own table: summed over the stages (experts counted once
 * per EP rank) they are every trainable parameter, MTP included. */
TEST(stage_parameters_cover_the_model) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "deepseek-v3-671b.json") || load_cluster(&cl, "h800-dsv3.json")) return;
    ds_plan_opts o = v3_opts();
    o.schedule = DS_PIPE_1F1B, o.pp = 1, o.dp = 2048, o.ep = 1, o.batch = 2048 * 2;
    ds_plan p;
    int rc = ds_plan_run(&p, &cfg, &cl, &o);
    CHECK(rc == 0, "plan: %s", ds_errmsg());
    if (rc) return;
    ds_mem_plan mp;
    ds_model_opts mo = {.max_batch = 1, .max_seq = 16};
    rc = ds_model_plan(&cfg, &mo, &mp);
    CHECK(rc == 0, "ds_model_plan: %s", ds_errmsg());
    CHECK_REL(p.mem.params, (double)mp.n_params, 1e-12, "one stage, no EP: the whole model, MTP included");
    CHECK(!p.fits, "the whole 671B on one GPU does not fit (%.0f GB)", p.mem.total / 1e9);
    ds_plan_free(&p);
    ds_config_free(&cfg);
}

/* The bubble of the plan's schedule, from the costs it reports, against Table 2's closed forms: 1F1B's
 * (PP-1)(F+B) exactly; DualPipe's (PP/2-1)(F&B+B-3W) holds exactly where F equals B's input half (the
 * schedule's own tests), and within 2% at V3's chunk costs. The plan's own bubble adds the hand-overs
 * between stages (p2p), so it is at least the formula. */
TEST(bubbles_match_table2_at_the_plans_costs) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "deepseek-v3-671b.json") || load_cluster(&cl, "h800-dsv3.json")) return;
    for (int k = 0; k < 3; k += 2) {
        ds_plan_opts o = v3_opts();
        o.schedule = k;
        ds_plan p;
        if (ds_plan_run(&p, &cfg, &cl, &o)) {
            CHECK(0, "plan: %s", ds_errmsg());
            continue;
        }
        const double P = o.pp;
        const double want = k == DS_PIPE_1F1B ? (P - 1) * (p.f + p.b) : (P / 2 - 1) * (p.fb + p.b - 3 * p.w);
        ds_pipe_schedule s;
        ds_pipe_sim sim = {0};
        ds_pipe_costs c = {.f = p.f, .b = p.b, .w = p.w, .fb = p.fb, .p2p = 0};
        ds_pipe_schedule_make(&s, k, o.pp, p.n_mb);
        ds_pipe_simulate(&s, &c, &sim);
        const double got = ds_pipe_sim_max_bubble(&s, &sim);
        if (k == DS_PIPE_1F1B) CHECK_REL(got, want, 1e-9, "1F1B bubble = (PP-1)(F+B)");
        else CHECK_REL(got, want, 0.02, "DualPipe bubble = (PP/2-1)(F&B+B-3W)");
        CHECK(p.bubble_s >= got - 1e-9 && p.bubble_s <= got + 2 * P * (p.n_mb + P) * p.p2p, "%s: plan's bubble %.4g s >= %.4g s",
              ds_pipe_kind_name(k), p.bubble_s, got);
        CHECK(p.bubble_fraction > 0 && p.bubble_fraction < 0.2, "bubble fraction %.3f", p.bubble_fraction);
        ds_pipe_sim_free(&sim);
        ds_pipe_schedule_free(&s);
        ds_plan_free(&p);
    }
    ds_config_free(&cfg);
}

static double prod_ratio(int a, int b, int k) { /* C(a, k) / C(b, k) */
    double r = 1;
    for (int i = 0; i < k; i++) r *= (double)(a - i) / (b - i);
    return r;
}

/* Node-limited routing: 256 experts in 8 groups, one group per node of an EP64 group over 8 nodes, a
 * token's top-8 inside 4 groups. Uniformly over the allowed experts a node is reached with probability
 * 4/8 x (1 - C(96,8)/C(128,8)); without the limit 1 - C(224,8)/C(256,8). Then V3's ~1:1 computation to
 * cross-node communication per chunk, and more communication than computation without the limit. */
TEST(all_to_all_node_limited_routing_and_v3_ratio) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "deepseek-v3-671b.json") || load_cluster(&cl, "h800-dsv3.json")) return;
    ds_plan_opts o = v3_opts();
    ds_plan p;
    if (ds_plan_run(&p, &cfg, &cl, &o)) {
        CHECK(0, "plan: %s", ds_errmsg());
        return;
    }
    const double nodes = 8 * 0.5 * (1 - prod_ratio(96, 128, 8)), nodes_unl = 8 * (1 - prod_ratio(224, 256, 8));
    CHECK_REL(p.nodes_per_token, nodes, 1e-9, "nodes per token, limited to 4");
    CHECK_REL(p.nodes_per_token_unlimited, nodes_unl, 1e-9, "nodes per token, unlimited");
    CHECK(p.nodes_per_token <= 4, "at most M = 4 nodes: %.3f", p.nodes_per_token);
    /* two-hop: one FP8 row (7168 + a one-byte power-of-two scale per 128) per remote node; a node is the
     * token's own 1/8 of the time */
    const double row = 7168 * (1 + 1.0 / 128);
    CHECK_REL(p.dispatch_ib_bytes, nodes * 7 / 8 * row, 1e-9, "dispatch IB bytes per token, FP8");
    CHECK_REL(p.combine_ib_bytes, nodes * 7 / 8 * 7168 * 2, 1e-9, "combine IB bytes per token, BF16");
    CHECK(p.dispatch_ib_bytes_one_hop > 1.9 * p.dispatch_ib_bytes, "one-hop sends a copy per GPU: %.0f vs %.0f",
          p.dispatch_ib_bytes_one_hop, p.dispatch_ib_bytes);
    CHECK(p.comm_compute_ratio > 0.67 && p.comm_compute_ratio < 1.5, "cross-node all-to-all / computation per chunk %.2f (V3: ~1:1)",
          p.comm_compute_ratio);
    CHECK(p.comm_compute_ratio_unlimited > 1 && p.comm_compute_ratio_unlimited > 1.3 * p.comm_compute_ratio,
          "without node-limited routing %.2f exceeds the computation", p.comm_compute_ratio_unlimited);
    CHECK(p.exposed_comm_s < 0.15 * p.step_s, "DualPipe hides most of it: %.3g s exposed of %.3g", p.exposed_comm_s, p.step_s);
    ds_plan_free(&p);
    /* the same step under 1F1B, which overlaps nothing, exposes every all-to-all */
    o.schedule = DS_PIPE_1F1B;
    ds_plan q;
    if (!ds_plan_run(&q, &cfg, &cl, &o)) {
        CHECK(q.exposed_comm_s > 0.9 * q.n_mb * (q.a2a_f + q.a2a_b), "1F1B exposes %.3g s", q.exposed_comm_s);
        ds_plan_free(&q);
    }
    ds_config_free(&cfg);
}

/* Layouts the planner refuses, each in one line naming the numbers. */
TEST(layout_refusals) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "deepseek-v3-671b.json") || load_cluster(&cl, "h800-dsv3.json")) return;
    struct {
        int pp, dp, ep, batch, mb, sched;
        const char *want;
    } cases[] = {
        {16, 256, 4, 15360, 1, 2, "--pp 16 x --dp 256 = 4096 ranks: the cluster has 2048 devices"},
        {1, 12, 1, 15360, 1, 0, "--pp 1 x --dp 12 = 12 ranks: not whole nodes of 8 GPUs"},
        {3, 0, 1, 15360, 1, 0, "--pp 3 does not divide the cluster's 2048 devices"},
        {64, 32, 1, 15360, 1, 0, "--pp 64: more pipeline stages than the model's 61 layers"},
        {16, 128, 3, 15360, 1, 0, "ep"},
        {16, 128, 64, 15000, 1, 0, "--batch 15000 is not a multiple of --dp 128 x --micro-batch 1"},
        {16, 128, 64, 128 * 30, 1, 2, "DualPipe"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ds_plan_opts o = v3_opts();
        o.pp = cases[i].pp, o.dp = cases[i].dp, o.ep = cases[i].ep, o.batch = cases[i].batch, o.micro_batch = cases[i].mb;
        o.schedule = cases[i].sched;
        ds_plan p;
        ds_err_clear();
        int rc = ds_plan_run(&p, &cfg, &cl, &o);
        CHECK(rc == DS_EUSAGE && strstr(ds_errmsg(), cases[i].want) && !strchr(ds_errmsg(), '\n'), "case %zu: %s", i, ds_errmsg());
    }
    ds_cluster cpu;
    if (!load_cluster(&cpu, "cpu-2core.json")) {
        ds_plan_opts o = v3_opts();
        ds_plan p;
        ds_err_clear();
        int rc = ds_plan_run(&p, &cfg, &cpu, &o);
        CHECK(rc == DS_EUSAGE && strstr(ds_errmsg(), "--fp8: the cluster 'cpu-2core' has no fp8_tflops"), "%s", ds_errmsg());
    }
    ds_config_free(&cfg);
}

/* --search: every layout listed fits, best first, and V3's own layout is among them. */
TEST(search_ranks_layouts_that_fit) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "deepseek-v3-671b.json") || load_cluster(&cl, "h800-dsv3.json")) return;
    ds_plan_opts o = v3_opts();
    o.dp = 0;
    ds_plan *v = NULL;
    int n = 0;
    int rc = ds_plan_search(&cfg, &cl, &o, &v, &n);
    CHECK(rc == 0 && n > 0, "%d layouts fit", n);
    int sorted = 1, fit = 1, v3 = -1;
    for (int i = 0; i < n; i++) {
        fit &= v[i].fits && v[i].mem.total <= 80e9;
        if (i) sorted &= v[i].gpu_hours_per_t >= v[i - 1].gpu_hours_per_t;
        if (v[i].o.pp == 16 && v[i].o.ep == 64 && v[i].o.schedule == DS_PIPE_DUALPIPE && v[i].o.micro_batch == 1) v3 = i;
        CHECK(v[i].o.pp * v[i].o.dp == 2048, "layout %d uses the cluster", i);
        if (v[i].o.pp * v[i].o.dp != 2048) break;
    }
    CHECK(fit && sorted, "all fit, fewest GPU-hours first");
    CHECK(v3 >= 0, "V3's layout is among them (rank %d of %d)", v3 + 1, n);
    free(v);
    ds_config_free(&cfg);
}

/* This machine (cpu-2core.json: one device of two cores, shared by the ranks): data parallelism over 1, 2
 * and 4 ranks splits the same work over the same two cores, so the step stays the same but for the
 * gradient all-reduce; four pipeline stages on two cores run two at a time (bench/plan_small.sh measures
 * these: docs/BENCHMARKS.md). */
TEST(ranks_sharing_a_cpu) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "demo.json") || load_cluster(&cl, "cpu-2core.json")) return;
    double step[3];
    for (int i = 0; i < 3; i++) {
        ds_plan_opts o;
        ds_plan_opts_defaults(&o);
        o.dp = 1 << i, o.batch = 8, o.micro_batch = 8 >> i, o.seq_len = 256;
        ds_plan p;
        int rc = ds_plan_run(&p, &cfg, &cl, &o);
        CHECK(rc == 0 && p.ranks_per_device == 1 << i && p.rank_share == (i ? 2 : 1), "dp %d: %s", 1 << i, ds_errmsg());
        step[i] = rc ? 0 : p.step_s;
        if (!rc) ds_plan_free(&p);
    }
    CHECK(step[1] >= step[0] && step[1] < 1.05 * step[0], "2 ranks on 2 cores: %.4g s vs one rank %.4g s", step[1], step[0]);
    CHECK(step[2] >= step[0] && step[2] < 1.05 * step[0], "4 ranks on 2 cores: %.4g s vs one rank %.4g s", step[2], step[0]);
    ds_plan_opts o;
    ds_plan_opts_defaults(&o);
    o.pp = 4, o.dp = 1, o.batch = 8, o.micro_batch = 1, o.seq_len = 256, o.schedule = DS_PIPE_ZB1P;
    ds_plan p;
    if (!ds_plan_run(&p, &cfg, &cl, &o)) {
        /* at least the device's work; at most the pipeline run two stages at a time on their own cores (not
         * four ranks at a quarter of the device each, which would double it) */
        CHECK(p.step_s >= 0.95 * step[0] && p.step_s < 2 * step[0], "4 stages on 2 cores: %.4g s; the device's work %.4g s",
              p.step_s, step[0]);
        ds_plan_free(&p);
    }
    /* expert parallelism among ranks sharing the one node: the exchange is all shared memory */
    ds_plan_opts_defaults(&o);
    o.dp = 4, o.ep = 4, o.batch = 8, o.micro_batch = 2, o.seq_len = 256;
    if (!ds_plan_run(&p, &cfg, &cl, &o)) {
        CHECK(p.ep_nodes == 1 && p.dispatch_ib_bytes == 0 && p.dispatch_nvlink_bytes > 0 && isfinite(p.step_s) &&
                  p.step_s >= step[0],
              "EP 4 on one node: %d node(s), IB %g B, shared memory %g B per token, step %.4g s", p.ep_nodes,
              p.dispatch_ib_bytes, p.dispatch_nvlink_bytes, p.step_s);
        ds_plan_free(&p);
    } else {
        CHECK(0, "EP 4: %s", ds_errmsg());
    }
    ds_config_free(&cfg);
}

/* V3's context extension (report section 4.3; spec 11.3): two YaRN phases of 1000 steps, 32K x 1920 then
 * 128K x 480, 119K H800 GPU-hours. The report gives no layout: 480 sequences divide over at most 120 of
 * the 128 data-parallel pipelines of PP 16, so the check takes PP 16 x DP 120 (1920 GPUs), EP 8 (EP must
 * divide 120 and 256), ZB1P, full recomputation. The planner cannot reach the paper's figure with a layout
 * it models: a 128K sequence is one micro-batch, so phase 2 has 4 per pipeline of 16 stages (78% bubble),
 * and one 128K micro-batch does not fit in 80 GB; V3 must split sequences over GPUs (context parallelism),
 * which neither the trainer nor the planner does. Checked: the paper's figure against the bubble-free
 * cost (every stage busy: what splitting sequences would give) within 30%, and the gap of the modelled
 * layout (docs/DESIGN.md "Context extension"). */
TEST(v3_context_extension_119k_gpu_hours) {
    ds_config cfg;
    ds_cluster cl;
    if (load_cfg(&cfg, "deepseek-v3-671b.json") || load_cluster(&cl, "h800-dsv3.json")) {
        CHECK(0, "load: %s", ds_errmsg());
        return;
    }
    ds_plan_phase *ph = NULL;
    int n = 0;
    int rc = ds_plan_phases_parse("32768:1920:1000,131072:480:1000", &ph, &n);
    CHECK(rc == 0 && n == 2 && ph[1].seq_len == 131072 && ph[1].batch == 480 && ph[1].steps == 1000, "two phases parsed");
    if (rc) return;
    ds_plan_opts o = v3_opts();
    o.dp = 120, o.ep = 8, o.schedule = DS_PIPE_ZB1P, o.recompute = DS_RECOMPUTE_FULL;
    rc = ds_plan_phases_run(ph, n, &cfg, &cl, &o, 0);
    CHECK(rc == 0, "phases: %s", ds_errmsg());
    if (!rc) {
        const double published = 119e3;
        double tot = 0, busy = 0;
        for (int i = 0; i < n; i++) {
            const ds_plan *p = &ph[i].plan;
            CHECK(p->world == 1920 && p->o.seq_len == ph[i].seq_len && p->n_mb == (i ? 4 : 16), "phase %d: 1920 GPUs, %d micro-batches",
                  i + 1, p->n_mb);
            CHECK_REL(ph[i].gpu_hours, 1000 * p->step_s * 1920 / 3600, 1e-12, "GPU-hours = steps x step x GPUs");
            tot += ph[i].gpu_hours, busy += ph[i].gpu_hours_busy;
        }
        /* attention grows with the sequence: 4x the tokens' share of it per token in phase 2 */
        CHECK(ph[1].plan.flops_per_token_exec > 1.5 * ph[0].plan.flops_per_token_exec, "FLOPs per token %.3g at 128K vs %.3g at 32K",
              ph[1].plan.flops_per_token_exec, ph[0].plan.flops_per_token_exec);
        CHECK(fabs(busy - published) <= 0.30 * published, "bubble-free %.1fK GPU-hours vs V3's 119K (30%%)", busy / 1e3);
        CHECK(ph[1].plan.bubble_fraction > 0.7 && !ph[1].plan.fits && tot > 2 * published,
              "the modelled layout: phase 2 bubble %.0f%%, %.0f GB, %.0fK GPU-hours in all (the gap in docs/DESIGN.md)",
              100 * ph[1].plan.bubble_fraction, ph[1].plan.mem.total / 1e9, tot / 1e3);
    }
    free(ph);
    /* bad phase lists: one usage error naming the phase */
    static const char *const badv[] = {"", "32768:1920", "32768:1920:1000,", "32768:0:1000", "1:2:3,x", "4096:8:1junk", NULL};
    for (int i = 0; badv[i]; i++) {
        ph = NULL;
        rc = ds_plan_phases_parse(badv[i], &ph, &n);
        CHECK(rc == DS_EUSAGE && strstr(ds_errmsg(), "--phases") && !ph, "'%s' refused: %s", badv[i], ds_errmsg());
        ds_err_clear();
    }
    ds_config_free(&cfg);
}

TAP_MAIN()
