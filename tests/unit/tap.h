/* tap.h — a minimal TAP producer for the C unit tests (one binary per module, run by tests/run.sh).
 *
 *   TEST(name) { ... }            defines and registers a test function
 *   CHECK(cond, fmt, ...)         one assertion line; failing prints "not ok" with the message
 *   CHECK_NEAR(a, b, tol, what)   |a-b| <= tol
 *   CHECK_REL(a, b, rel, what)    |a-b| <= rel * max(|a|,|b|, 1e-30)
 *   TAP_MAIN()                    runs every registered test in order
 *   tap_run(argc, argv)           the same from a main() of one's own (argv[1]: run only that test)
 *   tap_tmp(name)                 a path in this binary's scratch directory (under /tmp, made on first
 *                                 use, removed at exit); tap_tmpdir() is the directory itself
 *   tap_count_entries(dir, s)     how many names in dir contain s (what a failed write left behind)
 */
#ifndef DS_TESTS_TAP_H
#define DS_TESTS_TAP_H

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*tap_fn)(void);
static struct { const char *name; tap_fn fn; } tap_tests[512];
static int tap_ntests, tap_count, tap_failed;
static const char *tap_current;

#define TEST(tname)                                                                                    \
    static void test_##tname(void);                                                                    \
    __attribute__((constructor)) static void tap_reg_##tname(void) {                                   \
        tap_tests[tap_ntests].name = #tname;                                                           \
        tap_tests[tap_ntests++].fn = test_##tname;                                                     \
    }                                                                                                  \
    static void test_##tname(void)

#define CHECK(cond, ...)                                                                               \
    do {                                                                                               \
        int tap_ok_ = !!(cond);                                                                        \
        char tap_msg_[512];                                                                            \
        snprintf(tap_msg_, sizeof tap_msg_, __VA_ARGS__);                                              \
        tap_count++;                                                                                   \
        if (!tap_ok_) tap_failed++;                                                                    \
        printf("%sok %d - %s: %s\n", tap_ok_ ? "" : "not ", tap_count, tap_current, tap_msg_);         \
        if (!tap_ok_) printf("#   at %s:%d: %s\n", __FILE__, __LINE__, #cond);                         \
        fflush(stdout);                                                                                \
    } while (0)

#define CHECK_NEAR(a, b, tol, what)                                                                    \
    do {                                                                                               \
        double tap_a_ = (a), tap_b_ = (b);                                                             \
        CHECK(fabs(tap_a_ - tap_b_) <= (tol), "%s: %.9g vs %.9g (tol %.3g)", what, tap_a_, tap_b_,     \
              (double)(tol));                                                                          \
    } while (0)

#define CHECK_REL(a, b, rel, what)                                                                     \
    do {                                                                                               \
        double tap_a_ = (a), tap_b_ = (b);                                                             \
        double tap_s_ = fmax(fmax(fabs(tap_a_), fabs(tap_b_)), 1e-30);                                 \
        CHECK(fabs(tap_a_ - tap_b_) <= (rel) * tap_s_, "%s: %.9g vs %.9g (rel %.3g)", what, tap_a_,    \
              tap_b_, (double)(rel));                                                                  \
    } while (0)

static inline int tap_run(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : NULL;
    for (int i = 0; i < tap_ntests; i++) {
        if (only && strcmp(only, tap_tests[i].name)) continue;
        tap_current = tap_tests[i].name;
        tap_tests[i].fn();
    }
    printf("1..%d\n", tap_count);
    return tap_failed ? 1 : 0;
}

#define TAP_MAIN()                                                                                     \
    int main(int argc, char **argv) { return tap_run(argc, argv); }

static inline char *tap_tmpdir_buf(void) {
    static char dir[64];
    return dir;
}

static inline void tap_tmpdir_remove(void) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tap_tmpdir_buf());
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tap_tmpdir_buf());
}

static inline const char *tap_tmpdir(void) {
    char *dir = tap_tmpdir_buf();
    if (!dir[0]) {
        snprintf(dir, 64, "/tmp/ds-test-XXXXXX");
        if (!mkdtemp(dir)) {
            printf("Bail out! cannot make a scratch directory under /tmp\n");
            exit(1);
        }
        atexit(tap_tmpdir_remove);
    }
    return dir;
}

/* Rotating buffers: a path stays valid for the next 31 calls. */
static inline const char *tap_tmp(const char *name) {
    static char buf[32][512];
    static int k;
    k = (k + 1) % 32;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tap_tmpdir(), name);
    return buf[k];
}

static inline int tap_count_entries(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, needle)) n++;
    if (d) closedir(d);
    return n;
}

#endif
