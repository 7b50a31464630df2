/* Unit tests for io/jsonl: line numbers, long lines, CRLF, BOM, blank lines, files and memory, and
 * the record shapes of design.md 4.4 with every validation message. */
#include "tap.h"

#include "core/err.h"
#include "io/jsonl.h"

#include <stdlib.h>
#include <unistd.h>

static const char *ex_err(const char *text, int flags) {
    ds_jsonl *r;
    ds_jsonl_open_memory(&r, text, strlen(text), "t.jsonl");
    ds_example ex;
    ds_err_clear();
    int rc;
    while ((rc = ds_jsonl_next_example(r, &ex, flags)) == 0 && ex.obj) ds_example_free(&ex);
    ds_jsonl_close(r);
    return rc ? ds_errmsg() : "(no error)";
}

TEST(lines_numbers_crlf_bom_blank) {
    const char text[] = "\xEF\xBB\xBF{\"a\":1}\r\n\n   \r\n{\"a\":2}\n\t\n{\"a\":3}"; /* no final newline */
    ds_jsonl *r;
    ds_jsonl_open_memory(&r, text, sizeof text - 1, "m");
    json_t *o;
    long lines[3];
    int got = 0, vals[3];
    while (ds_jsonl_next(r, &o) == 0 && o) {
        vals[got] = (int)json_integer_value(json_object_get(o, "a"));
        lines[got++] = ds_jsonl_line(r);
        json_decref(o);
    }
    CHECK(got == 3 && vals[0] == 1 && vals[1] == 2 && vals[2] == 3, "three objects (%d)", got);
    CHECK(lines[0] == 1 && lines[1] == 4 && lines[2] == 6, "line numbers count blank lines: %ld %ld %ld", lines[0], lines[1],
          lines[2]);
    ds_jsonl_close(r);

    /* the same from a file, with a 3 MB line */
    char path[64];
    snprintf(path, sizeof path, "jsonl-%d.jsonl", (int)getpid());
    FILE *f = fopen(path, "wb");
    fputs("{\"x\":\"", f);
    for (int i = 0; i < 3000000; i++) fputc('a' + i % 26, f);
    fputs("\"}\r\n\r\n{\"x\":\"short\"}\n", f);
    fclose(f);
    CHECK(ds_jsonl_open(&r, path) == 0, "file opens");
    CHECK(ds_jsonl_next(r, &o) == 0 && o && json_string_length(json_object_get(o, "x")) == 3000000, "a 3 MB line");
    json_decref(o);
    CHECK(ds_jsonl_next(r, &o) == 0 && o && ds_jsonl_line(r) == 3 && !strcmp(json_string_value(json_object_get(o, "x")), "short"),
          "then line 3");
    json_decref(o);
    CHECK(ds_jsonl_next(r, &o) == 0 && !o, "end");
    CHECK(ds_jsonl_next(r, &o) == 0 && !o, "end stays the end");
    ds_jsonl_close(r);
    unlink(path);
    CHECK(ds_jsonl_open(&r, "/nonexistent.jsonl") == DS_ERR &&
              !strcmp(ds_errmsg(), "cannot open: No such file or directory: /nonexistent.jsonl"),
          "missing file: %s", ds_errmsg());
}

TEST(raw_lines_keep_nuls) {
    const char text[] = "a\0b\nc";
    ds_jsonl *r;
    ds_jsonl_open_memory(&r, text, sizeof text - 1, "m");
    const char *line;
    size_t len;
    CHECK(ds_jsonl_next_line(r, &line, &len) == 0 && len == 3 && !memcmp(line, "a\0b", 3), "NUL inside a line");
    CHECK(ds_jsonl_next_line(r, &line, &len) == 0 && len == 1 && line[0] == 'c', "last line without newline");
    CHECK(ds_jsonl_next_line(r, &line, &len) == 0 && !line, "end");
    ds_jsonl_close(r);
}

TEST(sft_records) {
    const char text[] = "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"2+2?\"},"
                        "{\"role\":\"assistant\",\"content\":\"4\\u0000!\"}],\"id\":7}\n";
    ds_jsonl *r;
    ds_jsonl_open_memory(&r, text, sizeof text - 1, "m");
    ds_example ex;
    int rc = ds_jsonl_next_example(r, &ex, DS_EX_SFT);
    CHECK(rc == 0 && ex.obj && ex.n_messages == 3 && ex.messages[0].role == DS_JSONL_SYSTEM &&
              ex.messages[2].role == DS_JSONL_ASSISTANT && ex.messages[2].len == 3 && !memcmp(ex.messages[2].content, "4\0!", 3) &&
              !ex.prompt && !ex.answer && ex.line == 1 && json_integer_value(json_object_get(ex.obj, "id")) == 7,
          "parsed: %s", ds_errmsg());
    ds_example_free(&ex);
    CHECK(ds_jsonl_next_example(r, &ex, DS_EX_SFT) == 0 && !ex.obj, "end");
    ds_jsonl_close(r);
}

/* Several system messages, anywhere: DeepSeek-V3's template gathers them after BOS (joined by a blank
 * line), and so does ours (tok/chat.h); the records keep them where they were. */
TEST(several_system_messages) {
    const char text[] = "{\"messages\":[{\"role\":\"system\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"q\"},"
                        "{\"role\":\"system\",\"content\":\"b\"},{\"role\":\"assistant\",\"content\":\"r\"}]}\n";
    ds_jsonl *r;
    ds_jsonl_open_memory(&r, text, sizeof text - 1, "m");
    ds_example ex;
    int rc = ds_jsonl_next_example(r, &ex, DS_EX_SFT);
    CHECK(rc == 0 && ex.n_messages == 4 && ex.messages[0].role == DS_JSONL_SYSTEM && ex.messages[2].role == DS_JSONL_SYSTEM &&
              ex.messages[2].len == 1 && ex.messages[2].content[0] == 'b',
          "parsed: %s", rc ? ds_errmsg() : "");
    if (!rc) ds_example_free(&ex);
    ds_jsonl_close(r);
}

