/* Unit tests for lib/train/sched: the schedule syntax, values against the closed forms (V3's
 * learning-rate shape, cosine, WSD), knees in steps / tokens / percent, crossings across units, the
 * saved state, and error messages. */
#include "tap.h"

#include "core/err.h"
#include "train/sched.h"

#include <jansson.h>

static double at(ds_sched *s, int64_t step, double tokens) { return ds_sched_at(s, (ds_progress_pos){step, tokens}); }

TEST(constant_and_step_lists) {
    ds_sched s;
    CHECK(ds_sched_parse(&s, "0.001", NAN, 0, "--gamma") == 0 && s.n == 1, "constant parses");
    CHECK(at(&s, 0, 0) == 0.001 && at(&s, 1000000, 1e12) == 0.001, "constant everywhere");
    CHECK(ds_sched_parse(&s, "0.3,0.1@10Ttok", NAN, 0, "--lambda") == 0 && s.n == 2, "step list parses");
    CHECK(at(&s, 5, 9.99e12) == 0.3 && at(&s, 6, 1e13) == 0.1 && at(&s, 7, 2e13) == 0.1, "0.3 until 10T tokens, then 0.1");
    CHECK(ds_sched_parse(&s, "1,2@10,3@20", NAN, 0, "x") == 0, "three steps");
    CHECK(at(&s, 9, 0) == 1 && at(&s, 10, 0) == 2 && at(&s, 19, 0) == 2 && at(&s, 20, 0) == 3, "knees are inclusive");
    CHECK(ds_sched_parse(&s, "0.001,0@96.6%", NAN, 1000, "--gamma") == 0 && s.pt[1].at == 966, "percent of the run: 966 (%g)", s.pt[1].at);
}

TEST(linear_ramp_rounds_nothing) {
    ds_sched s;
    CHECK(ds_sched_parse(&s, "linear:3072@0,15360@469Btok", NAN, 0, "--batch-ramp") == 0, "parses");
    CHECK(at(&s, 0, 0) == 3072, "start");
    CHECK_NEAR(at(&s, 10, 234.5e9), (3072 + 15360) / 2.0, 1e-6, "half way in tokens");
    CHECK(at(&s, 11, 469e9) == 15360 && at(&s, 12, 1e12) == 15360, "then constant");
    CHECK(ds_sched_max(&s) == 15360, "max");
}

TEST(v3_shape_matches_the_paper_numbers) {
    /* V3 (PAPER 4.2): 0 -> 2.2e-4 over 2K steps; constant to 10T tokens; cosine to 2.2e-5 over 4.3T;
     * 2.2e-5 for 333B; 7.3e-6 for the last 167B */
    ds_sched s;
    const char *spec = "v3:peak=2.2e-4,warmup=2000,hold=10Ttok,decay=14.3Ttok,min=2.2e-5,tail=14.633Ttok,final=7.3e-6";
    CHECK(ds_sched_parse(&s, spec, 1.0, 0, "--lr-schedule") == 0, "parses: %s", ds_errmsg());
    CHECK_NEAR(at(&s, 1, 63e6), 2.2e-4 / 2000, 1e-15, "first step of warmup");
    CHECK_NEAR(at(&s, 1000, 63e9), 1.1e-4, 1e-15, "half way through warmup");
    CHECK(at(&s, 2000, 126e9) == 2.2e-4 && at(&s, 100000, 9.9e12) == 2.2e-4, "peak until 10T");
    CHECK_NEAR(at(&s, 160000, 12.15e12), 2.2e-5 + (2.2e-4 - 2.2e-5) * 0.5 * (1 + cos(M_PI * 0.5)), 1e-12, "cosine half way");
    double q = (11e12 - 10e12) / 4.3e12;
    CHECK_NEAR(at(&s, 160001, 11e12 + 1) , 2.2e-5 + (2.2e-4 - 2.2e-5) * 0.5 * (1 + cos(M_PI * q)), 1e-12, "cosine at 11T");
    CHECK(at(&s, 230000, 14.3e12) == 2.2e-5 && at(&s, 231000, 14.5e12) == 2.2e-5, "2.2e-5 after the decay");
    CHECK(at(&s, 232000, 14.633e12) == 7.3e-6 && at(&s, 240000, 14.8e12) == 7.3e-6, "7.3e-6 at the end");
    /* defaults: the same shape scaled to the run, peak from the caller */
    CHECK(ds_sched_parse(&s, "v3", 3e-4, 1000, "--lr-schedule") == 0, "bare v3");
    CHECK(s.n == 5 && s.pt[1].at == 10 && s.pt[2].at == 676 && s.pt[3].at == 966 && s.pt[4].at == 989, "knees 10/676/966/989");
    CHECK_NEAR(s.pt[3].value, 3e-5, 1e-18, "min 10%% of peak");
    CHECK_NEAR(s.pt[4].value, 3e-4 * 0.03318, 1e-15, "final 3.318%% of peak");
}

