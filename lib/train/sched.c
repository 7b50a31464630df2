#include "train/sched.h"

#include "core/err.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *what, *spec;
    double peak;
    int64_t total;
} parse_ctx;

static int bad(const parse_ctx *c, const char *problem, const char *tok) {
    if (tok) return ds_fail(DS_EUSAGE, "%s: %s '%s': '%s'", c->what, problem, tok, c->spec);
    return ds_fail(DS_EUSAGE, "%s: %s: '%s'", c->what, problem, c->spec);
}

/* A number with an optional K/M/G/B/T multiplier; *end points past it. */
static int parse_scaled(const char *s, double *v, const char **end) {
    char *e;
    double x = strtod(s, &e);
    if (e == s || !isfinite(x)) return -1;
    switch (*e) {
    case 'K': case 'k': x *= 1e3, e++; break;
    case 'M': x *= 1e6, e++; break;
    case 'G': case 'B': x *= 1e9, e++; break;
    case 'T': x *= 1e12, e++; break;
    default: break;
    }
    *v = x;
    *end = e;
    return 0;
}

/* A knee: "2000", "2Ks", "2000steps", "10Ttok", "469Btokens", "80%" (of the run's steps). */
static int parse_knee(const parse_ctx *c, const char *tok, double *at, ds_unit *unit) {
    const char *e;
    if (parse_scaled(tok, at, &e) || *at < 0) return bad(c, "bad knee", tok);
    if (!*e || !strcmp(e, "s") || !strcmp(e, "step") || !strcmp(e, "steps")) {
        *unit = DS_UNIT_STEPS;
    } else if (!strcmp(e, "t") || !strcmp(e, "tok") || !strcmp(e, "tokens")) {
        *unit = DS_UNIT_TOKENS;
    } else if (!strcmp(e, "%")) {
        if (c->total <= 0) return bad(c, "a percentage knee needs the total number of steps", tok);
        *at = round(*at / 100.0 * (double)c->total);
        *unit = DS_UNIT_STEPS;
    } else {
        return bad(c, "bad knee (units: steps, or tok for tokens, or %)", tok);
    }
    return 0;
}

/* A value: a number, or "N%" of the peak. */
static int parse_value(const parse_ctx *c, const char *tok, double *v) {
    const char *e;
    if (parse_scaled(tok, v, &e)) return bad(c, "bad value", tok);
    if (!strcmp(e, "%")) {
        if (!isfinite(c->peak)) return bad(c, "a percentage value needs a peak", tok);
        *v = *v / 100.0 * c->peak;
    } else if (*e) {
        return bad(c, "bad value", tok);
    }
    return 0;
}

static void add_point(ds_sched *s, double at, ds_unit unit, double value, ds_shape shape) {
    ds_sched_point *p = &s->pt[s->n++];
    *p = (ds_sched_point){.at = at, .unit = unit, .value = value, .shape = shape, .cross_step = -1};
}

/* "value@knee" items separated by commas; the first may omit "@knee" (then it starts at 0). */
static int parse_points(ds_sched *s, const parse_ctx *c, char *list, ds_shape shape) {
    for (char *save = NULL, *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        if (s->n == DS_SCHED_MAX_POINTS) return bad(c, "too many points", NULL);
        char *at = strchr(item, '@');
        double knee = 0, v;
        ds_unit unit = DS_UNIT_STEPS;
        if (at) {
            *at = 0;
            DS_TRY(parse_knee(c, at + 1, &knee, &unit));
        } else if (s->n > 0) {
            return bad(c, "missing '@knee' in", item);
        }
        DS_TRY(parse_value(c, item, &v));
        add_point(s, knee, unit, v, shape);
    }
    if (s->n == 0) return bad(c, "no points", NULL);
    return 0;
}

typedef struct {
    const char *key;
    const char *dflt;
    int is_knee; /* else a value */
} named_param;

/* key=value options of the named shapes, with defaults filled in from `params`. */
static int parse_named(const parse_ctx *c, char *opts, const named_param *params, int np, double *out, ds_unit *units,
                       char *shape_word, size_t shape_n) {
    const char *given[12] = {0};
    for (char *save = NULL, *item = opts ? strtok_r(opts, ",", &save) : NULL; item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq) return bad(c, "expected key=value, got", item);
        *eq = 0;
        if (shape_word && !strcmp(item, "shape")) {
            snprintf(shape_word, shape_n, "%s", eq + 1);
            continue;
        }
        int k = 0;
        while (k < np && strcmp(params[k].key, item)) k++;
        if (k == np) return bad(c, "unknown key", item);
        given[k] = eq + 1;
    }
    for (int k = 0; k < np; k++) {
        const char *v = given[k] ? given[k] : params[k].dflt;
        if (params[k].is_knee)
            DS_TRY(parse_knee(c, v, &out[k], &units[k]));
        else
            DS_TRY(parse_value(c, v, &out[k]));
    }
    return 0;
}

