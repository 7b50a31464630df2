#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_level = DS_LOG_NORMAL;
static char log_name[64] = "ds";
static char log_prefix[96] = "";

void ds_log_init(const char *tool_name) {
    snprintf(log_name, sizeof log_name, "%s", tool_name);
    const char *e = getenv("DS_LOG");
    if (e && !strcmp(e, "quiet")) log_level = DS_LOG_QUIET;
    if (e && !strcmp(e, "verbose")) log_level = DS_LOG_VERBOSE;
}

void ds_log_set_level(int level) { log_level = level; }
void ds_log_set_prefix(const char *prefix) { snprintf(log_prefix, sizeof log_prefix, "%s", prefix ? prefix : ""); }
const char *ds_log_prefix(void) { return log_prefix; }
int ds_log_level(void) { return log_level; }
int ds_stderr_is_tty(void) { return isatty(2); }

static void vlog(const char *prefix, const char *fmt, va_list ap) {
    char buf[4096];
    vsnprintf(buf, sizeof buf, fmt, ap);
    /* one write per line so lines from several ranks/threads do not interleave mid-line */
    fprintf(stderr, "%s%s\n", prefix, buf);
}

void ds_info(const char *fmt, ...) {
    if (log_level < DS_LOG_NORMAL) return;
    va_list ap;
    va_start(ap, fmt);
    vlog("", fmt, ap);
    va_end(ap);
}

void ds_verbose(const char *fmt, ...) {
    if (log_level < DS_LOG_VERBOSE) return;
    va_list ap;
    va_start(ap, fmt);
    vlog("", fmt, ap);
    va_end(ap);
}

void ds_warn(const char *fmt, ...) {
    if (log_level < DS_LOG_NORMAL) return;
    char prefix[192];
    snprintf(prefix, sizeof prefix, "%s%s: warning: ", log_prefix, log_name);
    va_list ap;
    va_start(ap, fmt);
    vlog(prefix, fmt, ap);
    va_end(ap);
}

double ds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ds_format_duration(double seconds, char *buf, size_t n) {
    if (!(seconds >= 0)) seconds = 0;
    if (seconds < 59.95) {
        snprintf(buf, n, "%.1fs", seconds);
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s < 3600) snprintf(buf, n, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, n, "%ldh%02ldm", s / 3600, s / 60 % 60);
}

void ds_progress_begin(ds_progress *p, const char *label, const char *unit, double total) {
    memset(p, 0, sizeof *p);
    p->label = label;
    p->unit = unit ? unit : "";
    p->total = total;
    p->t0 = p->last_print = ds_now();
    p->tty = ds_stderr_is_tty();
    p->active = log_level >= DS_LOG_NORMAL;
}

static void progress_print(ds_progress *p, double now, int final) {
    double el = now - p->t0;
    double rate = el > 0 ? p->done / el : 0;
    char amount[64], speed[64];
    if (!strcmp(p->unit, "B")) {
        if (p->total > 0)
            snprintf(amount, sizeof amount, "%.1f/%.1f MB", p->done / 1e6, p->total / 1e6);
        else
            snprintf(amount, sizeof amount, "%.1f MB", p->done / 1e6);
        snprintf(speed, sizeof speed, "%.1f MB/s", rate / 1e6);
    } else {
        if (p->total > 0)
            snprintf(amount, sizeof amount, "%.0f/%.0f %s", p->done, p->total, p->unit);
        else
            snprintf(amount, sizeof amount, "%.0f %s", p->done, p->unit);
        snprintf(speed, sizeof speed, "%.1f %s/s", rate, p->unit);
    }
    char pct[32] = "";
    if (p->total > 0) snprintf(pct, sizeof pct, "%5.1f%% ", 100.0 * p->done / p->total);
    if (p->tty)
        fprintf(stderr, "\r%s: %s%s  %s  %.1fs\033[K%s", p->label, pct, amount, speed, el, final ? "\n" : "");
    else
        fprintf(stderr, "%s: %s%s  %s  %.1fs\n", p->label, pct, amount, speed, el);
}

void ds_progress_update(ds_progress *p, double done) {
    p->done = done;
    if (!p->active) return;
    double now = ds_now();
    double every = p->tty ? 0.2 : 10.0;
    if (now - p->last_print < every) return;
    p->last_print = now;
    progress_print(p, now, 0);
}

void ds_progress_end(ds_progress *p) {
    if (!p->active) return;
    /* a pipe gets a final line only if the work was long enough to have printed progress at all */
    if (p->tty || ds_now() - p->t0 >= 10.0) progress_print(p, ds_now(), 1);
}
