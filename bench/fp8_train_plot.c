/* fp8_train_plot — compare an FP8 training run with its fp32 twin (same config, data and seed) from two
 * ds-pretrain --metrics files: prints the relative loss difference over windows of steps, at every
 * validation and per step, and draws both loss curves and the windowed difference as one PNG with
 * libds's own charts (core/plot.h). Built and run by bench/fp8_train.sh.
 *
 * usage: fp8_train_plot FP32.jsonl FP8.jsonl OUT.png [WINDOW]
 * relative difference = (loss_fp8 - loss_fp32) / loss_fp32 (docs/METRICS.md); window means are taken over
 * the training loss of WINDOW consecutive steps (default 25). Prints a Markdown table and a JSON summary
 * line, the last line of stdout. */
#include "core/err.h"
#include "core/plot.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double *loss, *val; /* indexed by step - 1; NAN where absent */
    int steps;
} run;

static int load(const char *path, run *r) {
    FILE *f = fopen(path, "r");
    if (!f) return ds_fail(DS_ERR, "cannot open %s", path);
    int cap = 1024;
    r->loss = malloc(sizeof(double) * cap), r->val = malloc(sizeof(double) * cap), r->steps = 0;
    char line[1 << 16];
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        json_t *st = j ? json_object_get(j, "step") : NULL;
        if (json_is_integer(st)) {
            int s = (int)json_integer_value(st);
            while (s > cap) {
                cap *= 2;
                r->loss = realloc(r->loss, sizeof(double) * cap), r->val = realloc(r->val, sizeof(double) * cap);
            }
            for (int i = r->steps; i < s; i++) r->loss[i] = r->val[i] = NAN;
            if (s > r->steps) r->steps = s;
            json_t *l = json_object_get(j, "loss"), *v = json_object_get(j, "val_loss");
            if (json_is_number(l)) r->loss[s - 1] = json_number_value(l);
            if (json_is_number(v)) r->val[s - 1] = json_number_value(v);
        }
        json_decref(j);
    }
    fclose(f);
    return r->steps > 0 ? 0 : ds_fail(DS_ERR, "no step records in %s", path);
}

static double mean(const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return s / n;
}

