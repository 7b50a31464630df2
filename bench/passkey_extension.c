/* passkey_extension — the context-extension experiment behind ds-extend-ctx, on a model small enough
 * for a CPU: pretrain a tiny DeepSeek-V3 (2 dense layers, MLA, width 64) on synthetic passkey
 * documents of L0 tokens, evaluate passkey retrieval at L0 and at factor x L0, then extend it in
 * several ways from the same base weights and evaluate again:
 *   yarn-v3     YaRN with V3's betas (32 / 1); at L0 = 64 every frequency has fewer than 32 rotations,
 *               so nearly all of them are interpolated
 *   yarn-scaled YaRN with the betas scaled to the tiny context (beta x L0 / 4096: the same share of
 *               high frequencies kept as V3 keeps at 4K)
 *   plain       no rope_scaling: the base RoPE, fine-tuned at the longer length (the control)
 * Each extension trains on passkey documents of mixed lengths up to factor x L0 (answer tokens only).
 * Prints the grids and timings; docs/DESIGN.md "Context extension" records a run.
 *
 * usage: passkey_extension [L0 [FACTOR [PRETRAIN_STEPS [EXTEND_STEPS [TRIALS]]]]]  (64 4 3000 1000 8)
 * Built and run by bench/passkey_extension.sh. One thread (OMP_NUM_THREADS=1 is set there).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/rng.h"
#include "infer/passkey.h"
#include "model/model.h"
#include "ops/ops.h"
#include "tok/train.h"
#include "train/extend.h"
#include "train/trainer.h"

#include "passkey_fixture.h" /* tests/unit: the task and model the unit test uses too */

static int net_fwd(void *impl, const ds_batch *b, ds_fwd_out *out) { return ds_model_forward(impl, b, out); }
static int net_bwd(void *impl, const ds_batch *b, const float *dl, const float *dm) { return ds_model_backward(impl, b, dl, dm); }
static void net_zero(void *impl) { ds_model_zero_grad(impl); }

/* Rows of passkey documents, one per row: length uniform in [min_len, T + 1] (the rest of the row is
 * padding in its own segment), depth 0 or 1 a tenth of the time each, else uniform; loss on the answer. */
typedef struct {
    const ds_passkey *p;
    int T, min_len;
    uint64_t seed, rows;
    ds_passkey_example ex;
} pk_source;

static int pk_next(ds_data_source *s, ds_batch_buf *buf, int rows) {
    pk_source *q = s->impl;
    buf->has_pos = buf->has_seg = 1;
    for (int r = 0; r < rows; r++, q->rows++) {
        ds_rng g;
        ds_rng_init(&g, q->seed, 0x5eed00 + q->rows);
        int len = q->min_len + (int)ds_rng_below(&g, (uint64_t)(q->T + 2 - q->min_len));
        double u = ds_rng_uniform(&g), depth = u < 0.1 ? 0 : u < 0.2 ? 1 : ds_rng_uniform(&g);
        DS_TRY(ds_passkey_make(q->p, len, depth, q->seed, q->rows, &q->ex));
        size_t off = (size_t)buf->rows * q->T;
        for (int t = 0; t < q->T; t++) {
            int in = t + 1 < len;
            buf->tokens[off + t] = in ? q->ex.tokens[t] : 0;
            buf->targets[off + t] = in && t + 1 >= q->ex.answer_start ? q->ex.tokens[t + 1] : -1;
            buf->pos[off + t] = in ? t : t - (len - 1);
            buf->seg[off + t] = !in;
        }
        buf->rows++;
    }
    return 0;
}
static int64_t pk_rows(const ds_data_source *s) { return -1; }
static void pk_rewind(ds_data_source *s) { ((pk_source *)s->impl)->rows = 0; }
static void pk_state_write(const ds_data_source *s, ds_jsonw *w) { ds_jsonw_int(w, (int64_t)((pk_source *)s->impl)->rows); }
static int pk_state_read(ds_data_source *s, const void *json, const char *where) { return 0; }

static int train(ds_model *m, const ds_passkey *p, int T, int min_len, int steps, int batch, const char *lr, double peak,
                 uint64_t seed) {
    pk_source q = {.p = p, .T = T, .min_len = min_len, .seed = seed};
    ds_data_source src = {.kind = "passkey", .seq_len = T, .next = pk_next, .rows_per_pass = pk_rows, .rewind = pk_rewind,
                          .state_write = pk_state_write, .state_read = pk_state_read, .impl = &q};
    ds_train_opts o;
    ds_train_opts_defaults(&o);
    o.total_steps = steps, o.seq_len = T, o.micro_batch = batch, o.seed = seed, o.log_every = steps / 5;
    o.adamw.weight_decay = 0.0;
    char b[16];
    snprintf(b, sizeof b, "%d", batch);
    int rc = ds_sched_parse(&o.lr, lr, peak, steps, "lr");
    if (!rc) rc = ds_sched_parse(&o.batch, b, NAN, steps, "batch");
    if (!rc) rc = ds_sched_parse(&o.gamma, "0", NAN, steps, "gamma");
    if (!rc) rc = ds_sched_parse(&o.lambda, "0", NAN, steps, "lambda");
    ds_train_net net = {.impl = m, .params = ds_model_params(m), .grads = ds_model_grads(m), .n_params = ds_model_num_params(m),
                        .forward = net_fwd, .backward = net_bwd, .zero_grad = net_zero};
    net.info = ds_model_params_info(m, &net.n_info);
    ds_trainer *t = NULL;
    ds_train_end end;
    if (!rc) rc = ds_trainer_create(&t, &o, &net, &src, NULL, &ds_loss_pretrain, NULL);
    if (!rc) rc = ds_trainer_run(t, &end);
    ds_trainer_free(t);
    ds_passkey_example_free(&q.ex);
    return rc;
}

