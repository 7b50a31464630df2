/* Unit tests for lib/tok/chat: the built-in template equals share/chat_template, rendering in the
 * DeepSeek-V3 format (spec section 8.1) with system messages gathered after BOS, the content/train
 * spans SFT relies on, and template-file errors that name the line. */
#include "tap.h"

#include "core/err.h"
#include "core/file.h"
#include "tok/chat.h"
#include "tok/train.h"

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"
#define USER "<｜User｜>"
#define ASSISTANT "<｜Assistant｜>"

static ds_chat_msg msg(ds_chat_role r, const char *s) { return (ds_chat_msg){r, s, strlen(s)}; }

TEST(builtin_equals_share_file) {
    const char *root = getenv("DS_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/share/chat_template", root ? root : ".");
    char *data = NULL;
    size_t len = 0;
    int rc = ds_read_file(path, &data, &len, 0);
    CHECK(rc == 0 && len == strlen(ds_chat_template_default_text) && !memcmp(data, ds_chat_template_default_text, len),
          "share/chat_template is the built-in template byte for byte");
    free(data);
    ds_chat_template t;
    CHECK(ds_chat_template_load(&t, path) == 0 && !strcmp(t.bos, BOS) && !strcmp(t.system_sep, "\n\n"),
          "the file parses (escapes decoded)");
    ds_chat_template_free(&t);
}

TEST(renders_deepseek_v3_format) {
    ds_chat_template t;
    CHECK(ds_chat_template_load(&t, NULL) == 0, "built-in template loads");
    ds_chat_msg m[] = {msg(DS_ROLE_SYSTEM, "S1"), msg(DS_ROLE_USER, "hi <｜User｜>"), msg(DS_ROLE_ASSISTANT, "yo"),
                       msg(DS_ROLE_SYSTEM, "S2"), msg(DS_ROLE_USER, "q")};
    ds_chat_rendered r;
    CHECK(ds_chat_render(&t, m, 5, 1, &r) == 0, "render");
    const char *want = BOS "S1\n\nS2" USER "hi <｜User｜>" ASSISTANT "yo" EOS USER "q" ASSISTANT;
    CHECK(r.len == strlen(want) && !strcmp(r.text, want), "text: system gathered after BOS, generation prompt last");
    char content[256] = "", train[256] = "";
    size_t covered = 0;
    int contiguous = 1;
    for (int i = 0; i < r.n_spans; i++) {
        contiguous &= r.spans[i].off == covered && r.spans[i].len > 0;
        covered += r.spans[i].len;
        if (r.spans[i].content) {
            strncat(content, r.text + r.spans[i].off, r.spans[i].len);
            strcat(content, "|");
        }
        if (r.spans[i].train) strncat(train, r.text + r.spans[i].off, r.spans[i].len);
    }
    CHECK(contiguous && covered == r.len, "spans cover the text in order");
    CHECK(!strcmp(content, "S1|S2|hi <｜User｜>|yo|q|"), "content spans are the message texts (user text literal)");
    CHECK(!strcmp(train, "yo" EOS), "trained bytes: assistant content and its closing EOS");
    ds_chat_rendered_free(&r);
    ds_chat_msg one = msg(DS_ROLE_USER, "2+2=");
    CHECK(ds_chat_render(&t, &one, 1, 1, &r) == 0 && !strcmp(r.text, BOS USER "2+2=" ASSISTANT), "single prompt");
    ds_chat_rendered_free(&r);
    CHECK(ds_chat_render(&t, &one, 1, 0, &r) == 0 && !strcmp(r.text, BOS USER "2+2="), "no generation prompt");
    ds_chat_rendered_free(&r);
    CHECK(ds_chat_render(&t, m, 0, 1, &r) == DS_ERR && strstr(ds_errmsg(), "no messages"), "empty conversation");
    ds_chat_template_free(&t);
    CHECK(ds_chat_role_from_name("assistant") == DS_ROLE_ASSISTANT && ds_chat_role_from_name("tool") == -1, "roles");
}