/* two charts stacked into one image */
static int stack_png(const ds_line_chart *top, const ds_line_chart *bottom, const char *path) {
    ds_image a = {0}, b = {0}, out = {0};
    ds_chart_frame fa, fb;
    int rc = ds_chart_lines(top, &a, &fa);
    if (!rc) rc = ds_chart_lines(bottom, &b, &fb);
    if (!rc) rc = ds_image_create(&out, a.w > b.w ? a.w : b.w, a.h + b.h, 0xffffff);
    if (!rc) {
        for (int y = 0; y < a.h; y++) memcpy(out.rgb + (size_t)y * out.w * 3, a.rgb + (size_t)y * a.w * 3, (size_t)a.w * 3);
        for (int y = 0; y < b.h; y++)
            memcpy(out.rgb + (size_t)(a.h + y) * out.w * 3, b.rgb + (size_t)y * b.w * 3, (size_t)b.w * 3);
        /* the ±0.25% band V3 reports as its bound */
        for (int k = -1; k <= 1; k += 2) {
            int py = (int)lround(ds_chart_py(&fb, 0.25 * k));
            for (int x = fb.px0; x <= fb.px1; x += 6) ds_draw_line(&out, x, a.h + py, x + 2, a.h + py, 0x888888, 1);
        }
        rc = ds_png_write(&out, path);
    }
    ds_image_free(&a), ds_image_free(&b), ds_image_free(&out);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: fp8_train_plot FP32.jsonl FP8.jsonl OUT.png [WINDOW]\n");
        return 2;
    }
    int W = argc == 5 ? atoi(argv[4]) : 25;
    run a, b;
    if (load(argv[1], &a) || load(argv[2], &b) || W < 1) {
        fprintf(stderr, "fp8_train_plot: error: %s\n", W < 1 ? "bad window" : ds_errmsg());
        return 1;
    }
    int n = a.steps < b.steps ? a.steps : b.steps;
    for (int i = 0; i < n; i++)
        if (!isfinite(a.loss[i]) || !isfinite(b.loss[i])) {
            fprintf(stderr, "fp8_train_plot: error: step %d has no finite loss in both runs\n", i + 1);
            return 1;
        }

    /* windows */
    int nw = n / W;
    double *wx = malloc(sizeof(double) * (nw + 1)), *wd = malloc(sizeof(double) * (nw + 1)), worst = 0;
    printf("| steps | fp32 loss | FP8 loss | relative |\n|---|---|---|---|\n");
    for (int k = 0; k < nw; k++) {
        double m32 = mean(a.loss + k * W, W), m8 = mean(b.loss + k * W, W);
        wx[k] = k * W + (W + 1) / 2.0;
        wd[k] = 100 * (m8 - m32) / m32;
        if (fabs(wd[k]) > fabs(worst)) worst = wd[k];
        printf("| %d–%d | %.4f | %.4f | %+.2f%% |\n", k * W + 1, (k + 1) * W, m32, m8, wd[k]);
    }
    /* validations (steps where both have one) */
    double vworst = 0, vlast = NAN;
    int nv = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(a.val[i]) && isfinite(b.val[i])) {
            double d = 100 * (b.val[i] - a.val[i]) / a.val[i];
            printf("| validation @%d | %.4f | %.4f | %+.2f%% |\n", i + 1, a.val[i], b.val[i], d);
            if (fabs(d) > fabs(vworst)) vworst = d;
            vlast = d, nv++;
        }
    double step_abs = 0, step_max = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs(b.loss[i] - a.loss[i]) / a.loss[i];
        step_abs += d;
        if (d > step_max) step_max = d;
    }

    /* the chart: both losses (raw and smoothed over the window), then the windowed difference */
    double *x = malloc(sizeof(double) * n), *sa = malloc(sizeof(double) * n), *sb = malloc(sizeof(double) * n);
    double *vx = malloc(sizeof(double) * (nv + 1)), *va = malloc(sizeof(double) * (nv + 1)), *vb = malloc(sizeof(double) * (nv + 1));
    for (int i = 0, j = 0; i < n; i++) {
        x[i] = i + 1;
        int lo = i - W + 1 < 0 ? 0 : i - W + 1;
        sa[i] = mean(a.loss + lo, i - lo + 1), sb[i] = mean(b.loss + lo, i - lo + 1);
        if (isfinite(a.val[i]) && isfinite(b.val[i])) vx[j] = i + 1, va[j] = a.val[i], vb[j++] = b.val[i];
    }
    char t1[160], t2[200];
    snprintf(t1, sizeof t1, "training loss, fp32 vs FP8 (%d steps; lines: %d-step means)", n, W);
    snprintf(t2, sizeof t2, "(FP8 - fp32) / fp32 of %d-step mean loss, %% (dashed: +-0.25%%)", W);
    const ds_series top[] = {
        {NULL, x, a.loss, n, 0xb8cce4, 0}, {NULL, x, b.loss, n, 0xf4c7a1, 0},
        {"fp32", x, sa, n, 0x1f5fa8, 0},   {"FP8 (E4M3, 1x128 / 128x128 / 128x1)", x, sb, n, 0xd2601a, 0},
        {"fp32 validation", vx, va, nv, 0x1f5fa8, 1}, {"FP8 validation", vx, vb, nv, 0xd2601a, 1},
    };
    const ds_series bottom[] = {{"relative difference", wx, wd, nw, 0x333333, 1}};
    ds_line_chart c1 = {.width = 900, .height = 480, .title = t1, .xlabel = "step", .ylabel = "loss",
                        .series = top, .n_series = nv ? 6 : 4};
    ds_line_chart c2 = {.width = 900, .height = 300, .title = t2, .xlabel = "step", .ylabel = "%", .series = bottom,
                        .n_series = nw ? 1 : 0};
    /* keep the band on the difference axis: two isolated points (a NaN between them: nothing drawn) */
    double bx[3] = {1, NAN, n}, by[3] = {-0.3, NAN, 0.3};
    ds_series bottom2[2] = {bottom[0], {NULL, bx, by, 3, 0, 0}};
    c2.series = bottom2, c2.n_series = nw ? 2 : 1;
    int rc = stack_png(&c1, &c2, argv[3]);
    if (rc) fprintf(stderr, "fp8_train_plot: error: %s\n", ds_errmsg());
    printf("{\"steps\": %d, \"window\": %d, \"max_abs_window_rel_pct\": %.4f, \"mean_abs_step_rel_pct\": %.4f, "
           "\"max_abs_step_rel_pct\": %.4f, \"validations\": %d, \"max_abs_val_rel_pct\": %.4f, \"last_val_rel_pct\": %.4f}\n",
           n, W, fabs(worst), 100 * step_abs / n, 100 * step_max, nv, fabs(vworst), vlast);
    free(wx), free(wd), free(x), free(sa), free(sb), free(vx), free(va), free(vb);
    free(a.loss), free(a.val), free(b.loss), free(b.val);
    return rc ? 1 : 0;
}
