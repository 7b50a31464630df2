/* json.h — JSON helpers shared by the io formats (config.json, safetensors headers, checkpoints, JSONL).
 *
 * Owns: parsing text with jansson into a one-line error "<what>: bad JSON: line L column C: <reason>:
 * <where>", and writing a jansson tree the way Python's json.dumps(indent=2) does (key order kept,
 * numbers in their shortest round-trip form: 1e-06, 0.001, 10000.0), so files we rewrite stay
 * readable and diff cleanly against Hugging Face's.
 */
#ifndef DS_IO_JSON_H
#define DS_IO_JSON_H

#include <jansson.h>
#include <stddef.h>

/* Parse `len` bytes; duplicate keys are an error. On failure returns NULL with the message
 * "<what>: bad JSON: line L column C: <reason>: <where>" recorded (core/err.h). */
json_t *ds_json_parse(const char *text, size_t len, const char *what, const char *where);

/* Serialize: indent > 0 pretty-prints with that many spaces per level and ends with a newline;
 * indent == 0 writes compact JSON with no spaces (",", ":") and no newline. *out is malloc'd. */
int ds_json_dump(const json_t *v, int indent, char **out);

/* Shortest text that reads back as the same double, in Python repr style ("1e-06", "0.5", "2.0");
 * NaN/Inf are written as "NaN"/"Infinity"/"-Infinity" as Python does. buf needs 32 bytes. */
void ds_json_format_real(double v, char *buf, size_t n);

#endif
