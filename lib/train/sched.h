/* sched.h — schedules: a value (learning rate, batch size, bias update speed gamma, MTP weight lambda)
 * as a function of training progress, with every knee given in optimizer steps or in tokens.
 *
 * Owns: the schedule text syntax, its parsing and validation, and evaluation. A schedule is a list of
 * points (knee, value) with a shape for each stretch between two points (hold, linear, cosine,
 * 1-sqrt). Knees are absolute positions: steps ("2000", "2Ks", "80%" of the run's steps) or tokens
 * ("10Ttok", "469Btok"). Interpolation runs in the unit of the stretch's end knee; where the start
 * knee is in the other unit, the position at which it was crossed is recorded (the schedule's only
 * state, saved with the trainer state so a resumed run evaluates identically).
 *
 * Syntax (docs/DESIGN.md "Schedules"):
 *   0.001                                constant
 *   0.3,0.1@10Ttok                       piecewise constant: 0.3, then 0.1 from 10T tokens on
 *   linear:3072@0,15360@469Btok          piecewise linear between points (holds the last value)
 *   v3[:peak=,warmup=,hold=,decay=,min=,tail=,final=]   DeepSeek-V3's learning-rate shape
 *   cosine[:peak=,warmup=,end=,min=]     linear warmup, cosine decay to min at end, then min
 *   wsd[:peak=,warmup=,decay=,end=,min=,shape=linear|cosine|sqrt]  warmup-stable-decay
 * peak defaults to the value the caller passes (e.g. --lr); min/final accept "N%" of peak.
 */
#ifndef DS_TRAIN_SCHED_H
#define DS_TRAIN_SCHED_H

#include <stdint.h>

#include "core/jsonw.h"

typedef enum { DS_UNIT_STEPS = 0, DS_UNIT_TOKENS = 1 } ds_unit;
typedef enum { DS_SHAPE_HOLD = 0, DS_SHAPE_LINEAR, DS_SHAPE_COSINE, DS_SHAPE_SQRT } ds_shape;

/* Where training stands: optimizer steps completed and tokens consumed. */
typedef struct {
    int64_t step;
    double tokens;
} ds_progress_pos;

enum { DS_SCHED_MAX_POINTS = 16 };

typedef struct {
    double at; /* knee position in `unit` */
    ds_unit unit;
    double value;
    ds_shape shape; /* how the value moves towards the next point */
    /* position where progress first reached this knee (cross_step < 0: not yet) */
    int64_t cross_step;
    double cross_tokens;
} ds_sched_point;

typedef struct {
    char spec[256]; /* the text it was parsed from */
    int n;
    ds_sched_point pt[DS_SCHED_MAX_POINTS];
} ds_sched;

/* Parse `spec`. peak: the default peak value for v3/cosine/wsd (e.g. --lr); total_steps resolves
 * "N%" knees. `what` names the option in messages: "--lr-schedule: <problem>: '<spec>'". */
int ds_sched_parse(ds_sched *s, const char *spec, double peak, int64_t total_steps, const char *what);

/* The value at progress p. Also records knee crossings up to p, so call it with non-decreasing p. */
double ds_sched_at(ds_sched *s, ds_progress_pos p);
/* The value at p without touching the state (for printing/planning). */
double ds_sched_peek(const ds_sched *s, ds_progress_pos p);
/* Largest value the schedule can take (e.g. to size buffers for a batch ramp). */
double ds_sched_max(const ds_sched *s);

/* Human description of the resolved points, e.g. "0@0s -linear-> 0.00022@2000s -hold-> ..." */
void ds_sched_describe(const ds_sched *s, char *buf, int n);

/* State: the recorded crossings, as a JSON array value. */
void ds_sched_state_write(const ds_sched *s, ds_jsonw *w);
/* `json` is a jansson json_t* array written by ds_sched_state_write for the same spec. */
int ds_sched_state_read(ds_sched *s, const void *json, const char *where);

#endif
