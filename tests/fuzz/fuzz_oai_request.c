/* libFuzzer harness: OpenAI request bodies (infer/oai.h), the path every HTTP request to ds-generate
 * --serve takes first. The first byte picks chat or completions; the rest is the body. Any input gives
 * either a request whose values are in the documented ranges (and whose conversation the chat template
 * renders), or an error with a 4xx/5xx status whose JSON body reads back with the same message. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "infer/oai.h"
#include "tok/chat.h"

static ds_chat_template tpl;
static int have_tpl;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    if (!have_tpl) {
        if (ds_chat_template_parse(&tpl, ds_chat_template_default_text, strlen(ds_chat_template_default_text), "built-in"))
            abort();
        have_tpl = 1;
    }
    const ds_oai_kind kind = data[0] & 1 ? DS_OAI_COMPLETION : DS_OAI_CHAT;
    const ds_oai_limits lim = {.model = "m", .max_n = 8, .vocab = 1000};
    ds_oai_request r;
    ds_oai_error e;
    int rc = ds_oai_parse(kind, (const char *)data + 1, size - 1, &lim, &r, &e);
    if (rc) {
        if (rc != e.status || (rc != 400 && rc != 404 && rc != 500) || !e.message[0] || !e.type) abort();
        if (r.root || r.msgs || r.prompts) abort(); /* a refused request holds nothing */
        ds_jsonw w;
        ds_jsonw_init(&w);
        ds_oai_error_json(&e, &w);
        json_t *j = json_loadb(w.buf, w.len, 0, NULL);
        json_t *msg = j ? json_object_get(json_object_get(j, "error"), "message") : NULL;
        if (!msg || !json_is_string(msg)) abort();
        json_decref(j);
        ds_jsonw_free(&w);
    } else {
        if (r.n < 1 || r.n > lim.max_n) abort();
        if (r.has_max_tokens && r.max_tokens < 1) abort();
        if (r.has_temperature && !(r.temperature >= 0 && r.temperature <= 2)) abort();
        if (r.has_top_p && !(r.top_p > 0 && r.top_p <= 1)) abort();
        if (r.has_top_k && r.top_k < 0) abort();
        if (r.n_stops < 0 || r.n_stops > DS_OAI_MAX_STOPS || r.top_logprobs < 0 || r.top_logprobs > DS_OAI_MAX_TOP_LOGPROBS) abort();
        for (int i = 0; i < r.n_stops; i++)
            if (!r.stops[i]) abort();
        if (kind == DS_OAI_CHAT) {
            if (r.n_msgs < 1) abort();
            ds_chat_rendered out;
            if (ds_chat_render(&tpl, r.msgs, r.n_msgs, 1, &out)) abort();
            ds_chat_rendered_free(&out);
        } else {
            if (r.n_prompts < 1 || r.n_prompts * r.n > lim.max_n) abort();
            for (int i = 0; i < r.n_prompts; i++) {
                const ds_oai_prompt *p = &r.prompts[i];
                if (!p->text && p->n_ids < 1) abort();
                for (int k = 0; !p->text && k < p->n_ids; k++)
                    if (p->ids[k] < 0 || p->ids[k] >= lim.vocab) abort();
            }
        }
        ds_oai_request_free(&r);
    }
    /* the streaming cut: never more than the text, never holds back more than an incomplete character */
    size_t k = ds_utf8_complete_prefix((const char *)data, size);
    if (k > size || size - k > 3) abort();
    return 0;
}
