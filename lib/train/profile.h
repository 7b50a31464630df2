/* profile.h — the --profile report of the training tools.
 *
 * Owns: how the profile of ops/prof.h is shown: tables on the log (time per region of the step, i.e. per
 * layer kind, with each region's GEMM class, its FLOPs and rate; time per op kind; the share outside
 * GEMMs) and one metrics record {"profile": {...}} (keys in docs/METRICS.md). Values are per profiled step.
 */
#ifndef DS_TRAIN_PROFILE_H
#define DS_TRAIN_PROFILE_H

#include "core/jsonw.h"

/* Report what ds_prof collected (nothing when no step was profiled). metrics: the run's metrics file,
 * or NULL. */
int ds_train_profile_report(ds_metrics *metrics);

#endif
