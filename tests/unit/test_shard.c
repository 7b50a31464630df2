/* Unit tests for io/shard and io/crc32c: round trips (2- and 4-byte tokens, files, pipes, captured
 * streams), random access against the token list, atomic writes, writer checks, and every corruption
 * of header, trailer, index and frames with its exact message. tests/ref/shard.bats checks the byte
 * layout against an independent Python reader/writer (zstd CLI, its own CRC-32C). */
#include "tap.h"

#include "core/err.h"
#include "core/file.h"
#include "io/crc32c.h"
#include "io/shard.h"

#include <fcntl.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

TEST(crc32c_known_answers) {
    CHECK(ds_crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c(123456789) = %08x", ds_crc32c(0, "123456789", 9));
    CHECK(ds_crc32c_portable(0, "123456789", 9) == 0xE3069283u, "portable version");
    unsigned char zeros[32] = {0};
    CHECK(ds_crc32c(0, zeros, 32) == 0x8A9136AAu, "32 zero bytes (RFC 3720 B.4) = %08x", ds_crc32c(0, zeros, 32));
    unsigned char buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)rnd();
    int ok = 1;
    for (int off = 0; off < 9; off++)
        for (int n = 0; n < 300; n += 7) {
            ok &= ds_crc32c(0, buf + off, (size_t)n) == ds_crc32c_portable(0, buf + off, (size_t)n);
            ok &= ds_crc32c(ds_crc32c(0, buf + off, (size_t)n / 3), buf + off + n / 3, (size_t)(n - n / 3)) ==
                  ds_crc32c(0, buf + off, (size_t)n);
        }
    CHECK(ok, "hardware and table versions agree at every alignment; incremental = one shot");
}

/* A corpus of documents: ids in [0, vocab) except eos. */
typedef struct {
    uint32_t *tok; /* the expected token stream, EOS included */
    size_t n;
    uint64_t docs;
} corpus;

static corpus write_corpus(const char *path, uint32_t vocab, uint32_t eos, uint32_t frame, int ndocs) {
    corpus c = {0};
    c.tok = malloc(sizeof(uint32_t) * 4000 * (size_t)(ndocs + 1));
    ds_shard_writer *w;
    ds_shard_meta m = {.vocab_size = vocab, .eos_id = eos, .frame_tokens = frame};
    if (ds_shard_writer_open(&w, path, &m)) return c;
    uint32_t doc[4000];
    for (int d = 0; d < ndocs; d++) {
        size_t len = rnd() % (d % 10 == 0 ? 3000 : 200); /* some empty, some long */
        for (size_t i = 0; i < len; i++) {
            uint32_t id;
            do id = rnd() % vocab;
            while (id == eos);
            doc[i] = id;
        }
        ds_shard_writer_add_doc(w, doc, len);
        memcpy(c.tok + c.n, doc, len * 4);
        c.n += len;
        c.tok[c.n++] = eos;
        c.docs++;
    }
    if (ds_shard_writer_close(w)) c.n = 0;
    return c;
}

static void check_reads(const char *what, const char *path, const corpus *c, uint32_t vocab, uint32_t eos, uint32_t frame) {
    ds_shard *s;
    int rc = ds_shard_open(&s, path);
    CHECK(rc == 0, "%s: opens: %s", what, ds_errmsg());
    if (rc) return;
    const ds_shard_info_t *in = ds_shard_info(s);
    CHECK(in->vocab_size == vocab && in->eos_id == eos && in->n_tokens == c->n && in->n_docs == c->docs &&
              in->frame_tokens == frame && in->token_bytes == (vocab <= 65536 ? 2 : 4) &&
              in->n_frames == (c->n + frame - 1) / frame && !in->streamed,
          "%s: info (%llu tokens, %llu docs, %llu frames)", what, (unsigned long long)in->n_tokens,
          (unsigned long long)in->n_docs, (unsigned long long)in->n_frames);
    uint32_t *all = malloc(c->n * 4 + 4);
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        memset(all, 0xff, c->n * 4);
        rc = ds_shard_read(s, 0, c->n, all);
        CHECK(rc == 0 && !memcmp(all, c->tok, c->n * 4), "%s: read everything at once, %d thread(s): %s", what, threads,
              ds_errmsg());
    }
    int ok = 1;
    for (int k = 0; k < 300 && ok; k++) {
        uint64_t start = rnd() % (c->n + 1);
        size_t n = rnd() % (k % 3 == 0 ? 5 * frame : 50);
        if (n > c->n - start) n = c->n - start;
        ok &= ds_shard_read(s, start, n, all) == 0 && !memcmp(all, c->tok + start, n * 4);
    }
    CHECK(ok, "%s: 300 random reads match", what);
    size_t got, total = 0;
    ok = 1;
    while (ds_shard_next(s, all + total, 1 + rnd() % 777, &got) == 0 && got) total += got;
    CHECK(total == c->n && !memcmp(all, c->tok, c->n * 4), "%s: sequential reading in odd pieces", what);
    CHECK(ds_shard_read(s, c->n - 1, 2, all) == DS_ERR && strstr(ds_errmsg(), "past the end"), "%s: read past the end", what);
    free(all);
    ds_shard_close(s);
}

