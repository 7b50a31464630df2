/* GPU test: one training step of the whole network (lib/model) on the CUDA backend against the same step
 * on the CPU backend: same weights (generated on the CPU, copied to the GPU), same batch, same loss
 * coefficients. Compared: per-token log-probabilities (main head and MTP), the balance loss, the expert
 * loads (identical integers: routing must pick the same experts) and every parameter gradient. With exact
 * fp32 GEMMs the two backends differ only by summation order; with bf16 GEMMs by bf16 rounding. */
#include "gpu_test.h"

#include <vector>

extern "C" {
#include "model_fixture.h"
#include "model/model.h"
#include "ops/ops.h"
#include "ops_cuda.h"
}

struct StepOut {
    std::vector<float> logp, mtp, grads;
    std::vector<int32_t> load;
    double bal = 0;
};

static void down(const ds_ops *o, float *dst, const float *src, size_t n) {
    o->sync();
    o->copy(dst, src, n * sizeof(float), o == ds_ops_cpu() ? DS_COPY_D2D : DS_COPY_D2H);
}

/* weights: ds_model_init, then everything scaled up so that the nonlinearities matter, norm gains and
 * expert biases randomized; generated once on the CPU and copied to every model */
static std::vector<float> g_w;
static std::vector<std::vector<float>> g_bias;
static std::vector<int32_t> g_len; /* rows' lengths (padding after them), or empty: no padding */

static int step(const ds_ops *ops, const ds_config *c, int B, int T, StepOut *o) {
    ds_model_opts mo;
    memset(&mo, 0, sizeof mo);
    mo.ops = ops; mo.max_batch = B; mo.max_seq = T; mo.train = 1; mo.recompute = 1; mo.balance_alpha = 0.01;
    ds_model *m = NULL;
    if (ds_model_create(&m, c, &mo)) return 1;
    size_t np = ds_model_num_params(m);
    int L = c->num_hidden_layers + c->num_nextn_predict_layers;
    if (g_w.empty()) { /* the reference weights, from the CPU model */
        ds_model_init(m, gpu_test_seed);
        g_w.resize(np);
        down(ops, g_w.data(), ds_model_params(m), np);
        int n_info;
        const ds_param *pi = ds_model_params_info(m, &n_info);
        for (int i = 0; i < n_info; i++) {
            float *x = g_w.data() + pi[i].offset;
            if (pi[i].kind == DS_PARAM_NORM)
                for (size_t j = 0; j < pi[i].numel; j++) x[j] = 1.0f + 0.2f * (float)((j * 2654435761u % 1000) / 500.0 - 1);
            else
                for (size_t j = 0; j < pi[i].numel; j++) x[j] *= 12.0f;
        }
        g_bias.assign(L, {});
        for (int l = 0; l < L; l++)
            if (ds_model_expert_bias(m, l)) {
                g_bias[l].resize(c->n_routed_experts);
                ds_randn_fill(g_bias[l].data(), g_bias[l].size(), gpu_test_seed, 900 + l, 0.05f);
            }
    }
    ops->copy(ds_model_params(m), g_w.data(), np * sizeof(float), DS_COPY_H2D);
    for (int l = 0; l < L; l++)
        if (!g_bias[l].empty()) ops->copy(ds_model_expert_bias(m, l), g_bias[l].data(), g_bias[l].size() * 4, DS_COPY_H2D);

    const int n = B * T, depth = ds_model_mtp_depth(m);
    std::vector<int32_t> tok(n), tgt(n);
    std::vector<float> cm(n), cmtp((size_t)(depth ? depth : 1) * n);
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, 5);
    for (int i = 0; i < n; i++) {
        tok[i] = (int32_t)ds_rng_below(&r, c->vocab_size);
        tgt[i] = ds_rng_below(&r, 9) == 0 ? -1 : (int32_t)ds_rng_below(&r, c->vocab_size);
        cm[i] = -1.0f / n;
    }
    for (auto &x : cmtp) x = -0.3f / n;
    ds_batch b;
    memset(&b, 0, sizeof b);
    b.B = B; b.T = T; b.tokens = tok.data(); b.targets = tgt.data();
    if (!g_len.empty()) {
        b.len = g_len.data();
        for (int i = 0; i < n; i++)
            if (i % T >= g_len[i / T]) tgt[i] = -1, cm[i] = 0.f;
    }
    ds_fwd_out out;
    int rc = ds_model_forward(m, &b, &out);
    o->logp.resize(n);
    o->mtp.resize((size_t)depth * n);
    if (!rc) {
        down(ops, o->logp.data(), out.logp, n);
        if (depth) down(ops, o->mtp.data(), out.mtp_logp, (size_t)depth * n);
        o->bal = out.bal_loss;
        o->load.assign(out.expert_load, out.expert_load + (size_t)out.n_moe_layers * c->n_routed_experts);
        /* the loss coefficients live in backend memory */
        float *dcm = (float *)ops->alloc(cm.size() * 4), *dmt = (float *)ops->alloc(cmtp.size() * 4);
        ops->copy(dcm, cm.data(), cm.size() * 4, DS_COPY_H2D);
        ops->copy(dmt, cmtp.data(), cmtp.size() * 4, DS_COPY_H2D);
        ds_model_zero_grad(m);
        rc = ds_model_backward(m, &b, dcm, depth ? dmt : NULL);
        o->grads.resize(np);
        if (!rc) down(ops, o->grads.data(), ds_model_grads(m), np);
        ops->free(dcm);
        ops->free(dmt);
    }
    if (ops != ds_ops_cpu() && !rc) rc = ds_ops_cuda_status();
    ds_model_free(m);
    return rc;
}