static int evaluate(ds_model *m, const ds_passkey *p, const int *lens, int nl, int trials, const char *what) {
    static const double depths[] = {0, 0.25, 0.5, 0.75, 1};
    ds_infer_model im;
    const float *bias[8];
    ds_infer_model_of(m, &im, bias);
    ds_passkey_opts o = {.lengths = lens, .n_lengths = nl, .depths = depths, .n_depths = 5, .trials = trials, .seed = 2024};
    ds_passkey_grid g;
    DS_TRY(ds_passkey_eval(&im, ds_ops_cpu(), p, &o, &g));
    char *tab;
    int rc = ds_passkey_table(&g, &tab);
    if (!rc) printf("\n%s\n%s", what, tab);
    free(tab);
    ds_passkey_grid_free(&g);
    return rc;
}

static ds_model *make(const ds_config *c, int B, int T) {
    ds_model_opts mo = {.max_batch = B, .max_seq = T, .train = 1, .recompute = 1};
    ds_model *m = NULL;
    return ds_model_create(&m, c, &mo) ? NULL : m;
}

int main(int argc, char **argv) {
    const int L0 = argc > 1 ? atoi(argv[1]) : 64, S = argc > 2 ? atoi(argv[2]) : 4;
    const int steps0 = argc > 3 ? atoi(argv[3]) : 3000, steps1 = argc > 4 ? atoi(argv[4]) : 1000;
    const int trials = argc > 5 ? atoi(argv[5]) : 8, L1 = L0 * S;
    ds_log_init("passkey_extension");
    ds_tokenizer *tok = byte_tokenizer();
    ds_passkey *p;
    if (!tok || ds_passkey_prepare(&p, tok, &tiny_text, 0)) return fprintf(stderr, "error: %s\n", ds_errmsg()), 1;
    const int min_len = ds_passkey_min_len(p) + 4;
    ds_config c;
    tiny_config(&c, (int)ds_tok_vocab_size(tok), L0);
    const int lens[] = {L0, 2 * L0, L1};
    const int nl = S > 2 ? 3 : 2;
    printf("tiny DeepSeek-V3 (2 dense layers, width 64, MLA with 16 rope + 16 nope dims per head), byte tokens\n");
    printf("pretrain: %d steps x 16 documents of %d-%d tokens; extensions: %d steps x 8 documents of %d-%d tokens\n", steps0,
           min_len, L0 + 1, steps1, min_len, L1 + 1);
    double t0 = ds_now();
    ds_model *base = make(&c, 16, L0);
    if (!base || ds_model_init(base, 1) || train(base, p, L0, min_len, steps0, 16, "cosine:warmup=5%,min=10%", 3e-3, 11))
        return fprintf(stderr, "error: %s\n", ds_errmsg()), 1;
    double t1 = ds_now();
    if (evaluate(base, p, lens, nl, trials, "base model (RoPE, trained at L0):")) return fprintf(stderr, "error: %s\n", ds_errmsg()), 1;
    printf("pretraining took %.0f s\n", t1 - t0);
    static const struct {
        const char *name;
        int yarn;
        double bf, bs;
    } variants[] = {{"yarn-v3", 1, 32, 1}, {"yarn-scaled", 1, 0, 0}, {"plain", 0, 0, 0}};
    for (int v = 0; v < 3; v++) {
        ds_config ce;
        ds_config_copy(&ce, &c);
        ce.max_position_embeddings = L1;
        if (variants[v].yarn) {
            ds_extend_opts eo;
            ds_extend_opts_defaults(&eo);
            eo.factor = S, eo.original = L0;
            eo.beta_fast = variants[v].bf > 0 ? variants[v].bf : 32.0 * L0 / 4096;
            eo.beta_slow = variants[v].bs > 0 ? variants[v].bs : 1.0 * L0 / 4096;
            if (ds_extend_config(&ce, &eo)) return fprintf(stderr, "error: %s\n", ds_errmsg()), 1;
        }
        ds_model *m = make(&ce, 8, L1);
        memcpy(ds_model_params(m), ds_model_params(base), ds_model_num_params(m) * sizeof(float));
        char what[160];
        snprintf(what, sizeof what, "%s, before training:", variants[v].name);
        if (variants[v].yarn && evaluate(m, p, lens, nl, trials, what)) return fprintf(stderr, "error: %s\n", ds_errmsg()), 1;
        double t2 = ds_now();
        if (train(m, p, L1, min_len, steps1, 8, "cosine:warmup=0,min=10%", 1e-3, 12)) return fprintf(stderr, "error: %s\n", ds_errmsg()), 1;
        snprintf(what, sizeof what, "%s, after %d steps at up to %d tokens (%.0f s):", variants[v].name, steps1, L1, ds_now() - t2);
        if (evaluate(m, p, lens, nl, trials, what)) return fprintf(stderr, "error: %s\n", ds_errmsg()), 1;
        ds_model_free(m);
        ds_config_free(&ce);
    }
    ds_model_free(base);
    ds_passkey_free(p);
    ds_tok_free(tok);
    return 0;
}
