#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok/pretok.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

const char *const ds_pretok_deepseek_v3[3] = {
    "\\p{N}{1,3}",
    "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
    "?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};
const char ds_pretok_gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Oniguruma's \s is Unicode White_Space, which includes U+0085; PCRE2's (with UCP) does not. Rewrite
 * \s and \S outside character classes, and \s inside them, to add it. */
static char *translate_pattern(const char *src, size_t n) {
    char *out = malloc(n * 12 + 1);
    if (!out) return NULL;
    size_t o = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < n) {
            char d = src[i + 1];
            if (d == 's' && !in_class) {
                memcpy(out + o, "[\\s\\x{85}]", 10), o += 10;
            } else if (d == 'S' && !in_class) {
                memcpy(out + o, "[^\\s\\x{85}]", 11), o += 11;
            } else if (d == 's' && in_class) {
                memcpy(out + o, "\\s\\x{85}", 8), o += 8;
            } else {
                out[o++] = c;
                out[o++] = d;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            out[o++] = c;
            /* a ']' right after '[' or '[^' is literal */
            if (i + 1 < n && src[i + 1] == '^') out[o++] = src[++i];
            if (i + 1 < n && src[i + 1] == ']') out[o++] = src[++i];
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && src[i + 1] == ':') { /* POSIX class [:alpha:] */
            const char *end = strstr(src + i + 2, ":]");
            if (end && (size_t)(end - src) < n) {
                size_t len = (size_t)(end - (src + i)) + 2;
                memcpy(out + o, src + i, len), o += len;
                i += len - 1;
                continue;
            }
        }
        if (in_class && c == ']') in_class = 0;
        out[o++] = c;
    }
    out[o] = 0;
    return out;
}

static int add_step(ds_pretok *p, ds_pretok_step **st) {
    if (p->n >= DS_PRETOK_MAX) return ds_fail(DS_ERR, "pre_tokenizer: more than %d steps", DS_PRETOK_MAX);
    *st = &p->step[p->n];
    memset(*st, 0, sizeof **st);
    return 0;
}

static int compile(ds_pretok_step *st, const char *pattern, size_t len, int literal) {
    char *pat = literal ? NULL : translate_pattern(pattern, len);
    if (!literal && !pat) return ds_fail(DS_ERR, "pre_tokenizer: out of memory");
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = literal ? pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &off, NULL)
                             : pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &err, &off, NULL);
    free(pat);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return ds_fail(DS_ERR, "pre_tokenizer: bad regex at offset %zu: %s", (size_t)off, (char *)msg);
    }
    st->jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    st->re = re;
    st->source = malloc(len + 1);
    if (!st->source) return ds_fail(DS_ERR, "pre_tokenizer: out of memory");
    memcpy(st->source, pattern, len);
    st->source[len] = 0;
    st->literal = literal;
    return 0;
}

int ds_pretok_add_split(ds_pretok *p, const char *pattern, size_t len, int literal, int behavior, int invert) {
    ds_pretok_step *st = NULL;
    DS_TRY(add_step(p, &st));
    st->kind = DS_PRE_SPLIT;
    st->behavior = behavior;
    st->invert = invert;
    DS_TRY(compile(st, pattern, len, literal));
    p->n++;
    return 0;
}

int ds_pretok_add_bytelevel(ds_pretok *p, int add_prefix_space, int use_regex) {
    ds_pretok_step *st = NULL;
    DS_TRY(add_step(p, &st));
    st->kind = DS_PRE_BYTELEVEL;
    st->behavior = DS_SPLIT_ISOLATED;
    st->add_prefix_space = add_prefix_space;
    st->use_regex = use_regex;
    if (use_regex) DS_TRY(compile(st, ds_pretok_gpt2, strlen(ds_pretok_gpt2), 0));
    p->n++;
    return 0;
}

void ds_pretok_free(ds_pretok *p) {
    for (int i = 0; i < p->n; i++) {
        pcre2_code_free(p->step[i].re);
        free(p->step[i].source);
    }
    p->n = 0;
}

