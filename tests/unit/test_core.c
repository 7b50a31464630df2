/* Unit tests for lib/core: JSON writer, RNG, dtype conversions, errors, atomic files, arena, option groups. */
#include "tap.h"

#include "core/cli.h"
#include "core/dtype.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/strbuf.h"
#include "core/threads.h"

#include <stdint.h>
#include <unistd.h>

TEST(jsonw_escapes_and_nests) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "a", "q\"\\\n\x01");
    ds_jsonw_key(&w, "arr");
    ds_jsonw_arr_begin(&w);
    ds_jsonw_int(&w, 1);
    ds_jsonw_int(&w, -2);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_obj_end(&w);
    ds_jsonw_arr_end(&w);
    ds_jsonw_knum(&w, "x", 0.1);
    ds_jsonw_knum(&w, "nan", NAN);
    ds_jsonw_obj_end(&w);
    CHECK(!strcmp(w.buf, "{\"a\":\"q\\\"\\\\\\n\\u0001\",\"arr\":[1,-2,{}],\"x\":0.10000000000000001,\"nan\":null}"),
          "got %s", w.buf);
    ds_jsonw_reset(&w);
    ds_jsonw_strn(&w, "a\xff\xc3\xa9\xe2\x82", 6);
    CHECK(!strcmp(w.buf, "\"a\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\""), "invalid UTF-8 replaced: %s", w.buf);
    ds_jsonw_free(&w);
}

TEST(philox_known_answer) {
    /* Random123 known-answer vector for philox4x32-10: counter 0, key 0 */
    uint32_t out[4];
    ds_philox4x32(0, 0, 0, out);
    CHECK(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu && out[3] == 0x9b00dbd8u,
          "philox(0,0) = %08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
    /* counter all ones, key all ones */
    ds_philox4x32(UINT64_MAX, UINT64_MAX, UINT64_MAX, out);
    CHECK(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u && out[3] == 0x6d5451fdu,
          "philox(ff..) = %08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
}

TEST(randn_is_order_independent_and_normal) {
    enum { N = 200001 };
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    ds_threads_set(1);
    ds_randn_fill(a, N, 42, 7, 1.0f);
    ds_threads_set(2);
    ds_randn_fill(b, N, 42, 7, 1.0f);
    CHECK(!memcmp(a, b, N * sizeof *a), "same numbers with 1 and 2 threads");
    double m = 0, v = 0;
    for (int i = 0; i < N; i++) m += a[i];
    m /= N;
    for (int i = 0; i < N; i++) v += (a[i] - m) * (a[i] - m);
    v /= N;
    CHECK_NEAR(m, 0.0, 0.01, "mean");
    CHECK_NEAR(v, 1.0, 0.01, "variance");
    ds_randn_fill(b, N, 43, 7, 1.0f);
    CHECK(memcmp(a, b, N * sizeof *a) != 0, "another seed gives other numbers");
    free(a);
    free(b);
}

TEST(permutation_is_a_permutation) {
    enum { N = 1000 };
    uint32_t p[N];
    int seen[N] = {0};
    ds_permutation(p, N, 1, 2);
    int ok = 1;
    for (int i = 0; i < N; i++) {
        if (p[i] >= N || seen[p[i]]) ok = 0;
        else seen[p[i]] = 1;
    }
    CHECK(ok, "every index exactly once");
}

TEST(bf16_rounding) {
    CHECK(ds_f32_to_bf16(1.0f) == 0x3f80, "1.0");
    /* 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even -> 1.0 */
    CHECK(ds_f32_to_bf16(1.00390625f) == 0x3f80, "tie to even down");
    /* 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even) -> up */
    CHECK(ds_f32_to_bf16(1.01171875f) == 0x3f82, "tie to even up");
    CHECK(ds_f32_to_bf16(INFINITY) == 0x7f80, "inf");
    uint16_t n = ds_f32_to_bf16(NAN);
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f), "nan stays nan");
    CHECK(ds_bf16_to_f32(0xc040) == -3.0f, "decode -3");
}

TEST(f16_round_trip_every_value) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ds_f16_to_f32((uint16_t)h);
        uint16_t back = ds_f32_to_f16(f);
        int is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (is_nan ? !((back & 0x7c00) == 0x7c00 && (back & 0x3ff)) : back != h) bad++;
    }
    CHECK(bad == 0, "%d of 65536 f16 values fail to round-trip", bad);
    CHECK(ds_f32_to_f16(65520.0f) == 0x7c00, "65520 rounds to inf");
    CHECK(ds_f32_to_f16(65519.0f) == 0x7bff, "65519 rounds to max");
    CHECK(ds_f32_to_f16(5.96046448e-8f) == 1, "smallest subnormal");
    CHECK(ds_f32_to_f16(2.98023224e-8f) == 0, "half the smallest subnormal ties to zero");
}

