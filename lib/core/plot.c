#include "core/plot.h"

#include "core/err.h"
#include "core/file.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include <math.h>
#include <png.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- raster ---- */

int ds_image_create(ds_image *im, int w, int h, uint32_t background) {
    memset(im, 0, sizeof *im);
    if (w <= 0 || h <= 0 || w > 16384 || h > 16384) return ds_fail(DS_ERR, "image size %dx%d out of range: plot", w, h);
    im->rgb = malloc((size_t)w * h * 3);
    if (!im->rgb) return ds_fail(DS_ERR, "out of memory: image %dx%d", w, h);
    im->w = w;
    im->h = h;
    for (size_t i = 0; i < (size_t)w * h; i++) {
        im->rgb[3 * i] = (uint8_t)(background >> 16);
        im->rgb[3 * i + 1] = (uint8_t)(background >> 8);
        im->rgb[3 * i + 2] = (uint8_t)background;
    }
    return 0;
}

void ds_image_free(ds_image *im) {
    free(im->rgb);
    memset(im, 0, sizeof *im);
}

void ds_image_set(ds_image *im, int x, int y, uint32_t color) {
    if (x < 0 || y < 0 || x >= im->w || y >= im->h) return;
    uint8_t *p = im->rgb + 3 * ((size_t)y * im->w + x);
    p[0] = (uint8_t)(color >> 16);
    p[1] = (uint8_t)(color >> 8);
    p[2] = (uint8_t)color;
}

uint32_t ds_image_get(const ds_image *im, int x, int y) {
    if (x < 0 || y < 0 || x >= im->w || y >= im->h) return 0;
    const uint8_t *p = im->rgb + 3 * ((size_t)y * im->w + x);
    return (uint32_t)p[0] << 16 | (uint32_t)p[1] << 8 | p[2];
}

void ds_draw_rect(ds_image *im, int x0, int y0, int x1, int y1, uint32_t color) {
    if (x0 > x1) { int t = x0; x0 = x1; x1 = t; }
    if (y0 > y1) { int t = y0; y0 = y1; y1 = t; }
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 >= im->w) x1 = im->w - 1;
    if (y1 >= im->h) y1 = im->h - 1;
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) ds_image_set(im, x, y, color);
}

/* Bresenham; a thick line stamps a square brush centred on each pixel of the thin one. */
void ds_draw_line(ds_image *im, int x0, int y0, int x1, int y1, uint32_t color, int thickness) {
    int r0 = -(thickness - 1) / 2, r1 = thickness / 2;
    int dx = abs(x1 - x0), dy = -abs(y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
        for (int oy = r0; oy <= r1; oy++)
            for (int ox = r0; ox <= r1; ox++) ds_image_set(im, x0 + ox, y0 + oy, color);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * err;
        if (e2 >= dy) { err += dy; x0 += sx; }
        if (e2 <= dx) { err += dx; y0 += sy; }
    }
}

