/* tap.h — a minimal TAP producer for the C unit tests (one binary per module, run by tests/run.sh).
 *
 *   TEST(name) { ... }            defines and registers a test function
 *   CHECK(cond, fmt, ...)         one assertion line; failing prints "not ok" with the message
 *   CHECK_NEAR(a, b, tol, what)   |a-b| <= tol
 *   CHECK_REL(a, b, rel, what)    |a-b| <= rel * max(|a|,|b|, 1e-30)
 *   TAP_MAIN()                    runs every registered test in order
 */
#ifndef DS_TESTS_TAP_H
#define DS_TESTS_TAP_H

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

#define TAP_MAIN()                                                                                     \
    int main(int argc, char **argv) {                                                                  \
        const char *only = argc > 1 ? argv[1] : NULL;                                                  \
        for (int i = 0; i < tap_ntests; i++) {                                                         \
            if (only && strcmp(only, tap_tests[i].name)) continue;                                     \
            tap_current = tap_tests[i].name;                                                           \
            tap_tests[i].fn();                                                                         \
        }                                                                                              \
        printf("1..%d\n", tap_count);                                                                  \
        return tap_failed ? 1 : 0;                                                                     \
    }

#endif
