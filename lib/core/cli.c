#include "core/cli.h"

#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef DS_VERSION
#define DS_VERSION "0.1.0"
#endif
#ifndef DS_GIT
#define DS_GIT "unknown"
#endif

const char ds_version_string[] = DS_VERSION " (" DS_GIT ")";

static char tool_name[64] = "ds";

/* OpenMP reads OMP_WAIT_POLICY once, when the runtime loads, before main. Its default lets idle
 * threads spin, which on a shared or oversubscribed machine (several tools in a pipeline, MPI ranks
 * on few cores) starves the threads doing the work: we measured prefill 17x slower. Our parallel
 * regions are coarse, so sleeping costs little; when the user has not chosen a policy we re-execute
 * the program once with "passive". DS_NO_REEXEC=1 turns this off. */
static void reexec_with_passive_openmp(void) {
    if (getenv("OMP_WAIT_POLICY") || getenv("DS_NO_REEXEC")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1)) return;
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int complete = feof(f);
    fclose(f);
    if (!n || !complete) return; /* an argv too long to rebuild: keep running as we are */
    buf[n] = 0;
    char *argv[4096];
    int argc = 0;
    for (size_t i = 0; i < n && argc < 4095; i += strlen(buf + i) + 1) argv[argc++] = buf + i;
    argv[argc] = NULL;
    execv("/proc/self/exe", argv);
    /* exec failed: continue without the policy rather than fail the tool */
}

/* The first of these variables that is set, as an int (def when none is, or it is not a number). */
static int env_int(const char *const *names, int def) {
    for (; *names; names++) {
        const char *v = getenv(*names);
        if (v && *v) {
            char *end;
            long x = strtol(v, &end, 10);
            return *end || x < 0 || x > 1 << 30 ? def : (int)x;
        }
    }
    return def;
}

