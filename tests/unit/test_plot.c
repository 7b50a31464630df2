/* Unit tests for lib/core/plot: checksums against published check values, the PNG byte layout
 * (signature, IHDR, stored deflate blocks, CRCs), text, line charts and heat maps by their pixels.
 * tests/ref/plot.bats decodes our PNGs with Python's zlib as an independent reader. */
#include "tap.h"

#include "core/err.h"
#include "core/plot.h"

#include <stdint.h>

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* The colour pattern the reference check recomputes: distinct in every channel, not constant by row. */
static uint32_t pattern(int x, int y) { return (uint32_t)((x * 7 + y) & 255) << 16 | (uint32_t)((y * 5) & 255) << 8 | ((x ^ y) & 255); }

TEST(checksums_match_published_check_values) {
    CHECK(ds_crc32(0, "123456789", 9) == 0xCBF43926u, "crc32('123456789') = %08x", ds_crc32(0, "123456789", 9));
    CHECK(ds_adler32(1, "Wikipedia", 9) == 0x11E60398u, "adler32('Wikipedia') = %08x", ds_adler32(1, "Wikipedia", 9));
    /* incremental use gives the same answer as one call */
    uint32_t c = ds_crc32(ds_crc32(0, "12345", 5), "6789", 4);
    uint32_t a = ds_adler32(ds_adler32(1, "Wiki", 4), "pedia", 5);
    CHECK(c == 0xCBF43926u && a == 0x11E60398u, "incremental crc %08x adler %08x", c, a);
    /* a long run of 0xff exercises the deferred modulo in Adler-32 */
    static uint8_t big[100000];
    memset(big, 0xff, sizeof big);
    uint32_t s1 = 1, s2 = 0;
    for (size_t i = 0; i < sizeof big; i++) s1 = (s1 + 0xff) % 65521, s2 = (s2 + s1) % 65521;
    CHECK(ds_adler32(1, big, sizeof big) == (s2 << 16 | s1), "adler32 of 100000 x 0xff");
}

/* Walk the chunks and the stored deflate blocks and return the raw scanlines. */
static uint8_t *inflate_stored_png(const uint8_t *png, size_t n, int *w, int *h, int *ok) {
    *ok = 0;
    if (n < 8 || memcmp(png, "\x89PNG\r\n\x1a\n", 8)) return NULL;
    size_t pos = 8;
    uint8_t *z = NULL, *raw = NULL;
    size_t zn = 0;
    int crc_ok = 1, saw_end = 0;
    while (pos + 12 <= n) {
        uint32_t len = be32(png + pos);
        const uint8_t *type = png + pos + 4, *data = png + pos + 8;
        if (pos + 12 + len > n) break;
        crc_ok &= ds_crc32(0, type, len + 4) == be32(data + len);
        if (!memcmp(type, "IHDR", 4)) *w = (int)be32(data), *h = (int)be32(data + 4);
        if (!memcmp(type, "IDAT", 4)) {
            z = realloc(z, zn + len);
            memcpy(z + zn, data, len);
            zn += len;
        }
        if (!memcmp(type, "IEND", 4)) saw_end = 1;
        pos += 12 + len;
    }
    if (!crc_ok || !saw_end || zn < 6 || z[0] != 0x78 || (z[0] * 256 + z[1]) % 31) {
        free(z);
        return NULL;
    }
    size_t rn = (size_t)*h * (1 + 3 * (size_t)*w), rp = 0, zp = 2;
    raw = malloc(rn);
    for (int final = 0; !final && zp + 5 <= zn;) {
        final = z[zp] & 1;
        if ((z[zp] >> 1) & 3) break; /* not a stored block */
        unsigned len = z[zp + 1] | z[zp + 2] << 8, nlen = z[zp + 3] | z[zp + 4] << 8;
        if ((len ^ nlen) != 0xffff || rp + len > rn) break;
        memcpy(raw + rp, z + zp + 5, len);
        rp += len, zp += 5 + len;
    }
    *ok = rp == rn && zp + 4 == zn && be32(z + zp) == ds_adler32(1, raw, rn);
    free(z);
    return raw;
}

TEST(png_layout_round_trips) {
    /* 200 x 120 RGB = 72120 raw bytes: two stored blocks */
    ds_image im;
    CHECK(ds_image_create(&im, 200, 120, 0) == 0, "create");
    for (int y = 0; y < im.h; y++)
        for (int x = 0; x < im.w; x++) ds_image_set(&im, x, y, pattern(x, y));
    uint8_t *png;
    size_t n;
    CHECK(ds_png_encode(&im, &png, &n) == 0, "encode");
    CHECK(png[8 + 4 + 4 + 8] == 8 && png[8 + 4 + 4 + 9] == 2, "IHDR: 8-bit RGB");
    int w = 0, h = 0, ok;
    uint8_t *raw = inflate_stored_png(png, n, &w, &h, &ok);
    CHECK(ok && w == 200 && h == 120, "chunks, CRCs, blocks and Adler-32 check (%dx%d)", w, h);
    int same = raw != NULL;
    for (int y = 0; raw && y < h; y++) {
        const uint8_t *row = raw + (size_t)y * (1 + 3 * w);
        same &= row[0] == 0;
        for (int x = 0; x < w; x++) same &= (uint32_t)(row[1 + 3 * x] << 16 | row[2 + 3 * x] << 8 | row[3 + 3 * x]) == pattern(x, y);
    }
    CHECK(same, "every pixel decodes to what was drawn");
    free(raw);
    free(png);
    ds_image_free(&im);
    CHECK(ds_image_create(&im, 0, 10, 0) != 0 && strstr(ds_errmsg(), "image size"), "zero width refused: %s", ds_errmsg());
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

TEST(text_draws_the_glyph_bitmap) {
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
