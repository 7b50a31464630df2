/* Unit tests for lib/core/plot: PNG round trips through libpng's reader, the size of a loss chart,
 * text in the built-in font (exact glyph pixels) and in a font file (anti-aliased, measured, turned for
 * vertical labels), the font choice, line charts and heat maps by their pixels.
 * tests/ref/plot.bats decodes our PNGs with Python's zlib as an independent reader. */
#include "tap.h"

#include "core/err.h"
#include "core/plot.h"

#include <png.h>
#include <stdint.h>

/* The colour pattern the reference check recomputes: distinct in every channel, not constant by row. */
static uint32_t pattern(int x, int y) { return (uint32_t)((x * 7 + y) & 255) << 16 | (uint32_t)((y * 5) & 255) << 8 | ((x ^ y) & 255); }

/* Decode a PNG in memory to 8-bit RGB with libpng; NULL on failure. */
static uint8_t *decode_png(const uint8_t *png, size_t n, int *w, int *h) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&pi, png, n)) return NULL;
    pi.format = PNG_FORMAT_RGB;
    uint8_t *rgb = malloc(PNG_IMAGE_SIZE(pi));
    if (!png_image_finish_read(&pi, NULL, rgb, 0, NULL)) {
        free(rgb);
        return NULL;
    }
    *w = (int)pi.width, *h = (int)pi.height;
    return rgb;
}

TEST(png_round_trips_through_libpng) {
    ds_image im;
    CHECK(ds_image_create(&im, 200, 120, 0) == 0, "create");
    for (int y = 0; y < im.h; y++)
        for (int x = 0; x < im.w; x++) ds_image_set(&im, x, y, pattern(x, y));
    uint8_t *png;
    size_t n;
    CHECK(ds_png_encode(&im, &png, &n) == 0, "encode");
    CHECK(n > 33 && !memcmp(png, "\x89PNG\r\n\x1a\n", 8) && !memcmp(png + 12, "IHDR", 4), "signature, then IHDR");
    CHECK(png[8 + 4 + 4 + 8] == 8 && png[8 + 4 + 4 + 9] == 2, "IHDR: 8-bit RGB");
    int w = 0, h = 0;
    uint8_t *rgb = decode_png(png, n, &w, &h);
    CHECK(rgb && w == 200 && h == 120, "libpng decodes it (%dx%d)", w, h);
    int same = rgb != NULL;
    for (int y = 0; rgb && y < h; y++)
        for (int x = 0; x < w; x++) {
            const uint8_t *p = rgb + 3 * ((size_t)y * w + x);
            same &= (uint32_t)(p[0] << 16 | p[1] << 8 | p[2]) == pattern(x, y);
        }
    CHECK(same, "every pixel decodes to what was drawn");
    free(rgb);
    free(png);
    ds_image_free(&im);
    CHECK(ds_image_create(&im, 0, 10, 0) != 0 && strstr(ds_errmsg(), "image size"), "zero width refused: %s", ds_errmsg());
}

/* What ds_trainer_plot draws for a 300-step run: 900 x 540, log y, train + MTP + validation loss. The
 * stored-deflate encoder this replaced wrote 1.46 MB for it. */
TEST(loss_chart_png_is_small) {
    double x[300], y[300], m[300], vx[6], vy[6];
    for (int i = 0; i < 300; i++) {
        x[i] = i + 1;
        y[i] = 2.5 + 5 * exp(-i / 60.0) + 0.15 * sin(i * 1.7);
        m[i] = y[i] + 0.4;
    }
    for (int i = 0; i < 6; i++) vx[i] = 50 * (i + 1), vy[i] = 2.6 + 5 * exp(-vx[i] / 60.0);
    ds_series s[3] = {{.name = "train loss", .x = x, .y = y, .n = 300, .color = 0x1f77b4},
                      {.name = "MTP loss", .x = x, .y = m, .n = 300, .color = 0xff7f0e},
                      {.name = "validation loss", .x = vx, .y = vy, .n = 6, .color = 0xd62728, .marker = 1}};
    ds_line_chart c = {.width = 900, .height = 540, .title = "ds-pretrain", .xlabel = "step", .ylabel = "cross-entropy (nats)",
                       .log_y = 1, .series = s, .n_series = 3};
    ds_image im;
    CHECK(ds_chart_lines(&c, &im, NULL) == 0, "render");
    uint8_t *png;
    size_t n;
    CHECK(ds_png_encode(&im, &png, &n) == 0, "encode");
    CHECK(n < 100 * 1024, "900x540 loss chart in %zu bytes (font: %s)", n, ds_font_current());
    free(png);
    ds_image_free(&im);
}

