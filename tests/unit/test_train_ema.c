/* Unit tests for lib/train/ema: the update against a direct computation (the recurrence in float and
 * its closed form in double), the background thread giving the same bits as updating in line, a
 * snapshot taken while an update runs, and the decay's range. */
#include "tap.h"

#include "core/err.h"
#include "train/ema.h"

#include <stdint.h>

/* weights of step t: a deterministic pattern that changes every step */
static float weight(size_t i, int t) { return (float)((double)((i * 2654435761u + (size_t)t * 40503u) % 1000) / 250.0 - 2.0); }

TEST(update_matches_the_recurrence_and_its_closed_form) {
    enum { N = 37, STEPS = 25 };
    const double d = 0.9;
    float avg[N], w[N], ref[N];
    double closed[N];
    for (size_t i = 0; i < N; i++) avg[i] = ref[i] = weight(i, 0), closed[i] = pow(d, STEPS) * weight(i, 0);
    for (int t = 1; t <= STEPS; t++) {
        for (size_t i = 0; i < N; i++) w[i] = weight(i, t);
        ds_ema_update(avg, w, N, d);
        for (size_t i = 0; i < N; i++) {
            volatile float a = (float)d, b = (float)(1 - d); /* computed here without the library's code */
            ref[i] = a * ref[i] + b * w[i];
            closed[i] += (1 - d) * pow(d, STEPS - t) * w[i];
        }
    }
    int same = 1;
    double worst = 0;
    for (size_t i = 0; i < N; i++) {
        same &= avg[i] == ref[i];
        if (fabs(avg[i] - closed[i]) > worst) worst = fabs(avg[i] - closed[i]);
    }
    CHECK(same, "the float recurrence, bit for bit");
    CHECK(worst < 2e-6, "within float rounding of sum (1-d) d^(T-t) W_t + d^T W_0 (worst %g)", worst);
}

TEST(the_thread_gives_the_same_bits_as_updating_in_line) {
    enum { N = 100003, STEPS = 12 };
    float *w = malloc(N * sizeof *w), *ref = malloc(N * sizeof *ref);
    for (size_t i = 0; i < N; i++) ref[i] = weight(i, 0);
    ds_ema *e;
    CHECK(ds_ema_create(&e, N, 0.99, ref) == 0 && ds_ema_size(e) == N, "created");
    for (int t = 1; t <= STEPS; t++) {
        for (size_t i = 0; i < N; i++) w[i] = weight(i, t);
        if (t % 2) {
            ds_ema_submit(e, w);
        } else { /* the device path: fill the snapshot, then hand it over */
            float *snap = ds_ema_snapshot(e);
            memcpy(snap, w, N * sizeof *w);
            ds_ema_release(e);
        }
        /* the caller's weights change right away (the next step): the thread must not read them */
        for (size_t i = 0; i < N; i++) w[i] = -1e30f;
        for (size_t i = 0; i < N; i++) w[i] = weight(i, t);
        ds_ema_update(ref, w, N, 0.99);
    }
    ds_ema_wait(e);
    CHECK(!memcmp(ds_ema_values(e), ref, N * sizeof *ref), "%d steps through the thread equal the in-line update", STEPS);
    long n;
    CHECK(ds_ema_submit_seconds(e, &n) >= 0 && n == STEPS, "%ld hand-overs counted", n);
    ds_ema_free(e);
    free(w);
    free(ref);
}

TEST(decay_must_lie_inside_0_1) {
    float x = 1;
    ds_ema *e;
    CHECK(ds_ema_create(&e, 1, 0, &x) == DS_EUSAGE && e == NULL, "0 refused");
    CHECK(strstr(ds_errmsg(), "(0, 1)") != NULL, "message says the range: %s", ds_errmsg());
    CHECK(ds_ema_create(&e, 1, 1, &x) == DS_EUSAGE, "1 refused");
    CHECK(ds_ema_create(&e, 1, NAN, &x) == DS_EUSAGE, "NaN refused");
    CHECK(ds_ema_create(&e, 1, 0.5, &x) == 0, "0.5 accepted");
    ds_ema_free(e);
    ds_ema_free(NULL);
}

TAP_MAIN()
