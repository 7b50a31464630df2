/* Unit tests for lib/train/packed and lib/train/data: the keyed permutation is a bijection, every
 * training window is read once per epoch in a seed-determined order, rows are the stream's windows
 * shifted by one for the targets, the validation tail is disjoint, FIM produces the PSM layout and
 * keeps the tokens, the cursor resumes exactly, and too little data is a clean error. */
#include "tap.h"

#include "core/err.h"
#include "core/rng.h"
#include "train/packed.h"

#include <jansson.h>

TEST(keyed_permutation_is_a_bijection) {
    uint64_t sizes[] = {1, 2, 3, 7, 64, 1000, 4097};
    for (int k = 0; k < 7; k++) {
        uint64_t n = sizes[k];
        uint8_t *seen = calloc(n, 1);
        int ok = 1, moved = 0;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t j = ds_keyed_permute(i, n, 42, 7);
            ok &= j < n && !seen[j];
            if (j < n) seen[j] = 1;
            moved += j != i;
        }
        CHECK(ok, "n=%llu: every index hit once", (unsigned long long)n);
        if (n >= 64) CHECK(moved > (int)(n * 9 / 10), "n=%llu: most indices move (%d)", (unsigned long long)n, moved);
        free(seen);
    }
    int differ = 0;
    for (uint64_t i = 0; i < 100; i++) differ += ds_keyed_permute(i, 1000, 1, 0) != ds_keyed_permute(i, 1000, 2, 0);
    CHECK(differ > 90, "another seed, another order (%d of 100 differ)", differ);
    CHECK(ds_keyed_permute(123456789012ull, 1ull << 40, 5, 5) < (1ull << 40), "large domains work");
}

/* A stream 0, 1, 2, ... (mod vocab) so every token tells its position. */
static int32_t *counting_stream(int64_t n) {
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int64_t i = 0; i < n; i++) t[i] = (int32_t)i;
    return t;
}

TEST(rows_are_windows_in_a_seeded_order) {
    enum { T = 8, N = 8 * 50 + 1 }; /* 50 windows */
    ds_token_reader rd;
    ds_token_reader_memory(&rd, counting_stream(N), N, 1, "mem");
    ds_packed_opts o = {.seq_len = T, .seed = 7, .val_frac = 0.1, .eos = -5};
    ds_data_source *tr, *va;
    CHECK(ds_packed_create(&tr, &va, &rd, &o) == 0, "create: %s", ds_errmsg());
    CHECK(va && va->rows_per_pass(va) == 5 && tr->rows_per_pass(tr) == -1, "5 validation windows, training repeats");
    ds_batch_buf b;
    ds_batch_buf_init(&b, 90, T);
    CHECK(tr->next(tr, &b, 90) == 0 && b.rows == 90, "two epochs of rows");
    int shifted = 1, seen[45] = {0}, ok = 1, in_order = 1;
    for (int r = 0; r < 90; r++) {
        int32_t first = b.tokens[r * T];
        for (int t = 0; t < T; t++) shifted &= b.tokens[r * T + t] == first + t && b.targets[r * T + t] == first + t + 1;
        int w = first / T;
        ok &= first % T == 0 && w < 45;
        if (r < 45 && w < 45) seen[w]++;
        in_order &= r >= 45 || w == r;
    }
    CHECK(shifted, "targets are the inputs shifted by one");
    int once = 1;
    for (int w = 0; w < 45; w++) once &= seen[w] == 1;
    CHECK(ok && once, "each of the 45 training windows once in the first epoch");
    CHECK(!in_order, "not in stream order");
    CHECK(memcmp(b.tokens, b.tokens + 45 * T, 45 * T * sizeof *b.tokens), "the second epoch has another order");
    CHECK(!b.has_pos && !b.has_seg, "plain causal rows: no positions, no sample ids");
    /* validation: the last 5 windows, in order */
    ds_batch_buf vb;
    ds_batch_buf_init(&vb, 5, T);
    CHECK(va->next(va, &vb, 5) == 0, "validation rows");
    int vok = 1;
    for (int r = 0; r < 5; r++) vok &= vb.tokens[r * T] == (45 + r) * T;
    CHECK(vok, "validation = windows 45..49");
    /* the same seed gives the same rows; the cursor resumes */
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_data_source *tr2, *va2, *va3, *va4;
    ds_packed_create(&tr2, &va2, &rd, &o);
    ds_batch_buf b2;
    ds_batch_buf_init(&b2, 90, T);
    tr2->next(tr2, &b2, 30);
    tr2->state_write(tr2, &w);
    ds_data_source *tr3;
    ds_packed_create(&tr3, &va3, &rd, &o);
    json_t *j = json_loads(w.buf, 0, NULL);
    CHECK(tr3->state_read(tr3, j, "state") == 0, "state reads: %s", w.buf);
    tr3->next(tr3, &b2, 60);
    CHECK(!memcmp(b.tokens, b2.tokens, 90 * T * sizeof *b.tokens), "30 rows + resume + 60 rows = the same 90 rows");
    json_decref(j);
    /* a cursor from different data is refused */
    ds_packed_opts o2 = o;
    o2.seq_len = 4;
    ds_data_source *tr4;
    ds_packed_create(&tr4, &va4, &rd, &o2);
    j = json_loads(w.buf, 0, NULL);
    CHECK(tr4->state_read(tr4, j, "ckpt/trainer_state.json") == DS_ERR && strstr(ds_errmsg(), "data changed since the checkpoint"),
          "%s", ds_errmsg());
    json_decref(j);
    ds_jsonw_free(&w);
    ds_batch_buf_free(&b), ds_batch_buf_free(&b2), ds_batch_buf_free(&vb);
    ds_data_source_free(tr), ds_data_source_free(va), ds_data_source_free(tr2), ds_data_source_free(tr3), ds_data_source_free(tr4);
    ds_data_source_free(va2), ds_data_source_free(va3), ds_data_source_free(va4);
    ds_token_reader_free(&rd);
}

