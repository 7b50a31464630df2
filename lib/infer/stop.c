#include "infer/stop.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

int ds_stop_init(ds_stop *s, const char *const *stops, int n_stops) {
    memset(s, 0, sizeof *s);
    s->stops = stops;
    s->n_stops = n_stops;
    s->cap = 256;
    s->text = malloc(s->cap);
    if (!s->text) return ds_fail(DS_ERR, "stop strings: out of memory");
    s->text[0] = 0;
    return DS_OK;
}

void ds_stop_free(ds_stop *s) {
    free(s->text);
    memset(s, 0, sizeof *s);
}

void ds_stop_reset(ds_stop *s) {
    s->len = s->released = 0;
    s->stopped = 0;
    if (s->text) s->text[0] = 0;
}

/* memmem restricted to [from, len) of the text */
static const char *find(const char *hay, size_t len, size_t from, const char *needle, size_t nl) {
    if (nl == 0 || len < nl || from > len - nl) return NULL;
    return memmem(hay + from, len - from, needle, nl);
}

int ds_stop_push(ds_stop *s, const char *bytes, size_t n) {
    if (s->stopped) return 1;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap;
        while (s->len + n + 1 > cap) cap *= 2;
        char *t = realloc(s->text, cap);
        if (!t) {
            ds_fail(DS_ERR, "stop strings: out of memory for %zu bytes of completion", cap);
            return -1;
        }
        s->text = t;
        s->cap = cap;
    }
    const size_t old = s->len;
    memcpy(s->text + s->len, bytes, n);
    s->len += n;
    s->text[s->len] = 0;
    /* a new match must end inside the new bytes: start looking stop_len-1 bytes before them */
    const char *first = NULL;
    for (int i = 0; i < s->n_stops; i++) {
        size_t nl = strlen(s->stops[i]);
        if (!nl) continue;
        size_t from = old >= nl - 1 ? old - (nl - 1) : 0;
        const char *m = find(s->text, s->len, from, s->stops[i], nl);
        if (m && (!first || m < first)) first = m;
    }
    if (!first) return 0;
    s->len = (size_t)(first - s->text);
    s->text[s->len] = 0;
    if (s->released > s->len) s->released = s->len; /* cannot happen: held-back bytes cover matches */
    s->stopped = 1;
    return 1;
}

/* Length of the longest suffix of text that is a proper prefix of some stop string. */
static size_t held_back(const ds_stop *s) {
    size_t hold = 0;
    for (int i = 0; i < s->n_stops; i++) {
        size_t nl = strlen(s->stops[i]);
        for (size_t k = nl ? nl - 1 : 0; k > hold; k--)
            if (k <= s->len && !memcmp(s->text + s->len - k, s->stops[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

size_t ds_stop_take(ds_stop *s, int final, const char **out) {
    size_t upto = final || s->stopped ? s->len : s->len - held_back(s);
    *out = s->text + s->released;
    if (upto <= s->released) return 0;
    size_t n = upto - s->released;
    s->released = upto;
    return n;
}
