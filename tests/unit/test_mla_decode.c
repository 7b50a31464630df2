/* Unit tests for ops/mla_decode: the CPU reference against a naive two-pass double-precision
 * implementation written here (scores for every visible token, max, exp-sum, weighted sum), on fresh
 * random inputs with contiguous and paged caches, 1-2 query tokens, f32 and bf16, plus validation. */
#include "tap.h"

#include "core/dtype.h"
#include "core/err.h"
#include "core/rng.h"
#include "ops/mla_decode.h"

#include <omp.h>
#include <stdint.h>

typedef struct {
    int batch, q_len, heads, R, Dr, page, max_pages, n_pages, paged;
    ds_dtype qt, kvt, ot;
    float scale;
} shape;

typedef struct {
    shape s;
    void *q, *kv, *out;
    float *lse;
    int32_t *len, *table;
    ds_mla_decode_args a;
} problem;

static void fill(void *dst, ds_dtype t, size_t n, ds_rng *r, float std) {
    for (size_t i = 0; i < n; i++) {
        float v = (float)(ds_rng_normal(r) * std);
        if (t == DS_F32) ((float *)dst)[i] = v;
        else ((uint16_t *)dst)[i] = ds_f32_to_bf16(v);
    }
}

static double get(const void *p, ds_dtype t, size_t i) {
    return t == DS_F32 ? ((const float *)p)[i] : ds_bf16_to_f32(((const uint16_t *)p)[i]);
}

/* Builds a problem; lens[b] are the cache lengths. Paged caches get their pages in a shuffled order. */
static void make(problem *p, shape s, const int *lens, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->s = s;
    int D = s.R + s.Dr;
    ds_rng r;
    ds_rng_init(&r, seed, 1);
    size_t nq = (size_t)s.batch * s.q_len * s.heads;
    p->q = malloc(nq * D * 4);
    fill(p->q, s.qt, nq * D, &r, 1.0f);
    p->kv = malloc((size_t)s.n_pages * s.page * D * 4);
    fill(p->kv, s.kvt, (size_t)s.n_pages * s.page * D, &r, 1.0f);
    p->out = malloc(nq * s.R * 4);
    memset(p->out, 0xFF, nq * s.R * 4); /* NaN poison */
    p->lse = malloc(nq * 4);
    memset(p->lse, 0xFF, nq * 4);
    p->len = malloc(s.batch * 4);
    memcpy(p->len, lens, s.batch * 4);
    if (s.paged) {
        uint32_t *perm = malloc(s.n_pages * 4);
        ds_permutation(perm, s.n_pages, seed, 2);
        p->table = malloc((size_t)s.batch * s.max_pages * 4);
        for (int i = 0; i < s.batch * s.max_pages; i++) p->table[i] = (int32_t)perm[i % s.n_pages];
        free(perm);
    }
    ds_mla_decode_args *a = &p->a;
    a->batch = s.batch; a->q_len = s.q_len; a->heads = s.heads;
    a->kv_rank = s.R; a->rope_dim = s.Dr; a->scale = s.scale;
    a->q = p->q; a->q_type = s.qt;
    a->kv = p->kv; a->kv_type = s.kvt;
    a->kv_len = p->len; a->block_table = p->table;
    a->page_size = s.page; a->max_pages = s.max_pages; a->n_pages = s.n_pages;
    a->out = p->out; a->out_type = s.ot; a->lse = p->lse;
}

static void release(problem *p) {
    free(p->q); free(p->kv); free(p->out); free(p->lse); free(p->len); free(p->table);
}

static size_t kv_row(const problem *p, int b, int t) {
    const shape *s = &p->s;
    int page = s->paged ? p->table[b * s->max_pages + t / s->page] : b;
    return ((size_t)page * s->page + t % s->page) * (s->R + s->Dr);
}

/* Max relative error of out (per row, against the row's max |ref|) and max |lse - ref|. */
static void compare(const problem *p, double *out_err, double *lse_err, int *bad_written) {
    const shape *s = &p->s;
    int D = s->R + s->Dr;
    *out_err = 0; *lse_err = 0; *bad_written = 0;
    double *sc = malloc(sizeof(double) * 100000), *ref = malloc(sizeof(double) * s->R);
    for (int b = 0; b < s->batch; b++)
        for (int j = 0; j < s->q_len; j++)
            for (int h = 0; h < s->heads; h++) {
                size_t qi = ((size_t)b * s->q_len + j) * s->heads + h;
                int vis = p->len[b] == 0 ? 0 : p->len[b] - s->q_len + 1 + j;
                double mx = -INFINITY, sum = 0;
                for (int t = 0; t < vis; t++) {
                    double d = 0;
                    size_t kr = kv_row(p, b, t);
                    for (int e = 0; e < D; e++) d += get(p->q, s->qt, qi * D + e) * get(p->kv, s->kvt, kr + e);
                    sc[t] = d * s->scale;
                    if (sc[t] > mx) mx = sc[t];
                }
                for (int t = 0; t < vis; t++) sum += exp(sc[t] - mx);
                double rmax = 1e-30;
                for (int e = 0; e < s->R; e++) {
                    double o = 0;
                    for (int t = 0; t < vis; t++) o += exp(sc[t] - mx) / sum * get(p->kv, s->kvt, kv_row(p, b, t) + e);
                    ref[e] = o;
                    if (fabs(o) > rmax) rmax = fabs(o);
                }
                for (int e = 0; e < s->R; e++) {
                    double got = get(p->out, s->ot, qi * s->R + e);
                    if (isnan(got)) (*bad_written)++;
                    double err = fabs(got - ref[e]) / rmax;
                    if (!(err <= *out_err)) *out_err = isnan(err) ? INFINITY : err;
                }
                double lref = vis ? mx + log(sum) : -INFINITY;
                double lgot = p->lse[qi];
                if (isnan(lgot)) (*bad_written)++;
                double le = vis ? fabs(lgot - lref) : (lgot == -INFINITY ? 0 : INFINITY);
                if (!(le <= *lse_err)) *lse_err = isnan(le) ? INFINITY : le;
            }
    free(sc);
    free(ref);
}

