/* log.h — human-facing logging on stderr, progress lines, and wall-clock time.
 *
 * Owns: the log level (quiet / normal / verbose), "ds-NAME: warning: ..." lines, and progress
 * reporting: a redrawn line when stderr is a TTY, a plain periodic line otherwise (no \r or colour in
 * pipes). Everything here writes to stderr only; libds never writes to stdout.
 */
#ifndef DS_CORE_LOG_H
#define DS_CORE_LOG_H

#include <stddef.h>

#include <stdint.h>

#include "core/err.h"

enum { DS_LOG_QUIET = 0, DS_LOG_NORMAL = 1, DS_LOG_VERBOSE = 2 };

void ds_log_init(const char *tool_name);
void ds_log_set_level(int level);
/* A prefix for warnings and errors, e.g. "[host:3] " in a multi-process run ("" by default). */
void ds_log_set_prefix(const char *prefix);
const char *ds_log_prefix(void);
int ds_log_level(void);
int ds_stderr_is_tty(void);

void ds_info(const char *fmt, ...) DS_PRINTF(1, 2);    /* normal level, no prefix */
void ds_verbose(const char *fmt, ...) DS_PRINTF(1, 2); /* verbose level only */
void ds_warn(const char *fmt, ...) DS_PRINTF(1, 2);    /* "ds-NAME: warning: ..." unless quiet */

double ds_now(void);
/* A duration for people: "8.2s", "4m05s", "2h07m" (seconds below a minute keep a decimal). */
void ds_format_duration(double seconds, char *buf, size_t n); /* monotonic seconds */

/* Progress over a known (total > 0) or unknown (total = 0) amount of work. */
typedef struct {
    const char *label;
    const char *unit; /* "B" prints bytes as MB; otherwise a count with this unit */
    double total, done;
    double t0, last_print;
    int tty, active;
} ds_progress;

void ds_progress_begin(ds_progress *p, const char *label, const char *unit, double total);
void ds_progress_update(ds_progress *p, double done); /* cheap; prints at most every 0.2 s (tty) / 10 s */
void ds_progress_end(ds_progress *p);

#endif
