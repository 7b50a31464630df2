/* jsonl.c — see jsonl.h. */
#include "io/jsonl.h"
#include "io/kind.h"

#include "core/file.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ds_jsonl {
    FILE *f;
    int owned;
    const char *mem; /* memory mode */
    size_t mem_len, mem_pos;
    char *buf;
    size_t cap;
    long line;
    char where[4096];
};

static ds_jsonl *reader_new(const char *where) {
    ds_jsonl *r = calloc(1, sizeof *r);
    if (r) snprintf(r->where, sizeof r->where, "%s", where);
    return r;
}

int ds_jsonl_open(ds_jsonl **out, const char *path) {
    *out = NULL;
    if (!ds_is_stdio(path) && ds_path_is_dir(path)) return ds_fail(DS_ERR, "is a directory: %s", path);
    ds_jsonl *r = reader_new(ds_is_stdio(path) ? "<stdin>" : path);
    if (!r) return ds_fail(DS_ERR, "out of memory");
    if (ds_is_stdio(path)) {
        r->f = stdin;
    } else if (!(r->f = fopen(path, "rb"))) {
        free(r);
        return ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), path);
    } else {
        r->owned = 1;
    }
    *out = r;
    return 0;
}

int ds_jsonl_open_memory(ds_jsonl **out, const char *buf, size_t len, const char *where) {
    *out = reader_new(where);
    if (!*out) return ds_fail(DS_ERR, "out of memory");
    (*out)->mem = buf ? buf : "";
    (*out)->mem_len = len;
    return 0;
}

void ds_jsonl_close(ds_jsonl *r) {
    if (!r) return;
    if (r->owned) fclose(r->f);
    free(r->buf);
    free(r);
}

long ds_jsonl_line(const ds_jsonl *r) { return r->line; }
const char *ds_jsonl_where(const ds_jsonl *r) { return r->where; }

int ds_jsonl_error(const ds_jsonl *r, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ds_fail(DS_ERR, "jsonl: line %ld: %s: %s", r->line, msg, r->where);
}

/* One raw line into r->buf (without '\n'); 1 at the end of input. */
static int raw_line(ds_jsonl *r, size_t *len) {
    if (r->mem) {
        if (r->mem_pos >= r->mem_len) return 1;
        const char *s = r->mem + r->mem_pos;
        const char *nl = memchr(s, '\n', r->mem_len - r->mem_pos);
        size_t n = nl ? (size_t)(nl - s) : r->mem_len - r->mem_pos;
        if (n + 1 > r->cap) {
            size_t cap = n + 1 > 2 * r->cap ? n + 1 : 2 * r->cap;
            char *nb = realloc(r->buf, cap);
            if (!nb) return ds_fail(DS_ERR, "jsonl: line %ld: out of memory: %s", r->line + 1, r->where);
            r->buf = nb;
            r->cap = cap;
        }
        memcpy(r->buf, s, n);
        r->buf[n] = 0;
        r->mem_pos += n + (nl != NULL);
        *len = n;
        return 0;
    }
    errno = 0;
    ssize_t n = getline(&r->buf, &r->cap, r->f);
    if (n < 0) {
        if (ferror(r->f)) {
            int err = errno ? errno : EIO;
            return ds_fail(DS_ERR, "jsonl: line %ld: read failed: %s: %s", r->line + 1, strerror(err), r->where);
        }
        return 1;
    }
    if (n > 0 && r->buf[n - 1] == '\n') r->buf[--n] = 0;
    *len = (size_t)n;
    return 0;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\f' && s[i] != '\v') return 0;
    return 1;
}

int ds_jsonl_next_line(ds_jsonl *r, const char **line, size_t *len) {
    *line = NULL;
    *len = 0;
    for (;;) {
        size_t n = 0;
        int rc = raw_line(r, &n);
        if (rc == 1) return 0;
        if (rc) return rc;
        r->line++;
        char *s = r->buf;
        if (r->line == 1 && n >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) { /* UTF-8 byte order mark */
            s += 3;
            n -= 3;
        }
        if (n > 0 && s[n - 1] == '\r') s[--n] = 0;
        if (is_blank(s, n)) continue;
        *line = s;
        *len = n;
        return 0;
    }
}

int ds_jsonl_next(ds_jsonl *r, json_t **obj) {
    *obj = NULL;
    const char *line;
    size_t len;
    DS_TRY(ds_jsonl_next_line(r, &line, &len));
    if (!line) return 0;
    json_error_t e;
    json_t *v = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!v && r->line == 1 && !r->mem) { /* a file of another kind altogether says so */
        static const ds_kind takes[] = {DS_KIND_JSONL, DS_KIND_JSON, DS_KIND_TEXT, DS_KIND_EMPTY, DS_KIND_UNKNOWN};
        return ds_kind_explain(ds_jsonl_error(r, "bad JSON at column %d: %s", e.column, e.text), r->where, "JSON lines",
                               "JSON lines", takes);
    }
    if (!v) return ds_jsonl_error(r, "bad JSON at column %d: %s", e.column, e.text);
    if (!json_is_object(v)) {
        json_decref(v);
        return ds_jsonl_error(r, "expected a JSON object");
    }
    *obj = v;
    return 0;
}