/* ---- font: 5x7 glyphs for ASCII 32..126, drawn by us; '#' is ink, rows separated by spaces ---- */
static const char *const font_5x7[95] = {
    "..... ..... ..... ..... ..... ..... .....", /* ' ' */
    "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..", /* '!' */
    ".#.#. .#.#. ..... ..... ..... ..... .....", /* '"' */
    ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.", /* '#' */
    "..#.. .#### #.#.. .###. ..#.# ####. ..#..", /* '$' */
    "##... ##..# ...#. ..#.. .#... #..## ...##", /* '%' */
    ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#", /* '&' */
    "..#.. ..#.. ..... ..... ..... ..... .....", /* ''' */
    "...#. ..#.. .#... .#... .#... ..#.. ...#.", /* '(' */
    ".#... ..#.. ...#. ...#. ...#. ..#.. .#...", /* ')' */
    "..... ..#.. #.#.# .###. #.#.# ..#.. .....", /* star */
    "..... ..#.. ..#.. ##### ..#.. ..#.. .....", /* '+' */
    "..... ..... ..... ..... .##.. ..#.. .#...", /* ',' */
    "..... ..... ..... ##### ..... ..... .....", /* '-' */
    "..... ..... ..... ..... ..... .##.. .##..", /* '.' */
    "..... ....# ...#. ..#.. .#... #.... .....", /* slash */
    ".###. #...# #..## #.#.# ##..# #...# .###.", /* '0' */
    "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.", /* '1' */
    ".###. #...# ....# ...#. ..#.. .#... #####", /* '2' */
    "##### ...#. ..#.. ...#. ....# #...# .###.", /* '3' */
    "...#. ..##. .#.#. #..#. ##### ...#. ...#.", /* '4' */
    "##### #.... ####. ....# ....# #...# .###.", /* '5' */
    "..##. .#... #.... ####. #...# #...# .###.", /* '6' */
    "##### ....# ...#. ..#.. .#... .#... .#...", /* '7' */
    ".###. #...# #...# .###. #...# #...# .###.", /* '8' */
    ".###. #...# #...# .#### ....# ...#. .##..", /* '9' */
    "..... .##.. .##.. ..... .##.. .##.. .....", /* ':' */
    "..... .##.. .##.. ..... .##.. ..#.. .#...", /* ';' */
    "...#. ..#.. .#... #.... .#... ..#.. ...#.", /* '<' */
    "..... ..... ##### ..... ##### ..... .....", /* '=' */
    ".#... ..#.. ...#. ....# ...#. ..#.. .#...", /* '>' */
    ".###. #...# ....# ...#. ..#.. ..... ..#..", /* '?' */
    ".###. #...# ....# .##.# #.#.# #.#.# .###.", /* '@' */
    ".###. #...# #...# ##### #...# #...# #...#", /* 'A' */
    "####. #...# #...# ####. #...# #...# ####.", /* 'B' */
    ".###. #...# #.... #.... #.... #...# .###.", /* 'C' */
    "###.. #..#. #...# #...# #...# #..#. ###..", /* 'D' */
    "##### #.... #.... ####. #.... #.... #####", /* 'E' */
    "##### #.... #.... ####. #.... #.... #....", /* 'F' */
    ".###. #...# #.... #.### #...# #...# .####", /* 'G' */
    "#...# #...# #...# ##### #...# #...# #...#", /* 'H' */
    ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", /* 'I' */
    "..### ...#. ...#. ...#. ...#. #..#. .##..", /* 'J' */
    "#...# #..#. #.#.. ##... #.#.. #..#. #...#", /* 'K' */
    "#.... #.... #.... #.... #.... #.... #####", /* 'L' */
    "#...# ##.## #.#.# #.#.# #...# #...# #...#", /* 'M' */
    "#...# #...# ##..# #.#.# #..## #...# #...#", /* 'N' */
    ".###. #...# #...# #...# #...# #...# .###.", /* 'O' */
    "####. #...# #...# ####. #.... #.... #....", /* 'P' */
    ".###. #...# #...# #...# #.#.# #..#. .##.#", /* 'Q' */
    "####. #...# #...# ####. #.#.. #..#. #...#", /* 'R' */
    ".#### #.... #.... .###. ....# ....# ####.", /* 'S' */
    "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..", /* 'T' */
    "#...# #...# #...# #...# #...# #...# .###.", /* 'U' */
    "#...# #...# #...# #...# #...# .#.#. ..#..", /* 'V' */
    "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.", /* 'W' */
    "#...# #...# .#.#. ..#.. .#.#. #...# #...#", /* 'X' */
    "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..", /* 'Y' */
    "##### ....# ...#. ..#.. .#... #.... #####", /* 'Z' */
    ".###. .#... .#... .#... .#... .#... .###.", /* '[' */
    "..... #.... .#... ..#.. ...#. ....# .....", /* backslash */
    ".###. ...#. ...#. ...#. ...#. ...#. .###.", /* ']' */
    "..#.. .#.#. #...# ..... ..... ..... .....", /* '^' */
    "..... ..... ..... ..... ..... ..... #####", /* '_' */
    ".#... ..#.. ..... ..... ..... ..... .....", /* '`' */
    "..... ..... .###. ....# .#### #...# .####", /* 'a' */
    "#.... #.... #.##. ##..# #...# #...# ####.", /* 'b' */
    "..... ..... .###. #.... #.... #...# .###.", /* 'c' */
    "....# ....# .##.# #..## #...# #...# .####", /* 'd' */
    "..... ..... .###. #...# ##### #.... .###.", /* 'e' */
    "..##. .#..# .#... ###.. .#... .#... .#...", /* 'f' */
    "..... .#### #...# #...# .#### ....# .###.", /* 'g' */
    "#.... #.... #.##. ##..# #...# #...# #...#", /* 'h' */
    "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.", /* 'i' */
    "...#. ..... ..##. ...#. ...#. #..#. .##..", /* 'j' */
    "#.... #.... #..#. #.#.. ##... #.#.. #..#.", /* 'k' */
    ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", /* 'l' */
    "..... ..... ##.#. #.#.# #.#.# #...# #...#", /* 'm' */
    "..... ..... #.##. ##..# #...# #...# #...#", /* 'n' */
    "..... ..... .###. #...# #...# #...# .###.", /* 'o' */
    "..... ..... ####. #...# ####. #.... #....", /* 'p' */
    "..... ..... .#### #...# .#### ....# ....#", /* 'q' */
    "..... ..... #.##. ##..# #.... #.... #....", /* 'r' */
    "..... ..... .###. #.... .###. ....# ####.", /* 's' */
    ".#... .#... ###.. .#... .#... .#..# ..##.", /* 't' */
    "..... ..... #...# #...# #...# #..## .##.#", /* 'u' */
    "..... ..... #...# #...# #...# .#.#. ..#..", /* 'v' */
    "..... ..... #...# #...# #.#.# #.#.# .#.#.", /* 'w' */
    "..... ..... #...# .#.#. ..#.. .#.#. #...#", /* 'x' */
    "..... ..... #...# #...# .#### ....# .###.", /* 'y' */
    "..... ..... ##### ...#. ..#.. .#... #####", /* 'z' */
    "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.", /* '{' */
    "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..", /* '|' */
    ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...", /* '}' */
    "..... ..... .#... #.#.# ...#. ..... .....", /* '~' */
};

