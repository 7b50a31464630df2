#include "tok/chat.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "core/strbuf.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
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
    /* our KEY = "text" lines start with a key or '#'; '{' opens a Jinja tag or a tokenizer_config.json */
    size_t i = 0;
    while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r')) i++;
    int rc;
    if (i + 1 < len && data[i] == '{' && (data[i + 1] == '%' || data[i + 1] == '{' || data[i + 1] == '#'))
        rc = ds_chat_template_from_jinja(t, data + i, len - i, path);
    else if (i < len && data[i] == '{')
        rc = ds_chat_template_from_hf_config(t, data, len, path);
    else
        rc = ds_chat_template_parse(t, data, len, path);
    free(data);
    return rc;
}

int ds_chat_template_select(ds_chat_template *t, const char *path, const char *hf_config, size_t len, const char *where) {
    if (path || !hf_config) return ds_chat_template_load(t, path);
    return ds_chat_template_from_hf_config(t, hf_config, len, where);
}

int ds_chat_template_select_if_readable(ds_chat_template *t, const char *path, const char *hf_config, size_t len,
                                        const char *where, int *have) {
    *have = 0;
    int rc = ds_chat_template_select(t, path, hf_config, len, where);
    if (rc && !path && hf_config) { /* the checkpoint's: only conversations need it */
        ds_warn("%s (conversations cannot be rendered; give --chat-template FILE for them)", ds_errmsg());
        ds_err_clear();
        memset(t, 0, sizeof *t);
        return 0;
    }
    *have = !rc;
    return rc;
}

int ds_chat_role_from_name(const char *name) {
    if (!strcmp(name, "system")) return DS_ROLE_SYSTEM;
    if (!strcmp(name, "user")) return DS_ROLE_USER;
    if (!strcmp(name, "assistant")) return DS_ROLE_ASSISTANT;
    return -1;
}

/* Output under construction: the text grows in a ds_strbuf and moves into r at the end; the spans grow
 * in r. */
typedef struct {
    ds_chat_rendered *r;
    ds_strbuf text;
    int span_cap;
    int oom;
} builder;

static void put(builder *b, const char *s, size_t n, int content, int train) {
    if (!n || b->oom || b->text.oom) return;
    ds_chat_rendered *r = b->r;
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
        r->spans[r->n_spans++] = (ds_chat_span){b->text.len, n, content, train};
    }
    ds_strbuf_put(&b->text, s, n);
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
            free(b.text.s);
            ds_chat_rendered_free(out);
            return ds_fail(DS_ERR, "chat: message %d: unknown role %d", i, (int)msgs[i].role);
        }
    }
    if (add_generation_prompt) put(&b, t->generation, strlen(t->generation), 0, 0);
    if (b.oom || b.text.oom) {
        free(b.text.s);
        ds_chat_rendered_free(out);
        return ds_fail(DS_ERR, "chat: out of memory rendering %d messages", n);
    }
    out->text = b.text.s;
    out->len = b.text.len;
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

/* ---- Hugging Face's form: a Jinja chat_template ------------------------------------------------ */

/* A Jinja string literal ('...') holding exactly the bytes s[0..n): Jinja reads literals with Python's
 * escapes, so backslash, quote and the control characters are escaped; other bytes go as they are. */
static void tb_lit(ds_strbuf *b, const char *s, size_t n) {
    ds_strbuf_puts(b, "'");
    for (size_t i = 0; i < n; i++) {
        char esc[8];
        unsigned char c = (unsigned char)s[i];
        if (c == '\\' || c == '\'') snprintf(esc, sizeof esc, "\\%c", c);
        else if (c == '\n') snprintf(esc, sizeof esc, "\\n");
        else if (c == '\r') snprintf(esc, sizeof esc, "\\r");
        else if (c == '\t') snprintf(esc, sizeof esc, "\\t");
        else if (c < 0x20 || c == 0x7f) snprintf(esc, sizeof esc, "\\x%02x", c);
        else {
            ds_strbuf_put(b, s + i, 1);
            continue;
        }
        ds_strbuf_puts(b, esc);
    }
    ds_strbuf_puts(b, "'");
}

/* A pattern as a Jinja expression: its text before {content}, the message's content, its text after
 * (empty parts left out). */
static void tb_turn(ds_strbuf *b, const char *pattern) {
    const char *at = strstr(pattern, CONTENT), *tail = at + sizeof CONTENT - 1;
    if (at > pattern) {
        tb_lit(b, pattern, (size_t)(at - pattern));
        ds_strbuf_puts(b, " + ");
    }
    ds_strbuf_puts(b, "message['content']");
    if (*tail) {
        ds_strbuf_puts(b, " + ");
        tb_lit(b, tail, strlen(tail));
    }
}

static const char JINJA_TAG[] = "{#- ds-chat-template ";

