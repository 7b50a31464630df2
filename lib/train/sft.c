#include "train/sft.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "core/rng.h"
#include "io/jsonl.h"
#include "io/kind.h"
#include "tok/train.h"
#include "train/packed.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Philox streams of the SFT source (distinct from the packed source's) */
enum { STREAM_VAL = 0x5f7001, STREAM_EPOCH = 0x5f7100 };

/* ---- samples ---- */

void ds_sft_set_free(ds_sft_set *s) {
    free(s->off), free(s->tokens), free(s->mask), free(s->line);
    memset(s, 0, sizeof *s);
}

int ds_sft_set_add(ds_sft_set *s, const int32_t *tokens, const uint8_t *mask, int64_t n, int64_t line) {
    if (n < 2) return ds_fail(DS_ERR, "sft: a sample needs at least 2 tokens, got %lld", (long long)n);
    if (s->n + 1 >= s->cap) {
        int64_t cap = s->cap ? 2 * s->cap : 256;
        int64_t *off = realloc(s->off, (size_t)(cap + 1) * sizeof *off);
        if (off) s->off = off;
        int64_t *ln = realloc(s->line, (size_t)cap * sizeof *ln);
        if (ln) s->line = ln;
        if (!off || !ln) return ds_fail(DS_ERR, "out of memory: %lld SFT samples", (long long)cap);
        if (s->cap == 0) s->off[0] = 0;
        s->cap = cap;
    }
    int64_t used = s->off[s->n];
    if (used + n > s->tok_cap) {
        int64_t cap = s->tok_cap ? s->tok_cap : 4096;
        while (cap < used + n) cap *= 2;
        int32_t *t = realloc(s->tokens, (size_t)cap * sizeof *t);
        if (t) s->tokens = t;
        uint8_t *m = realloc(s->mask, (size_t)cap);
        if (m) s->mask = m;
        if (!t || !m) return ds_fail(DS_ERR, "out of memory: %lld SFT tokens", (long long)cap);
        s->tok_cap = cap;
    }
    memcpy(s->tokens + used, tokens, (size_t)n * sizeof *tokens);
    memcpy(s->mask + used, mask, (size_t)n);
    /* the first token is never a target: nothing comes before it */
    s->mask[used] = 0;
    for (int64_t i = 1; i < n; i++) s->n_trained += s->mask[used + i] != 0;
    s->line[s->n] = line;
    s->off[++s->n] = used + n;
    return 0;
}

/* ---- checking and loading conversations ---- */

int ds_sft_add_conversation(ds_sft_set *s, const ds_chat_msg *msgs, int n_msgs, const ds_sft_load_opts *o, int64_t line) {
    int assistant = 0;
    for (int i = 0; i < n_msgs; i++) assistant |= msgs[i].role == DS_ROLE_ASSISTANT;
    if (!assistant) return ds_fail(DS_ERR, "no assistant turn (nothing to train on)");
    ds_chat_rendered rd;
    DS_TRY(ds_chat_render(o->tmpl, msgs, n_msgs, 0, &rd));
    ds_ids ids = {0};
    ds_bytes train = {0};
    int rc = ds_chat_encode(o->tok, &rd, &ids, &train);
    ds_chat_rendered_free(&rd);
    int32_t *tok = NULL;
    if (!rc && ids.n - 1 > (size_t)o->seq_len)
        rc = ds_fail(DS_ERR, "%zu tokens: longer than a row of %d (a sample takes its length - 1)", ids.n, o->seq_len);
    if (!rc && !(tok = malloc(ids.n * sizeof *tok))) rc = ds_fail(DS_ERR, "out of memory");
    for (size_t i = 0; !rc && i < ids.n; i++) {
        if (o->vocab > 0 && ids.v[i] >= (uint32_t)o->vocab)
            rc = ds_fail(DS_ERR, "token id %u outside the model's vocabulary of %d", ids.v[i], o->vocab);
        else tok[i] = (int32_t)ids.v[i];
    }
    if (!rc) rc = ds_sft_set_add(s, tok, train.v, (int64_t)ids.n, line);
    free(tok);
    ds_ids_free(&ids);
    ds_bytes_free(&train);
    return rc;
}

