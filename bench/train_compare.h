/* train_compare.h — what the bench drivers that compare training runs share (fp8_train_plot.c,
 * fp8_ensemble.c): reading ds-pretrain --metrics files (per step the training loss and the validation loss,
 * NAN where absent), and their two-chart PNG with V3's +-0.25% band.
 * Header-only: each driver is one C file linked against libds. */
#ifndef DS_BENCH_TRAIN_COMPARE_H
#define DS_BENCH_TRAIN_COMPARE_H

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

static inline int load(const char *path, run *r) {
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

static inline double mean(const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return s / n;
}

/* two charts stacked into one image */
static inline int stack_png(const ds_line_chart *top, const ds_line_chart *bottom, const char *path) {
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

#endif