TEST(round_trip_files) {
    struct { uint32_t vocab, eos, frame; int docs; } cases[] = {
        {512, 1, 1000, 300}, {100000, 99999, 777, 200}, {65536, 0, 1 << 20, 50}, {70000, 5, 1, 3}, {512, 1, 1000, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "c%zu.tok", i);
        const char *path = tap_tmp(name);
        corpus c = write_corpus(path, cases[i].vocab, cases[i].eos, cases[i].frame, cases[i].docs);
        CHECK(c.n > 0 || cases[i].docs == 0, "written: %s", ds_errmsg());
        char what[64];
        snprintf(what, sizeof what, "vocab %u frame %u", cases[i].vocab, cases[i].frame);
        check_reads(what, path, &c, cases[i].vocab, cases[i].eos, cases[i].frame);
        free(c.tok);
    }
}

TEST(pipes_fifos_and_captured_streams) {
    /* writer to stdout (a pipe) in a child; the parent reads the same bytes from a FIFO sequentially,
     * and a captured copy of the stream is a valid random-access file (header says "streamed") */
    const char *fifo = tap_tmp("fifo");
    const char *captured = tap_tmp("captured.tok");
    mkfifo(fifo, 0600);
    fflush(stdout);
    rng_state = 7;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(captured, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        corpus c = write_corpus("-", 512, 1, 500, 100);
        fflush(stdout);
        /* the same stream again, through the FIFO */
        FILE *f = fopen(fifo, "wb");
        char *img;
        size_t len;
        ds_read_file(captured, &img, &len, 0);
        fwrite(img, 1, len, f);
        fclose(f);
        _exit(c.n ? 0 : 1);
    }
    rng_state = 7;
    corpus c = write_corpus(tap_tmp("reference.tok"), 512, 1, 500, 100); /* same tokens, for comparison */
    ds_shard *s;
    int rc = ds_shard_open(&s, fifo);
    CHECK(rc == 0, "FIFO opens: %s", ds_errmsg());
    if (!rc) {
        CHECK(ds_shard_info(s)->streamed && ds_shard_info(s)->n_tokens == 0, "a pipe's counts are unknown up front");
        uint32_t *all = malloc(c.n * 4 + 4000);
        size_t got, total = 0;
        while ((rc = ds_shard_next(s, all + total, 333, &got)) == 0 && got) total += got;
        CHECK(rc == 0 && total == c.n && !memcmp(all, c.tok, c.n * 4), "sequential tokens from the pipe: %s", ds_errmsg());
        CHECK(ds_shard_info(s)->n_tokens == c.n && ds_shard_info(s)->n_docs == 100, "counts known at the end");
        CHECK(ds_shard_read(s, 0, 1, all) == DS_ERR && strstr(ds_errmsg(), "random access needs a file"), "no random access");
        free(all);
        ds_shard_close(s);
    }
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer to a pipe succeeded");
    check_reads("captured stream", captured, &c, 512, 1, 500);
    free(c.tok);
}

