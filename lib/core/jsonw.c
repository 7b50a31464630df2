#include "core/jsonw.h"

#include "core/err.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void ds_jsonw_init(ds_jsonw *w) { memset(w, 0, sizeof *w); }

void ds_jsonw_free(ds_jsonw *w) {
    free(w->buf);
    memset(w, 0, sizeof *w);
}

void ds_jsonw_reset(ds_jsonw *w) {
    w->len = 0;
    w->depth = 0;
    w->comma_bits = 0;
    w->after_key = 0;
    if (w->buf) w->buf[0] = 0;
}

static void put(ds_jsonw *w, const char *s, size_t n) {
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n + 1) cap *= 2;
        char *b = realloc(w->buf, cap);
        if (!b) abort(); /* out of memory building a JSON line */
        w->buf = b;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = 0;
}

static void puts_(ds_jsonw *w, const char *s) { put(w, s, strlen(s)); }

/* Called before every value or key at the current depth: writes the separating comma. */
static void sep(ds_jsonw *w) {
    uint64_t bit = 1ull << (w->depth & 63);
    if (w->comma_bits & bit) put(w, ",", 1);
    w->comma_bits |= bit;
}

static void value_begin(ds_jsonw *w) {
    if (w->after_key)
        w->after_key = 0;
    else
        sep(w);
}

void ds_jsonw_obj_begin(ds_jsonw *w) {
    value_begin(w);
    put(w, "{", 1);
    w->depth++;
    w->comma_bits &= ~(1ull << (w->depth & 63));
}

void ds_jsonw_obj_end(ds_jsonw *w) {
    w->depth--;
    put(w, "}", 1);
}

void ds_jsonw_arr_begin(ds_jsonw *w) {
    value_begin(w);
    put(w, "[", 1);
    w->depth++;
    w->comma_bits &= ~(1ull << (w->depth & 63));
}

void ds_jsonw_arr_end(ds_jsonw *w) {
    w->depth--;
    put(w, "]", 1);
}

void ds_jsonw_escape(ds_jsonw *w, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            char e[8];
            switch (c) {
            case '"': put(w, "\\\"", 2); break;
            case '\\': put(w, "\\\\", 2); break;
            case '\n': put(w, "\\n", 2); break;
            case '\r': put(w, "\\r", 2); break;
            case '\t': put(w, "\\t", 2); break;
            case '\b': put(w, "\\b", 2); break;
            case '\f': put(w, "\\f", 2); break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    e[0] = '\\'; e[1] = 'u'; e[2] = '0'; e[3] = '0';
                    e[4] = hex[c >> 4]; e[5] = hex[c & 15];
                    put(w, e, 6);
                } else {
                    e[0] = (char)c;
                    put(w, e, 1);
                }
            }
            i++;
            continue;
        }
        /* validate one UTF-8 sequence; invalid bytes become U+FFFD */
        int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
        int ok = len > 0 && i + (size_t)len <= n && c < 0xf5 && c != 0xc0 && c != 0xc1;
        for (int k = 1; ok && k < len; k++)
            if ((p[i + k] & 0xc0) != 0x80) ok = 0;
        if (ok && len == 3) {
            unsigned cp = ((c & 15u) << 12) | ((p[i + 1] & 63u) << 6) | (p[i + 2] & 63u);
            if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)) ok = 0;
        }
        if (ok && len == 4) {
            unsigned cp = ((c & 7u) << 18) | ((p[i + 1] & 63u) << 12) | ((p[i + 2] & 63u) << 6) | (p[i + 3] & 63u);
            if (cp < 0x10000 || cp > 0x10ffff) ok = 0;
        }
        if (ok) {
            put(w, s + i, (size_t)len);
            i += (size_t)len;
        } else {
            put(w, "\xef\xbf\xbd", 3);
            i++;
        }
    }
}

void ds_jsonw_key(ds_jsonw *w, const char *key) {
    sep(w);
    put(w, "\"", 1);
    ds_jsonw_escape(w, key, strlen(key));
    put(w, "\":", 2);
    w->after_key = 1;
}

void ds_jsonw_strn(ds_jsonw *w, const char *s, size_t n) {
    value_begin(w);
    put(w, "\"", 1);
    ds_jsonw_escape(w, s, n);
    put(w, "\"", 1);
}

void ds_jsonw_str(ds_jsonw *w, const char *s) {
    if (!s) {
        ds_jsonw_null(w);
        return;
    }
    ds_jsonw_strn(w, s, strlen(s));
}

void ds_jsonw_int(ds_jsonw *w, int64_t v) {
    char b[32];
    value_begin(w);
    snprintf(b, sizeof b, "%lld", (long long)v);
    puts_(w, b);
}

void ds_jsonw_num(ds_jsonw *w, double v) {
    char b[40];
    value_begin(w);
    if (!isfinite(v)) {
        puts_(w, "null");
        return;
    }
    snprintf(b, sizeof b, "%.17g", v);
    puts_(w, b);
}

void ds_jsonw_numf(ds_jsonw *w, float v) {
    char b[40];
    value_begin(w);
    if (!isfinite(v)) {
        puts_(w, "null");
        return;
    }
    snprintf(b, sizeof b, "%.9g", (double)v);
    puts_(w, b);
}

void ds_jsonw_bool(ds_jsonw *w, int v) {
    value_begin(w);
    puts_(w, v ? "true" : "false");
}

void ds_jsonw_null(ds_jsonw *w) {
    value_begin(w);
    puts_(w, "null");
}

void ds_jsonw_raw(ds_jsonw *w, const char *json) {
    value_begin(w);
    puts_(w, json);
}

void ds_jsonw_kstr(ds_jsonw *w, const char *k, const char *v) { ds_jsonw_key(w, k); ds_jsonw_str(w, v); }
void ds_jsonw_kint(ds_jsonw *w, const char *k, int64_t v) { ds_jsonw_key(w, k); ds_jsonw_int(w, v); }
void ds_jsonw_knum(ds_jsonw *w, const char *k, double v) { ds_jsonw_key(w, k); ds_jsonw_num(w, v); }
void ds_jsonw_kbool(ds_jsonw *w, const char *k, int v) { ds_jsonw_key(w, k); ds_jsonw_bool(w, v); }

int ds_jsonw_emit_line(ds_jsonw *w, FILE *f, const char *where) {
    put(w, "\n", 1);
    size_t n = fwrite(w->buf, 1, w->len, f);
    int bad = n != w->len || fflush(f) != 0;
    ds_jsonw_reset(w);
    if (bad) return ds_fail(DS_ERR, "write failed: %s: %s", strerror(errno), where);
    return 0;
}

int ds_metrics_open(ds_metrics *m, const char *path, int append) {
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s", path);
    if (!strcmp(path, "-")) {
        m->f = stdout;
        return 0;
    }
    m->f = fopen(path, append ? "a" : "w");
    if (!m->f) return ds_fail(DS_ERR, "cannot open metrics file: %s: %s", strerror(errno), path);
    m->owned = 1;
    return 0;
}

int ds_metrics_write(ds_metrics *m, ds_jsonw *record) {
    if (!m->f) {
        ds_jsonw_reset(record);
        return 0;
    }
    return ds_jsonw_emit_line(record, m->f, m->path);
}

void ds_metrics_close(ds_metrics *m) {
    if (m->f && m->owned) fclose(m->f);
    m->f = NULL;
}
