/* gencfg.h — a checkpoint's generation_config.json as ds-generate's sampling defaults.
 *
 * Owns: reading the keys of Hugging Face's GenerationConfig that decide what generate() samples —
 * do_sample, temperature, top_k, top_p, max_new_tokens, max_length, eos_token_id (an int or a list:
 * several stop ids) — and resolving them against the built-in defaults and the options a user gave,
 * with where each value came from. Semantics are transformers': do_sample false (also when absent,
 * GenerationConfig's default) is greedy whatever the temperature says; top_k 0 and top_p 1 are off;
 * max_new_tokens wins over max_length; max_length counts the prompt. null is "not set", as
 * transformers writes it. A present key of the wrong type or out of range is an error naming the file
 * and the key (transformers fails on those later, at generate). Other keys (repetition_penalty, num_beams,
 * ...) are not ours to honour and are ignored, as transformers ignores keys it does not know.
 */
#ifndef DS_INFER_GENCFG_H
#define DS_INFER_GENCFG_H

#include <stddef.h>
#include <stdint.h>

#define DS_GEN_MAX_EOS 16

/* A set of token ids that end a sequence as EOS does. */
typedef struct {
    int n;
    int32_t id[DS_GEN_MAX_EOS];
} ds_eos_ids;

int ds_eos_ids_has(const ds_eos_ids *e, int32_t tok);

/* What the file says; has_* is 0 for a key absent or null. */
typedef struct {
    int has_do_sample, do_sample;
    int has_temperature, has_top_k, has_top_p, has_max_new, has_max_length, has_eos;
    double temperature, top_p;
    int top_k, max_new, max_length;
    ds_eos_ids eos;
} ds_gen_config;

/* Parse generation_config.json text. Errors: DS_ERR "<where>: <key>: <what is wrong>" (bad JSON:
 * io/json.h's message). */
int ds_gen_config_parse(const char *text, size_t len, const char *where, ds_gen_config *out);

/* The settings generation runs with, and where each came from ("default", "generation_config.json",
 * "config.json", or the option's name). */
typedef struct {
    double temperature; /* 0: greedy */
    int top_k;
    double top_p;
    int max_new;
    int max_length;     /* 0: off; else prompt + new tokens stop there (transformers' max_length) */
    ds_eos_ids eos;     /* empty: none */
    const char *src_temperature, *src_top_k, *src_top_p, *src_max_new, *src_eos;
} ds_gen_settings;

/* Which settings the user gave (they win over the file). */
enum { DS_GIVEN_TEMPERATURE = 1, DS_GIVEN_TOP_K = 2, DS_GIVEN_TOP_P = 4, DS_GIVEN_MAX_NEW = 8, DS_GIVEN_EOS = 16 };

/* Start from *s (the built-in or given values, sources set by the caller) and take from f (NULL: no
 * file) every value the user did not give (bits of `given`). do_sample false makes the temperature 0
 * unless the temperature was given. The file's eos ids replace s->eos unless DS_GIVEN_EOS. */
void ds_gen_config_apply(const ds_gen_config *f, unsigned given, ds_gen_settings *s);

/* One line for the log: "temperature 0.6 (generation_config.json), top_k 0 (default), ...". */
void ds_gen_settings_describe(const ds_gen_settings *s, char *buf, size_t n);

#endif
