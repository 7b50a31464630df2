#include "core/strbuf.h"

#include <stdlib.h>
#include <string.h>

void ds_strbuf_put(ds_strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *grown = realloc(b->s, cap);
        if (!grown) {
            b->oom = 1;
            return;
        }
        b->s = grown;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

void ds_strbuf_puts(ds_strbuf *b, const char *s) { ds_strbuf_put(b, s, strlen(s)); }
