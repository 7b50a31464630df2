/* ref_arrays.h — the reference files the Python references in tests/ref write for the unit tests:
 * b"DSARR1\0\0", then records until EOF: uint32 name_len, name, uint8 dtype (0 f32, 1 u8, 2 u16), uint8 ndim,
 * uint64 dims[ndim], data (little-endian). */
#ifndef DS_TESTS_REF_ARRAYS_H
#define DS_TESTS_REF_ARRAYS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[64];
    int dtype, ndim;
    uint64_t dims[4];
    void *data;
    size_t bytes;
} ref_array;

static inline int load_arrays(const char *path, ref_array *arr, int max) {
    FILE *f = fopen(path, "rb");
    char magic[8];
    if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, "DSARR1\0\0", 8)) {
        if (f) fclose(f);
        return -1;
    }
    int n = 0;
    uint32_t len;
    while (n < max && fread(&len, 4, 1, f) == 1) {
        ref_array *a = &arr[n];
        uint8_t hdr[2];
        if (len >= sizeof a->name || fread(a->name, 1, len, f) != len || fread(hdr, 1, 2, f) != 2 || hdr[1] > 4) break;
        a->name[len] = 0;
        a->dtype = hdr[0], a->ndim = hdr[1];
        if (fread(a->dims, 8, a->ndim, f) != (size_t)a->ndim) break;
        size_t count = 1;
        for (int d = 0; d < a->ndim; d++) count *= a->dims[d];
        a->bytes = count * (a->dtype == 0 ? 4 : a->dtype == 2 ? 2 : 1);
        a->data = malloc(a->bytes ? a->bytes : 1);
        if (fread(a->data, 1, a->bytes, f) != a->bytes) break;
        n++;
    }
    fclose(f);
    return n;
}

static inline ref_array *find(ref_array *arr, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(arr[i].name, name)) return &arr[i];
    fprintf(stderr, "reference array %s missing\n", name);
    abort();
}

static inline int same_bytes(const void *a, const ref_array *r, size_t bytes) { return r->bytes == bytes && !memcmp(a, r->data, bytes); }

#endif
