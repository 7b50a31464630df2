/* GPU test: ds_cuda_mla_decode against the CPU reference ds_mla_decode (same argument struct, same
 * inputs), on fresh random inputs: both GPU paths, contiguous and paged caches, 1 and 2 query tokens,
 * padded row blocks, split-KV with its combine pass, empty slots, poisoned outputs, and a repeat run
 * that must match bit for bit (a moving result would be a race). */
#include "gpu_test.h"

#include <vector>

extern "C" {
#include "mla_decode_cuda.h"
#include "ops/mla_decode.h"
}

struct Case {
    const char *name;
    int batch, q_len, heads, R, Dr;
    int page, max_pages, paged; /* contiguous: page = capacity per sequence */
    ds_dtype qt, kvt, ot;
    int max_len;                /* kv_len drawn in [q_len, max_len]; slot 0 of batch>2 cases is left empty */
    int force_path, force_splits;
    double tol_rel, tol_lse;
    int force_config;
};

static void run_case(const Case &c) {
    ds_rng r;
    ds_rng_init(&r, gpu_test_seed, (uint64_t)ds_stream_id(c.name));
    const int D = c.R + c.Dr;
    const int n_pages = c.paged ? c.batch * c.max_pages : c.batch;
    const size_t nq = (size_t)c.batch * c.q_len * c.heads;
    const size_t nkv = (size_t)n_pages * c.page * D;
    std::vector<float> qf(nq * D), kvf(nkv);
    rand_normal(qf.data(), qf.size(), &r, 1.0f);
    rand_normal(kvf.data(), kvf.size(), &r, 1.0f);
    std::vector<uint16_t> qh(qf.size()), kvh(kvf.size());
    round_bf16(qf.data(), qh.data(), c.qt == DS_BF16 ? qf.data() : nullptr, qf.size());
    round_bf16(kvf.data(), kvh.data(), c.kvt == DS_BF16 ? kvf.data() : nullptr, kvf.size());
    std::vector<int32_t> len(c.batch), table;
    for (int b = 0; b < c.batch; b++) len[b] = c.q_len + (int)ds_rng_below(&r, (uint64_t)(c.max_len - c.q_len + 1));
    if (c.batch > 2) len[0] = 0;
    if (c.paged) {
        std::vector<uint32_t> perm(n_pages);
        ds_permutation(perm.data(), n_pages, gpu_test_seed, 99);
        table.assign(perm.begin(), perm.end());
    }

    /* CPU reference on the same (rounded) values, f32 out */
    ds_mla_decode_args a;
    memset(&a, 0, sizeof a);
    a.batch = c.batch; a.q_len = c.q_len; a.heads = c.heads; a.kv_rank = c.R; a.rope_dim = c.Dr;
    a.scale = 1.0f / sqrtf(192.0f) * 1.873854f;
    a.q = qf.data(); a.q_type = DS_F32;
    a.kv = kvf.data(); a.kv_type = DS_F32;
    a.kv_len = len.data(); a.block_table = c.paged ? table.data() : nullptr;
    a.page_size = c.page; a.max_pages = c.paged ? c.max_pages : 0; a.n_pages = n_pages;
    std::vector<float> ref_out(nq * c.R), ref_lse(nq);
    a.out = ref_out.data(); a.out_type = DS_F32; a.lse = ref_lse.data();
    int rc = ds_mla_decode(&a);
    CHECK_OK(rc, "CPU reference runs");
    std::vector<double> ref(ref_out.begin(), ref_out.end());

    /* GPU */
    dbuf dq, dkv, dlen, dtab, dout, dlse, dws;
    size_t osz = ds_dtype_size(c.ot);
    rc = dbuf_up(&dq, c.qt == DS_BF16 ? (const void *)qh.data() : (const void *)qf.data(), nq * D * ds_dtype_size(c.qt));
    rc |= dbuf_up(&dkv, c.kvt == DS_BF16 ? (const void *)kvh.data() : (const void *)kvf.data(), nkv * ds_dtype_size(c.kvt));
    rc |= dbuf_up(&dlen, len.data(), len.size() * 4);
    if (c.paged) rc |= dbuf_up(&dtab, table.data(), table.size() * 4);
    rc |= dbuf_alloc(&dout, nq * c.R * osz);
    rc |= dbuf_alloc(&dlse, nq * 4);
    CHECK_OK(rc, "device buffers");
    ds_mla_decode_args g = a;
    g.q = dq.p; g.q_type = c.qt;
    g.kv = dkv.p; g.kv_type = c.kvt;
    g.kv_len = (const int32_t *)dlen.p;
    g.block_table = c.paged ? (const int32_t *)dtab.p : nullptr;
    g.out = dout.p; g.out_type = c.ot; g.lse = (float *)dlse.p;
    g.max_kv_len = c.max_len;
    ds_mla_decode_tuning t;
    memset(&t, 0, sizeof t);
    t.force_path = c.force_path;
    t.force_splits = c.force_splits;
    t.force_config = c.force_config;
    ds_cuda_mla_decode_tune(&t);
    size_t ws = ds_cuda_mla_decode_workspace(&g);
    if (ws) rc |= dbuf_alloc(&dws, ws);
    g.workspace = dws.p; g.workspace_bytes = ws;

    std::vector<unsigned char> out1(nq * c.R * osz), out2(out1.size());
    std::vector<float> lse1(nq), lse2(nq);
    for (int rep = 0; rep < 2; rep++) {
        rc |= ds_cuda_poison(dout.p, dout.bytes);
        rc |= ds_cuda_poison(dlse.p, dlse.bytes);
        rc |= ds_cuda_mla_decode(&g);
        rc |= ds_cuda_sync();
        rc |= ds_cuda_d2h(rep ? out2.data() : out1.data(), dout.p, out1.size());
        rc |= ds_cuda_d2h(rep ? lse2.data() : lse1.data(), dlse.p, nq * 4);
    }
    ds_mla_decode_tuning used;
    ds_cuda_mla_decode_last(&used);
    ds_cuda_mla_decode_tune(NULL);
    CHECK_OK(rc, "GPU runs");
    printf("# %s: path %d, config %d (%d rows per CTA), %d splits, workspace %zu bytes\n", c.name, used.used_path,
           used.used_config, used.used_rows, used.used_splits, ws);
    if (c.force_config) CHECK(used.used_config == c.force_config, "%s: ran config %d", c.name, used.used_config);
    if (c.force_path) CHECK(used.used_path == c.force_path, "%s: ran path %d", c.name, used.used_path);

    err_stats e = compare(out1.data(), c.ot, ref.data(), ref.size());
    CHECK(e.nonfinite == 0, "%s: every output written (%zu non-finite)", c.name, e.nonfinite);
    CHECK(e.rel <= c.tol_rel, "%s: ||out-ref||/||ref|| = %.3g <= %.3g (max abs %.3g)", c.name, e.rel, c.tol_rel,
          e.maxabs);
    double lse_err = 0;
    size_t lse_bad = 0;
    for (size_t i = 0; i < nq; i++) {
        if (ref_lse[i] == -INFINITY) {
            if (lse1[i] != -INFINITY) lse_bad++;
            continue;
        }
        double d = fabs((double)lse1[i] - ref_lse[i]);
        if (!(d <= lse_err)) lse_err = isfinite(d) ? d : INFINITY;
    }
    CHECK(lse_bad == 0 && lse_err <= c.tol_lse, "%s: lse max abs err %.3g <= %.3g, empty rows -inf (%zu wrong)",
          c.name, lse_err, c.tol_lse, lse_bad);
    CHECK(!memcmp(out1.data(), out2.data(), out1.size()) && !memcmp(lse1.data(), lse2.data(), nq * 4),
          "%s: a second run gives the same bits", c.name);
    dbuf_free(&dq); dbuf_free(&dkv); dbuf_free(&dlen); dbuf_free(&dtab);
    dbuf_free(&dout); dbuf_free(&dlse); dbuf_free(&dws);
}