enum { GLYPH_W = 5, GLYPH_H = 7, CELL_W = 6, CELL_H = 9 };

static int glyph_ink(unsigned char c, int row, int col) {
    if (c < 32 || c > 126) return row == 0 || row == GLYPH_H - 1 || col == 0 || col == GLYPH_W - 1;
    return font_5x7[c - 32][row * (GLYPH_W + 1) + col] == '#';
}

static void draw_builtin_glyph(ds_image *im, int x, int y, unsigned char c, uint32_t color, int scale, int vertical) {
    for (int r = 0; r < GLYPH_H; r++)
        for (int k = 0; k < GLYPH_W; k++) {
            if (!glyph_ink(c, r, k)) continue;
            /* vertical text is the horizontal glyph turned 90 degrees counter-clockwise */
            int gx = vertical ? r : k, gy = vertical ? -k : r;
            for (int sy = 0; sy < scale; sy++)
                for (int sx = 0; sx < scale; sx++) ds_image_set(im, x + gx * scale + sx, y + gy * scale - (vertical ? sy : -sy), color);
        }
}

/* ---- fonts: a TrueType/OpenType face through FreeType, or the built-in bitmap font ---- */

/* The face in use (NULL: the built-in font). Set once on first use, or by ds_font_use. */
static FT_Library ft_lib;
static FT_Face ft_face;
static char ft_path[1024];
static pthread_once_t font_once = PTHREAD_ONCE_INIT;
static int font_chosen; /* ds_font_use was called: the default lookup must not override it */

