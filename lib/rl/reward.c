#include "rl/reward.h"

#include "core/err.h"
#include "rl/reward_cmd.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- answers ---- */

static int digit(char c) { return c >= '0' && c <= '9'; }
static int word_char(char c) { return isalnum((unsigned char)c) || c == '_' || c == ')' || c == '.'; }

static void trim(const char **s, size_t *n) {
    while (*n && isspace((unsigned char)**s)) (*s)++, (*n)--;
    while (*n && isspace((unsigned char)(*s)[*n - 1])) (*n)--;
}

/* The number starting at text[i] (a digit): [-]digits(,ddd)*(.digits)?; returns its end. */
static size_t number_end(const char *t, size_t len, size_t i) {
    size_t j = i;
    while (j < len && digit(t[j])) j++;
    while (j + 3 < len && t[j] == ',' && digit(t[j + 1]) && digit(t[j + 2]) && digit(t[j + 3]) &&
           (j + 4 == len || !digit(t[j + 4])))
        j += 4;
    if (j + 1 < len && t[j] == '.' && digit(t[j + 1])) {
        j++;
        while (j < len && digit(t[j])) j++;
    }
    return j;
}

/* Copy t[s..e) without the thousands separators. */
static int copy_number(const char *t, size_t s, size_t e, char *buf, size_t cap) {
    size_t k = 0;
    for (size_t i = s; i < e; i++) {
        if (t[i] == ',') continue;
        if (k + 1 >= cap) return -1;
        buf[k++] = t[i];
    }
    buf[k] = 0;
    return (int)k;
}

static int copy_trimmed(const char *s, size_t n, char *buf, size_t cap) {
    trim(&s, &n);
    if (n + 1 > cap) return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    return (int)n;
}

int ds_answer_extract(ds_answer_mode mode, const char *t, size_t len, char *buf, size_t cap) {
    if (!t || cap == 0) return -1;
    if (mode == DS_ANSWER_EXACT) return copy_trimmed(t, len, buf, cap);
    if (mode == DS_ANSWER_BOXED) {
        static const char key[] = "\\boxed{";
        const size_t kl = sizeof key - 1;
        size_t at = (size_t)-1;
        for (size_t i = 0; i + kl <= len; i++)
            if (!memcmp(t + i, key, kl)) at = i;
        if (at == (size_t)-1) return -1;
        int depth = 1;
        for (size_t j = at + kl; j < len; j++) {
            if (t[j] == '{') depth++;
            if (t[j] == '}' && --depth == 0) return copy_trimmed(t + at + kl, j - at - kl, buf, cap);
        }
        return -1; /* unbalanced */
    }
    size_t best_s = 0, best_e = 0;
    int found = 0;
    for (size_t i = 0; i < len;) {
        if (!digit(t[i])) {
            i++;
            continue;
        }
        size_t s = i, e = number_end(t, len, i);
        /* a minus sign directly in front, not the binary minus of "6-3" */
        if (s > 0 && t[s - 1] == '-' && (s == 1 || !word_char(t[s - 2]))) s--;
        best_s = s, best_e = e, found = 1;
        i = e;
    }
    return found ? copy_number(t, best_s, best_e, buf, cap) : -1;
}

/* s reads as a number as a whole: [+-]digits(,ddd)*(.digits)? */
static int as_number(const char *s, size_t n, double *v) {
    trim(&s, &n);
    if (!n || n > 64) return 0;
    size_t i = 0;
    if (s[0] == '-' || s[0] == '+') i++;
    if (i >= n || !digit(s[i])) return 0;
    if (number_end(s, n, i) != n) return 0;
    char buf[72];
    if (copy_number(s, 0, n, buf, sizeof buf) < 0) return 0;
    char *end;
    *v = strtod(buf, &end);
    return *end == 0 && isfinite(*v);
}