TEST(too_little_data_is_a_clean_error) {
    ds_token_reader rd;
    ds_token_reader_memory(&rd, counting_stream(10), 10, 1, "shards/a.tok");
    ds_packed_opts o = {.seq_len = 16, .seed = 1};
    ds_data_source *tr;
    CHECK(ds_packed_create(&tr, NULL, &rd, &o) == DS_ERR &&
              !strcmp(ds_errmsg(), "data: 10 tokens make 0 training sequences of 16+1 tokens: shards/a.tok"),
          "%s", ds_errmsg());
    o.seq_len = 4, o.fim_rate = 0.5, o.fim_begin = -1;
    CHECK(ds_packed_create(&tr, NULL, &rd, &o) == DS_ERR && strstr(ds_errmsg(), "FIM needs the ids"), "%s", ds_errmsg());
    ds_token_reader_free(&rd);
}

enum { EOS = 1, FB = 2, FH = 3, FE = 4 };

TEST(fim_makes_psm_examples) {
    enum { L = 64 };
    ds_packed_opts o = {.seq_len = L - 1, .seed = 3, .fim_rate = 1.0, .eos = EOS, .fim_begin = FB, .fim_hole = FH, .fim_end = FE};
    /* one document of 40 tokens (100..139), EOS, then a second one that the row cuts off */
    int32_t row[L], scratch[L];
    for (int i = 0; i < L; i++) row[i] = i < 40 ? 100 + i : i == 40 ? EOS : 200 + i;
    ds_fim_row(row, L, scratch, &o, 11);
    CHECK(row[0] == FB, "starts with fim_begin");
    int hole = -1, end = -1, eos = -1;
    for (int i = 0; i < L; i++) {
        if (row[i] == FH && hole < 0) hole = i;
        if (row[i] == FE && end < 0) end = i;
        if (row[i] == EOS && eos < 0) eos = i;
    }
    CHECK(hole > 0 && end > hole && eos == 43, "<begin> pre <hole> suf <end> mid <eos>: hole %d end %d eos %d", hole, end, eos);
    /* prefix + middle + suffix put back together is the document */
    int32_t doc[40];
    int n = 0;
    for (int i = 1; i < hole; i++) doc[n++] = row[i];
    for (int i = end + 1; i < eos; i++) doc[n++] = row[i];
    for (int i = hole + 1; i < end; i++) doc[n++] = row[i];
    int same = n == 40;
    for (int i = 0; same && i < 40; i++) same &= doc[i] == 100 + i;
    CHECK(same, "prefix + middle + suffix is the document (%d tokens)", n);
    /* the row keeps its length: the second document is cut 3 tokens earlier */
    CHECK(row[L - 1] != 0, "row still full");
    /* rate 0 leaves rows alone; a rate of 0.3 transforms about 30% of documents */
    o.fim_rate = 0;
    int32_t plain[L], copy[L];
    for (int i = 0; i < L; i++) plain[i] = i % 8 == 7 ? EOS : 100 + i;
    memcpy(copy, plain, sizeof plain);
    ds_fim_row(copy, L, scratch, &o, 1);
    CHECK(!memcmp(copy, plain, sizeof plain), "rate 0: unchanged");
    o.fim_rate = 0.3;
    int docs = 0, fim = 0;
    for (int r = 0; r < 500; r++) {
        memcpy(copy, plain, sizeof plain);
        ds_fim_row(copy, L, scratch, &o, (uint64_t)r);
        for (int i = 0; i < L; i++) fim += copy[i] == FB;
        docs += 8;
    }
    CHECK(fabs((double)fim / docs - 0.3) < 0.03, "rate 0.3: %.3f of documents (some cut off at the row's end)", (double)fim / docs);
}

