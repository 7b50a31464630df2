/* libFuzzer harness: safetensors headers. Any input gives a clean error or a file whose tensors lie
 * inside the input, tile the data region, convert to float32, and read the same through the pipe
 * reader (which sees the bytes without seeking) as through the memory reader. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds_st_file *f = NULL;
    int rc = ds_st_open_memory(&f, data, size, 0, "fuzz");
    FILE *in = size ? fmemopen((void *)data, size, "rb") : NULL;
    ds_st_stream *s = NULL;
    int src = in ? ds_st_stream_open(&s, in, "fuzz") : 1;
    if (rc) {
        ds_st_stream_close(s);
        if (in) fclose(in);
        return 0;
    }
    if (src) abort(); /* the stream reader refused what the memory reader accepted */
    int n = ds_st_count(f);
    uint64_t covered = 0;
    for (int i = 0; i < n; i++) {
        const ds_st_tensor *t = ds_st_tensor_at(f, i);
        const uint8_t *p = t->data;
        if (p < data || p + t->nbytes > data + size) abort();
        if ((uint64_t)t->numel * ds_dtype_size(t->dtype) != t->nbytes) abort();
        if (ds_st_find(f, t->name) != t) abort();
        covered += t->nbytes;
        if (t->dtype != DS_F8_E4M3 && t->dtype != DS_F8_E5M2) {
            float *out = malloc((size_t)t->numel * 4 + 4);
            if (ds_st_read_f32(t, out, "fuzz")) abort();
            free(out);
        }
    }
    if (8 + covered > size) abort();
    /* the stream gives the same tensors in offset order with the same bytes */
    const ds_st_tensor *t;
    int k = 0;
    uint64_t off = 0;
    while (ds_st_stream_next(s, &t) == 0 && t) {
        const ds_st_tensor *m = ds_st_find(f, t->name);
        if (!m || m->offset != off || m->nbytes != t->nbytes || memcmp(m->data, t->data, t->nbytes)) abort();
        off += t->nbytes;
        k++;
    }
    if (k != n) abort();
    ds_st_stream_close(s);
    fclose(in);
    ds_st_close(f);
    return 0;
}
