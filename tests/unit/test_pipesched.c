/* lib/dist/pipesched: schedule properties for PP up to 64 and many micro-batch counts (structure, order
 * of every micro-batch through the stages, no deadlock, in-flight activations within the bound), the
 * simulated bubbles against the closed forms, refusals, and schedules broken on purpose. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "dist/pipesched.h"

static const int pps[] = {1, 2, 3, 4, 6, 7, 8, 16, 32, 64};
static const int mbs[] = {1, 2, 3, 4, 5, 8, 12, 16, 20, 31, 64, 128, 130};
#define N_PPS (int)(sizeof pps / sizeof *pps)
#define N_MBS (int)(sizeof mbs / sizeof *mbs)

/* Independent of the simulator's dependency logic: read the timeline back and check that micro-batch m
 * went through stages 0..PP-1 forward and back down in order, F before backward, B before W, and that a
 * rank never runs two things at once. Returns the number of violations. */
static int timeline_violations(const ds_pipe_schedule *s, const ds_pipe_sim *sim) {
    int P = s->pp, M = s->n_mb, bad = 0;
    double *fs = malloc(sizeof(double) * P * M), *fe = malloc(sizeof(double) * P * M);
    double *bs = malloc(sizeof(double) * P * M), *be = malloc(sizeof(double) * P * M);
    double *ws = malloc(sizeof(double) * P * M);
    for (int k = 0; k < P * M; k++) fs[k] = fe[k] = bs[k] = be[k] = ws[k] = NAN;
    for (int r = 0; r < P; r++)
        for (int i = 0; i < s->n_ops[r]; i++) {
            const ds_pipe_op *o = &s->ops[r][i];
            int k = ds_pipe_stage_of(s, r, o->chunk) * M + o->mb;
            if (o->kind == DS_PIPE_F) fs[k] = sim->start[r][i], fe[k] = sim->end[r][i];
            else if (o->kind == DS_PIPE_W) ws[k] = sim->start[r][i];
            else bs[k] = sim->start[r][i], be[k] = sim->end[r][i];
            if (i > 0 && sim->start[r][i] < sim->end[r][i - 1] - 1e-9 &&
                !(s->ops[r][i - 1].paired && sim->start[r][i] == sim->start[r][i - 1]))
                bad++;
        }
    for (int m = 0; m < M; m++)
        for (int st = 0; st < P; st++) {
            int k = st * M + m;
            if (!(fe[k] <= bs[k] + 1e-9) && !(fs[k] == bs[k])) bad++; /* F before its backward (or paired) */
            if (!isnan(ws[k]) && !(be[k] <= ws[k] + 1e-9)) bad++;
            if (st + 1 < P && !(fe[k] <= fs[k + M] + 1e-9)) bad++;  /* stage order forward */
            if (st + 1 < P && !(be[k + M] <= bs[k] + 1e-9)) bad++;  /* and backward */
        }
    free(fs), free(fe), free(bs), free(be), free(ws);
    return bad;
}

/* The activation bound of the paper's Table 2 on each rank (micro-batch chunks held at once). */
static int act_bound(ds_pipe_kind kind, int pp, int m, int r) {
    int b = kind == DS_PIPE_1F1B ? pp - r : pp;
    if (kind == DS_PIPE_DUALPIPE) b = pp + 1;
    return b < m ? b : m;
}

static void check_properties(ds_pipe_kind kind) {
    int runs = 0, failures = 0;
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MBS; b++) {
            int P = pps[a], M = mbs[b];
            if (ds_pipe_check(kind, P, M)) continue;
            ds_pipe_schedule s;
            ds_pipe_sim sim = {0};
            ds_pipe_costs c = {1, 2, 1, 0, 0.25};
            runs++;
            int rc = ds_pipe_schedule_make(&s, kind, P, M);
            if (!rc) rc = ds_pipe_validate(&s);
            if (!rc) rc = ds_pipe_simulate(&s, &c, &sim);
            int bad = rc ? 1 : timeline_violations(&s, &sim);
            for (int r = 0; !rc && r < P; r++)
                if (sim.peak_act[r] > act_bound(kind, P, M, r)) bad++;
            if (bad) {
                failures++;
                CHECK(0, "%s PP=%d M=%d: %s (%d violations)", ds_pipe_kind_name(kind), P, M, rc ? ds_errmsg() : "",
                      bad);
            }
            ds_pipe_sim_free(&sim);
            ds_pipe_schedule_free(&s);
        }
    CHECK(failures == 0 && runs > 30, "%s: %d (PP, micro-batches) cases valid, ran without deadlock, in order, "
          "activations within the bound", ds_pipe_kind_name(kind), runs);
}

