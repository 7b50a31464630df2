#include "infer/textgen.h"

#include "core/err.h"
#include "core/jsonw.h"
#include "infer/stop.h"
#include "io/jsonl.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE ((size_t)64 << 20)

/* ---- reading ------------------------------------------------------------------------------------- */

struct ds_prompt_reader {
    ds_prompt_opts o;
    const char *const *prompts;
    int n_prompts, next_prompt;
    FILE *f;
    char where[256];
    char *line;
    size_t line_cap;
    long line_no;
    ds_input_format format;
    uint64_t index;
    ds_ids ids;
    int32_t *out;
    size_t out_cap;
};

int ds_prompt_reader_open(ds_prompt_reader **out, const ds_prompt_opts *o, const char *const *prompts, int n_prompts,
                          FILE *f, const char *where) {
    *out = NULL;
    if (!o->tok && o->format != DS_INPUT_IDS && !prompts)
        return ds_fail(DS_EUSAGE, "text input needs a tokenizer (the checkpoint has none): use --ids");
    if (!o->tok && prompts) return ds_fail(DS_EUSAGE, "--prompt needs a tokenizer (the checkpoint has none)");
    ds_prompt_reader *r = calloc(1, sizeof *r);
    if (!r) return ds_fail(DS_ERR, "prompts: out of memory");
    r->o = *o;
    r->prompts = prompts;
    r->n_prompts = n_prompts;
    r->f = f;
    r->format = prompts ? DS_INPUT_TEXT : o->format;
    snprintf(r->where, sizeof r->where, "%s", where ? where : "-");
    *out = r;
    return DS_OK;
}

void ds_prompt_reader_free(ds_prompt_reader *r) {
    if (!r) return;
    free(r->line);
    ds_ids_free(&r->ids);
    free(r->out);
    free(r);
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

/* The next non-blank line (without its newline); *len = -1 at the end of the stream. */
static int read_line(ds_prompt_reader *r, const char **text, ssize_t *len) {
    for (;;) {
        errno = 0;
        ssize_t n = getline(&r->line, &r->line_cap, r->f);
        if (n < 0) {
            if (ferror(r->f)) return ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), r->where);
            *len = -1;
            return DS_OK;
        }
        r->line_no++;
        if ((size_t)n > MAX_LINE)
            return ds_fail(DS_ERR, "%s: line %ld: longer than %zu MiB", r->where, r->line_no, MAX_LINE >> 20);
        while (n > 0 && (r->line[n - 1] == '\n' || r->line[n - 1] == '\r')) n--;
        r->line[n] = 0;
        if (is_blank(r->line, (size_t)n)) continue;
        *text = r->line;
        *len = n;
        return DS_OK;
    }
}

static int push_ids(ds_prompt_reader *r, size_t n) {
    if (n > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 256;
        while (cap < n) cap *= 2;
        int32_t *v = realloc(r->out, cap * sizeof *v);
        if (!v) return ds_fail(DS_ERR, "prompts: out of memory for %zu tokens", n);
        r->out = v;
        r->out_cap = cap;
    }
    return DS_OK;
}

/* r->ids (uint32 from the tokenizer) -> r->out (int32), checked against the vocabulary */
static int finish_ids(ds_prompt_reader *r, int *n) {
    if (r->ids.n > (size_t)INT32_MAX / 2)
        return ds_fail(DS_ERR, "%s: line %ld: %zu tokens: too many", r->where, r->line_no, r->ids.n);
    DS_TRY(push_ids(r, r->ids.n));
    for (size_t i = 0; i < r->ids.n; i++) {
        if (r->ids.v[i] >= (uint32_t)r->o.vocab)
            return ds_fail(DS_ERR, "%s: line %ld: token id %u outside the model's vocabulary of %d", r->where, r->line_no,
                           r->ids.v[i], r->o.vocab);
        r->out[i] = (int32_t)r->ids.v[i];
    }
    *n = (int)r->ids.n;
    return DS_OK;
}

static int encode_messages(ds_prompt_reader *r, const ds_chat_msg *m, int nm) {
    if (!r->o.chat) return ds_fail(DS_ERR, "%s: line %ld: messages need a chat template", r->where, r->line_no);
    ds_chat_rendered rd;
    DS_TRY(ds_chat_render(r->o.chat, m, nm, r->o.generation_prompt, &rd));
    int rc = ds_chat_encode(r->o.tok, &rd, &r->ids, NULL);
    ds_chat_rendered_free(&rd);
    return rc;
}

