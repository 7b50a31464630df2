/* libFuzzer harness: cluster files (train/plan.h). Any input gives a clean one-line error or a cluster
 * whose every rate is positive and finite, and planning one rank of the tiny model on it gives finite,
 * non-negative times and memory. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "io/config.h"
#include "train/plan.h"

static const char TINY[] = "{\"hidden_size\": 64, \"intermediate_size\": 128, \"moe_intermediate_size\": 32, \"num_hidden_layers\": 2,"
                           " \"first_k_dense_replace\": 1, \"num_attention_heads\": 4, \"n_routed_experts\": 8, \"n_shared_experts\": 1,"
                           " \"num_experts_per_tok\": 2, \"n_group\": 4, \"topk_group\": 2, \"q_lora_rank\": 32, \"kv_lora_rank\": 32,"
                           " \"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 8, \"v_head_dim\": 16, \"vocab_size\": 512,"
                           " \"max_position_embeddings\": 512, \"num_nextn_predict_layers\": 1}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ds_config cfg;
    static int have;
    if (!have) {
        if (ds_config_parse(&cfg, TINY, strlen(TINY), "tiny")) abort();
        have = 1;
    }
    ds_cluster c;
    if (ds_cluster_parse(&c, (const char *)data, size, "fuzz")) {
        if (strchr(ds_errmsg(), '\n')) abort();
        return 0;
    }
    const double rates[] = {c.memory_bytes, c.gemm_flops, c.hbm_bw, c.nvlink_bw, c.efficiency};
    for (size_t i = 0; i < sizeof rates / sizeof *rates; i++)
        if (!(rates[i] > 0) || !isfinite(rates[i])) abort();
    if (c.nodes < 1 || c.gpus_per_node < 1 || c.efficiency > 1 || (c.elem_bytes != 2 && c.elem_bytes != 4)) abort();
    if (c.nodes > 1 && !(c.ib_bw > 0)) abort();
    ds_plan_opts o;
    ds_plan_opts_defaults(&o);
    o.dp = 1, o.batch = 2, o.micro_batch = 1, o.seq_len = 64, o.fp8 = c.fp8_flops > 0;
    ds_plan p;
    if (ds_plan_run(&p, &cfg, &c, &o)) return 0;
    const double out[] = {p.step_s, p.mem.total, p.tokens_per_s_per_gpu, p.bubble_s, p.f_compute, p.b_compute, p.w_compute};
    for (size_t i = 0; i < sizeof out / sizeof *out; i++)
        if (!(out[i] >= 0) || !isfinite(out[i])) abort();
    ds_plan_free(&p);
    return 0;
}