/* P goes through bf16 in the tensor-core path: ~2^-9 relative per weight, averaging down in the sum */
static const double TC_REL = 6e-3, TC_LSE = 2e-3;

TEST(tensor_core_path) {
    const Case cases[] = {
        {"V3 16 heads, 1 query, contiguous, auto splits", 6, 1, 16, 512, 64, 1500, 1, 0, DS_BF16, DS_BF16, DS_BF16,
         1500, 1, 0, TC_REL + 4e-3, TC_LSE},
        {"V3 128 heads, 2 queries, paged, no split", 3, 2, 128, 512, 64, 64, 16, 1, DS_BF16, DS_BF16, DS_F32, 1000,
         1, 1, TC_REL, TC_LSE},
        {"V3 128 heads, 2 queries, paged, 3 splits", 3, 2, 128, 512, 64, 64, 16, 1, DS_BF16, DS_BF16, DS_F32, 1000,
         1, 3, TC_REL, TC_LSE},
        {"V3 32 heads, 1 query, 5 splits", 4, 1, 32, 512, 64, 777, 1, 0, DS_BF16, DS_BF16, DS_F32, 777, 1, 5,
         TC_REL, TC_LSE},
        {"V3 20 heads x 2 queries (padded rows)", 3, 2, 20, 512, 64, 32, 12, 1, DS_BF16, DS_BF16, DS_F32, 384, 1, 0,
         TC_REL, TC_LSE},
        {"V3 8 heads, short caches", 5, 1, 8, 512, 64, 70, 1, 0, DS_BF16, DS_BF16, DS_F32, 70, 1, 2, TC_REL, TC_LSE},
    };
    for (const Case &c : cases) run_case(c);
}

TEST(every_tensor_core_config) {
    int rows, th, dq, nt, st;
    int n = ds_cuda_mla_decode_configs(1, &rows, &th, &dq, &nt, &st);
    for (int i = 1; i <= n; i++) {
        ds_cuda_mla_decode_configs(i, &rows, &th, &dq, &nt, &st);
        char name[128];
        snprintf(name, sizeof name, "config %d (rows %d, th %d, dq %d, nt %d, stages %d), 24 heads x 2 queries", i,
                 rows, th, dq, nt, st);
        Case c = {name, 3, 2, 24, 512, 64, 32, 20, 1, DS_BF16, DS_BF16, DS_F32, 600, 1, i % 3 == 0 ? 1 : 0,
                  TC_REL, TC_LSE, i};
        run_case(c);
    }
}

TEST(simple_path) {
    const Case cases[] = {
        {"small dims f32 paged 2 queries", 4, 2, 3, 32, 16, 8, 6, 1, DS_F32, DS_F32, DS_F32, 48, 0, 0, 2e-6, 2e-6},
        {"small dims bf16 cache f32 q", 3, 1, 5, 64, 16, 100, 1, 0, DS_F32, DS_BF16, DS_BF16, 100, 0, 0, 4e-3, 2e-6},
        {"V3 dims forced simple", 3, 2, 16, 512, 64, 300, 1, 0, DS_BF16, DS_BF16, DS_F32, 300, 2, 0, 2e-6, 2e-6},
    };
    for (const Case &c : cases) run_case(c);
}

GPU_TAP_MAIN("test_mla_decode")