/* ---- records -------------------------------------------------------------------------------- */

static const char *const role_names[] = {"system", "user", "assistant"};
const char *ds_jsonl_role_name(ds_jsonl_role r) { return r >= 0 && r <= 2 ? role_names[r] : "?"; }

void ds_example_free(ds_example *ex) {
    if (!ex) return;
    json_decref(ex->obj);
    free(ex->messages);
    memset(ex, 0, sizeof *ex);
}

#define BAD(...) (snprintf(err, n, __VA_ARGS__), rc = DS_ERR)

int ds_example_from_json(json_t *obj, ds_example *ex, int flags, char *err, size_t n) {
    memset(ex, 0, sizeof *ex);
    int rc = 0;
    if (!json_is_object(obj)) {
        snprintf(err, n, "expected a JSON object");
        return DS_ERR;
    }
    ex->obj = json_incref(obj);
    const json_t *msgs = json_object_get(obj, "messages"), *prompt = json_object_get(obj, "prompt"),
                 *answer = json_object_get(obj, "answer");
    if (flags & DS_EX_SFT) {
        if (!msgs) BAD("needs \"messages\" (an array of {\"role\", \"content\"} objects)");
    } else if (flags & DS_EX_PROMPT) {
        if (!msgs == !prompt) BAD("needs exactly one of \"prompt\" or \"messages\"");
    }
    if (!rc && prompt && !msgs) {
        if (!json_is_string(prompt)) BAD("\"prompt\" must be a string");
        else {
            ex->prompt = json_string_value(prompt);
            ex->prompt_len = json_string_length(prompt);
        }
    }
    if (!rc && msgs) {
        size_t count = json_is_array(msgs) ? json_array_size(msgs) : 0;
        if (!count) BAD("\"messages\" must be a non-empty array");
        else if (count > 1000000) BAD("\"messages\": more than 1000000 messages");
        else if (!(ex->messages = calloc(count, sizeof *ex->messages))) BAD("out of memory");
        int assistants = 0;
        for (size_t i = 0; !rc && i < count; i++) {
            const json_t *m = json_array_get(msgs, i);
            const json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
            if (!json_is_object(m)) {
                BAD("messages[%zu]: must be an object with \"role\" and \"content\"", i);
                break;
            }
            int ri = -1;
            for (int k = 0; json_is_string(role) && k < 3; k++)
                if (!strcmp(json_string_value(role), role_names[k]) && json_string_length(role) == strlen(role_names[k])) ri = k;
            if (ri < 0) BAD("messages[%zu].role: must be \"system\", \"user\" or \"assistant\"", i);
            else if (!json_is_string(content)) BAD("messages[%zu].content: must be a string", i);
            if (rc) break;
            ex->messages[i] = (ds_jsonl_msg){(ds_jsonl_role)ri, json_string_value(content), json_string_length(content)};
            assistants += ri == DS_JSONL_ASSISTANT;
        }
        if (!rc) ex->n_messages = (int)count;
        if (!rc && (flags & DS_EX_SFT) && !assistants) BAD("\"messages\" has no assistant message to learn from");
        if (!rc && (flags & DS_EX_PROMPT) && !(flags & DS_EX_SFT) && ex->messages[count - 1].role != DS_JSONL_USER)
            BAD("\"messages\": the last message must be from the user (the model answers it)");
    }
    if (!rc && answer) {
        if (json_is_string(answer)) {
            ex->answer = json_string_value(answer);
            ex->answer_len = json_string_length(answer);
        } else if (json_is_integer(answer)) {
            snprintf(ex->answer_buf, sizeof ex->answer_buf, "%" JSON_INTEGER_FORMAT, json_integer_value(answer));
            ex->answer = ex->answer_buf;
            ex->answer_len = strlen(ex->answer_buf);
        } else {
            BAD("\"answer\" must be a string or an integer");
        }
    }
    if (!rc && !answer && (flags & DS_EX_ANSWER)) BAD("needs an \"answer\"");
    if (rc) ds_example_free(ex);
    return rc;
}
#undef BAD

int ds_jsonl_next_example(ds_jsonl *r, ds_example *ex, int flags) {
    memset(ex, 0, sizeof *ex);
    json_t *obj;
    DS_TRY(ds_jsonl_next(r, &obj));
    if (!obj) return 0;
    char err[600];
    int rc = ds_example_from_json(obj, ex, flags, err, sizeof err);
    json_decref(obj);
    if (rc) return ds_jsonl_error(r, "%s", err);
    ex->line = r->line;
    return 0;
}