TEST(properties_1f1b) { check_properties(DS_PIPE_1F1B); }
TEST(properties_zb1p) { check_properties(DS_PIPE_ZB1P); }
TEST(properties_dualpipe) { check_properties(DS_PIPE_DUALPIPE); }

/* Random costs, random transfer latency: still valid, in order, no deadlock (any cost is legal) */
TEST(properties_under_random_costs) {
    ds_rng g;
    ds_rng_init(&g, 19, 0);
    int bad = 0, runs = 0;
    for (int k = 0; k < DS_PIPE_N_KINDS; k++)
        for (int a = 0; a < N_PPS; a++)
            for (int b = 0; b < N_MBS; b += 3) {
                int P = pps[a], M = mbs[b];
                if (ds_pipe_check((ds_pipe_kind)k, P, M)) continue;
                ds_pipe_costs c;
                c.f = 0.1 + ds_rng_uniform(&g), c.w = 0.1 + ds_rng_uniform(&g), c.b = c.w + 0.1 + ds_rng_uniform(&g);
                c.fb = ds_rng_uniform(&g) < 0.3 ? 0 : fmax(c.f, c.b) + ds_rng_uniform(&g) * c.f;
                c.p2p = ds_rng_uniform(&g);
                ds_pipe_schedule s;
                ds_pipe_sim sim = {0};
                runs++;
                if (ds_pipe_schedule_make(&s, (ds_pipe_kind)k, P, M) || ds_pipe_simulate(&s, &c, &sim)) {
                    bad++;
                    continue;
                }
                bad += timeline_violations(&s, &sim) != 0;
                ds_pipe_sim_free(&sim);
                ds_pipe_schedule_free(&s);
            }
    CHECK(bad == 0 && runs > 60, "%d random-cost simulations: %d with a deadlock or out of order", runs, bad);
}

/* The paper's Table 2 bubbles hold exactly where its figures are drawn: enough micro-batches (M >= PP,
 * DualPipe M >= 2PP) and a weight-gradient chunk no longer than the forward or the input-gradient chunk;
 * DualPipe's also needs the forward and input-gradient chunks equal (F = B - W) and a pair no shorter
 * than its backward (F&B >= B). Costs are drawn in eighths so every sum is exact. The bubble is the
 * largest over the ranks (the critical one, which sets the step time). */
static double eighths(ds_rng *g, int lo, int hi) { return (lo + (int)ds_rng_below(g, (uint64_t)(hi - lo + 1))) / 8.0; }

static double formula(ds_pipe_kind k, int P, const ds_pipe_costs *c) {
    if (k == DS_PIPE_1F1B) return (P - 1) * (c->f + c->b);
    if (k == DS_PIPE_ZB1P) return (P - 1) * (c->f + c->b - 2 * c->w);
    return (P / 2 - 1) * (c->fb + c->b - 3 * c->w);
}