TEST(writer_checks_and_atomicity) {
    ds_shard_writer *w;
    ds_shard_meta m = {.vocab_size = 100, .eos_id = 2};
    const char *path = tap_tmp("atomic.tok");
    CHECK(ds_shard_writer_open(&w, path, &m) == 0, "opened");
    uint32_t ok_doc[] = {5, 6, 7}, bad_id[] = {5, 100}, has_eos[] = {3, 2, 4};
    CHECK(ds_shard_writer_add_doc(w, ok_doc, 3) == 0 && ds_shard_writer_tokens(w) == 4 && ds_shard_writer_docs(w) == 1,
          "a document and its EOS");
    char want[600];
    snprintf(want, sizeof want, "shard: document 1: token 100 at position 1 is not below vocab_size 100: %s", path);
    CHECK(ds_shard_writer_add_doc(w, bad_id, 2) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    snprintf(want, sizeof want, "shard: document 1: contains the EOS id 2 at position 1: %s", path);
    CHECK(ds_shard_writer_add_doc(w, has_eos, 3) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    CHECK(ds_shard_writer_tokens(w) == 4, "a rejected document writes nothing");
    CHECK(!ds_path_exists(path), "nothing at the path before close");
    CHECK(ds_shard_writer_close(w) == 0 && ds_path_exists(path), "appears at close");
    ds_shard *s;
    uint32_t got[4];
    CHECK(ds_shard_open(&s, path) == 0 && ds_shard_read(s, 0, 4, got) == 0 && got[3] == 2 && got[0] == 5, "readable");
    ds_shard_close(s);
    ds_shard_writer_open(&w, tap_tmp("aborted.tok"), &m);
    ds_shard_writer_add_doc(w, ok_doc, 3);
    ds_shard_writer_abort(w);
    CHECK(tap_count_entries(tap_tmpdir(), "aborted") == 0, "abort leaves no file behind");
    ds_shard_meta bad = {.vocab_size = 10, .eos_id = 10};
    CHECK(ds_shard_writer_open(&w, path, &bad) == DS_ERR && strstr(ds_errmsg(), "shard: eos_id 10 is not below vocab_size 10"),
          "eos >= vocab refused");
}

/* ---- corruption ----------------------------------------------------------------------------- */

static unsigned char *img;
static size_t img_len;

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Recompute the header, index and trailer checksums after an edit. */
static void reseal(unsigned char *b, size_t len) {
    put32(b + 60, ds_crc32c(0, b, 60));
    unsigned char *t = b + len - 64;
    uint64_t io = get64(t + 32);
    if (io < len - 64) put32(t + 40, ds_crc32c(0, b + io, len - 64 - io));
    put32(t + 60, ds_crc32c(0, t, 60));
}

static void fresh(void) {
    /* 3 frames of 100 tokens (the last 50), vocab 1000, eos 1 */
    static unsigned char *orig;
    static size_t orig_len;
    if (!orig) {
        ds_shard_writer *w;
        ds_shard_meta m = {.vocab_size = 1000, .eos_id = 1, .frame_tokens = 100};
        const char *path = tap_tmp("victim.tok");
        ds_shard_writer_open(&w, path, &m);
        uint32_t doc[49];
        for (int d = 0; d < 5; d++) {
            for (int i = 0; i < 49; i++) doc[i] = 2 + (uint32_t)(d * 100 + i * 7) % 998;
            ds_shard_writer_add_doc(w, doc, 49);
        }
        ds_shard_writer_close(w);
        char *data;
        ds_read_file(path, &data, &orig_len, 0);
        orig = (unsigned char *)data;
    }
    free(img);
    img = malloc(orig_len);
    memcpy(img, orig, orig_len);
    img_len = orig_len;
}

static const char *open_err(void) {
    ds_shard *s;
    ds_err_clear();
    if (ds_shard_open_memory(&s, img, img_len, "t") == 0) {
        uint32_t all[250];
        int rc = ds_shard_read(s, 0, 250, all);
        ds_shard_close(s);
        if (!rc) return "(no error)";
    }
    return ds_errmsg();
}

static unsigned char *index_at(void) { return img + get64(img + img_len - 64 + 32); }
static unsigned char *entry_at(int k) { return index_at() + 16 + 32 * k; }

TEST(corruptions_give_exact_errors) {
    fresh();
    CHECK(!strcmp(open_err(), "(no error)"), "the untouched image reads");
    const char *m;
#define CASE(what, edit, want)                                                                                         \
    do {                                                                                                               \
        fresh();                                                                                                       \
        edit;                                                                                                          \
        m = open_err();                                                                                                \
        size_t wl_ = strlen(want);                                                                                     \
        int exact_ = wl_ >= 3 && !strcmp(want + wl_ - 3, ": t");                                                       \
        CHECK(exact_ ? !strcmp(m, want) : !strncmp(m, want, wl_), "%s: %s", what, m);                                   \
    } while (0)
    CASE("empty", img_len = 0, "shard: empty input: t");
    CASE("short", img_len = 100, "shard: truncated: 100 bytes, header, index and trailer alone take 144: t");
    CASE("magic", memcpy(img, "DSTOKENZ", 8), "shard header: bad magic: t");
    CASE("version", (put32(img + 8, 2), reseal(img, img_len)), "shard header: unsupported version 2 (this reader knows 1): t");
    CASE("header crc", img[33] ^= 1, "shard header: checksum mismatch: t");
    CASE("width", (put32(img + 16, 3), reseal(img, img_len)), "shard header: token width 3 (must be 2 or 4): t");
    CASE("vocab vs width", (put32(img + 20, 70000), reseal(img, img_len)),
         "shard header: vocab_size 70000 does not fit 2-byte tokens: t");
    CASE("vocab 0", (put32(img + 20, 0), reseal(img, img_len)), "shard header: vocab_size must be positive: t");
    CASE("eos", (put32(img + 24, 1000), reseal(img, img_len)), "shard header: eos_id 1000 is not below vocab_size 1000: t");
    CASE("frame 0", (put32(img + 28, 0), reseal(img, img_len)), "shard header: frame_tokens 0 out of range (1 to 67108864): t");
    CASE("flags", (put32(img + 12, 6), reseal(img, img_len)), "shard header: unknown flags 0x6: t");
    CASE("header counts", (put64(img + 32, 251), reseal(img, img_len)), "shard header: counts disagree with the trailer: t");
    CASE("truncated tail", img_len -= 10, "shard trailer: bad magic (truncated file?): t");
    CASE("trailer crc", img[img_len - 64 + 8] ^= 1, "shard trailer: checksum mismatch: t");
    char want[300];
    fresh();
    snprintf(want, sizeof want, "shard trailer: index offset %llu and 3 frames do not fit the file size %zu: t",
             (unsigned long long)get64(img + img_len - 64 + 32) + 8, img_len);
    CASE("index offset", (put64(img + img_len - 64 + 32, get64(img + img_len - 64 + 32) + 8), reseal(img, img_len)), want);
    CASE("index crc", entry_at(0)[0] ^= 1, "shard index: checksum mismatch: t");
    CASE("index magic", (index_at()[0] = 'X', reseal(img, img_len)), "shard index: bad magic or frame count: t");
    snprintf(want, sizeof want, "shard index: frame 1: offset %llu / first token 100 (expected %llu / 100): t",
             (unsigned long long)get64(entry_at(1)) + 1, (unsigned long long)get64(entry_at(1)));
    CASE("entry offset", (put64(entry_at(1), get64(entry_at(1)) + 1), reseal(img, img_len)), want);
    CASE("entry tokens", (put32(entry_at(0) + 16, 99), reseal(img, img_len)),
         "shard index: frame 0: 99 tokens (frames hold 100, only the last may hold fewer): t");
    CASE("entry csize", (put32(entry_at(2) + 20, 1u << 30), reseal(img, img_len)),
         "shard index: frame 2: compressed size 1073741824 out of range: t");
    CASE("entry eos", (put32(entry_at(2) + 24, 51), reseal(img, img_len)), "shard index: frame 2: 51 EOS in 50 tokens: t");
    CASE("entry sums", (put32(entry_at(2) + 24, 0), put32(entry_at(1) + 24, 0), reseal(img, img_len)),
         "shard index: frames hold 250 tokens and 2 documents, the trailer says 250 and 5: t");
    /* frame-level problems surface when the frame is decoded */
    CASE("record", (put32(img + get64(entry_at(1)) + 4, 7)), "shard: frame 1: record does not match the index: t");
    CASE("zstd", memset(img + get64(entry_at(0)) + 16, 0, 4), "shard: frame 0: zstd: Unknown frame descriptor: t");
    CASE("checksum",
         (put32(entry_at(2) + 28, 0xdeadbeef), put32(img + get64(entry_at(2)) + 12, 0xdeadbeef), reseal(img, img_len)),
         "shard: frame 2: checksum mismatch (stored 0xdeadbeef, computed 0x");
    CASE("eos count", (put32(entry_at(0) + 24, 1), put32(entry_at(1) + 24, 3), reseal(img, img_len)),
         "shard: frame 0: 2 EOS tokens, the index says 1: t");
    CASE("ids vs vocab", (put32(img + 20, 300), reseal(img, img_len)),
         "shard: frame 0: token 303 at position 43 is not below vocab_size 300: t");
#undef CASE
    free(img);
    img = NULL;
}

/* Streams validate as they go: truncation and a bad trailer are caught at the end. */
TEST(pipe_corruptions) {
    fresh();
    const char *p = tap_tmp("stream-victim");
    struct { const char *what; size_t cut; int edit_trailer; const char *prefix; } cases[] = {
        {"cut mid frame", 200, 0, "shard: truncated: frame data at byte"},
        {"cut before index", 0, 0, "shard: truncated: frame record at byte"},
        {"trailer counts", 0, 1, "shard trailer: counts disagree with the stream: "},
    };
    for (int i = 0; i < 3; i++) {
        fresh();
        size_t len = img_len;
        if (cases[i].cut) len = cases[i].cut;
        else if (!cases[i].edit_trailer) len = get64(img + img_len - 64 + 32);
        else {
            put64(img + img_len - 64 + 8, 249);
            reseal(img, img_len);
        }
        FILE *f = fopen(p, "wb");
        fwrite(img, 1, len, f);
        fclose(f);
        f = fopen(p, "rb");
        /* a FILE read as a pipe: open via "-" semantics by swapping stdin */
        FILE *saved = stdin;
        stdin = f;
        ds_shard *s;
        int rc = ds_shard_open(&s, "-");
        stdin = saved;
        uint32_t buf[300];
        size_t got, total = 0;
        while (!rc && (rc = ds_shard_next(s, buf + total, 300 - total, &got)) == 0 && got) total += got;
        CHECK(rc == DS_ERR && !strncmp(ds_errmsg(), cases[i].prefix, strlen(cases[i].prefix)), "%s: %s", cases[i].what,
              ds_errmsg());
        if (s) ds_shard_close(s);
        fclose(f);
    }
    free(img);
    img = NULL;
}

/* ---- reference helpers (tests/ref/shard.bats) ------------------------------------------------ */

/* DS_SHARD_WRITE=IN.u32:OUT:VOCAB:EOS:FRAME — IN holds uint32 ids, 0xFFFFFFFF ending each document. */
TEST(reference_write) {
    const char *env = getenv("DS_SHARD_WRITE");
    if (!env) return;
    char in[1024], out[1024];
    unsigned vocab, eos, frame;
    if (sscanf(env, "%1023[^:]:%1023[^:]:%u:%u:%u", in, out, &vocab, &eos, &frame) != 5) return;
    char *data;
    size_t len;
    CHECK(ds_read_file(in, &data, &len, 0) == 0, "input read");
    ds_shard_writer *w;
    ds_shard_meta m = {.vocab_size = vocab, .eos_id = eos, .frame_tokens = frame};
    int rc = ds_shard_writer_open(&w, out, &m);
    const uint32_t *ids = (const uint32_t *)data;
    size_t n = len / 4, start = 0;
    for (size_t i = 0; !rc && i < n; i++)
        if (ids[i] == 0xFFFFFFFFu) {
            rc = ds_shard_writer_add_doc(w, ids + start, i - start);
            start = i + 1;
        }
    if (!rc) rc = ds_shard_writer_close(w);
    CHECK(rc == 0, "wrote: %s", ds_errmsg());
    free(data);
}

/* DS_SHARD_DUMP=IN:OUT.u32 — every token of IN ("-" = stdin, sequential) as uint32, then a line of info on stdout. */
TEST(reference_dump) {
    const char *env = getenv("DS_SHARD_DUMP");
    if (!env) return;
    char in[1024], out[1024];
    if (sscanf(env, "%1023[^:]:%1023s", in, out) != 2) return;
    ds_shard *s;
    int rc = ds_shard_open(&s, in);
    CHECK(rc == 0, "opened: %s", ds_errmsg());
    if (rc) return;
    FILE *f = fopen(out, "wb");
    uint32_t buf[4096];
    size_t got;
    while ((rc = ds_shard_next(s, buf, 4096, &got)) == 0 && got) fwrite(buf, 4, got, f);
    fclose(f);
    CHECK(rc == 0, "read: %s", ds_errmsg());
    const ds_shard_info_t *i = ds_shard_info(s);
    printf("# info vocab=%u eos=%u width=%d tokens=%llu docs=%llu frames=%llu\n", i->vocab_size, i->eos_id, i->token_bytes,
           (unsigned long long)i->n_tokens, (unsigned long long)i->n_docs, (unsigned long long)i->n_frames);
    ds_shard_close(s);
}

int main(int argc, char **argv) {
    return tap_run(argc, argv);
}