static int encode_text(ds_prompt_reader *r, const char *text, size_t len) {
    if (r->o.chat_prompts) {
        ds_chat_msg m = {DS_ROLE_USER, text, len};
        return encode_messages(r, &m, 1);
    }
    if (r->o.bos >= 0) {
        if (r->ids.n + 1 > r->ids.cap) {
            size_t cap = r->ids.cap ? 2 * r->ids.cap : 64;
            uint32_t *v = realloc(r->ids.v, cap * sizeof *v);
            if (!v) return ds_fail(DS_ERR, "prompts: out of memory");
            r->ids.v = v;
            r->ids.cap = cap;
        }
        r->ids.v[r->ids.n++] = (uint32_t)r->o.bos;
    }
    return ds_tok_encode(r->o.tok, text, len, DS_TOK_SPECIAL, &r->ids);
}

static int parse_ids(ds_prompt_reader *r, const char *s, int *n) {
    size_t k = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        if (*p < '0' || *p > '9')
            return ds_fail(DS_ERR, "%s: line %ld: expected token ids separated by spaces, found '%c'", r->where,
                           r->line_no, *p);
        errno = 0;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || v >= (unsigned long long)r->o.vocab)
            return ds_fail(DS_ERR, "%s: line %ld: token id %.20s outside the model's vocabulary of %d", r->where,
                           r->line_no, p, r->o.vocab);
        DS_TRY(push_ids(r, k + 1));
        r->out[k++] = (int32_t)v;
        p = end;
    }
    *n = (int)k;
    return DS_OK;
}

/* A JSONL record: {"text": ...} here (scoring), {"prompt"} / {"messages"} as io/jsonl.h validates them
 * for every tool (with a generation prompt the conversation must end with a user turn). */
static int parse_jsonl(ds_prompt_reader *r, const char *s, size_t len) {
    json_error_t je;
    json_t *v = json_loadb(s, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) return ds_fail(DS_ERR, "%s: line %ld: bad JSON at column %d: %s", r->where, r->line_no, je.column, je.text);
    int rc = DS_OK;
    json_t *text = json_is_object(v) ? json_object_get(v, "text") : NULL;
    if (text && !json_object_get(v, "prompt") && !json_object_get(v, "messages")) {
        rc = json_is_string(text) ? encode_text(r, json_string_value(text), json_string_length(text))
                                  : ds_fail(DS_ERR, "%s: line %ld: \"text\" must be a string", r->where, r->line_no);
        json_decref(v);
        return rc;
    }
    ds_example ex;
    char err[256];
    if (ds_example_from_json(v, &ex, r->o.generation_prompt ? DS_EX_PROMPT : 0, err, sizeof err)) {
        rc = ds_fail(DS_ERR, "%s: line %ld: %s", r->where, r->line_no, err);
    } else if (ex.prompt) {
        rc = encode_text(r, ex.prompt, ex.prompt_len);
    } else if (ex.n_messages > 0) {
        ds_chat_msg *m = calloc((size_t)ex.n_messages, sizeof *m);
        if (!m) rc = ds_fail(DS_ERR, "prompts: out of memory");
        static const ds_chat_role role[] = {[DS_JSONL_SYSTEM] = DS_ROLE_SYSTEM, [DS_JSONL_USER] = DS_ROLE_USER,
                                            [DS_JSONL_ASSISTANT] = DS_ROLE_ASSISTANT};
        for (int i = 0; m && i < ex.n_messages; i++)
            m[i] = (ds_chat_msg){role[ex.messages[i].role], ex.messages[i].content, ex.messages[i].len};
        if (m) rc = encode_messages(r, m, ex.n_messages);
        free(m);
    } else {
        rc = ds_fail(DS_ERR, "%s: line %ld: needs one of \"prompt\", \"messages\" or \"text\"", r->where, r->line_no);
    }
    ds_example_free(&ex);
    json_decref(v);
    return rc;
}

