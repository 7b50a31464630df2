/* Unit tests for io/safetensors: round trips of every dtype (file, memory, pipe), layout details,
 * float32 conversion, shards and index, writer misuse, and every malformed-input error message.
 * Cross-checks against Python's safetensors package are in tests/ref/safetensors.bats. */
#include "tap.h"

#include "core/dtype.h"
#include "core/err.h"
#include "core/file.h"
#include "io/json.h"
#include "io/safetensors.h"

#include <jansson.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i] = (unsigned char)(seed >> 16);
    }
}

/* One tensor of every dtype, shapes including a scalar and an empty tensor. */
typedef struct {
    const char *name;
    ds_dtype dt;
    int ndim;
    int64_t shape[3];
} spec;
static const spec all_types[] = {
    {"f64", DS_F64, 2, {3, 5}},     {"f32", DS_F32, 1, {7}},          {"f16", DS_F16, 3, {2, 3, 4}},
    {"bf16", DS_BF16, 2, {4, 4}},   {"f8e4m3", DS_F8_E4M3, 2, {3, 3}}, {"f8e5m2", DS_F8_E5M2, 1, {9}},
    {"i64", DS_I64, 1, {2}},        {"i32", DS_I32, 0, {0}},          {"i16", DS_I16, 1, {5}},
    {"i8", DS_I8, 1, {11}},         {"u8", DS_U8, 2, {1, 13}},        {"bool", DS_BOOL, 1, {6}},
    {"empty", DS_F32, 2, {0, 4}},
};
#define NT ((int)(sizeof all_types / sizeof all_types[0]))

static size_t spec_bytes(const spec *s) {
    size_t n = ds_dtype_size(s->dt);
    for (int d = 0; d < s->ndim; d++) n *= (size_t)s->shape[d];
    return n;
}

static int write_all_types(const char *path, unsigned char **datas, const ds_st_write_opts *opts) {
    ds_st_writer *w;
    DS_TRY(ds_st_writer_open(&w, path, opts));
    ds_st_writer_meta(w, "purpose", "unit test");
    ds_st_writer_meta(w, "config", "{\"a\": 1}");
    for (int i = 0; i < NT; i++) ds_st_writer_declare(w, all_types[i].name, all_types[i].dt, all_types[i].ndim, all_types[i].shape);
    for (int i = 0; i < NT; i++) {
        size_t n = spec_bytes(&all_types[i]);
        datas[i] = malloc(n + 1);
        fill(datas[i], n, (unsigned)i + 1);
        if (all_types[i].dt == DS_BOOL)
            for (size_t j = 0; j < n; j++) datas[i][j] &= 1;
        /* write in two pieces to exercise split writes */
        size_t h = n / 2;
        if (ds_st_writer_data(w, datas[i], h) || ds_st_writer_data(w, datas[i] + h, n - h)) {
            ds_st_writer_abort(w);
            return DS_ERR;
        }
    }
    return ds_st_writer_close(w);
}

static void check_all_types(const char *what, int count, const ds_st_tensor *(*at)(const void *, int), const void *h,
                            unsigned char **datas) {
    int ok = count == NT;
    for (int i = 0; ok && i < NT; i++) {
        const ds_st_tensor *t = at(h, i);
        ok = t && !strcmp(t->name, all_types[i].name) && t->dtype == all_types[i].dt && t->ndim == all_types[i].ndim &&
             (all_types[i].ndim == 0 || !memcmp(t->shape, all_types[i].shape, (size_t)t->ndim * 8)) &&
             t->nbytes == spec_bytes(&all_types[i]) && (t->nbytes == 0 || !memcmp(t->data, datas[i], t->nbytes));
        if (!ok) printf("# mismatch at %s\n", all_types[i].name);
    }
    CHECK(ok, "%s: every dtype, shape and byte read back", what);
}

static const ds_st_tensor *file_at(const void *h, int i) { return ds_st_tensor_at(h, i); }
static const ds_st_tensor *set_at(const void *h, int i) { return ds_st_set_tensor_at(h, i); }