int ds_sft_load(ds_sft_set *s, const char *path, const ds_sft_load_opts *o) {
    ds_jsonl *r;
    DS_TRY(ds_jsonl_open(&r, path));
    int64_t warned = 0;
    ds_chat_msg *msgs = NULL;
    int cap = 0, rc = 0;
    long prev_line = 0;
    for (;;) {
        ds_example ex;
        /* record shape (JSON object, "messages", roles, string content, an assistant turn): io/jsonl.h */
        int bad = ds_jsonl_next_example(r, &ex, DS_EX_SFT);
        if (!bad && !ex.obj) break;
        /* an error that consumed no line is the reader's (I/O), not a record's */
        const int record = ds_jsonl_line(r) > prev_line;
        prev_line = ds_jsonl_line(r);
        if (record) s->lines++;
        if (!bad) {
            if (ex.n_messages > cap) {
                ds_chat_msg *m = realloc(msgs, (size_t)ex.n_messages * sizeof *m);
                if (!m) {
                    ds_example_free(&ex);
                    rc = ds_fail(DS_ERR, "out of memory");
                    break;
                }
                msgs = m, cap = ex.n_messages;
            }
            for (int i = 0; !bad && i < ex.n_messages; i++) {
                const ds_jsonl_msg *m = &ex.messages[i];
                if (m->len == 0) bad = ds_jsonl_error(r, "messages[%d].content: empty", i);
                msgs[i] = (ds_chat_msg){(ds_chat_role)m->role, m->content, m->len};
            }
            if (!bad && ds_sft_add_conversation(s, msgs, ex.n_messages, o, ex.line)) {
                char why[600];
                snprintf(why, sizeof why, "%s", ds_errmsg());
                bad = ds_jsonl_error(r, "%s", why);
            }
            ds_example_free(&ex);
        }
        if (!bad) continue;
        if (!record || o->on_bad == DS_SFT_REJECT_BAD) {
            rc = bad;
            break;
        }
        s->bad++;
        if (o->max_warnings < 0 || warned < o->max_warnings) ds_warn("%s (skipped)", ds_errmsg()), warned++;
        ds_err_clear();
    }
    if (!rc && s->bad > warned)
        ds_warn("%lld more bad conversations skipped: %s", (long long)(s->bad - warned), ds_jsonl_where(r));
    free(msgs);
    ds_jsonl_close(r);
    return rc;
}

/* ---- packing ---- */

void ds_sft_plan_free(ds_sft_plan *p) {
    free(p->row_off), free(p->idx);
    memset(p, 0, sizeof *p);
}

int ds_sft_plan_build(ds_sft_plan *p, const ds_sft_set *s, const int64_t *order, int64_t n, int seq_len, int window) {
    memset(p, 0, sizeof *p);
    if (window < 1) window = 1;
    /* open rows are linked lists over the positions k of `order` (next[k]); they are emitted oldest first */
    int64_t *next = malloc((size_t)(n ? n : 1) * sizeof *next);
    int64_t *head = malloc((size_t)window * sizeof *head), *tail = malloc((size_t)window * sizeof *tail);
    int *used = malloc((size_t)window * sizeof *used);
    p->row_off = malloc((size_t)(n + 1) * sizeof *p->row_off);
    p->idx = malloc((size_t)(n ? n : 1) * sizeof *p->idx);
    int rc = 0;
    if (!next || !head || !tail || !used || !p->row_off || !p->idx) rc = ds_fail(DS_ERR, "out of memory: packing %lld samples", (long long)n);
    int open = 0;
    int64_t out = 0;
    p->row_off[0] = 0;
#define EMIT_OLDEST()                                                                                             \
    do {                                                                                                          \
        for (int64_t k_ = head[0]; k_ >= 0; k_ = next[k_]) p->idx[out++] = order[k_];                             \
        p->row_off[++p->n_rows] = out;                                                                            \
        p->slots += used[0];                                                                                      \
        memmove(head, head + 1, (size_t)(open - 1) * sizeof *head);                                               \
        memmove(tail, tail + 1, (size_t)(open - 1) * sizeof *tail);                                               \
        memmove(used, used + 1, (size_t)(open - 1) * sizeof *used);                                               \
        open--;                                                                                                   \
    } while (0)
    for (int64_t k = 0; !rc && k < n; k++) {
        int64_t need = ds_sft_len(s, order[k]) - 1;
        if (need > seq_len) {
            rc = ds_fail(DS_ERR, "sft: sample %lld has %lld tokens, more than a row of %d + 1", (long long)order[k],
                         (long long)(need + 1), seq_len);
            break;
        }
        next[k] = -1;
        int r = 0;
        while (r < open && used[r] + need > seq_len) r++;
        if (r == open) {
            if (open == window) EMIT_OLDEST();
            r = open++;
            head[r] = tail[r] = k;
            used[r] = (int)need;
            continue;
        }
        next[tail[r]] = k;
        tail[r] = k;
        used[r] += (int)need;
    }
    while (!rc && open > 0) EMIT_OLDEST();
#undef EMIT_OLDEST
    free(next), free(head), free(tail), free(used);
    if (rc) ds_sft_plan_free(p);
    return rc;
}