/* Writes a PNG for tests/ref/plot.bats when DS_PLOT_REF_DIR is set (pattern + a chart). */
TEST(png_files_for_reference_check) {
    const char *dir = getenv("DS_PLOT_REF_DIR");
    if (!dir || strlen(dir) > 500) {
        CHECK(1, "# SKIP DS_PLOT_REF_DIR not set");
        return;
    }
    char path[600];
    ds_image im;
    ds_image_create(&im, 321, 257, 0);
    for (int y = 0; y < im.h; y++)
        for (int x = 0; x < im.w; x++) ds_image_set(&im, x, y, pattern(x, y));
    snprintf(path, sizeof path, "%s/pattern.png", dir);
    CHECK(ds_png_write(&im, path) == 0, "wrote %s", strrchr(path, '/') + 1);
    ds_image_free(&im);
    double x[50], y[50];
    for (int i = 0; i < 50; i++) x[i] = i, y[i] = 10 * exp(-i / 10.0) + 1;
    ds_series s = {.name = "loss", .x = x, .y = y, .n = 50, .color = 0xd62728};
    ds_line_chart c = {.width = 640, .height = 400, .title = "Loss", .xlabel = "step", .ylabel = "loss", .series = &s, .n_series = 1, .log_y = 1};
    snprintf(path, sizeof path, "%s/chart.png", dir);
    CHECK(ds_chart_lines_png(&c, path) == 0, "wrote %s", strrchr(path, '/') + 1);
    double v[8 * 12];
    for (int i = 0; i < 8 * 12; i++) v[i] = (i % 12) / 11.0 * (1 - (i / 12) / 8.0);
    v[5] = NAN;
    ds_heatmap hm = {.rows = 8, .cols = 12, .values = v, .title = "passkey retrieval", .xlabel = "context length", .ylabel = "depth", .annotate = 1, .cell = 32};
    snprintf(path, sizeof path, "%s/heatmap.png", dir);
    CHECK(ds_chart_heatmap_png(&hm, path) == 0, "wrote %s", strrchr(path, '/') + 1);
}

TEST(builtin_font_draws_the_glyph_bitmap) {
    char keep[1024];
    snprintf(keep, sizeof keep, "%s", ds_font_current());
    CHECK(ds_font_use(NULL) == 0 && !strcmp(ds_font_current(), "built-in"), "built-in font chosen");
    ds_image im;
    ds_image_create(&im, 40, 20, 0xffffff);
    ds_draw_text(&im, 2, 3, "L", 0x000000, 1);
    /* 'L': left column inked on all 7 rows, bottom row inked across 5 columns, nothing else */
    int ink = 0, expected = 1;
    for (int y = 0; y < 20; y++)
        for (int x = 0; x < 40; x++) {
            int on = ds_image_get(&im, x, y) == 0;
            int want = (x == 2 && y >= 3 && y <= 9) || (y == 9 && x >= 2 && x <= 6);
            ink += on;
            expected &= on == want;
        }
    CHECK(expected && ink == 11, "'L' has 11 ink pixels in the right places (%d)", ink);
    CHECK(ds_text_width("abc", 2) == (3 * 6 - 1) * 2 && ds_text_height(3) == 21, "text metrics");
    ds_image_free(&im);
    if (strcmp(keep, "built-in")) ds_font_use(keep);
}

/* Ink pixels (not white) of an image: count, distinct grey levels, bounding box. */
typedef struct {
    int n, levels, x0, y0, x1, y1;
} ink_box;

static ink_box ink(const ds_image *im) {
    ink_box b = {0, 0, im->w, im->h, -1, -1};
    int seen[256] = {0};
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++) {
            uint32_t c = ds_image_get(im, x, y);
            if (c == 0xffffff) continue;
            b.n++;
            b.levels += !seen[c & 255]++;
            if (x < b.x0) b.x0 = x;
            if (y < b.y0) b.y0 = y;
            if (x > b.x1) b.x1 = x;
            if (y > b.y1) b.y1 = y;
        }
    return b;
}