TEST(round_trip_every_dtype) {
    unsigned char *datas[NT];
    const char *path = tap_tmp("all.safetensors");
    int rc = write_all_types(path, datas, NULL);
    CHECK(rc == 0, "written: %s", ds_errmsg());
    ds_st_file *f;
    rc = ds_st_open(&f, path);
    CHECK(rc == 0, "mmap open: %s", ds_errmsg());
    if (rc) return;
    check_all_types("mmap", ds_st_count(f), file_at, f, datas);
    CHECK(!strcmp(ds_st_meta(f, "format"), "pt") && !strcmp(ds_st_meta(f, "purpose"), "unit test") &&
              !strcmp(ds_st_meta(f, "config"), "{\"a\": 1}") && ds_st_meta_count(f) == 3 && !ds_st_meta(f, "nope"),
          "metadata: format pt first, then ours");
    CHECK(ds_st_find(f, "bf16") == ds_st_tensor_at(f, 3) && !ds_st_find(f, "zzz"), "lookup by name");
    ds_st_close(f);

    /* layout: header length multiple of 8, padded with spaces, tensors contiguous in declaration order */
    char *img;
    size_t len;
    ds_read_file(path, &img, &len, 0);
    uint64_t n;
    memcpy(&n, img, 8);
    CHECK(n % 8 == 0 && n + 8 <= len, "header length %llu is a multiple of 8", (unsigned long long)n);
    size_t end = 8 + n;
    while (end > 8 && img[end - 1] == ' ') end--;
    CHECK(img[8] == '{' && img[end - 1] == '}' && 8 + n - end < 8, "JSON then fewer than 8 spaces");
    CHECK(!strncmp(img + 8, "{\"__metadata__\":{\"format\":\"pt\",", 31), "__metadata__ first, format pt first: %.40s", img + 8);
    ds_st_file *m;
    rc = ds_st_open_memory(&m, img, len, 1, "mem");
    free(img);
    CHECK(rc == 0, "memory open (copied buffer outlives the source)");
    if (!rc) {
        check_all_types("memory", ds_st_count(m), file_at, m, datas);
        uint64_t off = 0;
        int contiguous = 1;
        for (int i = 0; i < ds_st_count(m); i++) {
            contiguous &= ds_st_tensor_at(m, i)->offset == off;
            off += ds_st_tensor_at(m, i)->nbytes;
        }
        CHECK(contiguous, "tensors contiguous in declaration order");
        ds_st_close(m);
    }
    for (int i = 0; i < NT; i++) free(datas[i]);
}

TEST(stream_through_a_pipe_both_ways) {
    /* child: write with the writer to stdout (a pipe); parent: read with the stream reader */
    int fds[2];
    if (pipe(fds)) return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        close(fds[1]);
        unsigned char *datas[NT];
        _exit(write_all_types("-", datas, NULL) ? 1 : 0);
    }
    close(fds[1]);
    FILE *in = fdopen(fds[0], "rb");
    ds_st_stream *s;
    int rc = ds_st_stream_open(&s, in, "<pipe>");
    CHECK(rc == 0, "stream header: %s", ds_errmsg());
    unsigned char *datas[NT];
    for (int i = 0; i < NT; i++) {
        size_t n = spec_bytes(&all_types[i]);
        datas[i] = malloc(n + 1);
        fill(datas[i], n, (unsigned)i + 1);
        if (all_types[i].dt == DS_BOOL)
            for (size_t j = 0; j < n; j++) datas[i][j] &= 1;
    }
    if (!rc) {
        CHECK(ds_st_stream_count(s) == NT && !strcmp(ds_st_stream_meta(s, "format"), "pt") &&
                  !strcmp(ds_st_stream_meta(s, "purpose"), "unit test"),
              "header info before any data");
        int i = 0, ok = 1;
        const ds_st_tensor *t;
        while (ds_st_stream_next(s, &t) == 0 && t) {
            ok &= i < NT && !strcmp(t->name, all_types[i].name) && (t->nbytes == 0 || !memcmp(t->data, datas[i], t->nbytes));
            i++;
        }
        CHECK(ok && i == NT, "tensors arrive in offset order with their bytes (%d)", i);
        ds_st_stream_close(s);
    }
    fclose(in);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer to a pipe succeeded");
    for (int i = 0; i < NT; i++) free(datas[i]);
}

static int fake_fp8(float *dst, const void *src, ds_dtype t, size_t n) {
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) dst[i] = (float)s[i] + (t == DS_F8_E5M2 ? 1000.0f : 0.0f);
    return 0;
}

