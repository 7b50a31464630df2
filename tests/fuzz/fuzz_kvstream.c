/* libFuzzer harness: the prefill stream (infer/kvstream.h) as --decode-from reads it. Any input gives a
 * clean error or records whose fields are in range and whose arrays lie inside what was read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "infer/kvstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    FILE *f = fmemopen((void *)data, size, "rb");
    if (!f) return 0;
    ds_kvs_reader *r = NULL;
    if (!ds_kvs_reader_open(&r, f, "fuzz", NULL)) {
        const ds_kvs_record *x;
        int got = 1;
        while (got && !ds_kvs_read(r, &x, &got)) {
            if (!got) break;
            if (x->prompt_len < 1 || x->truncated < 0 || x->q_n < 0 || (!x->has_draft && x->q_n)) abort();
            volatile float sink = 0; /* touch both ends of every array: ASan checks they were read */
            sink += (float)x->prompt[0] + (float)x->prompt[x->prompt_len - 1] + x->rows[0];
            if (x->q_n) sink += (float)(x->q_p[x->q_n - 1] + x->q_ids[x->q_n - 1]);
            (void)sink;
        }
        ds_kvs_reader_free(r);
    }
    fclose(f);
    return 0;
}
