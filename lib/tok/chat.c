#include "tok/chat.h"

#include "core/err.h"
#include "core/file.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

const char ds_chat_template_default_text[] =
    "# Chat template for ds-generate --chat and ds-sft: DeepSeek-V3 format (spec section 8.1).\n"
    "#\n"
    "# Each line is KEY = \"JSON string\" (escapes such as \\n allowed); '#' starts a comment line.\n"
    "# {content} marks where a message's text goes; it is inserted literally (special-token strings in\n"
    "# user text are not turned into special tokens). Everything else is template text, in which\n"
    "# special tokens are recognised.\n"
    "#\n"
    "#   bos         once, at the very start\n"
    "#   system      every system message, wherever it appears, is gathered here right after bos,\n"
    "#   system_sep  joined by system_sep\n"
    "#   user        one user turn\n"
    "#   assistant   one assistant turn; its {content} and the text after it (the closing\n"
    "#               end-of-sentence token) are what SFT trains on\n"
    "#   generation  appended to ask the model for the next assistant turn\n"
    "#\n"
    "# Copy this file, edit it, and pass it with --chat-template FILE.\n"
    "bos        = \"<｜begin▁of▁sentence｜>\"\n"
    "system     = \"{content}\"\n"
    "system_sep = \"\\n\\n\"\n"
    "user       = \"<｜User｜>{content}\"\n"
    "assistant  = \"<｜Assistant｜>{content}<｜end▁of▁sentence｜>\"\n"
    "generation = \"<｜Assistant｜>\"\n";

static const char CONTENT[] = "{content}";

void ds_chat_template_free(ds_chat_template *t) {
    free(t->bos);
    free(t->system);
    free(t->system_sep);
    free(t->user);
    free(t->assistant);
    free(t->generation);
    memset(t, 0, sizeof *t);
}

static int count_content(const char *s) {
    int n = 0;
    for (const char *p = strstr(s, CONTENT); p; p = strstr(p + 1, CONTENT)) n++;
    return n;
}

int ds_chat_template_parse(ds_chat_template *t, const char *text, size_t len, const char *where) {
    memset(t, 0, sizeof *t);
    struct {
        const char *key;
        char **dst;
        int needs_content;
    } keys[] = {{"bos", &t->bos, 0},   {"system", &t->system, 1},       {"system_sep", &t->system_sep, 0},
                {"user", &t->user, 1}, {"assistant", &t->assistant, 1}, {"generation", &t->generation, 0}};
    const int nkeys = (int)(sizeof keys / sizeof *keys);
    int line_no = 0;
    size_t pos = 0;
    while (pos < len) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl != NULL);
        line_no++;
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
        size_t i = 0;
        while (i < n && (line[i] == ' ' || line[i] == '\t')) i++;
        if (i == n || line[i] == '#') continue;
        size_t k0 = i;
        while (i < n && line[i] != ' ' && line[i] != '\t' && line[i] != '=') i++;
        size_t klen = i - k0;
        while (i < n && (line[i] == ' ' || line[i] == '\t')) i++;
        if (i == n || line[i] != '=') {
            ds_chat_template_free(t);
            return ds_fail(DS_ERR, "chat template: line %d: expected KEY = \"text\": %s", line_no, where);
        }
        i++;
        while (i < n && (line[i] == ' ' || line[i] == '\t')) i++;
        int which = -1;
        for (int k = 0; k < nkeys; k++)
            if (strlen(keys[k].key) == klen && !memcmp(keys[k].key, line + k0, klen)) which = k;
        if (which < 0) {
            ds_chat_template_free(t);
            return ds_fail(DS_ERR, "chat template: line %d: unknown key '%.*s': %s", line_no, (int)(klen > 40 ? 40 : klen),
                           line + k0, where);
        }
        if (*keys[which].dst) {
            ds_chat_template_free(t);
            return ds_fail(DS_ERR, "chat template: line %d: %s given twice: %s", line_no, keys[which].key, where);
        }
        json_error_t jerr;
        json_t *v = json_loadb(line + i, n - i, JSON_DECODE_ANY, &jerr);
        if (!v || !json_is_string(v)) {
            json_decref(v);
            ds_chat_template_free(t);
            return ds_fail(DS_ERR, "chat template: line %d: %s: value is not a JSON string: %s", line_no,
                           keys[which].key, where);
        }
        *keys[which].dst = strdup(json_string_value(v));
        json_decref(v);
        if (!*keys[which].dst) {
            ds_chat_template_free(t);
            return ds_fail(DS_ERR, "chat template: out of memory: %s", where);
        }
        if (keys[which].needs_content && count_content(*keys[which].dst) != 1) {
            const char *key = keys[which].key;
            ds_chat_template_free(t);
            return ds_fail(DS_ERR, "chat template: line %d: %s must contain {content} exactly once: %s", line_no, key,
                           where);
        }
    }
    for (int k = 0; k < nkeys; k++)
        if (!*keys[k].dst) {
            const char *key = keys[k].key;
            ds_chat_template_free(t);
            return ds_fail(DS_ERR, "chat template: missing key %s: %s", key, where);
        }
    return DS_OK;
}

