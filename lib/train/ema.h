/* ema.h — an exponential moving average of the weights in host memory (--ema DECAY), as V3 keeps one
 * to estimate the model after learning-rate decay without training it to the end.
 *
 * Owns: the average (fp32, one float per parameter), the snapshot it is updated from, and the
 * background thread that updates it. After each optimizer step the caller hands over the weights
 * (ds_ema_submit): they are copied into the snapshot (the only cost the step pays; a device's weights
 * are copied to the host) and the thread computes avg = decay*avg + (1-decay)*snapshot while the next
 * step runs. A submit waits only when the previous update has not finished yet (the thread then runs
 * a full step behind); ds_ema_wait waits for the update in flight, before the average is read.
 * The update is elementwise in float: a = (float)decay, b = (float)(1 - decay), avg = a*avg + b*w,
 * so numpy in float32 computes the same bits.
 */
#ifndef DS_TRAIN_EMA_H
#define DS_TRAIN_EMA_H

#include <stddef.h>

typedef struct ds_ema ds_ema;

/* The average starts as a copy of `init` (n floats, host memory: the weights before the first step). */
int ds_ema_create(ds_ema **out, size_t n, double decay, const float *init);
void ds_ema_free(ds_ema *e);

/* One step's weights in host memory: waits for an update still in flight, copies them into the
 * snapshot and wakes the thread. Weights elsewhere (a device): ds_ema_snapshot gives the snapshot
 * (after the same wait) to be filled, ds_ema_release hands it to the thread. */
void ds_ema_submit(ds_ema *e, const float *w);
float *ds_ema_snapshot(ds_ema *e);
void ds_ema_release(ds_ema *e);
/* Wait for the update in flight; then the average is current. */
void ds_ema_wait(ds_ema *e);
/* The average (valid after ds_ema_wait; may be overwritten there, e.g. when resuming). */
float *ds_ema_values(ds_ema *e);
size_t ds_ema_size(const ds_ema *e);
/* Seconds the steps spent in ds_ema_submit (copy and waiting) and how many submits there were. */
double ds_ema_submit_seconds(const ds_ema *e, long *n_submits);

/* The update itself, in place: avg = a*avg + b*w over n floats (a, b as above). */
void ds_ema_update(float *avg, const float *w, size_t n, double decay);

#endif