/* Consecutive knees in the same unit must not go backwards. */
static int check_order(const ds_sched *s, const parse_ctx *c) {
    for (int u = 0; u < 2; u++) {
        double last = -1;
        for (int i = 0; i < s->n; i++) {
            if (s->pt[i].unit != (ds_unit)u && !(i == 0 && s->pt[i].at == 0)) continue;
            if (s->pt[i].at < last) return bad(c, "knees go backwards", NULL);
            last = s->pt[i].at;
        }
    }
    return 0;
}

int ds_sched_parse(ds_sched *s, const char *spec, double peak, int64_t total_steps, const char *what) {
    memset(s, 0, sizeof *s);
    parse_ctx c = {.what = what ? what : "schedule", .spec = spec ? spec : "", .peak = peak, .total = total_steps};
    if (!spec || !*spec) return bad(&c, "empty schedule", NULL);
    if (strlen(spec) >= sizeof s->spec) return bad(&c, "schedule text too long", NULL);
    snprintf(s->spec, sizeof s->spec, "%s", spec);
    char buf[sizeof s->spec];
    snprintf(buf, sizeof buf, "%s", spec);
    char *colon = strchr(buf, ':');
    const char *kind = buf;
    char *rest = NULL;
    if (colon) {
        *colon = 0;
        rest = colon + 1;
    } else if (isalpha((unsigned char)buf[0])) {
        rest = NULL; /* a bare name: every parameter at its default */
    } else {
        kind = "steps";
        rest = buf;
    }

    if (!strcmp(kind, "steps") || !strcmp(kind, "const")) {
        if (!rest) return bad(&c, "no points", NULL);
        DS_TRY(parse_points(s, &c, rest, DS_SHAPE_HOLD));
    } else if (!strcmp(kind, "linear")) {
        if (!rest) return bad(&c, "no points", NULL);
        DS_TRY(parse_points(s, &c, rest, DS_SHAPE_LINEAR));
    } else if (!strcmp(kind, "v3")) {
        /* DeepSeek-V3's shape with its knees as fractions of the run (V3: 2K warmup steps; hold to
         * 10T, cosine to 14.3T, 2.2e-5 to 14.633T, then 7.3e-6, of 14.8T tokens) */
        static const named_param P[] = {{"peak", "100%", 0},  {"warmup", "1%", 1},  {"hold", "67.6%", 1},
                                        {"decay", "96.6%", 1}, {"min", "10%", 0},    {"tail", "98.9%", 1},
                                        {"final", "3.318%", 0}};
        double v[7];
        ds_unit u[7] = {0};
        DS_TRY(parse_named(&c, rest, P, 7, v, u, NULL, 0));
        add_point(s, 0, DS_UNIT_STEPS, 0, DS_SHAPE_LINEAR);
        add_point(s, v[1], u[1], v[0], DS_SHAPE_HOLD);
        add_point(s, v[2], u[2], v[0], DS_SHAPE_COSINE);
        add_point(s, v[3], u[3], v[4], DS_SHAPE_HOLD);
        add_point(s, v[5], u[5], v[6], DS_SHAPE_HOLD);
    } else if (!strcmp(kind, "cosine")) {
        static const named_param P[] = {{"peak", "100%", 0}, {"warmup", "1%", 1}, {"end", "100%", 1}, {"min", "10%", 0}};
        double v[4];
        ds_unit u[4] = {0};
        DS_TRY(parse_named(&c, rest, P, 4, v, u, NULL, 0));
        add_point(s, 0, DS_UNIT_STEPS, 0, DS_SHAPE_LINEAR);
        add_point(s, v[1], u[1], v[0], DS_SHAPE_COSINE);
        add_point(s, v[2], u[2], v[3], DS_SHAPE_HOLD);
    } else if (!strcmp(kind, "wsd")) {
        static const named_param P[] = {{"peak", "100%", 0}, {"warmup", "1%", 1}, {"decay", "80%", 1}, {"end", "100%", 1}, {"min", "0", 0}};
        double v[5];
        ds_unit u[5] = {0};
        char shape[16] = "sqrt";
        DS_TRY(parse_named(&c, rest, P, 5, v, u, shape, sizeof shape));
        ds_shape sh = !strcmp(shape, "linear") ? DS_SHAPE_LINEAR : !strcmp(shape, "cosine") ? DS_SHAPE_COSINE
                    : !strcmp(shape, "sqrt")   ? DS_SHAPE_SQRT   : (ds_shape)-1;
        if ((int)sh < 0) return bad(&c, "unknown decay shape (linear|cosine|sqrt)", shape);
        add_point(s, 0, DS_UNIT_STEPS, 0, DS_SHAPE_LINEAR);
        add_point(s, v[1], u[1], v[0], DS_SHAPE_HOLD);
        add_point(s, v[2], u[2], v[0], sh);
        add_point(s, v[3], u[3], v[4], DS_SHAPE_HOLD);
    } else {
        return bad(&c, "unknown schedule kind (steps|linear|v3|cosine|wsd)", kind);
    }
    for (int i = 0; i < s->n; i++)
        if (!isfinite(s->pt[i].value)) return bad(&c, "non-finite value", NULL);
    return check_order(s, &c);
}