int ds_prompt_reader_next(ds_prompt_reader *r, uint64_t *index, const int32_t **ids, int *n, int *got) {
    *got = 0;
    r->ids.n = 0;
    int count = 0;
    if (r->prompts) {
        if (r->next_prompt >= r->n_prompts) return DS_OK;
        const char *p = r->prompts[r->next_prompt++];
        r->line_no = r->next_prompt;
        snprintf(r->where, sizeof r->where, "--prompt %d", r->next_prompt);
        DS_TRY(encode_text(r, p, strlen(p)));
        DS_TRY(finish_ids(r, &count));
    } else {
        const char *line = NULL;
        ssize_t len = -1;
        DS_TRY(read_line(r, &line, &len));
        if (len < 0) return DS_OK;
        if (r->format == DS_INPUT_AUTO) r->format = line[0] == '{' ? DS_INPUT_JSONL : DS_INPUT_TEXT;
        if (r->format == DS_INPUT_IDS) {
            DS_TRY(parse_ids(r, line, &count));
        } else {
            if (r->format == DS_INPUT_JSONL) DS_TRY(parse_jsonl(r, line, (size_t)len));
            else DS_TRY(encode_text(r, line, (size_t)len));
            DS_TRY(finish_ids(r, &count));
        }
    }
    if (count == 0) return ds_fail(DS_ERR, "%s: line %ld: no tokens", r->where, r->line_no);
    *index = r->index++;
    *ids = r->out;
    *n = count;
    *got = 1;
    return DS_OK;
}

int ds_prompt_reader_next_cb(void *r, uint64_t *index, const int32_t **ids, int *n, int *got) {
    return ds_prompt_reader_next(r, index, ids, n, got);
}

/* ---- writing ------------------------------------------------------------------------------------- */

typedef struct {
    ds_stop stop;
    int done;
    char *record; /* JSONL line, once done */
} entry;

struct ds_gen_writer {
    ds_writer_opts o;
    entry **e; /* by sequence id; NULL once written */
    size_t cap;
    uint64_t next; /* the oldest sequence not yet written */
    ds_jsonw w;
};

int ds_gen_writer_open(ds_gen_writer **out, const ds_writer_opts *o) {
    *out = NULL;
    if (o->n_stops && !o->tok) return ds_fail(DS_EUSAGE, "--stop needs a tokenizer to decode text");
    ds_gen_writer *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(DS_ERR, "output: out of memory");
    w->o = *o;
    ds_jsonw_init(&w->w);
    *out = w;
    return DS_OK;
}

static entry *get_entry(ds_gen_writer *w, uint64_t id) {
    if (id >= w->cap) {
        size_t cap = w->cap ? w->cap : 64;
        while (cap <= id) cap *= 2;
        entry **e = realloc(w->e, cap * sizeof *e);
        if (!e) return NULL;
        memset(e + w->cap, 0, (cap - w->cap) * sizeof *e);
        w->e = e;
        w->cap = cap;
    }
    if (!w->e[id]) {
        entry *x = calloc(1, sizeof *x);
        if (!x || ds_stop_init(&x->stop, w->o.stops, w->o.n_stops)) {
            free(x);
            return NULL;
        }
        w->e[id] = x;
    }
    return w->e[id];
}

/* Text of what can be shown now for entry x (final: all of it). Without a tokenizer, ids. */
static int stream(ds_gen_writer *w, entry *x, int final) {
    const char *p;
    size_t n = ds_stop_take(&x->stop, final, &p);
    if (n && fwrite(p, 1, n, w->o.out) != n) return ds_fail(DS_ERR, "write failed: stdout");
    if (fflush(w->o.out)) return ds_fail(DS_ERR, "write failed: stdout");
    return DS_OK;
}

static int flush_ready(ds_gen_writer *w) {
    while (w->next < w->cap && w->e[w->next] && w->e[w->next]->done) {
        entry *x = w->e[w->next];
        if (w->o.jsonl) {
            size_t n = strlen(x->record);
            if (fwrite(x->record, 1, n, w->o.out) != n) return ds_fail(DS_ERR, "write failed: stdout");
        } else {
            DS_TRY(stream(w, x, 1));
            if (fputc('\n', w->o.out) == EOF) return ds_fail(DS_ERR, "write failed: stdout");
        }
        if (fflush(w->o.out)) return ds_fail(DS_ERR, "write failed: stdout");
        ds_stop_free(&x->stop);
        free(x->record);
        free(x);
        w->e[w->next++] = NULL;
    }
    /* the new oldest sequence streams what it has so far */
    if (!w->o.jsonl && w->next < w->cap && w->e[w->next]) DS_TRY(stream(w, w->e[w->next], 0));
    return DS_OK;
}