TEST(read_as_float32) {
    /* a 1-byte tensor first puts the BF16/F32 data at odd offsets: the unaligned path */
    enum { N = 5000 };
    float src[N];
    for (int i = 0; i < N; i++) src[i] = (float)(i - 2500) * 0.37f + 1e-3f * (float)(i % 7);
    ds_st_writer *w;
    const char *path = tap_tmp("f32.safetensors");
    ds_st_writer_open(&w, path, NULL);
    int64_t one = 1, n = N;
    ds_st_writer_declare(w, "pad", DS_U8, 1, &one);
    ds_st_writer_declare(w, "bf", DS_BF16, 1, &n);
    ds_st_writer_declare(w, "hf", DS_F16, 1, &n);
    ds_st_writer_declare(w, "f", DS_F32, 1, &n);
    ds_st_writer_declare(w, "e4", DS_F8_E4M3, 1, &one);
    unsigned char b = 7;
    ds_st_writer_data(w, &b, 1);
    ds_st_writer_data_f32(w, src, 1000);
    ds_st_writer_data_f32(w, src + 1000, N - 1000); /* in pieces */
    ds_st_writer_data_f32(w, src, N);
    ds_st_writer_data_f32(w, src, N);
    ds_st_writer_data(w, &b, 1);
    int rc = ds_st_writer_close(w);
    CHECK(rc == 0, "written with float32 conversion: %s", ds_errmsg());
    ds_st_file *f;
    if (ds_st_open(&f, path)) return;
    float out[N];
    int ok = 1;
    CHECK(((uintptr_t)ds_st_find(f, "bf")->data & 1) == 1, "bf16 data is at an odd address");
    CHECK(ds_st_read_f32(ds_st_find(f, "bf"), out, path) == 0, "bf16 read");
    for (int i = 0; i < N; i++) ok &= out[i] == ds_bf16_to_f32(ds_f32_to_bf16(src[i]));
    CHECK(ok, "bf16 values round to nearest even");
    CHECK(ds_st_read_f32(ds_st_find(f, "hf"), out, path) == 0, "f16 read");
    ok = 1;
    for (int i = 0; i < N; i++) ok &= out[i] == ds_f16_to_f32(ds_f32_to_f16(src[i]));
    CHECK(ok, "f16 values");
    CHECK(ds_st_read_f32(ds_st_find(f, "f"), out, path) == 0 && !memcmp(out, src, sizeof src), "f32 exact");
    ds_st_set_fp8_decoder(NULL);
    ds_err_clear();
    char want[700];
    snprintf(want, sizeof want, "safetensors: tensor \"e4\": F8_E4M3 to float32 needs the fp8 decoder (ds_st_set_fp8_decoder): %s", path);
    CHECK(ds_st_read_f32(ds_st_find(f, "e4"), out, path) == DS_ERR && !strcmp(ds_errmsg(), want), "fp8 without a decoder: %s",
          ds_errmsg());
    ds_st_set_fp8_decoder(fake_fp8);
    CHECK(ds_st_read_f32(ds_st_find(f, "e4"), out, path) == 0 && out[0] == 7.0f, "fp8 through the registered decoder");
    ds_st_set_fp8_decoder(NULL);
    ds_st_close(f);
}

TEST(large_tensor_conversion_is_thread_count_independent) {
    enum { N = (1 << 24) + 12345 }; /* above the size where conversion goes parallel */
    uint16_t *bf = malloc((size_t)N * 2);
    float *a = malloc((size_t)N * 4), *b = malloc((size_t)N * 4);
    fill(bf, (size_t)N * 2, 99);
    ds_st_tensor t = {.name = "x", .dtype = DS_BF16, .ndim = 1, .shape = {N}, .numel = N, .nbytes = (uint64_t)N * 2, .data = bf};
    omp_set_num_threads(1);
    CHECK(ds_st_read_f32(&t, a, "mem") == 0, "converted with 1 thread");
    omp_set_num_threads(2);
    CHECK(ds_st_read_f32(&t, b, "mem") == 0, "converted with 2 threads");
    int ok = !memcmp(a, b, (size_t)N * 4);
    for (int i = 0; ok && i < N; i++) {
        float r = ds_bf16_to_f32(bf[i]);
        ok = !memcmp(&r, &a[i], 4);
    }
    CHECK(ok, "every element equals the scalar conversion (bitwise, NaNs included), whatever the thread count");
    free(bf);
    free(a);
    free(b);
}

