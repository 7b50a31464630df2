/* jsonl.h — JSON Lines input: a line reader that knows its line numbers, and the records of
 * design.md 4.4 (chat conversations for SFT, prompts with answers for generation and RL).
 *
 * Owns: reading lines of any length from a file, "-" or memory (CRLF tolerated, a UTF-8 BOM on the
 * first line ignored, blank lines skipped), parsing each as one JSON object, errors of the form
 * "jsonl: line 12: <problem>: <file>", and validating the two record shapes:
 *   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...], ...}
 *   {"prompt": "...", "answer": "..."}   (answer optional unless asked for)
 * Keys other than these are allowed and left in the parsed object.
 */
#ifndef DS_IO_JSONL_H
#define DS_IO_JSONL_H

#include <jansson.h>
#include <stddef.h>

#include "core/err.h"

typedef struct ds_jsonl ds_jsonl;

int ds_jsonl_open(ds_jsonl **out, const char *path); /* "-" = stdin */
/* Read from memory (the buffer must outlive the reader). */
int ds_jsonl_open_memory(ds_jsonl **out, const char *buf, size_t len, const char *where);
void ds_jsonl_close(ds_jsonl *r);

/* The next non-blank line without its line ending, NUL-terminated (it may also contain NULs: use
 * len). At the end: returns 0 with *line = NULL. The pointer is valid until the next call. */
int ds_jsonl_next_line(ds_jsonl *r, const char **line, size_t *len);
/* The next line parsed as a JSON object (caller json_decref's it). At the end: 0 with *obj = NULL. */
int ds_jsonl_next(ds_jsonl *r, json_t **obj);
long ds_jsonl_line(const ds_jsonl *r); /* number of the line last returned (1-based) */
const char *ds_jsonl_where(const ds_jsonl *r);
/* Record "jsonl: line <n>: <message>: <where>" and return DS_ERR: for callers' own checks of a record. */
int ds_jsonl_error(const ds_jsonl *r, const char *fmt, ...) DS_PRINTF(2, 3);

/* ---- records -------------------------------------------------------------------------------- */

typedef enum { DS_JSONL_SYSTEM = 0, DS_JSONL_USER = 1, DS_JSONL_ASSISTANT = 2 } ds_jsonl_role;

typedef struct {
    ds_jsonl_role role;
    const char *content; /* points into obj; may contain NULs */
    size_t len;
} ds_jsonl_msg;

typedef struct {
    json_t *obj;            /* the whole record (strings below point into it); NULL at the end */
    long line;
    ds_jsonl_msg *messages; /* NULL for a prompt record */
    int n_messages;
    const char *prompt;     /* NULL for a messages record */
    size_t prompt_len;
    const char *answer;     /* NULL when absent; a JSON number is given as its text */
    size_t answer_len;
    char answer_buf[32];
} ds_example;

enum {
    DS_EX_SFT = 1,    /* "messages" required, with at least one assistant message */
    DS_EX_PROMPT = 2, /* exactly one of "prompt" or "messages"; messages end with a user message */
    DS_EX_ANSWER = 4, /* "answer" required */
};

/* The next record, validated for `flags`. At the end: 0 with ex->obj == NULL. */
int ds_jsonl_next_example(ds_jsonl *r, ds_example *ex, int flags);
/* Validate a parsed object (takes a reference of its own). On failure returns DS_ERR with the
 * problem (no location) in err. */
int ds_example_from_json(json_t *obj, ds_example *ex, int flags, char *err, size_t n);
void ds_example_free(ds_example *ex);

const char *ds_jsonl_role_name(ds_jsonl_role r);

#endif
