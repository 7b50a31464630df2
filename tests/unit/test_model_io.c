/* Unit tests of the network's weight files (lib/model/weights.c): save/load round trips by HF names,
 * transformers' fused expert layout, FP8 weights with block scales, BF16 saving, a checkpoint without MTP,
 * and the errors bad files give.
 *
 * Also the driver of the transformers parity check (tests/ref/model.bats):
 *   test_model_io --ref DIR   loads DIR/config.json, DIR's weights and DIR/batch.safetensors, runs one
 *                             forward and backward, and writes DIR/ours.safetensors (log-probs, balance
 *                             loss, and every gradient as "grad.<HF name>"). */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "fp8/quant.h"
#include "model/internal.h"
#include "model/weights.h"
#include "model_fixture.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static ds_model *make(const ds_config *c) {
    ds_model_opts o = {.max_batch = 1, .max_seq = 8, .train = 1, .recompute = 1};
    ds_model *m = NULL;
    if (ds_model_create(&m, c, &o)) CHECK(0, "create: %s", ds_errmsg());
    return m;
}

static void randomize(ds_model *m, uint64_t seed) {
    ds_model_init(m, seed);
    int np;
    const ds_param *p = ds_model_params_info(m, &np);
    for (int i = 0; i < np; i++)
        if (p[i].kind == DS_PARAM_NORM) ds_randn_fill(ds_model_params(m) + p[i].offset, p[i].numel, seed, i, 1.0f);
    for (int l = 0; l < m->n_layers_total; l++)
        if (ds_model_expert_bias(m, l)) ds_randn_fill(ds_model_expert_bias(m, l), m->dims.E, seed, 1000 + l, 0.1f);
}

static int same(const float *a, const float *b, size_t n) { return !memcmp(a, b, sizeof(float) * n); }

static int biases_equal(ds_model *a, ds_model *b) {
    return same(a->ebias, b->ebias, (size_t)a->n_moe * a->dims.E);
}

static ds_st_set *open_set(const char *path) {
    ds_st_set *s = NULL;
    if (ds_st_set_open(&s, path)) CHECK(0, "open %s: %s", path, ds_errmsg());
    return s;
}

TEST(save_load_round_trip) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *a = make(&c), *b = make(&c);
    randomize(a, 1);
    const char *meta[] = {"config", "{}"};
    ds_weights_save_opts o = {.mtp_copies = 1, .meta = meta, .n_meta = 1};
    CHECK(ds_model_save_weights(a, tap_tmp("rt.safetensors"), &o) == 0, "save: %s", ds_errmsg());
    ds_st_set *s = open_set(tap_tmp("rt.safetensors"));
    if (!s) return;
    /* names as released: per-expert tensors, F32 gate bias after the router, MTP copies of embed/head */
    const ds_st_tensor *t = ds_st_set_find(s, "model.layers.2.mlp.experts.7.down_proj.weight");
    const ds_st_tensor *bias = ds_st_set_find(s, "model.layers.3.mlp.gate.e_score_correction_bias");
    CHECK(t && t->shape[0] == 32 && t->shape[1] == 16 && bias && bias->dtype == DS_F32 && bias->shape[0] == 8 &&
              ds_st_set_find(s, "model.layers.3.shared_head.head.weight") &&
              ds_st_set_find(s, "model.layers.3.eh_proj.weight") && !strcmp(ds_st_set_meta(s, "config"), "{}"),
          "HF names and shapes, biases, MTP layer 3 with its copies, metadata");
    CHECK(ds_model_load_weights(b, s) == 0, "load: %s", ds_errmsg());
    CHECK(same(ds_model_params(a), ds_model_params(b), ds_model_num_params(a)) && biases_equal(a, b) &&
              ds_model_mtp_depth(b) == 1,
          "identical parameters and biases after the round trip");
    ds_st_set_close(s);

    /* BF16: every value rounds to the nearest bf16 */
    ds_weights_save_opts ob = {.bf16 = 1};
    CHECK(ds_model_save_weights(a, tap_tmp("rt16.safetensors"), &ob) == 0, "save bf16");
    s = open_set(tap_tmp("rt16.safetensors"));
    CHECK(s && ds_st_set_find(s, "lm_head.weight")->dtype == DS_BF16 && ds_model_load_weights(b, s) == 0, "load bf16");
    double worst = 0;
    for (size_t i = 0; i < ds_model_num_params(a); i++) {
        float x = ds_model_params(a)[i], y = ds_model_params(b)[i];
        worst = fmax(worst, fabs(x - y) / fmax(fabs(x), 1e-30));
    }
    CHECK(worst <= 1.0 / 256 && biases_equal(a, b), "bf16 relative error %.2e <= 2^-8, biases exact", worst);
    ds_st_set_close(s);
    ds_model_free(a), ds_model_free(b);
}

