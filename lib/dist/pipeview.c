/* pipeview.c — text and PNG timelines of a pipeline schedule, and Table 2; see pipeview.h. */
#include "dist/pipeview.h"

#include "core/err.h"
#include "core/plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const ds_pipe_costs ds_pipe_view_costs = {1, 2, 1, 3, 0};

static const char *const op_label[] = {"F", "B", "W", "BW"};

static int digits(int n) {
    int d = 1;
    while (n >= 10) n /= 10, d++;
    return d;
}

/* "<mb><op>", or "<mb>F&<mb>BW" for a pair starting at op i */
static void cell_label(const ds_pipe_schedule *s, int r, int i, char *buf, size_t n) {
    const ds_pipe_op *o = &s->ops[r][i];
    if (o->paired)
        snprintf(buf, n, "%d%s&%d%s", o->mb, op_label[o->kind], s->ops[r][i + 1].mb, op_label[s->ops[r][i + 1].kind]);
    else
        snprintf(buf, n, "%d%s", o->mb, op_label[o->kind]);
}

/* The view costs are whole units, so every start and end is an exact integer */
static int unit_of(double t) { return (int)llround(t); }

static void title(const ds_pipe_schedule *s, const ds_pipe_sim *sim, ds_strbuf *out) {
    int M = s->n_mb;
    ds_strbuf_printf(out, "%s: %d rank%s, %d micro-batch%s", ds_pipe_kind_name(s->kind), s->pp, s->pp == 1 ? "" : "s", M,
                     M == 1 ? "" : "es");
    if (s->n_chunks == 2)
        ds_strbuf_printf(out, " (0-%d enter at rank 0, %d-%d at rank %d; rank r holds stages r and %d-r)", M / 2 - 1, M / 2,
                         M - 1, s->pp - 1, s->pp - 1);
    ds_strbuf_printf(out, ", step %d units\n", unit_of(sim->step_time));
}

int ds_pipe_timeline_text(const ds_pipe_schedule *s, ds_strbuf *out) {
    ds_pipe_sim sim;
    DS_TRY(ds_pipe_simulate(s, &ds_pipe_view_costs, &sim));
    int unit = digits(s->n_mb - 1) + 2;
    if (unit < 4) unit = 4;
    int width = unit * unit_of(sim.step_time), rw = digits(s->pp - 1);
    char *line = malloc((size_t)width + 1);
    if (!line) {
        ds_pipe_sim_free(&sim);
        return ds_fail(DS_ERR, "out of memory: schedule timeline");
    }
    title(s, &sim, out);
    for (int r = 0; r < s->pp; r++) {
        memset(line, '.', (size_t)width);
        line[width] = 0;
        for (int i = 0; i < s->n_ops[r]; i++) {
            int c0 = unit * unit_of(sim.start[r][i]), c1 = unit * unit_of(sim.end[r][i]);
            char label[64];
            cell_label(s, r, i, label, sizeof label);
            int len = (int)strlen(label);
            if (len > c1 - c0 - 1) len = c1 - c0 - 1; /* cannot happen at the view costs; keeps '|' */
            memset(line + c0, ' ', (size_t)(c1 - c0));
            memcpy(line + c0, label, (size_t)len);
            line[c1 - 1] = '|';
            if (s->ops[r][i].paired) i++;
        }
        ds_strbuf_printf(out, "rank %*d |%s  bubble %g, activations %d\n", rw, r, line, sim.bubble[r], sim.peak_act[r]);
    }
    ds_strbuf_printf(out,
                     "cells: <micro-batch><op>: F forward, B input gradient, W weight gradient, BW full backward, "
                     "X&Y overlapped pair; %d columns = 1 unit = F = B = W (BW 2, a pair 3); '.' idle\n",
                     unit);
    free(line);
    ds_pipe_sim_free(&sim);
    return out->oom ? ds_fail(DS_ERR, "out of memory: schedule timeline") : 0;
}

/* ---- PNG ---- */

