/* reward.h — scoring completions for RL: the rule-based rewards built in, the reward program, and
 * their weighted combination.
 *
 * Owns: the reward interface (a batch of completions in, one number per completion out), the
 * built-in rewards
 *   answer  1 when the completion's answer equals the record's "answer", else 0; the answer is the
 *           last number in the completion (mode number, compared numerically), the content of its last
 *           \boxed{...} (mode boxed), or the whole completion (mode exact; surrounding whitespace ignored)
 *   format  1 when the completion contains the required strings in order (default R1's
 *           <think> </think> <answer> </answer>), else 0
 *   length  DAPO's soft overlong penalty: 0 up to max_new - cache tokens, then falling linearly to -1
 *           at max_new (a completion cut by max_new gets -1)
 *   cmd     a user program (reward_cmd.h): any language can score
 * the "NAME[:WEIGHT],..." specification, and the answer extraction rules (docs/DESIGN.md "ds-rl").
 * A completion's reward is the weighted sum of its rewards; each one is also reported on its own.
 */
#ifndef DS_RL_REWARD_H
#define DS_RL_REWARD_H

#include <stddef.h>
#include <stdint.h>

/* One completion as the rewards see it. Strings are not NUL-terminated unless said. */
typedef struct {
    const char *prompt;     /* the "prompt" string, or the content of the last user message */
    size_t prompt_len;
    const char *messages;   /* NUL-terminated JSON text of the record's "messages" array, or NULL */
    const char *completion; /* decoded text, without the end-of-sequence token; NULL without a tokenizer */
    size_t completion_len;
    const char *answer;     /* the record's "answer", or NULL */
    size_t answer_len;
    const int32_t *tokens;  /* completion token ids (the end-of-sequence token included when it ended it) */
    int n_tokens;
    int max_new;
    const char *finish;     /* "eos", "length" or "stop" */
    int64_t index;          /* position in the batch */
    int group;              /* the prompt's group in the batch */
} ds_reward_input;

typedef struct ds_reward ds_reward;
struct ds_reward {
    char name[32];
    double weight;
    int needs_answer; /* prompts must carry "answer" */
    int needs_text;   /* completions must be decoded (a tokenizer) */
    /* Score n completions into out[n]. Errors name the reward ("reward program: ..."). */
    int (*score)(ds_reward *r, const ds_reward_input *in, int n, double *out);
    void (*free)(ds_reward *r);
    void *impl;
};

typedef enum { DS_ANSWER_NUMBER = 0, DS_ANSWER_BOXED, DS_ANSWER_EXACT } ds_answer_mode;

typedef struct {
    ds_answer_mode answer_mode;
    const char *const *format_require; /* required strings, in order (NULL: R1's four tags) */
    int n_format_require;
    int length_cache;                  /* length: the penalty ramp, in tokens (0: max_new / 5) */
    const char *cmd;                   /* the reward program (for "cmd"; NULL: none) */
    double cmd_timeout;                /* seconds per batch */
} ds_reward_opts;

/* Build the rewards named by spec ("answer", "answer:1,format:0.2", ...; NULL or "" means "answer",
 * or "cmd" alone when o->cmd is set). When o->cmd is set and spec does not name "cmd", it is added
 * with weight 1. Usage errors name the option: "--reward: unknown reward 'x' (answer, format, length, cmd)". */
int ds_rewards_create(const char *spec, const ds_reward_opts *o, ds_reward ***out, int *n);
void ds_rewards_free(ds_reward **r, int n);

/* Score a batch with every reward: parts[k*n + i] is reward k of completion i, total[i] the weighted sum. */
int ds_rewards_score(ds_reward **r, int n_rewards, const ds_reward_input *in, int n, double *parts, double *total);

/* The answer rules, exposed for tests. Extract the answer of a completion in the given mode into
 * buf (NUL-terminated); returns its length, or -1 when there is none. */
int ds_answer_extract(ds_answer_mode mode, const char *text, size_t len, char *buf, size_t cap);
/* Whether an extracted answer matches the reference: numerically when both read as numbers
 * (relative tolerance 1e-9; "1,000" reads as 1000), else as strings with surrounding whitespace ignored. */
int ds_answer_equal(const char *got, size_t got_len, const char *want, size_t want_len);

#endif
