/* stop.h — stop strings over a stream of decoded token bytes.
 *
 * Owns: finding the first occurrence of any stop string in generated text that arrives one token
 * (a few bytes) at a time, so a stop string split across token boundaries is still found; cutting
 * the completion before the match; and holding back, while streaming, the bytes that might still
 * become the start of a stop string (they are released once they cannot, or at the end).
 */
#ifndef DS_INFER_STOP_H
#define DS_INFER_STOP_H

#include <stddef.h>

typedef struct {
    const char *const *stops; /* borrowed; empty strings are ignored */
    int n_stops;
    char *text; /* the completion so far (NUL-terminated), cut at a match */
    size_t len, cap;
    size_t released; /* bytes of text already handed out by ds_stop_take */
    int stopped;
} ds_stop;

int ds_stop_init(ds_stop *s, const char *const *stops, int n_stops);
void ds_stop_free(ds_stop *s);
void ds_stop_reset(ds_stop *s);

/* Append the bytes of one token. Returns 1 when a stop string now occurs (the text is cut right
 * before its first occurrence and further pushes are ignored), 0 otherwise, DS_ERR (negative) never:
 * out of memory is reported as -1 with the message set. */
int ds_stop_push(ds_stop *s, const char *bytes, size_t n);

/* New bytes that are safe to show: not part of any possible stop-string match. With final != 0
 * (generation ended), everything not yet released. Returns the count; *out points into s->text. */
size_t ds_stop_take(ds_stop *s, int final, const char **out);

#endif