static const char *parse_error(const char *text) {
    ds_chat_template t;
    if (ds_chat_template_parse(&t, text, strlen(text), "T") == 0) {
        ds_chat_template_free(&t);
        return "";
    }
    return ds_errmsg();
}

TEST(template_errors_name_the_line) {
    const char *full = "bos=\"\"\nsystem=\"{content}\"\nsystem_sep=\"\"\nuser=\"{content}\"\nassistant=\"{content}\"\n";
    char buf[512];
    snprintf(buf, sizeof buf, "%s", full);
    CHECK(strstr(parse_error(buf), "missing key generation: T"), "missing key: %s", ds_errmsg());
    snprintf(buf, sizeof buf, "%sgeneration=\"\"\nuser=\"{content}\"\n", full);
    CHECK(strstr(parse_error(buf), "line 7: user given twice: T"), "duplicate: %s", ds_errmsg());
    snprintf(buf, sizeof buf, "%sgeneration=\"\"\nfoo=\"x\"\n", full);
    CHECK(strstr(parse_error(buf), "line 7: unknown key 'foo'"), "unknown key: %s", ds_errmsg());
    CHECK(strstr(parse_error("# c\n\nuser = \"no placeholder\"\n"), "line 3: user must contain {content} exactly once"),
          "placeholder: %s", ds_errmsg());
    CHECK(strstr(parse_error("bos = unquoted\n"), "line 1: bos: value is not a JSON string"), "bad value: %s",
          ds_errmsg());
    CHECK(strstr(parse_error("bos \"x\"\n"), "line 1: expected KEY = \"text\""), "no '=': %s", ds_errmsg());
    CHECK(strstr(parse_error("bos = \"a\\u0000b\"\n"), "not a JSON string"), "NUL in a value: %s", ds_errmsg());
    snprintf(buf, sizeof buf, "%sgeneration=\"\"\n", full);
    CHECK(parse_error(buf)[0] == 0, "a complete minimal template parses");
}

/* A small tokenizer with DeepSeek's special tokens, trained on a few sentences. */
static ds_tokenizer *small_tokenizer(void) {
    ds_tok_trainer *tr = NULL;
    ds_tokenizer *t = NULL;
    const char *corpus = "hello there, how are you? the user said hello. you are welcome. yo yo yo.\n";
    ds_tok_train_opts o = {.vocab_size = 300, .specials = ds_tok_default_specials,
                           .n_specials = ds_tok_n_default_specials};
    if (ds_tok_trainer_new(&tr) || ds_tok_trainer_feed(tr, corpus, strlen(corpus)) || ds_tok_trainer_finish(tr, &o, &t))
        printf("# tokenizer: %s\n", ds_errmsg());
    ds_tok_trainer_free(tr);
    return t;
}

/* The Jinja form reads back as the same six fields (quotes, backslashes, '#', line breaks and non-ASCII
 * in them included); a changed copy, and foreign Jinja, are refused with the hint's wording. */
