#include "infer/oai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ds_oai_fail(ds_oai_error *e, int status, const char *type, const char *code, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return status;
}

void ds_oai_error_json(const ds_oai_error *e, ds_jsonw *w) {
    ds_jsonw_obj_begin(w);
    ds_jsonw_key(w, "error");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "message", e->message);
    ds_jsonw_kstr(w, "type", e->type ? e->type : "invalid_request_error");
    ds_jsonw_key(w, "param");
    if (e->param[0]) ds_jsonw_str(w, e->param);
    else ds_jsonw_null(w);
    ds_jsonw_key(w, "code");
    if (e->code) ds_jsonw_str(w, e->code);
    else ds_jsonw_null(w);
    ds_jsonw_obj_end(w);
    ds_jsonw_obj_end(w);
}

#define BAD(param, ...) ds_oai_fail(err, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

/* A present, non-null key. */
static json_t *get(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_int(json_t *o, const char *k, int lo, int hi, int *has, int *out, ds_oai_error *err) {
    json_t *v = get(o, k);
    if (!v) return 0;
    /* OpenAI's clients send integers; a float with an integral value (4.0) is accepted as vLLM does */
    double d;
    if (json_is_integer(v)) d = (double)json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v))) d = json_real_value(v);
    else return BAD(k, "'%s' must be an integer", k);
    if (d < lo || d > hi) return BAD(k, "'%s' is %.0f: it must be in [%d, %d]", k, d, lo, hi);
    if (has) *has = 1;
    *out = (int)d;
    return 0;
}

static int get_num(json_t *o, const char *k, double lo, double hi, int *has, double *out, ds_oai_error *err) {
    json_t *v = get(o, k);
    if (!v) return 0;
    if (!json_is_number(v)) return BAD(k, "'%s' must be a number", k);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) return BAD(k, "'%s' is %g: it must be in [%g, %g]", k, d, lo, hi);
    *has = 1;
    *out = d;
    return 0;
}

static int get_bool(json_t *o, const char *k, int *out, ds_oai_error *err) {
    json_t *v = get(o, k);
    if (!v) return 0;
    if (!json_is_boolean(v)) return BAD(k, "'%s' must be a boolean", k);
    *out = json_is_true(v);
    return 0;
}

/* Parameters we do not implement: only their neutral values pass. */
static int neutral(json_t *o, ds_oai_kind kind, ds_oai_error *err) {
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        json_t *v = get(o, zero[i]);
        if (v && (!json_is_number(v) || json_number_value(v) != 0))
            return BAD(zero[i], "'%s' is not supported by this server (only 0)", zero[i]);
    }
    json_t *v = get(o, "logit_bias");
    if (v && !(json_is_object(v) && json_object_size(v) == 0))
        return BAD("logit_bias", "'logit_bias' is not supported by this server");
    static const char *const absent[] = {"tools", "functions", "tool_choice", "function_call", "suffix"};
    for (int i = 0; i < 5; i++)
        if ((v = get(o, absent[i])) && !(json_is_array(v) && json_array_size(v) == 0) &&
            !(json_is_string(v) && !strcmp(json_string_value(v), "none")))
            return BAD(absent[i], "'%s' is not supported by this server", absent[i]);
    if ((v = get(o, "echo")) && !json_is_false(v)) return BAD("echo", "'echo' is not supported by this server");
    if ((v = get(o, "best_of")) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return BAD("best_of", "'best_of' is not supported by this server (only 1)");
    if ((v = get(o, "response_format"))) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!t || !json_is_string(t) || strcmp(json_string_value(t), "text"))
            return BAD("response_format", "'response_format' other than {\"type\": \"text\"} is not supported by this server");
    }
    (void)kind;
    return 0;
}

