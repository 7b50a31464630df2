/* fp8_ensemble — compare training modes over an ensemble of seeds: each seed's directory holds one
 * ds-pretrain --metrics file per mode (MODE.jsonl, as bench/fp8_accum_train.sh writes them), every mode
 * trained from that seed. A mode's difference to the baseline (the first mode) is taken seed by seed, paired
 * (the same initialisation and data order), over windows of WINDOW steps:
 *     d = 100 (mean loss of the mode - mean loss of the baseline) / mean loss of the baseline   [%]
 * and summarised across the S seeds by its mean, its standard error (sample sd / sqrt(S)) and the 95%
 * confidence half-width (Student's t with S - 1 degrees of freedom times the standard error). A window
 * *resolves* V3's bound when the whole interval lies inside +-0.25%, and shows an effect when the interval
 * excludes 0. Prints a Markdown table per window, the paired validation differences, a JSON line per mode,
 * and draws the ensemble-mean losses and the paired differences (each seed's and their mean) as one PNG.
 *
 * usage: fp8_ensemble --modes BASE,MODE,... [--names BASE,MODE,...] DIR... OUT.png [WINDOW]
 * (WINDOW default 100; the steps compared are those every run of every seed reached) */
#include "core/err.h"
#include "core/plot.h"
#include "train_compare.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MODES 6
#define MAX_SEEDS 32

/* two-sided 95% quantile of Student's t with k degrees of freedom */
static double t95(int k) {
    static const double t[] = {NAN, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228};
    return k < 1 ? NAN : k <= 10 ? t[k] : k <= 30 ? 2.042 + (2.228 - 2.042) * (30 - k) / 20.0 : 1.96;
}

typedef struct {
    double mean, se, half, lo, hi; /* mean and standard error across seeds, 95% half-width, min and max */
} summary;

static summary summarise(const double *d, int S) {
    summary s = {.lo = INFINITY, .hi = -INFINITY};
    double sum = 0, ss = 0;
    for (int i = 0; i < S; i++) sum += d[i], s.lo = fmin(s.lo, d[i]), s.hi = fmax(s.hi, d[i]);
    s.mean = sum / S;
    for (int i = 0; i < S; i++) ss += (d[i] - s.mean) * (d[i] - s.mean);
    s.se = S > 1 ? sqrt(ss / (S - 1) / S) : NAN;
    s.half = t95(S - 1) * s.se;
    return s;
}

static int split(char *list, char **out, int max) {
    int k = 0;
    for (char *t = strtok(list, ","); t && k < max; t = strtok(NULL, ",")) out[k++] = t;
    return k;
}

static int usage(void) {
    fprintf(stderr, "usage: fp8_ensemble --modes BASE,MODE,... [--names BASE,MODE,...] DIR... OUT.png [WINDOW]\n");
    return 2;
}

