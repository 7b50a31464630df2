/* libFuzzer harness: tokenizer.json parsing, then encode/decode with whatever loaded.
 * Any input must give either a clean error or a tokenizer whose encode -> decode round trip is exact
 * (on fixed text and on the input's own bytes, special tokens recognised or not). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tok/internal.h"
#include "tok/tokenizer.h"

/* Exactness needs every byte in the vocabulary and no prefix space added by the pre-tokenizer. */
static int lossless(const ds_tokenizer *t) {
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) return 0;
    for (int i = 0; i < t->pre.n; i++)
        if (t->pre.step[i].add_prefix_space) return 0;
    return 1;
}

static void round_trip(const ds_tokenizer *t, const char *text, size_t n, int flags) {
    ds_ids ids = {0};
    ds_bytes back = {0};
    if (ds_tok_encode(t, text, n, flags, &ids) == 0 && ds_tok_decode(t, ids.v, ids.n, &back) == 0) {
        /* with specials recognised, an added token's text decodes to itself; lstrip/rstrip may eat
         * white space, so only the plain mode must be exact */
        if (!flags && lossless(t) && (back.n != n || memcmp(back.v, text, n))) abort();
    }
    ds_ids_free(&ids);
    ds_bytes_free(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds_tokenizer *t = NULL;
    if (ds_tok_from_json(&t, (const char *)data, size, "fuzz") != 0) return 0;
    static const char text[] = "Hello, world! 12345 caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80\n\t  x \xff\xfe";
    round_trip(t, text, sizeof text - 1, 0);
    round_trip(t, text, sizeof text - 1, DS_TOK_SPECIAL);
    round_trip(t, (const char *)data, size < 4096 ? size : 4096, 0);
    ds_tok_free(t);
    return 0;
}
