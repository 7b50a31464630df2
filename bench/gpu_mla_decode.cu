/* bench/gpu_mla_decode — MLA decode attention (kernels/mla_decode.cu) at FlashMLA's benchmark shapes:
 * batch 128, every sequence holding kv_len cached tokens in a paged bf16 latent cache (pages of 64,
 * shuffled), 576-dim rows, 16-128 query heads, 1-2 query tokens.
 *
 * First the device's practical HBM bandwidth: a large device-to-device copy (bytes read + written over
 * the time). Then per shape: median time, bytes that must move (every cached row once, queries and
 * outputs), GB/s and its share of the measured copy bandwidth, and TFLOP/s (2 x rows x tokens x (576+512)).
 * Output: TSV on stdout; bench/gpu_mla_decode.sh joins it with the PyTorch reference.
 * Usage: gpu_mla_decode [reps] [sweep] [only=Q:H:L] [cfg=N] [contig]
 *   sweep: also every tensor-core configuration (column `auto` = 0); only: one shape; cfg: force one
 *   configuration; contig: read the cache as one contiguous [batch][8192][576] block (no page table).
 */
#include "gpu_test.h"

#include <algorithm>
#include <vector>

extern "C" {
#include "mla_decode_cuda.h"
}

#define TRY(x)                                                                                         \
    do {                                                                                               \
        if (x) {                                                                                       \
            fprintf(stderr, "gpu_mla_decode: %s: %s\n", #x, ds_errmsg());                              \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

static double copy_bandwidth(size_t bytes, int reps) {
    void *a, *b;
    TRY(ds_cuda_alloc(&a, bytes));
    TRY(ds_cuda_alloc(&b, bytes));
    TRY(ds_cuda_memset(a, 1, bytes, NULL));
    ds_cuda_timer *t;
    TRY(ds_cuda_timer_create(&t));
    std::vector<double> v;
    for (int i = 0; i < reps + 2; i++) {
        double ms;
        TRY(ds_cuda_timer_start(t, NULL));
        TRY(ds_cuda_d2d(b, a, bytes, NULL));
        TRY(ds_cuda_timer_stop(t, NULL, &ms));
        if (i >= 2) v.push_back(ms);
    }
    std::sort(v.begin(), v.end());
    ds_cuda_timer_free(t);
    ds_cuda_free(a);
    ds_cuda_free(b);
    return 2.0 * bytes / (v[v.size() / 2] * 1e-3) / 1e9;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    int sweep = 0, only_q = 0, only_h = 0, only_l = 0, force_cfg = 0, contig = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "sweep")) sweep = 1;
        else if (!strcmp(argv[i], "contig")) contig = 1;
        else if (!strncmp(argv[i], "only=", 5)) sscanf(argv[i] + 5, "%d:%d:%d", &only_q, &only_h, &only_l);
        else if (!strncmp(argv[i], "cfg=", 4)) force_cfg = atoi(argv[i] + 4);
    }
    int rows_c, th_c, dq_c, nt_c, st_c;
    char why[256];
    if (!ds_cuda_device_count(why, sizeof why)) {
        printf("gpu_mla_decode: no GPU present (%s)\n", why);
        return 0;
    }
    ds_cuda_info info;
    TRY(ds_cuda_init(0, &info));
    double copy_gbs = copy_bandwidth((size_t)2 << 30, 10);
    fprintf(stderr, "gpu_mla_decode: %s, %d SMs; device-to-device copy %.0f GB/s (read + write)\n", info.name,
            info.sm_count, copy_gbs);
    printf("# copy_GBps\t%.1f\n", copy_gbs);
    printf("batch\tq_len\theads\tkv_len\tms\tGBps\tpct_of_copy\ttflops\tconfig\tsplits\tauto\n");

    const int B = 128, PAGE = 64, D = 576, MAXLEN = 8192;
    const int max_pages = MAXLEN / PAGE, n_pages = B * max_pages;
    const size_t kv_elems = (size_t)n_pages * PAGE * D;
    /* one cache for every shape: random bf16 values (never zeros; a 16 MB random block repeated, which
       costs the device no host time), pages in shuffled order */
    dbuf dkv, dtab, dlen, dq, dout, dlse, dws;
    {
        const size_t blk = (size_t)8 << 20;
        std::vector<uint16_t> h(blk);
        ds_rng r;
        ds_rng_init(&r, 20261123, 1);
        for (size_t i = 0; i < blk; i++) h[i] = ds_f32_to_bf16((float)ds_rng_normal(&r));
        TRY(dbuf_alloc(&dkv, kv_elems * 2));
        for (size_t off = 0; off < kv_elems; off += blk) {
            size_t n = kv_elems - off < blk ? kv_elems - off : blk;
            TRY(ds_cuda_h2d((uint16_t *)dkv.p + off, h.data(), n * 2));
        }
        std::vector<uint32_t> perm(n_pages);
        ds_permutation(perm.data(), n_pages, 20261123, 2);
        TRY(dbuf_up(&dtab, perm.data(), perm.size() * 4));
    }
    const int heads_list[] = {16, 32, 64, 128};
    const int len_list[] = {4096, 8192};
    TRY(dbuf_alloc(&dlen, B * 4));
    TRY(dbuf_alloc(&dq, (size_t)B * 2 * 128 * D * 2));
    TRY(dbuf_alloc(&dout, (size_t)B * 2 * 128 * 512 * 4));
    TRY(dbuf_alloc(&dlse, (size_t)B * 2 * 128 * 4));
    {
        std::vector<uint16_t> h((size_t)B * 2 * 128 * D);
        ds_rng r;
        ds_rng_init(&r, 20261123, 3);
        for (auto &v : h) v = ds_f32_to_bf16((float)ds_rng_normal(&r));
        TRY(ds_cuda_h2d(dq.p, h.data(), h.size() * 2));
    }
    ds_cuda_timer *t;
    TRY(ds_cuda_timer_create(&t));
    for (int q_len = 1; q_len <= 2; q_len++)
        for (int L : len_list)
            for (int H : heads_list) {
                if (only_q && (q_len != only_q || H != only_h || L != only_l)) continue;
                std::vector<int32_t> len(B, L);
                TRY(ds_cuda_h2d(dlen.p, len.data(), B * 4));
                ds_mla_decode_args a;
                memset(&a, 0, sizeof a);
                a.batch = B; a.q_len = q_len; a.heads = H; a.kv_rank = 512; a.rope_dim = 64;
                a.scale = 0.1352338f;
                a.q = dq.p; a.q_type = DS_BF16;
                a.kv = dkv.p; a.kv_type = DS_BF16;
                a.kv_len = (const int32_t *)dlen.p; a.block_table = (const int32_t *)dtab.p;
                a.page_size = PAGE; a.max_pages = max_pages; a.n_pages = n_pages;
                if (contig) { a.block_table = NULL; a.page_size = MAXLEN; a.max_pages = 0; a.n_pages = B; }
                a.out = dout.p; a.out_type = DS_BF16; a.lse = (float *)dlse.p;
                a.max_kv_len = L;
                /* the automatic choice first, then every tensor-core configuration (config 0 = automatic) */
                int n_cfg = ds_cuda_mla_decode_configs(1, &rows_c, &th_c, &dq_c, &nt_c, &st_c);
                for (int cfg = 0; cfg <= (sweep ? n_cfg : 0); cfg++) {
                    ds_mla_decode_tuning tune;
                    memset(&tune, 0, sizeof tune);
                    tune.force_config = cfg ? cfg : force_cfg;
                    ds_cuda_mla_decode_tune(&tune);
                    size_t ws = ds_cuda_mla_decode_workspace(&a);
                    if (ws > dws.bytes) {
                        dbuf_free(&dws);
                        TRY(dbuf_alloc(&dws, ws));
                    }
                    a.workspace = dws.p; a.workspace_bytes = dws.bytes;
                    for (int i = 0; i < 3; i++) TRY(ds_cuda_mla_decode(&a));
                    std::vector<double> v;
                    for (int i = 0; i < reps; i++) {
                        double ms;
                        TRY(ds_cuda_timer_start(t, NULL));
                        TRY(ds_cuda_mla_decode(&a));
                        TRY(ds_cuda_timer_stop(t, NULL, &ms));
                        v.push_back(ms);
                    }
                    std::sort(v.begin(), v.end());
                    double ms = v[v.size() / 2];
                    ds_mla_decode_tuning used;
                    ds_cuda_mla_decode_last(&used);
                    double rows = (double)B * q_len * H;
                    double bytes = (double)B * L * D * 2 + rows * D * 2 + rows * 512 * 2 + rows * 4;
                    double flop = 2.0 * rows * L * (576 + 512);
                    double gbs = bytes / (ms * 1e-3) / 1e9;
                    printf("%d\t%d\t%d\t%d\t%.4f\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\n", B, q_len, H, L, ms, gbs,
                           100 * gbs / copy_gbs, flop / (ms * 1e-3) / 1e12, used.used_config, used.used_splits,
                           cfg == 0);
                    fflush(stdout);
                }
                ds_cuda_mla_decode_tune(NULL);
            }
    ds_cuda_timer_free(t);
    return 0;
}
