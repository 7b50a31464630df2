/* libFuzzer harness: what ds-rl reads from untrusted text — a reward program's output and the answers
 * extracted from completions. The first byte picks the path: output parsing (n = 1..8 numbers expected:
 * either n finite values or a "reward program: " error), or answer extraction in one of the three modes
 * (no answer, or a NUL-terminated answer of the returned length that equals itself; number mode gives
 * only sign, digits and a point). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "rl/reward.h"
#include "rl/reward_cmd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    const int pick = data[0] & 3;
    if (pick == 3) {
        const int n = 1 + (data[0] >> 2) % 8;
        double v[8];
        int rc = ds_reward_cmd_parse(text, len, n, v);
        if (rc && strncmp(ds_errmsg(), "reward program: ", 16)) abort();
        for (int i = 0; !rc && i < n; i++)
            if (!isfinite(v[i])) abort();
        return 0;
    }
    char buf[256];
    int k = ds_answer_extract((ds_answer_mode)pick, text, len, buf, sizeof buf);
    if (k < -1 || k >= (int)sizeof buf) abort();
    if (k >= 0) {
        if (strlen(buf) > (size_t)k) abort(); /* may hold NULs from the input, never more */
        if ((size_t)k == strlen(buf) && !ds_answer_equal(buf, (size_t)k, buf, (size_t)k)) abort();
        if (pick == DS_ANSWER_NUMBER)
            for (int i = 0; i < k; i++)
                if (!((buf[i] >= '0' && buf[i] <= '9') || buf[i] == '-' || buf[i] == '.')) abort();
    }
    return 0;
}
