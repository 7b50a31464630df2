#include "rl/reward_cmd.h"

#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

enum { OUTPUT_MAX = 64 << 20 };

void ds_reward_cmd_line(const ds_reward_input *in, ds_jsonw *w) {
    ds_jsonw_reset(w);
    ds_jsonw_obj_begin(w);
    ds_jsonw_kint(w, "index", in->index);
    ds_jsonw_kint(w, "group", in->group);
    ds_jsonw_key(w, "prompt");
    ds_jsonw_strn(w, in->prompt ? in->prompt : "", in->prompt ? in->prompt_len : 0);
    if (in->messages) {
        ds_jsonw_key(w, "messages");
        ds_jsonw_raw(w, in->messages);
    }
    ds_jsonw_key(w, "completion");
    if (in->completion) ds_jsonw_strn(w, in->completion, in->completion_len);
    else ds_jsonw_null(w);
    ds_jsonw_key(w, "answer");
    if (in->answer) ds_jsonw_strn(w, in->answer, in->answer_len);
    else ds_jsonw_null(w);
    ds_jsonw_kstr(w, "finish_reason", in->finish ? in->finish : "none");
    ds_jsonw_kint(w, "tokens", in->n_tokens);
    ds_jsonw_obj_end(w);
}

/* The offending line for a message: at most 40 bytes, unprintable bytes as '?'. */
static void quote(const char *s, size_t n, char *buf, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap && i < 40; i++) buf[k++] = (s[i] >= 32 && s[i] < 127) ? s[i] : '?';
    if (n > 40 && k + 4 < cap) buf[k++] = '.', buf[k++] = '.', buf[k++] = '.';
    buf[k] = 0;
}

int ds_reward_cmd_parse(const char *out, size_t len, int n, double *vals) {
    int lines = 0;
    for (size_t i = 0; i < len; i++) lines += out[i] == '\n';
    if (len && out[len - 1] != '\n') lines++;
    if (lines != n)
        return ds_fail(DS_ERR, "reward program: printed %d line%s for %d completion%s (one number per line expected)", lines,
                       lines == 1 ? "" : "s", n, n == 1 ? "" : "s");
    const char *p = out;
    for (int k = 0; k < n; k++) {
        const char *nl = memchr(p, '\n', (size_t)(out + len - p));
        size_t m = nl ? (size_t)(nl - p) : (size_t)(out + len - p);
        const char *s = p;
        size_t sn = m;
        while (sn && (*s == ' ' || *s == '\t')) s++, sn--;
        while (sn && (s[sn - 1] == ' ' || s[sn - 1] == '\t' || s[sn - 1] == '\r')) sn--;
        char buf[64], q[64];
        double v = NAN;
        int ok = sn > 0 && sn < sizeof buf;
        if (ok) {
            memcpy(buf, s, sn);
            buf[sn] = 0;
            char *end;
            v = strtod(buf, &end);
            ok = *end == 0 && end != buf;
        }
        if (!ok) {
            quote(p, m, q, sizeof q);
            return ds_fail(DS_ERR, "reward program: line %d: not a number: '%s'", k + 1, q);
        }
        if (!isfinite(v)) {
            quote(p, m, q, sizeof q);
            return ds_fail(DS_ERR, "reward program: line %d: not a finite number: '%s'", k + 1, q);
        }
        vals[k] = v;
        p += m + 1;
    }
    return 0;
}

static int set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -1 : 0;
}

static int spawn(const char *cmd, int in[2], int out[2], pid_t *pid) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t def, none;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    /* its own process group (a timeout kills the whole pipeline it starts; a terminal's ^C reaches
     * ds-rl, which finishes the step), default dispositions for what we ignore or catch */
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    char *argv[] = {"sh", "-c", (char *)cmd, NULL};
    int e = posix_spawn(pid, "/bin/sh", &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (e) return ds_fail(DS_ERR, "reward program: cannot start /bin/sh: %s: %s", strerror(e), cmd);
    return 0;
}

static int wait_until(pid_t pid, double deadline, int *status) {
    for (;;) {
        pid_t w = waitpid(pid, status, WNOHANG);
        if (w == pid) return 1;
        if (w < 0 && errno != EINTR) return -1;
        if (ds_now() >= deadline) return 0;
        poll(NULL, 0, 5);
    }
}

