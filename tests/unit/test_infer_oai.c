/* infer/oai.h: OpenAI request bodies (defaults, the names and forms OpenAI's clients send, refusals with
 * status and parameter) and the UTF-8 cut of streamed text. The server's behaviour end to end is
 * tests/bats/ds-generate-serve.bats and tests/ref/serve.bats; the parser is fuzzed (fuzz_oai_request). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "infer/oai.h"
#include "tap.h"

static const ds_oai_limits LIM = {.model = "m", .max_n = 8, .vocab = 100};

static int parse(ds_oai_kind k, const char *body, ds_oai_request *r, ds_oai_error *e) {
    return ds_oai_parse(k, body, strlen(body), &LIM, r, e);
}

TEST(chat_defaults_and_forms) {
    ds_oai_request r;
    ds_oai_error e;
    int rc = parse(DS_OAI_CHAT,
                   "{\"model\": \"m\", \"messages\": [{\"role\": \"developer\", \"content\": \"be brief\"}, {\"role\": "
                   "\"user\", \"content\": [{\"type\": \"text\", \"text\": \"he\"}, {\"type\": \"text\", \"text\": \"llo\"}]}, "
                   "{\"role\": \"assistant\", \"content\": null}], \"max_tokens\": 5, \"max_completion_tokens\": 7, \"top_p\": 0, "
                   "\"top_k\": -1, \"stop\": \"x\", \"unknown_key\": [1], \"presence_penalty\": 0, \"logit_bias\": {}}",
                   &r, &e);
    CHECK(rc == 0, "accepted (%d: %.200s)", rc, e.message);
    if (rc) return;
    CHECK(r.n_msgs == 3 && r.msgs[0].role == DS_ROLE_SYSTEM && r.msgs[1].role == DS_ROLE_USER &&
              r.msgs[2].role == DS_ROLE_ASSISTANT, "developer is a system message; roles in order");
    CHECK(r.msgs[1].len == 5 && !memcmp(r.msgs[1].content, "hello", 5), "text parts joined");
    CHECK(r.msgs[2].len == 0, "null assistant content is empty");
    CHECK(r.has_max_tokens && r.max_tokens == 7, "max_completion_tokens wins over max_tokens: %d", r.max_tokens);
    CHECK(r.has_top_p && r.top_p > 0 && r.top_p < 1e-6, "top_p 0: the most likely token alone (%g)", r.top_p);
    CHECK(r.has_top_k && r.top_k == 0, "top_k -1: off");
    CHECK(r.n == 1 && !r.stream && !r.logprobs && !r.has_temperature && !r.has_seed, "defaults");
    CHECK(r.n_stops == 1 && !strcmp(r.stops[0], "x"), "a stop string alone");
    ds_oai_request_free(&r);
}

TEST(completion_prompts) {
    ds_oai_request r;
    ds_oai_error e;
    int rc = parse(DS_OAI_COMPLETION, "{\"model\": \"m\", \"prompt\": [\"ab\", [1, 2, 3]], \"n\": 2, \"logprobs\": 3, "
                                      "\"seed\": -1, \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
                   &r, &e);
    CHECK(rc == 0, "accepted (%.200s)", e.message);
    if (rc) return;
    CHECK(r.n_prompts == 2 && r.prompts[0].text && r.prompts[0].len == 2 && !r.prompts[1].text &&
              r.prompts[1].n_ids == 3 && r.prompts[1].ids[2] == 3, "a text prompt and a token-id prompt");
    CHECK(r.logprobs && r.top_logprobs == 3, "logprobs N: the chosen tokens and N alternatives");
    CHECK(r.has_seed && r.seed == UINT64_MAX, "a negative seed wraps as an unsigned 64-bit value");
    CHECK(r.stream && r.include_usage, "stream with usage");
    ds_oai_request_free(&r);
    rc = parse(DS_OAI_COMPLETION, "{\"model\": \"m\", \"prompt\": [4, 5]}", &r, &e);
    CHECK(rc == 0 && r.n_prompts == 1 && r.prompts[0].n_ids == 2, "a list of ids is one prompt");
    ds_oai_request_free(&r);
}

TEST(refusals) {
    static const struct {
        ds_oai_kind k;
        const char *body;
        int status;
        const char *param, *code;
    } cases[] = {
        {DS_OAI_CHAT, "{\"model\": ", 400, "", NULL},
        {DS_OAI_CHAT, "[]", 400, "", NULL},
        {DS_OAI_CHAT, "{\"messages\": []}", 400, "model", NULL},
        {DS_OAI_CHAT, "{\"model\": \"gpt\", \"messages\": []}", 404, "model", "model_not_found"},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": []}", 400, "messages", NULL},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": \"s\"}]}", 400, "messages", NULL},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": 3}]}", 400, "messages[0]", NULL},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"temperature\": 2.01}", 400, "temperature", NULL},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"top_logprobs\": 2}", 400, "top_logprobs", NULL},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"n\": 9}", 400, "n", NULL},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tools\": [{}]}", 400, "tools", NULL},
        {DS_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"stream_options\": {}}", 400, "stream_options", NULL},
        {DS_OAI_COMPLETION, "{\"model\": \"m\", \"prompt\": [100]}", 400, "prompt", NULL},
        {DS_OAI_COMPLETION, "{\"model\": \"m\", \"prompt\": \"a\", \"max_tokens\": 1.5}", 400, "max_tokens", NULL},
        {DS_OAI_COMPLETION, "{\"model\": \"m\", \"prompt\": [\"a\", \"b\", \"c\"], \"n\": 3}", 400, "n", NULL},
        {DS_OAI_COMPLETION, "{\"model\": \"m\", \"prompt\": \"a\", \"best_of\": 2}", 400, "best_of", NULL},
        {DS_OAI_COMPLETION, "{\"model\": \"m\", \"prompt\": \"a\", \"frequency_penalty\": 0.5}", 400, "frequency_penalty", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ds_oai_request r;
        ds_oai_error e;
        int rc = parse(cases[i].k, cases[i].body, &r, &e);
        CHECK(rc == cases[i].status && e.status == rc && !strcmp(e.param, cases[i].param) &&
                  (cases[i].code ? e.code && !strcmp(e.code, cases[i].code) : !e.code) && e.message[0] && !r.root,
              "%.150s -> %d param '%.60s' (%.200s)", cases[i].body, rc, e.param, e.message);
    }
}

TEST(error_body) {
    ds_oai_error e;
    ds_oai_fail(&e, 404, "invalid_request_error", "model_not_found", "model", "no \"%s\"", "x");
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_oai_error_json(&e, &w);
    const char *want = "{\"error\":{\"message\":\"no \\\"x\\\"\",\"type\":\"invalid_request_error\",\"param\":\"model\","
                       "\"code\":\"model_not_found\"}}";
    CHECK(w.len == strlen(want) && !memcmp(w.buf, want, w.len), "OpenAI's error shape: %.*s", (int)w.len, w.buf);
    ds_jsonw_free(&w);
}

TEST(utf8_cut) {
    static const struct {
        const char *s;
        size_t want;
    } cases[] = {
        {"abc", 3},
        {"a\xc3", 1},             /* the lead byte of a 2-byte character waits */
        {"a\xc3\xa9", 3},         /* complete */
        {"a\xe2\x82", 1},         /* 2 of 3 bytes */
        {"a\xe2\x82\xac", 4},     /* the euro sign, complete */
        {"\xf0\x9f\x98", 0},      /* 3 of 4 bytes of an emoji */
        {"\xf0\x9f\x98\x80", 4},
        {"a\x80", 2},             /* a stray continuation byte is not held (it will never complete) */
        {"a\xff", 2},             /* nor an invalid byte */
        {"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = ds_utf8_complete_prefix(cases[i].s, strlen(cases[i].s));
        CHECK(got == cases[i].want, "case %zu: %zu bytes sendable, want %zu", i, got, cases[i].want);
    }
}

TAP_MAIN()
