/* Rewards for ds-rl (lib/rl/reward.h, reward_cmd.h): answer extraction in its three modes, answer
 * equality, the format and length rewards, the NAME:WEIGHT specification and weighted sums, and the
 * reward-program protocol: numbers in input order, JSON lines that survive newlines, quotes and invalid
 * UTF-8, and a clean one-line error for a crash, a non-zero exit, garbage, NaN, too few or too many
 * lines, a timeout (the whole process group killed), a program that does not read its input. */
#include "tap.h"

#include "core/err.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "rl/reward.h"
#include "rl/reward_cmd.h"

static int extract_is(ds_answer_mode m, const char *text, const char *want) {
    char buf[256];
    int k = ds_answer_extract(m, text, strlen(text), buf, sizeof buf);
    if (!want) return k < 0;
    return k >= 0 && !strcmp(buf, want);
}

TEST(answer_extraction) {
    CHECK(extract_is(DS_ANSWER_NUMBER, "6 + 29 = 35. The answer is 35.", "35"), "the last number, sentence full stop dropped");
    CHECK(extract_is(DS_ANSWER_NUMBER, "The answer is -5", "-5"), "a negative number");
    CHECK(extract_is(DS_ANSWER_NUMBER, "10-5=5", "5"), "a binary minus is not a sign");
    CHECK(extract_is(DS_ANSWER_NUMBER, "so 10 -5", "-5"), "a minus after a space is a sign");
    CHECK(extract_is(DS_ANSWER_NUMBER, "total: 1,234 apples", "1234"), "thousands separators");
    CHECK(extract_is(DS_ANSWER_NUMBER, "1,2", "2"), "a comma without three digits separates numbers");
    CHECK(extract_is(DS_ANSWER_NUMBER, "pi is 3.14.", "3.14"), "decimals");
    CHECK(extract_is(DS_ANSWER_NUMBER, "no digits here", NULL), "no number: no answer");
    CHECK(extract_is(DS_ANSWER_BOXED, "so \\boxed{12} or rather \\boxed{ 13 }", "13"), "the last box, trimmed");
    CHECK(extract_is(DS_ANSWER_BOXED, "\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), "nested braces");
    CHECK(extract_is(DS_ANSWER_BOXED, "\\boxed{12", NULL), "an unclosed box: no answer");
    CHECK(extract_is(DS_ANSWER_BOXED, "12", NULL), "no box: no answer");
    CHECK(extract_is(DS_ANSWER_EXACT, "  Paris \n", "Paris"), "exact: surrounding whitespace ignored");
    char small[3];
    CHECK(ds_answer_extract(DS_ANSWER_NUMBER, "12345", 5, small, sizeof small) < 0, "an answer longer than the buffer is none");
}

TEST(answer_equality) {
    CHECK(ds_answer_equal("35", 2, "35", 2), "same number");
    CHECK(ds_answer_equal("35.0", 4, " 35", 3), "numerically equal");
    CHECK(ds_answer_equal("1234", 4, "1,234", 5), "separators in the reference");
    CHECK(!ds_answer_equal("36", 2, "35", 2), "different numbers");
    CHECK(ds_answer_equal("Paris", 5, "Paris ", 6) && !ds_answer_equal("paris", 5, "Paris", 5), "strings: exact, trimmed");
    CHECK(!ds_answer_equal("1e3", 3, "1000", 4), "scientific notation is not a number here (string compare)");
}

static ds_reward_input input(const char *completion, const char *answer, int n_tokens, int max_new, const char *finish) {
    return (ds_reward_input){.prompt = "q", .prompt_len = 1, .completion = completion, .completion_len = strlen(completion),
                             .answer = answer, .answer_len = answer ? strlen(answer) : 0, .n_tokens = n_tokens,
                             .max_new = max_new, .finish = finish};
}

TEST(built_in_rewards_and_weights) {
    const char *req[] = {"<think>", "</think>", "The answer is"};
    ds_reward_opts o = {.answer_mode = DS_ANSWER_NUMBER, .format_require = req, .n_format_require = 3, .length_cache = 2};
    ds_reward **r;
    int n;
    int rc = ds_rewards_create("answer:1,format:0.5,length:2", &o, &r, &n);
    CHECK(rc == 0 && n == 3 && r[1]->weight == 0.5 && r[2]->weight == 2, "three rewards with weights: %s", ds_errmsg());
    if (rc) return;
    ds_reward_input in[5] = {
        input("<think>6+29</think> The answer is 35.", "35", 8, 10, "eos"), /* right, formatted */
        input("The answer is 35. <think></think>", "35", 8, 10, "eos"),     /* right, tags out of order */
        input("<think>x</think> The answer is 36", "35", 9, 10, "eos"),     /* wrong, formatted, long */
        input("35 35 35 35 35 35", "35", 10, 10, "length"),                 /* cut by max_new */
        input("", "35", 10, 10, "eos"),                                     /* EOS as the 10th token */
    };
    double parts[15], total[5];
    rc = ds_rewards_score(r, n, in, 5, parts, total);
    CHECK(rc == 0, "score: %s", ds_errmsg());
    const double want_answer[5] = {1, 1, 0, 1, 0}, want_format[5] = {1, 0, 1, 0, 0};
    /* DAPO: free up to max_new - cache = 8 tokens, then -(n - 8)/2, -1 when cut */
    const double want_length[5] = {0, 0, -0.5, -1, -1};
    int ok = 1;
    for (int i = 0; i < 5; i++) {
        ok &= parts[i] == want_answer[i] && parts[5 + i] == want_format[i] && parts[10 + i] == want_length[i];
        ok &= total[i] == want_answer[i] + 0.5 * want_format[i] + 2 * want_length[i];
    }
    CHECK(ok, "answer / format / length values and their weighted sums");
    ds_rewards_free(r, n);

    rc = ds_rewards_create("format", &(ds_reward_opts){0}, &r, &n);
    ds_reward_input r1[2] = {input("<think>a</think><answer>3</answer>", NULL, 3, 9, "eos"), input("<answer>3</answer>", NULL, 3, 9, "eos")};
    rc = rc ? rc : ds_rewards_score(r, n, r1, 2, parts, total);
    CHECK(rc == 0 && total[0] == 1 && total[1] == 0, "format defaults to R1's <think></think><answer></answer>");
    ds_rewards_free(r, n);

    rc = ds_rewards_create(NULL, &o, &r, &n);
    CHECK(rc == 0 && n == 1 && !strcmp(r[0]->name, "answer") && r[0]->needs_answer, "the default is the answer reward");
    ds_reward_input noans = input("35", NULL, 1, 9, "eos");
    CHECK(ds_rewards_score(r, n, &noans, 1, parts, total) == DS_ERR && strstr(ds_errmsg(), "no \"answer\""), "%s", ds_errmsg());
    ds_rewards_free(r, n);
}

TEST(reward_specification_errors) {
    ds_reward_opts o = {0};
    ds_reward **r;
    int n;
    CHECK(ds_rewards_create("answer,speed", &o, &r, &n) == DS_EUSAGE && strstr(ds_errmsg(), "unknown reward 'speed' (answer, format, length, cmd)"),
          "%s", ds_errmsg());
    CHECK(ds_rewards_create("answer:x", &o, &r, &n) == DS_EUSAGE && strstr(ds_errmsg(), "bad weight 'x'"), "%s", ds_errmsg());
    CHECK(ds_rewards_create("answer,answer:2", &o, &r, &n) == DS_EUSAGE && strstr(ds_errmsg(), "'answer' given twice"), "%s", ds_errmsg());
    CHECK(ds_rewards_create("cmd", &o, &r, &n) == DS_EUSAGE && strstr(ds_errmsg(), "needs --reward-cmd"), "%s", ds_errmsg());
    CHECK(ds_rewards_create(",", &o, &r, &n) == DS_EUSAGE, "nothing named: %s", ds_errmsg());
    o.cmd = "cat";
    int rc = ds_rewards_create("answer:0.5", &o, &r, &n);
    CHECK(rc == 0 && n == 2 && !strcmp(r[1]->name, "cmd") && r[1]->weight == 1, "--reward-cmd adds 'cmd' with weight 1");
    if (!rc) ds_rewards_free(r, n);
    rc = ds_rewards_create(NULL, &o, &r, &n);
    CHECK(rc == 0 && n == 1 && !strcmp(r[0]->name, "cmd"), "--reward-cmd alone: the program is the reward");
    if (!rc) ds_rewards_free(r, n);
}

/* ---- the reward program ---- */

static int run_cmd(const char *cmd, int n, double timeout, double *out) {
    char input[4096] = "";
    for (int i = 0; i < n; i++) snprintf(input + strlen(input), sizeof input - strlen(input), "{\"index\":%d}\n", i);
    return ds_reward_cmd_run(cmd, input, strlen(input), n, timeout, out);
}

TEST(program_protocol_happy_path) {
    double v[4];
    int rc = run_cmd("awk '{ print NR * 0.5 }'", 4, 10, v);
    CHECK(rc == 0 && v[0] == 0.5 && v[1] == 1 && v[2] == 1.5 && v[3] == 2, "one number per input line, in order: %s", ds_errmsg());
    rc = run_cmd("cat >/dev/null; printf ' 1\\r\\n-2.5e1\\n+3 \\n'", 3, 10, v);
    CHECK(rc == 0 && v[0] == 1 && v[1] == -25 && v[2] == 3, "spaces, CR, exponents, signs: %s", ds_errmsg());
    rc = run_cmd("cat >/dev/null; printf '7'", 1, 10, v);
    CHECK(rc == 0 && v[0] == 7, "a last line without newline");

    /* the line a program sees: one JSON object per completion, even with newlines, quotes and bad UTF-8 */
    ds_reward_input in = input("line one\n\"two\" \xff end", "35", 6, 9, "length");
    in.index = 3, in.group = 1;
    in.messages = "[{\"role\":\"user\",\"content\":\"q\"}]";
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_reward_cmd_line(&in, &w);
    const char *want = "{\"index\":3,\"group\":1,\"prompt\":\"q\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],"
                       "\"completion\":\"line one\\n\\\"two\\\" \xef\xbf\xbd end\",\"answer\":\"35\",\"finish_reason\":\"length\",\"tokens\":6}";
    CHECK(!strcmp(w.buf, want), "JSON line: %s", w.buf);
    ds_jsonw_free(&w);

    /* a reward over many completions: the program echoes each line's "tokens" field */
    enum { N = 3000 };
    ds_reward_input *many = calloc(N, sizeof *many);
    for (int i = 0; i < N; i++) {
        many[i] = input("a\nb\"c\"", NULL, i % 97, 100, "eos");
        many[i].index = i;
    }
    ds_reward **r;
    int n;
    ds_reward_opts o = {.cmd = "sed -n 's/.*\"tokens\":\\([0-9]*\\).*/\\1/p'", .cmd_timeout = 30};
    rc = ds_rewards_create(NULL, &o, &r, &n);
    double *parts = malloc(N * sizeof *parts), *total = malloc(N * sizeof *total);
    if (!rc) rc = ds_rewards_score(r, n, many, N, parts, total);
    int ok = rc == 0;
    for (int i = 0; ok && i < N; i++) ok = total[i] == i % 97;
    CHECK(ok, "3000 completions (a 300 KB exchange, more than a pipe holds) come back in order: %s", ds_errmsg());
    if (n) ds_rewards_free(r, n);
    free(many), free(parts), free(total);
}

static void expect_error(const char *cmd, int n, double timeout, const char *msg) {
    double v[8];
    double t0 = ds_now();
    int rc = run_cmd(cmd, n, timeout, v);
    CHECK(rc == DS_ERR && strstr(ds_errmsg(), msg), "%s -> %s", cmd, ds_errmsg());
    CHECK(ds_now() - t0 < timeout + 3, "returned in %.2f s", ds_now() - t0);
}

TEST(program_failures_are_clean_errors) {
    expect_error("cat >/dev/null; kill -SEGV $$", 2, 10, "reward program: killed by signal 11");
    expect_error("cat >/dev/null; exit 3", 2, 10, "reward program: exited with status 3: cat >/dev/null; exit 3");
    expect_error("cat >/dev/null; echo 1; echo abc", 2, 10, "reward program: line 2: not a number: 'abc'");
    expect_error("cat >/dev/null; echo 1; echo", 2, 10, "reward program: line 2: not a number: ''");
    expect_error("cat >/dev/null; echo 1 2", 1, 10, "reward program: line 1: not a number: '1 2'");
    expect_error("cat >/dev/null; echo nan", 1, 10, "reward program: line 1: not a finite number: 'nan'");
    expect_error("cat >/dev/null; echo 1", 3, 10, "reward program: printed 1 line for 3 completions");
    expect_error("cat >/dev/null; seq 5", 3, 10, "reward program: printed 5 lines for 3 completions");
    expect_error("no_such_program_xyz 2>/dev/null", 1, 10, "reward program: exited with status 127");
    /* a hung pipeline: the whole process group goes, and the message names the limit */
    expect_error("sleep 30 | cat", 1, 0.5, "reward program: timed out after 0.5 s: sleep 30 | cat");
    /* output without reading the input is judged by its output (no SIGPIPE for us) */
    char *big = malloc(1 << 20);
    memset(big, ' ', 1 << 20);
    big[(1 << 20) - 1] = '\n';
    double v[2];
    int rc = ds_reward_cmd_run("echo 1; echo 2", big, 1 << 20, 2, 10, v);
    CHECK(rc == 0 && v[0] == 1 && v[1] == 2, "a program that ignores its 1 MB of input: %s", ds_errmsg());
    free(big);
}

int main(int argc, char **argv) {
    ds_log_set_level(DS_LOG_QUIET);
    return tap_run(argc, argv);
}