int ds_answer_equal(const char *got, size_t got_len, const char *want, size_t want_len) {
    double a, b;
    if (as_number(got, got_len, &a) && as_number(want, want_len, &b)) return fabs(a - b) <= 1e-9 * fmax(1.0, fabs(b));
    trim(&got, &got_len);
    trim(&want, &want_len);
    return got_len == want_len && !memcmp(got, want, got_len);
}

/* ---- the built-in rewards ---- */

typedef struct {
    ds_answer_mode mode;
    char **require;
    int n_require;
    int cache;
} builtin;

static int score_answer(ds_reward *r, const ds_reward_input *in, int n, double *out) {
    const builtin *b = r->impl;
    char buf[4096];
    for (int i = 0; i < n; i++) {
        if (!in[i].answer) return ds_fail(DS_ERR, "answer reward: completion %lld has no \"answer\" to check", (long long)in[i].index);
        int k = ds_answer_extract(b->mode, in[i].completion, in[i].completion_len, buf, sizeof buf);
        out[i] = k >= 0 && ds_answer_equal(buf, (size_t)k, in[i].answer, in[i].answer_len) ? 1.0 : 0.0;
    }
    return 0;
}

static const char *find(const char *h, size_t hn, const char *needle) {
    size_t nn = strlen(needle);
    if (nn == 0) return h;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == needle[0] && !memcmp(h + i, needle, nn)) return h + i;
    return NULL;
}

static int score_format(ds_reward *r, const ds_reward_input *in, int n, double *out) {
    const builtin *b = r->impl;
    for (int i = 0; i < n; i++) {
        const char *p = in[i].completion ? in[i].completion : "";
        size_t left = in[i].completion ? in[i].completion_len : 0;
        int ok = 1;
        for (int k = 0; k < b->n_require && ok; k++) {
            const char *f = find(p, left, b->require[k]);
            if (!f) {
                ok = 0;
                break;
            }
            size_t adv = (size_t)(f - p) + strlen(b->require[k]);
            p += adv, left -= adv;
        }
        out[i] = ok;
    }
    return 0;
}

static int score_length(ds_reward *r, const ds_reward_input *in, int n, double *out) {
    const builtin *b = r->impl;
    for (int i = 0; i < n; i++) {
        const int max = in[i].max_new;
        int cache = b->cache > 0 ? b->cache : max / 5;
        if (cache < 1) cache = 1;
        if (cache > max) cache = max;
        const double free_len = max - cache;
        if (in[i].finish && !strcmp(in[i].finish, "length")) out[i] = -1;
        else if (in[i].n_tokens <= free_len) out[i] = 0;
        else out[i] = fmax(-1.0, (free_len - in[i].n_tokens) / cache);
    }
    return 0;
}

static void free_builtin(ds_reward *r) {
    builtin *b = r->impl;
    if (b) {
        for (int k = 0; k < b->n_require; k++) free(b->require[k]);
        free(b->require);
        free(b);
    }
    free(r);
}

static const char *const r1_tags[] = {"<think>", "</think>", "<answer>", "</answer>"};

static int make_builtin(ds_reward **out, const char *name, double weight, const ds_reward_opts *o) {
    ds_reward *r = calloc(1, sizeof *r);
    builtin *b = calloc(1, sizeof *b);
    if (!r || !b) {
        free(r), free(b);
        return ds_fail(DS_ERR, "out of memory: rewards");
    }
    snprintf(r->name, sizeof r->name, "%s", name);
    r->weight = weight;
    r->impl = b;
    r->free = free_builtin;
    b->mode = o->answer_mode;
    b->cache = o->length_cache;
    if (!strcmp(name, "answer")) {
        r->score = score_answer, r->needs_answer = 1, r->needs_text = 1;
    } else if (!strcmp(name, "format")) {
        r->score = score_format, r->needs_text = 1;
        const char *const *req = o->format_require ? o->format_require : r1_tags;
        int nreq = o->format_require ? o->n_format_require : 4;
        b->require = calloc((size_t)(nreq > 0 ? nreq : 1), sizeof *b->require);
        if (!b->require) {
            free_builtin(r);
            return ds_fail(DS_ERR, "out of memory: rewards");
        }
        for (int k = 0; k < nreq; k++, b->n_require++)
            if (!(b->require[k] = strdup(req[k]))) {
                free_builtin(r);
                return ds_fail(DS_ERR, "out of memory: rewards");
            }
    } else {
        r->score = score_length;
    }
    *out = r;
    return 0;
}

