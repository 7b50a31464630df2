/* libFuzzer harness: passkey wording files (ds-extend-ctx --eval-text). Any input gives a clean error, or
 * a wording whose examples, when they can be built, have exactly the asked length with the answer last. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/passkey_fixture.h" /* byte_tokenizer(): the tokenizer the passkey tests use */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ds_tokenizer *tok;
    if (!tok && !(tok = byte_tokenizer())) abort();
    ds_passkey_text t;
    if (ds_passkey_text_parse(&t, (const char *)data, size, "fuzz") != 0) return 0;
    ds_passkey *p;
    if (ds_passkey_prepare(&p, tok, &t, 0) == 0) {
        const int base = ds_passkey_min_len(p);
        const int lens[] = {base, base + 1, base + 7, base + 300};
        const double depths[] = {0, 0.5, 1};
        ds_passkey_example ex = {0};
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++) {
                if (lens[i] < 2 || lens[i] > 4096 || ds_passkey_make(p, lens[i], depths[j], 7, (uint64_t)(i * 3 + j), &ex)) continue;
                if (ex.n != lens[i] || ex.answer_start <= 0 || ex.answer_start >= ex.n || (int)strlen(ex.key) != t.digits) abort();
            }
        ds_passkey_example_free(&ex);
        ds_passkey_free(p);
    }
    ds_passkey_text_free(&t);
    return 0;
}