const char *ds_font_default_path(void) {
    const char *env = getenv("DS_FONT");
    if (env && *env) return strcmp(env, "builtin") ? env : NULL;
    /* where Debian (fonts-dejavu-core), Arch and Fedora put DejaVu Sans */
    static const char *const known[] = {"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf",
                                        "/usr/share/fonts/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (access(known[i], R_OK) == 0) return known[i];
    return NULL;
}

int ds_font_use(const char *path) {
    if (!path) {
        if (ft_face) FT_Done_Face(ft_face);
        ft_face = NULL;
        font_chosen = 1;
        return 0;
    }
    if (strlen(path) >= sizeof ft_path) return ds_fail(DS_ERR, "font path too long: %s", path);
    if (!ft_lib && FT_Init_FreeType(&ft_lib)) return ds_fail(DS_ERR, "font: FreeType failed to start: %s", path);
    FT_Face face;
    FT_Error e = FT_New_Face(ft_lib, path, 0, &face);
    if (e)
        return ds_fail(DS_ERR, "font: %s: %s",
                       e == FT_Err_Cannot_Open_Resource ? "cannot open" : e == FT_Err_Unknown_File_Format ? "not a font file" : "cannot be read", path);
    if (!FT_IS_SCALABLE(face)) {
        FT_Done_Face(face);
        return ds_fail(DS_ERR, "font: not a scalable (outline) font: %s", path);
    }
    if (ft_face) FT_Done_Face(ft_face);
    ft_face = face;
    memcpy(ft_path, path, strlen(path) + 1);
    font_chosen = 1;
    return 0;
}

/* First use: the default font if it loads, else the built-in one (a chart without a font file still
 * gets its labels). */
static void font_default(void) {
    if (font_chosen) return;
    const char *p = ds_font_default_path();
    if (p && ds_font_use(p)) ds_font_use(NULL);
}

static FT_Face font_face(void) {
    pthread_once(&font_once, font_default);
    return ft_face;
}

const char *ds_font_current(void) { return font_face() ? ft_path : "built-in"; }

/* Pixel size of the face for a text scale: 11 px for tick labels (scale 1), 16 px for titles (2). */
static int font_px(int scale) { return 5 * scale + 6; }

static int ft_ascent(FT_Face f) { return (int)((f->size->metrics.ascender + 63) >> 6); }

/* Next code point of UTF-8 text (invalid bytes read as U+FFFD, one byte each). */
static uint32_t next_utf8(const char **s) {
    const unsigned char *p = (const unsigned char *)*s;
    int n = p[0] < 0x80 ? 0 : (p[0] & 0xe0) == 0xc0 ? 1 : (p[0] & 0xf0) == 0xe0 ? 2 : (p[0] & 0xf8) == 0xf0 ? 3 : -1;
    uint32_t cp = n == 0 ? p[0] : n == 1 ? p[0] & 0x1f : n == 2 ? p[0] & 0x0f : p[0] & 0x07;
    for (int i = 1; i <= n; i++) {
        if ((p[i] & 0xc0) != 0x80) n = -1;
        if (n < 0) break;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    *s += n < 0 ? 1 : n + 1;
    return n < 0 ? 0xfffd : cp;
}

/* Alpha-blend `color` over the pixel at coverage a (0..255). */
static void blend(ds_image *im, int x, int y, uint32_t color, unsigned a) {
    if (x < 0 || y < 0 || x >= im->w || y >= im->h || !a) return;
    uint8_t *p = im->rgb + 3 * ((size_t)y * im->w + x);
    for (int c = 0; c < 3; c++) {
        unsigned fg = (color >> (16 - 8 * c)) & 255;
        p[c] = (uint8_t)((p[c] * (255 - a) + fg * a + 127) / 255);
    }
}

/* Lay out (and with im, draw) a string in the face: pen positions in 26.6 fixed point with kerning.
 * Returns the advance width in pixels. Vertical text maps the horizontal pixel (hx, hy) to
 * (x + hy, y - hx), as the built-in font does. */
static int ft_text(FT_Face f, ds_image *im, int x, int y, const char *s, uint32_t color, int scale, int vertical) {
    if (FT_Set_Pixel_Sizes(f, 0, (FT_UInt)font_px(scale))) return 0;
    int asc = ft_ascent(f);
    long pen = 0;
    FT_UInt prev = 0;
    while (*s) {
        FT_UInt gi = FT_Get_Char_Index(f, next_utf8(&s));
        if (prev && gi && FT_HAS_KERNING(f)) {
            FT_Vector k;
            if (!FT_Get_Kerning(f, prev, gi, FT_KERNING_DEFAULT, &k)) pen += k.x;
        }
        if (FT_Load_Glyph(f, gi, im ? FT_LOAD_RENDER : FT_LOAD_DEFAULT)) continue;
        const FT_GlyphSlot g = f->glyph;
        if (im && g->bitmap.pixel_mode == FT_PIXEL_MODE_GRAY) {
            int ox = (int)((pen + 32) >> 6) + g->bitmap_left, oy = asc - g->bitmap_top;
            for (unsigned r = 0; r < g->bitmap.rows; r++)
                for (unsigned k = 0; k < g->bitmap.width; k++) {
                    unsigned a = g->bitmap.buffer[(long)r * g->bitmap.pitch + k];
                    int hx = ox + (int)k, hy = oy + (int)r;
                    if (vertical) blend(im, x + hy, y - hx, color, a);
                    else blend(im, x + hx, y + hy, color, a);
                }
        }
        pen += g->advance.x;
        prev = gi;
    }
    return (int)((pen + 63) >> 6);
}

int ds_text_width(const char *s, int scale) {
    FT_Face f = font_face();
    if (f) return ft_text(f, NULL, 0, 0, s, 0, scale, 0);
    int n = (int)strlen(s);
    return n ? (n * CELL_W - 1) * scale : 0;
}

int ds_text_height(int scale) {
    FT_Face f = font_face();
    if (f && !FT_Set_Pixel_Sizes(f, 0, (FT_UInt)font_px(scale))) return ft_ascent(f) + (int)((-f->size->metrics.descender + 63) >> 6);
    return GLYPH_H * scale;
}

void ds_draw_text(ds_image *im, int x, int y, const char *s, uint32_t color, int scale) {
    FT_Face f = font_face();
    if (f) {
        ft_text(f, im, x, y, s, color, scale, 0);
        return;
    }
    for (; *s; s++, x += CELL_W * scale) draw_builtin_glyph(im, x, y, (unsigned char)*s, color, scale, 0);
}

void ds_draw_text_vertical(ds_image *im, int x, int y, const char *s, uint32_t color, int scale) {
    FT_Face f = font_face();
    if (f) {
        ft_text(f, im, x, y, s, color, scale, 1);
        return;
    }
    for (; *s; s++, y -= CELL_W * scale) draw_builtin_glyph(im, x, y, (unsigned char)*s, color, scale, 1);
}

/* ---- PNG through libpng (zlib deflate, libpng's adaptive row filters) ---- */

int ds_png_encode(const ds_image *im, uint8_t **out, size_t *len) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = (png_uint_32)im->w;
    pi.height = (png_uint_32)im->h;
    pi.format = PNG_FORMAT_RGB;
    png_alloc_size_t n = 0;
    /* first call sizes the file, second writes it */
    if (!png_image_write_get_memory_size(pi, n, 0, im->rgb, 0, NULL))
        return ds_fail(DS_ERR, "PNG encoding failed: %s: %dx%d image", pi.message, im->w, im->h);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return ds_fail(DS_ERR, "out of memory encoding PNG");
    if (!png_image_write_to_memory(&pi, buf, &n, 0, im->rgb, 0, NULL)) {
        free(buf);
        return ds_fail(DS_ERR, "PNG encoding failed: %s: %dx%d image", pi.message, im->w, im->h);
    }
    *out = buf;
    *len = n;
    return 0;
}

int ds_png_write(const ds_image *im, const char *path) {
    uint8_t *png = NULL;
    size_t n = 0;
    DS_TRY(ds_png_encode(im, &png, &n));
    int rc = ds_atomic_write_file(path, png, n);
    free(png);
    return rc;
}

/* ---- axes ---- */

enum { BG = 0xffffff, INK = 0x202020, GRID = 0xe4e4e4, FRAME = 0x606060 };

static const uint32_t palette[] = {0x1f77b4, 0xd62728, 0x2ca02c, 0xff7f0e, 0x9467bd, 0x8c564b, 0xe377c2, 0x17becf};

/* The "nice" step (1, 2 or 5 times a power of ten) that cuts span into about `want` intervals. */
static double nice_step(double span, int want) {
    double raw = span / want, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

/* Fixed-point with as many decimals as the step needs; exponent form only for very large or small
 * numbers. */
static void fmt_tick(char *buf, size_t n, double v, double step) {
    if (fabs(v) < step * 1e-9) v = 0;
    double a = fmax(fabs(v), step);
    if (a >= 1e7 || step < 1e-4) {
        int sig = (int)floor(log10(a)) - (int)floor(log10(step)) + 1;
        snprintf(buf, n, "%.*e", sig < 1 ? 0 : sig > 8 ? 7 : sig - 1, v);
        return;
    }
    int decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, n, "%.*f", decimals, v);
}

double ds_chart_px(const ds_chart_frame *f, double x) {
    return f->px0 + (x - f->x0) / (f->x1 - f->x0) * (f->px1 - f->px0);
}

double ds_chart_py(const ds_chart_frame *f, double y) {
    double t = f->log_y ? (log10(y) - log10(f->y0)) / (log10(f->y1) - log10(f->y0)) : (y - f->y0) / (f->y1 - f->y0);
    return f->py1 - t * (f->py1 - f->py0);
}

typedef struct {
    double v[64];
    int n;
    double step; /* for label precision (linear axes) */
} tick_set;

static void linear_ticks(double *lo, double *hi, tick_set *t) {
    if (!(*hi > *lo)) { /* a flat series still gets a visible axis */
        double pad = *lo != 0 ? fabs(*lo) * 0.1 : 1;
        *lo -= pad;
        *hi += pad;
    }
    double step = nice_step(*hi - *lo, 6);
    *lo = floor(*lo / step + 1e-9) * step;
    *hi = ceil(*hi / step - 1e-9) * step;
    t->n = 0;
    t->step = step;
    for (double v = *lo; v <= *hi + step * 1e-6 && t->n < 64; v += step) t->v[t->n++] = v;
}

/* Log axis: ticks at 1-2-5 multiples of powers of ten inside the range, or every integer multiple
 * when the range is too short for three of those. */
static void log_ticks(double *lo, double *hi, tick_set *t) {
    if (!(*hi > *lo)) {
        *lo /= 2;
        *hi *= 2;
    }
    *lo /= 1.05;
    *hi *= 1.05;
    static const double sets[2][9] = {{1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9}};
    static const int set_n[2] = {3, 9};
    for (int s = 0; s < 2; s++) {
        t->n = 0;
        for (int e = (int)floor(log10(*lo)); e <= (int)ceil(log10(*hi)) && t->n < 64; e++)
            for (int k = 0; k < set_n[s] && t->n < 64; k++) {
                double v = sets[s][k] * pow(10, e);
                if (v >= *lo && v <= *hi) t->v[t->n++] = v;
            }
        if (t->n >= 4) break;
    }
    t->step = 0;
}

static void tick_label(char *buf, size_t n, const tick_set *t, int i) {
    if (t->step > 0)
        fmt_tick(buf, n, t->v[i], t->step);
    else
        snprintf(buf, n, "%g", t->v[i]);
}

/* Title, axis labels and the plot-area box; margins follow the longest y tick label. */
static void layout_frame(ds_chart_frame *f, int w, int h, const char *title, const char *xlabel, const char *ylabel,
                         int ylabel_w, int right_margin) {
    int th = ds_text_height(2), lh = ds_text_height(1);
    f->px0 = 12 + (ylabel && *ylabel ? lh + 10 : 0) + ylabel_w + 8;
    f->py0 = 12 + (title && *title ? th + 12 : 0);
    f->px1 = w - 1 - right_margin;
    f->py1 = h - 1 - (12 + lh + 8 + (xlabel && *xlabel ? lh + 10 : 0));
}

static void draw_labels(ds_image *im, const ds_chart_frame *f, const char *title, const char *xlabel, const char *ylabel) {
    if (title && *title) ds_draw_text(im, (f->px0 + f->px1 - ds_text_width(title, 2)) / 2, 12, title, INK, 2);
    if (xlabel && *xlabel)
        ds_draw_text(im, (f->px0 + f->px1 - ds_text_width(xlabel, 1)) / 2, im->h - 12 - ds_text_height(1), xlabel, INK, 1);
    if (ylabel && *ylabel)
        ds_draw_text_vertical(im, 12, (f->py0 + f->py1 + ds_text_width(ylabel, 1)) / 2, ylabel, INK, 1);
}

static int finite_point(double x, double y, int log_y) { return isfinite(x) && isfinite(y) && (!log_y || y > 0); }

int ds_chart_lines(const ds_line_chart *c, ds_image *out, ds_chart_frame *frame_out) {
    int w = c->width > 0 ? c->width : 800, h = c->height > 0 ? c->height : 500;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int s = 0; s < c->n_series; s++)
        for (int i = 0; i < c->series[s].n; i++) {
            double x = c->series[s].x[i], y = c->series[s].y[i];
            if (!finite_point(x, y, c->log_y)) continue;
            xlo = fmin(xlo, x), xhi = fmax(xhi, x), ylo = fmin(ylo, y), yhi = fmax(yhi, y);
        }
    if (!(xlo <= xhi)) { /* no data: an empty frame on [0, 1] */
        xlo = 0, xhi = 1, ylo = c->log_y ? 1 : 0, yhi = c->log_y ? 10 : 1;
    }
    ds_chart_frame f = {.log_y = c->log_y};
    tick_set xt, yt;
    linear_ticks(&xlo, &xhi, &xt);
    if (c->log_y)
        log_ticks(&ylo, &yhi, &yt);
    else
        linear_ticks(&ylo, &yhi, &yt);
    f.x0 = xlo, f.x1 = xhi, f.y0 = ylo, f.y1 = yhi;

    char buf[64];
    int ylabel_w = 0;
    for (int i = 0; i < yt.n; i++) {
        tick_label(buf, sizeof buf, &yt, i);
        if (ds_text_width(buf, 1) > ylabel_w) ylabel_w = ds_text_width(buf, 1);
    }
    layout_frame(&f, w, h, c->title, c->xlabel, c->ylabel, ylabel_w, 20);
    if (f.px1 - f.px0 < 20 || f.py1 - f.py0 < 20) return ds_fail(DS_ERR, "chart %dx%d too small for its labels", w, h);
    DS_TRY(ds_image_create(out, w, h, BG));

    for (int i = 0; i < yt.n; i++) {
        int py = (int)lround(ds_chart_py(&f, yt.v[i]));
        ds_draw_line(out, f.px0, py, f.px1, py, GRID, 1);
        ds_draw_line(out, f.px0 - 4, py, f.px0, py, FRAME, 1);
        tick_label(buf, sizeof buf, &yt, i);
        ds_draw_text(out, f.px0 - 7 - ds_text_width(buf, 1), py - ds_text_height(1) / 2, buf, INK, 1);
    }
    int last_right = -1000;
    for (int i = 0; i < xt.n; i++) {
        int px = (int)lround(ds_chart_px(&f, xt.v[i]));
        ds_draw_line(out, px, f.py0, px, f.py1, GRID, 1);
        ds_draw_line(out, px, f.py1, px, f.py1 + 4, FRAME, 1);
        tick_label(buf, sizeof buf, &xt, i);
        int tw = ds_text_width(buf, 1), tx = px - tw / 2;
        if (tx > last_right + 6) { /* skip labels that would overlap their neighbour */
            ds_draw_text(out, tx, f.py1 + 8, buf, INK, 1);
            last_right = tx + tw;
        }
    }
    /* series, clipped to the plot area by drawing into it only */
    for (int s = 0; s < c->n_series; s++) {
        const ds_series *se = &c->series[s];
        uint32_t col = se->color ? se->color : palette[s % 8];
        int have_prev = 0;
        double px_prev = 0, py_prev = 0;
        for (int i = 0; i < se->n; i++) {
            if (!finite_point(se->x[i], se->y[i], c->log_y)) {
                have_prev = 0;
                continue;
            }
            double px = ds_chart_px(&f, se->x[i]), py = ds_chart_py(&f, se->y[i]);
            if (have_prev)
                ds_draw_line(out, (int)lround(px_prev), (int)lround(py_prev), (int)lround(px), (int)lround(py), col, 2);
            if (se->marker) ds_draw_rect(out, (int)lround(px) - 2, (int)lround(py) - 2, (int)lround(px) + 2, (int)lround(py) + 2, col);
            have_prev = 1, px_prev = px, py_prev = py;
        }
    }
    /* frame on top of the data */
    ds_draw_line(out, f.px0, f.py0, f.px1, f.py0, FRAME, 1);
    ds_draw_line(out, f.px0, f.py1, f.px1, f.py1, FRAME, 1);
    ds_draw_line(out, f.px0, f.py0, f.px0, f.py1, FRAME, 1);
    ds_draw_line(out, f.px1, f.py0, f.px1, f.py1, FRAME, 1);
    /* legend: top-right corner inside the plot area */
    int lw = 0, ln = 0;
    for (int s = 0; s < c->n_series; s++)
        if (c->series[s].name) {
            ln++;
            if (ds_text_width(c->series[s].name, 1) > lw) lw = ds_text_width(c->series[s].name, 1);
        }
    if (ln) {
        /* the corner that hides the fewest data points */
        int row_h = ds_text_height(1) + 7;
        int bw = lw + 36, bh = ln * row_h + 8, best = -1, best_hits = 0, bx0 = 0, by0 = 0;
        for (int corner = 0; corner < 4; corner++) {
            int cx0 = corner & 1 ? f.px0 + 8 : f.px1 - 8 - bw, cy0 = corner & 2 ? f.py1 - 8 - bh : f.py0 + 8;
            int hits = 0;
            for (int s = 0; s < c->n_series; s++)
                for (int i = 0; i < c->series[s].n; i++) {
                    if (!finite_point(c->series[s].x[i], c->series[s].y[i], c->log_y)) continue;
                    double px = ds_chart_px(&f, c->series[s].x[i]), py = ds_chart_py(&f, c->series[s].y[i]);
                    hits += px >= cx0 - 4 && px <= cx0 + bw + 4 && py >= cy0 - 4 && py <= cy0 + bh + 4;
                }
            if (best < 0 || hits < best_hits) best = corner, best_hits = hits, bx0 = cx0, by0 = cy0;
        }
        int bx1 = bx0 + bw, by1 = by0 + bh;
        ds_draw_rect(out, bx0, by0, bx1, by1, BG);
        ds_draw_line(out, bx0, by0, bx1, by0, FRAME, 1);
        ds_draw_line(out, bx0, by1, bx1, by1, FRAME, 1);
        ds_draw_line(out, bx0, by0, bx0, by1, FRAME, 1);
        ds_draw_line(out, bx1, by0, bx1, by1, FRAME, 1);
        int k = 0;
        for (int s = 0; s < c->n_series; s++) {
            if (!c->series[s].name) continue;
            uint32_t col = c->series[s].color ? c->series[s].color : palette[s % 8];
            int y = by0 + 8 + k * row_h;
            ds_draw_line(out, bx0 + 6, y + ds_text_height(1) / 2, bx0 + 24, y + ds_text_height(1) / 2, col, 2);
            ds_draw_text(out, bx0 + 30, y, c->series[s].name, INK, 1);
            k++;
        }
    }
    draw_labels(out, &f, c->title, c->xlabel, c->ylabel);
    if (frame_out) *frame_out = f;
    return 0;
}

