/* libFuzzer harness: generation_config.json (infer/gencfg.h). Any input gives a clean error or values
 * in the documented ranges, which resolve to settings the sampler accepts and describe in one line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "infer/gencfg.h"
#include "infer/sampler.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds_gen_config g;
    if (ds_gen_config_parse((const char *)data, size, "fuzz", &g)) return 0;
    if (g.has_temperature && !(g.temperature >= 0)) abort();
    if (g.has_top_p && !(g.top_p > 0 && g.top_p <= 1)) abort();
    if ((g.has_top_k && g.top_k < 0) || (g.has_max_new && g.max_new < 1) || (g.has_max_length && g.max_length < 1)) abort();
    if (g.eos.n < 0 || g.eos.n > DS_GEN_MAX_EOS || (g.has_eos != (g.eos.n > 0) && g.eos.n)) abort();
    for (int i = 0; i < g.eos.n; i++)
        if (g.eos.id[i] < 0) abort();
    for (unsigned given = 0; given < 32; given += 31) {
        ds_gen_settings s = {.temperature = 1, .top_p = 1, .max_new = 128, .src_temperature = "default",
                             .src_top_k = "default", .src_top_p = "default", .src_max_new = "default", .src_eos = "config.json"};
        ds_gen_config_apply(&g, given, &s);
        ds_sampling sp = {s.temperature, s.top_k, s.top_p, 0};
        if (ds_sampling_check(&sp) || s.max_new < 1 || s.max_length < 0) abort();
        if (!g.do_sample && !given && s.temperature != 0) abort(); /* do_sample false: greedy */
        char line[512];
        ds_gen_settings_describe(&s, line, sizeof line);
        if (!memchr(line, 0, sizeof line)) abort();
    }
    return 0;
}