static int parse_messages(json_t *root, ds_oai_request *r, ds_oai_error *err) {
    json_t *m = json_object_get(root, "messages");
    if (!m) return BAD("messages", "Missing required parameter: 'messages'");
    if (!json_is_array(m)) return BAD("messages", "'messages' must be an array");
    size_t n = json_array_size(m);
    if (!n) return BAD("messages", "'messages' must contain at least one message");
    if (n > 100000) return BAD("messages", "too many messages: %zu", n);
    r->msgs = calloc(n, sizeof *r->msgs);
    r->joined = calloc(n, sizeof *r->joined);
    if (!r->msgs || !r->joined) return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
    int users = 0;
    for (size_t i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof p, "messages[%zu]", i);
        json_t *e = json_array_get(m, i);
        if (!json_is_object(e)) return BAD(p, "'%s' must be an object", p);
        json_t *role = json_object_get(e, "role");
        if (!role || !json_is_string(role)) return BAD(p, "'%s.role' is missing or not a string", p);
        const char *rs = json_string_value(role);
        int rr = !strcmp(rs, "developer") ? DS_ROLE_SYSTEM : ds_chat_role_from_name(rs);
        if (rr < 0)
            return BAD(p, "'%s.role' is '%s': this server takes 'system', 'developer', 'user' and 'assistant'", p, rs);
        users += rr == DS_ROLE_USER;
        json_t *c = get(e, "content");
        ds_chat_msg *msg = &r->msgs[i];
        msg->role = (ds_chat_role)rr;
        if (!c) {
            if (rr != DS_ROLE_ASSISTANT) return BAD(p, "'%s.content' is required", p);
            msg->content = "";
        } else if (json_is_string(c)) {
            msg->content = json_string_value(c);
            msg->len = json_string_length(c);
        } else if (json_is_array(c)) { /* content parts: text ones only, joined */
            size_t total = 0, k;
            json_t *part;
            json_array_foreach(c, k, part) {
                json_t *t = json_is_object(part) ? json_object_get(part, "type") : NULL;
                json_t *tx = json_is_object(part) ? json_object_get(part, "text") : NULL;
                if (!t || !json_is_string(t) || strcmp(json_string_value(t), "text") || !tx || !json_is_string(tx))
                    return BAD(p, "'%s.content[%zu]': only parts {\"type\": \"text\", \"text\": ...} are supported", p, k);
                total += json_string_length(tx);
            }
            char *buf = malloc(total + 1);
            if (!buf) return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
            size_t at = 0;
            json_array_foreach(c, k, part) {
                json_t *tx = json_object_get(part, "text");
                memcpy(buf + at, json_string_value(tx), json_string_length(tx));
                at += json_string_length(tx);
            }
            buf[at] = 0;
            r->joined[i] = buf;
            msg->content = buf;
            msg->len = at;
        } else {
            return BAD(p, "'%s.content' must be a string or an array of text parts", p);
        }
        r->n_msgs = (int)i + 1;
    }
    if (!users) return BAD("messages", "'messages' must contain a user message");
    return 0;
}

/* ids: a JSON array of integers in [0, vocab) */
static int parse_ids(json_t *a, const char *p, int vocab, ds_oai_prompt *out, ds_oai_error *err) {
    size_t n = json_array_size(a), k;
    if (!n) return BAD(p, "'%s' is an empty list of tokens", p);
    out->ids = malloc(n * sizeof *out->ids);
    if (!out->ids) return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
    json_t *v;
    json_array_foreach(a, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
            return BAD(p, "'%s[%zu]' must be a token id in [0, %d)", p, k, vocab);
        out->ids[k] = (int32_t)json_integer_value(v);
    }
    out->n_ids = (int)n;
    return 0;
}