/* ---- the set ---- */

void ds_rewards_free(ds_reward **r, int n) {
    if (!r) return;
    for (int k = 0; k < n; k++)
        if (r[k]) r[k]->free(r[k]);
    free(r);
}

static int add(ds_reward ***v, int *n, ds_reward *r) {
    ds_reward **p = realloc(*v, (size_t)(*n + 1) * sizeof *p);
    if (!p) {
        r->free(r);
        return ds_fail(DS_ERR, "out of memory: rewards");
    }
    p[(*n)++] = r;
    *v = p;
    return 0;
}

static int make(const char *name, double weight, const ds_reward_opts *o, ds_reward **out) {
    if (!strcmp(name, "cmd")) {
        if (!o->cmd) return ds_fail(DS_EUSAGE, "--reward: 'cmd' needs --reward-cmd CMD");
        DS_TRY(ds_reward_cmd_create(out, o->cmd, o->cmd_timeout));
        (*out)->weight = weight;
        return 0;
    }
    if (strcmp(name, "answer") && strcmp(name, "format") && strcmp(name, "length"))
        return ds_fail(DS_EUSAGE, "--reward: unknown reward '%s' (answer, format, length, cmd)", name);
    return make_builtin(out, name, weight, o);
}

int ds_rewards_create(const char *spec, const ds_reward_opts *o, ds_reward ***out, int *n) {
    *out = NULL;
    *n = 0;
    if (!spec || !*spec) spec = o->cmd ? "cmd" : "answer";
    char *copy = strdup(spec);
    if (!copy) return ds_fail(DS_ERR, "out of memory: rewards");
    ds_reward **v = NULL;
    int nv = 0, rc = 0, have_cmd = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item && !rc; item = strtok_r(NULL, ",", &save)) {
        double w = 1;
        char *colon = strchr(item, ':');
        if (colon) {
            *colon = 0;
            char *end;
            w = strtod(colon + 1, &end);
            if (end == colon + 1 || *end || !isfinite(w)) {
                rc = ds_fail(DS_EUSAGE, "--reward: bad weight '%s' for '%s' (NAME:WEIGHT)", colon + 1, item);
                break;
            }
        }
        for (int k = 0; k < nv && !rc; k++)
            if (!strcmp(v[k]->name, item)) rc = ds_fail(DS_EUSAGE, "--reward: '%s' given twice", item);
        ds_reward *r = NULL;
        if (!rc) rc = make(item, w, o, &r);
        if (!rc) rc = add(&v, &nv, r);
        have_cmd |= !rc && !strcmp(item, "cmd");
    }
    if (!rc && nv == 0) rc = ds_fail(DS_EUSAGE, "--reward: no reward named: '%s'", spec);
    if (!rc && o->cmd && !have_cmd) {
        ds_reward *r = NULL;
        rc = make("cmd", 1, o, &r);
        if (!rc) rc = add(&v, &nv, r);
    }
    free(copy);
    if (rc) {
        ds_rewards_free(v, nv);
        return rc;
    }
    *out = v;
    *n = nv;
    return 0;
}

int ds_rewards_score(ds_reward **r, int n_rewards, const ds_reward_input *in, int n, double *parts, double *total) {
    for (int i = 0; i < n; i++) total[i] = 0;
    for (int k = 0; k < n_rewards; k++) {
        double *p = parts + (size_t)k * n;
        DS_TRY(r[k]->score(r[k], in, n, p));
        for (int i = 0; i < n; i++) {
            if (!isfinite(p[i])) return ds_fail(DS_ERR, "%s reward: completion %d scored %g", r[k]->name, i, p[i]);
            total[i] += r[k]->weight * p[i];
        }
    }
    return 0;
}