TEST(shards_and_index) {
    unsigned char *datas[NT];
    const char *dir = tap_tmp("sharded");
    ds_mkdir_p(dir);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ds_st_write_opts o = {.max_shard_bytes = 100};
    int rc = write_all_types(path, datas, &o);
    CHECK(rc == 0, "sharded write: %s", ds_errmsg());
    char idx[700];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    json_t *j = json_load_file(idx, 0, NULL);
    CHECK(j != NULL, "index written");
    json_t *wm = json_object_get(j, "weight_map");
    int shards = tap_count_entries(dir, "model-");
    CHECK(shards >= 3, "%d shards", shards);
    char want[64];
    snprintf(want, sizeof want, "model-00001-of-%05d.safetensors", shards);
    CHECK(!strcmp(json_string_value(json_object_get(wm, "f64")), want), "first tensor in %s", want);
    size_t total = 0;
    for (int i = 0; i < NT; i++) total += spec_bytes(&all_types[i]);
    CHECK((size_t)json_integer_value(json_object_get(json_object_get(j, "metadata"), "total_size")) == total,
          "metadata.total_size = %zu", total);
    const char *prev = "";
    int sorted = 1;
    const char *k;
    json_t *v;
    json_object_foreach(wm, k, v) {
        sorted &= strcmp(prev, k) < 0;
        prev = k;
    }
    CHECK(sorted && json_object_size(wm) == NT, "weight_map sorted by name, every tensor");
    json_decref(j);
    CHECK(!ds_path_exists(path), "no model.safetensors next to the shards");

    ds_st_set *s;
    rc = ds_st_set_open(&s, dir);
    CHECK(rc == 0, "set from the directory: %s", ds_errmsg());
    if (!rc) {
        check_all_types("shards", ds_st_set_count(s), set_at, s, datas);
        CHECK(ds_st_set_shard_count(s) == shards && !strcmp(ds_st_set_file_of(s, "f64"), want) &&
                  !strcmp(ds_st_set_meta(s, "purpose"), "unit test") && ds_st_set_find(s, "bool") &&
                  !ds_st_set_find(s, "none"),
              "lookup across shards");
        ds_st_set_close(s);
    }
    for (int i = 0; i < NT; i++) free(datas[i]);

    /* a tensor larger than the limit gets its own shard; everything fitting makes one plain file */
    const char *dir2 = tap_tmp("single");
    ds_mkdir_p(dir2);
    snprintf(path, sizeof path, "%s/model.safetensors", dir2);
    o.max_shard_bytes = 1 << 20;
    rc = write_all_types(path, datas, &o);
    CHECK(rc == 0 && ds_path_exists(path) && tap_count_entries(dir2, "model-") == 0 &&
              tap_count_entries(dir2, "model.safetensors.index") == 0,
          "fits in one shard: plain model.safetensors, no index");
    rc = ds_st_set_open(&s, path);
    CHECK(rc == 0 && ds_st_set_count(s) == NT, "set from a single file");
    if (!rc) ds_st_set_close(s);
    for (int i = 0; i < NT; i++) free(datas[i]);
}

TEST(writer_misuse) {
    ds_st_writer *w;
    int64_t shape[1] = {4};
    const char *path = tap_tmp("misuse.safetensors");
    ds_st_writer_open(&w, path, NULL);
    ds_st_writer_declare(w, "a", DS_F32, 1, shape);
    CHECK(ds_st_writer_declare(w, "a", DS_F32, 1, shape) == DS_ERR &&
              strstr(ds_errmsg(), "safetensors: duplicate tensor \"a\": "),
          "duplicate name: %s", ds_errmsg());
    CHECK(ds_st_writer_declare(w, "__metadata__", DS_F32, 1, shape) == DS_ERR, "reserved name");
    int64_t neg = -1;
    CHECK(ds_st_writer_declare(w, "n", DS_F32, 1, &neg) == DS_ERR && strstr(ds_errmsg(), "bad shape"), "negative dim");
    float x[4] = {1, 2, 3, 4};
    ds_st_writer_data(w, x, 8);
    CHECK(ds_st_writer_declare(w, "b", DS_F32, 1, shape) == DS_ERR && strstr(ds_errmsg(), "declared after data"),
          "declare after data: %s", ds_errmsg());
    CHECK(ds_st_writer_meta(w, "k", "v") == DS_ERR && strstr(ds_errmsg(), "after data"), "meta after data");
    CHECK(ds_st_writer_close(w) == DS_ERR && strstr(ds_errmsg(), "safetensors: tensor \"a\" got 8 of 16 bytes: "),
          "incomplete close: %s", ds_errmsg());
    CHECK(!ds_path_exists(path) && tap_count_entries(tap_tmpdir(), "misuse") == 0, "nothing left behind after a failed write");

    ds_st_writer_open(&w, path, NULL);
    ds_st_writer_declare(w, "a", DS_F32, 1, shape);
    CHECK(ds_st_writer_data(w, x, 20) == DS_ERR && strstr(ds_errmsg(), "4 bytes of data beyond the declared tensors"),
          "too much data: %s", ds_errmsg());
    ds_st_writer_abort(w);
    ds_st_writer_open(&w, path, NULL);
    ds_st_writer_declare(w, "i", DS_I32, 1, shape);
    CHECK(ds_st_writer_data_f32(w, x, 4) == DS_ERR && strstr(ds_errmsg(), "float32 data cannot be stored as I32"),
          "f32 into an int tensor: %s", ds_errmsg());
    ds_st_writer_abort(w);
    CHECK(tap_count_entries(tap_tmpdir(), "misuse") == 0, "abort removes the temp file");

    /* zero tensors is a valid file */
    CHECK(ds_st_save(path, NULL, 0, NULL, 0, NULL) == 0, "empty file written");
    ds_st_file *f;
    CHECK(ds_st_open(&f, path) == 0 && ds_st_count(f) == 0 && !strcmp(ds_st_meta(f, "format"), "pt"), "and read");
    ds_st_close(f);
}