int ds_sft_fill_row(const ds_sft_set *s, const ds_sft_plan *p, int64_t r, int seq_len, int32_t pad_id, int32_t *tokens,
                    int32_t *targets, int32_t *pos, int32_t *seg) {
    int slot = 0, id = 0;
    for (int64_t j = p->row_off[r]; j < p->row_off[r + 1]; j++, id++) {
        const int64_t i = p->idx[j], o = s->off[i], n = ds_sft_len(s, i);
        const int32_t *x = s->tokens + o;
        const uint8_t *m = s->mask + o;
        for (int64_t t = 0; t + 1 < n; t++, slot++) {
            tokens[slot] = x[t];
            targets[slot] = m[t + 1] ? x[t + 1] : -1;
            pos[slot] = (int32_t)t;
            seg[slot] = id;
        }
    }
    const int len = slot;
    for (int t = 0; slot < seq_len; slot++, t++) {
        tokens[slot] = pad_id;
        targets[slot] = -1;
        pos[slot] = t;
        seg[slot] = id;
    }
    return len;
}

/* ---- the data source ---- */

typedef struct {
    const ds_sft_set *set;
    ds_sft_source_opts o;
    int64_t *samples, n; /* the samples this source draws from (indices into set) */
    int is_val;
    int64_t epoch, row;  /* where the next row comes from */
    int64_t plan_epoch;  /* epoch `plan` was built for (-1: none) */
    ds_sft_plan plan;
    int64_t *order;      /* [n] scratch */
} sft_src;

static int build_plan(sft_src *q, ds_sft_plan *p, int64_t epoch) {
    for (int64_t k = 0; k < q->n; k++)
        q->order[k] = q->samples[q->is_val ? k : (int64_t)ds_keyed_permute((uint64_t)k, (uint64_t)q->n, q->o.seed, STREAM_EPOCH + (uint64_t)epoch)];
    return ds_sft_plan_build(p, q->set, q->order, q->n, q->o.seq_len, q->o.window);
}

static int ensure_plan(sft_src *q) {
    if (q->plan_epoch == q->epoch) return 0;
    ds_sft_plan_free(&q->plan);
    q->plan_epoch = -1;
    DS_TRY(build_plan(q, &q->plan, q->epoch));
    q->plan_epoch = q->epoch;
    return 0;
}

static int sft_next(ds_data_source *src, ds_batch_buf *buf, int rows) {
    sft_src *q = src->impl;
    if (buf->seq_len != q->o.seq_len)
        return ds_fail(DS_ERR, "sft source: rows of %d tokens asked of a source packed for %d", buf->seq_len, q->o.seq_len);
    if (buf->rows + rows > buf->cap_rows) return ds_fail(DS_ERR, "sft source: batch buffer too small");
    buf->has_pos = buf->has_seg = buf->has_len = 1;
    for (int k = 0; k < rows; k++) {
        DS_TRY(ensure_plan(q));
        if (q->row >= q->plan.n_rows) {
            if (q->is_val) return ds_fail(DS_ERR, "sft source: the validation set has only %lld rows", (long long)q->plan.n_rows);
            q->epoch++, q->row = 0;
            k--;
            continue;
        }
        size_t off = (size_t)buf->rows * buf->seq_len;
        buf->len[buf->rows] = ds_sft_fill_row(q->set, &q->plan, q->row, q->o.seq_len, q->o.pad_id, buf->tokens + off,
                                              buf->targets + off, buf->pos + off, buf->seg + off);
        buf->rows++;
        q->row++;
    }
    return 0;
}

static int64_t sft_rows_per_pass(const ds_data_source *src) {
    sft_src *q = src->impl;
    if (!q->is_val) return -1;
    return ensure_plan(q) ? 0 : q->plan.n_rows;
}

static void sft_rewind(ds_data_source *src) {
    sft_src *q = src->impl;
    q->epoch = 0, q->row = 0;
}

static void sft_state_write(const ds_data_source *src, ds_jsonw *w) {
    const sft_src *q = src->impl;
    ds_jsonw_obj_begin(w);
    ds_jsonw_kstr(w, "kind", "sft");
    ds_jsonw_kint(w, "epoch", q->epoch);
    ds_jsonw_kint(w, "row", q->row);
    ds_jsonw_kint(w, "samples", q->n);
    ds_jsonw_kint(w, "seq_len", q->o.seq_len);
    ds_jsonw_obj_end(w);
}