int ds_gen_writer_token(void *ctx, const ds_gen_seq *s, int *stop) {
    ds_gen_writer *w = ctx;
    entry *x = get_entry(w, s->id);
    if (!x) return ds_fail(DS_ERR, "output: out of memory");
    const int32_t tok = s->tokens[s->n - 1];
    *stop = 0;
    if (tok == w->o.eos || (w->o.eos_more && ds_eos_ids_has(w->o.eos_more, tok))) return DS_OK;
    char buf[32];
    const char *bytes;
    size_t len;
    if (w->o.tok) {
        bytes = (const char *)ds_tok_token_bytes(w->o.tok, (uint32_t)tok, &len);
    } else { /* no tokenizer: the text is the id line */
        len = (size_t)snprintf(buf, sizeof buf, "%s%d", s->n > 1 ? " " : "", tok);
        bytes = buf;
    }
    int hit = ds_stop_push(&x->stop, bytes ? bytes : "", bytes ? len : 0);
    if (hit < 0) return DS_ERR;
    *stop = hit;
    if (!w->o.jsonl && s->id == w->next) DS_TRY(stream(w, x, 0));
    return DS_OK;
}

static void record(ds_gen_writer *w, entry *x, const ds_gen_seq *s) {
    ds_jsonw *j = &w->w;
    ds_jsonw_reset(j);
    ds_jsonw_obj_begin(j);
    ds_jsonw_kint(j, "index", (int64_t)s->id);
    ds_jsonw_key(j, "completion");
    if (w->o.tok) ds_jsonw_strn(j, x->stop.text, x->stop.len);
    else ds_jsonw_null(j);
    ds_jsonw_key(j, "tokens");
    ds_jsonw_arr_begin(j);
    for (int i = 0; i < s->n; i++) ds_jsonw_int(j, s->tokens[i]);
    ds_jsonw_arr_end(j);
    ds_jsonw_key(j, "logprobs");
    ds_jsonw_arr_begin(j);
    for (int i = 0; i < s->n; i++) ds_jsonw_numf(j, s->logprobs[i]);
    ds_jsonw_arr_end(j);
    ds_jsonw_kstr(j, "finish_reason", ds_finish_name(s->finish));
    ds_jsonw_kint(j, "prompt_tokens", s->prompt_len);
    if (s->truncated) ds_jsonw_kint(j, "truncated_tokens", s->truncated);
    ds_jsonw_key(j, "timing");
    ds_jsonw_obj_begin(j);
    ds_jsonw_knum(j, "first_token_s", s->t_first - s->t_admit);
    ds_jsonw_knum(j, "total_s", s->t_end - s->t_admit);
    double dt = s->t_end - s->t_first;
    if (s->n > 1 && dt > 0) ds_jsonw_knum(j, "decode_tokens_per_s", (s->n - 1) / dt);
    ds_jsonw_obj_end(j);
    if (w->o.mtp) {
        ds_jsonw_key(j, "mtp");
        ds_jsonw_obj_begin(j);
        ds_jsonw_kint(j, "drafted", s->drafted);
        ds_jsonw_kint(j, "accepted", s->accepted);
        ds_jsonw_obj_end(j);
    }
    ds_jsonw_obj_end(j);
}

int ds_gen_writer_done(void *ctx, const ds_gen_seq *s) {
    ds_gen_writer *w = ctx;
    entry *x = get_entry(w, s->id);
    if (!x) return ds_fail(DS_ERR, "output: out of memory");
    x->done = 1;
    if (w->o.jsonl) {
        record(w, x, s);
        x->record = malloc(w->w.len + 2);
        if (!x->record) return ds_fail(DS_ERR, "output: out of memory");
        memcpy(x->record, w->w.buf, w->w.len);
        x->record[w->w.len] = '\n';
        x->record[w->w.len + 1] = 0;
    }
    return flush_ready(w);
}

int ds_gen_writer_close(ds_gen_writer *w) {
    if (!w) return DS_OK;
    int left = 0;
    for (size_t i = 0; i < w->cap; i++)
        if (w->e[i]) {
            left++;
            ds_stop_free(&w->e[i]->stop);
            free(w->e[i]->record);
            free(w->e[i]);
        }
    free(w->e);
    ds_jsonw_free(&w->w);
    free(w);
    return left ? ds_fail(DS_ERR, "output: %d sequences unfinished", left) : DS_OK;
}