ds_launch ds_launch_get(void) {
    static const char *const ompi[] = {"OMPI_COMM_WORLD_SIZE", NULL};
    static const char *const mpi_marks[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE", NULL};
    static const char *const mpi_rank[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID", NULL};
    static const char *const mpi_size[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", NULL};
    static const char *const torch_size[] = {"WORLD_SIZE", NULL}, *const torch_rank[] = {"RANK", NULL};
    static const char *const slurm_size[] = {"SLURM_STEP_NUM_TASKS", NULL}, *const slurm_rank[] = {"SLURM_PROCID", NULL};
    ds_launch l = {NULL, 0, 0, 1};
    if (env_int(mpi_marks, -1) >= 0) /* an MPI process manager: the MPI world is the truth */
        l = (ds_launch){env_int(ompi, -1) >= 0 ? "mpirun" : "an MPI launcher", 1, env_int(mpi_rank, 0), env_int(mpi_size, 0)};
    else if (getenv("WORLD_SIZE")) /* torchrun and torch.distributed's other launchers */
        l = (ds_launch){"torchrun", 0, env_int(torch_rank, 0), env_int(torch_size, 1)};
    else if (getenv("SLURM_PROCID") && getenv("SLURM_STEP_NUM_TASKS"))
        /* a task of an srun step; a batch script has SLURM_NTASKS and SLURM_PROCID too, but no step,
         * and is one process */
        l = (ds_launch){"srun", 0, env_int(slurm_rank, 0), env_int(slurm_size, 1)};
    return l;
}

void ds_tool_init(const char *name) {
    reexec_with_passive_openmp();
    snprintf(tool_name, sizeof tool_name, "%s", name);
    ds_log_init(tool_name);
    const ds_launch l = ds_launch_get();
    if (l.launcher && l.size != 1) { /* one of several processes: its messages say which */
        char host[64] = "unknown", prefix[96];
        if (gethostname(host, sizeof host)) snprintf(host, sizeof host, "unknown");
        host[sizeof host - 1] = 0;
        snprintf(prefix, sizeof prefix, "[%s:%d] ", host, l.rank);
        ds_log_set_prefix(prefix);
    }
}

const char *ds_tool_name(void) { return tool_name; }

int ds_tool_report(int rc) {
    if (rc == 0 || ds_err_silenced()) return rc;
    const char *m = ds_errmsg();
    fprintf(stderr, "%s%s: error: %s\n", ds_log_prefix(), tool_name, m[0] ? m : "unknown error");
    if (ds_errhint()[0]) fprintf(stderr, "hint: %s\n", ds_errhint());
    return rc;
}

int ds_usage_error(const char *fmt, ...) {
    if (ds_launch_get().rank != 0) return DS_EUSAGE; /* rank 0 says it for all */
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s%s: error: ", ds_log_prefix(), tool_name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fprintf(stderr, "hint: %s --help lists the options\n", tool_name);
    return DS_EUSAGE;
}

void ds_strlist_push(ds_strlist *l, const char *s) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 4;
        const char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) abort(); /* out of memory while parsing argv: nothing sensible to do */
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = s;
}

void ds_strlist_free(ds_strlist *l) {
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static void format_default(const ds_opt *o, char *buf, size_t n) {
    buf[0] = 0;
    switch (o->type) {
    case DS_OPT_FLAG:
    case DS_OPT_GROUP: break;
    case DS_OPT_INT: snprintf(buf, n, "%d", *(int *)o->dest); break;
    case DS_OPT_I64:
    case DS_OPT_BYTES: snprintf(buf, n, "%lld", (long long)*(int64_t *)o->dest); break;
    case DS_OPT_U64: snprintf(buf, n, "%llu", (unsigned long long)*(uint64_t *)o->dest); break;
    case DS_OPT_SEED: snprintf(buf, n, "random, printed"); break;
    case DS_OPT_FLOAT: snprintf(buf, n, "%g", *(double *)o->dest); break;
    case DS_OPT_STR:
    case DS_OPT_CHOICE: {
        const char *s = *(const char **)o->dest;
        if (s) snprintf(buf, n, "%s", s);
        break;
    }
    case DS_OPT_STRLIST: {
        const ds_strlist *l = o->dest;
        size_t off = 0;
        for (int i = 0; i < l->n && off < n; i++)
            off += (size_t)snprintf(buf + off, n - off, "%s%s", i ? "," : "", l->v[i]);
        break;
    }
    }
}

/* The entries of a table with its groups' entries in their place (groups within groups too), or
 * count them when out is NULL. */
static int flatten(const ds_opt *opts, ds_opt *out) {
    int n = 0;
    for (const ds_opt *o = opts; o && o->name; o++) {
        if (o->type == DS_OPT_GROUP) n += flatten(o->dest, out ? out + n : NULL);
        else if (out) out[n++] = *o;
        else n++;
    }
    return n;
}

/* The table as one flat array ending with {0} (calloc'd). */
static ds_opt *flat_table(const ds_cli *cli, int *n_out) {
    const int n = flatten(cli->opts, NULL);
    ds_opt *t = calloc((size_t)n + 1, sizeof *t);
    if (!t) abort(); /* out of memory while parsing argv: nothing sensible to do */
    flatten(cli->opts, t);
    if (n_out) *n_out = n;
    return t;
}

void ds_cli_help(const ds_cli *cli, FILE *f) {
    fprintf(f, "Usage: %s %s\n\n", cli->name, cli->usage ? cli->usage : "[OPTIONS]");
    if (cli->summary) fprintf(f, "%s\n\n", cli->summary);
    fprintf(f, "Options:\n");
    ds_opt *opts = flat_table(cli, NULL);
    for (const ds_opt *o = opts; o->name; o++) {
        char lhs[96], def[256];
        if (o->short_name)
            snprintf(lhs, sizeof lhs, "  -%c, --%s%s%s", o->short_name, o->name, o->metavar ? " " : "",
                     o->metavar ? o->metavar : "");
        else
            snprintf(lhs, sizeof lhs, "      --%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        format_default(o, def, sizeof def);
        fprintf(f, "%-30s %s", lhs, o->help ? o->help : "");
        if (o->type == DS_OPT_CHOICE && o->choices) fprintf(f, " (%s)", o->choices);
        if (def[0]) fprintf(f, " [default: %s]", def);
        if (o->type == DS_OPT_STRLIST) fprintf(f, " (repeatable)");
        fprintf(f, "\n");
    }
    free(opts);
    fprintf(f, "%-30s %s\n", "  -h, --help", "show this help and exit");
    fprintf(f, "%-30s %s\n", "      --version", "print the version and exit");
    if (cli->example) fprintf(f, "\nExample:\n%s\n", cli->example);
}

static int parse_i64_base(const char *s, int64_t *out, double base) {
    char *end;
    errno = 0;
    double mult = 1;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno) return -1;
    if (*end) {
        if (end[1]) return -1;
        switch (*end) {
        case 'K': case 'k': mult = base; break;
        case 'M': case 'm': mult = base * base; break;
        case 'G': case 'g': mult = base * base * base; break;
        case 'T': case 't': mult = base * base * base * base; break;
        default: return -1;
        }
    }
    double d = (double)v * mult;
    if (d > 9.2e18 || d < -9.2e18) return -1;
    *out = (int64_t)d;
    return 0;
}

static int parse_i64(const char *s, int64_t *out) { return parse_i64_base(s, out, 1e3); }

static int check_range(const ds_opt *o, const char *opt, double v) {
    if (o->min < o->max && (v < o->min || v > o->max))
        return ds_usage_error("%s: %g is out of range [%g, %g]", opt, v, o->min, o->max);
    return 0;
}

/* Store arg in o's destination; opt: the option as the user spelled it ("-m", "--model"), for messages. */
/* Decimal digits only: strtoull would take "-1" as 2^64 - 1. */
static int parse_u64(const char *s, uint64_t *out) {
    if (*s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* Which options the last ds_cli_parse set, and how the user spelled each: messages about a value
 * name the option as it was typed (-m or --model, --clip or --clip-grad). */
static struct {
    const void *dest;
    char spelled[72];
} given[256];
static int n_given;

static void note_given(const void *dest, const char *spelled) {
    for (int i = 0; i < n_given; i++)
        if (given[i].dest == dest) {
            snprintf(given[i].spelled, sizeof given[i].spelled, "%s", spelled);
            return;
        }
    if (n_given < (int)(sizeof given / sizeof *given)) {
        given[n_given].dest = dest;
        snprintf(given[n_given++].spelled, sizeof given[0].spelled, "%s", spelled);
    }
}

const char *ds_cli_given(const void *dest) {
    for (int i = 0; i < n_given; i++)
        if (given[i].dest == dest) return given[i].spelled;
    return NULL;
}

const char *ds_cli_opt(const void *dest, const char *name) {
    const char *g = ds_cli_given(dest);
    return g ? g : name;
}

static int apply_opt(const ds_opt *o, const char *opt, const char *arg) {
    switch (o->type) {
    case DS_OPT_FLAG: *(int *)o->dest = 1; return 0;
    case DS_OPT_GROUP: return 0; /* flattened away before parsing */
    case DS_OPT_INT: {
        int64_t v;
        if (parse_i64(arg, &v) || v < -2147483647LL || v > 2147483647LL)
            return ds_usage_error("%s: not an integer: '%s'", opt, arg);
        if (check_range(o, opt, (double)v)) return DS_EUSAGE;
        *(int *)o->dest = (int)v;
        return 0;
    }
    case DS_OPT_I64: {
        int64_t v;
        if (parse_i64(arg, &v)) return ds_usage_error("%s: not an integer: '%s'", opt, arg);
        if (check_range(o, opt, (double)v)) return DS_EUSAGE;
        *(int64_t *)o->dest = v;
        return 0;
    }
    case DS_OPT_U64:
    case DS_OPT_SEED: {
        uint64_t v;
        if (parse_u64(arg, &v)) return ds_usage_error("%s: not an integer in [0, 18446744073709551615]: '%s'", opt, arg);
        *(uint64_t *)o->dest = v;
        return 0;
    }
    case DS_OPT_BYTES: {
        int64_t v;
        if (parse_i64_base(arg, &v, 1024.0) || v < 0) return ds_usage_error("%s: not a byte size: '%s'", opt, arg);
        if (check_range(o, opt, (double)v)) return DS_EUSAGE;
        *(int64_t *)o->dest = v;
        return 0;
    }
    case DS_OPT_FLOAT: {
        char *end;
        errno = 0;
        double v = strtod(arg, &end);
        if (end == arg || *end || errno || !isfinite(v))
            return ds_usage_error("%s: not a number: '%s'", opt, arg);
        if (check_range(o, opt, v)) return DS_EUSAGE;
        *(double *)o->dest = v;
        return 0;
    }
    case DS_OPT_STR: *(const char **)o->dest = arg; return 0;
    case DS_OPT_STRLIST: ds_strlist_push(o->dest, arg); return 0;
    case DS_OPT_CHOICE: {
        size_t n = strlen(arg);
        for (const char *c = o->choices; c && *c;) {
            const char *bar = strchr(c, '|');
            size_t len = bar ? (size_t)(bar - c) : strlen(c);
            if (len == n && !strncmp(c, arg, n)) {
                *(const char **)o->dest = arg;
                return 0;
            }
            c = bar ? bar + 1 : c + len;
        }
        return ds_usage_error("%s: '%s' is not one of %s", opt, arg, o->choices);
    }
    }
    return 0;
}

/* Optimal-string-alignment distance (edits, with a swap of neighbours as one edit) between a and b,
 * both short option names. */
static int edit_distance(const char *a, size_t na, const char *b) {
    enum { MAXN = 64 };
    size_t nb = strlen(b);
    if (na >= MAXN || nb >= MAXN) return MAXN;
    int d[MAXN + 1][MAXN + 1];
    for (size_t i = 0; i <= na; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= nb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= na; i++)
        for (size_t j = 1; j <= nb; j++) {
            int v = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < v) v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v) v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[na][nb];
}

/* The real option closest to the long name the user typed (name: after the dashes, len chars, no
 * "=value"), or NULL when none is close. A name that begins a real one (an abbreviation) is closest
 * to the shortest it begins; otherwise the fewest edits win, when they are few for the length. */
static const char *closest_option(const struct option *lo, const char *name, size_t len) {
    const char *best = NULL;
    for (const struct option *o = lo; o->name; o++)
        if (len && !strncmp(o->name, name, len) && (!best || strlen(o->name) < strlen(best))) best = o->name;
    if (best) return best;
    int best_d = (int)(len / 3) + 1 < 3 ? (int)(len / 3) + 1 : 3; /* beyond this many edits it is another word */
    for (const struct option *o = lo; o->name; o++) {
        int d = edit_distance(name, len, o->name);
        if (d <= best_d && (!best || d < best_d)) best = o->name, best_d = d;
    }
    return best;
}

/* getopt_long accepts any unambiguous abbreviation of a long name ("--ep" for "--eps"): a typo then
 * sets another option without a word (--ep 1 gave AdamW an epsilon of 1). So before getopt_long
 * sees argv, every long option must be spelled in full, walking argv as getopt_long will (an
 * option's separate value is skipped, "--" ends the options). Returns 0 or a usage error (2). */
static int check_long_names(const struct option *lo, const char *shorts, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) break;
        if (!strncmp(a, "--", 2)) {
            const char *name = a + 2;
            const size_t len = strcspn(name, "=");
            const struct option *o = NULL;
            for (const struct option *k = lo; k->name && !o; k++)
                if (strlen(k->name) == len && !strncmp(k->name, name, len)) o = k;
            if (!o) {
                const char *near = closest_option(lo, name, len);
                if (near) return ds_usage_error("unknown option '%.*s': did you mean --%s?", (int)len + 2, a, near);
                return ds_usage_error("unknown option '%.*s'", (int)len + 2, a);
            }
            if (o->has_arg == no_argument && name[len] == '=')
                return ds_usage_error("option '--%s' takes no value: '%s'", o->name, a);
            if (o->has_arg == required_argument && !name[len]) {
                if (i + 1 >= argc) return ds_usage_error("option '--%s' needs an argument", o->name);
                i++; /* its value, whatever it looks like */
            }
        } else if (a[0] == '-' && a[1]) {
            /* a cluster of short options: one taking a value ends it (the rest, or the next element) */
            for (const char *c = a + 1; *c; c++) {
                const char *sp = strchr(shorts + 1, *c);
                if (*c == ':' || !sp) break; /* getopt_long reports it */
                if (sp[1] == ':') {
                    if (!c[1]) i++;
                    break;
                }
            }
        }
    }
    return 0;
}

int ds_cli_parse(const ds_cli *cli, int argc, char **argv, int *optind_out) {
    enum { VERSION_ID = 1000 };
    int n;
    ds_opt *opts = flat_table(cli, &n);
    struct option *lo = calloc((size_t)n + 3, sizeof *lo);
    char *shorts = calloc((size_t)2 * n + 8, 1);
    if (!lo || !shorts) abort();
    size_t sp = 0;
    shorts[sp++] = ':'; /* report missing arguments as ':' (GNU permutation: options may follow files) */
    for (int i = 0; i < n; i++) {
        const ds_opt *o = &opts[i];
        int has_arg = o->type == DS_OPT_FLAG ? no_argument : required_argument;
        lo[i] = (struct option){o->name, has_arg, NULL, o->short_name ? o->short_name : 2000 + i};
        if (o->short_name) {
            shorts[sp++] = o->short_name;
            if (has_arg) shorts[sp++] = ':';
        }
    }
    lo[n] = (struct option){"help", no_argument, NULL, 'h'};
    lo[n + 1] = (struct option){"version", no_argument, NULL, VERSION_ID};
    shorts[sp++] = 'h';

    n_given = 0;
    int rc = check_long_names(lo, shorts, argc, argv) ? DS_EUSAGE : -1;
    optind = 1;
    opterr = 0;
    while (rc < 0) {
        int li = -1;
        int c = getopt_long(argc, argv, shorts, lo, &li);
        if (c == -1) break;
        if (c == 'h') {
            ds_cli_help(cli, stdout);
            rc = 0;
            break;
        }
        if (c == VERSION_ID) {
            printf("%s %s\n", cli->name, ds_version_string);
            rc = 0;
            break;
        }
        if (c == '?' || c == ':') { /* long options were checked above: these are short ones */
            if (optopt > 32 && optopt < 127)
                rc = ds_usage_error(c == ':' ? "option '-%c' needs an argument" : "unknown option '-%c'", optopt);
            else
                rc = ds_usage_error("unknown option '%s'", argv[optind - 1]);
            break;
        }
        const ds_opt *o = NULL;
        if (c >= 2000 && c < 2000 + n)
            o = &opts[c - 2000];
        else
            for (int i = 0; i < n; i++)
                if (opts[i].short_name == c) o = &opts[i];
        if (!o) {
            rc = ds_usage_error("unknown option '%s'", argv[optind - 1]);
            break;
        }
        char spelled[72];
        if (li >= 0) snprintf(spelled, sizeof spelled, "--%s", o->name);
        else snprintf(spelled, sizeof spelled, "-%c", o->short_name);
        note_given(o->dest, spelled);
        if (apply_opt(o, spelled, optarg)) {
            rc = DS_EUSAGE;
            break;
        }
    }
    free(lo);
    free(shorts);
    free(opts);
    if (optind_out) *optind_out = optind;
    return rc;
}