int ds_reward_cmd_run(const char *cmd, const char *input, size_t len, int n, double timeout_s, double *vals) {
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) {
        int e = errno;
        for (int k = 0; k < 2; k++) {
            if (in[k] >= 0) close(in[k]);
            if (out[k] >= 0) close(out[k]);
        }
        return ds_fail(DS_ERR, "reward program: pipe: %s", strerror(e));
    }
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_pipe;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe);
    pid_t pid = -1;
    int rc = spawn(cmd, in, out, &pid);
    close(in[0]);
    close(out[1]);
    int wfd = in[1], rfd = out[0];
    char *buf = NULL;
    size_t got = 0, cap = 0, sent = 0;
    const double deadline = ds_now() + (timeout_s > 0 ? timeout_s : 1e9);
    int timed_out = 0;
    if (!rc && (set_nonblock(wfd) || set_nonblock(rfd))) rc = ds_fail(DS_ERR, "reward program: fcntl: %s", strerror(errno));
    if (!rc && len == 0) close(wfd), wfd = -1;
    while (!rc && rfd >= 0) {
        struct pollfd pf[2];
        int np = 0, iw = -1;
        pf[np++] = (struct pollfd){.fd = rfd, .events = POLLIN};
        if (wfd >= 0) iw = np, pf[np++] = (struct pollfd){.fd = wfd, .events = POLLOUT};
        double left = deadline - ds_now();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int pr = poll(pf, (nfds_t)np, left > 3600 ? 3600000 : (int)(left * 1000) + 1);
        if (pr < 0) {
            if (errno == EINTR) continue;
            rc = ds_fail(DS_ERR, "reward program: poll: %s", strerror(errno));
            break;
        }
        if (iw >= 0 && pf[iw].revents) {
            size_t chunk = len - sent < 65536 ? len - sent : 65536;
            ssize_t w = write(wfd, input + sent, chunk);
            if (w > 0) sent += (size_t)w;
            /* a program that stops reading is judged by what it prints and its exit status */
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || sent == len) close(wfd), wfd = -1;
        }
        if (pf[0].revents) {
            if (cap - got < 65536) {
                size_t nc = cap ? 2 * cap : 65536;
                char *nb = realloc(buf, nc);
                if (!nb) {
                    rc = ds_fail(DS_ERR, "reward program: out of memory reading its output");
                    break;
                }
                buf = nb, cap = nc;
            }
            ssize_t r = read(rfd, buf + got, cap - got);
            if (r > 0) {
                got += (size_t)r;
                if (got > OUTPUT_MAX) {
                    rc = ds_fail(DS_ERR, "reward program: printed more than %d MB for %d completions: %s", OUTPUT_MAX >> 20, n, cmd);
                    break;
                }
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(rfd), rfd = -1;
            }
        }
    }
    if (wfd >= 0) close(wfd);
    if (rfd >= 0) close(rfd);
    int status = 0;
    if (pid > 0) {
        int done = timed_out ? 0 : wait_until(pid, deadline, &status);
        if (done <= 0) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            if (!rc) {
                timed_out = 1;
                rc = ds_fail(DS_ERR, "reward program: timed out after %g s: %s", timeout_s, cmd);
                ds_hint("raise --reward-timeout, or make the program read all of stdin and exit");
            }
        }
    }
    sigaction(SIGPIPE, &old_pipe, NULL);
    if (!rc && WIFSIGNALED(status))
        rc = ds_fail(DS_ERR, "reward program: killed by signal %d (%s): %s", WTERMSIG(status), strsignal(WTERMSIG(status)), cmd);
    else if (!rc && WIFEXITED(status) && WEXITSTATUS(status) > 128 && WEXITSTATUS(status) < 128 + 65)
        /* sh reports a command it ran that died of signal s as status 128 + s */
        rc = ds_fail(DS_ERR, "reward program: exited with status %d (killed by signal %d, %s): %s", WEXITSTATUS(status),
                     WEXITSTATUS(status) - 128, strsignal(WEXITSTATUS(status) - 128), cmd);
    else if (!rc && WIFEXITED(status) && WEXITSTATUS(status) != 0)
        rc = ds_fail(DS_ERR, "reward program: exited with status %d: %s", WEXITSTATUS(status), cmd);
    if (!rc) rc = ds_reward_cmd_parse(buf ? buf : "", got, n, vals);
    free(buf);
    return rc;
}

/* ---- the "cmd" reward ---- */

typedef struct {
    char *cmd;
    double timeout;
} program;

static int score_cmd(ds_reward *r, const ds_reward_input *in, int n, double *out) {
    const program *p = r->impl;
    ds_jsonw line;
    ds_jsonw_init(&line);
    size_t cap = 0, len = 0;
    char *text = NULL;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        ds_reward_cmd_line(&in[i], &line);
        if (len + line.len + 2 > cap) {
            size_t nc = cap ? cap : 4096;
            while (nc < len + line.len + 2) nc *= 2;
            char *t = realloc(text, nc);
            if (!t) {
                rc = ds_fail(DS_ERR, "out of memory: reward program input");
                break;
            }
            text = t, cap = nc;
        }
        memcpy(text + len, line.buf, line.len);
        len += line.len;
        text[len++] = '\n';
    }
    ds_jsonw_free(&line);
    if (!rc) rc = ds_reward_cmd_run(p->cmd, text ? text : "", len, n, p->timeout, out);
    free(text);
    return rc;
}

static void free_cmd(ds_reward *r) {
    program *p = r->impl;
    if (p) free(p->cmd);
    free(p);
    free(r);
}

int ds_reward_cmd_create(ds_reward **out, const char *cmd, double timeout_s) {
    ds_reward *r = calloc(1, sizeof *r);
    program *p = calloc(1, sizeof *p);
    if (!r || !p || !(p->cmd = strdup(cmd))) {
        free(r), free(p);
        return ds_fail(DS_ERR, "out of memory: reward program");
    }
    p->timeout = timeout_s;
    snprintf(r->name, sizeof r->name, "cmd");
    r->weight = 1;
    r->score = score_cmd;
    r->free = free_cmd;
    r->impl = p;
    *out = r;
    return 0;
}
