/* file.h — files and paths: whole-file reads, "-" for stdin/stdout, atomic writes.
 *
 * Owns: the rule that "-" means stdin/stdout wherever a path is expected; atomic replacement of a
 * file (write to a temp file in the same directory, fsync, rename, fsync the directory) so readers
 * never see half a file and a killed writer leaves the previous version intact; refusing binary
 * output to a terminal; mkdir -p; whether two paths are one file; the one-writer lock of an output
 * directory.
 */
#ifndef DS_CORE_FILE_H
#define DS_CORE_FILE_H

#include <stddef.h>
#include <stdio.h>

int ds_is_stdio(const char *path); /* path is "-" */

/* Read a whole file ("-" = stdin) into a malloc'd buffer with a NUL after the data.
 * max_bytes bounds memory (0 = no bound). */
int ds_read_file(const char *path, char **data, size_t *len, size_t max_bytes);
int ds_read_stream(FILE *f, const char *where, char **data, size_t *len, size_t max_bytes);

/* Atomic file replacement. */
typedef struct {
    FILE *f;
    char path[4096], tmp[4200];
    int is_stdout;
} ds_atomic;

int ds_atomic_open(ds_atomic *a, const char *path); /* "-" writes to stdout, not atomic */
int ds_atomic_commit(ds_atomic *a);                 /* flush, fsync, rename, fsync dir; closes */
void ds_atomic_abort(ds_atomic *a);                 /* close and remove the temp file */
/* The whole of data as the file at path, replaced atomically ("-": stdout). */
int ds_atomic_write_file(const char *path, const void *data, size_t len);

int ds_fsync_dir(const char *dir);
int ds_mkdir_p(const char *path);
int ds_path_is_dir(const char *path);
int ds_path_exists(const char *path);
/* Join dir and name into out (size n); returns DS_ERR if it does not fit. */
int ds_path_join(char *out, size_t n, const char *dir, const char *name);

/* Refuse to write binary data to a terminal unless forced: returns DS_ERR with a hint. */
int ds_check_binary_stdout(int force);

/* Do a and b name the same existing file or directory (device and inode: "ckpt/sft" and
 * "./ckpt/../ckpt/sft" are one)? 0 when either is "-" or does not exist. */
int ds_same_file(const char *a, const char *b);

/* The writer's lock of an output directory: DIR/.lock, flock'd exclusively while the process writes
 * there, so a second writer is refused instead of tearing the first one's output. The kernel drops it
 * when the process ends (a crash included); the file holds the owner's pid for the message. The
 * directory is created when absent. Checkpoint writers carry the lock file over when they replace the
 * directory (io/checkpoint.c), so it stays held across saves. Error: "output directory in use: another
 * process (pid N) is writing it: <dir>". Release unlinks the file (and removes the directory again if this lock
 * created it and nothing else arrived). */
#define DS_DIR_LOCK_NAME ".lock"
typedef struct {
    int held; /* 0 (a zeroed struct): nothing to release */
    int fd;
    int made_dir;
    char dir[4096];
} ds_dir_lock;
int ds_dir_lock_take(ds_dir_lock *l, const char *dir);
void ds_dir_lock_release(ds_dir_lock *l);

/* fwrite that reports "write failed: <errno>: where" through ds_fail. */
int ds_write_all(FILE *f, const void *buf, size_t n, const char *where);

#endif