static void run_case(const char *name, shape s, const int *lens, uint64_t seed, double tol_out, double tol_lse) {
    problem p;
    make(&p, s, lens, seed);
    int rc = ds_mla_decode(&p.a);
    CHECK(rc == DS_OK, "%s: returns ok (%s)", name, ds_errmsg());
    double eo, el;
    int bad;
    compare(&p, &eo, &el, &bad);
    CHECK(bad == 0, "%s: every output written (%d NaN)", name, bad);
    CHECK(eo <= tol_out, "%s: out max rel err %.3g <= %.3g", name, eo, tol_out);
    CHECK(el <= tol_lse, "%s: lse max abs err %.3g <= %.3g", name, el, tol_lse);
    release(&p);
}

TEST(contiguous_f32_single_query) {
    shape s = {3, 1, 11, 32, 8, 48, 1, 3, 0, DS_F32, DS_F32, DS_F32, 0.17f};
    int lens[3] = {1, 17, 48};
    run_case("f32 contiguous", s, lens, 11, 2e-6, 2e-6);
}

TEST(paged_two_queries_causal_offset) {
    shape s = {4, 2, 5, 24, 8, 4, 6, 24, 1, DS_F32, DS_F32, DS_F32, 0.3f};
    int lens[4] = {2, 0, 9, 24};
    run_case("f32 paged q_len 2", s, lens, 12, 2e-6, 2e-6);
}

TEST(v3_dims_long_context) {
    shape s = {2, 2, 16, 512, 64, 333, 1, 2, 0, DS_F32, DS_F32, DS_F32, 0.1352338f};
    int lens[2] = {333, 150};
    run_case("f32 V3 dims", s, lens, 13, 5e-6, 5e-6);
}

TEST(bf16_inputs_and_outputs) {
    shape s = {2, 1, 9, 64, 16, 8, 8, 16, 1, DS_BF16, DS_BF16, DS_BF16, 0.125f};
    int lens[2] = {61, 7};
    /* bf16 output: one rounding (unit roundoff 2^-8) of a value <= the row max */
    run_case("bf16 in, bf16 out", s, lens, 14, 1.05 / 256, 2e-6);
    shape s2 = s;
    s2.ot = DS_F32;
    s2.qt = DS_F32;
    run_case("bf16 cache, f32 q and out", s2, lens, 15, 2e-6, 2e-6);
}

TEST(deterministic_across_thread_counts) {
    shape s = {2, 2, 20, 32, 8, 100, 1, 2, 0, DS_F32, DS_F32, DS_F32, 0.2f};
    int lens[2] = {100, 77};
    problem p1, p2;
    make(&p1, s, lens, 21);
    make(&p2, s, lens, 21);
    omp_set_num_threads(1);
    int rc1 = ds_mla_decode(&p1.a);
    omp_set_num_threads(2);
    int rc2 = ds_mla_decode(&p2.a);
    size_t n = (size_t)2 * 2 * 20;
    CHECK(rc1 == 0 && rc2 == 0, "both runs succeed");
    CHECK(!memcmp(p1.out, p2.out, n * 32 * 4) && !memcmp(p1.lse, p2.lse, n * 4), "bitwise equal with 1 and 2 threads");
    release(&p1);
    release(&p2);
}

static void expect_error(const char *what, problem *p, const char *needle) {
    int rc = ds_mla_decode(&p->a);
    CHECK(rc != DS_OK && strstr(ds_errmsg(), needle), "%s: rejected with \"%s\" (got rc %d: %s)", what, needle, rc,
          ds_errmsg());
}

TEST(rejects_bad_arguments_and_data) {
    shape s = {2, 2, 3, 16, 4, 4, 3, 6, 1, DS_F32, DS_F32, DS_F32, 0.3f};
    int lens[2] = {5, 12};
    problem p;
    make(&p, s, lens, 31);
    p.len[1] = 13;
    expect_error("kv_len beyond the pages", &p, "kv_len[1] = 13 outside [2, 12]");
    p.len[1] = 1;
    expect_error("kv_len shorter than the queries", &p, "kv_len[1] = 1");
    p.len[1] = 12;
    p.table[1 * 3 + 2] = 6;
    expect_error("page id out of range", &p, "block_table[1][2] = 6 outside [0, 6)");
    p.table[1 * 3 + 2] = 0;
    p.a.kv_type = DS_F16;
    expect_error("unsupported cache type", &p, "types must be F32 or BF16");
    p.a.kv_type = DS_F32;
    p.a.q = NULL;
    expect_error("NULL q", &p, "NULL q");
    p.a.q = p.q;
    p.a.kv_rank = 2000;
    expect_error("row too long", &p, "exceeds");
    p.a.kv_rank = 16;
    p.a.scale = NAN;
    expect_error("NaN scale", &p, "scale is not finite");
    p.a.scale = 0.3f;
    p.a.block_table = NULL;
    p.a.n_pages = 1;
    expect_error("too few pages without a table", &p, "1 pages for 2 sequences");
    release(&p);
}

TAP_MAIN()