int main(int argc, char **argv) {
    static const uint32_t colors[MAX_MODES] = {0x1f5fa8, 0xd2601a, 0x2e8b3a, 0x8e3aa8, 0x9a7b0a, 0x555555};
    static const uint32_t pale[MAX_MODES] = {0xb8cce4, 0xf4c7a1, 0xb5dcb9, 0xd9b8e4, 0xe6d9a6, 0xcccccc};
    char modebuf[256] = "", namebuf[512] = "", *modes[MAX_MODES] = {0}, *names[MAX_MODES] = {0};
    int M = 0, a0 = 1;
    while (a0 + 1 < argc && !strncmp(argv[a0], "--", 2)) {
        if (!strcmp(argv[a0], "--modes")) snprintf(modebuf, sizeof modebuf, "%s", argv[a0 + 1]), M = split(modebuf, modes, MAX_MODES);
        else if (!strcmp(argv[a0], "--names")) snprintf(namebuf, sizeof namebuf, "%s", argv[a0 + 1]), split(namebuf, names, MAX_MODES);
        else return usage();
        a0 += 2;
    }
    int last = argc - 1, W = 100;
    if (last > a0 && !strstr(argv[last], ".png")) W = atoi(argv[last--]);
    const int S = last - a0; /* seed directories argv[a0 .. last - 1], the PNG argv[last] */
    if (M < 2 || S < 1 || S > MAX_SEEDS || W < 1 || !strstr(argv[last], ".png")) return usage();
    for (int m = 0; m < M; m++)
        if (!names[m]) names[m] = modes[m];

    static run runs[MAX_SEEDS][MAX_MODES];
    int n = INT_MAX;
    for (int s = 0; s < S; s++)
        for (int m = 0; m < M; m++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s.jsonl", argv[a0 + s], modes[m]);
            if (load(path, &runs[s][m])) {
                fprintf(stderr, "fp8_ensemble: error: %s\n", ds_errmsg());
                return 1;
            }
            if (runs[s][m].steps < n) n = runs[s][m].steps;
        }
    for (int s = 0; s < S; s++)
        for (int m = 0; m < M; m++)
            for (int i = 0; i < n; i++)
                if (!isfinite(runs[s][m].loss[i])) {
                    fprintf(stderr, "fp8_ensemble: error: step %d has no finite loss in %s/%s.jsonl\n", i + 1, argv[a0 + s], modes[m]);
                    return 1;
                }
    const int nw = n / W;
    if (nw < 1) {
        fprintf(stderr, "fp8_ensemble: error: %d steps in common, fewer than one window of %d\n", n, W);
        return 1;
    }
    printf("%d seeds, %d steps in common, windows of %d steps; paired difference to %s: mean +- 95%% half-width "
           "(t with %d degrees of freedom x standard error) [min, max over seeds]\n\n", S, n, W, names[0], S - 1);

    /* per window: the baseline's ensemble mean and its seed-to-seed spread, each mode's paired difference */
    double *wx = malloc(sizeof(double) * nw), *wm[MAX_MODES], *wseed[MAX_MODES][MAX_SEEDS], d[MAX_SEEDS];
    int effect[MAX_MODES] = {0}, within[MAX_MODES] = {0};
    double worst[MAX_MODES] = {0}, widest[MAX_MODES] = {0};
    for (int m = 0; m < M; m++) {
        wm[m] = malloc(sizeof(double) * nw);
        for (int s = 0; s < S; s++) wseed[m][s] = malloc(sizeof(double) * nw);
    }
    printf("| steps | %s loss (seed spread) |", names[0]);
    for (int m = 1; m < M; m++) printf(" %s − %s |", names[m], names[0]);
    printf("\n|---|---|");
    for (int m = 1; m < M; m++) printf("---|");
    printf("\n");
    for (int k = 0; k < nw; k++) {
        double base[MAX_SEEDS];
        for (int s = 0; s < S; s++) base[s] = mean(runs[s][0].loss + k * W, W);
        const summary b = summarise(base, S);
        wx[k] = k * W + (W + 1) / 2.0;
        printf("| %d–%d | %.4f (±%.2f%%) |", k * W + 1, (k + 1) * W, b.mean, 100 * b.se * sqrt(S) / b.mean);
        for (int m = 1; m < M; m++) {
            for (int s = 0; s < S; s++) wseed[m][s][k] = d[s] = 100 * (mean(runs[s][m].loss + k * W, W) - base[s]) / base[s];
            const summary r = summarise(d, S);
            wm[m][k] = r.mean;
            effect[m] += fabs(r.mean) > r.half;
            within[m] += fabs(r.mean) + r.half <= 0.25;
            if (fabs(r.mean) > fabs(worst[m])) worst[m] = r.mean;
            if (r.half > widest[m]) widest[m] = r.half;
            printf(" %+.2f%% ± %.2f [%+.2f, %+.2f] |", r.mean, r.half, r.lo, r.hi);
        }
        printf("\n");
    }
    /* validations at the steps where every run has one, about four of them */
    const int vstep = W * (nw / 4 > 1 ? nw / 4 : 1);
    for (int i = 0; i < n; i++) {
        int all = (i + 1) % vstep == 0 || i + 1 == n;
        for (int s = 0; s < S; s++)
            for (int m = 0; m < M; m++) all &= isfinite(runs[s][m].val[i]) != 0;
        if (!all) continue;
        double base[MAX_SEEDS];
        for (int s = 0; s < S; s++) base[s] = runs[s][0].val[i];
        const summary b = summarise(base, S);
        printf("| validation @%d | %.4f (±%.2f%%) |", i + 1, b.mean, 100 * b.se * sqrt(S) / b.mean);
        for (int m = 1; m < M; m++) {
            for (int s = 0; s < S; s++) d[s] = 100 * (runs[s][m].val[i] - base[s]) / base[s];
            const summary r = summarise(d, S);
            printf(" %+.2f%% ± %.2f [%+.2f, %+.2f] |", r.mean, r.half, r.lo, r.hi);
        }
        printf("\n");
    }
    printf("\n(seed spread: the sample standard deviation of the %s window mean across seeds, relative)\n", names[0]);

    /* the chart: each mode's loss averaged over the seeds, then the paired differences, each seed's (pale) and
     * their mean */
    double *x = malloc(sizeof(double) * n), *avg[MAX_MODES];
    for (int m = 0; m < M; m++) {
        avg[m] = malloc(sizeof(double) * n);
        for (int i = 0; i < n; i++) {
            const int lo = i - W + 1 < 0 ? 0 : i - W + 1;
            double sum = 0;
            for (int s = 0; s < S; s++) sum += mean(runs[s][m].loss + lo, i - lo + 1);
            avg[m][i] = sum / S, x[i] = i + 1;
        }
    }
    ds_series top[MAX_MODES], bottom[(MAX_SEEDS + 1) * MAX_MODES + 1];
    int nt = 0, nb = 0;
    for (int m = 0; m < M; m++) top[nt++] = (ds_series){names[m], x, avg[m], n, colors[m], 0};
    for (int m = 1; m < M; m++)
        for (int s = 0; s < S; s++) bottom[nb++] = (ds_series){NULL, wx, wseed[m][s], nw, pale[m], 0};
    for (int m = 1; m < M; m++) bottom[nb++] = (ds_series){names[m], wx, wm[m], nw, colors[m], 1};
    double bx[3] = {1, NAN, n}, by[3] = {-0.3, NAN, 0.3};
    bottom[nb++] = (ds_series){NULL, bx, by, 3, 0, 0};
    char t1[200], t2[200];
    snprintf(t1, sizeof t1, "training loss, mean of %d seeds (%d-step means)", S, W);
    snprintf(t2, sizeof t2, "(mode - %s) / %s, %d-step windows, %%: each seed (pale), their mean (dashed: +-0.25%%)",
             names[0], names[0], W);
    ds_line_chart c1 = {.width = 900, .height = 420, .title = t1, .xlabel = "step", .ylabel = "loss", .series = top,
                        .n_series = nt};
    ds_line_chart c2 = {.width = 900, .height = 340, .title = t2, .xlabel = "step", .ylabel = "%", .series = bottom,
                        .n_series = nb};
    int rc = stack_png(&c1, &c2, argv[last]);
    if (rc) fprintf(stderr, "fp8_ensemble: error: %s\n", ds_errmsg());
    for (int m = 1; m < M; m++)
        printf("{\"mode\": \"%s\", \"seeds\": %d, \"steps\": %d, \"window\": %d, \"windows\": %d, "
               "\"max_abs_mean_rel_pct\": %.4f, \"max_half_width_pct\": %.4f, \"windows_with_effect\": %d, "
               "\"windows_within_0.25pct\": %d}\n",
               names[m], S, n, W, nw, fabs(worst[m]), widest[m], effect[m], within[m]);
    return rc ? 1 : 0;
}
