/* prompts.h — the prompt set of an RL run (design.md 4.4): what is asked, and what the answer is.
 *
 * Owns: reading prompt JSONL ({"prompt": ..., "answer": ...} or {"messages": [...], "answer": ...};
 * line-numbered errors from io/jsonl.h), rendering each record into the token ids the policy
 * continues — the chat template with its generation prompt for messages (and for plain prompts with
 * chat_prompts), else BOS + the text, exactly as ds-generate renders them — and keeping the texts the
 * rewards need (the prompt, the "messages" JSON, the answer). The whole set is read at the start:
 * RL passes over it many times, and the longest prompt fixes the training sequence length.
 */
#ifndef DS_RL_PROMPTS_H
#define DS_RL_PROMPTS_H

#include <stddef.h>
#include <stdint.h>

#include "tok/chat.h"
#include "tok/tokenizer.h"

typedef struct {
    int32_t *ids;   /* what the policy continues */
    int n_ids;
    char *text;     /* the "prompt" string, or the content of the last user message (NUL-terminated) */
    size_t text_len;
    char *messages; /* compact JSON of "messages", or NULL */
    char *answer;   /* NULL when the record has none */
    size_t answer_len;
    long line;      /* 1-based line in the file (0 for prompts added by id) */
} ds_rl_prompt;

typedef struct {
    ds_rl_prompt *p;
    int n, cap;
    int max_ids;     /* the longest prompt, in tokens */
    char where[512]; /* the file, for messages */
} ds_rl_prompts;

typedef struct {
    const ds_tokenizer *tok;
    const ds_chat_template *chat;
    int chat_prompts;  /* plain prompts become one user turn of the chat template */
    int64_t bos;       /* before plain prompts; -1: none */
    int vocab;         /* ids must be below this */
    int need_answer;   /* every record must carry "answer" */
} ds_rl_prompt_opts;

/* Read every record of path ("-" = stdin). An empty set is an error. */
int ds_rl_prompts_load(ds_rl_prompts *s, const char *path, const ds_rl_prompt_opts *o);
/* Add a prompt given as token ids (answer may be NULL); for programs and tests without a tokenizer. */
int ds_rl_prompts_add_ids(ds_rl_prompts *s, const int32_t *ids, int n, const char *answer);
void ds_rl_prompts_free(ds_rl_prompts *s);

#endif
