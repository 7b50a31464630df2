/* libFuzzer harness: chat template files. Any input gives a clean error or a template that renders
 * conversations whose spans tile the text exactly, with the content spans holding the messages. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tok/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds_chat_template t;
    if (ds_chat_template_parse(&t, (const char *)data, size, "fuzz") != 0) return 0;
    const ds_chat_msg m[] = {{DS_ROLE_SYSTEM, "sys", 3}, {DS_ROLE_USER, "q{content}", 10},
                             {DS_ROLE_ASSISTANT, "", 0}, {DS_ROLE_USER, "x", 1}};
    for (int gen = 0; gen < 2; gen++) {
        ds_chat_rendered r;
        if (ds_chat_render(&t, m, 4, gen, &r) != 0) continue;
        size_t covered = 0, content = 0;
        for (int i = 0; i < r.n_spans; i++) {
            if (r.spans[i].off != covered || r.spans[i].len == 0) abort();
            covered += r.spans[i].len;
            if (r.spans[i].content) content += r.spans[i].len;
        }
        if (covered != r.len || strlen(r.text) > r.len) abort();
        if (content != 3 + 10 + 0 + 1) abort();
        ds_chat_rendered_free(&r);
    }
    ds_chat_template_free(&t);
    return 0;
}
