/* metrics_fixture.h — a metrics JSONL file read back as jansson records, for the training tests. */
#ifndef DS_TESTS_METRICS_FIXTURE_H
#define DS_TESTS_METRICS_FIXTURE_H

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"

/* The file's records in order; with_key: only those that have it ("step": the step records). An
 * unreadable file gives an empty array. */
static inline json_t *fixture_metrics(const char *path, const char *with_key) {
    char *text;
    size_t len;
    json_t *records = json_array();
    if (ds_read_file(path, &text, &len, 0)) return records;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *r = json_loads(line, 0, NULL);
        if (!with_key || json_object_get(r, with_key)) json_array_append(records, r);
        json_decref(r);
    }
    free(text);
    return records;
}

/* Record i's number under key; NaN when it is missing or not a number. */
static inline double fixture_metric(json_t *records, size_t i, const char *key) {
    json_t *v = json_object_get(json_array_get(records, i), key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

#endif
