#include "infer/server.h"

#include "core/err.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/strbuf.h"
#include "infer/oai.h"
#include "infer/stop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- state shared by the HTTP threads and the scheduler: every field below is guarded by ds_server.mu ---- */

typedef struct {
    int32_t tok;
    float logprob;
    int k;                  /* alternatives */
    int32_t top_id[DS_OAI_MAX_TOP_LOGPROBS];
    float top_lp[DS_OAI_MAX_TOP_LOGPROBS];
    size_t text_off;        /* where the token's bytes start in the completion */
} lp_entry;

typedef struct request request;

typedef enum { SEQ_PENDING = 0, SEQ_RUNNING, SEQ_DONE } seq_state;

typedef struct seq {
    request *r;
    int index;              /* the choice index in the response */
    const int32_t *prompt;  /* the request's (shared by its choices) */
    int n_prompt, max_new;
    uint64_t stream;        /* sampling stream: the choice number within its prompt */
    seq_state state;
    uint64_t eid;           /* the engine's sequence id while running */
    ds_stop stop;           /* the completion text, cut at a stop string */
    const char *finish;     /* "stop" | "length" once done */
    int n_gen;              /* tokens generated (usage), EOS included */
    lp_entry *lp;
    int n_lp, cap_lp;
    /* what the HTTP thread has sent (streaming) */
    size_t sent;
    int lp_sent, role_sent, finish_sent;
    struct seq *next_pending;
} seq;

struct request {
    ds_server *srv;
    int refs;               /* the HTTP thread + each sequence not done */
    int cancelled;          /* the client went away */
    int n_seq, n_done;
    seq *seqs;
    ds_oai_request q;
    ds_sampling sampling;
    int32_t **prompts;      /* [n_prompts] token ids */
    int *prompt_len;
    int n_prompts, prompt_tokens;
    char id[48];
    long long created;
    struct MHD_Connection *conn;
    /* streaming output not yet handed to MHD */
    ds_jsonw ev;
    ds_strbuf out;
    size_t out_off;
    int usage_sent, done_sent;
};

struct ds_server {
    ds_serve_opts o;
    ds_infer *e;
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t work;     /* the scheduler waits for sequences */
    pthread_cond_t progress; /* HTTP threads wait for tokens */
    seq *pending_head, *pending_tail;
    seq **running;           /* [batch] */
    int in_flight;
    int open_requests;       /* requests MHD has not reported completed (their answer not yet sent) */
    int stopping, hard, closed, failed;
    uint64_t next_eid, next_request;
    time_t started;
    float *lsm;              /* [V] log-softmax scratch (scheduler only) */
    int V;
    ds_serve_stats st;
};

static void request_unref(ds_server *s, request *r) {
    if (--r->refs) return;
    for (int i = 0; i < r->n_seq; i++) {
        ds_stop_free(&r->seqs[i].stop);
        free(r->seqs[i].lp);
    }
    for (int i = 0; i < r->n_prompts; i++) free(r->prompts[i]);
    free(r->prompts);
    free(r->prompt_len);
    free(r->seqs);
    ds_oai_request_free(&r->q);
    ds_jsonw_free(&r->ev);
    free(r->out.s);
    free(r);
    (void)s;
}

static void seq_finish(ds_server *s, seq *q) {
    q->state = SEQ_DONE;
    q->r->n_done++;
    pthread_cond_broadcast(&s->progress);
    request_unref(s, q->r);
}

/* ---- the scheduler side: ds_generate's source and sink ---- */

static seq *running_seq(ds_server *s, uint64_t eid) {
    for (int k = 0; k < s->o.gen.batch; k++)
        if (s->running[k] && s->running[k]->eid == eid) return s->running[k];
    return NULL;
}

