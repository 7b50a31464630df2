/* train/zero.h + train/optstate.h without MPI: ZeRO-1 optimizers of 2 ranks (the comm is only a size and
 * a rank: nothing here communicates) write their shards; the index tiles every tensor; 1, 3 and 4 ranks
 * and the one-file form read back exactly the moments that were written; overlapping or missing pieces
 * are refused, naming the tensor. */
#include "tap.h"

#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "train/optstate.h"

#include <unistd.h>

enum { NA = 37, NB = 4 * 6, NC = 5, N = NA + NB + NC };

static ds_param info[3];

static ds_train_net net(void) {
    info[0] = (ds_param){.name = "a.weight", .ndim = 1, .shape = {NA}, .offset = 0, .numel = NA, .kind = DS_PARAM_MATRIX};
    info[1] = (ds_param){.name = "b.weight", .ndim = 2, .shape = {4, 6}, .offset = NA, .numel = NB, .kind = DS_PARAM_MATRIX};
    info[2] = (ds_param){.name = "c.weight", .ndim = 1, .shape = {NC}, .offset = NA + NB, .numel = NC, .kind = DS_PARAM_NORM};
    return (ds_train_net){.n_params = N, .info = info, .n_info = 3};
}

static int never(void *ctx, float *x, size_t n) { (void)ctx, (void)x, (void)n; return ds_fail(DS_ERR, "no communication here"); }

/* ZeRO-1 state of rank r of p (zero = 0: replicated), the whole buffer one group. */
static int make(ds_zero *z, int r, int p, int zero, ds_train_comm *c) {
    ds_train_net nt = net();
    *c = (ds_train_comm){.rank = r, .size = p, .allreduce_f32 = never, .reduce_scatter_f32 = never, .allgather_f32 = never};
    ds_train_group g = {0, N, c};
    ds_adamw_opts o;
    ds_adamw_defaults(&o);
    return ds_zero_create(z, &nt, &o, &g, 1, NULL, zero);
}

static float moment(int k, size_t i) { return (float)(k ? 1000 + i : -(double)i) / 8; }