TEST(errors_compose) {
    int rc = ds_fail(DS_ERR, "bad magic: %s", "x.tok");
    ds_fail_ctx(rc, "shard header");
    CHECK(rc == DS_ERR && !strcmp(ds_errmsg(), "shard header: bad magic: x.tok"), "message: %s", ds_errmsg());
}

TEST(atomic_file_replaces_or_keeps) {
    char dir[] = "/tmp/ds-core-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "temp dir");
    char path[256];
    snprintf(path, sizeof path, "%s/f.txt", dir);
    ds_atomic a;
    CHECK(ds_atomic_open(&a, path) == 0, "open");
    fputs("one", a.f);
    CHECK(ds_atomic_commit(&a) == 0, "commit");
    CHECK(ds_atomic_open(&a, path) == 0, "reopen");
    fputs("two-partial", a.f);
    ds_atomic_abort(&a);
    char *data;
    size_t len;
    CHECK(ds_read_file(path, &data, &len, 0) == 0 && len == 3 && !memcmp(data, "one", 3), "aborted write keeps old");
    free(data);
    CHECK(ds_read_file(dir, &data, &len, 0) == DS_ERR && strstr(ds_errmsg(), "is a directory"), "dir: %s",
          ds_errmsg());
    CHECK(ds_atomic_write_file(path, "three\0x", 7) == 0 && ds_read_file(path, &data, &len, 0) == 0 && len == 7 &&
              !memcmp(data, "three\0x", 7),
          "a whole buffer replaces the file, NUL bytes included");
    free(data);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no/f.txt", dir);
    CHECK(ds_atomic_write_file(missing, "x", 1) == DS_ERR && strstr(ds_errmsg(), "cannot create"), "no directory: %s", ds_errmsg());
    CHECK(tap_count_entries(dir, ".tmp.") == 0, "no temporary file left");
    unlink(path);
    rmdir(dir);
}

TEST(arena_aligns_and_bounds) {
    ds_arena a;
    CHECK(ds_arena_init(&a, 1000) == 0, "init");
    char *p = ds_arena_alloc(&a, 10), *q = ds_arena_alloc(&a, 10);
    CHECK(((uintptr_t)p & 63) == 0 && ((uintptr_t)q & 63) == 0 && q - p == 64, "64-byte aligned");
    CHECK(ds_arena_alloc(&a, 1000) == NULL, "full arena returns NULL");
    ds_arena_reset(&a);
    CHECK(ds_arena_alloc(&a, 1000) != NULL, "reset frees");
    ds_arena_free(&a);
}

TEST(option_groups_stand_in_place) {
    int a = 0, b = 0, c = 0, d = 0;
    const ds_opt inner[] = {{"cc", 0, DS_OPT_INT, &c, "N", "third"}, {0}};
    const ds_opt outer[] = {{"bb", 0, DS_OPT_INT, &b, "N", "second"}, {"g", 0, DS_OPT_GROUP, (void *)inner}, {0}};
    const ds_opt opts[] = {{"aa", 'a', DS_OPT_INT, &a, "N", "first"}, {"g", 0, DS_OPT_GROUP, (void *)outer},
                           {"dd", 0, DS_OPT_FLAG, &d, NULL, "fourth"}, {0}};
    const ds_cli cli = {.name = "t", .usage = "", .opts = opts};
    char *argv[] = {"t", "--cc", "3", "-a", "1", "--dd", "--bb", "2"};
    int first;
    CHECK(ds_cli_parse(&cli, 8, argv, &first) == -1 && a == 1 && b == 2 && c == 3 && d == 1, "a group's options parse: %d %d %d %d",
          a, b, c, d);
    char buf[2048] = {0};
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    ds_cli_help(&cli, f);
    fclose(f);
    const char *pa = strstr(buf, "--aa"), *pb = strstr(buf, "--bb"), *pc = strstr(buf, "--cc"), *pd = strstr(buf, "--dd");
    CHECK(pa && pb && pc && pd && pa < pb && pb < pc && pc < pd && !strstr(buf, "--g "), "help lists them in place");
    CHECK(strstr(buf, "third [default: 3]") != NULL, "with their defaults");
    char *bad[] = {"t", "--cc", "x"};
    CHECK(ds_cli_parse(&cli, 3, bad, &first) == 2, "and their checks");
}