static int sft_state_read(ds_data_source *src, const void *json, const char *where) {
    sft_src *q = src->impl;
    const json_t *o = json;
    json_t *ep = json_object_get(o, "epoch"), *row = json_object_get(o, "row"), *ns = json_object_get(o, "samples"),
           *sl = json_object_get(o, "seq_len");
    if (!json_is_integer(ep) || !json_is_integer(row) || json_integer_value(ep) < 0 || json_integer_value(row) < 0)
        return ds_fail(DS_ERR, "trainer state: data: SFT position (epoch, row) missing or negative: %s", where);
    if (json_integer_value(ns) != q->n || json_integer_value(sl) != q->o.seq_len)
        return ds_fail(DS_ERR,
                       "trainer state: data: saved for %lld training conversations at --seq-len %lld, now %lld at %d "
                       "(resume needs the same data, --seq-len, --val-frac and --seed): %s",
                       (long long)json_integer_value(ns), (long long)json_integer_value(sl), (long long)q->n, q->o.seq_len, where);
    q->epoch = json_integer_value(ep);
    q->row = json_integer_value(row);
    DS_TRY(ensure_plan(q));
    if (q->row > q->plan.n_rows)
        return ds_fail(DS_ERR, "trainer state: data: row %lld beyond the %lld rows of epoch %lld: %s", (long long)q->row,
                       (long long)q->plan.n_rows, (long long)q->epoch, where);
    return 0;
}

static void sft_free(ds_data_source *src) {
    sft_src *q = src->impl;
    if (q) {
        ds_sft_plan_free(&q->plan);
        free(q->samples), free(q->order);
        free(q);
    }
    free(src);
}

static int make_source(ds_data_source **out, const ds_sft_set *set, const ds_sft_source_opts *o, int64_t *samples, int64_t n,
                       int is_val) {
    ds_data_source *src = calloc(1, sizeof *src);
    sft_src *q = calloc(1, sizeof *q);
    int64_t *order = malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!src || !q || !order) {
        free(src), free(q), free(order), free(samples);
        return ds_fail(DS_ERR, "out of memory: SFT source");
    }
    q->set = set, q->o = *o, q->samples = samples, q->n = n, q->is_val = is_val, q->order = order, q->plan_epoch = -1;
    *src = (ds_data_source){.kind = "sft", .seq_len = o->seq_len, .next = sft_next, .rows_per_pass = sft_rows_per_pass,
                            .rewind = sft_rewind, .state_write = sft_state_write, .state_read = sft_state_read,
                            .free = sft_free, .impl = q};
    *out = src;
    return 0;
}

int ds_sft_source_create(ds_data_source **train, ds_data_source **val, const ds_sft_set *set, const ds_sft_source_opts *o) {
    *train = NULL;
    if (val) *val = NULL;
    ds_sft_source_opts opt = *o;
    if (opt.window <= 0) opt.window = 8;
    if (opt.seq_len <= 0) return ds_fail(DS_ERR, "sft source: sequence length %d", opt.seq_len);
    if (!(opt.val_frac >= 0 && opt.val_frac < 1)) return ds_fail(DS_ERR, "sft source: validation fraction %g outside [0, 1)", opt.val_frac);
    const int64_t n = set->n;
    for (int64_t i = 0; i < n; i++)
        if (ds_sft_len(set, i) - 1 > opt.seq_len)
            return ds_fail(DS_ERR, "sft source: sample %lld (line %lld) has %lld tokens, more than a row of %d + 1", (long long)i,
                           (long long)set->line[i], (long long)ds_sft_len(set, i), opt.seq_len);
    int64_t n_val = 0;
    if (opt.val_frac > 0 && n >= 2) {
        n_val = (int64_t)llround(opt.val_frac * (double)n);
        if (n_val < 1) n_val = 1;
        if (n_val > n - 1) n_val = n - 1;
    }
    if (n - n_val < 1) return ds_fail(DS_ERR, "sft source: no training conversations");
    int64_t *tr = malloc((size_t)(n - n_val) * sizeof *tr), *va = malloc((size_t)(n_val ? n_val : 1) * sizeof *va);
    if (!tr || !va) {
        free(tr), free(va);
        return ds_fail(DS_ERR, "out of memory: SFT split");
    }
    /* held out: the samples whose keyed rank falls below n_val (a seeded choice, kept in file order) */
    int64_t nt = 0, nv = 0;
    for (int64_t i = 0; i < n; i++) {
        if ((int64_t)ds_keyed_permute((uint64_t)i, (uint64_t)n, opt.seed, STREAM_VAL) < n_val) va[nv++] = i;
        else tr[nt++] = i;
    }
    int rc = make_source(train, set, &opt, tr, nt, 0);
    if (rc) {
        free(va);
        return rc;
    }
    if (n_val > 0 && val) {
        rc = make_source(val, set, &opt, va, nv, 1);
        if (rc) {
            ds_data_source_free(*train);
            *train = NULL;
        }
    } else {
        free(va);
    }
    return rc;
}

