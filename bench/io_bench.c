/* io_bench.c — timings for bench/io.sh (built by it against libds). Prints one "key value" line.
 *   io_bench st-write OUT MB          BF16 tensors of 4 MiB (from float32) into OUT.safetensors
 *   io_bench st-read PATH             every tensor of PATH as float32
 *   io_bench shard-write IN.u32 OUT VOCAB   token ids (uint32 file) as one document per 4096 ids
 *   io_bench shard-read PATH THREADS  every token, in one random-access read
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "io/safetensors.h"
#include "io/shard.h"

static int die(void) {
    fprintf(stderr, "io_bench: error: %s\n", ds_errmsg());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *mode = argv[1];
    if (!strcmp(mode, "st-write") && argc == 4) {
        int mb = atoi(argv[3]);
        enum { N = 1 << 21 }; /* 2M bf16 = 4 MiB */
        float *src = malloc((size_t)N * 4);
        for (int i = 0; i < N; i++) src[i] = (float)((i * 2654435761u) >> 8) * 1e-6f - 8.0f;
        ds_st_writer *w;
        double t0 = ds_now();
        if (ds_st_writer_open(&w, argv[2], NULL)) return die();
        int n = mb / 4;
        int64_t shape[2] = {1024, 2048};
        char name[64];
        for (int i = 0; i < n; i++) {
            snprintf(name, sizeof name, "model.layers.%d.w", i);
            if (ds_st_writer_declare(w, name, DS_BF16, 2, shape)) return die();
        }
        for (int i = 0; i < n; i++)
            if (ds_st_writer_data_f32(w, src, N)) return die();
        if (ds_st_writer_close(w)) return die();
        printf("st_write_seconds %.4f\n", ds_now() - t0);
        return 0;
    }
    if (!strcmp(mode, "st-read")) {
        double t0 = ds_now();
        ds_st_set *s;
        if (ds_st_set_open(&s, argv[2])) return die();
        double sum = 0;
        size_t cap = 0;
        float *out = NULL;
        for (int i = 0; i < ds_st_set_count(s); i++) {
            const ds_st_tensor *t = ds_st_set_tensor_at(s, i);
            if ((size_t)t->numel > cap) out = realloc(out, (cap = (size_t)t->numel) * 4);
            if (ds_st_read_f32(t, out, argv[2])) return die();
            sum += out[t->numel / 2];
        }
        printf("st_read_seconds %.4f\n", ds_now() - t0);
        fprintf(stderr, "checksum %g\n", sum);
        ds_st_set_close(s);
        free(out);
        return 0;
    }
    if (!strcmp(mode, "shard-write") && argc == 5) {
        char *data;
        size_t len;
        if (ds_read_file(argv[2], &data, &len, 0)) return die();
        const uint32_t *ids = (const uint32_t *)data;
        size_t n = len / 4;
        ds_shard_writer *w;
        ds_shard_meta m = {.vocab_size = (uint32_t)atoi(argv[4]), .eos_id = 0};
        double t0 = ds_now();
        if (ds_shard_writer_open(&w, argv[3], &m)) return die();
        for (size_t i = 0; i < n; i += 4096)
            if (ds_shard_writer_add_doc(w, ids + i, n - i < 4096 ? n - i : 4096)) return die();
        if (ds_shard_writer_close(w)) return die();
        printf("shard_write_seconds %.4f\n", ds_now() - t0);
        free(data);
        return 0;
    }
    if (!strcmp(mode, "shard-read") && argc == 4) {
        omp_set_num_threads(atoi(argv[3]));
        double t0 = ds_now();
        ds_shard *s;
        if (ds_shard_open(&s, argv[2])) return die();
        uint64_t n = ds_shard_info(s)->n_tokens;
        uint32_t *out = malloc(n * 4);
        if (ds_shard_read(s, 0, n, out)) return die();
        printf("shard_read_seconds %.4f\n", ds_now() - t0);
        ds_shard_close(s);
        free(out);
        return 0;
    }
    return 2;
}