TEST(cosine_and_wsd) {
    ds_sched s;
    CHECK(ds_sched_parse(&s, "cosine:warmup=10,end=110,min=0", 1.0, 0, "x") == 0, "cosine parses");
    CHECK_NEAR(at(&s, 5, 0), 0.5, 1e-15, "warmup");
    CHECK_NEAR(at(&s, 60, 0), 0.5, 1e-12, "cosine mid");
    CHECK_NEAR(at(&s, 35, 0), 0.5 * (1 + cos(M_PI * 0.25)), 1e-12, "cosine quarter");
    CHECK(at(&s, 200, 0) == 0, "min after end");
    CHECK(ds_sched_parse(&s, "wsd:warmup=0,decay=80,end=100,min=0.1", 1.0, 0, "x") == 0, "wsd parses");
    CHECK(at(&s, 1, 0) == 1.0 && at(&s, 80, 0) == 1.0, "stable");
    CHECK_NEAR(at(&s, 84, 0), 1.0 + (0.1 - 1.0) * sqrt(0.2), 1e-12, "1-sqrt decay");
    CHECK(at(&s, 100, 0) == 0.1, "end");
    CHECK(ds_sched_parse(&s, "wsd:shape=linear,decay=50%,min=0", 2.0, 200, "x") == 0, "wsd linear, percent knees");
    CHECK_NEAR(at(&s, 150, 0), 1.0, 1e-12, "linear decay half way");
}

TEST(mixed_units_use_the_recorded_crossing) {
    /* warmup ends at 10 steps; decay runs from there to 1000 tokens: the stretch starts where
     * step 10 was actually reached, in tokens */
    ds_sched s;
    CHECK(ds_sched_parse(&s, "cosine:warmup=10,end=1000tok,min=0", 1.0, 0, "x") == 0, "parses");
    for (int st = 1; st <= 10; st++) at(&s, st, st * 20.0); /* 20 tokens per step: step 10 at 200 tokens */
    CHECK(s.pt[1].cross_step == 10 && s.pt[1].cross_tokens == 200, "crossing recorded at (10, 200)");
    CHECK_NEAR(at(&s, 30, 600), 0.5, 1e-12, "half way between 200 and 1000 tokens");
    /* state round trip */
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_sched_state_write(&s, &w);
    ds_sched s2;
    ds_sched_parse(&s2, "cosine:warmup=10,end=1000tok,min=0", 1.0, 0, "x");
    json_t *j = json_loads(w.buf, 0, NULL);
    CHECK(j && ds_sched_state_read(&s2, j, "state") == 0, "state reads back: %s", w.buf);
    CHECK(ds_sched_peek(&s2, (ds_progress_pos){30, 600}) == ds_sched_peek(&s, (ds_progress_pos){30, 600}), "same value after reload");
    json_decref(j);
    ds_jsonw_free(&w);
}

TEST(describe_lists_points) {
    ds_sched s;
    char buf[256];
    ds_sched_parse(&s, "cosine:warmup=10,end=100,min=0.1", 1.0, 0, "x");
    ds_sched_describe(&s, buf, sizeof buf);
    CHECK(!strcmp(buf, "0@0s -linear-> 1@10s -cosine-> 0.1@100s"), "%s", buf);
}

TEST(errors_name_the_option_and_the_text) {
    ds_sched s;
    CHECK(ds_sched_parse(&s, "", 1, 0, "--lr-schedule") == DS_EUSAGE && !strcmp(ds_errmsg(), "--lr-schedule: empty schedule: ''"), "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "bogus:x=1", 1, 0, "--lr-schedule") == DS_EUSAGE &&
              !strcmp(ds_errmsg(), "--lr-schedule: unknown schedule kind (steps|linear|v3|cosine|wsd) 'bogus': 'bogus:x=1'"),
          "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "v3:warmup=10parsecs", 1, 0, "--lr-schedule") == DS_EUSAGE && strstr(ds_errmsg(), "bad knee"), "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "v3:nope=1", 1, 0, "--lr-schedule") == DS_EUSAGE && strstr(ds_errmsg(), "unknown key 'nope'"), "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "1,2@20,3@10", 1, 0, "--gamma") == DS_EUSAGE && strstr(ds_errmsg(), "knees go backwards"), "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "1,2", 1, 0, "--gamma") == DS_EUSAGE && strstr(ds_errmsg(), "missing '@knee'"), "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "cosine", 1, 0, "--lr-schedule") == DS_EUSAGE && strstr(ds_errmsg(), "needs the total number of steps"), "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "wsd:shape=zigzag", 1, 100, "--lr-schedule") == DS_EUSAGE && strstr(ds_errmsg(), "unknown decay shape"), "%s", ds_errmsg());
    CHECK(ds_sched_parse(&s, "x@", 1, 0, "--gamma") == DS_EUSAGE, "garbage refused: %s", ds_errmsg());
}

TAP_MAIN()