int ds_pretok_chunkable(const ds_pretok *p) {
    for (int i = 0; i < p->n; i++) {
        const ds_pretok_step *st = &p->step[i];
        if (st->add_prefix_space || st->invert || st->behavior != DS_SPLIT_ISOLATED) return 0;
        if (!st->re) continue;
        if (st->literal) return 0;
        int known = !strcmp(st->source, ds_pretok_gpt2);
        for (int k = 0; k < 3; k++) known |= !strcmp(st->source, ds_pretok_deepseek_v3[k]);
        if (!known) return 0;
    }
    return 1;
}

/* ---- running ---------------------------------------------------------------------------------- */

typedef struct {
    size_t start, end;
    int delim;
} segment;

typedef struct {
    pcre2_match_data *md;
    segment *seg; /* generic behaviors collect the segments of one piece */
    size_t nseg, capseg;
    char *scratch; /* ByteLevel prefix space */
    size_t cap_scratch;
} depth_state;

struct ds_pretok_state {
    const ds_pretok *p;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jstack;
    depth_state d[DS_PRETOK_MAX];
    ds_piece_fn fn;
    void *ctx;
};

int ds_pretok_state_new(ds_pretok_state **out, const ds_pretok *p) {
    ds_pretok_state *s = calloc(1, sizeof *s);
    if (!s) return ds_fail(DS_ERR, "pre_tokenizer: out of memory");
    s->p = p;
    s->mctx = pcre2_match_context_create(NULL);
    /* long whitespace runs backtrack deeply under \s+(?!\S); give the JIT room rather than fail */
    s->jstack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
    if (!s->mctx || !s->jstack) {
        ds_pretok_state_free(s);
        return ds_fail(DS_ERR, "pre_tokenizer: out of memory");
    }
    pcre2_jit_stack_assign(s->mctx, NULL, s->jstack);
    for (int i = 0; i < p->n; i++) {
        if (!p->step[i].re) continue;
        s->d[i].md = pcre2_match_data_create_from_pattern(p->step[i].re, NULL);
        if (!s->d[i].md) {
            ds_pretok_state_free(s);
            return ds_fail(DS_ERR, "pre_tokenizer: out of memory");
        }
    }
    *out = s;
    return 0;
}

void ds_pretok_state_free(ds_pretok_state *s) {
    if (!s) return;
    for (int i = 0; i < DS_PRETOK_MAX; i++) {
        pcre2_match_data_free(s->d[i].md);
        free(s->d[i].seg);
        free(s->d[i].scratch);
    }
    pcre2_jit_stack_free(s->jstack);
    pcre2_match_context_free(s->mctx);
    free(s);
}

static int process(ds_pretok_state *s, int k, const char *text, size_t len);