/* exact = fp32 GEMMs: the same experts, tight tolerances. Otherwise (bf16 GEMMs) routing may flip at near
 * ties, so only the log-probabilities are held to a tolerance and the rest is reported. */
static void compare_steps(const char *name, const ds_config *c, int B, int T, ds_cuda_gemm_mode mode, double tol_logp,
                          double tol_grad) {
    const bool exact = mode == DS_CUDA_GEMM_F32;
    g_w.clear();
    StepOut cpu, gpu;
    int rc = step(ds_ops_cpu(), c, B, T, &cpu);
    CHECK(rc == 0, "%s: CPU step runs (%s)", name, ds_errmsg());
    ds_ops_cuda_set_gemm(mode);
    rc = step(ds_ops_cuda(), c, B, T, &gpu);
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_BF16);
    CHECK(rc == 0, "%s: GPU step runs (%s)", name, ds_errmsg());
    if (rc) return;
    size_t flips = 0;
    for (size_t i = 0; i < cpu.load.size(); i++) flips += cpu.load[i] != gpu.load[i];
    if (exact) CHECK(flips == 0, "%s: routing picked the same experts (expert loads equal)", name);
    else printf("# %s: %zu of %zu expert loads differ (bf16 rounding moves near-tied choices)\n", name, flips,
                cpu.load.size());
    std::vector<double> ref(cpu.logp.begin(), cpu.logp.end());
    err_stats e = compare(gpu.logp.data(), DS_F32, ref.data(), ref.size());
    CHECK(e.nonfinite == 0 && e.rel <= tol_logp, "%s: log-probs rel err %.3g <= %.3g (max abs %.3g)", name, e.rel,
          tol_logp, e.maxabs);
    if (!cpu.mtp.empty()) {
        std::vector<double> rm(cpu.mtp.begin(), cpu.mtp.end());
        err_stats em = compare(gpu.mtp.data(), DS_F32, rm.data(), rm.size());
        CHECK(em.nonfinite == 0 && em.rel <= tol_logp, "%s: MTP log-probs rel err %.3g <= %.3g", name, em.rel, tol_logp);
    }
    std::vector<double> rg(cpu.grads.begin(), cpu.grads.end());
    err_stats eg = compare(gpu.grads.data(), DS_F32, rg.data(), rg.size());
    if (!exact) {
        printf("# %s: balance loss %.9g vs %.9g; gradients rel err %.3g (%zu non-finite)\n", name, gpu.bal, cpu.bal,
               eg.rel, eg.nonfinite);
        CHECK(eg.nonfinite == 0, "%s: every gradient finite", name);
        return;
    }
    CHECK(fabs(cpu.bal - gpu.bal) <= tol_logp * fabs(cpu.bal) + 1e-9, "%s: balance loss %.9g vs %.9g", name, gpu.bal,
          cpu.bal);
    CHECK(eg.nonfinite == 0 && eg.rel <= tol_grad, "%s: all gradients rel err %.3g <= %.3g (max abs %.3g)", name, eg.rel,
          tol_grad, eg.maxabs);
}

TEST(tiny_moe_mtp_step) {
    ds_config c;
    fixture_tiny(&c);
    compare_steps("tiny MoE + MTP, f32 GEMMs", &c, 2, 24, DS_CUDA_GEMM_F32, 1e-5, 1e-4);
    compare_steps("tiny MoE + MTP, bf16 GEMMs", &c, 2, 24, DS_CUDA_GEMM_BF16, 2e-2, 5e-2);
}

/* padding (ds_batch.len): not routed on either backend, left out of the loads and the balance loss */
TEST(padded_step) {
    ds_config c;
    fixture_tiny(&c);
    g_len = {24, 15, 0};
    compare_steps("tiny MoE + MTP, rows of 24, 15 and 0 tokens, f32 GEMMs", &c, 3, 24, DS_CUDA_GEMM_F32, 1e-5, 1e-4);
    g_len.clear();
}

/* rope_interleave false: the rotate-half pairs (j, j + dr/2) in the forward and the backward */
TEST(rope_halves_step) {
    ds_config c;
    fixture_tiny(&c);
    c.rope_interleave = 0;
    compare_steps("tiny MoE + MTP, rope_interleave false, f32 GEMMs", &c, 2, 24, DS_CUDA_GEMM_F32, 1e-5, 1e-4);
}

TEST(wider_step) {
    ds_config c;
    fixture_tiny(&c);
    c.vocab_size = 512;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.moe_intermediate_size = 128;
    c.num_attention_heads = 4;
    c.n_routed_experts = 16;
    c.num_experts_per_tok = 4;
    c.n_group = 4;
    c.topk_group = 2;
    c.q_lora_rank = 96;
    c.kv_lora_rank = 64;
    c.qk_nope_head_dim = 32;
    c.qk_rope_head_dim = 16;
    c.v_head_dim = 32;
    compare_steps("wider MoE, f32 GEMMs", &c, 2, 64, DS_CUDA_GEMM_F32, 1e-5, 1e-4);
}

int main(int argc, char **argv) {
    gpu_test_begin("test_model_step");
    if (!ds_ops_cuda()) {
        printf("Bail out! %s\n", ds_errmsg());
        return 1;
    }
    return tap_run(argc, argv);
}