static int parse_prompts(json_t *root, const ds_oai_limits *lim, ds_oai_request *r, ds_oai_error *err) {
    json_t *p = json_object_get(root, "prompt");
    if (!p) return BAD("prompt", "Missing required parameter: 'prompt'");
    /* string | [string, ...] | [int, ...] | [[int, ...], ...] */
    size_t n = 1;
    int list_of_ids = 0;
    if (json_is_array(p)) {
        n = json_array_size(p);
        if (!n) return BAD("prompt", "'prompt' is an empty list");
        list_of_ids = json_is_integer(json_array_get(p, 0));
        if (list_of_ids) n = 1;
    } else if (!json_is_string(p)) {
        return BAD("prompt", "'prompt' must be a string, a list of strings, or token ids");
    }
    if (n > (size_t)lim->max_n) return BAD("prompt", "%zu prompts: at most %d per request", n, lim->max_n);
    r->prompts = calloc(n, sizeof *r->prompts);
    if (!r->prompts) return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
    r->n_prompts = (int)n;
    if (json_is_string(p)) {
        r->prompts[0].text = json_string_value(p);
        r->prompts[0].len = json_string_length(p);
        return 0;
    }
    if (list_of_ids) return parse_ids(p, "prompt", lim->vocab, &r->prompts[0], err);
    for (size_t i = 0; i < n; i++) {
        char name[48];
        snprintf(name, sizeof name, "prompt[%zu]", i);
        json_t *e = json_array_get(p, i);
        if (json_is_string(e)) {
            r->prompts[i].text = json_string_value(e);
            r->prompts[i].len = json_string_length(e);
        } else if (json_is_array(e)) {
            int rc = parse_ids(e, name, lim->vocab, &r->prompts[i], err);
            if (rc) return rc;
        } else {
            return BAD(name, "'%s' must be a string or a list of token ids", name);
        }
    }
    return 0;
}

static int parse_stop(json_t *root, ds_oai_request *r, ds_oai_error *err) {
    json_t *s = get(root, "stop");
    if (!s) return 0;
    if (json_is_string(s)) {
        r->stops[r->n_stops++] = json_string_value(s);
        return 0;
    }
    if (!json_is_array(s)) return BAD("stop", "'stop' must be a string or a list of strings");
    if (json_array_size(s) > DS_OAI_MAX_STOPS) return BAD("stop", "'stop' holds at most %d strings", DS_OAI_MAX_STOPS);
    size_t k;
    json_t *v;
    json_array_foreach(s, k, v) {
        if (!json_is_string(v)) return BAD("stop", "'stop[%zu]' must be a string", k);
        r->stops[r->n_stops++] = json_string_value(v);
    }
    return 0;
}

