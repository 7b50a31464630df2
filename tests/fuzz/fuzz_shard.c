/* libFuzzer harness: token shards. Any input gives a clean error or a shard whose tokens are all
 * below the vocabulary, number n_tokens with n_docs EOS, and read the same sequentially from a pipe
 * as by random access. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/shard.h"

enum { MAX_TOKENS = 1 << 20 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds_shard *s;
    if (ds_shard_open_memory(&s, data, size, "fuzz")) return 0;
    const ds_shard_info_t *in = ds_shard_info(s);
    uint64_t n = in->n_tokens < MAX_TOKENS ? in->n_tokens : MAX_TOKENS;
    uint32_t *all = malloc(n * 4 + 4);
    int ok = ds_shard_read(s, 0, (size_t)n, all) == 0;
    if (ok) {
        uint64_t eos = 0;
        for (uint64_t i = 0; i < n; i++) {
            if (all[i] >= in->vocab_size) abort();
            eos += all[i] == in->eos_id;
        }
        if (n == in->n_tokens && eos != in->n_docs) abort();
        /* pieces read back the same */
        uint32_t piece[7];
        for (uint64_t i = 0; i + 7 <= n; i += 1 + n / 5)
            if (ds_shard_read(s, i, 7, piece) || memcmp(piece, all + i, sizeof piece)) abort();
    }
    /* the pipe reader: same tokens, and no error where random access found none */
    FILE *f = fmemopen((void *)data, size, "rb");
    if (f && ok && n == in->n_tokens) {
        FILE *saved = stdin;
        stdin = f;
        ds_shard *p = NULL;
        int rc = ds_shard_open(&p, "-");
        stdin = saved;
        uint64_t got_total = 0;
        uint32_t buf[4096];
        size_t got;
        while (!rc && (rc = ds_shard_next(p, buf, 4096, &got)) == 0 && got) {
            if (got_total + got > n || memcmp(buf, all + got_total, got * 4)) abort();
            got_total += got;
        }
        if (rc || got_total != n) abort();
        ds_shard_close(p);
    }
    if (f) fclose(f);
    free(all);
    ds_shard_close(s);
    return 0;
}
