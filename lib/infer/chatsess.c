#include "infer/chatsess.h"

#include "core/err.h"
#include "core/log.h"
#include "infer/stop.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    ds_chat_role role;
    char *text;
    size_t len;
} msg;

struct ds_chat_session {
    ds_infer *e;
    ds_chat_opts o;
    int V, ctx;
    msg *msgs;
    int n_msgs, cap_msgs;
    int turns;        /* user turns so far (the sampling stream of the next reply) */
    int32_t *cached;  /* [ctx]: the token at each position the cache of slot 0 holds */
    int n_cached;
    int32_t *tok, *sl, *pos; /* [prefill_chunk] rows of one forward */
    float *logits;           /* [V] */
    ds_sampler sampler;
    ds_dist p;
    ds_ids ids;
    ds_stop stop;
};

void ds_chat_session_free(ds_chat_session *s) {
    if (!s) return;
    ds_chat_session_reset(s);
    free(s->msgs);
    free(s->cached);
    free(s->tok);
    free(s->sl);
    free(s->pos);
    free(s->logits);
    ds_sampler_free(&s->sampler);
    ds_dist_free(&s->p);
    ds_ids_free(&s->ids);
    ds_stop_free(&s->stop);
    free(s);
}

int ds_chat_session_create(ds_chat_session **out, ds_infer *e, const ds_chat_opts *o) {
    *out = NULL;
    if (!o->tok || !o->tpl) return ds_fail(DS_EUSAGE, "chat: needs a tokenizer and a chat template");
    if (o->max_new < 1) return ds_fail(DS_EUSAGE, "--max-new %d: must be at least 1", o->max_new);
    if (o->prefill_chunk < 1) return ds_fail(DS_EUSAGE, "prefill chunk %d: must be positive", o->prefill_chunk);
    DS_TRY(ds_sampling_check(&o->sampling));
    ds_chat_session *s = calloc(1, sizeof *s);
    if (!s) return ds_fail(DS_ERR, "chat: out of memory");
    s->e = e;
    s->o = *o;
    s->V = ds_infer_config(e)->vocab_size;
    s->ctx = ds_infer_cache(e)->max_len;
    const size_t R = (size_t)o->prefill_chunk;
    s->cached = malloc((size_t)s->ctx * sizeof(int32_t));
    s->tok = malloc(R * sizeof(int32_t));
    s->sl = calloc(R, sizeof(int32_t)); /* slot 0 throughout */
    s->pos = malloc(R * sizeof(int32_t));
    s->logits = malloc((size_t)s->V * sizeof(float));
    if (!s->cached || !s->tok || !s->sl || !s->pos || !s->logits || ds_sampler_init(&s->sampler, s->V) ||
        ds_dist_init(&s->p, s->V) || ds_stop_init(&s->stop, o->stops, o->n_stops)) {
        ds_chat_session_free(s);
        return ds_fail(DS_ERR, "chat: out of memory");
    }
    ds_infer_cache(e)->len[0] = 0;
    *out = s;
    return DS_OK;
}

void ds_chat_session_reset(ds_chat_session *s) {
    for (int i = 0; i < s->n_msgs; i++) free(s->msgs[i].text);
    s->n_msgs = 0;
    s->turns = 0;
    s->n_cached = 0;
    ds_infer_cache(s->e)->len[0] = 0;
}

int ds_chat_session_turns(const ds_chat_session *s) { return s->turns; }

static int push_msg(ds_chat_session *s, ds_chat_role role, const char *text, size_t len) {
    if (s->n_msgs == s->cap_msgs) {
        int cap = s->cap_msgs ? 2 * s->cap_msgs : 16;
        msg *m = realloc(s->msgs, (size_t)cap * sizeof *m);
        if (!m) return ds_fail(DS_ERR, "chat: out of memory");
        s->msgs = m;
        s->cap_msgs = cap;
    }
    char *t = malloc(len + 1);
    if (!t) return ds_fail(DS_ERR, "chat: out of memory");
    memcpy(t, text, len);
    t[len] = 0;
    s->msgs[s->n_msgs++] = (msg){role, t, len};
    return DS_OK;
}

static void drop_msgs(ds_chat_session *s, int first, int n) {
    for (int i = first; i < first + n; i++) free(s->msgs[i].text);
    memmove(s->msgs + first, s->msgs + first + n, sizeof *s->msgs * (size_t)(s->n_msgs - first - n));
    s->n_msgs -= n;
}

