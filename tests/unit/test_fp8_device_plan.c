/* Unit tests for the weights' memory report of an FP8-resident load (model.h ds_model_weight_plan, the
 * numbers ds-generate prints before loading), on the host and for the GPU, without a GPU: an FP8
 * checkpoint written here (codes + weight_scale_inv for every Linear weight the Linear GEMMs take, one of
 * them left in float32) is planned, and each figure is checked against the sizes worked out here from the
 * parameter table and the rules of fp8/resident.h: on the host, codes plus [ceil(r/128), ceil(c/128)]
 * scales; on the GPU, only weights whose reduction is a multiple of 128 and rows a multiple of 4, a
 * layer's routed experts all or none, codes and scale rows padded to 4 columns, each piece rounded to
 * 256 bytes, plus the bf16 copy the CUDA backend makes of the float parameters. The host plan also equals
 * what a model created on the CPU reports (ds_model_weight_bytes), so the plan is the create's marking. */
#include "tap.h"

#include "model_fixture.h"

#include "core/err.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "ops/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void config(ds_config *c, int moe_inter) {
    fixture_tiny(c);
    c->hidden_size = 256;
    c->intermediate_size = 384;
    c->moe_intermediate_size = moe_inter;
    c->q_lora_rank = 128;
    c->kv_lora_rank = 128;
    c->qk_nope_head_dim = 48;
    c->qk_rope_head_dim = 16;
    c->v_head_dim = 64;
    c->num_attention_heads = 2;
    c->num_key_value_heads = 2;
}

/* Linear weights the Linear GEMMs take (weights.c: not kv_b, eh_proj, router, embedding, head) */
static int linear_kind(const ds_param *p) {
    return p->kind == DS_PARAM_MATRIX && p->ndim == 2 && !strstr(p->name, "kv_b_proj") && !strstr(p->name, "eh_proj");
}

static const char *KEPT_FLOAT = "model.layers.0.self_attn.o_proj.weight";

/* An FP8 checkpoint of cfg's Linear weights (KEPT_FLOAT as F32) at path; the set opened. */
static ds_st_set *write_ckpt(const ds_config *cfg, const char *path) {
    ds_param *p;
    int n;
    if (ds_model_layout(cfg, &p, &n)) return NULL;
    ds_st_writer *w;
    int rc = ds_st_writer_open(&w, path, NULL);
    char sname[200];
    for (int pass = 0; !rc && pass < 2; pass++) /* declare, then data */
        for (int i = 0; !rc && i < n; i++) {
            if (!linear_kind(&p[i])) continue;
            const int64_t r = p[i].shape[0], c = p[i].shape[1], ss[2] = {(r + 127) / 128, (c + 127) / 128};
            const int fl = !strcmp(p[i].name, KEPT_FLOAT);
            snprintf(sname, sizeof sname, "%s_scale_inv", p[i].name);
            if (!pass) {
                rc = ds_st_writer_declare(w, p[i].name, fl ? DS_F32 : DS_F8_E4M3, 2, p[i].shape);
                if (!rc && !fl) rc = ds_st_writer_declare(w, sname, DS_F32, 2, ss);
                continue;
            }
            size_t bytes = (size_t)(r * c) * (fl ? 4 : 1);
            void *d = calloc(bytes, 1);
            rc = d ? ds_st_writer_data(w, d, bytes) : DS_ERR;
            free(d);
            float *s = calloc((size_t)(ss[0] * ss[1]), sizeof(float));
            if (!rc && !fl) rc = s ? ds_st_writer_data(w, s, sizeof(float) * (size_t)(ss[0] * ss[1])) : DS_ERR;
            free(s);
        }
    if (!rc) rc = ds_st_writer_close(w);
    free(p);
    ds_st_set *set = NULL;
    if (!rc) rc = ds_st_set_open(&set, path);
    return rc ? NULL : set;
}

static size_t up(size_t x, size_t a) { return (x + a - 1) / a * a; }

typedef struct {
    double fp32, bf16, fp8, expanded;
    int resident, experts_resident;
} expect;