TEST(checkpoint_directory_round_trip) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *a = make(&c), *b = make(&c);
    randomize(a, 5);
    ds_ckpt_writer *w = NULL;
    int rc = ds_ckpt_writer_begin(&w, tap_tmp("ckpt"), NULL);
    if (!rc) rc = ds_ckpt_writer_set_config(w, &c);
    if (!rc) rc = ds_model_add_to_checkpoint(a, w, NULL);
    if (!rc) rc = ds_ckpt_writer_commit(w);
    CHECK(rc == 0, "write a checkpoint directory: %s", ds_errmsg());
    ds_ckpt *ck = NULL;
    CHECK(ds_ckpt_open(&ck, tap_tmp("ckpt")) == 0, "open: %s", ds_errmsg());
    if (!ck) return;
    ds_model *c2 = make(ds_ckpt_config(ck));
    CHECK(ds_model_load_weights(b, ds_ckpt_tensors(ck)) == 0 && ds_model_load_weights(c2, ds_ckpt_tensors(ck)) == 0,
          "load: %s", ds_errmsg());
    CHECK(same(ds_model_params(a), ds_model_params(b), ds_model_num_params(a)) && biases_equal(a, b) &&
              ds_model_num_params(c2) == ds_model_num_params(a),
          "identical weights; the checkpoint's config builds the same model");
    ds_ckpt_close(ck);
    ds_model_free(a), ds_model_free(b), ds_model_free(c2);
}