TEST(jinja_form_round_trip_and_refusals) {
    static const char text[] = "bos = \"<B>\"\nsystem = \"[s #} '\\\\ ü]{content}\"\nsystem_sep = \"\\n\\t\"\n"
                               "user = \"\\nQ: {content}\"\nassistant = \"A: {content}#}\"\ngeneration = \"A:\"\n";
    ds_chat_template t, u;
    CHECK(ds_chat_template_parse(&t, text, sizeof text - 1, "t") == 0, "parse: %s", ds_errmsg());
    char *j = NULL;
    CHECK(ds_chat_template_to_jinja(&t, &j) == 0 && j, "to_jinja");
    int rc = ds_chat_template_from_jinja(&u, j, strlen(j), "j");
    CHECK(rc == 0 && !strcmp(u.bos, t.bos) && !strcmp(u.system, t.system) && !strcmp(u.system_sep, t.system_sep) &&
              !strcmp(u.user, t.user) && !strcmp(u.assistant, t.assistant) && !strcmp(u.generation, t.generation),
          "from_jinja: %s", rc ? ds_errmsg() : "");
    if (!rc) ds_chat_template_free(&u);
    char *q = strstr(j, "'A:'");
    CHECK(q != NULL, "the generation literal");
    if (q) q[2] = 'B';
    CHECK(ds_chat_template_from_jinja(&u, j, strlen(j), "j") == DS_ERR &&
              !strcmp(ds_errmsg(), "chat template: a Jinja template that is neither DeepSeek-V3's nor one written by these tools: j"),
          "edited: %s", ds_errmsg());
    const char other[] = "{% for m in messages %}{{ m.content }}{% endfor %}";
    CHECK(ds_chat_template_from_jinja(&u, other, sizeof other - 1, "o") == DS_ERR, "foreign Jinja refused");
    free(j);
    ds_chat_template_free(&t);
}

TEST(encode_marks_assistant_tokens) {
    ds_tokenizer *tok = small_tokenizer();
    CHECK(tok != NULL, "tokenizer trained");
    if (!tok) return;
    ds_chat_template t;
    ds_chat_template_load(&t, NULL);
    ds_chat_msg m[] = {msg(DS_ROLE_USER, "hello <｜User｜> there"), msg(DS_ROLE_ASSISTANT, "yo yo"),
                       msg(DS_ROLE_USER, "how are you?")};
    ds_chat_rendered r;
    ds_ids ids = {0};
    ds_bytes mask = {0};
    int rc = ds_chat_render(&t, m, 3, 1, &r) || ds_chat_encode(tok, &r, &ids, &mask);
    CHECK(rc == 0 && ids.n == mask.n && ids.n > 8, "encoded %zu tokens with a mask of %zu", ids.n, mask.n);
    const int64_t bos = ds_tok_token_id(tok, BOS), eos = ds_tok_token_id(tok, EOS), user = ds_tok_token_id(tok, USER),
                  asst = ds_tok_token_id(tok, ASSISTANT);
    int n_user = 0, n_asst = 0;
    for (size_t i = 0; i < ids.n; i++) {
        n_user += ids.v[i] == (uint32_t)user;
        n_asst += ids.v[i] == (uint32_t)asst;
    }
    CHECK(ids.v[0] == (uint32_t)bos && ids.v[ids.n - 1] == (uint32_t)asst, "starts with BOS, ends with the generation prompt");
    CHECK(n_user == 2 && n_asst == 2, "special tokens only from the template: %d User, %d Assistant (user text literal)",
          n_user, n_asst);
    ds_ids trained = {0};
    for (size_t i = 0; i < ids.n; i++)
        if (mask.v[i]) {
            if (trained.n == trained.cap) {
                trained.cap = trained.cap ? 2 * trained.cap : 16;
                trained.v = realloc(trained.v, trained.cap * sizeof *trained.v);
            }
            trained.v[trained.n++] = ids.v[i];
        }
    ds_bytes text = {0};
    rc = ds_tok_decode(tok, trained.v, trained.n, &text);
    CHECK(rc == 0 && text.n == strlen("yo yo" EOS) && !memcmp(text.v, "yo yo" EOS, text.n) &&
              trained.v[trained.n - 1] == (uint32_t)eos,
          "masked tokens decode to the assistant content and its closing EOS");
    ds_bytes all = {0};
    ds_tok_decode(tok, ids.v, ids.n, &all);
    CHECK(all.n == r.len && !memcmp(all.v, r.text, r.len), "the ids decode back to the rendered text");
    ds_bytes_free(&all);
    ds_bytes_free(&text);
    ds_ids_free(&trained);
    ds_ids_free(&ids);
    ds_bytes_free(&mask);
    ds_chat_rendered_free(&r);
    ds_chat_template_free(&t);
    ds_tok_free(tok);
}

TAP_MAIN()
