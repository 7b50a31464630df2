/* plot.h — PNG images and charts drawn at run time without Python or gnuplot: PNG through libpng
 * (zlib's deflate), text through FreeType in a real font where one is installed.
 *
 * Owns: an RGB raster (ds_image), drawing primitives (lines, rectangles, text), the choice of font (a
 * TrueType/OpenType file, DejaVu Sans by default, or the built-in 5x7 bitmap font when there is none),
 * PNG output, a line-chart renderer (axes, "nice" ticks with numbers, several series, legend,
 * optional log y) and a heat-map renderer (one cell per value, colour bar, row/column labels).
 * Colours are 0xRRGGBB.
 */
#ifndef DS_CORE_PLOT_H
#define DS_CORE_PLOT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int w, h;
    uint8_t *rgb; /* w*h*3 bytes, row-major, top row first */
} ds_image;

int ds_image_create(ds_image *im, int w, int h, uint32_t background);
void ds_image_free(ds_image *im);
void ds_image_set(ds_image *im, int x, int y, uint32_t color); /* clipped */
uint32_t ds_image_get(const ds_image *im, int x, int y);      /* 0 outside */

void ds_draw_line(ds_image *im, int x0, int y0, int x1, int y1, uint32_t color, int thickness);
void ds_draw_rect(ds_image *im, int x0, int y0, int x1, int y1, uint32_t color); /* filled, inclusive */
/* Text (UTF-8) in the current font at size `scale` (1: tick labels, 2: titles); (x, y) is the top-left
 * corner of the line box, ds_text_height(scale) tall. A font file is drawn anti-aliased, 5*scale+6
 * pixels per em; the built-in font draws 5x7 glyphs on a 6x9 grid times `scale`, characters outside
 * printable ASCII as a hollow box. */
void ds_draw_text(ds_image *im, int x, int y, const char *s, uint32_t color, int scale);
void ds_draw_text_vertical(ds_image *im, int x, int y, const char *s, uint32_t color, int scale); /* bottom-up */
int ds_text_width(const char *s, int scale);
int ds_text_height(int scale);

/* The font: on first use, the file ds_font_default_path() names if it loads, else the built-in font.
 * ds_font_default_path: $DS_FONT ("builtin": none), else DejaVu Sans where Debian's fonts-dejavu-core
 * (or Arch, Fedora) put it, else NULL. ds_font_use(path) switches to a font file (on failure the font
 * stays as it was); ds_font_use(NULL) to the built-in font. Not thread-safe: call before drawing.
 * ds_font_current: the file in use or "built-in". */
const char *ds_font_default_path(void);
int ds_font_use(const char *path);
const char *ds_font_current(void);

/* Encode as 8-bit RGB PNG into a malloc'd buffer. */
int ds_png_encode(const ds_image *im, uint8_t **out, size_t *len);
/* Write a PNG file atomically ("-" = stdout). */
int ds_png_write(const ds_image *im, const char *path);

/* ---- line charts ---- */
typedef struct {
    const char *name; /* legend entry (NULL: not in the legend) */
    const double *x, *y;
    int n;            /* non-finite points (and y <= 0 on a log axis) break the line */
    uint32_t color;   /* 0 = next colour of the default palette */
    int marker;       /* draw a small square at every point (sparse series like validation loss) */
} ds_series;

typedef struct {
    int width, height;                 /* pixels; 0 = 800 x 500 */
    const char *title, *xlabel, *ylabel;
    int log_y;
    const ds_series *series;
    int n_series;
} ds_line_chart;

/* Where the data landed: the plot area in pixels and the axis ranges (for callers and tests). */
typedef struct {
    int px0, py0, px1, py1; /* plot area, inclusive pixel corners (py0 is the top) */
    double x0, x1, y0, y1;  /* axis ranges (y in data units even when log_y) */
    int log_y;
} ds_chart_frame;

int ds_chart_lines(const ds_line_chart *c, ds_image *out, ds_chart_frame *frame);
/* Pixel column / row of a data point in a frame. */
double ds_chart_px(const ds_chart_frame *f, double x);
double ds_chart_py(const ds_chart_frame *f, double y);
/* Render and write in one call. */
int ds_chart_lines_png(const ds_line_chart *c, const char *path);

/* ---- heat maps ---- */
typedef struct {
    int rows, cols;
    const double *values;     /* rows*cols, row-major; non-finite = empty cell (drawn grey) */
    double vmin, vmax;        /* colour range; vmin == vmax: from the data */
    const char *title, *xlabel, *ylabel;
    const char *const *row_labels; /* rows entries, or NULL for indices */
    const char *const *col_labels; /* cols entries, or NULL for indices */
    int cell;                 /* cell size in pixels; 0 = fit into about 800 x 600 */
    int annotate;             /* print each value in its cell (when it fits) */
} ds_heatmap;

int ds_chart_heatmap(const ds_heatmap *h, ds_image *out, ds_chart_frame *frame);
int ds_chart_heatmap_png(const ds_heatmap *h, const char *path);
/* The colour map (perceptually ordered, dark blue -> green -> yellow) at t in [0, 1]. */
uint32_t ds_colormap(double t);

#endif
