/* reward_cmd.h — a user's reward program, so completions can be scored in any language.
 *
 * Owns: the protocol and running the program. Once per batch, ds-rl runs `sh -c CMD` in a process
 * group of its own, writes one JSON object per completion to its stdin, then closes it:
 *   {"index": 0, "group": 0, "prompt": "What is 6 + 29?", "messages": [...], "completion": "...",
 *    "answer": "35", "finish_reason": "eos", "tokens": 12}
 * ("messages" only for chat records; "answer" is null when the record has none; invalid UTF-8 in a
 * completion arrives as U+FFFD). The program prints exactly one number per line, in input order, and
 * exits with status 0; its stderr passes through. Anything else is an error that names the problem
 * ("reward program: line 3: not a number: 'abc'", "... printed 2 lines for 8 completions",
 * "... exited with status 1", "... killed by signal 11", "... exited with status 139 (killed by signal 11,
 * Segmentation fault)" for a command the shell ran, "... timed out after 60 s: CMD") and ends
 * the step before any update, so the model and the last checkpoint stay as they were.
 * Input and output are pumped together (poll), so a program that answers line by line cannot
 * deadlock on full pipes; SIGPIPE is ignored while the program runs.
 */
#ifndef DS_RL_REWARD_CMD_H
#define DS_RL_REWARD_CMD_H

#include <stddef.h>

#include "core/jsonw.h"
#include "rl/reward.h"

/* The reward named "cmd" (weight 1) running cmd with a per-batch timeout in seconds. */
int ds_reward_cmd_create(ds_reward **out, const char *cmd, double timeout_s);

/* The protocol alone: run cmd with `input` on stdin and read exactly n finite numbers into out. */
int ds_reward_cmd_run(const char *cmd, const char *input, size_t len, int n, double timeout_s, double *out);

/* Read a program's output: exactly n lines, each one finite number (blanks and a CR around it
 * allowed), the last newline optional. Errors as above ("reward program: line 3: not a number: '...'"). */
int ds_reward_cmd_parse(const char *out, size_t len, int n, double *vals);

/* The JSON object for one completion (w is reset first; no newline). */
void ds_reward_cmd_line(const ds_reward_input *in, ds_jsonw *w);

#endif
