/* libFuzzer harness: schedule specs (--lr-schedule, --batch-ramp, --gamma, --lambda). Any text gives
 * a clean error or a schedule whose values are finite everywhere, within the range of its points, and
 * whose saved crossings read back. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "train/sched.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char spec[300];
    if (size >= sizeof spec) return 0;
    memcpy(spec, data, size);
    spec[size] = 0;
    ds_sched s;
    if (ds_sched_parse(&s, spec, 1e-3, 1000, "fuzz")) return 0;
    if (s.n < 1 || s.n > DS_SCHED_MAX_POINTS) abort();
    double lo = s.pt[0].value, hi = lo;
    for (int k = 0; k < s.n; k++) lo = fmin(lo, s.pt[k].value), hi = fmax(hi, s.pt[k].value);
    for (int64_t step = 0; step <= 1200; step += 7) {
        double v = ds_sched_at(&s, (ds_progress_pos){step, step * 4096.0});
        if (!isfinite(v) || v < lo - 1e-9 * fabs(lo) || v > hi + 1e-9 * fabs(hi)) abort();
    }
    char buf[512];
    ds_sched_describe(&s, buf, sizeof buf);
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_sched_state_write(&s, &w);
    json_t *j = json_loads(w.buf, 0, NULL);
    ds_sched t;
    if (!j || ds_sched_parse(&t, spec, 1e-3, 1000, "fuzz") || ds_sched_state_read(&t, j, "fuzz")) abort();
    for (int k = 0; k < s.n; k++)
        if (t.pt[k].cross_step != s.pt[k].cross_step || t.pt[k].cross_tokens != s.pt[k].cross_tokens) abort();
    json_decref(j);
    ds_jsonw_free(&w);
    return 0;
}
