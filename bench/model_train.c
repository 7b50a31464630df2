/* model_train.c — forward+backward throughput of libds's network (the ours side of model_train.sh).
 *
 * usage: model_train CONFIG.json B T STEPS [mtp 0|1] [alpha]
 * Builds the model from the config (random init, seed 1), runs one warm-up step and STEPS timed steps of
 * forward + backward (the pretraining loss: dlogp = -1/N, MTP lambda 0.3) on fixed random tokens, and
 * prints one JSON line: {"tokens_per_s": median, "step_ms": [...], "blas_core": "...", "threads": n}. */
#include "core/err.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/threads.h"
#include "model/model.h"
#include "ops/ops.h"

#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: model_train CONFIG.json B T STEPS [mtp 0|1] [alpha]\n");
        return 2;
    }
    int B = atoi(argv[2]), T = atoi(argv[3]), steps = atoi(argv[4]);
    int mtp = argc > 5 ? atoi(argv[5]) : 1;
    double alpha = argc > 6 ? atof(argv[6]) : 0.0;
    const char *env = getenv("OMP_NUM_THREADS");
    ds_threads_set(env ? atoi(env) : 0);
    ds_config c;
    if (ds_config_load_file(&c, argv[1])) {
        fprintf(stderr, "model_train: error: %s\n", ds_errmsg());
        return 1;
    }
    if (!mtp) c.num_nextn_predict_layers = 0;
    ds_model_opts o = {.max_batch = B, .max_seq = T, .train = 1, .recompute = 1, .balance_alpha = alpha};
    ds_model *m;
    if (ds_model_create(&m, &c, &o) || ds_model_init(m, 1)) {
        fprintf(stderr, "model_train: error: %s\n", ds_errmsg());
        return 1;
    }
    int n = B * T, D = ds_model_mtp_depth(m);
    int32_t *tok = malloc(sizeof(int32_t) * n), *tgt = malloc(sizeof(int32_t) * n);
    float *dl = malloc(sizeof(float) * n), *dm = malloc(sizeof(float) * (size_t)(D ? D : 1) * n);
    ds_rng r;
    ds_rng_init(&r, 5, 0);
    for (int i = 0; i < n; i++) tok[i] = (int32_t)ds_rng_below(&r, c.vocab_size);
    for (int i = 0; i < n; i++) tgt[i] = i % T + 1 < T ? tok[i + 1] : (int32_t)ds_rng_below(&r, c.vocab_size);
    for (int i = 0; i < n; i++) dl[i] = -1.0f / n;
    for (int i = 0; i < D * n; i++) dm[i] = -0.3f / (D * n);
    ds_batch b = {.B = B, .T = T, .tokens = tok, .targets = tgt};
    double *ms = malloc(sizeof(double) * (steps + 1)), cpu = 0;
    double loss = 0;
    for (int s = 0; s <= steps; s++) {
        double t0 = ds_now(), c0 = cpu_now();
        ds_fwd_out out;
        ds_model_zero_grad(m);
        if (ds_model_forward(m, &b, &out) || ds_model_backward(m, &b, dl, D ? dm : NULL)) {
            fprintf(stderr, "model_train: error: %s\n", ds_errmsg());
            return 1;
        }
        double t1 = ds_now();
        if (s > 0) ms[s - 1] = (t1 - t0) * 1e3, cpu += cpu_now() - c0;
        loss = 0;
        for (int i = 0; i < n; i++) loss -= out.logp[i] / n;
    }
    qsort(ms, steps, sizeof(double), cmp_d);
    double med = ms[steps / 2];
    printf("{\"tokens_per_s\": %.1f, \"median_step_ms\": %.2f, \"min_step_ms\": %.2f, \"cpu_ms_per_step\": %.2f, "
           "\"loss\": %.4f, \"blas_core\": \"%s\", \"threads\": %d, \"params\": %zu, \"mtp\": %d}\n",
           n / (med / 1e3), med, ms[0], cpu * 1e3 / steps, loss, ds_ops_cpu_blas_core(), ds_threads_get(),
           ds_model_num_params(m), D);
    ds_model_free(m);
    return 0;
}