TEST(bubbles_match_table2) {
    ds_rng g;
    ds_rng_init(&g, 2412, 19437);
    for (int k = 0; k < DS_PIPE_N_KINDS; k++) {
        int runs = 0, bad = 0;
        for (int a = 0; a < N_PPS; a++)
            for (int b = 0; b < N_MBS; b++) {
                int P = pps[a], M = mbs[b];
                if (ds_pipe_check((ds_pipe_kind)k, P, M) || M < P) continue;
                for (int rep = 0; rep < 3; rep++) {
                    ds_pipe_costs c = {0};
                    c.w = eighths(&g, 1, 8);
                    c.f = c.w + eighths(&g, 0, 8);
                    c.b = c.w + (k == DS_PIPE_DUALPIPE ? c.f : c.w + eighths(&g, 0, 8));
                    c.fb = k == DS_PIPE_DUALPIPE ? c.b + eighths(&g, 0, (int)(8 * c.f)) : 0;
                    ds_pipe_schedule s;
                    ds_pipe_sim sim = {0};
                    if (ds_pipe_schedule_make(&s, (ds_pipe_kind)k, P, M) || ds_pipe_simulate(&s, &c, &sim)) {
                        bad++;
                        continue;
                    }
                    double got = ds_pipe_sim_max_bubble(&s, &sim), want = formula((ds_pipe_kind)k, P, &c);
                    runs++;
                    if (fabs(got - want) > 1e-9) {
                        bad++;
                        if (bad < 4)
                            CHECK(0, "%s PP=%d M=%d F=%g B=%g W=%g F&B=%g: bubble %g, formula %g",
                                  ds_pipe_kind_name((ds_pipe_kind)k), P, M, c.f, c.b, c.w, c.fb, got, want);
                    }
                    ds_pipe_sim_free(&sim);
                    ds_pipe_schedule_free(&s);
                }
            }
        CHECK(bad == 0 && runs > 30, "%s: simulated bubble equals the formula in %d cases",
              ds_pipe_kind_name((ds_pipe_kind)k), runs);
    }
}

/* Table 2's memory column: ZB1P and DualPipe reach exactly PP and PP+1 chunk activations on their
 * fullest rank (M >= PP, resp. 2PP), and DualPipe holds two chunks per rank. */
TEST(activations_match_table2) {
    int bad = 0;
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MBS; b++) {
            int P = pps[a], M = mbs[b];
            for (int k = 0; k < DS_PIPE_N_KINDS; k++) {
                if (ds_pipe_check((ds_pipe_kind)k, P, M) || M < P) continue;
                ds_pipe_schedule s;
                ds_pipe_sim sim = {0};
                ds_pipe_costs c = {1, 2, 1, 3, 0};
                if (ds_pipe_schedule_make(&s, (ds_pipe_kind)k, P, M) || ds_pipe_simulate(&s, &c, &sim)) {
                    bad++;
                    continue;
                }
                int want = k == DS_PIPE_DUALPIPE ? P + 1 : P;
                bad += ds_pipe_sim_max_peak_act(&s, &sim) != want || s.n_chunks != (k == DS_PIPE_DUALPIPE ? 2 : 1);
                ds_pipe_sim_free(&sim);
                ds_pipe_schedule_free(&s);
            }
        }
    CHECK(bad == 0, "peak activations PP, PP, PP+1 and chunks 1, 1, 2: %d cases off", bad);
}

/* 1F1B's bubble is (PP-1)(F+B) on every rank whatever the micro-batch count, with free transfers. */
TEST(bubble_1f1b_formula) {
    int bad = 0;
    for (int a = 0; a < N_PPS; a++)
        for (int b = 0; b < N_MBS; b++) {
            int P = pps[a], M = mbs[b];
            ds_pipe_schedule s;
            ds_pipe_sim sim = {0};
            ds_pipe_costs c = {1.0, 2.0, 0.75, 0, 0};
            if (ds_pipe_schedule_make(&s, DS_PIPE_1F1B, P, M) || ds_pipe_simulate(&s, &c, &sim)) {
                bad++;
                continue;
            }
            for (int r = 0; r < P; r++) bad += fabs(sim.bubble[r] - (P - 1) * (c.f + c.b)) > 1e-9;
            bad += fabs(sim.step_time - (M + P - 1) * (c.f + c.b)) > 1e-9;
            bad += sim.peak_act[0] != (M < P ? M : P);
            ds_pipe_sim_free(&sim);
            ds_pipe_schedule_free(&s);
        }
    CHECK(bad == 0, "1F1B: bubble (PP-1)(F+B) on every rank, step (M+PP-1)(F+B), rank 0 holds min(M, PP): %d off", bad);
}