/* The whole conversation with the generation prompt, as token ids in s->ids. */
static int render(ds_chat_session *s) {
    ds_chat_msg m[s->n_msgs];
    for (int i = 0; i < s->n_msgs; i++) m[i] = (ds_chat_msg){s->msgs[i].role, s->msgs[i].text, s->msgs[i].len};
    ds_chat_rendered r;
    DS_TRY(ds_chat_render(s->o.tpl, m, s->n_msgs, 1, &r));
    s->ids.n = 0;
    int rc = ds_chat_encode(s->o.tok, &r, &s->ids, NULL);
    ds_chat_rendered_free(&r);
    return rc;
}

/* Render, dropping the oldest exchange (a user message and the replies up to the next user message)
 * while the prompt and a full reply do not fit and drop_oldest allows it. */
static int render_fitting(ds_chat_session *s, ds_chat_turn_stats *st) {
    for (;;) {
        DS_TRY(render(s));
        const int n = (int)s->ids.n, room = s->ctx - n;
        if (n < s->ctx && room >= s->o.max_new) return DS_OK;
        int first = 0; /* the oldest non-system message; never the turn just asked */
        while (first < s->n_msgs && s->msgs[first].role == DS_ROLE_SYSTEM) first++;
        int end = first + 1;
        while (end < s->n_msgs && s->msgs[end].role != DS_ROLE_USER) end++;
        if (!s->o.drop_oldest || end >= s->n_msgs) {
            st->context_full = 1;
            snprintf(st->message, sizeof st->message,
                     "context full: the conversation is %s%d tokens and a reply up to %d more, over the context of %d: "
                     "/reset starts over%s", n > s->ctx ? "over " : "", n > s->ctx ? s->ctx : n, s->o.max_new, s->ctx,
                     s->o.drop_oldest ? "" : ", --chat-drop-oldest drops the oldest turns");
            return DS_OK;
        }
        drop_msgs(s, first, end - first);
        st->dropped += end - first;
    }
}

static int forward_rows(ds_chat_session *s, int n, ds_attn_form form, int want_logits) {
    const int32_t last = n - 1;
    ds_infer_step step = {.n = n, .tok = s->tok, .slot = s->sl, .pos = s->pos, .form = form,
                          .n_out = want_logits ? 1 : 0, .out_rows = &last, .logits = s->logits};
    return ds_infer_forward(s->e, &step);
}

static int stopped(const ds_chat_session *s) { return s->o.interrupt && *s->o.interrupt; }

/* Prefill ids[from..n) after the cached prefix; leaves the last token's logits in s->logits. */
static int prefill(ds_chat_session *s, int from, int n, ds_chat_turn_stats *st) {
    ds_kvcache *c = ds_infer_cache(s->e);
    const ds_attn_form form = from == 0 ? s->o.prefill_form : DS_ATTN_ABSORBED; /* naive needs position 0 */
    double t0 = ds_now();
    for (int at = from; at < n;) {
        if (stopped(s)) break;
        int k = n - at < s->o.prefill_chunk ? n - at : s->o.prefill_chunk;
        for (int j = 0; j < k; j++) {
            s->tok[j] = (int32_t)s->ids.v[at + j];
            s->pos[j] = at + j;
        }
        /* a later chunk starts after position 0: absorbed (both forms give the same cache) */
        DS_TRY(forward_rows(s, k, at == 0 ? form : DS_ATTN_ABSORBED, at + k == n));
        memcpy(s->cached + at, s->tok, sizeof(int32_t) * (size_t)k);
        at += k;
        s->n_cached = c->len[0] = at;
    }
    st->prefill_s = ds_now() - t0;
    return DS_OK;
}

static int emit_text(ds_chat_session *s, int final, int (*on_text)(void *, const char *, size_t), void *ctx) {
    const char *p;
    size_t n = ds_stop_take(&s->stop, final, &p);
    return n && on_text ? on_text(ctx, p, n) : DS_OK;
}