int ds_sft_source_stats(ds_data_source *train, ds_data_source *val, int epochs, ds_sft_stats *st) {
    memset(st, 0, sizeof *st);
    sft_src *q = train->impl;
    st->samples = q->n;
    for (int e = 0; e < epochs; e++) {
        ds_sft_plan p;
        DS_TRY(build_plan(q, &p, e));
        st->rows += p.n_rows;
        if (e == 0) {
            int64_t kept = 0;
            for (int64_t j = 0; j < p.row_off[p.n_rows]; j++) {
                const int64_t i = p.idx[j];
                for (int64_t t = q->set->off[i] + 1; t < q->set->off[i + 1]; t++) kept += q->set->mask[t] != 0;
            }
            st->fill = p.n_rows ? (double)p.slots / ((double)p.n_rows * q->o.seq_len) : 0;
            st->trained = p.slots ? (double)kept / (double)p.slots : 0;
        }
        ds_sft_plan_free(&p);
    }
    if (val) {
        sft_src *v = val->impl;
        st->val_samples = v->n;
        st->val_rows = val->rows_per_pass(val);
    }
    return 0;
}

void ds_sft_source_position(const ds_data_source *train, int64_t *epoch, int64_t *row) {
    const sft_src *q = train->impl;
    *epoch = q->epoch, *row = q->row;
}

int ds_sft_data_open(ds_sft_data *d, const ds_sft_data_opts *o) {
    memset(d, 0, sizeof *d);
    int rc;
    if (!o->tokenizer_json) {
        rc = ds_fail(DS_ERR, "no tokenizer: the checkpoint carries no tokenizer.json: %s", o->model);
        ds_hint("give the tokenizer the model was trained with: --tokenizer FILE");
        return rc;
    }
    if ((rc = ds_tok_from_json(&d->tok, o->tokenizer_json, o->tokenizer_len, "tokenizer.json"))) goto fail;
    if ((rc = ds_chat_template_select(&d->tmpl, o->template_path, o->tokenizer_config, o->tokenizer_config_len,
                                      o->model ? o->model : "tokenizer_config.json")))
        goto fail;
    d->have_tmpl = 1;
    ds_sft_load_opts lo = {.tok = d->tok, .tmpl = &d->tmpl, .seq_len = o->src.seq_len, .max_warnings = o->max_warnings,
                           .on_bad = o->on_bad, .vocab = o->vocab};
    if ((rc = ds_sft_load(&d->set, o->path, &lo))) {
        if (o->on_bad == DS_SFT_REJECT_BAD) ds_hint("fix the line, or pass --on-bad skip to leave bad conversations out");
        goto fail;
    }
    if (d->set.n == 0) {
        rc = ds_fail(DS_ERR, "no usable conversations (%lld read, %lld skipped): %s", (long long)d->set.lines,
                     (long long)d->set.bad, o->path);
        static const ds_kind takes[] = {DS_KIND_JSONL, DS_KIND_JSON, DS_KIND_TEXT, DS_KIND_EMPTY, DS_KIND_UNKNOWN};
        rc = ds_kind_explain(rc, o->path, "conversations", "JSON lines", takes);
        goto fail;
    }
    const int64_t eos = ds_tok_token_id(d->tok, ds_tok_default_specials[1]); /* DeepSeek's EOS */
    ds_sft_source_opts so = o->src;
    so.pad_id = (int32_t)(eos >= 0 ? eos : o->eos >= 0 ? o->eos : 0);
    if ((rc = ds_sft_source_create(&d->train, &d->val, &d->set, &so))) goto fail;
    return 0;
fail:
    ds_sft_data_close(d);
    return rc;
}

void ds_sft_data_close(ds_sft_data *d) {
    ds_data_source_free(d->train);
    ds_data_source_free(d->val);
    ds_sft_set_free(&d->set);
    if (d->have_tmpl) ds_chat_template_free(&d->tmpl);
    ds_tok_free(d->tok);
    memset(d, 0, sizeof *d);
}