static double pos_in(ds_progress_pos p, ds_unit u) { return u == DS_UNIT_STEPS ? (double)p.step : p.tokens; }

static int reached(const ds_sched_point *pt, ds_progress_pos p) { return pos_in(p, pt->unit) >= pt->at; }

static double shape_weight(ds_shape sh, double u) {
    switch (sh) {
    case DS_SHAPE_HOLD: return 0;
    case DS_SHAPE_LINEAR: return u;
    case DS_SHAPE_COSINE: return 0.5 * (1 - cos(M_PI * u));
    case DS_SHAPE_SQRT: return sqrt(u);
    }
    return 0;
}

/* Where stretch i starts, in unit u: the knee itself, the recorded crossing, or (no record: a
 * schedule changed on resume) the knee scaled by the run's average tokens per step so far. */
static double start_in(const ds_sched_point *pt, ds_unit u, ds_progress_pos p) {
    if (pt->unit == u || pt->at == 0) return pt->at;
    if (pt->cross_step >= 0) return u == DS_UNIT_STEPS ? (double)pt->cross_step : pt->cross_tokens;
    double from = pos_in(p, pt->unit), to = pos_in(p, u);
    return from > 0 ? pt->at * to / from : 0;
}

double ds_sched_peek(const ds_sched *s, ds_progress_pos p) {
    int i = -1;
    for (int k = 0; k < s->n; k++)
        if (reached(&s->pt[k], p)) i = k;
    if (i < 0) return s->pt[0].value;
    if (i == s->n - 1 || s->pt[i].shape == DS_SHAPE_HOLD) return s->pt[i].value;
    const ds_sched_point *a = &s->pt[i], *b = &s->pt[i + 1];
    double x0 = start_in(a, b->unit, p), x1 = b->at, x = pos_in(p, b->unit);
    double u = x1 > x0 ? (x - x0) / (x1 - x0) : 1;
    if (u < 0) u = 0;
    if (u > 1) u = 1;
    return a->value + (b->value - a->value) * shape_weight(a->shape, u);
}

double ds_sched_at(ds_sched *s, ds_progress_pos p) {
    for (int k = 0; k < s->n; k++)
        if (s->pt[k].cross_step < 0 && reached(&s->pt[k], p)) {
            s->pt[k].cross_step = p.step;
            s->pt[k].cross_tokens = p.tokens;
        }
    return ds_sched_peek(s, p);
}

double ds_sched_max(const ds_sched *s) {
    double m = s->pt[0].value;
    for (int k = 1; k < s->n; k++) m = fmax(m, s->pt[k].value);
    return m;
}

void ds_sched_describe(const ds_sched *s, char *buf, int n) {
    static const char *shape_name[] = {"hold", "linear", "cosine", "sqrt"};
    int off = 0;
    buf[0] = 0;
    for (int k = 0; k < s->n && off < n; k++) {
        const ds_sched_point *p = &s->pt[k];
        off += snprintf(buf + off, (size_t)(n - off), "%s%.6g@%.6g%s", k ? " " : "", p->value, p->at,
                        p->unit == DS_UNIT_STEPS ? "s" : "tok");
        if (k + 1 < s->n && off < n) off += snprintf(buf + off, (size_t)(n - off), " -%s->", shape_name[p->shape]);
    }
}

void ds_sched_state_write(const ds_sched *s, ds_jsonw *w) {
    ds_jsonw_arr_begin(w);
    for (int k = 0; k < s->n; k++) {
        if (s->pt[k].cross_step < 0) {
            ds_jsonw_null(w);
            continue;
        }
        ds_jsonw_arr_begin(w);
        ds_jsonw_int(w, s->pt[k].cross_step);
        ds_jsonw_num(w, s->pt[k].cross_tokens);
        ds_jsonw_arr_end(w);
    }
    ds_jsonw_arr_end(w);
}

int ds_sched_state_read(ds_sched *s, const void *json, const char *where) {
    const json_t *a = json;
    if (!json_is_array(a)) return ds_fail(DS_ERR, "schedule state: not an array: %s", where);
    if ((int)json_array_size(a) != s->n) return 0; /* a different schedule: no crossings to carry over */
    for (int k = 0; k < s->n; k++) {
        const json_t *e = json_array_get(a, (size_t)k);
        if (json_is_null(e)) {
            s->pt[k].cross_step = -1;
            continue;
        }
        if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_integer(json_array_get(e, 0)) ||
            !json_is_number(json_array_get(e, 1)))
            return ds_fail(DS_ERR, "schedule state: bad crossing %d: %s", k, where);
        s->pt[k].cross_step = json_integer_value(json_array_get(e, 0));
        s->pt[k].cross_tokens = json_number_value(json_array_get(e, 1));
    }
    return 0;
}
