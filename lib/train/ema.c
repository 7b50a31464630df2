#include "train/ema.h"

#include "core/err.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ds_ema {
    float *avg, *snap;
    size_t n;
    double decay;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending; /* a snapshot waits for (or is under) the update */
    int quit;
    double submit_s, t_submit;
    long n_submits;
};

void ds_ema_update(float *avg, const float *w, size_t n, double decay) {
    const float a = (float)decay, b = (float)(1.0 - decay);
    for (size_t i = 0; i < n; i++) avg[i] = a * avg[i] + b * w[i];
}

static void *worker(void *arg) {
    ds_ema *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->pending && !e->quit) pthread_cond_wait(&e->cv, &e->mu);
        if (!e->pending) break; /* quit with nothing left to do */
        pthread_mutex_unlock(&e->mu);
        ds_ema_update(e->avg, e->snap, e->n, e->decay);
        pthread_mutex_lock(&e->mu);
        e->pending = 0;
        pthread_cond_broadcast(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

int ds_ema_create(ds_ema **out, size_t n, double decay, const float *init) {
    *out = NULL;
    if (!(decay > 0 && decay < 1)) return ds_fail(DS_EUSAGE, "EMA decay %g: must be in (0, 1)", decay);
    ds_ema *e = calloc(1, sizeof *e);
    if (!e) return ds_fail(DS_ERR, "out of memory: EMA");
    e->n = n, e->decay = decay;
    e->avg = malloc((n ? n : 1) * sizeof(float));
    e->snap = malloc((n ? n : 1) * sizeof(float));
    if (!e->avg || !e->snap) {
        free(e->avg), free(e->snap), free(e);
        return ds_fail(DS_ERR, "out of memory: EMA of %zu parameters (twice that in host memory)", n);
    }
    memcpy(e->avg, init, n * sizeof(float));
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (pthread_create(&e->thread, NULL, worker, e)) {
        pthread_mutex_destroy(&e->mu), pthread_cond_destroy(&e->cv);
        free(e->avg), free(e->snap), free(e);
        return ds_fail(DS_ERR, "EMA: cannot start its thread");
    }
    *out = e;
    return 0;
}

static void wait_locked(ds_ema *e) {
    while (e->pending) pthread_cond_wait(&e->cv, &e->mu);
}

void ds_ema_wait(ds_ema *e) {
    pthread_mutex_lock(&e->mu);
    wait_locked(e);
    pthread_mutex_unlock(&e->mu);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

float *ds_ema_snapshot(ds_ema *e) {
    e->t_submit = now();
    ds_ema_wait(e); /* the snapshot is the thread's until its update is done */
    return e->snap;
}

void ds_ema_release(ds_ema *e) {
    pthread_mutex_lock(&e->mu);
    e->pending = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    e->submit_s += now() - e->t_submit;
    e->n_submits++;
}

void ds_ema_submit(ds_ema *e, const float *w) {
    memcpy(ds_ema_snapshot(e), w, e->n * sizeof(float));
    ds_ema_release(e);
}

float *ds_ema_values(ds_ema *e) { return e->avg; }
size_t ds_ema_size(const ds_ema *e) { return e->n; }

double ds_ema_submit_seconds(const ds_ema *e, long *n_submits) {
    if (n_submits) *n_submits = e->n_submits;
    return e->submit_s;
}

void ds_ema_free(ds_ema *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->quit = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e->avg);
    free(e->snap);
    free(e);
}
