#include "infer/score.h"

#include "core/err.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "ops/device.h"

#include <stdlib.h>

int ds_score(ds_model *m, ds_prompt_reader *r, FILE *out, int max_len, ds_score_stats *st) {
    const ds_ops *ops = ds_model_ops(m);
    int32_t *tgt = malloc((size_t)max_len * sizeof *tgt);
    float *logp = ds_ops_on_host(ops) ? NULL : malloc((size_t)max_len * sizeof *logp); /* from the device */
    if (!tgt || (!ds_ops_on_host(ops) && !logp)) {
        free(tgt), free(logp);
        return ds_fail(DS_ERR, "score: out of memory for %d tokens", max_len);
    }
    ds_jsonw w;
    ds_jsonw_init(&w);
    st->inputs = st->tokens = 0;
    const double t0 = ds_now();
    int rc = DS_OK;
    for (;;) {
        uint64_t index;
        const int32_t *ids;
        int n, got;
        if ((rc = ds_prompt_reader_next(r, &index, &ids, &n, &got)) || !got) break;
        if (n > max_len) {
            rc = ds_fail(DS_ERR, "input %llu: %d tokens exceed the context of %d tokens", (unsigned long long)index, n,
                         max_len);
            ds_hint("--ctx raises the limit (the model's activations grow with it)");
            break;
        }
        for (int i = 0; i < n; i++) tgt[i] = i + 1 < n ? ids[i + 1] : -1;
        ds_batch b = {.B = 1, .T = n, .tokens = ids, .targets = tgt};
        ds_fwd_out fo;
        if ((rc = ds_model_forward(m, &b, &fo))) break;
        const float *lp = fo.logp;
        if (logp) {
            ops->copy(logp, fo.logp, sizeof(float) * (size_t)n, DS_COPY_D2H);
            ops->sync();
            if ((rc = ops->status())) break;
            lp = logp;
        }
        double sum = 0;
        ds_jsonw_reset(&w);
        ds_jsonw_obj_begin(&w);
        ds_jsonw_kint(&w, "index", (int64_t)index);
        ds_jsonw_key(&w, "tokens");
        ds_jsonw_arr_begin(&w);
        for (int i = 0; i < n; i++) ds_jsonw_int(&w, ids[i]);
        ds_jsonw_arr_end(&w);
        ds_jsonw_key(&w, "logprobs");
        ds_jsonw_arr_begin(&w);
        ds_jsonw_null(&w);
        for (int i = 0; i + 1 < n; i++) {
            ds_jsonw_numf(&w, lp[i]);
            sum += lp[i];
        }
        ds_jsonw_arr_end(&w);
        ds_jsonw_knum(&w, "sum_logprob", sum);
        ds_jsonw_kint(&w, "n_scored", n - 1);
        ds_jsonw_obj_end(&w);
        if ((rc = ds_jsonw_emit_line(&w, out, "stdout"))) break;
        st->inputs++;
        st->tokens += n;
    }
    st->seconds = ds_now() - t0;
    ds_jsonw_free(&w);
    free(tgt);
    free(logp);
    return rc;
}
