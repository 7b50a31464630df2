/* jsonw.h — a small streaming JSON writer for one-object-per-line output.
 *
 * Owns: building JSON text with correct string escaping (any bytes in; invalid UTF-8 becomes U+FFFD
 * so the output is always valid JSON), numbers that survive a round trip (%.9g for float, %.17g for
 * double, NaN/Inf written as null), and the metrics JSONL file (one flushed line per record).
 * Parsing JSON is jansson's job (see io/); this is only the writer.
 */
#ifndef DS_CORE_JSONW_H
#define DS_CORE_JSONW_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    char *buf;
    size_t len, cap;
    int after_key; /* the next value follows a key: no comma */
    int depth;
    uint64_t comma_bits; /* bit d: an element was written at depth d */
} ds_jsonw;

void ds_jsonw_init(ds_jsonw *w);
void ds_jsonw_free(ds_jsonw *w);
void ds_jsonw_reset(ds_jsonw *w);

void ds_jsonw_obj_begin(ds_jsonw *w);
void ds_jsonw_obj_end(ds_jsonw *w);
void ds_jsonw_arr_begin(ds_jsonw *w);
void ds_jsonw_arr_end(ds_jsonw *w);
void ds_jsonw_key(ds_jsonw *w, const char *key);

void ds_jsonw_str(ds_jsonw *w, const char *s);
void ds_jsonw_strn(ds_jsonw *w, const char *s, size_t n);
void ds_jsonw_int(ds_jsonw *w, int64_t v);
void ds_jsonw_num(ds_jsonw *w, double v);  /* %.17g */
void ds_jsonw_numf(ds_jsonw *w, float v);  /* %.9g */
void ds_jsonw_bool(ds_jsonw *w, int v);
void ds_jsonw_null(ds_jsonw *w);
void ds_jsonw_raw(ds_jsonw *w, const char *json); /* pre-formatted JSON value */

/* key + value shorthands inside an object */
void ds_jsonw_kstr(ds_jsonw *w, const char *k, const char *v);
void ds_jsonw_kint(ds_jsonw *w, const char *k, int64_t v);
void ds_jsonw_knum(ds_jsonw *w, const char *k, double v);
void ds_jsonw_kbool(ds_jsonw *w, const char *k, int v);

/* Append JSON-escaped bytes of s (without quotes). */
void ds_jsonw_escape(ds_jsonw *w, const char *s, size_t n);

/* Write the buffer plus '\n' to f and flush; resets the writer. Returns 0 or DS_ERR on I/O error. */
int ds_jsonw_emit_line(ds_jsonw *w, FILE *f, const char *where);

/* Metrics JSONL file: "-" is stdout. Each record is flushed so a killed run keeps what it wrote. */
typedef struct {
    FILE *f;
    int owned;
    char path[512];
} ds_metrics;

int ds_metrics_open(ds_metrics *m, const char *path, int append);
int ds_metrics_write(ds_metrics *m, ds_jsonw *record); /* record holds one complete object */
void ds_metrics_close(ds_metrics *m);

#endif
