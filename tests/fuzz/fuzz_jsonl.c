/* libFuzzer harness: JSONL records. Any input gives records or a clean "jsonl: line N" error; line
 * numbers only grow; the first byte picks the record flags so every validation path is reached. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/jsonl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    int flags = data[0] & 7;
    ds_jsonl *r;
    if (ds_jsonl_open_memory(&r, (const char *)data + 1, size - 1, "fuzz")) abort();
    ds_example ex;
    long last = 0;
    int rc;
    while ((rc = ds_jsonl_next_example(r, &ex, flags)) == 0 && ex.obj) {
        if (ex.line <= last) abort();
        last = ex.line;
        for (int i = 0; i < ex.n_messages; i++)
            if (ex.messages[i].role > DS_JSONL_ASSISTANT || !ex.messages[i].content) abort();
        if ((flags & DS_EX_ANSWER) && !ex.answer) abort();
        if ((flags & DS_EX_SFT) && !ex.n_messages) abort();
        ds_example_free(&ex);
    }
    if (rc && strncmp(ds_errmsg(), "jsonl: line ", 12)) abort();
    ds_jsonl_close(r);
    return 0;
}
