#include "infer/gencfg.h"

#include "core/err.h"
#include "io/json.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

int ds_eos_ids_has(const ds_eos_ids *e, int32_t tok) {
    for (int i = 0; i < e->n; i++)
        if (e->id[i] == tok) return 1;
    return 0;
}

/* A key present and not null. */
static json_t *field(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int get_int(json_t *o, const char *key, const char *where, long long lo, int *has, int *out) {
    json_t *v = field(o, key);
    if (!v) return DS_OK;
    if (!json_is_integer(v)) return ds_fail(DS_ERR, "%s: %s: expected an integer", where, key);
    long long x = json_integer_value(v);
    if (x < lo || x > 1000000000) return ds_fail(DS_ERR, "%s: %s: %lld is out of range [%lld, 1e9]", where, key, x, lo);
    *has = 1, *out = (int)x;
    return DS_OK;
}

static int get_num(json_t *o, const char *key, const char *where, int *has, double *out) {
    json_t *v = field(o, key);
    if (!v) return DS_OK;
    if (!json_is_number(v)) return ds_fail(DS_ERR, "%s: %s: expected a number", where, key);
    *has = 1, *out = json_number_value(v);
    return DS_OK;
}

static int get_eos(json_t *o, const char *where, ds_gen_config *g) {
    json_t *v = field(o, "eos_token_id");
    if (!v) return DS_OK;
    if (json_is_array(v) && json_array_size(v) > DS_GEN_MAX_EOS)
        return ds_fail(DS_ERR, "%s: eos_token_id: more than %d ids", where, DS_GEN_MAX_EOS);
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT32_MAX)
            return ds_fail(DS_ERR, "%s: eos_token_id: expected a token id or a list of token ids", where);
        g->eos.id[i] = (int32_t)json_integer_value(x);
    }
    g->eos.n = (int)n, g->has_eos = 1;
    return DS_OK;
}

int ds_gen_config_parse(const char *text, size_t len, const char *where, ds_gen_config *out) {
    memset(out, 0, sizeof *out);
    json_t *o = ds_json_parse(text, len, "generation_config.json", where);
    if (!o) return DS_ERR;
    int rc = DS_OK;
    if (!json_is_object(o)) rc = ds_fail(DS_ERR, "%s: expected a JSON object", where);
    json_t *ds = rc ? NULL : field(o, "do_sample");
    if (ds && !json_is_boolean(ds)) rc = ds_fail(DS_ERR, "%s: do_sample: expected true or false", where);
    else if (ds) out->has_do_sample = 1, out->do_sample = json_is_true(ds);
    if (!rc) rc = get_num(o, "temperature", where, &out->has_temperature, &out->temperature);
    if (!rc && out->has_temperature && !(out->temperature >= 0 && isfinite(out->temperature)))
        rc = ds_fail(DS_ERR, "%s: temperature: %g is not >= 0", where, out->temperature);
    if (!rc) rc = get_num(o, "top_p", where, &out->has_top_p, &out->top_p);
    if (!rc && out->has_top_p && !(out->top_p > 0 && out->top_p <= 1))
        rc = ds_fail(DS_ERR, "%s: top_p: %g is not in (0, 1]", where, out->top_p);
    if (!rc) rc = get_int(o, "top_k", where, 0, &out->has_top_k, &out->top_k);
    if (!rc) rc = get_int(o, "max_new_tokens", where, 1, &out->has_max_new, &out->max_new);
    if (!rc) rc = get_int(o, "max_length", where, 1, &out->has_max_length, &out->max_length);
    if (!rc) rc = get_eos(o, where, out);
    json_decref(o);
    return rc;
}

void ds_gen_config_apply(const ds_gen_config *f, unsigned given, ds_gen_settings *s) {
    static const char *const file = "generation_config.json";
    if (!f) return;
    if (!(given & DS_GIVEN_TEMPERATURE)) {
        /* transformers: do_sample false (its default) is greedy search whatever the temperature */
        if (!f->do_sample) s->temperature = 0, s->src_temperature = f->has_do_sample ? file : "generation_config.json (no do_sample)";
        else if (f->has_temperature) s->temperature = f->temperature, s->src_temperature = file;
    }
    if (!(given & DS_GIVEN_TOP_K) && f->has_top_k) s->top_k = f->top_k, s->src_top_k = file;
    if (!(given & DS_GIVEN_TOP_P) && f->has_top_p) s->top_p = f->top_p, s->src_top_p = file;
    if (!(given & DS_GIVEN_MAX_NEW)) {
        if (f->has_max_new) s->max_new = f->max_new, s->max_length = 0, s->src_max_new = file;
        else if (f->has_max_length) s->max_length = f->max_length, s->src_max_new = file;
    }
    if (!(given & DS_GIVEN_EOS) && f->has_eos) s->eos = f->eos, s->src_eos = file;
}

void ds_gen_settings_describe(const ds_gen_settings *s, char *buf, size_t n) {
    char len[96], eos[160] = "none";
    if (s->max_length) snprintf(len, sizeof len, "max_length %d (prompt included)", s->max_length);
    else snprintf(len, sizeof len, "max_new %d", s->max_new);
    for (int i = 0, k = 0; i < s->eos.n && k < (int)sizeof eos - 16; i++)
        k += snprintf(eos + k, sizeof eos - k, "%s%d", i ? "," : "", (int)s->eos.id[i]);
    snprintf(buf, n, "temperature %g%s (%s), top_k %d (%s), top_p %g (%s), %s (%s), eos %s (%s)", s->temperature,
             s->temperature == 0 ? " = greedy" : "", s->src_temperature, s->top_k, s->src_top_k, s->top_p,
             s->src_top_p, len, s->src_max_new, eos, s->src_eos);
}