int ds_chat_template_load(ds_chat_template *t, const char *path) {
    if (!path)
        return ds_chat_template_parse(t, ds_chat_template_default_text, strlen(ds_chat_template_default_text),
                                      "built-in template");
    char *data;
    size_t len;
    DS_TRY(ds_read_file(path, &data, &len, 1 << 20));
    int rc = ds_chat_template_parse(t, data, len, path);
    free(data);
    return rc;
}

int ds_chat_role_from_name(const char *name) {
    if (!strcmp(name, "system")) return DS_ROLE_SYSTEM;
    if (!strcmp(name, "user")) return DS_ROLE_USER;
    if (!strcmp(name, "assistant")) return DS_ROLE_ASSISTANT;
    return -1;
}

/* Output under construction. */
typedef struct {
    ds_chat_rendered *r;
    size_t cap;
    int span_cap;
    int oom;
} builder;

static void put(builder *b, const char *s, size_t n, int content, int train) {
    if (!n || b->oom) return;
    ds_chat_rendered *r = b->r;
    if (r->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (r->len + n + 1 > cap) cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t) {
            b->oom = 1;
            return;
        }
        r->text = t;
        b->cap = cap;
    }
    ds_chat_span *last = r->n_spans ? &r->spans[r->n_spans - 1] : NULL;
    if (last && last->content == content && last->train == train) {
        last->len += n; /* adjacent bytes of one kind stay one span */
    } else {
        if (r->n_spans == b->span_cap) {
            int cap = b->span_cap ? 2 * b->span_cap : 16;
            ds_chat_span *sp = realloc(r->spans, (size_t)cap * sizeof *sp);
            if (!sp) {
                b->oom = 1;
                return;
            }
            r->spans = sp;
            b->span_cap = cap;
        }
        r->spans[r->n_spans++] = (ds_chat_span){r->len, n, content, train};
    }
    memcpy(r->text + r->len, s, n);
    r->len += n;
    r->text[r->len] = 0;
}

/* One message through its role's pattern; for an assistant turn the content and what follows train. */
static void put_turn(builder *b, const char *pattern, const ds_chat_msg *m, int train_tail) {
    const char *at = strstr(pattern, CONTENT);
    put(b, pattern, (size_t)(at - pattern), 0, 0);
    put(b, m->content, m->len, 1, train_tail);
    const char *tail = at + sizeof CONTENT - 1;
    put(b, tail, strlen(tail), 0, train_tail);
}

int ds_chat_render(const ds_chat_template *t, const ds_chat_msg *msgs, int n, int add_generation_prompt,
                   ds_chat_rendered *out) {
    memset(out, 0, sizeof *out);
    if (n <= 0) return ds_fail(DS_ERR, "chat: no messages");
    builder b = {.r = out};
    put(&b, t->bos, strlen(t->bos), 0, 0);
    int n_sys = 0;
    for (int i = 0; i < n; i++) {
        if (msgs[i].role != DS_ROLE_SYSTEM) continue;
        if (n_sys++) put(&b, t->system_sep, strlen(t->system_sep), 0, 0);
        put_turn(&b, t->system, &msgs[i], 0);
    }
    for (int i = 0; i < n; i++) {
        if (msgs[i].role == DS_ROLE_USER) put_turn(&b, t->user, &msgs[i], 0);
        else if (msgs[i].role == DS_ROLE_ASSISTANT) put_turn(&b, t->assistant, &msgs[i], 1);
        else if (msgs[i].role != DS_ROLE_SYSTEM) {
            ds_chat_rendered_free(out);
            return ds_fail(DS_ERR, "chat: message %d: unknown role %d", i, (int)msgs[i].role);
        }
    }
    if (add_generation_prompt) put(&b, t->generation, strlen(t->generation), 0, 0);
    if (b.oom) {
        ds_chat_rendered_free(out);
        return ds_fail(DS_ERR, "chat: out of memory rendering %d messages", n);
    }
    if (!out->text) return ds_fail(DS_ERR, "chat: %d messages render to nothing", n);
    return DS_OK;
}

void ds_chat_rendered_free(ds_chat_rendered *r) {
    free(r->text);
    free(r->spans);
    memset(r, 0, sizeof *r);
}

int ds_chat_encode(const ds_tokenizer *tok, const ds_chat_rendered *r, ds_ids *ids, ds_bytes *train) {
    for (int i = 0; i < r->n_spans; i++) {
        const ds_chat_span *sp = &r->spans[i];
        size_t before = ids->n;
        DS_TRY(ds_tok_encode(tok, r->text + sp->off, sp->len, sp->content ? 0 : DS_TOK_SPECIAL, ids));
        if (!train) continue;
        size_t add = ids->n - before;
        if (train->n + add > train->cap) {
            size_t cap = train->cap ? train->cap : 256;
            while (cap < train->n + add) cap *= 2;
            uint8_t *v = realloc(train->v, cap);
            if (!v) return ds_fail(DS_ERR, "chat: out of memory for a %zu-token mask", train->n + add);
            train->v = v;
            train->cap = cap;
        }
        memset(train->v + train->n, sp->train ? 1 : 0, add);
        train->n += add;
    }
    return DS_OK;
}
