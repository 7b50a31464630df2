/* libFuzzer harness: config.json. Any input gives a clean error or a config that validates, whose
 * parameter counts do not overflow, and that survives a save/load round trip unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds_config c, d;
    if (ds_config_parse(&c, (const char *)data, size, "fuzz")) return 0;
    ds_param_counts p;
    ds_config_counts(&c, &p);
    if (p.total < 0 || p.activated < 0 || p.activated > p.total || p.mtp < 0) abort();
    char *text;
    if (ds_config_to_json(&c, &text)) abort();
    if (ds_config_parse(&d, text, strlen(text), "fuzz round trip")) abort();
    if (memcmp(&c, &d, offsetof(ds_config, json))) abort();
    char *again;
    if (ds_config_to_json(&d, &again) || strcmp(text, again)) abort(); /* writing is a fixed point */
    free(text);
    free(again);
    ds_config_free(&c);
    ds_config_free(&d);
    return 0;
}