static void op_list(const ds_pipe_schedule *s, int r, char *out, size_t n) {
    static const char *const k[] = {"F", "B", "W", "BW"};
    out[0] = 0;
    for (int i = 0; i < s->n_ops[r]; i++)
        snprintf(out + strlen(out), n - strlen(out), "%s%d%s%s", i ? " " : "", s->ops[r][i].mb,
                 k[s->ops[r][i].kind], s->ops[r][i].paired ? "&" : "");
}

/* Small lists written out by hand: 1F1B PP=2 M=3; ZB1P PP=2 M=3 (rank 1 defers W0 until it holds 2
 * micro-batches); DualPipe PP=2 M=4 (micro-batches 0, 1 enter at rank 0, 2, 3 at rank 1; rank 1 runs
 * rank 0's sequence with the chunks swapped; the middle ranks' first steady pair runs unpaired; the
 * last backward of the near chunk defers its W). */
TEST(exact_small_schedules) {
    struct { ds_pipe_kind k; int pp, m; const char *want[2]; } cases[] = {
        {DS_PIPE_1F1B, 2, 3, {"0F 1F 0BW 2F 1BW 2BW", "0F 0BW 1F 1BW 2F 2BW"}},
        {DS_PIPE_ZB1P, 2, 3, {"0F 1F 0B 0W 2F 1B 1W 2B 2W", "0F 0B 1F 1B 0W 2F 2B 1W 2W"}},
        {DS_PIPE_DUALPIPE, 2, 4, {"0F 2F 1F 2BW 3F& 0BW 3BW 1B 1W", "2F 0F 3F 0BW 1F& 2BW 1BW 3B 3W"}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        ds_pipe_schedule s;
        CHECK(ds_pipe_schedule_make(&s, cases[c].k, cases[c].pp, cases[c].m) == 0, "make");
        for (int r = 0; r < 2; r++) {
            char got[256];
            op_list(&s, r, got, sizeof got);
            CHECK(!strcmp(got, cases[c].want[r]), "%s rank %d: '%s'", ds_pipe_kind_name(cases[c].k), r, got);
        }
        ds_pipe_schedule_free(&s);
    }
}

TEST(p2p_latency_adds_per_hop) {
    /* 1F1B with transfers of latency L: the first micro-batch's forward and backward cross 2(PP-1) links */
    ds_pipe_schedule s;
    ds_pipe_sim sim = {0};
    ds_pipe_costs c = {1, 2, 1, 0, 0.5};
    CHECK(ds_pipe_schedule_make(&s, DS_PIPE_1F1B, 4, 1) == 0 && ds_pipe_simulate(&s, &c, &sim) == 0, "simulate");
    CHECK_NEAR(sim.step_time, 4 * 3 + 2 * 3 * 0.5, 1e-12, "PP=4, one micro-batch: 4(F+B) + 6 L");
    ds_pipe_sim_free(&sim);
    ds_pipe_schedule_free(&s);
}

/* Per-stage costs: equal entries give the uniform simulation bit for bit; unequal ones, timelines by hand. */
TEST(stage_costs) {
    ds_rng g;
    ds_rng_init(&g, 7, 7);
    int differ = 0;
    for (int k = 0; k < DS_PIPE_N_KINDS; k++)
        for (int a = 1; a < 6; a++) {
            int P = pps[a] % 2 ? pps[a] + 1 : pps[a], M = 4 * P;
            ds_pipe_costs c = {0.1 + ds_rng_uniform(&g), 2.1, 0.1 + ds_rng_uniform(&g), 2.5, ds_rng_uniform(&g)};
            ds_pipe_costs per[64];
            for (int s = 0; s < P; s++) per[s] = c;
            ds_pipe_schedule s;
            ds_pipe_sim u = {0}, v = {0};
            if (ds_pipe_schedule_make(&s, (ds_pipe_kind)k, P, M) || ds_pipe_simulate(&s, &c, &u) ||
                ds_pipe_simulate_stages(&s, per, &v)) {
                differ++;
                continue;
            }
            differ += memcmp(&u.step_time, &v.step_time, sizeof(double)) != 0;
            for (int r = 0; r < P; r++)
                differ += memcmp(u.start[r], v.start[r], s.n_ops[r] * sizeof(double)) != 0 ||
                          memcmp(u.end[r], v.end[r], s.n_ops[r] * sizeof(double)) != 0;
            ds_pipe_sim_free(&u);
            ds_pipe_sim_free(&v);
            ds_pipe_schedule_free(&s);
        }
    CHECK(differ == 0, "equal stage costs: the uniform timeline bit for bit (%d differ)", differ);

    ds_pipe_schedule s;
    ds_pipe_sim sim = {0};
    /* 1F1B PP=2 M=2, stage 1 twice as slow: r0 F0 0-1 F1 1-2; r1 F0 1-3 BW0 3-7 F1 7-9 BW1 9-13;
     * r0 BW0 7-9 BW1 13-15 */
    ds_pipe_costs two[2] = {{1, 2, 1, 0, 0}, {2, 4, 2, 0, 0}};
    CHECK(ds_pipe_schedule_make(&s, DS_PIPE_1F1B, 2, 2) == 0 && ds_pipe_simulate_stages(&s, two, &sim) == 0, "simulate");
    CHECK(sim.step_time == 15 && sim.bubble[0] == 9 && sim.bubble[1] == 3 && sim.start[1][2] == 7,
          "heavy last stage: step %g, bubbles %g %g", sim.step_time, sim.bubble[0], sim.bubble[1]);
    ds_pipe_sim_free(&sim);
    ds_pipe_schedule_free(&s);
    /* 1F1B PP=3 M=1, the sender's latency per hop: 0.5, 1, 2 -> F 0-1, 1.5-2.5, 3.5-4.5, BW 4.5-6.5, 8.5-10.5,
     * 11.5-13.5 */
    ds_pipe_costs three[3] = {{1, 2, 1, 0, 0.5}, {1, 2, 1, 0, 1}, {1, 2, 1, 0, 2}};
    CHECK(ds_pipe_schedule_make(&s, DS_PIPE_1F1B, 3, 1) == 0 && ds_pipe_simulate_stages(&s, three, &sim) == 0, "simulate");
    CHECK(sim.step_time == 13.5 && sim.start[1][0] == 1.5 && sim.start[2][0] == 3.5 && sim.start[1][1] == 8.5,
          "latency of the sending stage: step %g", sim.step_time);
    ds_pipe_sim_free(&sim);
    ds_pipe_schedule_free(&s);
    /* DualPipe PP=2 M=4 (the lists of exact_small_schedules), stage 1's F&B 5 against stage 0's 3: each
     * rank's pair joins the two stages and takes 4 (5-9 instead of 5-8); the rest follows one unit later */
    ds_pipe_costs dual[2] = {{1, 2, 1, 3, 0}, {1, 2, 1, 5, 0}};
    CHECK(ds_pipe_schedule_make(&s, DS_PIPE_DUALPIPE, 2, 4) == 0 && ds_pipe_simulate_stages(&s, dual, &sim) == 0,
          "simulate");
    CHECK(sim.step_time == 13 && sim.end[0][4] == 9 && sim.end[1][4] == 9 && sim.start[0][7] == 11,
          "a pair costs its stages' mean F&B: step %g", sim.step_time);
    ds_pipe_sim_free(&sim);
    ds_pipe_schedule_free(&s);
}

TEST(refusals) {
    struct { ds_pipe_kind k; int pp, m; const char *msg; } cases[] = {
        {DS_PIPE_1F1B, 0, 4, "pipeline stages: --pp 0 must be at least 1"},
        {DS_PIPE_1F1B, 2, 0, "micro-batches: --micro-batches 0 must be at least 1"},
        {DS_PIPE_DUALPIPE, 3, 12, "DualPipe needs an even number of stages: --pp 3"},
        {DS_PIPE_1F1B, 4096, 1025, "pipeline too large to schedule: PP 4096 x 1025 micro-batches is above 4194304"},
        {DS_PIPE_DUALPIPE, 4, 6, "DualPipe needs an even number of micro-batches, at least 2 x PP = 8: --micro-batches 6"},
        {DS_PIPE_DUALPIPE, 4, 9, "DualPipe needs an even number of micro-batches, at least 2 x PP = 8: --micro-batches 9"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = ds_pipe_check(cases[i].k, cases[i].pp, cases[i].m);
        CHECK(rc == DS_EUSAGE && !strcmp(ds_errmsg(), cases[i].msg), "refused: '%s'", ds_errmsg());
    }
    ds_pipe_kind k;
    CHECK(ds_pipe_kind_parse("DualPipe", &k) == 0 && k == DS_PIPE_DUALPIPE, "parse dualpipe");
    CHECK(ds_pipe_kind_parse("zb1p", &k) == 0 && k == DS_PIPE_ZB1P, "parse zb1p");
    CHECK(ds_pipe_kind_parse("gpipe", &k) == DS_EUSAGE &&
              !strcmp(ds_errmsg(), "unknown schedule 'gpipe': expected 1f1b, zb1p or dualpipe"),
          "'%s'", ds_errmsg());
}

/* Broken on purpose: the validator and the simulation must notice. */
TEST(broken_schedules_are_caught) {
    ds_pipe_schedule s;
    ds_pipe_sim sim = {0};
    ds_pipe_costs c = {1, 2, 1, 0, 0};
    CHECK(ds_pipe_schedule_make(&s, DS_PIPE_1F1B, 2, 3) == 0, "make");
    /* rank 0 as 0F 0BW 1F ... (GPipe-like for one micro-batch) is still a valid, deadlock-free order */
    ds_pipe_op t = s.ops[0][1];
    s.ops[0][1] = s.ops[0][2];
    s.ops[0][2] = t;
    CHECK(ds_pipe_validate(&s) == 0 && ds_pipe_simulate(&s, &c, &sim) == 0, "a reordering that is still valid runs");
    ds_pipe_sim_free(&sim);
    /* rank 1 as 1F 0BW 0F ...: it waits for 1's activation, which rank 0 sends only after 0's gradient */
    ds_pipe_op u = s.ops[1][0];
    s.ops[1][0] = s.ops[1][2], s.ops[1][2] = u;
    int rc = ds_pipe_simulate(&s, &c, &sim);
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), "deadlock: rank 0 waits at op 1 (BW of micro-batch 0"), "'%s'",
          ds_errmsg());
    CHECK(ds_pipe_validate(&s) == DS_ERR && strstr(ds_errmsg(), "rank 1 op 1: BW of micro-batch 0 before its F"),
          "'%s'", ds_errmsg());
    /* back in order, then micro-batch 1's F twice on rank 1 and none of 2's */
    s.ops[1][2] = s.ops[1][0], s.ops[1][0] = u;
    s.ops[1][4] = s.ops[1][2];
    CHECK(ds_pipe_validate(&s) == DS_ERR && strstr(ds_errmsg(), "rank 1: F of micro-batch 1 twice (ops 2 and 4)"),
          "'%s'", ds_errmsg());
    s.ops[1][4].mb = 2;
    s.ops[1][4].kind = DS_PIPE_B; /* 2B with no W */
    CHECK(ds_pipe_validate(&s) == DS_ERR && strstr(ds_errmsg(), "B of micro-batch 2 before its F"), "'%s'",
          ds_errmsg());
    s.ops[1][4].kind = DS_PIPE_F;
    s.n_ops[1]--; /* no backward for 2 at stage 1 */
    CHECK(ds_pipe_validate(&s) == DS_ERR &&
              !strcmp(ds_errmsg(), "micro-batch 2 at stage 1: needs one F and one BW or B+W (has F 1 B 0 W 0 BW 0)"),
          "'%s'", ds_errmsg());
    ds_pipe_schedule_free(&s);
}

TAP_MAIN()