TEST(fim_in_the_source_is_deterministic) {
    enum { T = 32, N = 32 * 20 + 1 };
    int32_t *s = malloc(N * sizeof *s);
    for (int i = 0; i < N; i++) s[i] = i % 11 == 10 ? EOS : 10 + i % 11;
    ds_token_reader rd;
    ds_token_reader_memory(&rd, s, N, 1, "mem");
    ds_packed_opts o = {.seq_len = T, .seed = 5, .fim_rate = 0.5, .eos = EOS, .fim_begin = FB, .fim_hole = FH, .fim_end = FE};
    ds_data_source *a, *b;
    ds_packed_create(&a, NULL, &rd, &o);
    ds_packed_create(&b, NULL, &rd, &o);
    ds_batch_buf ba, bb;
    ds_batch_buf_init(&ba, 20, T);
    ds_batch_buf_init(&bb, 20, T);
    a->next(a, &ba, 20);
    b->next(b, &bb, 20);
    int fims = 0;
    for (int i = 0; i < 20 * T; i++) fims += ba.tokens[i] == FB;
    CHECK(fims > 10, "FIM examples appear (%d)", fims);
    CHECK(!memcmp(ba.tokens, bb.tokens, sizeof(int32_t) * 20 * T) && !memcmp(ba.targets, bb.targets, sizeof(int32_t) * 20 * T),
          "same seed, same rows");
    int shifted = 1;
    for (int r = 0; r < 20; r++)
        for (int t = 0; t + 1 < T; t++) shifted &= ba.targets[r * T + t] == ba.tokens[r * T + t + 1];
    CHECK(shifted, "targets stay the inputs shifted by one after FIM");
    ds_batch_buf_free(&ba), ds_batch_buf_free(&bb);
    ds_data_source_free(a), ds_data_source_free(b);
    ds_token_reader_free(&rd);
}

TEST(batch_views_and_target_counts) {
    ds_batch_buf b;
    ds_batch_buf_init(&b, 2, 4);
    for (int i = 0; i < 8; i++) b.tokens[i] = i, b.targets[i] = i % 3 ? i : -1;
    b.rows = 2;
    ds_batch v = ds_batch_buf_view(&b, 1, 1);
    CHECK(v.B == 1 && v.T == 4 && v.tokens[0] == 4 && !v.pos && !v.seg, "view of row 1");
    CHECK(ds_batch_buf_count_targets(&b, 0, 2) == 5, "5 valid targets of 8");
    CHECK(ds_batch_buf_reserve(&b, 10) == 0 && b.cap_rows == 10 && b.tokens[5] == 5, "grow keeps content");
    ds_batch_buf_free(&b);
}

TAP_MAIN()