int ds_chat_session_turn(ds_chat_session *s, const char *user, size_t len,
                         int (*on_text)(void *ctx, const char *bytes, size_t n), void *ctx, ds_chat_turn_stats *st) {
    memset(st, 0, sizeof *st);
    DS_TRY(push_msg(s, DS_ROLE_USER, user, len));
    int rc = render_fitting(s, st);
    if (rc || st->context_full) {
        drop_msgs(s, s->n_msgs - 1, 1);
        return rc;
    }
    const int n = (int)s->ids.n;
    int p = 0; /* the longest prefix of the new rendering whose latents the cache holds */
    while (p < s->n_cached && p < n && s->cached[p] == (int32_t)s->ids.v[p]) p++;
    if (p == n) p--; /* the last prompt token is run again for its logits */
    s->n_cached = ds_infer_cache(s->e)->len[0] = p;
    st->prompt_tokens = n;
    st->reused = p;
    st->prefilled = n - p;
    const uint64_t seq = (uint64_t)s->turns++;
    DS_TRY(prefill(s, p, n, st));
    ds_stop_reset(&s->stop);
    const int budget = s->o.max_new < s->ctx - n ? s->o.max_new : s->ctx - n;
    double t0 = ds_now();
    while (!stopped(s) && s->n_cached == n + st->new_tokens) {
        int32_t t;
        DS_TRY(ds_sample_next(&s->sampler, s->logits, &s->o.sampling, seq, (uint64_t)st->new_tokens, &s->p, &t));
        st->new_tokens++;
        if (ds_eos_ids_has(&s->o.eos, t)) {
            st->finish = DS_FINISH_EOS;
            break;
        }
        size_t nb;
        const uint8_t *b = ds_tok_token_bytes(s->o.tok, (uint32_t)t, &nb);
        int hit = ds_stop_push(&s->stop, b ? (const char *)b : "", b ? nb : 0);
        if (hit < 0) return DS_ERR;
        DS_TRY(emit_text(s, 0, on_text, ctx));
        if (hit) {
            st->finish = DS_FINISH_STOP;
            break;
        }
        if (st->new_tokens >= budget) {
            st->finish = DS_FINISH_LENGTH;
            break;
        }
        s->tok[0] = t;
        s->pos[0] = s->n_cached;
        DS_TRY(forward_rows(s, 1, DS_ATTN_ABSORBED, 1));
        s->cached[s->n_cached] = t;
        s->n_cached = ++ds_infer_cache(s->e)->len[0];
    }
    st->decode_s = ds_now() - t0;
    st->interrupted = !st->finish;
    DS_TRY(emit_text(s, 1, on_text, ctx));
    /* the reply as shown (cut at a stop string) is the assistant's turn */
    return push_msg(s, DS_ROLE_ASSISTANT, s->stop.text ? s->stop.text : "", s->stop.len);
}

/* ---- the terminal loop ---------------------------------------------------------------------------- */

typedef struct {
    int fd;
    char *buf;
    size_t len, cap; /* bytes read, not yet returned as lines */
    int eof;
} line_reader;

/* 1: a line (without its newline) in *line and *n, valid until the next call; 0: end of input; -1: a
 * read interrupted by a signal (nothing lost); -2: out of memory (message set). */
/* Wait until fd is readable, or return -1 when SIGINT came: while SIGINT is blocked, check the flag,
 * then unblock it only inside ppoll, so a Ctrl-C landing just before the wait cannot be missed (a
 * plain read would block with the flag already set). */