TEST(font_file_text_is_antialiased_measured_and_turns) {
    const char *path = ds_font_default_path();
    if (!path) {
        CHECK(1, "# SKIP no font file (install fonts-dejavu-core or set DS_FONT)");
        return;
    }
    CHECK(ds_font_use(path) == 0 && !strcmp(ds_font_current(), path), "font %s", ds_font_current());
    const char *s = "Loss 0.25";
    int tw = ds_text_width(s, 1), th = ds_text_height(1);
    /* DejaVu Sans at 11 px per em: about 6 px per character, a line box of 13 px */
    CHECK(tw > 40 && tw < 70 && th >= 11 && th <= 16, "metrics %dx%d", tw, th);
    CHECK(ds_text_width(s, 2) > tw * 4 / 3 && ds_text_height(2) > th, "scale 2 is larger (%dx%d)", ds_text_width(s, 2), ds_text_height(2));
    ds_image h, v;
    ds_image_create(&h, 100, 40, 0xffffff);
    ds_image_create(&v, 40, 100, 0xffffff);
    ds_draw_text(&h, 10, 5, s, 0x000000, 1);
    ink_box b = ink(&h);
    CHECK(b.levels > 8, "anti-aliased: %d grey levels", b.levels);
    CHECK(b.x0 >= 10 && b.x0 <= 12 && b.x1 < 10 + tw + 1 && b.x1 > 10 + tw - 4 && b.y0 >= 5 && b.y1 < 5 + th,
          "ink [%d,%d]x[%d,%d] inside the %dx%d box at (10,5)", b.x0, b.x1, b.y0, b.y1, tw, th);
    /* vertical: the same pixels turned 90 degrees counter-clockwise about (x, y) */
    ds_draw_text_vertical(&v, 5, 90, s, 0x000000, 1);
    int same = 1;
    for (int y = 0; y < h.h; y++)
        for (int x = 0; x < h.w; x++) {
            int vx = 5 + (y - 5), vy = 90 - (x - 10);
            if (vx >= 0 && vx < v.w && vy >= 0 && vy < v.h) same &= ds_image_get(&h, x, y) == ds_image_get(&v, vx, vy);
        }
    CHECK(same && ink(&v).n == b.n, "vertical text is the horizontal text turned (%d ink pixels)", b.n);
    ds_image_free(&h);
    ds_image_free(&v);
}

TEST(font_choice) {
    char keep[1024];
    snprintf(keep, sizeof keep, "%s", ds_font_current());
    const char *old = getenv("DS_FONT");
    setenv("DS_FONT", "/somewhere/Font.ttf", 1);
    CHECK(!strcmp(ds_font_default_path(), "/somewhere/Font.ttf"), "DS_FONT names the font");
    setenv("DS_FONT", "builtin", 1);
    CHECK(ds_font_default_path() == NULL, "DS_FONT=builtin: no font file");
    if (old) setenv("DS_FONT", old, 1);
    else unsetenv("DS_FONT");
    CHECK(ds_font_use("/nonexistent/Font.ttf") != 0 && strstr(ds_errmsg(), "font: ") && strstr(ds_errmsg(), "/nonexistent/Font.ttf"),
          "a missing font file: %s", ds_errmsg());
    CHECK(!strcmp(ds_font_current(), keep), "the font stays %s", ds_font_current());
    const char *not_font = tap_tmp("notafont.ttf");
    FILE *f = fopen(not_font, "w");
    fputs("not a font", f);
    fclose(f);
    CHECK(ds_font_use(not_font) != 0 && strstr(ds_errmsg(), "notafont.ttf"), "a file that is no font: %s", ds_errmsg());
    CHECK(!strcmp(ds_font_current(), keep), "the font stays %s", ds_font_current());
}

