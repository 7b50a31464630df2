#include "rl/prompts.h"

#include "core/err.h"
#include "io/jsonl.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void ds_rl_prompts_free(ds_rl_prompts *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->p[i].ids);
        free(s->p[i].text);
        free(s->p[i].messages);
        free(s->p[i].answer);
    }
    free(s->p);
    memset(s, 0, sizeof *s);
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

static ds_rl_prompt *push(ds_rl_prompts *s) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        ds_rl_prompt *p = realloc(s->p, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        s->p = p, s->cap = cap;
    }
    ds_rl_prompt *p = &s->p[s->n++];
    memset(p, 0, sizeof *p);
    return p;
}

static int set_ids(ds_rl_prompts *s, ds_rl_prompt *p, const uint32_t *ids, size_t n, int vocab) {
    if (n == 0) return ds_fail(DS_ERR, "%s: line %ld: the prompt renders to no tokens", s->where, p->line);
    if (n > (1u << 24)) return ds_fail(DS_ERR, "%s: line %ld: %zu prompt tokens: too many", s->where, p->line, n);
    if (!(p->ids = malloc(n * sizeof *p->ids))) return ds_fail(DS_ERR, "out of memory: prompts");
    for (size_t i = 0; i < n; i++) {
        if (vocab > 0 && ids[i] >= (uint32_t)vocab)
            return ds_fail(DS_ERR, "%s: line %ld: token id %u outside the model's vocabulary of %d", s->where, p->line, ids[i], vocab);
        p->ids[i] = (int32_t)ids[i];
    }
    p->n_ids = (int)n;
    if (p->n_ids > s->max_ids) s->max_ids = p->n_ids;
    return 0;
}

/* The record's token ids, as ds-generate renders the same record. */
static int render(const ds_rl_prompt_opts *o, const ds_example *ex, ds_ids *ids) {
    if (ex->messages || o->chat_prompts) {
        if (!o->chat) return ds_fail(DS_ERR, "messages need a chat template");
        ds_chat_msg one = {DS_ROLE_USER, ex->prompt, ex->prompt_len}, *m = &one;
        int nm = 1;
        if (ex->messages) {
            nm = ex->n_messages;
            if (!(m = calloc((size_t)nm, sizeof *m))) return ds_fail(DS_ERR, "out of memory: prompts");
            for (int i = 0; i < nm; i++)
                m[i] = (ds_chat_msg){(ds_chat_role)ex->messages[i].role, ex->messages[i].content, ex->messages[i].len};
        }
        ds_chat_rendered r;
        int rc = ds_chat_render(o->chat, m, nm, 1, &r);
        if (!rc) {
            rc = ds_chat_encode(o->tok, &r, ids, NULL);
            ds_chat_rendered_free(&r);
        }
        if (m != &one) free(m);
        return rc;
    }
    if (o->bos >= 0) {
        uint32_t *v = realloc(ids->v, (ids->n + 1) * sizeof *v);
        if (!v) return ds_fail(DS_ERR, "out of memory: prompts");
        ids->v = v, ids->cap = ids->n + 1;
        ids->v[ids->n++] = (uint32_t)o->bos;
    }
    return ds_tok_encode(o->tok, ex->prompt, ex->prompt_len, DS_TOK_SPECIAL, ids);
}

static int add_record(ds_rl_prompts *s, const ds_rl_prompt_opts *o, const ds_example *ex) {
    ds_rl_prompt *p = push(s);
    if (!p) return ds_fail(DS_ERR, "out of memory: prompts");
    p->line = ex->line;
    const char *text = ex->prompt;
    size_t tn = ex->prompt_len;
    if (ex->messages) { /* the question is the last user message */
        const ds_jsonl_msg *last = &ex->messages[ex->n_messages - 1];
        text = last->content, tn = last->len;
        p->messages = json_dumps(json_object_get(ex->obj, "messages"), JSON_COMPACT);
        if (!p->messages) return ds_fail(DS_ERR, "out of memory: prompts");
    }
    if (!(p->text = dup_n(text, tn))) return ds_fail(DS_ERR, "out of memory: prompts");
    p->text_len = tn;
    if (ex->answer) {
        if (!(p->answer = dup_n(ex->answer, ex->answer_len))) return ds_fail(DS_ERR, "out of memory: prompts");
        p->answer_len = ex->answer_len;
    }
    ds_ids ids = {0};
    int rc = render(o, ex, &ids);
    if (rc) ds_fail_ctx(rc, "%s: line %ld", s->where, p->line);
    else rc = set_ids(s, p, ids.v, ids.n, o->vocab);
    ds_ids_free(&ids);
    return rc;
}

int ds_rl_prompts_load(ds_rl_prompts *s, const char *path, const ds_rl_prompt_opts *o) {
    memset(s, 0, sizeof *s);
    snprintf(s->where, sizeof s->where, "%s", strcmp(path, "-") ? path : "stdin");
    if (!o->tok) return ds_fail(DS_ERR, "prompts: a tokenizer is needed to render them: %s", s->where);
    ds_jsonl *r;
    DS_TRY(ds_jsonl_open(&r, path));
    int rc = 0;
    for (;;) {
        ds_example ex;
        if ((rc = ds_jsonl_next_example(r, &ex, DS_EX_PROMPT | (o->need_answer ? DS_EX_ANSWER : 0)))) break;
        if (!ex.obj) break;
        rc = add_record(s, o, &ex);
        ds_example_free(&ex);
        if (rc) break;
    }
    ds_jsonl_close(r);
    if (!rc && s->n == 0) rc = ds_fail(DS_ERR, "prompts: no records: %s", s->where);
    if (rc) {
        char keep[sizeof s->where];
        memcpy(keep, s->where, sizeof keep);
        ds_rl_prompts_free(s);
        memcpy(s->where, keep, sizeof keep);
    }
    return rc;
}

int ds_rl_prompts_add_ids(ds_rl_prompts *s, const int32_t *ids, int n, const char *answer) {
    if (!s->where[0]) snprintf(s->where, sizeof s->where, "prompts");
    ds_rl_prompt *p = push(s);
    if (!p) return ds_fail(DS_ERR, "out of memory: prompts");
    if (!(p->text = dup_n("", 0))) return ds_fail(DS_ERR, "out of memory: prompts");
    if (answer) {
        if (!(p->answer = dup_n(answer, strlen(answer)))) return ds_fail(DS_ERR, "out of memory: prompts");
        p->answer_len = strlen(answer);
    }
    uint32_t *u = malloc((size_t)(n > 0 ? n : 1) * sizeof *u);
    if (!u) return ds_fail(DS_ERR, "out of memory: prompts");
    for (int i = 0; i < n; i++) u[i] = (uint32_t)ids[i];
    int rc = n > 0 && ids[0] >= 0 ? set_ids(s, p, u, (size_t)n, 0) : ds_fail(DS_ERR, "prompts: an empty or negative prompt");
    free(u);
    return rc;
}
