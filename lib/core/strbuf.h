/* strbuf.h — a growing NUL-terminated text buffer for code that assembles text piece by piece.
 *
 * Owns: ds_strbuf. Out of memory is sticky: after a failed growth every later put does nothing and
 * `oom` stays set, so a builder checks once at the end instead of after every piece. Start from
 * `ds_strbuf b = {0};`; the caller owns and frees `b.s` (NULL while nothing was put).
 */
#ifndef DS_CORE_STRBUF_H
#define DS_CORE_STRBUF_H

#include <stddef.h>

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} ds_strbuf;

void ds_strbuf_put(ds_strbuf *b, const char *s, size_t n);
void ds_strbuf_puts(ds_strbuf *b, const char *s);
/* printf-style append */
void ds_strbuf_printf(ds_strbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#endif