/* ---- malformed input ------------------------------------------------------------------------ */

static size_t image(unsigned char *buf, const char *header, size_t data_len) {
    uint64_t n = strlen(header);
    memcpy(buf, &n, 8);
    memcpy(buf + 8, header, n);
    memset(buf + 8 + n, 0, data_len);
    return 8 + n + data_len;
}

TEST(bad_headers_give_one_line_errors) {
    static const struct {
        const char *header;
        size_t data;
        const char *msg;
    } cases[] = {
        {"[1]", 0, "safetensors: header does not start with '{': t"},
        {"", 0, "safetensors: header does not start with '{': t"},
        {"{\"a\":", 0, "safetensors: header: bad JSON: line 1 column 5: unexpected token near end of file: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{}}", 4,
         "safetensors: header: bad JSON: line 1 column 57: duplicate object key near '\"a\"': t"},
        {"{} x", 0, "safetensors: header: bad JSON: line 1 column 4: end of file expected near 'x': t"},
        {"{\"a\":3}", 0, "safetensors: tensor \"a\": entry must be an object: t"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "safetensors: tensor \"a\": dtype must be a string: t"},
        {"{\"a\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "safetensors: tensor \"a\": unknown dtype \"F7\": t"},
        {"{\"a\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "safetensors: tensor \"a\": unknown dtype \"U32\": t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         "safetensors: tensor \"a\": shape must be an array of non-negative integers: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4,
         "safetensors: tensor \"a\": shape must be an array of non-negative integers: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "safetensors: tensor \"a\": more than 8 dimensions: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
         "safetensors: tensor \"a\": shape overflows (element count or byte size above 2^63): t"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,4]}}", 4,
         "safetensors: tensor \"a\": shape overflows (element count or byte size above 2^63): t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
         "safetensors: tensor \"a\": data_offsets must be [begin, end] with 0 <= begin <= end: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
         "safetensors: tensor \"a\": data_offsets must be [begin, end] with 0 <= begin <= end: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
         "safetensors: tensor \"a\": data_offsets span 4 bytes but shape [2] of F32 needs 8: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
         "safetensors: tensor \"a\": data_offsets [0, 8] past the end of the data (4 bytes): t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "safetensors: tensors \"a\" and \"b\" overlap: t"},
        {"{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         12, "safetensors: gap in the data before tensor \"b\" (bytes 4 to 8 unused): t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         "safetensors: gap in the data before tensor \"a\" (bytes 0 to 4 unused): t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6, "safetensors: 2 bytes after the last tensor: t"},
        {"{\"__metadata__\":{\"format\":1}}", 0, "safetensors: __metadata__: value of \"format\" must be a string: t"},
        {"{\"__metadata__\":[]}", 0, "safetensors: __metadata__ must be an object of strings: t"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 4,
         "safetensors: header: bad JSON: line 1 column 70: too big integer near '18446744073709551615': t"},
    };
    unsigned char buf[1024];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = image(buf, cases[i].header, cases[i].data);
        ds_st_file *f = NULL;
        ds_err_clear();
        int rc = ds_st_open_memory(&f, buf, len, 0, "t");
        CHECK(rc == DS_ERR && f == NULL && !strcmp(ds_errmsg(), cases[i].msg), "%s -> %s", cases[i].header, ds_errmsg());
        if (!rc) ds_st_close(f);
    }
    /* the length field itself */
    ds_st_file *f;
    CHECK(ds_st_open_memory(&f, buf, 0, 0, "t") == DS_ERR && !strcmp(ds_errmsg(), "safetensors: empty input: t"), "empty");
    CHECK(ds_st_open_memory(&f, buf, 5, 0, "t") == DS_ERR &&
              !strcmp(ds_errmsg(), "safetensors: truncated: 5 bytes, the header length alone takes 8: t"),
          "5 bytes: %s", ds_errmsg());
    uint64_t big = 100000001;
    memcpy(buf, &big, 8);
    CHECK(ds_st_open_memory(&f, buf, 64, 0, "t") == DS_ERR &&
              !strcmp(ds_errmsg(), "safetensors: header too large: 100000001 bytes (limit 100000000): t"),
          "too large: %s", ds_errmsg());
    big = 57;
    memcpy(buf, &big, 8);
    CHECK(ds_st_open_memory(&f, buf, 64, 0, "t") == DS_ERR &&
              !strcmp(ds_errmsg(), "safetensors: header length 57 past the end of the file (64 bytes): t"),
          "past the end: %s", ds_errmsg());
    CHECK(ds_st_open(&f, "/nonexistent.safetensors") == DS_ERR &&
              !strcmp(ds_errmsg(), "cannot open: No such file or directory: /nonexistent.safetensors"),
          "missing file");
    CHECK(ds_st_open(&f, tap_tmpdir()) == DS_ERR && strstr(ds_errmsg(), "is a directory: "), "directory");
}