/* colour of an op kind (F, B, W, BW) for chunk 0, then the lighter one for chunk 1 */
static const uint32_t op_colour[2][4] = {{0xf28e2b, 0x59a14f, 0x4e79a7, 0x76b7b2}, {0xfcc98f, 0xa6d49c, 0xa0bde0, 0xbfe3df}};

static void frame(ds_image *im, int x0, int y0, int x1, int y1, uint32_t c) {
    ds_draw_rect(im, x0, y0, x1, y0 + 1, c);
    ds_draw_rect(im, x0, y1 - 1, x1, y1, c);
    ds_draw_rect(im, x0, y0, x0 + 1, y1, c);
    ds_draw_rect(im, x1 - 1, y0, x1, y1, c);
}

static void box(ds_image *im, int x0, int y0, int x1, int y1, const ds_pipe_op *o) {
    ds_draw_rect(im, x0, y0, x1 - 1, y1, op_colour[o->chunk][o->kind]);
    char num[16];
    snprintf(num, sizeof num, "%d", o->mb);
    int tw = ds_text_width(num, 1), th = ds_text_height(1);
    if (tw <= x1 - x0 - 3 && th <= y1 - y0)
        ds_draw_text(im, (x0 + x1 - tw) / 2, (y0 + y1 - th) / 2, num, 0x000000, 1);
}

int ds_pipe_timeline_png(const ds_pipe_schedule *s, const char *path) {
    const ds_pipe_costs *c = &ds_pipe_view_costs;
    ds_pipe_sim sim;
    DS_TRY(ds_pipe_simulate(s, c, &sim));
    int T = unit_of(sim.step_time);
    /* about 2400 pixels of timeline at most, 22 per unit when it fits (room for a 3-digit label) */
    int upx = T > 0 ? 2400 / T : 22;
    if (upx > 22) upx = 22;
    if (upx < 3) upx = 3;
    int rowh = s->pp <= 32 ? 24 : 12, gap = s->pp <= 32 ? 4 : 2;
    int left = 10 + ds_text_width("rank 00", 1) + 8, top = 16 + ds_text_height(2) + 10;
    int legend_h = ds_text_height(1) + 20;
    int w = left + T * upx + 20, h = top + s->pp * (rowh + gap) + legend_h + 10;
    ds_image im;
    int rc = ds_image_create(&im, w, h, 0xffffff);
    if (rc) {
        ds_pipe_sim_free(&sim);
        return rc;
    }
    char t[160];
    snprintf(t, sizeof t, "%s: %d ranks, %d micro-batches, step %d units (F = B = W = 1, BW = 2, F&B = 3)",
             ds_pipe_kind_name(s->kind), s->pp, s->n_mb, T);
    ds_draw_text(&im, 10, 10, t, 0x000000, 2);
    for (int r = 0; r < s->pp; r++) {
        int y0 = top + r * (rowh + gap), y1 = y0 + rowh - 1;
        char lab[16];
        snprintf(lab, sizeof lab, "rank %d", r);
        ds_draw_text(&im, 10, y0 + (rowh - ds_text_height(1)) / 2, lab, 0x000000, 1);
        ds_draw_rect(&im, left, y0, left + T * upx - 1, y1, 0xeeeeee); /* idle */
        for (int i = 0; i < s->n_ops[r]; i++) {
            int x0 = left + unit_of(sim.start[r][i]) * upx, x1 = left + unit_of(sim.end[r][i]) * upx;
            const ds_pipe_op *o = &s->ops[r][i];
            if (o->paired) {
                /* the pair's span split in proportion to its two ops */
                double fa = c->f / (c->f + c->b);
                int xm = x0 + (int)lround(fa * (x1 - x0));
                box(&im, x0, y0, xm, y1, o);
                box(&im, xm, y0, x1, y1, &s->ops[r][i + 1]);
                frame(&im, x0, y0, x1 - 1, y1, 0x000000);
                i++;
            } else {
                box(&im, x0, y0, x1, y1, o);
            }
        }
    }
    /* legend */
    static const char *const names[] = {"forward", "input gradient (B)", "weight gradient (W)", "full backward (BW)"};
    int x = left, y = top + s->pp * (rowh + gap) + 10, sz = ds_text_height(1);
    for (int k = 0; k < 4; k++) {
        ds_draw_rect(&im, x, y, x + sz - 1, y + sz - 1, op_colour[0][k]);
        ds_draw_rect(&im, x + sz, y, x + 2 * sz - 1, y + sz - 1, op_colour[1][k]);
        ds_draw_text(&im, x + 2 * sz + 4, y, names[k], 0x000000, 1);
        x += 2 * sz + 4 + ds_text_width(names[k], 1) + 16;
    }
    frame(&im, x, y, x + 2 * sz, y + sz, 0x000000);
    ds_draw_text(&im, x + 2 * sz + 4, y, "overlapped F&B pair (lighter: chunk 1)", 0x000000, 1);
    rc = ds_png_write(&im, path);
    ds_image_free(&im);
    ds_pipe_sim_free(&sim);
    return rc;
}