TEST(prompt_records) {
    const char text[] = "{\"prompt\":\"2+2=\",\"answer\":\"4\"}\n{\"prompt\":\"3*3=\",\"answer\":9}\n"
                        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"answer\":\"hello\"}\n{\"prompt\":\"x\"}\n";
    ds_jsonl *r;
    ds_jsonl_open_memory(&r, text, sizeof text - 1, "m");
    ds_example ex;
    CHECK(ds_jsonl_next_example(r, &ex, DS_EX_PROMPT) == 0 && ex.prompt && !strcmp(ex.prompt, "2+2=") && ex.answer_len == 1 &&
              !strcmp(ex.answer, "4"),
          "prompt + answer");
    ds_example_free(&ex);
    CHECK(ds_jsonl_next_example(r, &ex, DS_EX_PROMPT) == 0 && !strcmp(ex.answer, "9"), "an integer answer as text");
    ds_example_free(&ex);
    CHECK(ds_jsonl_next_example(r, &ex, DS_EX_PROMPT | DS_EX_ANSWER) == 0 && ex.n_messages == 1 && !ex.prompt &&
              !strcmp(ex.answer, "hello"),
          "messages + answer");
    ds_example_free(&ex);
    CHECK(ds_jsonl_next_example(r, &ex, DS_EX_PROMPT) == 0 && !ex.answer, "answer optional");
    ds_example_free(&ex);
    ds_jsonl_close(r);
}

/* Each bad input: exactly this message. */
TEST(bad_records_give_one_line_errors) {
    static const struct { const char *text; int flags; const char *msg; } cases[] = {
        {"{\"a\":1}\n{\"a\":", 0, "jsonl: line 2: bad JSON at column 5: unexpected token near end of file: t.jsonl"},
        {"\n\n[1,2]\n", 0, "jsonl: line 3: expected a JSON object: t.jsonl"},
        {"{\"a\":1,\"a\":2}", 0, "jsonl: line 1: bad JSON at column 10: duplicate object key near '\"a\"': t.jsonl"},
        {"{\"a\":1} x", 0, "jsonl: line 1: bad JSON at column 9: end of file expected near 'x': t.jsonl"},
        {"{\"prompt\":\"x\"}", DS_EX_SFT,
         "jsonl: line 1: needs \"messages\" (an array of {\"role\", \"content\"} objects): t.jsonl"},
        {"{\"messages\":[]}", DS_EX_SFT, "jsonl: line 1: \"messages\" must be a non-empty array: t.jsonl"},
        {"{\"messages\":{}}", DS_EX_SFT, "jsonl: line 1: \"messages\" must be a non-empty array: t.jsonl"},
        {"{\"messages\":[\"hi\"]}", DS_EX_SFT,
         "jsonl: line 1: messages[0]: must be an object with \"role\" and \"content\": t.jsonl"},
        {"{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", DS_EX_SFT,
         "jsonl: line 1: messages[0].role: must be \"system\", \"user\" or \"assistant\": t.jsonl"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":5}]}", DS_EX_SFT, "jsonl: line 1: messages[0].content: must be a string: t.jsonl"},
        {"{\"messages\":[{\"role\":\"user\"}]}", DS_EX_SFT, "jsonl: line 1: messages[0].content: must be a string: t.jsonl"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", DS_EX_SFT,
         "jsonl: line 1: \"messages\" has no assistant message to learn from: t.jsonl"},
        {"{\"text\":\"x\"}", DS_EX_PROMPT, "jsonl: line 1: needs exactly one of \"prompt\" or \"messages\": t.jsonl"},
        {"{\"prompt\":\"x\",\"messages\":[]}", DS_EX_PROMPT, "jsonl: line 1: needs exactly one of \"prompt\" or \"messages\": t.jsonl"},
        {"{\"prompt\":[1]}", DS_EX_PROMPT, "jsonl: line 1: \"prompt\" must be a string: t.jsonl"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"}]}", DS_EX_PROMPT,
         "jsonl: line 1: \"messages\": the last message must be from the user (the model answers it): t.jsonl"},
        {"{\"prompt\":\"x\",\"answer\":1.5}", DS_EX_PROMPT, "jsonl: line 1: \"answer\" must be a string or an integer: t.jsonl"},
        {"{\"prompt\":\"x\"}", DS_EX_PROMPT | DS_EX_ANSWER, "jsonl: line 1: needs an \"answer\": t.jsonl"},
        {"{\"messages\":[{\"role\":\"user\\u0000x\",\"content\":\"a\"}]}", DS_EX_PROMPT,
         "jsonl: line 1: messages[0].role: must be \"system\", \"user\" or \"assistant\": t.jsonl"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *m = ex_err(cases[i].text, cases[i].flags);
        CHECK(!strcmp(m, cases[i].msg), "case %zu -> %s", i, m);
    }
    ds_jsonl *r;
    ds_jsonl_open_memory(&r, "{}\n{}", 5, "t.jsonl");
    json_t *o;
    ds_jsonl_next(r, &o);
    json_decref(o);
    ds_jsonl_next(r, &o);
    json_decref(o);
    CHECK(ds_jsonl_error(r, "reward %s unknown", "xyz") == DS_ERR &&
              !strcmp(ds_errmsg(), "jsonl: line 2: reward xyz unknown: t.jsonl"),
          "callers' own errors carry the line: %s", ds_errmsg());
    ds_jsonl_close(r);
}

TAP_MAIN()