TEST(stream_errors) {
    unsigned char buf[256];
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    size_t len = image(buf, hdr, 16);
    struct {
        size_t cut;
        const char *msg;
    } cases[] = {
        {0, "safetensors: empty input: s"},
        {3, "safetensors: truncated: 3 bytes, the header length alone takes 8: s"},
        {20, "safetensors: header length 55 past the end of the input (12 header bytes): s"},
    };
    for (size_t i = 0; i < 3; i++) {
        FILE *f = fmemopen(buf, cases[i].cut ? cases[i].cut : 1, "rb");
        if (!cases[i].cut) fgetc(f);
        ds_st_stream *s = NULL;
        CHECK(ds_st_stream_open(&s, f, "s") == DS_ERR && !strcmp(ds_errmsg(), cases[i].msg), "cut at %zu: %s",
              cases[i].cut, ds_errmsg());
        fclose(f);
    }
    FILE *f = fmemopen(buf, len - 3, "rb");
    ds_st_stream *s;
    CHECK(ds_st_stream_open(&s, f, "s") == 0, "header of a truncated stream");
    const ds_st_tensor *t;
    CHECK(ds_st_stream_next(s, &t) == DS_ERR &&
              !strcmp(ds_errmsg(), "safetensors: truncated: tensor \"a\" needs 16 bytes, got 13: s"),
          "truncated data: %s", ds_errmsg());
    ds_st_stream_close(s);
    fclose(f);
    /* trailing bytes after the last tensor are not read from a stream (it may carry more) */
    unsigned char buf2[300];
    memcpy(buf2, buf, len);
    memcpy(buf2 + len, "MORE", 4);
    f = fmemopen(buf2, len + 4, "rb");
    CHECK(ds_st_stream_open(&s, f, "s") == 0 && ds_st_stream_next(s, &t) == 0 && t && ds_st_stream_next(s, &t) == 0 && !t,
          "stream ends at the last tensor");
    char rest[8] = {0};
    CHECK(fread(rest, 1, 8, f) == 4 && !memcmp(rest, "MORE", 4), "the following bytes are left unread");
    ds_st_stream_close(s);
    fclose(f);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

TEST(index_errors) {
    const char *dir = tap_tmp("badindex");
    ds_mkdir_p(dir);
    char idx[600], shard[600];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    snprintf(shard, sizeof shard, "%s/s1.safetensors", dir);
    float x[2] = {1, 2};
    ds_st_tensor t = {.name = "w", .dtype = DS_F32, .ndim = 1, .shape = {2}, .numel = 2, .data = x};
    ds_st_save(shard, &t, 1, NULL, 0, NULL);
    static const struct { const char *json, *msg; } cases[] = {
        {"{\"weight_map\":[]}", "safetensors index: weight_map must be an object: "},
        {"{\"weight_map\":{\"w\":\"../s1.safetensors\"}}",
         "safetensors index: weight_map: \"w\": shard must be a file name in the index's directory: "},
        {"{\"weight_map\":{\"w\":5}}", "safetensors index: weight_map: \"w\": shard must be a file name in the index's directory: "},
        {"{\"weight_map\":{\"v\":\"s1.safetensors\"}}", "safetensors index: tensor \"v\" not found in s1.safetensors: "},
        {"{\"weight_map\":{\"w\":\"s2.safetensors\"}}", "cannot open: No such file or directory: "},
        {"{\"weight_map\":", "safetensors index: bad JSON: line 1 column 14: "},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(idx, cases[i].json);
        ds_st_set *s = NULL;
        CHECK(ds_st_set_open(&s, dir) == DS_ERR && !strncmp(ds_errmsg(), cases[i].msg, strlen(cases[i].msg)), "%s -> %s",
              cases[i].json, ds_errmsg());
    }
    write_text(idx, "{\"metadata\":{\"total_size\":8},\"weight_map\":{\"w\":\"s1.safetensors\"}}");
    ds_st_set *s;
    CHECK(ds_st_set_open(&s, idx) == 0 && ds_st_set_count(s) == 1 && !strcmp(ds_st_set_file_of(s, "w"), "s1.safetensors"),
          "valid hand-written index");
    ds_st_set_close(s);
    const char *empty = tap_tmp("emptydir");
    ds_mkdir_p(empty);
    CHECK(ds_st_set_open(&s, empty) == DS_ERR &&
              strstr(ds_errmsg(), "safetensors: no model.safetensors or model.safetensors.index.json in the directory: "),
          "empty directory: %s", ds_errmsg());
}

TEST(many_tensors_are_fast) {
    /* 100k tensors: declaration, index and lookup must not be quadratic */
    enum { N = 100000 };
    const char *dir = tap_tmp("many");
    ds_mkdir_p(dir);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ds_st_writer *w;
    ds_st_write_opts o = {.max_shard_bytes = 40000};
    ds_st_writer_open(&w, path, &o);
    int64_t one = 1;
    char name[64];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.w", i / 256, i % 256);
        ds_st_writer_declare(w, name, DS_F32, 1, &one);
    }
    for (int i = 0; i < N; i++) {
        float v = (float)i;
        ds_st_writer_data(w, &v, 4);
    }
    int rc = ds_st_writer_close(w);
    CHECK(rc == 0, "written: %s", ds_errmsg());
    ds_st_set *s;
    rc = ds_st_set_open(&s, dir);
    CHECK(rc == 0 && ds_st_set_count(s) == N && ds_st_set_shard_count(s) == 10, "read back (%d shards)",
          rc ? 0 : ds_st_set_shard_count(s));
    if (rc) return;
    int ok = 1;
    for (int i = 0; i < N; i += 997) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.w", i / 256, i % 256);
        const ds_st_tensor *t = ds_st_set_find(s, name);
        float v;
        ok &= t && (memcpy(&v, t->data, 4), v == (float)i);
    }
    CHECK(ok, "lookups find the right values");
    ds_st_set_close(s);
}

