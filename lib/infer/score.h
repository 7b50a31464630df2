/* score.h — the log-probability of every token of given texts under a model.
 *
 * Owns: ds-generate --score: for each input (token ids from a ds_prompt_reader) one training-forward
 * pass (lib/model, the reference the decode engine is tested against) and one JSON line
 *   {"index": i, "tokens": [...], "logprobs": [null, lp_1, ...], "sum_logprob": s, "n_scored": n-1}
 * where lp_t = log p(token_t | tokens_0..t-1); the first token has nothing before it (null).
 */
#ifndef DS_INFER_SCORE_H
#define DS_INFER_SCORE_H

#include <stdint.h>
#include <stdio.h>

#include "infer/textgen.h"
#include "model/model.h"

typedef struct {
    int64_t inputs, tokens;
    double seconds;
} ds_score_stats;

/* max_len: the longest input accepted (the model's activations must hold it); longer inputs are an
 * error naming the input. */
int ds_score(ds_model *m, ds_prompt_reader *r, FILE *out, int max_len, ds_score_stats *st);

#endif
