#include "infer/passkey.h"

#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/plot.h"
#include "core/rng.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STREAM_KEY = 0x9a55e1 };

/* Our own wording; the shape (intro, repeated filler, one needle sentence, a question) is the passkey
 * task of Mohtashami & Jaggi (2023) used in the YaRN and DeepSeek-V3 long-context evaluations. */
const ds_passkey_text ds_passkey_default_text = {
    .intro = "A secret number is hidden somewhere in the long text below. Find it and remember it, "
             "because you will be asked for it at the end.\n",
    .filler = "The river runs past the hill. The birds sing in the old oak tree. The road goes on and on. ",
    .needle = "The secret number is {key}. Remember it: {key} is the secret number. ",
    .question = "\nWhat is the secret number? The secret number is",
    .answer = " {key}",
    .digits = 5,
};

int ds_passkey_text_load(ds_passkey_text *t, const char *path) {
    char *data = NULL;
    size_t len;
    memset(t, 0, sizeof *t);
    DS_TRY(ds_read_file(path, &data, &len, 1u << 20));
    int rc = ds_passkey_text_parse(t, data, len, path);
    free(data);
    return rc;
}

int ds_passkey_text_parse(ds_passkey_text *t, const char *data, size_t len, const char *path) {
    static const char *const names[] = {"intro", "filler", "needle", "question", "answer"};
    const char *const defaults[] = {ds_passkey_default_text.intro, ds_passkey_default_text.filler,
                                    ds_passkey_default_text.needle, ds_passkey_default_text.question,
                                    ds_passkey_default_text.answer};
    char *pieces[5] = {0};
    memset(t, 0, sizeof *t);
    json_error_t je;
    json_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je), *v;
    int digits = ds_passkey_default_text.digits, rc = 0;
    if (!root) return ds_fail(DS_ERR, "passkey text: bad JSON: %s: %s:%d", je.text, path, je.line);
    if (!json_is_object(root)) rc = ds_fail(DS_ERR, "passkey text: not a JSON object: %s", path);
    const char *key;
    json_object_foreach(root, key, v) {
        if (rc) break;
        int i = 0;
        while (i < 5 && strcmp(key, names[i])) i++;
        if (i < 5 && !json_is_string(v)) rc = ds_fail(DS_ERR, "passkey text: \"%s\" is not a string: %s", key, path);
        else if (i < 5 && !(pieces[i] = strdup(json_string_value(v)))) rc = ds_fail(DS_ERR, "out of memory");
        else if (i == 5 && !strcmp(key, "digits")) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 18)
                rc = ds_fail(DS_ERR, "passkey text: \"digits\" must be an integer in 1..18: %s", path);
            else digits = (int)json_integer_value(v);
        } else if (i == 5) rc = ds_fail(DS_ERR, "passkey text: unknown key \"%s\" (intro, filler, needle, question, answer, digits): %s", key, path);
    }
    json_decref(root);
    for (int i = 0; !rc && i < 5; i++)
        if (!pieces[i] && !(pieces[i] = strdup(defaults[i]))) rc = ds_fail(DS_ERR, "out of memory");
    if (!rc && (!strstr(pieces[2], "{key}") || !strstr(pieces[4], "{key}"))) /* refused before any training */
        rc = ds_fail(DS_ERR, "passkey text: the needle and the answer must contain {key}: %s", path);
    if (rc) {
        for (int i = 0; i < 5; i++) free(pieces[i]);
        return rc;
    }
    *t = (ds_passkey_text){.intro = pieces[0], .filler = pieces[1], .needle = pieces[2], .question = pieces[3],
                           .answer = pieces[4], .digits = digits};
    return 0;
}

void ds_passkey_text_free(ds_passkey_text *t) {
    free((char *)t->intro), free((char *)t->filler), free((char *)t->needle), free((char *)t->question), free((char *)t->answer);
    memset(t, 0, sizeof *t);
}