/* ---- reference helpers (tests/ref/safetensors.bats) ---------------------------------------- */

static void hex(json_t *arr_owner, const char *key, const void *p, size_t n) {
    char *s = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++) snprintf(s + 2 * i, 3, "%02x", ((const unsigned char *)p)[i]);
    s[2 * n] = 0;
    json_object_set_new(arr_owner, key, json_string(s));
    free(s);
}

static json_t *describe(const ds_st_tensor *t) {
    json_t *shape = json_array();
    for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
    json_t *o = json_pack("{s:s,s:s,s:o}", "name", t->name, "dtype", ds_dtype_name(t->dtype), "shape", shape);
    hex(o, "hex", t->data, t->nbytes);
    if (t->dtype == DS_F32 || t->dtype == DS_BF16 || t->dtype == DS_F16) {
        float *f = malloc((size_t)t->numel * 4 + 4);
        ds_st_read_f32(t, f, "dump");
        hex(o, "f32hex", f, (size_t)t->numel * 4);
        free(f);
    }
    return o;
}

/* DS_ST_DUMP=file|stream|set:IN:OUT — our reading of IN as JSON {meta, tensors: [{name, dtype, shape,
 * hex, f32hex}]}; "stream" reads IN ("-" = stdin) without seeking. */
TEST(reference_dump) {
    const char *env = getenv("DS_ST_DUMP");
    if (!env) return;
    char mode[16], in[2048], out[2048];
    if (sscanf(env, "%15[^:]:%2047[^:]:%2047s", mode, in, out) != 3) return;
    json_t *meta = json_object(), *tensors = json_array();
    int rc;
    if (!strcmp(mode, "stream")) {
        FILE *f = ds_is_stdio(in) ? stdin : fopen(in, "rb");
        ds_st_stream *s;
        rc = ds_st_stream_open(&s, f, in);
        if (!rc) {
            for (int i = 0; i < ds_st_stream_meta_count(s); i++) {
                const char *k, *v;
                ds_st_stream_meta_at(s, i, &k, &v);
                json_object_set_new(meta, k, json_string(v));
            }
            const ds_st_tensor *t;
            while (!(rc = ds_st_stream_next(s, &t)) && t) json_array_append_new(tensors, describe(t));
            ds_st_stream_close(s);
        }
    } else if (!strcmp(mode, "set")) {
        ds_st_set *s;
        rc = ds_st_set_open(&s, in);
        if (!rc) {
            for (int i = 0; i < ds_st_set_count(s); i++) json_array_append_new(tensors, describe(ds_st_set_tensor_at(s, i)));
            const char *fmt = ds_st_set_meta(s, "format");
            if (fmt) json_object_set_new(meta, "format", json_string(fmt));
            ds_st_set_close(s);
        }
    } else {
        ds_st_file *f;
        rc = ds_st_open(&f, in);
        if (!rc) {
            for (int i = 0; i < ds_st_meta_count(f); i++) {
                const char *k, *v;
                ds_st_meta_at(f, i, &k, &v);
                json_object_set_new(meta, k, json_string(v));
            }
            for (int i = 0; i < ds_st_count(f); i++) json_array_append_new(tensors, describe(ds_st_tensor_at(f, i)));
            ds_st_close(f);
        }
    }
    CHECK(rc == 0, "read %.200s: %s", in, ds_errmsg());
    json_t *o = json_pack("{s:o,s:o}", "meta", meta, "tensors", tensors);
    if (rc) json_object_set_new(o, "error", json_string(ds_errmsg()));
    json_dump_file(o, out, 0);
    json_decref(o);
}