/* transformers keeps routed experts fused in memory: gate_up_proj [E, 2Ie, D], down_proj [E, D, Ie] */
TEST(fused_experts_and_missing_mtp) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *a = make(&c), *b = make(&c);
    randomize(a, 2);
    int np, n = 0;
    const ds_param *p = ds_model_params_info(a, &np);
    const ds_dims *d = &a->dims;
    size_t mat = (size_t)d->Ie * d->D;
    ds_st_tensor *t = calloc((size_t)np + 8, sizeof *t);
    float *fused[2];
    for (int i = 0; i < np; i++) {
        if (p[i].layer >= c.num_hidden_layers) continue; /* as transformers writes: no MTP */
        if (p[i].expert >= 0) continue;
        t[n] = (ds_st_tensor){.name = p[i].name, .dtype = DS_F32, .ndim = p[i].ndim,
                              .shape = {p[i].shape[0], p[i].shape[1]}, .numel = (int64_t)p[i].numel,
                              .nbytes = 4 * p[i].numel, .data = ds_model_params(a) + p[i].offset};
        n++;
    }
    char names[2][2][96];
    for (int l = 1; l <= 2; l++) {
        const ds_layer_w *w = &a->W.layer[l];
        float *gu = fused[l - 1] = malloc(sizeof(float) * 2 * mat * d->E);
        for (int e = 0; e < d->E; e++) {
            memcpy(gu + 2 * e * mat, w->exp_gate + e * mat, sizeof(float) * mat);
            memcpy(gu + (2 * e + 1) * mat, w->exp_up + e * mat, sizeof(float) * mat);
        }
        snprintf(names[l - 1][0], 96, "model.layers.%d.mlp.experts.gate_up_proj", l);
        snprintf(names[l - 1][1], 96, "model.layers.%d.mlp.experts.down_proj", l);
        t[n++] = (ds_st_tensor){.name = names[l - 1][0], .dtype = DS_F32, .ndim = 3, .shape = {d->E, 2 * d->Ie, d->D},
                                .numel = (int64_t)(2 * mat * d->E), .nbytes = 8 * mat * d->E, .data = gu};
        t[n++] = (ds_st_tensor){.name = names[l - 1][1], .dtype = DS_F32, .ndim = 3, .shape = {d->E, d->D, d->Ie},
                                .numel = (int64_t)(mat * d->E), .nbytes = 4 * mat * d->E, .data = w->exp_down};
    }
    CHECK(ds_st_save(tap_tmp("fused.safetensors"), t, n, NULL, 0, NULL) == 0, "write a fused-expert file: %s", ds_errmsg());
    ds_st_set *s = open_set(tap_tmp("fused.safetensors"));
    fflush(stdout);
    CHECK(s && ds_model_check_set(&c, s, "fused") == 0, "the config check takes fused experts and no MTP: %s", ds_errmsg());
    /* the check reads shapes only: the fused down_proj of layer 2 transposed is refused, naming it */
    const ds_st_tensor **ptr = calloc((size_t)n, sizeof *ptr);
    for (int i = 0; i < n; i++) ptr[i] = &t[i];
    t[n - 1].shape[1] = d->Ie, t[n - 1].shape[2] = d->D;
    char want[200];
    snprintf(want, sizeof want, "checkpoint: model.layers.2.mlp.experts.down_proj has shape [%d, %d, %d], the config implies "
             "[%d, %d, %d]: fused", d->E, d->Ie, d->D, d->E, d->D, d->Ie);
    CHECK(ds_model_check_tensors(&c, ptr, n, "fused") == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    t[n - 1].shape[1] = d->D, t[n - 1].shape[2] = d->Ie;
    free(ptr);
    CHECK(s && ds_model_load_weights(b, s) == 0, "load: %s", ds_errmsg());
    CHECK(ds_model_mtp_depth(b) == 0, "no MTP tensors: MTP disabled (depth %d)", ds_model_mtp_depth(b));
    size_t main_floats = p[0].numel;
    for (int i = 0; i < np; i++)
        if (p[i].layer < c.num_hidden_layers) main_floats = p[i].offset + p[i].numel;
    CHECK(same(ds_model_params(a), ds_model_params(b), main_floats), "main model identical, experts unfused");
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ds_batch batch = {.B = 1, .T = 8, .tokens = tok, .targets = tok};
    ds_fwd_out out;
    CHECK(ds_model_forward(b, &batch, &out) == 0 && out.mtp_logp == NULL, "forward without MTP");
    ds_st_set_close(s);
    free(fused[0]), free(fused[1]), free(t);
    ds_model_free(a), ds_model_free(b);
}