struct ds_passkey {
    const ds_tokenizer *tok;
    ds_passkey_text t;
    char *needle, *answer; /* copies with "{key}" */
    ds_ids intro, filler, question;
    int needle_max, answer_max; /* tokens, measured on the largest and smallest keys */
};

static int expand(const char *tmpl, const char *key, char **out) {
    size_t nk = strlen(key), n = strlen(tmpl), count = 0;
    for (const char *p = strstr(tmpl, "{key}"); p; p = strstr(p + 5, "{key}")) count++;
    char *s = malloc(n + count * nk + 1);
    if (!s) return ds_fail(DS_ERR, "out of memory");
    char *d = s;
    for (const char *p = tmpl; *p;) {
        if (!strncmp(p, "{key}", 5)) {
            memcpy(d, key, nk), d += nk, p += 5;
        } else {
            *d++ = *p++;
        }
    }
    *d = 0;
    *out = s;
    return 0;
}

static int encode_with_key(const ds_passkey *p, const char *tmpl, const char *key, ds_ids *ids) {
    char *s = NULL;
    DS_TRY(expand(tmpl, key, &s));
    ids->n = 0;
    int rc = ds_tok_encode(p->tok, s, strlen(s), 0, ids);
    free(s);
    return rc;
}

static void make_key(int digits, uint64_t seed, uint64_t index, char *key) {
    ds_rng r;
    ds_rng_init(&r, seed, STREAM_KEY + index);
    key[0] = (char)('1' + ds_rng_below(&r, 9));
    for (int i = 1; i < digits; i++) key[i] = (char)('0' + ds_rng_below(&r, 10));
    key[digits] = 0;
}

