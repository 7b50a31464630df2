#include "core/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DS_ERRMSG_MAX 1024

static _Thread_local char err_msg[DS_ERRMSG_MAX];
static _Thread_local char err_hint[DS_ERRMSG_MAX];
static _Thread_local int err_silenced;

int ds_fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    err_hint[0] = 0;
    err_silenced = 0;
    return code;
}

int ds_fail_ctx(int code, const char *fmt, ...) {
    char ctx[DS_ERRMSG_MAX], old[DS_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    memcpy(old, err_msg, sizeof old);
    size_t n = strlen(ctx);
    if (n > sizeof err_msg - 3) n = sizeof err_msg - 3;
    memcpy(err_msg, ctx, n);
    if (old[0]) {
        err_msg[n++] = ':';
        err_msg[n++] = ' ';
        size_t m = strlen(old);
        if (m > sizeof err_msg - 1 - n) m = sizeof err_msg - 1 - n;
        memcpy(err_msg + n, old, m);
        n += m;
    }
    err_msg[n] = 0;
    return code;
}

void ds_hint(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_hint, sizeof err_hint, fmt, ap);
    va_end(ap);
}

const char *ds_errmsg(void) { return err_msg; }
const char *ds_errhint(void) { return err_hint; }

void ds_err_silence(void) { err_silenced = 1; }
int ds_err_silenced(void) { return err_silenced; }

void ds_err_clear(void) {
    err_msg[0] = 0;
    err_hint[0] = 0;
    err_silenced = 0;
}