static int src_next(void *ctx, uint64_t *id, const int32_t **ids, int *n, int *got) {
    ds_server *s = ctx;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        seq *q = s->pending_head;
        if (q) {
            s->pending_head = q->next_pending;
            if (!s->pending_head) s->pending_tail = NULL;
            if (q->r->cancelled || s->hard) { /* never admitted: its client left, or a hard stop */
                s->st.cancelled++;
                seq_finish(s, q);
                continue;
            }
            int k = 0;
            while (s->running[k]) k++; /* a free entry exists: the engine asks only when a slot is free */
            s->running[k] = q;
            q->state = SEQ_RUNNING;
            q->eid = s->next_eid++;
            s->in_flight++;
            *id = q->eid;
            *ids = q->prompt;
            *n = q->n_prompt;
            *got = 1;
            break;
        }
        if (s->in_flight) {
            *got = DS_GEN_WAIT;
            break;
        }
        if (s->stopping) {
            *got = 0;
            break;
        }
        pthread_cond_wait(&s->work, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return DS_OK;
}

static int src_seq_opts(void *ctx, uint64_t id, ds_gen_seq_opts *so) {
    ds_server *s = ctx;
    pthread_mutex_lock(&s->mu);
    seq *q = running_seq(s, id);
    if (q) {
        so->sampling = q->r->sampling;
        so->stream = q->stream;
        so->max_new = q->max_new;
    }
    pthread_mutex_unlock(&s->mu);
    return q ? DS_OK : ds_fail(DS_ERR, "server: sequence %llu is not running", (unsigned long long)id);
}

/* The k most likely tokens under the model (temperature 1), most likely first, lowest id on ties: one
 * pass over the vocabulary keeping a sorted list of k (a 129K vocabulary costs one scan, not k). */
static void top_logprobs(ds_server *s, const float *logits, lp_entry *e, int k) {
    ds_log_softmax(logits, s->V, s->lsm);
    e->k = 0;
    for (int v = 0; v < s->V; v++) {
        const float x = s->lsm[v];
        if (e->k == k && !(x > e->top_lp[k - 1])) continue; /* ascending ids: an equal value keeps the lower id */
        int at = e->k < k ? e->k++ : k - 1;
        while (at > 0 && x > e->top_lp[at - 1]) {
            e->top_lp[at] = e->top_lp[at - 1];
            e->top_id[at] = e->top_id[at - 1];
            at--;
        }
        e->top_lp[at] = x;
        e->top_id[at] = v;
    }
}

static int is_eos(const ds_server *s, int32_t tok) {
    return (s->o.gen.eos_id >= 0 && tok == s->o.gen.eos_id) || ds_eos_ids_has(&s->o.gen.eos_more, tok);
}

static int sink_token(void *ctx, const ds_gen_seq *gs, int *stop) {
    ds_server *s = ctx;
    int rc = DS_OK;
    pthread_mutex_lock(&s->mu);
    seq *q = running_seq(s, gs->id);
    *stop = 0;
    if (!q) {
        rc = ds_fail(DS_ERR, "server: sequence %llu is not running", (unsigned long long)gs->id);
    } else if (q->r->cancelled || s->hard) {
        *stop = 1;
    } else {
        const int32_t tok = gs->tokens[gs->n - 1];
        q->n_gen++;
        if (!is_eos(s, tok)) { /* EOS ends the text without being part of it */
            size_t len = 0;
            const char *b = (const char *)ds_tok_token_bytes(s->o.tok, (uint32_t)tok, &len);
            const size_t off = q->stop.len;
            int hit = ds_stop_push(&q->stop, b ? b : "", b ? len : 0);
            if (hit < 0) {
                rc = DS_ERR;
            } else {
                *stop = hit;
                const char *p;
                ds_stop_take(&q->stop, 0, &p); /* advances what is safe to send */
            }
            if (!rc && q->r->q.logprobs) {
                if (q->n_lp == q->cap_lp) {
                    int cap = q->cap_lp ? 2 * q->cap_lp : 64;
                    lp_entry *m = realloc(q->lp, (size_t)cap * sizeof *m);
                    if (!m) rc = ds_fail(DS_ERR, "server: out of memory");
                    else q->lp = m, q->cap_lp = cap;
                }
                if (!rc) {
                    lp_entry *e = &q->lp[q->n_lp++];
                    e->tok = tok;
                    e->logprob = gs->logprobs[gs->n - 1];
                    e->text_off = off;
                    e->k = 0;
                    if (q->r->q.top_logprobs && gs->logits) top_logprobs(s, gs->logits, e, q->r->q.top_logprobs);
                }
            }
        }
        pthread_cond_broadcast(&s->progress);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int sink_done(void *ctx, const ds_gen_seq *gs) {
    ds_server *s = ctx;
    pthread_mutex_lock(&s->mu);
    seq *q = running_seq(s, gs->id);
    if (q) {
        const char *p;
        ds_stop_take(&q->stop, 1, &p);
        q->finish = gs->finish == DS_FINISH_LENGTH ? "length" : "stop";
        for (int k = 0; k < s->o.gen.batch; k++)
            if (s->running[k] == q) s->running[k] = NULL;
        s->in_flight--;
        s->st.completion_tokens += q->n_gen;
        if (q->r->cancelled) s->st.cancelled++;
        seq_finish(s, q);
    }
    pthread_mutex_unlock(&s->mu);
    return q ? DS_OK : ds_fail(DS_ERR, "server: sequence %llu is not running", (unsigned long long)gs->id);
}

/* ---- HTTP ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    int too_large;
} body;

static enum MHD_Result respond(struct MHD_Connection *c, int status, const char *type, const char *text, size_t n) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result respond_json(struct MHD_Connection *c, int status, ds_jsonw *w) {
    return respond(c, status, "application/json", w->buf ? w->buf : "", w->len);
}

static enum MHD_Result respond_error(ds_server *s, struct MHD_Connection *c, const ds_oai_error *e) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_oai_error_json(e, &w);
    enum MHD_Result ret = respond_json(c, e->status, &w);
    ds_jsonw_free(&w);
    pthread_mutex_lock(&s->mu);
    s->st.errors++;
    pthread_mutex_unlock(&s->mu);
    return ret;
}

static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char b;
    ssize_t k = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Wait (mu held) for news from the scheduler; 1 when the client went away meanwhile. */
static int wait_progress(ds_server *s, request *r) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_nsec += 100 * 1000 * 1000; /* a disconnect is noticed within 0.1 s even when no token comes */
    if (t.tv_nsec >= 1000000000L) t.tv_sec++, t.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&s->progress, &s->mu, &t);
    return client_gone(r->conn);
}

static void cancel(ds_server *s, request *r) {
    if (r->n_done < r->n_seq) r->cancelled = 1;
    pthread_cond_broadcast(&s->work);
}

static void usage_json(ds_jsonw *w, const request *r) {
    int64_t gen = 0;
    for (int i = 0; i < r->n_seq; i++) gen += r->seqs[i].n_gen;
    ds_jsonw_key(w, "usage");
    ds_jsonw_obj_begin(w);
    ds_jsonw_kint(w, "prompt_tokens", r->prompt_tokens);
    ds_jsonw_kint(w, "completion_tokens", gen);
    ds_jsonw_kint(w, "total_tokens", r->prompt_tokens + gen);
    ds_jsonw_obj_end(w);
}

static void head_json(ds_jsonw *w, const ds_server *s, const request *r, const char *object) {
    ds_jsonw_kstr(w, "id", r->id);
    ds_jsonw_kstr(w, "object", object);
    ds_jsonw_kint(w, "created", r->created);
    ds_jsonw_kstr(w, "model", s->o.model_name);
}

static void token_text(const ds_server *s, int32_t tok, const char **b, size_t *n) {
    *b = (const char *)ds_tok_token_bytes(s->o.tok, (uint32_t)tok, n);
    if (!*b) *b = "", *n = 0;
}

static void token_obj(ds_jsonw *w, const ds_server *s, int32_t t, float lp) {
    const char *b;
    size_t n;
    token_text(s, t, &b, &n);
    ds_jsonw_key(w, "token");
    ds_jsonw_strn(w, b, n);
    ds_jsonw_knum(w, "logprob", lp);
    ds_jsonw_key(w, "bytes");
    ds_jsonw_arr_begin(w);
    for (size_t k = 0; k < n; k++) ds_jsonw_int(w, (unsigned char)b[k]);
    ds_jsonw_arr_end(w);
}

/* Logprobs of entries [from, to) of q, in the chat form or the completions form. */
static void logprobs_json(ds_jsonw *w, const ds_server *s, const request *r, const seq *q, int from, int to) {
    ds_jsonw_key(w, "logprobs");
    if (!r->q.logprobs) {
        ds_jsonw_null(w);
        return;
    }
    ds_jsonw_obj_begin(w);
    if (r->q.kind == DS_OAI_CHAT) {
        ds_jsonw_key(w, "content");
        ds_jsonw_arr_begin(w);
        for (int i = from; i < to; i++) {
            const lp_entry *e = &q->lp[i];
            ds_jsonw_obj_begin(w);
            token_obj(w, s, e->tok, e->logprob);
            ds_jsonw_key(w, "top_logprobs");
            ds_jsonw_arr_begin(w);
            for (int j = 0; j < e->k; j++) {
                ds_jsonw_obj_begin(w);
                token_obj(w, s, e->top_id[j], e->top_lp[j]);
                ds_jsonw_obj_end(w);
            }
            ds_jsonw_arr_end(w);
            ds_jsonw_obj_end(w);
        }
        ds_jsonw_arr_end(w);
    } else {
        const char *b;
        size_t n;
        ds_jsonw_key(w, "tokens");
        ds_jsonw_arr_begin(w);
        for (int i = from; i < to; i++) token_text(s, q->lp[i].tok, &b, &n), ds_jsonw_strn(w, b, n);
        ds_jsonw_arr_end(w);
        ds_jsonw_key(w, "token_logprobs");
        ds_jsonw_arr_begin(w);
        for (int i = from; i < to; i++) ds_jsonw_num(w, q->lp[i].logprob);
        ds_jsonw_arr_end(w);
        ds_jsonw_key(w, "top_logprobs");
        ds_jsonw_arr_begin(w);
        for (int i = from; i < to; i++) {
            ds_jsonw_obj_begin(w); /* {token text: logprob}: the legacy form, keyed by text */
            for (int j = 0; j < q->lp[i].k; j++) {
                char key[256];
                token_text(s, q->lp[i].top_id[j], &b, &n);
                snprintf(key, sizeof key, "%.*s", (int)(n < sizeof key - 1 ? n : sizeof key - 1), b);
                ds_jsonw_knum(w, key, q->lp[i].top_lp[j]);
            }
            ds_jsonw_obj_end(w);
        }
        ds_jsonw_arr_end(w);
        ds_jsonw_key(w, "text_offset");
        ds_jsonw_arr_begin(w);
        for (int i = from; i < to; i++) ds_jsonw_int(w, (int64_t)q->lp[i].text_off);
        ds_jsonw_arr_end(w);
    }
    ds_jsonw_obj_end(w);
}

static void choice_begin(ds_jsonw *w, const request *r, const seq *q) {
    ds_jsonw_obj_begin(w);
    ds_jsonw_kint(w, "index", q->index);
    (void)r;
}

/* The whole answer of a finished request. */
static void response_json(ds_jsonw *w, const ds_server *s, const request *r) {
    const int chat = r->q.kind == DS_OAI_CHAT;
    ds_jsonw_obj_begin(w);
    head_json(w, s, r, chat ? "chat.completion" : "text_completion");
    ds_jsonw_key(w, "choices");
    ds_jsonw_arr_begin(w);
    for (int i = 0; i < r->n_seq; i++) {
        const seq *q = &r->seqs[i];
        choice_begin(w, r, q);
        if (chat) {
            ds_jsonw_key(w, "message");
            ds_jsonw_obj_begin(w);
            ds_jsonw_kstr(w, "role", "assistant");
            ds_jsonw_key(w, "content");
            ds_jsonw_strn(w, q->stop.text ? q->stop.text : "", q->stop.len);
            ds_jsonw_obj_end(w);
        } else {
            ds_jsonw_key(w, "text");
            ds_jsonw_strn(w, q->stop.text ? q->stop.text : "", q->stop.len);
        }
        logprobs_json(w, s, r, q, 0, q->n_lp);
        ds_jsonw_kstr(w, "finish_reason", q->finish ? q->finish : "stop");
        ds_jsonw_obj_end(w);
    }
    ds_jsonw_arr_end(w);
    usage_json(w, r);
    ds_jsonw_obj_end(w);
}

/* One server-sent event: the JSON built in ev, framed into r->out. */
static void sse_end(request *r, ds_jsonw *ev) {
    ds_strbuf_put(&r->out, "data: ", 6);
    ds_strbuf_put(&r->out, ev->buf, ev->len);
    ds_strbuf_put(&r->out, "\n\n", 2);
    ds_jsonw_reset(ev);
}

/* One chunk of choice q: text (NULL: none, the closing chunk), the role (chat's first chunk), logprob
 * entries [lp_from, lp_to) (lp_from < 0: null), finish_reason (NULL: null). */
static void chunk_event(const ds_server *s, request *r, const seq *q, const char *text, size_t n, int role, int lp_from,
                        int lp_to, const char *finish) {
    const int chat = r->q.kind == DS_OAI_CHAT;
    ds_jsonw *w = &r->ev;
    ds_jsonw_obj_begin(w);
    head_json(w, s, r, chat ? "chat.completion.chunk" : "text_completion");
    ds_jsonw_key(w, "choices");
    ds_jsonw_arr_begin(w);
    choice_begin(w, r, q);
    if (chat) {
        ds_jsonw_key(w, "delta");
        ds_jsonw_obj_begin(w);
        if (role) ds_jsonw_kstr(w, "role", "assistant");
        if (text) {
            ds_jsonw_key(w, "content");
            ds_jsonw_strn(w, text, n);
        }
        ds_jsonw_obj_end(w);
    } else {
        ds_jsonw_key(w, "text");
        ds_jsonw_strn(w, text ? text : "", text ? n : 0);
    }
    if (lp_from >= 0) {
        logprobs_json(w, s, r, q, lp_from, lp_to);
    } else {
        ds_jsonw_key(w, "logprobs");
        ds_jsonw_null(w);
    }
    ds_jsonw_key(w, "finish_reason");
    if (finish) ds_jsonw_str(w, finish);
    else ds_jsonw_null(w);
    ds_jsonw_obj_end(w);
    ds_jsonw_arr_end(w);
    ds_jsonw_obj_end(w);
    sse_end(r, w);
}

/* Append (mu held) an event for everything new in r to r->out; returns 1 once the stream is complete
 * ("data: [DONE]" written). */
static int stream_events(ds_server *s, request *r) {
    const int chat = r->q.kind == DS_OAI_CHAT;
    ds_jsonw *w = &r->ev;
    for (int i = 0; i < r->n_seq; i++) {
        seq *q = &r->seqs[i];
        if (q->finish_sent) continue;
        const int done = q->state == SEQ_DONE;
        size_t end = q->stop.released;
        if (!done) end = q->sent + ds_utf8_complete_prefix(q->stop.text + q->sent, end - q->sent);
        const int lp_to = q->n_lp;
        if (end > q->sent || lp_to > q->lp_sent || (chat && !q->role_sent)) {
            chunk_event(s, r, q, q->stop.text ? q->stop.text + q->sent : "", end - q->sent, chat && !q->role_sent,
                        q->lp_sent, lp_to, NULL);
            q->sent = end;
            q->lp_sent = lp_to;
            q->role_sent = 1;
        }
        if (done) {
            chunk_event(s, r, q, NULL, 0, 0, -1, 0, q->finish ? q->finish : "stop");
            q->finish_sent = 1;
        }
    }
    if (r->n_done < r->n_seq || r->done_sent) return r->done_sent;
    if (r->q.include_usage && !r->usage_sent) {
        ds_jsonw_obj_begin(w);
        head_json(w, s, r, chat ? "chat.completion.chunk" : "text_completion");
        ds_jsonw_key(w, "choices");
        ds_jsonw_arr_begin(w);
        ds_jsonw_arr_end(w);
        usage_json(w, r);
        ds_jsonw_obj_end(w);
        sse_end(r, w);
        r->usage_sent = 1;
    }
    ds_strbuf_puts(&r->out, "data: [DONE]\n\n");
    r->done_sent = 1;
    return 1;
}

/* MHD's content reader for a streamed answer: blocks until there is something to send. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    request *r = cls;
    ds_server *s = r->srv;
    ssize_t got = 0;
    (void)pos;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (r->out_off < r->out.len) {
            size_t n = r->out.len - r->out_off;
            if (n > max) n = max;
            memcpy(buf, r->out.s + r->out_off, n);
            r->out_off += n;
            if (r->out_off == r->out.len) r->out_off = r->out.len = 0;
            got = (ssize_t)n;
            break;
        }
        if (r->out.oom || s->failed) { /* the client sees a cut stream, as for a lost connection */
            got = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
        if (r->done_sent) {
            got = MHD_CONTENT_READER_END_OF_STREAM;
            break;
        }
        if (stream_events(s, r)) continue;
        if (r->out.len) continue;
        if (wait_progress(s, r)) {
            cancel(s, r);
            got = MHD_CONTENT_READER_END_WITH_ERROR;
            break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

/* MHD is done with the streamed response (sent, or the connection died): the client holds no more. */
static void stream_free(void *cls) {
    request *r = cls;
    ds_server *s = r->srv;
    pthread_mutex_lock(&s->mu);
    cancel(s, r);
    request_unref(s, r);
    pthread_mutex_unlock(&s->mu);
}

/* Token ids of the request's prompts, with the context check. Returns 0 or an HTTP status. */
static int tokenize(ds_server *s, request *r, ds_oai_error *err) {
    const ds_oai_request *q = &r->q;
    const int chat = q->kind == DS_OAI_CHAT;
    r->n_prompts = chat ? 1 : q->n_prompts;
    r->prompts = calloc((size_t)r->n_prompts, sizeof *r->prompts);
    r->prompt_len = calloc((size_t)r->n_prompts, sizeof *r->prompt_len);
    if (!r->prompts || !r->prompt_len) return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
    const int ctx = ds_infer_cache(s->e)->max_len;
    for (int i = 0; i < r->n_prompts; i++) {
        ds_ids ids = {0};
        int rc = DS_OK;
        if (chat) {
            ds_chat_rendered rd;
            rc = ds_chat_render(s->o.chat, q->msgs, q->n_msgs, 1, &rd);
            if (!rc) {
                rc = ds_chat_encode(s->o.tok, &rd, &ids, NULL);
                ds_chat_rendered_free(&rd);
            }
        } else if (q->prompts[i].text) {
            rc = ds_tok_encode(s->o.tok, q->prompts[i].text, q->prompts[i].len, DS_TOK_SPECIAL, &ids);
        }
        if (rc) {
            ds_ids_free(&ids);
            return ds_oai_fail(err, 400, "invalid_request_error", NULL, chat ? "messages" : "prompt", "%s", ds_errmsg());
        }
        /* completion text: BOS + the text, as ds-generate --prompt reads it */
        const int text = !chat && q->prompts[i].text, bos = text && s->o.bos >= 0;
        const int n = chat || text ? (int)ids.n + bos : q->prompts[i].n_ids;
        r->prompts[i] = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
        if (!r->prompts[i]) {
            ds_ids_free(&ids);
            return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
        }
        if (bos) r->prompts[i][0] = (int32_t)s->o.bos;
        for (int k = bos; k < n; k++) r->prompts[i][k] = chat || text ? (int32_t)ids.v[k - bos] : q->prompts[i].ids[k];
        ds_ids_free(&ids);
        r->prompt_len[i] = n;
        r->prompt_tokens += n;
        for (int k = 0; k < n; k++)
            if (r->prompts[i][k] >= s->V)
                return ds_oai_fail(err, 400, "invalid_request_error", NULL, chat ? "messages" : "prompt",
                                   "token id %d of the prompt is outside the model's vocabulary of %d", r->prompts[i][k], s->V);
        if (!n) return ds_oai_fail(err, 400, "invalid_request_error", NULL, "prompt", "the prompt has no tokens");
        /* the default budget is what is left of the context (and of max_length when the checkpoint sets one) */
        int room = ctx - n;
        if (s->o.max_length > 0 && s->o.max_length - n < room) room = s->o.max_length - n;
        int want = q->has_max_tokens ? q->max_tokens : s->o.default_max_tokens < room ? s->o.default_max_tokens : room;
        if (room < 1 || want > room)
            return ds_oai_fail(err, 400, "invalid_request_error", "context_length_exceeded",
                               q->has_max_tokens ? (chat ? "max_completion_tokens" : "max_tokens") : (chat ? "messages" : "prompt"),
                               "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in "
                               "the %s, %d in the completion). Please reduce the length of the %s or completion.",
                               s->o.max_length > 0 && s->o.max_length < ctx ? s->o.max_length : ctx, n + (want > 0 ? want : 0),
                               n, chat ? "messages" : "prompt", want > 0 ? want : 0, chat ? "messages" : "prompt");
    }
    return 0;
}

/* A parsed request becomes sequences in the queue. Returns 0 or an HTTP status. */
static int enqueue(ds_server *s, request *r, ds_oai_error *err) {
    const ds_oai_request *q = &r->q;
    int rc = tokenize(s, r, err);
    if (rc) return rc;
    r->n_seq = r->n_prompts * q->n;
    r->seqs = calloc((size_t)r->n_seq, sizeof *r->seqs);
    if (!r->seqs) return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
    const int ctx = ds_infer_cache(s->e)->max_len;
    for (int i = 0; i < r->n_seq; i++) {
        seq *x = &r->seqs[i];
        const int p = i / q->n;
        x->r = r;
        x->index = i;
        x->prompt = r->prompts[p];
        x->n_prompt = r->prompt_len[p];
        x->stream = (uint64_t)(i % q->n);
        int room = ctx - x->n_prompt;
        if (s->o.max_length > 0 && s->o.max_length - x->n_prompt < room) room = s->o.max_length - x->n_prompt;
        x->max_new = q->has_max_tokens ? q->max_tokens : s->o.default_max_tokens < room ? s->o.default_max_tokens : room;
        if (ds_stop_init(&x->stop, q->stops, q->n_stops)) return ds_oai_fail(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    r->sampling = s->o.gen.sampling;
    if (q->has_temperature) r->sampling.temperature = q->temperature;
    if (q->has_top_p) r->sampling.top_p = q->top_p;
    if (q->has_top_k) r->sampling.top_k = q->top_k;
    pthread_mutex_lock(&s->mu);
    if (s->closed || s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return ds_oai_fail(err, 503, "server_error", NULL, NULL, "the server is shutting down");
    }
    const uint64_t no = s->next_request++;
    /* an unseeded request draws from the server's seed and its arrival number */
    r->sampling.seed = q->has_seed ? q->seed : s->o.gen.sampling.seed + 0x9e3779b97f4a7c15ull * (no + 1);
    snprintf(r->id, sizeof r->id, "%s-%llu", q->kind == DS_OAI_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)no);
    r->created = (long long)time(NULL);
    for (int i = 0; i < r->n_seq; i++) {
        seq *x = &r->seqs[i];
        if (s->pending_tail) s->pending_tail->next_pending = x;
        else s->pending_head = x;
        s->pending_tail = x;
    }
    r->refs += r->n_seq;
    s->st.requests++;
    s->st.prompt_tokens += r->prompt_tokens;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static enum MHD_Result completion(ds_server *s, struct MHD_Connection *c, ds_oai_kind kind, const body *b) {
    ds_oai_error err = {0};
    if (b->too_large) {
        ds_oai_fail(&err, 413, "invalid_request_error", NULL, NULL, "the request body is larger than %zu bytes",
                    s->o.max_body);
        return respond_error(s, c, &err);
    }
    if (kind == DS_OAI_CHAT && !s->o.chat) {
        ds_oai_fail(&err, 400, "invalid_request_error", NULL, "messages",
                    "this checkpoint has no usable chat template: use /v1/completions");
        return respond_error(s, c, &err);
    }
    request *r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    r->srv = s;
    r->refs = 1;
    r->conn = c;
    ds_jsonw_init(&r->ev);
    ds_oai_limits lim = {.model = s->o.model_name, .max_n = s->o.max_n, .vocab = s->V};
    int rc = ds_oai_parse(kind, b->buf ? b->buf : "", b->len, &lim, &r->q, &err);
    if (!rc) rc = enqueue(s, r, &err);
    if (rc) {
        pthread_mutex_lock(&s->mu);
        request_unref(s, r);
        pthread_mutex_unlock(&s->mu);
        return respond_error(s, c, &err);
    }
    if (r->q.stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, r, stream_free);
        if (!resp) {
            stream_free(r);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    pthread_mutex_lock(&s->mu);
    int gone = 0;
    while (r->n_done < r->n_seq && !s->failed && !(gone = wait_progress(s, r))) {
    }
    enum MHD_Result ret;
    if (gone) {
        cancel(s, r);
        ret = MHD_NO; /* nobody to answer: close the connection */
    } else if (s->failed || r->n_done < r->n_seq) {
        pthread_mutex_unlock(&s->mu);
        ds_oai_fail(&err, 500, "server_error", NULL, NULL, "generation failed: %s", s->failed ? "the engine stopped" : "?");
        ret = respond_error(s, c, &err);
        pthread_mutex_lock(&s->mu);
    } else {
        ds_jsonw w;
        ds_jsonw_init(&w);
        response_json(&w, s, r);
        pthread_mutex_unlock(&s->mu);
        ret = respond_json(c, MHD_HTTP_OK, &w);
        ds_jsonw_free(&w);
        pthread_mutex_lock(&s->mu);
    }
    request_unref(s, r);
    pthread_mutex_unlock(&s->mu);
    return ret;
}

static enum MHD_Result models(ds_server *s, struct MHD_Connection *c, const char *one) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    if (!one) {
        ds_jsonw_obj_begin(&w);
        ds_jsonw_kstr(&w, "object", "list");
        ds_jsonw_key(&w, "data");
        ds_jsonw_arr_begin(&w);
    }
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "id", s->o.model_name);
    ds_jsonw_kstr(&w, "object", "model");
    ds_jsonw_kint(&w, "created", (int64_t)s->started);
    ds_jsonw_kstr(&w, "owned_by", "libds");
    ds_jsonw_kint(&w, "max_model_len", ds_infer_cache(s->e)->max_len);
    ds_jsonw_obj_end(&w);
    if (!one) {
        ds_jsonw_arr_end(&w);
        ds_jsonw_obj_end(&w);
    }
    enum MHD_Result ret = respond_json(c, MHD_HTTP_OK, &w);
    ds_jsonw_free(&w);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    ds_server *s = cls;
    body *b = *con_cls;
    (void)version;
    if (!b) { /* headers only so far */
        if (!(b = calloc(1, sizeof *b))) return MHD_NO;
        *con_cls = b;
        pthread_mutex_lock(&s->mu);
        s->open_requests++;
        pthread_mutex_unlock(&s->mu);
        return MHD_YES;
    }
    if (*upload_size) {
        if (!b->too_large && b->len + *upload_size > s->o.max_body) b->too_large = 1;
        if (!b->too_large) {
            if (b->len + *upload_size + 1 > b->cap) {
                size_t cap = 2 * (b->len + *upload_size) + 1;
                char *m = realloc(b->buf, cap);
                if (!m) return MHD_NO;
                b->buf = m;
                b->cap = cap;
            }
            memcpy(b->buf + b->len, upload, *upload_size);
            b->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    ds_oai_error err = {0};
    if (!strcmp(url, "/health") || !strcmp(url, "/v1/health")) {
        if (!get) goto method;
        /* with the load: sequences decoding and waiting for a slot, and the totals so far */
        char t[256];
        pthread_mutex_lock(&s->mu);
        const int up = !s->stopping && !s->closed && !s->failed;
        int queued = 0;
        for (const seq *q = s->pending_head; q; q = q->next_pending) queued++;
        snprintf(t, sizeof t, "{\"status\":\"%s\",\"running\":%d,\"queued\":%d,\"requests\":%lld,\"cancelled\":%lld,"
                 "\"completion_tokens\":%lld}", up ? "ok" : "stopping", s->in_flight, queued, (long long)s->st.requests,
                 (long long)s->st.cancelled, (long long)s->st.completion_tokens);
        pthread_mutex_unlock(&s->mu);
        return respond(c, up ? 200 : 503, "application/json", t, strlen(t));
    }
    if (!strcmp(url, "/v1/models")) {
        if (!get) goto method;
        return models(s, c, NULL);
    }
    if (!strncmp(url, "/v1/models/", 11)) {
        if (!get) goto method;
        if (!strcmp(url + 11, s->o.model_name)) return models(s, c, url + 11);
        ds_oai_fail(&err, 404, "invalid_request_error", "model_not_found", "model", "The model '%.200s' does not exist",
                    url + 11);
        return respond_error(s, c, &err);
    }
    if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/v1/completions")) {
        if (!post) goto method;
        return completion(s, c, !strcmp(url, "/v1/completions") ? DS_OAI_COMPLETION : DS_OAI_CHAT, b);
    }
    ds_oai_fail(&err, 404, "invalid_request_error", "unknown_url", NULL, "Unknown request URL: %.16s %.300s", method, url);
    return respond_error(s, c, &err);
method:
    ds_oai_fail(&err, 405, "invalid_request_error", "method_not_allowed", NULL, "%.16s is not allowed on %.300s", method, url);
    return respond_error(s, c, &err);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    ds_server *s = cls;
    body *b = *con_cls;
    (void)c;
    (void)toe;
    if (b) {
        free(b->buf);
        free(b);
        *con_cls = NULL;
        pthread_mutex_lock(&s->mu);
        s->open_requests--;
        pthread_cond_broadcast(&s->progress);
        pthread_mutex_unlock(&s->mu);
    }
}

void ds_serve_model_name(const char *path, char *buf, size_t n) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    size_t b = len;
    while (b > 0 && path[b - 1] != '/') b--;
    size_t k = len - b;
    if (k > 12 && !strncmp(path + len - 12, ".safetensors", 12)) k -= 12;
    if (!k || !strcmp(path, "-")) snprintf(buf, n, "model");
    else snprintf(buf, n, "%.*s", (int)k, path + b);
}

int ds_serve_parse_addr(const char *text, ds_serve_opts *o) {
    const char *colon = strrchr(text, ':');
    const char *port = colon ? colon + 1 : text;
    size_t hl = colon ? (size_t)(colon - text) : 0;
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p < 0 || p > 65535)
        return ds_fail(DS_EUSAGE, "--serve %s: give HOST:PORT, :PORT or PORT with a port in [0, 65535]", text);
    if (hl >= sizeof o->host) return ds_fail(DS_EUSAGE, "--serve %s: host name too long", text);
    if (hl) {
        memcpy(o->host, text, hl);
        o->host[hl] = 0;
    } else {
        snprintf(o->host, sizeof o->host, "127.0.0.1");
    }
    o->port = (int)p;
    return DS_OK;
}

int ds_serve_start(ds_server **out, ds_infer *e, const ds_serve_opts *o) {
    *out = NULL;
    if (!o->tok) return ds_fail(DS_ERR, "--serve: the checkpoint has no tokenizer: a server takes text");
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = getaddrinfo(o->host, NULL, &hints, &ai);
    if (gai || !ai) return ds_fail(DS_EUSAGE, "--serve %s: not an IPv4 address or a name of one: %s", o->host, gai_strerror(gai));
    struct sockaddr_in sa;
    memcpy(&sa, ai->ai_addr, sizeof sa);
    freeaddrinfo(ai);
    sa.sin_port = htons((uint16_t)o->port);
    ds_server *s = calloc(1, sizeof *s);
    if (!s) return ds_fail(DS_ERR, "server: out of memory");
    s->o = *o;
    s->e = e;
    s->V = ds_infer_config(e)->vocab_size;
    s->running = calloc((size_t)o->gen.batch, sizeof *s->running);
    s->lsm = malloc((size_t)s->V * sizeof *s->lsm);
    s->started = time(NULL);
    s->next_eid = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->progress, NULL);
    if (!s->running || !s->lsm) {
        ds_serve_free(s);
        return ds_fail(DS_ERR, "server: out of memory");
    }
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handle, s,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, completed, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024, MHD_OPTION_END);
    if (!s->d) {
        char ip[64];
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
        ds_serve_free(s);
        return ds_fail(DS_ERR, "--serve: cannot listen on %s:%d (in use, or not an address of this machine)", ip, o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    *out = s;
    return DS_OK;
}

int ds_serve_port(const ds_server *s) { return s->port; }

int ds_serve_run(ds_server *s, ds_serve_stats *st) {
    ds_gen_io io = {.src = s, .next = src_next, .seq_opts = src_seq_opts, .sink = s, .on_token = sink_token,
                    .on_done = sink_done};
    ds_gen_stats gst;
    int rc = ds_generate(s->e, &s->o.gen, &io, &gst);
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    if (rc) s->failed = 1; /* waiting clients get a 500 or a cut stream */
    pthread_cond_broadcast(&s->progress);
    if (st) {
        *st = s->st;
        st->gen = gst;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void ds_serve_stop(ds_server *s, int hard) {
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    if (hard) s->hard = 1;
    pthread_cond_broadcast(&s->work);
    pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->mu);
}

void ds_serve_free(ds_server *s) {
    if (!s) return;
    if (s->d) {
        /* every request has its result by now, but a connection thread may still be writing it: stopping the
         * daemon shuts the sockets, and a client would get an empty reply (seen under ASan). Wait until MHD
         * reports each request completed, for at most 5 s (a client that stopped reading must not hold us). */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        pthread_mutex_lock(&s->mu);
        while (s->open_requests > 0 && pthread_cond_timedwait(&s->progress, &s->mu, &until) == 0) {
        }
        pthread_mutex_unlock(&s->mu);
        MHD_stop_daemon(s->d); /* joins the connection threads */
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->progress);
    free(s->running);
    free(s->lsm);
    free(s);
}

/* Signals: the handler only writes the signal number into a pipe (async-signal-safe); a thread reads it
 * and stops the server. A handler rather than sigwait: the OpenMP threads that already exist when the
 * server starts keep the signals unblocked, so any thread may be the one the kernel interrupts. */
static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
    unsigned char b = (unsigned char)sig;
    int saved = errno;
    if (write(sig_pipe[1], &b, 1) < 0) { /* nothing to do: the pipe holds plenty */
    }
    errno = saved;
}

static void *sig_thread(void *arg) {
    ds_server *s = arg;
    unsigned char b;
    for (int n = 0; read(sig_pipe[0], &b, 1) == 1; n++) {
        if (!b) break; /* the server has stopped: the thread ends */
        ds_info("signal %d: %s", b, n ? "ending the requests in flight" : "finishing the requests in flight, then stopping");
        ds_serve_stop(s, n > 0);
    }
    return NULL;
}

int ds_serve_until_signal(ds_infer *e, const ds_serve_opts *o, void (*ready)(void *ctx, int port), void *ctx,
                          ds_serve_stats *st) {
    if (pipe(sig_pipe)) return ds_fail(DS_ERR, "server: pipe: %s", strerror(errno));
    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term, ign = {.sa_handler = SIG_IGN}, old_pipe;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGPIPE, &ign, &old_pipe); /* a client gone mid-write is an error return, not death */
    ds_server *s = NULL;
    int rc = ds_serve_start(&s, e, o);
    pthread_t t;
    if (!rc && pthread_create(&t, NULL, sig_thread, s)) rc = ds_fail(DS_ERR, "server: cannot start a thread");
    else if (!rc) {
        if (ready) ready(ctx, ds_serve_port(s));
        rc = ds_serve_run(s, st);
        unsigned char zero = 0;
        if (write(sig_pipe[1], &zero, 1) != 1) pthread_cancel(t);
        pthread_join(t, NULL);
    }
    ds_serve_free(s);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    sig_pipe[0] = sig_pipe[1] = -1;
    return rc;
}