/* Next match of step k in text at or after *pos; returns 1 with [ms, me), 0 when none, <0 error. */
static int next_match(ds_pretok_state *s, int k, const char *text, size_t len, size_t pos, size_t *ms,
                      size_t *me) {
    const ds_pretok_step *st = &s->p->step[k];
    pcre2_match_data *md = s->d[k].md;
    while (pos <= len) {
        int rc = st->jit ? pcre2_jit_match(st->re, (PCRE2_SPTR)text, len, pos, 0, md, s->mctx)
                         : pcre2_match(st->re, (PCRE2_SPTR)text, len, pos, 0, md, s->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            ds_fail(DS_ERR, "pre_tokenizer: regex match failed: %s", (char *)msg);
            return -1;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        /* an empty match yields no piece: step over one UTF-8 character */
        pos = ov[0] + 1;
        while (pos < len && ((unsigned char)text[pos] & 0xc0) == 0x80) pos++;
    }
    return 0;
}

static int push_seg(depth_state *d, size_t a, size_t b, int delim) {
    if (d->nseg == d->capseg) {
        size_t cap = d->capseg ? 2 * d->capseg : 64;
        segment *v = realloc(d->seg, cap * sizeof *v);
        if (!v) return ds_fail(DS_ERR, "pre_tokenizer: out of memory");
        d->seg = v;
        d->capseg = cap;
    }
    d->seg[d->nseg++] = (segment){a, b, delim};
    return 0;
}

static int split_generic(ds_pretok_state *s, int k, const char *text, size_t len) {
    const ds_pretok_step *st = &s->p->step[k];
    depth_state *d = &s->d[k];
    d->nseg = 0;
    size_t pos = 0, ms, me;
    int r;
    while ((r = next_match(s, k, text, len, pos, &ms, &me)) == 1) {
        if (ms > pos) DS_TRY(push_seg(d, pos, ms, st->invert));
        DS_TRY(push_seg(d, ms, me, !st->invert));
        pos = me;
    }
    if (r < 0) return DS_ERR;
    if (pos < len) DS_TRY(push_seg(d, pos, len, st->invert));
    /* fold segments into pieces following HF's SplitDelimiterBehavior */
    size_t n = d->nseg, out = 0;
    segment *g = d->seg;
    int prev_delim = 0;
    switch (st->behavior) {
    case DS_SPLIT_ISOLATED: out = n; break;
    case DS_SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!g[i].delim) g[out++] = g[i];
        break;
    case DS_SPLIT_MERGED_PREV:
    case DS_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            int merge = st->behavior == DS_SPLIT_MERGED_PREV ? (g[i].delim && !prev_delim) : (g[i].delim == prev_delim);
            if (merge && out > 0) g[out - 1].end = g[i].end;
            else g[out++] = g[i];
            prev_delim = g[i].delim;
        }
        break;
    case DS_SPLIT_MERGED_NEXT: { /* the same fold from the right */
        size_t w = n;
        for (size_t i = n; i-- > 0;) {
            int merge = g[i].delim && !prev_delim;
            if (merge && w < n) g[w].start = g[i].start;
            else g[--w] = g[i];
            prev_delim = g[i].delim;
        }
        memmove(g, g + w, (n - w) * sizeof *g);
        out = n - w;
        break;
    }
    }
    /* recursion may reuse this depth's buffer only at deeper levels, so iterate over a stable copy */
    for (size_t i = 0; i < out; i++) {
        size_t a = d->seg[i].start, b = d->seg[i].end;
        if (b > a) DS_TRY(process(s, k + 1, text + a, b - a));
    }
    return 0;
}

static int process(ds_pretok_state *s, int k, const char *text, size_t len) {
    if (len == 0) return 0;
    if (k == s->p->n) return s->fn(s->ctx, text, len);
    const ds_pretok_step *st = &s->p->step[k];
    if (st->kind == DS_PRE_BYTELEVEL && st->add_prefix_space && text[0] != ' ') {
        depth_state *d = &s->d[k];
        if (d->cap_scratch < len + 1) {
            char *b = realloc(d->scratch, len + 1);
            if (!b) return ds_fail(DS_ERR, "pre_tokenizer: out of memory");
            d->scratch = b;
            d->cap_scratch = len + 1;
        }
        d->scratch[0] = ' ';
        memcpy(d->scratch + 1, text, len);
        text = d->scratch;
        len++;
    }
    if (!st->re) return process(s, k + 1, text, len);
    if (st->behavior != DS_SPLIT_ISOLATED || st->invert) return split_generic(s, k, text, len);
    /* Isolated: every gap and every match is a piece */
    size_t pos = 0, ms, me;
    int r;
    while ((r = next_match(s, k, text, len, pos, &ms, &me)) == 1) {
        if (ms > pos) DS_TRY(process(s, k + 1, text + pos, ms - pos));
        DS_TRY(process(s, k + 1, text + ms, me - ms));
        pos = me;
    }
    if (r < 0) return DS_ERR;
    if (pos < len) DS_TRY(process(s, k + 1, text + pos, len - pos));
    return 0;
}

int ds_pretok_run(ds_pretok_state *s, const char *text, size_t len, ds_piece_fn fn, void *ctx) {
    s->fn = fn;
    s->ctx = ctx;
    return process(s, 0, text, len);
}
