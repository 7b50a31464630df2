/* err.h — libds error reporting.
 *
 * Owns: the status codes every libds function returns and the thread-local error message behind them.
 * libds never prints and never exits: a failing function records "<what>: <where>" with ds_fail() and
 * returns its code; the tool prints "ds-NAME: error: <message>" and exits with that code.
 */
#ifndef DS_CORE_ERR_H
#define DS_CORE_ERR_H

enum {
    DS_OK = 0,
    DS_ERR = 1,       /* runtime or input error (bad file, I/O) -> exit 1 */
    DS_EUSAGE = 2,    /* usage error -> exit 2 */
    DS_EDIVERGED = 3, /* training diverged (NaN/Inf) -> exit 3 */
};

#if defined(__GNUC__)
#define DS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DS_PRINTF(a, b)
#endif

/* Record an error message (printf-style) and return `code`, so callers can `return ds_fail(...)`. */
int ds_fail(int code, const char *fmt, ...) DS_PRINTF(2, 3);
/* Prepend context to the current message: "ctx: <old message>". Returns `code`. */
int ds_fail_ctx(int code, const char *fmt, ...) DS_PRINTF(2, 3);
/* Optional second line "hint: ..." printed by tools under the error. */
void ds_hint(const char *fmt, ...) DS_PRINTF(1, 2);

/* Mark the current error as reported by another process of the same run (an MPI rank that failed
 * the same way, or rank 0 for an error every rank meets): tools then print nothing for it and only
 * exit with its code, so a distributed run prints each failure once. ds_fail clears the mark. */
void ds_err_silence(void);
int ds_err_silenced(void);

const char *ds_errmsg(void);  /* "" when none */
const char *ds_errhint(void); /* "" when none */
void ds_err_clear(void);

/* Propagate a non-zero status. */
#define DS_TRY(expr)                                                                                    \
    do {                                                                                                \
        int ds_try_rc_ = (expr);                                                                        \
        if (ds_try_rc_) return ds_try_rc_;                                                              \
    } while (0)

#endif