static int unhex(const char *s, unsigned char **out, size_t *n) {
    size_t len = strlen(s);
    *n = len / 2;
    *out = malloc(*n + 1);
    for (size_t i = 0; i < *n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        (*out)[i] = (unsigned char)v;
    }
    return 0;
}

/* DS_ST_WRITE=SPEC:OUT — write OUT from SPEC {"meta": {...}, "max_shard_bytes": N, "tensors":
 * [{name, dtype, shape, hex} or {name, dtype, shape, f32hex} (float32 values to convert)]} with our writer. */
TEST(reference_write) {
    const char *env = getenv("DS_ST_WRITE");
    if (!env) return;
    char in[2048], out[2048];
    if (sscanf(env, "%2047[^:]:%2047s", in, out) != 2) return;
    json_t *plan = json_load_file(in, 0, NULL);
    CHECK(plan != NULL, "spec %.200s parses", in);
    if (!plan) return;
    ds_st_write_opts o = {.max_shard_bytes = (uint64_t)json_integer_value(json_object_get(plan, "max_shard_bytes"))};
    ds_st_writer *w;
    int rc = ds_st_writer_open(&w, out, &o);
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(plan, "meta"), k, v) if (!rc) rc = ds_st_writer_meta(w, k, json_string_value(v));
    json_t *ts = json_object_get(plan, "tensors");
    for (size_t i = 0; !rc && i < json_array_size(ts); i++) {
        json_t *t = json_array_get(ts, i);
        int64_t shape[DS_ST_MAX_DIMS];
        json_t *sh = json_object_get(t, "shape");
        for (size_t d = 0; d < json_array_size(sh); d++) shape[d] = json_integer_value(json_array_get(sh, d));
        rc = ds_st_writer_declare(w, json_string_value(json_object_get(t, "name")),
                                  ds_dtype_from_name(json_string_value(json_object_get(t, "dtype"))), (int)json_array_size(sh),
                                  shape);
    }
    for (size_t i = 0; !rc && i < json_array_size(ts); i++) {
        json_t *t = json_array_get(ts, i);
        if (json_object_get(t, "f32hex")) {
            unsigned char *b;
            size_t n;
            unhex(json_string_value(json_object_get(t, "f32hex")), &b, &n);
            float *f = malloc(n + 4);
            memcpy(f, b, n);
            rc = ds_st_writer_data_f32(w, f, n / 4);
            free(f);
            free(b);
        } else {
            unsigned char *b;
            size_t n;
            unhex(json_string_value(json_object_get(t, "hex")), &b, &n);
            rc = ds_st_writer_data(w, b, n);
            free(b);
        }
    }
    if (!rc) rc = ds_st_writer_close(w);
    else ds_st_writer_abort(w);
    CHECK(rc == 0, "wrote %.200s: %s", out, ds_errmsg());
    json_decref(plan);
}

int main(int argc, char **argv) {
    return tap_run(argc, argv);
}