/* Writes ranks 0..p-1 of a ZeRO-1 run with known moments into dir, then the index. */
static int write_run(const char *dir, int p) {
    char name[64], path[4096];
    for (int r = 0; r < p; r++) {
        ds_zero z;
        ds_train_comm c;
        DS_TRY(make(&z, r, p, 1, &c));
        size_t lo, hi;
        ds_zero_held(&z, 0, N, &lo, &hi);
        float v[N];
        for (int k = 0; k < 2; k++) {
            for (size_t i = lo; i < hi; i++) v[i - lo] = moment(k, i);
            DS_TRY(ds_zero_set(&z, k, lo, hi - lo, v));
        }
        ds_optstate_shard_name(r, p, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        int rc = ds_optstate_write_shard(&z, info, 3, path);
        ds_zero_free(&z);
        DS_TRY(rc);
    }
    char *json;
    DS_TRY(ds_optstate_index(dir, p, &json));
    snprintf(path, sizeof path, "%s/" DS_OPTSTATE_INDEX, dir);
    int rc = ds_atomic_write_file(path, json, strlen(json));
    free(json);
    return rc;
}

/* Rank r of p loads dir: every moment it holds must be the one written. */
static int reads_back(const char *dir, int r, int p, int zero) {
    ds_zero z;
    ds_train_comm c;
    if (make(&z, r, p, zero, &c)) return 0;
    int ok = ds_optstate_load(&z, info, 3, dir) == 0;
    size_t lo, hi;
    ds_zero_held(&z, 0, N, &lo, &hi);
    float v[N];
    for (int k = 0; ok && k < 2; k++) {
        ok = ds_zero_get(&z, k, lo, hi - lo, v) == 0;
        for (size_t i = lo; ok && i < hi; i++) ok = v[i - lo] == moment(k, i);
    }
    ds_zero_free(&z);
    return ok;
}

TEST(shards_of_two_ranks_resume_on_any_layout) {
    const char *dir = tap_tmp("two");
    CHECK(ds_mkdir_p(dir) == 0 && write_run(dir, 2) == 0, "2 ranks write their shards and the index: %s", ds_errmsg());
    char *text;
    size_t len;
    CHECK(ds_read_file(tap_tmp("two/" DS_OPTSTATE_INDEX), &text, &len, 0) == 0, "index written");
    /* rank 0 holds [0, 33): part of a; rank 1 [33, 66): the rest of a, all of b and c */
    CHECK(strstr(text, "\"a.weight\":{\"numel\":37,\"pieces\":[[0,0,33],[1,33,37]]}") &&
              strstr(text, "\"b.weight\":{\"numel\":24,\"pieces\":[[1,0,24]]}"),
          "pieces by tensor name and flat range: %s", text);
    free(text);
    CHECK(reads_back(dir, 0, 1, 1), "one process reads every moment");
    int all3 = 1, all4 = 1;
    for (int r = 0; r < 3; r++) all3 &= reads_back(dir, r, 3, 1);
    for (int r = 0; r < 4; r++) all4 &= reads_back(dir, r, 4, 1);
    CHECK(all3 && all4, "3 and 4 ranks read their slices: %s", ds_errmsg());
    CHECK(reads_back(dir, 1, 2, 0), "a replicated rank of 2 reads the whole state");
    /* the one-file form, written by a rank holding everything, reads back the same on 3 ranks */
    ds_zero z;
    ds_train_comm c;
    CHECK(make(&z, 0, 1, 1, &c) == 0 && ds_optstate_load(&z, info, 3, dir) == 0, "load to write the one file");
    CHECK(ds_mkdir_p(tap_tmp("one")) == 0 && ds_optstate_write_file(&z, info, 3, tap_tmp("one/" DS_OPTSTATE_FILE)) == 0, "one file");
    ds_zero_free(&z);
    CHECK(reads_back(tap_tmp("one"), 2, 3, 1), "rank 2 of 3 reads its slice from the one file");
}

TEST(pieces_that_do_not_tile_are_refused) {
    const char *dir = tap_tmp("dup");
    char a[4096], b[8400];
    CHECK(ds_mkdir_p(dir) == 0 && write_run(dir, 2) == 0, "write");
    /* rank 0's shard twice: a.weight [0, 33) overlaps itself, b and c lose their pieces */
    snprintf(a, sizeof a, "%s/optimizer-00000-of-00002.safetensors", dir);
    snprintf(b, sizeof b, "cp '%s' '%s/optimizer-00001-of-00002.safetensors'", a, dir);
    CHECK(system(b) == 0, "copy");
    char *json = NULL;
    CHECK(ds_optstate_index(dir, 2, &json) != 0 && strstr(ds_errmsg(), "optimizer shards: a.weight: the pieces do not tile its 37 values"),
          "overlap refused: %s", ds_errmsg());
    free(json);
    /* an index without c.weight: a run that needs it says so */
    const char *good = tap_tmp("good");
    CHECK(ds_mkdir_p(good) == 0 && write_run(good, 2) == 0, "write again");
    snprintf(a, sizeof a, "%s/" DS_OPTSTATE_INDEX, good);
    char *text;
    size_t len;
    CHECK(ds_read_file(a, &text, &len, 0) == 0, "read the good index");
    char *c = strstr(text, "\"c.weight\"");
    if (c) memcpy(c, "\"x", 2);
    CHECK(c && ds_atomic_write_file(a, text, len) == 0, "drop c.weight");
    free(text);
    ds_zero z;
    ds_train_comm cm;
    CHECK(make(&z, 1, 2, 1, &cm) == 0 && ds_optstate_load(&z, info, 3, good) != 0 &&
              strstr(ds_errmsg(), "optimizer state: no moments for c.weight (5 values)"),
          "a missing tensor is named: %s", ds_errmsg());
    ds_zero_free(&z);
}

int main(int argc, char **argv) {
    ds_log_set_level(DS_LOG_QUIET);
    return tap_run(argc, argv);
}
