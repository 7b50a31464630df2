/* libFuzzer harness: ds-generate's input lines (auto-detected text / JSONL, and token-id lines) read
 * through the prompt reader with a small trained tokenizer. Any input gives prompts whose ids are in
 * the vocabulary, or a clean error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer/textgen.h"
#include "tok/train.h"

static ds_tokenizer *tok;
static ds_chat_template tpl;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ds_tok_trainer *tr = NULL;
    const char *corpus = "hello there, how are you? {\"prompt\": \"x\"} 0 1 2 3 the user said hello.\n";
    ds_tok_train_opts o = {.vocab_size = 300, .specials = ds_tok_default_specials,
                           .n_specials = ds_tok_n_default_specials};
    if (ds_tok_trainer_new(&tr) || ds_tok_trainer_feed(tr, corpus, strlen(corpus)) || ds_tok_trainer_finish(tr, &o, &tok))
        abort();
    ds_tok_trainer_free(tr);
    if (ds_chat_template_load(&tpl, NULL)) abort();
    return 0;
}

static void run(const uint8_t *data, size_t size, ds_input_format fmt, int chat) {
    FILE *f = fmemopen((void *)data, size, "r");
    if (!f) return;
    ds_prompt_opts o = {.format = fmt, .tok = tok, .chat = &tpl, .chat_prompts = chat, .generation_prompt = 1,
                        .bos = 0, .vocab = 300};
    ds_prompt_reader *r = NULL;
    if (ds_prompt_reader_open(&r, &o, NULL, 0, f, "fuzz") == 0) {
        for (int k = 0; k < 64; k++) {
            uint64_t index;
            const int32_t *ids;
            int n, got;
            if (ds_prompt_reader_next(r, &index, &ids, &n, &got) || !got) break;
            if (n <= 0 || index != (uint64_t)k) abort();
            for (int i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= 300) abort();
        }
    }
    ds_prompt_reader_free(r);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    run(data, size, DS_INPUT_AUTO, data[0] & 1);
    run(data, size, DS_INPUT_IDS, 0);
    return 0;
}
