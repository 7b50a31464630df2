#include "io/json.h"

#include "core/err.h"
#include "core/strbuf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *ds_json_parse(const char *text, size_t len, const char *what, const char *where) {
    json_error_t e;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!v) {
        if (len == 0)
            ds_fail(DS_ERR, "%s: bad JSON: empty input: %s", what, where);
        else {
            /* jansson quotes the text near the error, raw: keep the message on one line */
            for (char *c = e.text; *c; c++)
                if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
            ds_fail(DS_ERR, "%s: bad JSON: line %d column %d: %s: %s", what, e.line, e.column, e.text, where);
        }
    }
    return v;
}

void ds_json_format_real(double v, char *buf, size_t n) {
    if (isnan(v)) { snprintf(buf, n, "NaN"); return; }
    if (isinf(v)) { snprintf(buf, n, v < 0 ? "-Infinity" : "Infinity"); return; }
    /* Shortest significant digits that read back as v, taken from %.Ne (one digit, then N more). */
    char sci[40];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, v);
        if (strtod(sci, NULL) == v) break;
    }
    const char *p = sci;
    int neg = *p == '-';
    if (neg) p++;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--; /* %.Ne may keep trailing zeros when prec is minimal */
    digits[nd] = 0;
    /* Python repr: scientific when the exponent is < -4 or >= 16, else positional with ".0" for integers */
    char out[48];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (exp10 < -4 || exp10 >= 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (int i = 1; i < nd; i++) out[o++] = digits[i];
        }
        o += (size_t)snprintf(out + o, sizeof out - o, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    } else if (exp10 >= 0) {
        for (int i = 0; i <= exp10; i++) out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > exp10 + 1)
            for (int i = exp10 + 1; i < nd; i++) out[o++] = digits[i];
        else
            out[o++] = '0';
    } else {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -exp10 - 1; i++) out[o++] = '0';
        for (int i = 0; i < nd; i++) out[o++] = digits[i];
    }
    out[o] = 0;
    snprintf(buf, n, "%s", out);
}

static void sb_newline(ds_strbuf *b, int indent, int depth) {
    if (!indent) return;
    ds_strbuf_put(b, "\n", 1);
    for (int i = 0; i < indent * depth; i++) ds_strbuf_put(b, " ", 1);
}

/* Escapes as Python's json.dumps(ensure_ascii=False): the two-character forms where JSON has them,
 * other control characters as \u00xx (lowercase), everything else raw (jansson gave us valid UTF-8). */
static void sb_string(ds_strbuf *b, const char *s, size_t n) {
    ds_strbuf_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (ch < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", ch);
                esc = u;
            }
        }
        if (!esc) continue;
        ds_strbuf_put(b, s + run, i - run);
        ds_strbuf_puts(b, esc);
        run = i + 1;
    }
    ds_strbuf_put(b, s + run, n - run);
    ds_strbuf_put(b, "\"", 1);
}

static void dump(ds_strbuf *b, const json_t *v, int indent, int depth) {
    char num[48];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (json_object_size(v) == 0) { ds_strbuf_puts(b, "{}"); return; }
        ds_strbuf_puts(b, "{");
        const char *key;
        json_t *val;
        int first = 1;
        json_object_foreach((json_t *)v, key, val) {
            if (!first) ds_strbuf_puts(b, ",");
            first = 0;
            sb_newline(b, indent, depth + 1);
            sb_string(b, key, strlen(key));
            ds_strbuf_puts(b, indent ? ": " : ":");
            dump(b, val, indent, depth + 1);
        }
        sb_newline(b, indent, depth);
        ds_strbuf_puts(b, "}");
        return;
    }
    case JSON_ARRAY: {
        if (json_array_size(v) == 0) { ds_strbuf_puts(b, "[]"); return; }
        ds_strbuf_puts(b, "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) ds_strbuf_puts(b, ",");
            sb_newline(b, indent, depth + 1);
            dump(b, json_array_get(v, i), indent, depth + 1);
        }
        sb_newline(b, indent, depth);
        ds_strbuf_puts(b, "]");
        return;
    }
    case JSON_STRING: sb_string(b, json_string_value(v), json_string_length(v)); return;
    case JSON_INTEGER: snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); ds_strbuf_puts(b, num); return;
    case JSON_REAL: ds_json_format_real(json_real_value(v), num, sizeof num); ds_strbuf_puts(b, num); return;
    case JSON_TRUE: ds_strbuf_puts(b, "true"); return;
    case JSON_FALSE: ds_strbuf_puts(b, "false"); return;
    case JSON_NULL: ds_strbuf_puts(b, "null"); return;
    }
}

int ds_json_dump(const json_t *v, int indent, char **out) {
    ds_strbuf b = {0};
    ds_strbuf_put(&b, "", 0);
    dump(&b, v, indent, 0);
    if (indent) ds_strbuf_puts(&b, "\n");
    if (b.oom) {
        free(b.s);
        return ds_fail(DS_ERR, "out of memory writing JSON");
    }
    *out = b.s;
    return 0;
}