static int write_and_free(ds_image *im, const char *path) {
    int rc = ds_png_write(im, path);
    ds_image_free(im);
    return rc;
}

int ds_chart_lines_png(const ds_line_chart *c, const char *path) {
    ds_image im;
    DS_TRY(ds_chart_lines(c, &im, NULL));
    return write_and_free(&im, path);
}

/* ---- heat maps ---- */

uint32_t ds_colormap(double t) {
    /* anchors along a dark-blue -> teal -> green -> yellow ramp (monotone in lightness) */
    static const uint8_t anchor[6][3] = {{68, 1, 84}, {65, 68, 135}, {42, 120, 142}, {34, 168, 132}, {122, 209, 81}, {253, 231, 37}};
    if (!(t > 0)) t = 0; /* also NaN */
    if (t > 1) t = 1;
    double p = t * 5;
    int i = (int)p;
    if (i > 4) i = 4;
    double u = p - i;
    uint32_t rgb = 0;
    for (int k = 0; k < 3; k++) rgb = rgb << 8 | (uint32_t)lround(anchor[i][k] + u * (anchor[i + 1][k] - anchor[i][k]));
    return rgb;
}

int ds_chart_heatmap(const ds_heatmap *hm, ds_image *out, ds_chart_frame *frame_out) {
    if (hm->rows <= 0 || hm->cols <= 0 || hm->rows > 4096 || hm->cols > 4096)
        return ds_fail(DS_ERR, "heat map of %d x %d cells out of range", hm->rows, hm->cols);
    double vmin = hm->vmin, vmax = hm->vmax;
    if (!(vmax > vmin)) {
        vmin = INFINITY, vmax = -INFINITY;
        for (int i = 0; i < hm->rows * hm->cols; i++)
            if (isfinite(hm->values[i])) vmin = fmin(vmin, hm->values[i]), vmax = fmax(vmax, hm->values[i]);
        if (!(vmin <= vmax)) vmin = 0, vmax = 1;
        if (vmax == vmin) vmax = vmin + 1;
    }
    char buf[64];
    int rl_w = 0;
    for (int r = 0; r < hm->rows; r++) {
        if (hm->row_labels) snprintf(buf, sizeof buf, "%s", hm->row_labels[r]);
        else snprintf(buf, sizeof buf, "%d", r);
        if (ds_text_width(buf, 1) > rl_w) rl_w = ds_text_width(buf, 1);
    }
    int cell = hm->cell;
    if (cell <= 0) {
        cell = (int)fmin(640.0 / hm->cols, 480.0 / hm->rows);
        if (cell < 2) cell = 2;
        if (cell > 48) cell = 48;
    }
    const int bar_w = 16, bar_gap = 20, bar_label_w = 60;
    ds_chart_frame f = {0};
    /* provisional layout for a canvas of unknown width: compute the margins, then size the canvas */
    layout_frame(&f, 100000, 100000, hm->title, hm->xlabel, hm->ylabel, rl_w, 0);
    int left = f.px0, top = f.py0, bottom = 100000 - 1 - f.py1;
    int w = left + hm->cols * cell + bar_gap + bar_w + bar_label_w + 12;
    int h = top + hm->rows * cell + bottom;
    int tw = hm->title ? ds_text_width(hm->title, 2) + 24 : 0;
    if (w < tw) w = tw;
    DS_TRY(ds_image_create(out, w, h, BG));
    f.px0 = left, f.py0 = top, f.px1 = left + hm->cols * cell - 1, f.py1 = top + hm->rows * cell - 1;
    f.x0 = 0, f.x1 = hm->cols, f.y0 = 0, f.y1 = hm->rows;

    for (int r = 0; r < hm->rows; r++)
        for (int c = 0; c < hm->cols; c++) {
            double v = hm->values[(size_t)r * hm->cols + c];
            uint32_t col = isfinite(v) ? ds_colormap((v - vmin) / (vmax - vmin)) : 0xc8c8c8;
            int x0 = f.px0 + c * cell, y0 = f.py0 + r * cell;
            ds_draw_rect(out, x0, y0, x0 + cell - 1, y0 + cell - 1, col);
            if (hm->annotate && isfinite(v)) {
                snprintf(buf, sizeof buf, "%.3g", v);
                if (ds_text_width(buf, 1) <= cell - 4 && ds_text_height(1) <= cell - 4) {
                    double t = (v - vmin) / (vmax - vmin);
                    ds_draw_text(out, x0 + (cell - ds_text_width(buf, 1)) / 2, y0 + (cell - ds_text_height(1)) / 2, buf,
                                 t > 0.6 ? INK : BG, 1);
                }
            }
        }
    /* row labels: as many as fit without overlapping */
    int every = 1;
    while (every * cell < ds_text_height(1) + 2) every++;
    for (int r = 0; r < hm->rows; r += every) {
        if (hm->row_labels) snprintf(buf, sizeof buf, "%s", hm->row_labels[r]);
        else snprintf(buf, sizeof buf, "%d", r);
        ds_draw_text(out, f.px0 - 6 - ds_text_width(buf, 1), f.py0 + r * cell + (cell - ds_text_height(1)) / 2, buf, INK, 1);
    }
    int last_right = -1000;
    for (int c = 0; c < hm->cols; c++) {
        if (hm->col_labels) snprintf(buf, sizeof buf, "%s", hm->col_labels[c]);
        else snprintf(buf, sizeof buf, "%d", c);
        int lw = ds_text_width(buf, 1), x = f.px0 + c * cell + (cell - lw) / 2;
        if (x <= last_right + 6) continue;
        ds_draw_text(out, x, f.py1 + 8, buf, INK, 1);
        last_right = x + lw;
    }
    /* colour bar with five labelled ticks */
    int bx0 = f.px1 + bar_gap, bx1 = bx0 + bar_w - 1;
    for (int y = f.py0; y <= f.py1; y++) {
        double t = f.py1 > f.py0 ? (double)(f.py1 - y) / (f.py1 - f.py0) : 0.5;
        ds_draw_line(out, bx0, y, bx1, y, ds_colormap(t), 1);
    }
    for (int k = 0; k <= 4; k++) {
        double v = vmin + (vmax - vmin) * k / 4;
        int y = f.py1 - (int)lround((double)(f.py1 - f.py0) * k / 4);
        ds_draw_line(out, bx1 + 1, y, bx1 + 4, y, FRAME, 1);
        snprintf(buf, sizeof buf, "%.3g", v);
        ds_draw_text(out, bx1 + 7, y - ds_text_height(1) / 2, buf, INK, 1);
    }
    draw_labels(out, &f, hm->title, hm->xlabel, hm->ylabel);
    if (frame_out) *frame_out = f;
    return 0;
}

int ds_chart_heatmap_png(const ds_heatmap *h, const char *path) {
    ds_image im;
    DS_TRY(ds_chart_heatmap(h, &im, NULL));
    return write_and_free(&im, path);
}