/* The fields as one JSON object, safe inside a Jinja comment (no '#', so no "#}"). */
static int fields_json(const ds_chat_template *t, ds_strbuf *b) {
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "bos", t->bos, "system", t->system, "system_sep",
                          t->system_sep, "user", t->user, "assistant", t->assistant, "generation", t->generation);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (!s) return ds_fail(DS_ERR, "chat template: out of memory writing its Jinja form");
    for (const char *p = s; *p; p++) {
        if (*p == '#') ds_strbuf_puts(b, "\\u0023"); /* only inside strings: JSON has no '#' of its own */
        else ds_strbuf_put(b, p, 1);
    }
    free(s);
    return 0;
}

int ds_chat_template_to_jinja(const ds_chat_template *t, char **out) {
    *out = NULL;
    ds_strbuf b = {0};
    ds_strbuf_puts(&b, JINJA_TAG);
    int rc = fields_json(t, &b);
    if (rc) {
        free(b.s);
        return rc;
    }
    /* Every tag trims the whitespace around it ({%- -%}), so the line breaks below render as nothing,
     * with or without transformers' trim_blocks/lstrip_blocks. */
    ds_strbuf_puts(&b, " -#}\n{%- set ns = namespace(system='', first=true) -%}\n"
               "{%- for message in messages -%}\n"
               "  {%- if message['role'] == 'system' -%}\n"
               "    {%- if not ns.first -%}{%- set ns.system = ns.system + ");
    tb_lit(&b, t->system_sep, strlen(t->system_sep));
    ds_strbuf_puts(&b, " -%}{%- endif -%}\n    {%- set ns.system = ns.system + ");
    tb_turn(&b, t->system);
    ds_strbuf_puts(&b, " -%}\n    {%- set ns.first = false -%}\n  {%- endif -%}\n{%- endfor -%}\n{{- ");
    tb_lit(&b, t->bos, strlen(t->bos));
    ds_strbuf_puts(&b, " + ns.system -}}\n{%- for message in messages -%}\n  {%- if message['role'] == 'user' -%}{{- ");
    tb_turn(&b, t->user);
    ds_strbuf_puts(&b, " -}}\n  {%- elif message['role'] == 'assistant' -%}{{- ");
    tb_turn(&b, t->assistant);
    ds_strbuf_puts(&b, " -}}\n  {%- elif message['role'] != 'system' -%}"
               "{{- raise_exception('chat template: a message role must be system, user or assistant') -}}\n"
               "  {%- endif -%}\n{%- endfor -%}\n{%- if add_generation_prompt -%}{{- ");
    tb_lit(&b, t->generation, strlen(t->generation));
    ds_strbuf_puts(&b, " -}}{%- endif -%}\n");
    if (b.oom) {
        free(b.s);
        return ds_fail(DS_ERR, "chat template: out of memory writing its Jinja form");
    }
    *out = b.s;
    return 0;
}

/* 64-bit FNV-1a of the text without its ASCII whitespace and without "\n" escapes: a copy re-indented
 * or re-wrapped, or one whose string literals hold line breaks where the released file has "\n" (both
 * circulate), is still the same template. */
static uint64_t squeezed_hash(const char *s, size_t n, size_t *kept) {
    uint64_t h = 1469598103934665603ull;
    *kept = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
        if (c == '\\' && i + 1 < n && s[i + 1] == 'n') {
            i++;
            continue;
        }
        h = (h ^ c) * 1099511628211ull;
        ++*kept;
    }
    return h;
}

/* DeepSeek's released Jinja templates that render what the built-in template renders for conversations
 * of system, user and assistant messages (system messages joined by a blank line after BOS, the
 * generation prompt "<｜Assistant｜>"): the hash and length of the text without whitespace. The
 * templates of R1 (which cuts assistant text before "</think>") and of later releases (which add
 * "<think>" to the generation prompt) render differently and are not among them. */
static const struct {
    const char *name;
    uint64_t hash;
    size_t len;
} deepseek_templates[] = {
    {"DeepSeek-V3", 0x32e991a80891eb48ull, 2052}, /* deepseek-ai/DeepSeek-V3, December 2024 */
};

static int is_known_deepseek(const char *s, size_t n, const char **name) {
    size_t kept;
    uint64_t h = squeezed_hash(s, n, &kept);
    for (size_t i = 0; i < sizeof deepseek_templates / sizeof *deepseek_templates; i++)
        if (deepseek_templates[i].hash == h && deepseek_templates[i].len == kept) {
            *name = deepseek_templates[i].name;
            return 1;
        }
    return 0;
}

static int refuse_jinja(const char *where) {
    ds_fail(DS_ERR, "chat template: a Jinja template that is neither DeepSeek-V3's nor one written by these tools: %s",
            where);
    ds_hint("write it in the form of share/chat_template (KEY = \"text\" lines) and pass --chat-template FILE");
    return DS_ERR;
}

