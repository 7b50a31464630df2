/* fp8_train_plot — compare training runs with a baseline twin (same config, data and seed) from their
 * ds-pretrain --metrics files: prints the relative loss difference over windows of steps, at every
 * validation and per step, and draws the loss curves and the windowed differences as one PNG with
 * libds's own charts (core/plot.h). Built and run by bench/fp8_train.sh (fp32 vs FP8) and
 * bench/fp8_accum_train.sh (bf16 vs three FP8 accumulations).
 *
 * usage: fp8_train_plot [--names BASE,RUN,...] BASE.jsonl RUN.jsonl... OUT.png [WINDOW]
 * relative difference = (loss_run - loss_base) / loss_base (docs/METRICS.md); window means are taken over
 * the training loss of WINDOW consecutive steps (default 25), over the steps every run reached. Names
 * default to "fp32" and "FP8 (E4M3, 1x128 / 128x128 / 128x1)". Prints a Markdown table, per run the
 * per-step statistics, and per run a JSON summary line (the last lines of stdout). */
#include "core/err.h"
#include "core/plot.h"
#include "train_compare.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RUNS 6

int main(int argc, char **argv) {
    static const uint32_t colors[MAX_RUNS] = {0x1f5fa8, 0xd2601a, 0x2e8b3a, 0x8e3aa8, 0x9a7b0a, 0x555555};
    static const uint32_t pale[MAX_RUNS] = {0xb8cce4, 0xf4c7a1, 0xb5dcb9, 0xd9b8e4, 0xe6d9a6, 0xcccccc};
    char *names[MAX_RUNS] = {"fp32", "FP8 (E4M3, 1x128 / 128x128 / 128x1)"}, namebuf[512] = "";
    int a0 = 1;
    if (argc > 2 && !strcmp(argv[1], "--names")) {
        snprintf(namebuf, sizeof namebuf, "%s", argv[2]);
        int k = 0;
        for (char *t = strtok(namebuf, ","); t && k < MAX_RUNS; t = strtok(NULL, ",")) names[k++] = t;
        a0 = 3;
    }
    int last = argc - 1, W = 25;
    if (last > a0 && !strstr(argv[last], ".png") && !strstr(argv[last], ".jsonl")) W = atoi(argv[last--]);
    const int R = last - a0; /* runs: argv[a0 .. last - 1], the PNG argv[last] */
    if (R < 2 || R > MAX_RUNS || W < 1) {
        fprintf(stderr, "usage: fp8_train_plot [--names BASE,RUN,...] BASE.jsonl RUN.jsonl... OUT.png [WINDOW]\n");
        return 2;
    }
    for (int r = 0; r < R; r++)
        if (!names[r]) names[r] = argv[a0 + r];
    run runs[MAX_RUNS];
    int n = INT_MAX;
    for (int r = 0; r < R; r++) {
        if (load(argv[a0 + r], &runs[r])) {
            fprintf(stderr, "fp8_train_plot: error: %s\n", ds_errmsg());
            return 1;
        }
        if (runs[r].steps < n) n = runs[r].steps;
    }
    for (int i = 0; i < n; i++)
        for (int r = 0; r < R; r++)
            if (!isfinite(runs[r].loss[i])) {
                fprintf(stderr, "fp8_train_plot: error: step %d has no finite loss in %s\n", i + 1, argv[a0 + r]);
                return 1;
            }
    const run *a = &runs[0];

    /* windows */
    const int nw = n / W;
    double *wx = malloc(sizeof(double) * (nw + 1)), *wd[MAX_RUNS], worst[MAX_RUNS] = {0};
    printf("| steps | %s loss |", names[0]);
    for (int r = 1; r < R; r++) printf(" %s loss (relative) |", names[r]);
    printf("\n|---|---|");
    for (int r = 1; r < R; r++) printf("---|");
    printf("\n");
    for (int r = 1; r < R; r++) wd[r] = malloc(sizeof(double) * (nw + 1));
    for (int k = 0; k < nw; k++) {
        const double m0 = mean(a->loss + k * W, W);
        wx[k] = k * W + (W + 1) / 2.0;
        printf("| %d–%d | %.4f |", k * W + 1, (k + 1) * W, m0);
        for (int r = 1; r < R; r++) {
            const double m = mean(runs[r].loss + k * W, W);
            wd[r][k] = 100 * (m - m0) / m0;
            if (fabs(wd[r][k]) > fabs(worst[r])) worst[r] = wd[r][k];
            printf(" %.4f (%+.2f%%) |", m, wd[r][k]);
        }
        printf("\n");
    }
    /* validations (steps where every run has one) */
    double vworst[MAX_RUNS] = {0}, vlast[MAX_RUNS];
    int nv = 0;
    for (int i = 0; i < n; i++) {
        int all = 1;
        for (int r = 0; r < R; r++) all &= isfinite(runs[r].val[i]) != 0;
        if (!all) continue;
        printf("| validation @%d | %.4f |", i + 1, a->val[i]);
        for (int r = 1; r < R; r++) {
            const double d = 100 * (runs[r].val[i] - a->val[i]) / a->val[i];
            printf(" %.4f (%+.2f%%) |", runs[r].val[i], d);
            if (fabs(d) > fabs(vworst[r])) vworst[r] = d;
            vlast[r] = d;
        }
        printf("\n");
        nv++;
    }
    /* per step: the mean and largest |relative difference|, and its spread around the window means (the
     * step-to-step noise a window mean averages down by sqrt(W)) */
    double step_abs[MAX_RUNS] = {0}, step_max[MAX_RUNS] = {0}, noise[MAX_RUNS] = {0};
    for (int r = 1; r < R; r++) {
        double ss = 0;
        int cnt = 0;
        for (int i = 0; i < n; i++) {
            const double d = (runs[r].loss[i] - a->loss[i]) / a->loss[i];
            step_abs[r] += fabs(d);
            if (fabs(d) > step_max[r]) step_max[r] = fabs(d);
            if (i / W < nw) ss += pow(100 * d - wd[r][i / W], 2), cnt++;
        }
        noise[r] = cnt > nw ? sqrt(ss / (cnt - nw)) : NAN;
        printf("%s vs %s: per step |relative| mean %.3f%%, largest %.3f%%; step-to-step spread %.3f%% (a %d-step "
               "window mean's noise %.3f%%)\n",
               names[r], names[0], 100 * step_abs[r] / n, 100 * step_max[r], noise[r], W, noise[r] / sqrt(W));
    }

    /* the chart: every loss (raw, pale, and smoothed over the window), then the windowed differences */
    double *x = malloc(sizeof(double) * n), *sm[MAX_RUNS], *vx = malloc(sizeof(double) * (nv + 1)), *vy[MAX_RUNS];
    for (int r = 0; r < R; r++) sm[r] = malloc(sizeof(double) * n), vy[r] = malloc(sizeof(double) * (nv + 1));
    for (int i = 0, j = 0; i < n; i++) {
        x[i] = i + 1;
        const int lo = i - W + 1 < 0 ? 0 : i - W + 1;
        int all = 1;
        for (int r = 0; r < R; r++) sm[r][i] = mean(runs[r].loss + lo, i - lo + 1), all &= isfinite(runs[r].val[i]) != 0;
        if (all) {
            vx[j] = i + 1;
            for (int r = 0; r < R; r++) vy[r][j] = runs[r].val[i];
            j++;
        }
    }
    char t1[200], t2[200];
    snprintf(t1, sizeof t1, "training loss (%d steps; lines: %d-step means%s)", n, W, nv ? "; squares: validation" : "");
    snprintf(t2, sizeof t2, "(run - %s) / %s of %d-step mean loss, %% (dashed: +-0.25%%)", names[0], names[0], W);
    ds_series top[3 * MAX_RUNS], bottom[MAX_RUNS + 1];
    int nt = 0, nb = 0;
    for (int r = 0; r < R; r++) top[nt++] = (ds_series){NULL, x, runs[r].loss, n, pale[r], 0};
    for (int r = 0; r < R; r++) top[nt++] = (ds_series){names[r], x, sm[r], n, colors[r], 0};
    for (int r = 0; r < R && nv; r++) top[nt++] = (ds_series){NULL, vx, vy[r], nv, colors[r], 1};
    for (int r = 1; r < R && nw; r++) bottom[nb++] = (ds_series){names[r], wx, wd[r], nw, colors[r], 1};
    /* keep the band on the difference axis: two isolated points (a NaN between them: nothing drawn) */
    double bx[3] = {1, NAN, n}, by[3] = {-0.3, NAN, 0.3};
    bottom[nb++] = (ds_series){NULL, bx, by, 3, 0, 0};
    ds_line_chart c1 = {.width = 900, .height = 480, .title = t1, .xlabel = "step", .ylabel = "loss",
                        .series = top, .n_series = nt};
    ds_line_chart c2 = {.width = 900, .height = 300, .title = t2, .xlabel = "step", .ylabel = "%", .series = bottom,
                        .n_series = nb};
    int rc = stack_png(&c1, &c2, argv[last]);
    if (rc) fprintf(stderr, "fp8_train_plot: error: %s\n", ds_errmsg());
    for (int r = 1; r < R; r++)
        printf("{\"run\": \"%s\", \"steps\": %d, \"window\": %d, \"max_abs_window_rel_pct\": %.4f, \"mean_abs_step_rel_pct\": "
               "%.4f, \"max_abs_step_rel_pct\": %.4f, \"step_noise_pct\": %.4f, \"validations\": %d, "
               "\"max_abs_val_rel_pct\": %.4f, \"last_val_rel_pct\": %.4f}\n",
               names[r], n, W, fabs(worst[r]), 100 * step_abs[r] / n, 100 * step_max[r], noise[r], nv, fabs(vworst[r]),
               nv ? vlast[r] : NAN);
    free(wx), free(x), free(vx);
    for (int r = 0; r < R; r++) {
        free(runs[r].loss), free(runs[r].val), free(sm[r]), free(vy[r]);
        if (r) free(wd[r]);
    }
    return rc ? 1 : 0;
}
