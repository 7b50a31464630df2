/* textgen.h — the text side of ds-generate: prompts in, completions and scores out.
 *
 * Owns: reading inputs (--prompt strings; or lines of a stream: plain text, JSONL objects
 * {"prompt": "..."} / {"text": "..."} / {"messages": [...]}, or space-separated token ids), turning
 * them into token ids (BOS + text, or the chat template), numbering them in input order; and writing
 * results in input order although sequences finish out of order: streamed text (the oldest
 * unfinished sequence streams live, the others wait their turn), or one JSONL record per input.
 * Stop strings are matched on the decoded text here (infer/stop.h), across token boundaries.
 * Formats are documented in docs/formats.md ("ds-generate").
 */
#ifndef DS_INFER_TEXTGEN_H
#define DS_INFER_TEXTGEN_H

#include <stdint.h>
#include <stdio.h>

#include "infer/generate.h"
#include "tok/chat.h"
#include "tok/tokenizer.h"

typedef enum {
    DS_INPUT_AUTO = 0, /* JSONL when the first non-blank line starts with '{', else text */
    DS_INPUT_TEXT,     /* one prompt per line (blank lines skipped) */
    DS_INPUT_JSONL,
    DS_INPUT_IDS,      /* space-separated token ids per line */
} ds_input_format;

typedef struct {
    ds_input_format format;
    const ds_tokenizer *tok;       /* NULL only for id input */
    const ds_chat_template *chat;  /* for {"messages"} and with chat_prompts */
    int chat_prompts;              /* plain prompts become one user message + the generation prompt */
    int generation_prompt;         /* append the template's generation prompt to messages (generate: 1, score: 0) */
    int64_t bos;                   /* prepended to plain prompts; -1: none */
    int vocab;                     /* ids must be below this */
} ds_prompt_opts;

typedef struct ds_prompt_reader ds_prompt_reader;

/* Prompts from a list (prompts != NULL) or from a stream f named `where` in messages. */
int ds_prompt_reader_open(ds_prompt_reader **out, const ds_prompt_opts *o, const char *const *prompts, int n_prompts,
                          FILE *f, const char *where);
/* The next input as token ids (valid until the next call); *got = 0 at the end. Errors name the line:
 * "<where>: line 3: <problem>". */
int ds_prompt_reader_next(ds_prompt_reader *r, uint64_t *index, const int32_t **ids, int *n, int *got);
/* The same, shaped as ds_gen_io.next (src = the reader). */
int ds_prompt_reader_next_cb(void *r, uint64_t *index, const int32_t **ids, int *n, int *got);
void ds_prompt_reader_free(ds_prompt_reader *r);

typedef struct {
    FILE *out;
    const ds_tokenizer *tok;     /* NULL: no text (completion is null in JSONL, nothing streamed) */
    int jsonl;
    const char *const *stops;    /* stop strings (need a tokenizer) */
    int n_stops;
    int64_t eos;                 /* not written into the text; -1: none */
    const ds_eos_ids *eos_more;  /* neither are these (NULL: none) */
    int mtp;                     /* add draft statistics to each record */
} ds_writer_opts;

typedef struct ds_gen_writer ds_gen_writer;

int ds_gen_writer_open(ds_gen_writer **out, const ds_writer_opts *o);
/* ds_gen_io callbacks (sink = the writer) */
int ds_gen_writer_token(void *w, const ds_gen_seq *s, int *stop);
int ds_gen_writer_done(void *w, const ds_gen_seq *s);
/* Everything written? (An error while generating can leave sequences unfinished.) */
int ds_gen_writer_close(ds_gen_writer *w);

#endif