/* The sizes by the rules in the header comment. */
static void expected(const ds_config *cfg, int device, expect *e) {
    ds_param *p;
    int n;
    memset(e, 0, sizeof *e);
    if (ds_model_layout(cfg, &p, &n)) return;
    char *res = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) {
        const int64_t r = p[i].shape[0], c = p[i].shape[1];
        res[i] = linear_kind(&p[i]) && strcmp(p[i].name, KEPT_FLOAT) && (!device || (c % 128 == 0 && r % 4 == 0));
    }
    for (int i = 0; device && i < n; i++) /* one expert out: its layer's experts out */
        if (p[i].expert >= 0 && !res[i])
            for (int j = 0; j < n; j++)
                if (p[j].expert >= 0 && p[j].layer == p[i].layer) res[j] = 0;
    double total = 0, held = 0, routers = 0;
    for (int i = 0; i < n; i++) {
        const size_t r = (size_t)p[i].shape[0], c = (size_t)p[i].shape[1];
        total += (double)p[i].numel;
        routers += p[i].kind == DS_PARAM_ROUTER;
        if (!res[i]) {
            held += (double)p[i].numel;
            continue;
        }
        e->resident++;
        e->experts_resident += p[i].expert >= 0;
        e->fp8 += device ? (double)(up(r * c, 256) + up(4 * ((r + 127) / 128) * up((c + 127) / 128, 4), 256))
                         : (double)(r * c + 4 * ((r + 127) / 128) * ((c + 127) / 128));
    }
    const double bias = routers * cfg->n_routed_experts;
    e->fp32 = 4 * (held + bias);
    e->bf16 = device ? 2 * held : 0;
    e->expanded = 4 * (total + bias) + (device ? 2 * total : 0);
    free(res);
    free(p);
}

static void check_plan(int moe_inter) {
    ds_config cfg;
    config(&cfg, moe_inter);
    char path[] = "/tmp/ds_fp8_plan_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    char file[64];
    snprintf(file, sizeof file, "%s.safetensors", path);
    ds_st_set *s = write_ckpt(&cfg, file);
    CHECK(s != NULL, "moe_intermediate %d: FP8 checkpoint written and opened (%s)", moe_inter, s ? "" : ds_errmsg());
    if (!s) return;
    for (int device = 0; device < 2; device++) {
        ds_weight_bytes wb;
        expect e;
        expected(&cfg, device, &e);
        int rc = ds_model_weight_plan(&cfg, s, device, device, &wb);
        CHECK(rc == 0, "%s plan (%s)", device ? "GPU" : "host", rc ? ds_errmsg() : "");
        CHECK(wb.resident == e.resident && wb.fp8 == e.fp8,
              "moe_intermediate %d, %s: %d resident tensors, %.0f bytes of codes and scales (expected %d, %.0f)",
              moe_inter, device ? "GPU" : "host", wb.resident, wb.fp8, e.resident, e.fp8);
        CHECK(wb.fp32 == e.fp32 && wb.bf16 == e.bf16 && wb.expanded == e.expanded,
              "%s: fp32 %.0f bf16 %.0f expanded %.0f bytes (expected %.0f %.0f %.0f)", device ? "GPU" : "host", wb.fp32,
              wb.bf16, wb.expanded, e.fp32, e.bf16, e.expanded);
        if (device)
            CHECK(moe_inter % 128 ? e.experts_resident == 0 : e.experts_resident > 0,
                  "GPU: %d routed expert matrices resident (down_proj's reduction %d)", e.experts_resident, moe_inter);
        if (!device || moe_inter % 128 == 0) /* the experts are most of the model */
            CHECK(wb.fp8 + wb.fp32 + wb.bf16 < 0.5 * wb.expanded, "%s: %.0f bytes in all, under half of %.0f expanded",
                  device ? "GPU" : "host", wb.fp8 + wb.fp32 + wb.bf16, wb.expanded);
    }
    /* the host plan is what ds_model_create marks */
    ds_model *m = NULL;
    ds_model_opts o = {.max_batch = 1, .max_seq = 4, .fp8_resident = 1, .fp8_tensors = s};
    int rc = ds_model_create(&m, &cfg, &o);
    ds_weight_bytes made, plan;
    if (!rc) ds_model_weight_bytes(m, 0, &made);
    if (!rc) rc = ds_model_weight_plan(&cfg, s, 0, 0, &plan);
    CHECK(!rc && made.fp8 == plan.fp8 && made.fp32 == plan.fp32 && made.bf16 == plan.bf16 &&
              made.expanded == plan.expanded && made.resident == plan.resident, "a CPU model created from the checkpoint reports the host plan "
          "(%.0f + %.0f bytes)", rc ? 0 : made.fp8, rc ? 0 : made.fp32);
    ds_model_free(m);
    ds_st_set_close(s);
    unlink(file);
    unlink(path);
}

TEST(plan_experts_excluded_on_gpu) { check_plan(96); }
TEST(plan_experts_resident_on_gpu) { check_plan(128); }

TAP_MAIN()
