/* cli.h — the one command-line parser every ds-* tool uses.
 *
 * Owns: option tables, getopt_long parsing with typed validation, --help generated from the table
 * (so help and parser cannot drift apart; defaults are read from the destination variables at the
 * time help is printed), --version, and the tool's error/warning printing conventions:
 *   ds-NAME: error: <what>: <where>      (stderr, exit 1 runtime / 2 usage / 3 diverged)
 * Tables may include other tables (DS_OPT_GROUP), so options shared by several tools are defined once.
 * This is the only part of libds that writes to stdout (help, version), on the tool's request.
 */
#ifndef DS_CORE_CLI_H
#define DS_CORE_CLI_H

#include <stdint.h>
#include <stdio.h>

typedef enum {
    DS_OPT_FLAG,    /* int*, set to 1 */
    DS_OPT_INT,     /* int* */
    DS_OPT_I64,     /* int64_t* (accepts K/M/G suffixes: 1K = 1000) */
    DS_OPT_FLOAT,   /* double* */
    DS_OPT_STR,     /* const char** */
    DS_OPT_STRLIST, /* ds_strlist*, repeatable */
    DS_OPT_CHOICE,  /* const char**, value must be one of `choices` ("a|b|c") */
    DS_OPT_BYTES,   /* int64_t*, a byte size: K/M/G suffixes are powers of 1024 (as nccl-tests) */
    DS_OPT_U64,     /* uint64_t*, decimal 0 .. 2^64-1 (no sign, no suffix) */
    DS_OPT_SEED,    /* uint64_t*, as DS_OPT_U64; --help says the default is a random seed (the tool draws
                       one when ds_cli_given says the option was not given) */
    DS_OPT_GROUP,   /* const ds_opt*: another table (name == NULL ends it) whose entries stand here; options
                       several tools share are defined once and placed where each tool lists them */
} ds_opt_type;

typedef struct {
    const char **v;
    int n, cap;
} ds_strlist;

typedef struct {
    const char *name; /* long name without dashes */
    char short_name;  /* 0 for none */
    ds_opt_type type;
    void *dest;
    const char *metavar; /* "N", "FILE"; NULL for flags */
    const char *help;
    const char *choices; /* DS_OPT_CHOICE only */
    double min, max;     /* numeric range check when min < max */
} ds_opt;

typedef struct {
    const char *name;    /* "ds-pretrain" or "ds-tokenize encode" */
    const char *usage;   /* "[OPTIONS] [FILE...|-]" */
    const char *summary; /* one paragraph, what the program does */
    const char *example; /* example pipeline(s), printed last */
    const ds_opt *opts;  /* terminated by an entry with name == NULL */
} ds_cli;

/* Parse argv. Returns -1 to continue (positional arguments start at *optind_out), or an exit code:
 * 0 after printing --help/--version, 2 after printing a usage error. */
int ds_cli_parse(const ds_cli *cli, int argc, char **argv, int *optind_out);
void ds_cli_help(const ds_cli *cli, FILE *f);
/* After ds_cli_parse: how the user spelled the option that wrote into dest ("-m" or "--model"; the
 * last one given), or NULL when none did. Long options must be spelled in full (no abbreviations);
 * an unknown one is a usage error naming the closest real option ("did you mean --eps?"). */
const char *ds_cli_given(const void *dest);
/* The option that wrote into dest as the user spelled it, else `name`: for messages about its value. */
const char *ds_cli_opt(const void *dest, const char *name);
void ds_strlist_push(ds_strlist *l, const char *s);
void ds_strlist_free(ds_strlist *l);

/* How this process was started, read from the environment: by an MPI process manager (mpirun, or
 * srun with an MPI plugin: mpi = 1), by another launcher that starts several processes (torchrun:
 * WORLD_SIZE/RANK; srun without an MPI plugin: SLURM_STEP_NUM_TASKS/SLURM_PROCID, which a batch
 * script, one process, lacks),
 * or alone (launcher NULL, rank 0, size 1). size is 0 when an MPI launcher does not say it. */
typedef struct {
    const char *launcher; /* "mpirun", "an MPI launcher", "torchrun", "srun", or NULL */
    int mpi, rank, size;
} ds_launch;
ds_launch ds_launch_get(void);

/* Tool identity and reporting. ds_tool_init also reads DS_LOG (quiet|verbose) defaults and, in a
 * run of several processes, prefixes warnings and errors with "[host:rank] ". */
void ds_tool_init(const char *name);
const char *ds_tool_name(void);
/* Print "ds-NAME: error: <ds_errmsg()>" (+ "hint: ..." line) to stderr, unless the error was
 * reported by another process (ds_err_silenced); returns rc for `return`. */
int ds_tool_report(int rc);
/* Print a usage error and return 2. The command line is the same in every process of a run, so in a
 * run of several processes only rank 0 prints it. */
int ds_usage_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

extern const char ds_version_string[];

#endif