static int parse_logprobs(json_t *root, ds_oai_request *r, ds_oai_error *err) {
    json_t *v = get(root, "logprobs");
    if (r->kind == DS_OAI_COMPLETION) { /* an integer: alternatives per position (OpenAI allows up to 5) */
        int has = 0;
        int rc = get_int(root, "logprobs", 0, 5, &has, &r->top_logprobs, err);
        if (rc) return rc;
        r->logprobs = has;
        return 0;
    }
    if (v) {
        if (!json_is_boolean(v)) return BAD("logprobs", "'logprobs' must be a boolean");
        r->logprobs = json_is_true(v);
    }
    int has = 0;
    int rc = get_int(root, "top_logprobs", 0, DS_OAI_MAX_TOP_LOGPROBS, &has, &r->top_logprobs, err);
    if (rc) return rc;
    if (has && !r->logprobs) return BAD("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    return 0;
}

static int parse(ds_oai_kind kind, const char *body, size_t len, const ds_oai_limits *lim, ds_oai_request *r,
                 ds_oai_error *err) {
    json_error_t je;
    r->root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!r->root)
        return BAD(NULL, "We could not parse the JSON body of your request: line %d column %d: %s", je.line, je.column,
                   je.text);
    json_t *root = r->root;
    if (!json_is_object(root)) return BAD(NULL, "The body of your request must be a JSON object");
    json_t *model = json_object_get(root, "model");
    if (!model) return BAD("model", "Missing required parameter: 'model'");
    if (!json_is_string(model)) return BAD("model", "'model' must be a string");
    if (strcmp(json_string_value(model), lim->model))
        return ds_oai_fail(err, 404, "invalid_request_error", "model_not_found", "model",
                           "The model '%.200s' does not exist: this server serves '%.200s'", json_string_value(model),
                           lim->model);
    int rc;
    if ((rc = kind == DS_OAI_CHAT ? parse_messages(root, r, err) : parse_prompts(root, lim, r, err))) return rc;
    if ((rc = neutral(root, kind, err))) return rc;
    int has_mct = 0, mct = 0;
    if ((rc = get_int(root, "max_tokens", 1, 1 << 30, &r->has_max_tokens, &r->max_tokens, err))) return rc;
    if ((rc = get_int(root, "max_completion_tokens", 1, 1 << 30, &has_mct, &mct, err))) return rc;
    if (has_mct) { /* the newer name wins */
        r->has_max_tokens = 1;
        r->max_tokens = mct;
    }
    if ((rc = get_num(root, "temperature", 0, 2, &r->has_temperature, &r->temperature, err))) return rc;
    if ((rc = get_num(root, "top_p", 0, 1, &r->has_top_p, &r->top_p, err))) return rc;
    if (r->has_top_p && r->top_p == 0) r->top_p = 1e-9; /* OpenAI's 0: the most likely token alone */
    if ((rc = get_int(root, "top_k", -1, 1 << 30, &r->has_top_k, &r->top_k, err))) return rc;
    if (r->has_top_k && r->top_k < 0) r->top_k = 0; /* vLLM's -1: off */
    json_t *seed = get(root, "seed");
    if (seed) {
        if (!json_is_integer(seed)) return BAD("seed", "'seed' must be an integer");
        r->has_seed = 1;
        r->seed = (uint64_t)json_integer_value(seed);
    }
    r->n = 1;
    if ((rc = get_int(root, "n", 1, lim->max_n, NULL, &r->n, err))) return rc;
    if (r->n * (r->n_prompts ? r->n_prompts : 1) > lim->max_n)
        return BAD("n", "%d prompts x n %d: at most %d completions per request", r->n_prompts, r->n, lim->max_n);
    if ((rc = parse_stop(root, r, err))) return rc;
    if ((rc = parse_logprobs(root, r, err))) return rc;
    if ((rc = get_bool(root, "stream", &r->stream, err))) return rc;
    json_t *so = get(root, "stream_options");
    if (so) {
        if (!json_is_object(so)) return BAD("stream_options", "'stream_options' must be an object");
        if (!r->stream) return BAD("stream_options", "'stream_options' is only allowed when 'stream' is true");
        if ((rc = get_bool(so, "include_usage", &r->include_usage, err))) return rc;
    }
    return 0;
}

int ds_oai_parse(ds_oai_kind kind, const char *body, size_t len, const ds_oai_limits *lim, ds_oai_request *r,
                 ds_oai_error *err) {
    memset(r, 0, sizeof *r);
    memset(err, 0, sizeof *err);
    r->kind = kind;
    int rc = parse(kind, body, len, lim, r, err);
    if (rc) ds_oai_request_free(r);
    return rc;
}

void ds_oai_request_free(ds_oai_request *r) {
    if (r->joined)
        for (int i = 0; i < r->n_msgs; i++) free(r->joined[i]);
    free(r->joined);
    free(r->msgs);
    for (int i = 0; r->prompts && i < r->n_prompts; i++) free(r->prompts[i].ids);
    free(r->prompts);
    if (r->root) json_decref(r->root);
    memset(r, 0, sizeof *r);
}

size_t ds_utf8_complete_prefix(const char *text, size_t n) {
    const unsigned char *p = (const unsigned char *)text;
    /* look back over at most 3 continuation bytes for the lead byte of the last character */
    size_t i = n, back = 0;
    while (i > 0 && back < 3 && (p[i - 1] & 0xc0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0) return n;
    unsigned c = p[i - 1];
    int need = c >= 0xf0 && c < 0xf5 ? 4 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
    /* a lead byte whose sequence is not complete yet: hold it and its continuation bytes back */
    if (need && (size_t)need > back + 1) return i - 1;
    return n;
}
