/* libFuzzer harness: Hugging Face chat templates — the input read as a tokenizer_config.json and as a
 * bare Jinja template. Any input gives a clean error or a template; a template that is accepted writes
 * back to Jinja that reads again as the same six fields and renders the same conversation. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "tok/chat.h"

static int same_fields(const ds_chat_template *a, const ds_chat_template *b) {
    const char *const fa[] = {a->bos, a->system, a->system_sep, a->user, a->assistant, a->generation};
    const char *const fb[] = {b->bos, b->system, b->system_sep, b->user, b->assistant, b->generation};
    for (int i = 0; i < 6; i++)
        if (strcmp(fa[i] ? fa[i] : "", fb[i] ? fb[i] : "")) return 0;
    return 1;
}

static void check_round_trip(const ds_chat_template *t) {
    char *jinja = NULL;
    if (ds_chat_template_to_jinja(t, &jinja) != 0) abort(); /* an accepted template can always be written */
    ds_chat_template back;
    if (ds_chat_template_from_jinja(&back, jinja, strlen(jinja), "fuzz:round-trip") != 0) abort();
    if (!same_fields(t, &back)) abort();
    const ds_chat_msg m[] = {{DS_ROLE_SYSTEM, "s", 1}, {DS_ROLE_USER, "q", 1}, {DS_ROLE_ASSISTANT, "a", 1}};
    ds_chat_rendered r1, r2;
    if (ds_chat_render(t, m, 3, 1, &r1) == 0) {
        if (ds_chat_render(&back, m, 3, 1, &r2) != 0) abort();
        if (r1.len != r2.len || memcmp(r1.text, r2.text, r1.len)) abort();
        ds_chat_rendered_free(&r2);
        ds_chat_rendered_free(&r1);
    }
    ds_chat_template_free(&back);
    free(jinja);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds_chat_template t;
    if (ds_chat_template_from_hf_config(&t, (const char *)data, size, "fuzz:tokenizer_config") == 0) {
        check_round_trip(&t);
        ds_chat_template_free(&t);
    }
    ds_err_clear();
    if (ds_chat_template_from_jinja(&t, (const char *)data, size, "fuzz:jinja") == 0) {
        check_round_trip(&t);
        ds_chat_template_free(&t);
    }
    ds_err_clear();
    return 0;
}