int ds_passkey_prepare(ds_passkey **out, const ds_tokenizer *tok, const ds_passkey_text *t, int64_t bos) {
    *out = NULL;
    if (!t->intro || !t->filler || !t->needle || !t->question || !t->answer)
        return ds_fail(DS_ERR, "passkey: every text piece is needed");
    if (t->digits < 1 || t->digits > 18) return ds_fail(DS_ERR, "passkey: %d digits (1..18)", t->digits);
    if (!strstr(t->needle, "{key}") || !strstr(t->answer, "{key}"))
        return ds_fail(DS_ERR, "passkey: the needle and the answer must contain {key}");
    ds_passkey *p = calloc(1, sizeof *p);
    if (!p) return ds_fail(DS_ERR, "out of memory");
    p->tok = tok;
    p->t = *t;
    p->needle = strdup(t->needle), p->answer = strdup(t->answer);
    p->t.needle = p->needle, p->t.answer = p->answer;
    int rc = !p->needle || !p->answer ? ds_fail(DS_ERR, "out of memory") : 0;
    if (!rc && bos >= 0) {
        uint32_t b = (uint32_t)bos;
        p->intro.v = malloc(sizeof b);
        if (!p->intro.v) rc = ds_fail(DS_ERR, "out of memory");
        else p->intro.v[0] = b, p->intro.n = p->intro.cap = 1;
    }
    if (!rc) rc = ds_tok_encode(tok, t->intro, strlen(t->intro), 0, &p->intro);
    if (!rc) rc = ds_tok_encode(tok, t->filler, strlen(t->filler), 0, &p->filler);
    if (!rc) rc = ds_tok_encode(tok, t->question, strlen(t->question), 0, &p->question);
    if (!rc && p->filler.n == 0) rc = ds_fail(DS_ERR, "passkey: the filler text has no tokens");
    /* the longest needle and answer over a few keys bound the fixed part of an example */
    ds_ids tmp = {0};
    for (int k = 0; !rc && k < 16; k++) {
        char key[24];
        make_key(t->digits, 0, (uint64_t)k, key);
        if (k == 0) memset(key, '9', (size_t)t->digits);
        if (k == 1) key[0] = '1', memset(key + 1, '0', (size_t)t->digits - 1);
        rc = encode_with_key(p, t->needle, key, &tmp);
        if (!rc && (int)tmp.n > p->needle_max) p->needle_max = (int)tmp.n;
        if (!rc) rc = encode_with_key(p, t->answer, key, &tmp);
        if (!rc && (int)tmp.n > p->answer_max) p->answer_max = (int)tmp.n;
    }
    ds_ids_free(&tmp);
    if (rc) {
        ds_passkey_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void ds_passkey_free(ds_passkey *p) {
    if (!p) return;
    free(p->needle), free(p->answer);
    ds_ids_free(&p->intro), ds_ids_free(&p->filler), ds_ids_free(&p->question);
    free(p);
}

int ds_passkey_min_len(const ds_passkey *p) {
    return (int)(p->intro.n + p->question.n) + p->needle_max + p->answer_max;
}

void ds_passkey_example_free(ds_passkey_example *ex) {
    free(ex->tokens);
    memset(ex, 0, sizeof *ex);
}

static void put(int32_t *dst, const uint32_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (int32_t)src[i];
}

int ds_passkey_make(const ds_passkey *p, int len, double depth, uint64_t seed, uint64_t index, ds_passkey_example *ex) {
    if (!(depth >= 0 && depth <= 1)) return ds_fail(DS_ERR, "passkey: depth %g outside [0, 1]", depth);
    char key[24];
    make_key(p->t.digits, seed, index, key);
    ds_ids needle = {0}, answer = {0};
    int rc = encode_with_key(p, p->t.needle, key, &needle);
    if (!rc) rc = encode_with_key(p, p->t.answer, key, &answer);
    const int fixed = (int)(p->intro.n + needle.n + p->question.n + answer.n);
    const int F = len - fixed;
    if (!rc && F < 1)
        rc = ds_fail(DS_ERR, "passkey: a length of %d tokens leaves no room for filler (the task takes %d)", len, fixed);
    if (!rc && len > ex->n && !(ex->tokens = realloc(ex->tokens, (size_t)len * sizeof *ex->tokens)))
        rc = ds_fail(DS_ERR, "out of memory: passkey example of %d tokens", len);
    if (rc) {
        ds_ids_free(&needle), ds_ids_free(&answer);
        return rc;
    }
    /* The filler region is the last F tokens of whole filler sentences repeated (a partial one only
     * right after the intro); the needle goes in after `before` of them, on a sentence boundary when
     * the filler is long enough for that to matter. */
    const int u = (int)p->filler.n;
    int before = (int)lround(depth * F);
    const int lead = (u - F % u) % u; /* filler tokens cut off the front */
    if (F >= 4 * u) {
        int b = (int)lround((double)(before + lead) / u) * u - lead;
        before = b < 0 ? 0 : b > F ? F : b;
    }
    int32_t *t = ex->tokens;
    int k = 0;
    put(t + k, p->intro.v, p->intro.n), k += (int)p->intro.n;
    for (int i = 0; i < before; i++) t[k++] = (int32_t)p->filler.v[(lead + i) % u];
    ex->needle_start = k, ex->needle_len = (int)needle.n;
    put(t + k, needle.v, needle.n), k += (int)needle.n;
    for (int i = before; i < F; i++) t[k++] = (int32_t)p->filler.v[(lead + i) % u];
    put(t + k, p->question.v, p->question.n), k += (int)p->question.n;
    ex->answer_start = k;
    put(t + k, answer.v, answer.n), k += (int)answer.n;
    ex->n = k;
    snprintf(ex->key, sizeof ex->key, "%s", key);
    ds_ids_free(&needle), ds_ids_free(&answer);
    return 0;
}

/* ---- running the model ---- */

/* log-softmax at `target` and the argmax of one row of logits */
static double row_logp(const float *z, int V, int target, int *argmax) {
    int best = 0;
    float mx = z[0];
    for (int j = 1; j < V; j++)
        if (z[j] > mx) mx = z[j], best = j;
    double s = 0;
    for (int j = 0; j < V; j++) s += exp((double)z[j] - mx);
    if (argmax) *argmax = best;
    return (double)z[target] - mx - log(s);
}

typedef struct {
    ds_infer *e;
    int chunk, V;
    int32_t *slot, *pos, *rows;
    float *logits; /* [chunk, V] */
} runner;

static int runner_init(runner *r, const ds_infer_model *m, const ds_ops *ops, int max_len, int chunk, int out_rows) {
    memset(r, 0, sizeof *r);
    r->V = m->cfg->vocab_size;
    r->chunk = chunk > 0 ? chunk : 2048;
    if (r->chunk > max_len) r->chunk = max_len;
    if (out_rows > r->chunk) out_rows = r->chunk;
    ds_infer_opts io = {.max_tokens = r->chunk, .slots = 1, .max_len = max_len, .mtp = 0, .max_out = out_rows};
    DS_TRY(ds_infer_create(&r->e, m, ops, &io));
    r->slot = calloc((size_t)r->chunk, sizeof *r->slot);
    r->pos = malloc((size_t)r->chunk * sizeof *r->pos);
    r->rows = malloc((size_t)r->chunk * sizeof *r->rows);
    r->logits = malloc((size_t)out_rows * r->V * sizeof *r->logits);
    if (!r->slot || !r->pos || !r->rows || !r->logits) return ds_fail(DS_ERR, "out of memory: evaluation buffers");
    return 0;
}

static void runner_free(runner *r) {
    ds_infer_free(r->e);
    free(r->slot), free(r->pos), free(r->rows), free(r->logits);
    memset(r, 0, sizeof *r);
}

/* Run tokens[0..n) from position 0 in calls of at most `chunk` tokens (the first in the expanded form,
 * which needs the slot to start at 0; later ones attend over the cache). For each row i in [lo, hi)
 * with i < n - 1, call on(ctx, i, logits predicting tokens[i + 1]); a call asks for at most out_cap
 * rows of logits (it ends early rather than ask for more). */
static int runner_pass(runner *r, const int32_t *tok, int n, int lo, int hi, int out_cap,
                       int (*on)(void *ctx, int i, const float *z), void *ctx) {
    if (hi > n - 1) hi = n - 1;
    for (int c0 = 0; c0 < n;) {
        int take = n - c0 < r->chunk ? n - c0 : r->chunk;
        int a = lo > c0 ? lo : c0, b = hi < c0 + take ? hi : c0 + take;
        if (b - a > out_cap) b = a + out_cap, take = b - c0;
        int n_out = b > a ? b - a : 0;
        for (int i = 0; i < take; i++) r->pos[i] = c0 + i;
        for (int k = 0; k < n_out; k++) r->rows[k] = a - c0 + k;
        ds_infer_step s = {.n = take, .tok = tok + c0, .slot = r->slot, .pos = r->pos,
                           .form = c0 == 0 ? DS_ATTN_NAIVE : DS_ATTN_ABSORBED, .n_out = n_out,
                           .out_rows = n_out ? r->rows : NULL, .logits = n_out ? r->logits : NULL};
        DS_TRY(ds_infer_forward(r->e, &s));
        for (int k = 0; k < n_out; k++) DS_TRY(on(ctx, a + k, r->logits + (size_t)k * r->V));
        c0 += take;
    }
    return 0;
}

typedef struct {
    const int32_t *tok;
    int V, all_right;
    double logp;
} answer_ctx;

static int on_answer(void *ctx, int i, const float *z) {
    answer_ctx *a = ctx;
    int am;
    a->logp += row_logp(z, a->V, a->tok[i + 1], &am);
    if (am != a->tok[i + 1]) a->all_right = 0;
    return 0;
}

int ds_passkey_check(const ds_infer_model *m, const ds_ops *ops, const int32_t *tokens, int n, int answer_start, int chunk,
                     int *right, double *logp) {
    if (answer_start < 1 || answer_start >= n) return ds_fail(DS_ERR, "passkey: answer at %d of %d tokens", answer_start, n);
    runner r;
    int rc = runner_init(&r, m, ops, n, chunk, n - answer_start);
    answer_ctx a = {.tok = tokens, .V = r.V, .all_right = 1};
    if (!rc) rc = runner_pass(&r, tokens, n, answer_start - 1, n - 1, n - answer_start, on_answer, &a);
    runner_free(&r);
    *right = a.all_right;
    *logp = a.logp / (n - answer_start);
    return rc;
}

void ds_passkey_grid_free(ds_passkey_grid *g) {
    free(g->lengths), free(g->depths), free(g->accuracy), free(g->answer_logp);
    memset(g, 0, sizeof *g);
}

int ds_passkey_eval(const ds_infer_model *m, const ds_ops *ops, const ds_passkey *p, const ds_passkey_opts *o,
                    ds_passkey_grid *g) {
    memset(g, 0, sizeof *g);
    if (o->n_lengths < 1 || o->n_depths < 1 || o->trials < 1) return ds_fail(DS_ERR, "passkey: empty grid");
    int max_len = 0;
    for (int i = 0; i < o->n_lengths; i++) {
        if (o->lengths[i] < ds_passkey_min_len(p) + 1)
            return ds_fail(DS_ERR, "passkey: a length of %d tokens is too short for the task (at least %d)", o->lengths[i],
                           ds_passkey_min_len(p) + 1);
        if (o->lengths[i] > max_len) max_len = o->lengths[i];
    }
    for (int j = 0; j < o->n_depths; j++)
        if (!(o->depths[j] >= 0 && o->depths[j] <= 1)) return ds_fail(DS_ERR, "passkey: depth %g outside [0, 1]", o->depths[j]);
    g->rows = o->n_lengths, g->cols = o->n_depths, g->trials = o->trials;
    const size_t cells = (size_t)g->rows * g->cols;
    g->lengths = malloc((size_t)g->rows * sizeof *g->lengths);
    g->depths = malloc((size_t)g->cols * sizeof *g->depths);
    g->accuracy = calloc(cells, sizeof *g->accuracy);
    g->answer_logp = calloc(cells, sizeof *g->answer_logp);
    if (!g->lengths || !g->depths || !g->accuracy || !g->answer_logp) {
        ds_passkey_grid_free(g);
        return ds_fail(DS_ERR, "out of memory: passkey grid");
    }
    memcpy(g->lengths, o->lengths, (size_t)g->rows * sizeof *g->lengths);
    memcpy(g->depths, o->depths, (size_t)g->cols * sizeof *g->depths);
    runner r;
    int rc = runner_init(&r, m, ops, max_len, o->chunk, p->answer_max + 1);
    ds_passkey_example ex = {0};
    ds_progress pr;
    if (o->progress) ds_progress_begin(&pr, "passkey", "examples", (double)(cells * o->trials));
    for (int i = 0; !rc && i < g->rows; i++)
        for (int j = 0; !rc && j < g->cols; j++) {
            int right = 0;
            double lp = 0;
            for (int k = 0; !rc && k < o->trials; k++) {
                /* the same questions for any model: keyed by the cell and trial, not by visiting order */
                uint64_t index = ((uint64_t)o->lengths[i] << 24) ^ ((uint64_t)llround(o->depths[j] * 1e4) << 8) ^ (uint64_t)k;
                rc = ds_passkey_make(p, o->lengths[i], o->depths[j], o->seed, index, &ex);
                answer_ctx a = {.tok = ex.tokens, .V = r.V, .all_right = 1};
                if (!rc) rc = runner_pass(&r, ex.tokens, ex.n, ex.answer_start - 1, ex.n - 1, p->answer_max + 1, on_answer, &a);
                right += a.all_right;
                lp += a.logp / (ex.n - ex.answer_start);
                if (o->progress) ds_progress_update(&pr, (double)((i * g->cols + j) * o->trials + k + 1));
            }
            g->accuracy[i * g->cols + j] = (double)right / o->trials;
            g->answer_logp[i * g->cols + j] = lp / o->trials;
        }
    if (o->progress) ds_progress_end(&pr);
    ds_passkey_example_free(&ex);
    runner_free(&r);
    if (rc) ds_passkey_grid_free(g);
    return rc;
}

/* ---- reporting ---- */

static void len_label(int n, char *buf, size_t size) {
    if (n >= 1024 && n % 1024 == 0) snprintf(buf, size, "%dK", n / 1024);
    else snprintf(buf, size, "%d", n);
}

int ds_passkey_table(const ds_passkey_grid *g, char **out) {
    size_t cap = 256 + (size_t)(g->rows + 2) * (size_t)(g->cols + 2) * 8;
    char *s = malloc(cap);
    if (!s) return ds_fail(DS_ERR, "out of memory");
    size_t k = 0;
#define APP(...) k += (size_t)snprintf(s + k, cap - k, __VA_ARGS__)
    APP("passkey retrieval: %% of %d greedy answers right\n", g->trials);
    APP("%-8s", "length");
    for (int j = 0; j < g->cols; j++) {
        char d[16];
        snprintf(d, sizeof d, "%g%%", 100 * g->depths[j]);
        APP(" %6s", d);
    }
    APP(" %6s\n", "mean");
    for (int i = 0; i < g->rows; i++) {
        char l[16];
        len_label(g->lengths[i], l, sizeof l);
        APP("%-8s", l);
        double sum = 0;
        for (int j = 0; j < g->cols; j++) {
            sum += g->accuracy[i * g->cols + j];
            APP(" %6.0f", 100 * g->accuracy[i * g->cols + j]);
        }
        APP(" %6.1f\n", 100 * sum / g->cols);
    }
#undef APP
    *out = s;
    return 0;
}

int ds_passkey_heatmap(const ds_passkey_grid *g, const char *png_path, const char *title) {
    char(*rl)[16] = malloc((size_t)g->rows * sizeof *rl), (*cl)[16] = malloc((size_t)g->cols * sizeof *cl);
    const char **rp = malloc((size_t)g->rows * sizeof *rp), **cp = malloc((size_t)g->cols * sizeof *cp);
    int rc = 0;
    if (!rl || !cl || !rp || !cp) rc = ds_fail(DS_ERR, "out of memory");
    for (int i = 0; !rc && i < g->rows; i++) len_label(g->lengths[i], rl[i], sizeof rl[i]), rp[i] = rl[i];
    for (int j = 0; !rc && j < g->cols; j++) snprintf(cl[j], sizeof cl[j], "%g%%", 100 * g->depths[j]), cp[j] = cl[j];
    if (!rc) {
        ds_heatmap h = {.rows = g->rows, .cols = g->cols, .values = g->accuracy, .vmin = 0, .vmax = 1,
                        .title = title ? title : "passkey retrieval accuracy", .xlabel = "needle depth",
                        .ylabel = "context length (tokens)", .row_labels = rp, .col_labels = cp, .annotate = 1};
        rc = ds_chart_heatmap_png(&h, png_path);
    }
    free(rl), free(cl), free(rp), free(cp);
    return rc;
}

int ds_passkey_metrics(const ds_passkey_grid *g, void *metrics) {
    if (!metrics) return 0;
    ds_jsonw w;
    ds_jsonw_init(&w);
    int rc = 0;
    for (int i = 0; !rc && i < g->rows; i++)
        for (int j = 0; !rc && j < g->cols; j++) {
            ds_jsonw_reset(&w);
            ds_jsonw_obj_begin(&w);
            ds_jsonw_kstr(&w, "eval", "passkey");
            ds_jsonw_kint(&w, "length", g->lengths[i]);
            ds_jsonw_knum(&w, "depth", g->depths[j]);
            ds_jsonw_knum(&w, "accuracy", g->accuracy[i * g->cols + j]);
            ds_jsonw_knum(&w, "answer_logp", g->answer_logp[i * g->cols + j]);
            ds_jsonw_kint(&w, "trials", g->trials);
            ds_jsonw_obj_end(&w);
            rc = ds_metrics_write(metrics, &w);
        }
    ds_jsonw_free(&w);
    return rc;
}

/* ---- likelihood by position ---- */

typedef struct {
    const int32_t *tok;
    int V, len, n_buckets;
    double *sum;
} pos_ctx;

static int bucket_of(int t, int len, int nb) { return (int)((int64_t)(t - 1) * nb / (len - 1)); }

static int on_pos(void *ctx, int i, const float *z) {
    pos_ctx *c = ctx;
    c->sum[bucket_of(i + 1, c->len, c->n_buckets)] += row_logp(z, c->V, c->tok[i + 1], NULL);
    return 0;
}

int ds_position_logp(const ds_infer_model *m, const ds_ops *ops, const int32_t *docs, int n_docs, int len, int n_buckets,
                     int chunk, double *logp, int *bucket_end) {
    if (n_docs < 1 || len < 2 || n_buckets < 1 || n_buckets > len - 1)
        return ds_fail(DS_ERR, "position log-likelihood: %d documents of %d tokens in %d buckets", n_docs, len, n_buckets);
    const int V = m->cfg->vocab_size;
    for (size_t i = 0; i < (size_t)n_docs * len; i++)
        if (docs[i] < 0 || docs[i] >= V) return ds_fail(DS_ERR, "position log-likelihood: token %d outside the vocabulary", docs[i]);
    /* logits of at most ~256 MB at a time */
    int out_cap = (int)(((size_t)64 << 20) / (size_t)V);
    if (out_cap < 1) out_cap = 1;
    runner r;
    double *sum = calloc((size_t)n_buckets, sizeof *sum);
    int rc = sum ? runner_init(&r, m, ops, len, chunk, out_cap) : ds_fail(DS_ERR, "out of memory");
    if (!sum) memset(&r, 0, sizeof r);
    if (r.chunk < out_cap) out_cap = r.chunk;
    for (int d = 0; !rc && d < n_docs; d++) {
        pos_ctx c = {.tok = docs + (size_t)d * len, .V = V, .len = len, .n_buckets = n_buckets, .sum = sum};
        rc = runner_pass(&r, c.tok, len, 0, len - 1, out_cap, on_pos, &c);
    }
    for (int b = 0; !rc && b < n_buckets; b++) {
        int first = -1, last = -1;
        for (int t = 1; t < len; t++)
            if (bucket_of(t, len, n_buckets) == b) last = t, first = first < 0 ? t : first;
        logp[b] = sum[b] / ((double)n_docs * (last - first + 1));
        if (bucket_end) bucket_end[b] = last;
    }
    runner_free(&r);
    free(sum);
    return rc;
}

int ds_position_table(const double *logp, const int *bucket_end, int n_buckets, int n_docs, char **out) {
    size_t cap = 128 + (size_t)n_buckets * 64;
    char *s = malloc(cap);
    if (!s) return ds_fail(DS_ERR, "out of memory");
    size_t k = (size_t)snprintf(s, cap, "log-likelihood by position (%d documents)\n%-16s %12s %12s\n", n_docs, "positions",
                                "mean log p", "perplexity");
    for (int b = 0; b < n_buckets; b++) {
        char r[40];
        snprintf(r, sizeof r, "%d-%d", b ? bucket_end[b - 1] + 1 : 1, bucket_end[b]);
        k += (size_t)snprintf(s + k, cap - k, "%-16s %12.4f %12.3f\n", r, logp[b], exp(-logp[b]));
    }
    *out = s;
    return 0;
}

/* ---- both ---- */

static int append(char **text, const char *more) {
    size_t a = *text ? strlen(*text) : 0, b = strlen(more);
    char *t = realloc(*text, a + b + 1);
    if (!t) return ds_fail(DS_ERR, "out of memory");
    memcpy(t + a, more, b + 1);
    *text = t;
    return 0;
}

static int longctx_passkey(const ds_infer_model *m, const ds_ops *ops, const ds_longctx_opts *o, char **text) {
    ds_passkey *p;
    DS_TRY(ds_passkey_prepare(&p, o->tok, o->text ? o->text : &ds_passkey_default_text, o->bos));
    int *lens = malloc((size_t)(o->n_lengths ? o->n_lengths : 1) * sizeof *lens), nl = 0, rc = 0;
    if (!lens) rc = ds_fail(DS_ERR, "out of memory");
    for (int i = 0; !rc && i < o->n_lengths; i++) {
        if (o->lengths[i] > ds_passkey_min_len(p)) lens[nl++] = o->lengths[i];
        else ds_warn("passkey: %d tokens cannot hold the task (%d at least): length skipped", o->lengths[i], ds_passkey_min_len(p) + 1);
    }
    if (!rc && nl) {
        ds_passkey_opts po = {.lengths = lens, .n_lengths = nl, .depths = o->depths, .n_depths = o->n_depths,
                              .trials = o->trials, .seed = o->seed, .chunk = o->chunk, .progress = 1};
        ds_passkey_grid g;
        char *table = NULL;
        rc = ds_passkey_eval(m, ops, p, &po, &g);
        if (!rc) {
            rc = ds_passkey_table(&g, &table);
            if (!rc) rc = append(text, table);
            if (!rc && o->png) rc = ds_passkey_heatmap(&g, o->png, "passkey retrieval");
            if (!rc) rc = ds_passkey_metrics(&g, o->metrics);
            free(table);
            ds_passkey_grid_free(&g);
        }
    } else if (!rc) {
        ds_warn("passkey retrieval skipped: no length long enough");
    }
    free(lens);
    ds_passkey_free(p);
    return rc;
}

static int longctx_position(const ds_infer_model *m, const ds_ops *ops, const ds_longctx_opts *o, char **text) {
    enum { MAXB = 64 };
    double lp[MAXB];
    int end[MAXB], nb = o->buckets < o->doc_len - 1 ? o->buckets : o->doc_len - 1;
    if (nb > MAXB) nb = MAXB;
    DS_TRY(ds_position_logp(m, ops, o->docs, o->n_docs, o->doc_len, nb, o->chunk, lp, end));
    char *table = NULL;
    int rc = ds_position_table(lp, end, nb, o->n_docs, &table);
    if (!rc) rc = append(text, table);
    free(table);
    ds_jsonw w;
    ds_jsonw_init(&w);
    for (int b = 0; !rc && o->metrics && b < nb; b++) {
        ds_jsonw_reset(&w);
        ds_jsonw_obj_begin(&w);
        ds_jsonw_kstr(&w, "eval", "position_logp");
        ds_jsonw_kint(&w, "end", end[b]);
        ds_jsonw_knum(&w, "logp", lp[b]);
        ds_jsonw_kint(&w, "docs", o->n_docs);
        ds_jsonw_obj_end(&w);
        rc = ds_metrics_write(o->metrics, &w);
    }
    ds_jsonw_free(&w);
    return rc;
}

int ds_longctx_eval(const ds_infer_model *m, const ds_ops *ops, const ds_longctx_opts *o, char **text) {
    *text = NULL;
    int rc = append(text, "");
    if (!rc && !o->tok) ds_warn("no tokenizer: passkey retrieval skipped");
    if (!rc && o->tok) rc = longctx_passkey(m, ops, o, text);
    if (!rc && o->n_docs > 0) rc = longctx_position(m, ops, o, text);
    if (rc) {
        free(*text);
        *text = NULL;
    }
    return rc;
}