TEST(line_chart_puts_points_where_the_frame_says) {
    double x[] = {0, 97}, y[] = {3.3, 10.6};
    ds_series s = {.name = "train", .x = x, .y = y, .n = 2, .color = 0x123456};
    ds_line_chart c = {.width = 500, .height = 300, .title = "T", .xlabel = "step", .ylabel = "loss", .series = &s, .n_series = 1};
    ds_image im;
    ds_chart_frame f;
    CHECK(ds_chart_lines(&c, &im, &f) == 0, "render");
    CHECK(f.x0 == 0 && f.x1 == 100 && f.y0 == 3 && f.y1 == 11, "nice axis ranges [%g,%g] x [%g,%g]", f.x0, f.x1, f.y0, f.y1);
    CHECK(f.px0 > 20 && f.px1 < 500 && f.py0 > 20 && f.py1 < 300 && f.px0 < f.px1 && f.py0 < f.py1, "plot area inside the image");
    int hits = 0;
    for (int k = 0; k <= 10; k++) { /* points along the segment carry the series colour */
        double xv = 97.0 * k / 10, yv = 3.3 + 7.3 * k / 10;
        int px = (int)lround(ds_chart_px(&f, xv)), py = (int)lround(ds_chart_py(&f, yv));
        int found = 0;
        for (int dy = -1; dy <= 1; dy++)
            for (int dx = -1; dx <= 1; dx++) found |= ds_image_get(&im, px + dx, py + dy) == 0x123456;
        hits += found;
    }
    CHECK(hits == 11, "line passes through all 11 sampled points (%d)", hits);
    /* no series colour far from the line (below it, lower right quarter) */
    int stray = 0;
    for (int yy = (f.py0 + f.py1) / 2 + 30; yy < f.py1; yy++)
        for (int xx = (f.px0 + f.px1) / 2 + 30; xx < f.px1; xx++) stray += ds_image_get(&im, xx, yy) == 0x123456;
    CHECK(stray == 0, "no stray series pixels (%d)", stray);
    ds_image_free(&im);

    c.log_y = 1;
    double ly[] = {1, 100};
    s.y = ly;
    CHECK(ds_chart_lines(&c, &im, &f) == 0, "render log-y");
    double mid = ds_chart_py(&f, 10), top = ds_chart_py(&f, 100), bot = ds_chart_py(&f, 1);
    CHECK(fabs(mid - (top + bot) / 2) < 0.5, "10 sits half way between 1 and 100 on a log axis");
    ds_image_free(&im);

    c.width = 60, c.height = 40;
    CHECK(ds_chart_lines(&c, &im, &f) != 0 && strstr(ds_errmsg(), "too small"), "tiny chart refused: %s", ds_errmsg());
}

TEST(line_chart_breaks_at_missing_points) {
    double x[] = {0, 1, 2, 3}, y[] = {1, NAN, NAN, 1};
    ds_series s = {.x = x, .y = y, .n = 4, .color = 0x00ff00};
    ds_line_chart c = {.width = 400, .height = 300, .series = &s, .n_series = 1};
    ds_image im;
    ds_chart_frame f;
    CHECK(ds_chart_lines(&c, &im, &f) == 0, "render");
    int py = (int)lround(ds_chart_py(&f, 1));
    int mid = (int)lround(ds_chart_px(&f, 1.5));
    CHECK(ds_image_get(&im, mid, py) != 0x00ff00, "no line across the gap");
    ds_image_free(&im);
}

TEST(heatmap_cells_take_the_colormap) {
    double v[6] = {0, 0.5, 1, NAN, 0.25, 0.75};
    ds_heatmap hm = {.rows = 2, .cols = 3, .values = v, .vmin = 0, .vmax = 1, .cell = 20, .title = "passkey", .xlabel = "length", .ylabel = "depth"};
    ds_image im;
    ds_chart_frame f;
    CHECK(ds_chart_heatmap(&hm, &im, &f) == 0, "render");
    int ok = 1;
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 3; c++) {
            uint32_t got = ds_image_get(&im, f.px0 + c * 20 + 10, f.py0 + r * 20 + 10);
            double val = v[r * 3 + c];
            uint32_t want = isfinite(val) ? ds_colormap(val) : 0xc8c8c8;
            ok &= got == want;
        }
    CHECK(ok, "each cell centre has its value's colour");
    CHECK(ds_colormap(0) == 0x440154 && ds_colormap(1) == 0xfde725, "colormap ends");
    ds_image_free(&im);
    hm.rows = 0;
    CHECK(ds_chart_heatmap(&hm, &im, &f) != 0, "empty heat map refused");
}

TAP_MAIN()