/* ---- Table 2 ---- */

int ds_pipe_table2_text(int pp, int n_mb, ds_strbuf *out) {
    const ds_pipe_costs *c = &ds_pipe_view_costs;
    static const char *const formula[] = {"(PP-1)(F+B)", "(PP-1)(F+B-2W)", "(PP/2-1)(F&B+B-3W)"};
    static const char *const act_formula[] = {"PP", "PP", "PP+1"};
    ds_strbuf_printf(out, "Table 2 (DeepSeek-V3 report) at PP = %d, %d micro-batches, F = %g, B = %g, W = %g, F&B = %g:\n",
                     pp, n_mb, c->f, c->b, c->w, c->fb);
    ds_strbuf_printf(out, "%-9s %-19s %7s %9s  %-10s %-8s  %-11s %s\n", "schedule", "bubble", "formula", "simulated",
                     "parameters", "measured", "activations", "measured");
    for (int k = 0; k < DS_PIPE_N_KINDS; k++) {
        ds_pipe_schedule s = {0};
        ds_pipe_sim sim = {0};
        int rc = ds_pipe_schedule_make(&s, (ds_pipe_kind)k, pp, n_mb);
        if (!rc) rc = ds_pipe_simulate(&s, c, &sim);
        if (rc == DS_EUSAGE) {
            ds_strbuf_printf(out, "%-9s %-19s not generated: %s\n", ds_pipe_kind_name((ds_pipe_kind)k), formula[k], ds_errmsg());
            ds_err_clear();
            continue;
        }
        if (rc) return rc;
        double want = k == 0 ? (pp - 1) * (c->f + c->b)
                    : k == 1 ? (pp - 1) * (c->f + c->b - 2 * c->w)
                             : (pp / 2 - 1) * (c->fb + c->b - 3 * c->w);
        int act = k == 2 ? pp + 1 : pp;
        char params[8], acts[24];
        snprintf(params, sizeof params, "%dx", s.n_chunks);
        snprintf(acts, sizeof acts, "%s = %d", act_formula[k], act);
        ds_strbuf_printf(out, "%-9s %-19s %7g %9g  %-10s %-8s  %-11s %d\n", ds_pipe_kind_name((ds_pipe_kind)k), formula[k],
                         want, ds_pipe_sim_max_bubble(&s, &sim), k == 2 ? "2x" : "1x", params, acts,
                         ds_pipe_sim_max_peak_act(&s, &sim));
        ds_pipe_sim_free(&sim);
        ds_pipe_schedule_free(&s);
    }
    ds_strbuf_printf(out, "(bubble: the largest idle time over the ranks; parameters: stage chunks per rank; activations: "
                          "micro-batch chunks held at once on the fullest rank; the formulas assume micro-batches >= PP)\n");
    return out->oom ? ds_fail(DS_ERR, "out of memory: Table 2") : 0;
}