TEST(fp8_weights_dequantized) {
    ds_config c;
    fixture_tiny(&c);
    c.num_nextn_predict_layers = 0;
    ds_model *a = make(&c), *b = make(&c);
    randomize(a, 3);
    int np, n = 0;
    const ds_param *p = ds_model_params_info(a, &np);
    ds_st_tensor *t = calloc((size_t)np * 2, sizeof *t);
    char (*snames)[160] = calloc((size_t)np, 160);
    float **want = calloc((size_t)np, sizeof(float *));
    for (int i = 0; i < np; i++) {
        const ds_param *q = &p[i];
        float *x = ds_model_params(a) + q->offset;
        int fp8 = q->kind == DS_PARAM_MATRIX && q->ndim == 2;
        if (!fp8) {
            t[n++] = (ds_st_tensor){.name = q->name, .dtype = DS_F32, .ndim = q->ndim, .shape = {q->shape[0], q->shape[1]},
                                    .numel = (int64_t)q->numel, .nbytes = 4 * q->numel, .data = x};
            continue;
        }
        int64_t r = q->shape[0], cc = q->shape[1], sr = (r + 127) / 128, sc = (cc + 127) / 128;
        uint8_t *codes = malloc(q->numel);
        float *scale = malloc(sizeof(float) * sr * sc);
        ds_fp8_quantize(codes, scale, x, r, cc, 128, 128, DS_FP8_SCALE_F32);
        want[i] = malloc(sizeof(float) * q->numel);
        ds_fp8_dequantize(want[i], codes, scale, r, cc, 128, 128);
        snprintf(snames[i], 160, "%s_scale_inv", q->name);
        t[n++] = (ds_st_tensor){.name = q->name, .dtype = DS_F8_E4M3, .ndim = 2, .shape = {r, cc},
                                .numel = (int64_t)q->numel, .nbytes = q->numel, .data = codes};
        t[n++] = (ds_st_tensor){.name = snames[i], .dtype = DS_F32, .ndim = 2, .shape = {sr, sc},
                                .numel = sr * sc, .nbytes = 4 * sr * sc, .data = scale};
    }
    for (int l = 1; l < 3; l++) { /* biases */
        static char bn[2][96];
        snprintf(bn[l - 1], 96, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
        t[n++] = (ds_st_tensor){.name = bn[l - 1], .dtype = DS_F32, .ndim = 1, .shape = {8}, .numel = 8, .nbytes = 32,
                                .data = ds_model_expert_bias(a, l)};
    }
    CHECK(ds_st_save(tap_tmp("fp8.safetensors"), t, n, NULL, 0, NULL) == 0, "write an FP8 checkpoint: %s", ds_errmsg());
    ds_st_set *s = open_set(tap_tmp("fp8.safetensors"));
    CHECK(s && ds_model_check_set(&c, s, "fp8") == 0, "the config check takes F8_E4M3 weights with their scales: %s", ds_errmsg());
    CHECK(s && ds_model_load_weights(b, s) == 0, "load: %s", ds_errmsg());
    int ok = 1;
    for (int i = 0; i < np; i++)
        ok &= same(ds_model_params(b) + p[i].offset, want[i] ? want[i] : ds_model_params(a) + p[i].offset, p[i].numel);
    CHECK(ok && biases_equal(a, b), "weights = E4M3 codes x their 128x128 block scale_inv");
    for (int i = 0; i < np; i++) free(want[i]);
    for (int i = 0; i < n; i++)
        if (t[i].dtype == DS_F8_E4M3 || strstr(t[i].name, "_scale_inv")) free((void *)t[i].data);
    ds_st_set_close(s);
    free(t), free(snames), free(want);
    ds_model_free(a), ds_model_free(b);
}

TEST(bad_checkpoints) {
    ds_config c;
    fixture_tiny(&c);
    ds_model *a = make(&c);
    randomize(a, 4);
    CHECK(ds_model_save_weights(a, tap_tmp("ok.safetensors"), NULL) == 0, "save");
    ds_config c2 = c;
    c2.kv_lora_rank = 12;
    ds_model *b = make(&c2);
    ds_st_set *s = open_set(tap_tmp("ok.safetensors"));
    CHECK(ds_model_load_weights(b, s) == DS_ERR &&
              strstr(ds_errmsg(), "model.layers.0.self_attn.kv_a_proj_with_mqa.weight: shape [12, 32], expected [16, 32]"),
          "shape mismatch: %s", ds_errmsg());
    ds_config c3 = c;
    c3.num_hidden_layers = 5;
    ds_model *d = make(&c3);
    CHECK(ds_model_load_weights(d, s) == DS_ERR && strstr(ds_errmsg(), "missing tensor model.layers.4."),
          "missing tensor: %s", ds_errmsg());
    ds_config c4 = c;
    c4.num_nextn_predict_layers = 2;
    ds_model *e = make(&c4);
    CHECK(ds_model_load_weights(e, s) == DS_ERR && strstr(ds_errmsg(), "MTP module 2 of 2 missing"), "%s", ds_errmsg());
    ds_st_set_close(s);
    ds_model_free(a), ds_model_free(b), ds_model_free(d), ds_model_free(e);
}

/* ---- the parity driver ---------------------------------------------------------------------------------- */

static int read_i32(const ds_st_set *s, const char *name, int32_t *dst, int64_t n) {
    const ds_st_tensor *t = ds_st_set_find(s, name);
    if (!t || t->dtype != DS_I32 || t->numel != n) return ds_fail(DS_ERR, "batch: %s: want I32 x %lld", name, (long long)n);
    memcpy(dst, t->data, sizeof(int32_t) * n);
    return 0;
}

static int ref_driver(const char *dir) {
    char path[1024];
    ds_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    DS_TRY(ds_config_load_file(&c, path));
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    ds_st_set *bs = NULL;
    DS_TRY(ds_st_set_open(&bs, path));
    const ds_st_tensor *tt = ds_st_set_find(bs, "tokens");
    if (!tt || tt->ndim != 2) return ds_fail(DS_ERR, "batch: no tokens [B, T]");
    int B = (int)tt->shape[0], T = (int)tt->shape[1], n = B * T, D = c.num_nextn_predict_layers;
    int32_t *tok = malloc(4 * n), *tgt = malloc(4 * n), *seg = NULL;
    float *cm = malloc(4 * n), *cmtp = calloc((size_t)(D ? D : 1) * n, 4), alpha = 0;
    DS_TRY(read_i32(bs, "tokens", tok, n));
    DS_TRY(read_i32(bs, "targets", tgt, n));
    DS_TRY(ds_st_read_f32(ds_st_set_find(bs, "dlogp"), cm, path));
    if (ds_st_set_find(bs, "dmtp")) DS_TRY(ds_st_read_f32(ds_st_set_find(bs, "dmtp"), cmtp, path));
    if (ds_st_set_find(bs, "alpha")) DS_TRY(ds_st_read_f32(ds_st_set_find(bs, "alpha"), &alpha, path));
    if (ds_st_set_find(bs, "seg")) {
        seg = malloc(4 * n);
        DS_TRY(read_i32(bs, "seg", seg, n));
    }
    ds_model_opts o = {.max_batch = B, .max_seq = T, .train = 1, .recompute = 1, .balance_alpha = alpha};
    ds_model *m;
    DS_TRY(ds_model_create(&m, &c, &o));
    ds_st_set *ws = NULL;
    DS_TRY(ds_st_set_open(&ws, dir));
    DS_TRY(ds_model_load_weights(m, ws));
    ds_batch b = {.B = B, .T = T, .tokens = tok, .targets = tgt, .seg = seg};
    ds_fwd_out out;
    DS_TRY(ds_model_forward(m, &b, &out));
    int depth = ds_model_mtp_depth(m);
    ds_model_zero_grad(m);
    DS_TRY(ds_model_backward(m, &b, cm, depth ? cmtp : NULL));

    int np;
    const ds_param *p = ds_model_params_info(m, &np);
    ds_st_tensor *t = calloc((size_t)np + 4, sizeof *t);
    char (*names)[128] = calloc((size_t)np, 128);
    float bal = (float)out.bal_loss;
    int32_t dep = depth;
    int k = 0;
    t[k++] = (ds_st_tensor){.name = "logp", .dtype = DS_F32, .ndim = 2, .shape = {B, T}, .numel = n, .nbytes = 4 * n,
                            .data = out.logp};
    if (depth)
        t[k++] = (ds_st_tensor){.name = "mtp_logp", .dtype = DS_F32, .ndim = 3, .shape = {depth, B, T},
                                .numel = (int64_t)depth * n, .nbytes = 4 * (uint64_t)depth * n, .data = out.mtp_logp};
    t[k++] = (ds_st_tensor){.name = "bal_loss", .dtype = DS_F32, .ndim = 1, .shape = {1}, .numel = 1, .nbytes = 4, .data = &bal};
    t[k++] = (ds_st_tensor){.name = "mtp_depth", .dtype = DS_I32, .ndim = 1, .shape = {1}, .numel = 1, .nbytes = 4, .data = &dep};
    for (int i = 0; i < np; i++) {
        if (p[i].layer >= c.num_hidden_layers + depth) continue;
        snprintf(names[i], 128, "grad.%s", p[i].name);
        t[k++] = (ds_st_tensor){.name = names[i], .dtype = DS_F32, .ndim = p[i].ndim, .shape = {p[i].shape[0], p[i].shape[1]},
                                .numel = (int64_t)p[i].numel, .nbytes = 4 * p[i].numel,
                                .data = ds_model_grads(m) + p[i].offset};
    }
    snprintf(path, sizeof path, "%s/ours.safetensors", dir);
    DS_TRY(ds_st_save(path, t, k, NULL, 0, NULL));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--ref")) {
        int rc = ref_driver(argv[2]);
        if (rc) fprintf(stderr, "test_model_io: error: %s\n", ds_errmsg());
        return rc;
    }
    return tap_run(argc, argv);
}
