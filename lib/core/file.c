#include "core/file.h"

#include "core/err.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int ds_is_stdio(const char *path) { return path && path[0] == '-' && path[1] == 0; }

int ds_read_stream(FILE *f, const char *where, char **data, size_t *len, size_t max_bytes) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) return ds_fail(DS_ERR, "out of memory reading %s", where);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                return ds_fail(DS_ERR, "out of memory reading %s", where);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (max_bytes && n > max_bytes) {
            free(buf);
            return ds_fail(DS_ERR, "input larger than %zu bytes: %s", max_bytes, where);
        }
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        return ds_fail(DS_ERR, "read failed: %s: %s", strerror(errno), where);
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

int ds_read_file(const char *path, char **data, size_t *len, size_t max_bytes) {
    if (ds_is_stdio(path)) return ds_read_stream(stdin, "<stdin>", data, len, max_bytes);
    FILE *f = fopen(path, "rb");
    if (!f) return ds_fail(DS_ERR, "cannot open: %s: %s", strerror(errno), path);
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return ds_fail(DS_ERR, "is a directory: %s", path);
    }
    int rc = ds_read_stream(f, path, data, len, max_bytes);
    fclose(f);
    return rc;
}

int ds_atomic_open(ds_atomic *a, const char *path) {
    memset(a, 0, sizeof *a);
    if (ds_is_stdio(path)) {
        a->f = stdout;
        a->is_stdout = 1;
        snprintf(a->path, sizeof a->path, "<stdout>");
        return 0;
    }
    if (strlen(path) >= sizeof a->path) return ds_fail(DS_ERR, "path too long: %s", path);
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%ld", path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f) return ds_fail(DS_ERR, "cannot create: %s: %s", strerror(errno), a->tmp);
    return 0;
}

int ds_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return ds_fail(DS_ERR, "cannot open directory: %s: %s", strerror(errno), dir);
    int rc = fsync(fd);
    close(fd);
    if (rc && errno != EINVAL) return ds_fail(DS_ERR, "fsync failed: %s: %s", strerror(errno), dir);
    return 0;
}

int ds_atomic_commit(ds_atomic *a) {
    if (a->is_stdout) {
        if (fflush(stdout)) return ds_fail(DS_ERR, "write failed: %s: <stdout>", strerror(errno));
        return 0;
    }
    int bad = fflush(a->f) != 0 || fsync(fileno(a->f)) != 0;
    int err = errno;
    bad |= fclose(a->f) != 0;
    a->f = NULL;
    if (bad) {
        unlink(a->tmp);
        return ds_fail(DS_ERR, "write failed: %s: %s", strerror(err ? err : errno), a->path);
    }
    if (rename(a->tmp, a->path)) {
        err = errno;
        unlink(a->tmp);
        return ds_fail(DS_ERR, "rename failed: %s: %s", strerror(err), a->path);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", a->path);
    return ds_fsync_dir(dirname(dir));
}

void ds_atomic_abort(ds_atomic *a) {
    if (a->is_stdout || !a->f) return;
    fclose(a->f);
    a->f = NULL;
    unlink(a->tmp);
}

int ds_atomic_write_file(const char *path, const void *data, size_t len) {
    ds_atomic a;
    DS_TRY(ds_atomic_open(&a, path));
    int rc = ds_write_all(a.f, data, len, a.path);
    if (rc) {
        ds_atomic_abort(&a);
        return rc;
    }
    return ds_atomic_commit(&a);
}

int ds_mkdir_p(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) return ds_fail(DS_ERR, "path too long: %s", path);
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) && errno != EEXIST) return ds_fail(DS_ERR, "cannot create directory: %s: %s", strerror(errno), buf);
        *p = '/';
    }
    if (mkdir(buf, 0777) && errno != EEXIST) return ds_fail(DS_ERR, "cannot create directory: %s: %s", strerror(errno), buf);
    if (!ds_path_is_dir(buf)) return ds_fail(DS_ERR, "not a directory: %s", buf);
    return 0;
}

int ds_path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int ds_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int ds_path_join(char *out, size_t n, const char *dir, const char *name) {
    size_t dl = strlen(dir);
    int w = snprintf(out, n, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
    if (w < 0 || (size_t)w >= n) return ds_fail(DS_ERR, "path too long: %s/%s", dir, name);
    return 0;
}

int ds_check_binary_stdout(int force) {
    if (!force && isatty(1)) {
        ds_fail(DS_ERR, "refusing to write binary data to a terminal: <stdout>");
        ds_hint("redirect to a file or pipe, or pass --force");
        return DS_ERR;
    }
    return 0;
}

int ds_write_all(FILE *f, const void *buf, size_t n, const char *where) {
    if (n && fwrite(buf, 1, n, f) != n) return ds_fail(DS_ERR, "write failed: %s: %s", strerror(errno), where);
    return 0;
}

int ds_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    if (!a || !b || ds_is_stdio(a) || ds_is_stdio(b) || stat(a, &sa) || stat(b, &sb)) return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The pid written in a held lock file, or 0 when it cannot be read. */
static long lock_owner(int fd) {
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

int ds_dir_lock_take(ds_dir_lock *l, const char *dir) {
    char path[4200];
    l->held = 0;
    l->made_dir = !ds_path_exists(dir);
    snprintf(l->dir, sizeof l->dir, "%s", dir);
    DS_TRY(ds_mkdir_p(dir));
    DS_TRY(ds_path_join(path, sizeof path, dir, DS_DIR_LOCK_NAME));
    /* A holder that releases unlinks the file: a lock won on an unlinked file locks nothing, so take
     * it again until the file locked is the one at the path. */
    for (int tries = 0; tries < 100; tries++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0) return ds_fail(DS_ERR, "cannot create the lock file: %s: %s", strerror(errno), path);
        if (flock(fd, LOCK_EX | LOCK_NB)) {
            int err = errno;
            long pid = err == EWOULDBLOCK ? lock_owner(fd) : 0;
            close(fd);
            if (err != EWOULDBLOCK) return ds_fail(DS_ERR, "cannot lock: %s: %s", strerror(err), path);
            char who[48] = "";
            if (pid > 0) snprintf(who, sizeof who, " (pid %ld)", pid);
            ds_fail(DS_ERR, "output directory in use: another process%s is writing it: %s", who, dir);
            ds_hint("wait for it to finish, or write to another directory");
            return DS_ERR;
        }
        struct stat held, now;
        if (fstat(fd, &held) || stat(path, &now) || held.st_ino != now.st_ino || held.st_dev != now.st_dev) {
            close(fd);
            continue;
        }
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
        if (ftruncate(fd, 0) || pwrite(fd, pid, (size_t)n, 0) != n) {
            close(fd);
            return ds_fail(DS_ERR, "cannot write the lock file: %s: %s", strerror(errno), path);
        }
        l->fd = fd;
        l->held = 1;
        return 0;
    }
    return ds_fail(DS_ERR, "cannot lock (the lock file keeps changing): %s", path);
}

void ds_dir_lock_release(ds_dir_lock *l) {
    if (!l->held) return;
    char path[4200];
    if (!ds_path_join(path, sizeof path, l->dir, DS_DIR_LOCK_NAME)) unlink(path);
    close(l->fd);
    l->held = 0;
    if (l->made_dir) rmdir(l->dir); /* only succeeds while empty: nothing was written */
}