TEST(durations_for_people) {
    char b[32];
    const struct { double s; const char *want; } cases[] = {{0, "0.0s"}, {8.24, "8.2s"}, {59.9, "59.9s"}, {59.96, "1m00s"},
                                                              {245, "4m05s"}, {3599.4, "59m59s"}, {3599.6, "1h00m"},
                                                              {7620, "2h07m"}, {-1, "0.0s"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ds_format_duration(cases[i].s, b, sizeof b);
        CHECK(!strcmp(b, cases[i].want), "%g s is %s (got %s)", cases[i].s, cases[i].want, b);
    }
}

TEST(option_names_in_full_and_as_typed) {
    int a = 0, d = 0;
    const char *b = NULL;
    uint64_t u = 7;
    const ds_opt opts[] = {{"aa", 'a', DS_OPT_INT, &a, "N", "first", .max = 100},
                           {"bb-cc", 0, DS_OPT_STR, &b, "S", "second"},
                           {"dd", 0, DS_OPT_FLAG, &d, NULL, "third"},
                           {"seed", 0, DS_OPT_U64, &u, "S", "fourth"},
                           {0}};
    const ds_cli cli = {.name = "t", .usage = "", .opts = opts};
    int first;
    /* a value that looks like an option is still the value of the option before it */
    char *ok[] = {"t", "--bb-cc", "--aa", "file", "--aa", "5", "--seed", "18446744073709551615"};
    CHECK(ds_cli_parse(&cli, 8, ok, &first) == -1 && a == 5 && b && !strcmp(b, "--aa") && u == UINT64_MAX && first == 7,
          "full names parse (a=%d, b=%s, u=%llu, first=%d)", a, b ? b : "(null)", (unsigned long long)u, first);
    CHECK(ds_cli_given(&a) && !strcmp(ds_cli_given(&a), "--aa") && !ds_cli_given(&d), "given options are known by their spelling");
    char *sh[] = {"t", "-a", "3"};
    CHECK(ds_cli_parse(&cli, 3, sh, &first) == -1 && a == 3 && !strcmp(ds_cli_given(&a), "-a") && !ds_cli_given(&b),
          "a short option is known as typed, and each parse starts afresh");
    CHECK(!strcmp(ds_cli_opt(&b, "--bb-cc"), "--bb-cc"), "an option not given keeps its own name");
    a = 0;
    char *abbr[] = {"t", "--a", "4"};
    CHECK(ds_cli_parse(&cli, 3, abbr, &first) == 2 && a == 0, "an abbreviation is refused and sets nothing");
    b = NULL;
    char *abbr2[] = {"t", "--bb=x"};
    CHECK(ds_cli_parse(&cli, 2, abbr2, &first) == 2 && b == NULL, "with '=' too");
    char *flagv[] = {"t", "--dd=1"};
    CHECK(ds_cli_parse(&cli, 2, flagv, &first) == 2 && d == 0, "a flag takes no value");
    char *neg[] = {"t", "--seed", "-1"}, *big[] = {"t", "--seed", "18446744073709551616"}, *plus[] = {"t", "--seed", "+5"};
    CHECK(ds_cli_parse(&cli, 3, neg, &first) == 2 && ds_cli_parse(&cli, 3, big, &first) == 2 &&
              ds_cli_parse(&cli, 3, plus, &first) == 2 && u == UINT64_MAX,
          "an unsigned 64-bit value: no sign, nothing past 2^64-1");
    char *after[] = {"t", "x", "--", "--a"};
    CHECK(ds_cli_parse(&cli, 4, after, &first) == -1 && first == 2, "after -- nothing is an option");
}

TEST(strbuf_grows_and_stays_terminated) {
    ds_strbuf b = {0};
    CHECK(b.s == NULL && b.len == 0, "an empty buffer holds nothing");
    ds_strbuf_put(&b, "", 0);
    CHECK(b.s && b.s[0] == 0 && b.len == 0, "an empty put still gives a terminated string");
    char piece[100];
    memset(piece, 'x', sizeof piece);
    for (int i = 0; i < 40; i++) ds_strbuf_put(&b, piece, sizeof piece); /* 4000 bytes: several growths */
    ds_strbuf_puts(&b, "end");
    int all_x = 1;
    for (size_t i = 0; i < 4000; i++) all_x &= b.s[i] == 'x';
    CHECK(!b.oom && b.len == 4003 && all_x && !strcmp(b.s + 4000, "end") && strlen(b.s) == b.len && b.cap > b.len,
          "pieces in order, length counted, NUL after the last (len=%zu)", b.len);
    b.oom = 1;
    ds_strbuf_puts(&b, "more");
    CHECK(b.len == 4003, "after running out of memory every put is a no-op");
    free(b.s);
}

TEST(strbuf_printf_short_and_long) {
    ds_strbuf b = {0};
    ds_strbuf_printf(&b, "%d-%s|", 42, "x");
    char big[1000];
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = 0;
    ds_strbuf_printf(&b, "%s%d", big, 7); /* past the 256-byte first try */
    CHECK(!b.oom && b.len == 5 + 999 + 1 && !strncmp(b.s, "42-x|yyy", 8) && !strcmp(b.s + 5 + 999, "7"),
          "formatted pieces appended (len=%zu)", b.len);
    free(b.s);
}

TAP_MAIN()
