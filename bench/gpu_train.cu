/* bench/gpu_train — training throughput of the whole network on the CUDA backend: a DeepSeek-V3-shaped MoE
 * of about 1.2B parameters (bench/gpu_train_torch.py builds the same model in transformers), random tokens,
 * forward + backward + gradient norm + AdamW per step (one micro-batch), median step time over the timed
 * steps. Prints tokens/s and MFU with docs/METRICS.md's FLOPs per token (6 x activated parameters except
 * the input embedding + 6 L H T (d_qk + d_v)) against the H100 SXM's dense bf16 peak, 989 TFLOP/s.
 * Usage: gpu_train [batch] [seq] [steps] [gemm mode bf16|tf32|f32] [profile]
 *   profile: one more step through a timing wrapper of the op table (a device synchronize around every op;
 *   the shares, not the total, are what it measures), printed as a table.
 */
#include "gpu_test.h"

#include <algorithm>
#include <type_traits>
#include <vector>

extern "C" {
#include "model_fixture.h"
#include "adamw_cuda.h"
#include "core/log.h"
#include "model/model.h"
#include "ops_cuda.h"
}

#define TRY(x)                                                                                         \
    do {                                                                                               \
        if (x) {                                                                                       \
            fprintf(stderr, "gpu_train: %s: %s\n", #x, ds_errmsg());                                   \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

/* ---- op-table wrapper: time each op (synchronizing around it) -------------------------------------------- */
enum { MAXOPS = 64 };
static void *g_real[MAXOPS];
static const char *g_name[MAXOPS];
static double g_ms[MAXOPS];
static long g_calls[MAXOPS];

template <int ID, typename F> struct Shim;
template <int ID, typename R, typename... A> struct Shim<ID, R (*)(A...)> {
    static R call(A... a) {
        cudaDeviceSynchronize();
        double t0 = ds_now();
        R (*f)(A...) = (R(*)(A...))g_real[ID];
        if constexpr (std::is_void_v<R>) {
            f(a...);
            cudaDeviceSynchronize();
            g_ms[ID] += (ds_now() - t0) * 1e3;
            g_calls[ID]++;
        } else {
            R r = f(a...);
            cudaDeviceSynchronize();
            g_ms[ID] += (ds_now() - t0) * 1e3;
            g_calls[ID]++;
            return r;
        }
    }
};

static ds_ops timed_ops(const ds_ops *real) {
    ds_ops w = *real;
    int id = 0;
#define WRAP(member)                                                                                   \
    do {                                                                                               \
        constexpr int ID_ = __COUNTER__;                                                              \
        g_real[ID_ % MAXOPS] = (void *)real->member;                                                   \
        g_name[ID_ % MAXOPS] = #member;                                                                \
        w.member = &Shim<ID_ % MAXOPS, decltype(real->member)>::call;                                  \
        id++;                                                                                          \
    } while (0)
    WRAP(gemm); WRAP(gemm_rows); WRAP(gemm_wgrad); WRAP(add); WRAP(axpy); WRAP(scale); WRAP(copy2d);
    WRAP(rmsnorm_fwd); WRAP(rmsnorm_bwd); WRAP(rope_table); WRAP(rope); WRAP(attn_fwd); WRAP(attn_bwd);
    WRAP(swiglu_fwd); WRAP(swiglu_bwd); WRAP(embed_fwd); WRAP(embed_bwd); WRAP(logsoftmax_fwd);
    WRAP(logsoftmax_bwd); WRAP(router_scores); WRAP(moe_topk); WRAP(moe_topk_bwd); WRAP(moe_balance);
    WRAP(moe_bucket); WRAP(moe_gather); WRAP(moe_gather_bwd); WRAP(moe_combine); WRAP(moe_scale_rows);
    WRAP(moe_combine_bwd); WRAP(mla_kv_expand); WRAP(mla_kv_expand_bwd); WRAP(copy); WRAP(zero);
    if (real->gemm_rows_dev) WRAP(gemm_rows_dev); /* absent under DS_CUDA_GROUPED=0 */
    if (real->gemm_wgrad_dev) WRAP(gemm_wgrad_dev);
#undef WRAP
    (void)id;
    return w;
}

/* the ~1.2B MoE both benchmarks build (keep in step with gpu_train_torch.py) */
void bench_config(ds_config *c) {
    fixture_tiny(c);
    c->vocab_size = 32000;
    c->hidden_size = 1024;
    c->intermediate_size = 2816;
    c->moe_intermediate_size = 512;
    c->num_hidden_layers = 12;
    c->first_k_dense_replace = 1;
    c->num_attention_heads = 8;
    c->num_key_value_heads = 8;
    c->n_routed_experts = 64;
    c->n_shared_experts = 2;
    c->num_experts_per_tok = 6;
    c->n_group = 8;
    c->topk_group = 4;
    c->q_lora_rank = 384;
    c->kv_lora_rank = 256;
    c->qk_nope_head_dim = 64;
    c->qk_rope_head_dim = 32;
    c->v_head_dim = 64;
    c->max_position_embeddings = 4096;
    c->num_nextn_predict_layers = 0; /* transformers trains no MTP module */
}

int main(int argc, char **argv) {
    int B = argc > 1 ? atoi(argv[1]) : 8, T = argc > 2 ? atoi(argv[2]) : 1024, steps = argc > 3 ? atoi(argv[3]) : 5;
    const char *mode = argc > 4 ? argv[4] : "bf16";
    int profile = argc > 5 && !strcmp(argv[5], "profile");
    char why[256];
    if (!ds_cuda_device_count(why, sizeof why)) {
        printf("gpu_train: no GPU present (%s)\n", why);
        return 0;
    }
    const ds_ops *ops = ds_ops_cuda();
    if (!ops) TRY(1);
    static ds_ops wrapped;
    if (profile) {
        wrapped = timed_ops(ops);
        ops = &wrapped;
    }
    ds_ops_cuda_set_gemm(!strcmp(mode, "f32") ? DS_CUDA_GEMM_F32 : !strcmp(mode, "tf32") ? DS_CUDA_GEMM_TF32
                                                                                          : DS_CUDA_GEMM_BF16);
    ds_config c;
    bench_config(&c);
    ds_param_counts pc;
    ds_config_counts(&c, &pc);
    ds_model_opts mo;
    memset(&mo, 0, sizeof mo);
    mo.ops = ops; mo.max_batch = B; mo.max_seq = T; mo.train = 1; mo.recompute = 1;
    ds_model *m;
    TRY(ds_model_create(&m, &c, &mo));
    TRY(ds_model_init(m, 1));
    int n_info;
    const ds_param *info = ds_model_params_info(m, &n_info);
    std::vector<ds_cuda_adamw_seg> segs(n_info);
    for (int i = 0; i < n_info; i++)
        segs[i] = {info[i].offset, info[i].numel, info[i].kind != DS_PARAM_NORM};
    ds_cuda_adamw_opts ao = {0.9, 0.95, 1e-8, 0.1, 0};
    ds_cuda_adamw *opt;
    TRY(ds_cuda_adamw_create(&opt, &ao, ds_model_num_params(m), segs.data(), n_info));

    const int n = B * T;
    std::vector<int32_t> tok(n), tgt(n);
    ds_rng r;
    ds_rng_init(&r, 7, 1);
    for (int i = 0; i < n; i++) tok[i] = (int32_t)ds_rng_below(&r, c.vocab_size);
    for (int i = 0; i < n; i++) tgt[i] = (i + 1) % T ? tok[i + 1] : -1;
    std::vector<float> coef(n, -1.0f / (n - B));
    float *dcoef = (float *)ops->alloc(n * 4);
    ops->copy(dcoef, coef.data(), n * 4, DS_COPY_H2D);
    ds_batch b;
    memset(&b, 0, sizeof b);
    b.B = B; b.T = T; b.tokens = tok.data(); b.targets = tgt.data();

    std::vector<double> ms;
    double loss = 0;
    for (int s = 0; s < steps + 2; s++) {
        ops->sync();
        double t0 = ds_now();
        ds_fwd_out out;
        ds_model_zero_grad(m);
        TRY(ds_model_forward(m, &b, &out));
        TRY(ds_model_backward(m, &b, dcoef, NULL));
        double norm;
        TRY(ds_cuda_grad_norm(ds_model_grads(m), ds_model_num_params(m), &norm));
        float clip = norm > 1.0 ? (float)(1.0 / (norm + 1e-6)) : 1.0f;
        TRY(ds_cuda_adamw_step(opt, ds_model_params(m), ds_model_grads(m), clip, 3e-4, s + 1));
        ops->sync();
        TRY(ds_ops_cuda_status());
        double dt = (ds_now() - t0) * 1e3;
        if (s >= 2) ms.push_back(dt);
        std::vector<float> lp(n);
        ops->copy(lp.data(), out.logp, n * 4, DS_COPY_D2H);
        loss = 0;
        for (int i = 0; i < n; i++) loss -= lp[i];
        loss /= (n - B);
        fprintf(stderr, "gpu_train: step %d: %.1f ms, loss %.4f, grad norm %.3f\n", s + 1, dt, loss, norm);
    }
    if (profile) {
        double total = 0;
        for (int i = 0; i < MAXOPS; i++) total += g_ms[i];
        printf("profile (all %d steps, synchronized per op): %.1f ms in ops\n", steps + 2, total);
        for (int k = 0; k < MAXOPS; k++) {
            int best = -1;
            for (int i = 0; i < MAXOPS; i++)
                if (g_name[i] && g_calls[i] && (best < 0 || g_ms[i] > g_ms[best])) best = i;
            if (best < 0) break;
            printf("  %-18s %8.1f ms %5.1f%% %7ld calls\n", g_name[best], g_ms[best], 100 * g_ms[best] / total,
                   g_calls[best]);
            g_calls[best] = 0;
        }
    }
    std::sort(ms.begin(), ms.end());
    double step_ms = ms[ms.size() / 2], tok_s = n / (step_ms / 1e3);
    int L = c.num_hidden_layers, H = c.num_attention_heads;
    double flops_tok = 6.0 * (double)(pc.activated - pc.embedding) +
                       6.0 * L * H * (double)T * (ds_cfg_qk_head_dim(&c) + c.v_head_dim);
    double mfu = tok_s * flops_tok / 989e12;
    char tot[32], act[32];
    ds_param_count_str(pc.total, tot, sizeof tot);
    ds_param_count_str(pc.activated, act, sizeof act);
    printf("model\t%s total, %s activated, %d layers, %d experts top-%d\n", tot, act, L, c.n_routed_experts,
           c.num_experts_per_tok);
    printf("ours\tbatch %d x seq %d, gemm %s\tstep_ms %.1f\ttok_s %.0f\tmfu %.1f%%\tloss %.4f\n", B, T, mode, step_ms,
           tok_s, 100 * mfu, loss);
    printf("flops_per_token\t%.4g\n", flops_tok);
    ds_cuda_adamw_free(opt);
    ops->free(dcoef);
    ds_model_free(m);
    return 0;
}