static int wait_readable(int fd, volatile sig_atomic_t *intr) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &old);
    int rc = 0;
    if (intr && *intr) rc = -1;
    else {
        sigset_t during = old;
        sigdelset(&during, SIGINT);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (ppoll(&p, 1, NULL, &during) < 0 && errno == EINTR) rc = -1;
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static int read_line(line_reader *r, char **line, size_t *n, size_t *consumed, volatile sig_atomic_t *intr) {
    for (;;) {
        char *nl = r->len ? memchr(r->buf, '\n', r->len) : NULL;
        if (nl || (r->eof && r->len)) {
            *n = nl ? (size_t)(nl - r->buf) : r->len;
            *consumed = nl ? *n + 1 : *n;
            *line = r->buf;
            return 1;
        }
        if (r->eof) return 0;
        if (r->cap - r->len < 4096) {
            size_t cap = r->cap ? 2 * r->cap : 8192;
            char *b = realloc(r->buf, cap);
            if (!b) return ds_fail(DS_ERR, "chat: out of memory"), -2;
            r->buf = b;
            r->cap = cap;
        }
        if (wait_readable(r->fd, intr)) return -1;
        ssize_t got = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (got < 0 && errno == EINTR) return -1;
        if (got <= 0) r->eof = 1;
        else r->len += (size_t)got;
    }
}

static void consume(line_reader *r, size_t k) {
    memmove(r->buf, r->buf + k, r->len - k);
    r->len -= k;
}

static int write_out(void *ctx, const char *bytes, size_t n) {
    FILE *out = ctx;
    if (fwrite(bytes, 1, n, out) != n || fflush(out)) return ds_fail(DS_ERR, "write failed: stdout");
    return DS_OK;
}

static int say(FILE *out, const char *text) { return write_out(out, text, strlen(text)); }

static const char help[] = "Type a message and press Enter. Commands: /reset forgets the conversation, /exit quits "
                           "(or Ctrl-D); Ctrl-C stops a reply, twice at the prompt quits.\n";

int ds_chat_repl(ds_chat_session *s, int in_fd, FILE *out, const char *prompt) {
    line_reader r = {.fd = in_fd};
    volatile sig_atomic_t *intr = s->o.interrupt;
    int rc = DS_OK, interrupts = 0; /* Ctrl-C at the prompt in a row */
    while (!rc) {
        if ((rc = say(out, prompt))) break;
        char *line;
        size_t n, used;
        int got;
        while ((got = read_line(&r, &line, &n, &used, intr)) == -1 && !(intr && *intr)) {
        }
        if (got == -2) {
            rc = DS_ERR;
            break;
        }
        if (got < 0) { /* Ctrl-C at the prompt */
            *intr = 0;
            if (++interrupts >= 2) {
                rc = say(out, "\n");
                break;
            }
            rc = say(out, "\n(Ctrl-C again, Ctrl-D or /exit quits)\n");
            continue;
        }
        if (!got) { /* end of input (Ctrl-D), or a read error */
            rc = say(out, "\n");
            break;
        }
        interrupts = 0;
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
        if (!n) {
            consume(&r, used);
            continue;
        }
        if (line[0] == '/') {
            if ((n == 5 && !memcmp(line, "/exit", 5)) || (n == 5 && !memcmp(line, "/quit", 5))) break;
            if (n == 6 && !memcmp(line, "/reset", 6)) {
                ds_chat_session_reset(s);
                rc = say(out, "(conversation cleared)\n");
            } else if (n == 5 && !memcmp(line, "/help", 5)) {
                rc = say(out, help);
            } else {
                rc = say(out, "(unknown command: /reset, /exit and /help are known)\n");
            }
            consume(&r, used);
            continue;
        }
        ds_chat_turn_stats st;
        rc = ds_chat_session_turn(s, line, n, write_out, out, &st);
        consume(&r, used);
        if (rc) break;
        if (st.context_full) {
            ds_warn("%s", st.message);
            continue;
        }
        if (st.interrupted) {
            if (intr) *intr = 0;
            rc = say(out, " [stopped]");
        }
        if (!rc) rc = say(out, "\n");
        if (st.dropped) ds_warn("context: dropped the %d oldest messages", st.dropped);
        double dc = st.decode_s > 0 && st.new_tokens > 1 ? (st.new_tokens - 1) / st.decode_s : 0;
        ds_verbose("chat: turn %d: %d prompt tokens, %d reused from the cache, %d prefilled in %.3f s; %d new tokens "
                   "(%s), %.1f tok/s", ds_chat_session_turns(s), st.prompt_tokens, st.reused, st.prefilled,
                   st.prefill_s, st.new_tokens, st.interrupted ? "stopped" : ds_finish_name(st.finish), dc);
    }
    free(r.buf);
    return rc;
}

int ds_chat_terminal(ds_model *m, const ds_chat_opts *o, int ctx, const ds_ops *linear_ops, int in_fd, FILE *out) {
    const ds_config *c = ds_model_config(m);
    const int n_bias = c->num_hidden_layers + c->num_nextn_predict_layers;
    const float **bias = malloc(sizeof *bias * (size_t)(n_bias > 0 ? n_bias : 1));
    if (!bias) return ds_fail(DS_ERR, "chat: out of memory");
    ds_infer_model im;
    ds_infer_model_of(m, &im, bias);
    ds_infer_opts io = {.max_tokens = o->prefill_chunk, .slots = 1, .max_len = ctx, .max_out = 1, .serial_flops = 5e7,
                        .linear_ops = linear_ops};
    ds_infer *e = NULL;
    ds_chat_session *s = NULL;
    int rc = ds_infer_create(&e, &im, ds_model_ops(m), &io);
    if (!rc) rc = ds_chat_session_create(&s, e, o);
    if (!rc) rc = ds_chat_repl(s, in_fd, out, "> ");
    ds_chat_session_free(s);
    ds_infer_free(e);
    free(bias);
    return rc;
}