/* Length of s without what renders nothing: trailing line breaks and spaces, and the empty literals
 * ("'' + ", " + ''") that the first release of this writer put around a pattern without text on one
 * side. Copies it wrote still read. */
static size_t jinja_squeeze(const char *s, size_t n, char *out) {
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ')) n--;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        if (n - i >= 5 && !memcmp(s + i, "'' + ", 5)) i += 5;
        else if (n - i >= 5 && !memcmp(s + i, " + ''", 5)) i += 5;
        else out[m++] = s[i++];
    }
    return m;
}

static int same_jinja(const char *a, size_t an, const char *b, size_t bn) {
    char *x = malloc(an + 1), *y = malloc(bn + 1);
    int same = 0;
    if (x && y) {
        size_t xn = jinja_squeeze(a, an, x), yn = jinja_squeeze(b, bn, y);
        same = xn == yn && !memcmp(x, y, xn);
    }
    free(x);
    free(y);
    return same;
}

/* Ours: the fields from the header, and the rest exactly what ds_chat_template_to_jinja writes for
 * them (an edited copy renders something else, so it is refused rather than trusted). */
static int from_our_jinja(ds_chat_template *t, const char *s, size_t n, const char *where) {
    const char *json = s + sizeof JINJA_TAG - 1;
    const char *end = memchr(json, '\n', n - (size_t)(json - s));
    const char *close = end ? end - 4 : NULL;
    if (!close || close < json || memcmp(close, " -#}", 4)) return refuse_jinja(where);
    json_t *o = json_loadb(json, (size_t)(close - json), 0, NULL);
    ds_strbuf kv = {0};
    static const char *const keys[] = {"bos", "system", "system_sep", "user", "assistant", "generation"};
    int ok = json_is_object(o);
    for (size_t k = 0; ok && k < sizeof keys / sizeof *keys; k++) {
        json_t *v = json_object_get(o, keys[k]);
        char *vs = json_is_string(v) ? json_dumps(v, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
        ok = vs != NULL;
        if (ok) {
            ds_strbuf_puts(&kv, keys[k]);
            ds_strbuf_puts(&kv, " = ");
            ds_strbuf_puts(&kv, vs);
            ds_strbuf_puts(&kv, "\n");
        }
        free(vs);
    }
    json_decref(o);
    if (!ok || kv.oom) {
        free(kv.s);
        return refuse_jinja(where);
    }
    int rc = ds_chat_template_parse(t, kv.s, kv.len, where);
    free(kv.s);
    if (rc) return rc;
    char *again = NULL;
    if ((rc = ds_chat_template_to_jinja(t, &again))) {
        ds_chat_template_free(t);
        return rc;
    }
    int same = same_jinja(again, strlen(again), s, n);
    free(again);
    if (!same) {
        ds_chat_template_free(t);
        return refuse_jinja(where);
    }
    return 0;
}

int ds_chat_template_from_jinja(ds_chat_template *t, const char *jinja, size_t len, const char *where) {
    memset(t, 0, sizeof *t);
    const char *name;
    if (len >= sizeof JINJA_TAG - 1 && !memcmp(jinja, JINJA_TAG, sizeof JINJA_TAG - 1))
        return from_our_jinja(t, jinja, len, where);
    if (is_known_deepseek(jinja, len, &name)) return ds_chat_template_load(t, NULL);
    return refuse_jinja(where);
}

int ds_chat_template_from_hf_config(ds_chat_template *t, const char *json, size_t len, const char *where) {
    memset(t, 0, sizeof *t);
    json_error_t jerr;
    json_t *o = json_loadb(json, len, 0, &jerr);
    if (!json_is_object(o)) {
        json_decref(o);
        return ds_fail(DS_ERR, "tokenizer_config.json: not a JSON object (line %d: %s): %s", jerr.line, jerr.text, where);
    }
    json_t *ct = json_object_get(o, "chat_template");
    if (json_is_array(ct)) { /* the named-templates form: the one called "default" */
        json_t *def = NULL, *e;
        size_t i;
        json_array_foreach(ct, i, e) if (json_is_string(json_object_get(e, "name")) &&
                                         !strcmp(json_string_value(json_object_get(e, "name")), "default")) def =
            json_object_get(e, "template");
        if (!def) {
            json_decref(o);
            return refuse_jinja(where);
        }
        ct = def;
    }
    int rc;
    char w[4200];
    snprintf(w, sizeof w, "%s (chat_template)", where);
    if (!ct || json_is_null(ct)) rc = ds_chat_template_load(t, NULL); /* none given: the built-in one */
    else if (!json_is_string(ct)) rc = ds_fail(DS_ERR, "tokenizer_config.json: chat_template must be a string: %s", where);
    else rc = ds_chat_template_from_jinja(t, json_string_value(ct), json_string_length(ct), w);
    json_decref(o);
    return rc;
}
