/* lib/train/pipe: the stage split (by estimated cost and by --stages) and its refusals. The execution
 * itself runs under mpirun in tests/bats/pp.bats (loss curves against the one-process run). */
#include "tap.h"

#include "core/err.h"
#include "model_fixture.h"
#include "train/pipe.h"

#include <string.h>

static int split(const ds_config *c, int pp, const char *spec, int *first) {
    return ds_pipe_split_layers(c, pp, 64, spec, first);
}

static int same(const int *a, const int *b, int n) { return !memcmp(a, b, sizeof(int) * (size_t)n); }

TEST(split_by_cost) {
    ds_config c;
    fixture_tiny(&c);
    c.num_hidden_layers = 8;
    c.first_k_dense_replace = 0;
    c.num_nextn_predict_layers = 0;
    c.vocab_size = 8; /* a negligible head: equal layers split evenly */
    int f[9];
    CHECK(!split(&c, 1, NULL, f) && f[0] == 0 && f[1] == 8, "one stage holds every layer");
    CHECK(!split(&c, 4, NULL, f) && same(f, (int[]){0, 2, 4, 6, 8}, 5), "4 stages of 2 equal layers: %d %d %d %d %d",
          f[0], f[1], f[2], f[3], f[4]);
    CHECK(!split(&c, 8, NULL, f) && same(f, (int[]){0, 1, 2, 3, 4, 5, 6, 7, 8}, 9), "as many stages as layers");
    /* a large head and an MTP module weigh on the last stage: it gets fewer layers */
    c.vocab_size = 4096;
    c.num_nextn_predict_layers = 1;
    CHECK(!split(&c, 2, NULL, f) && f[1] > 4, "a heavy head moves the cut up: stage 0 = layers 0-%d", f[1] - 1);
    /* a dense first layer (larger than an expert layer's activated part) weighs on the first stage */
    fixture_tiny(&c);
    c.num_hidden_layers = 4;
    c.first_k_dense_replace = 1;
    c.intermediate_size = 4096;
    c.num_nextn_predict_layers = 0;
    c.vocab_size = 8;
    CHECK(!split(&c, 2, NULL, f) && f[1] == 1, "a heavy dense layer 0 is a stage alone (cut at %d)", f[1]);
}

TEST(split_as_given) {
    ds_config c;
    fixture_tiny(&c);
    c.num_hidden_layers = 8;
    int f[5];
    CHECK(!split(&c, 3, "0-3,4-6,7", f) && same(f, (int[]){0, 4, 7, 8}, 4), "--stages 0-3,4-6,7");
    struct {
        int pp;
        const char *spec, *msg;
    } bad[] = {
        {2, "0-3,5-7", "--stages 0-3,5-7: stage 1 is layers 5-7; stages must cover layers 0-7 in order"},
        {2, "0-3", "--stages 0-3: expected 2 ranges like 0-3,4-7 (one per stage)"},
        {2, "0-3,4-6", "--stages 0-3,4-6: layers 7-7 are in no stage"},
        {2, "0-3,4-7,8", "--stages 0-3,4-7,8: more stages than --pp 2"},
        {2, "0-3,4-9", "--stages 0-3,4-9: stage 1 is layers 4-9"},
        {2, "4-7,0-3", "--stages 4-7,0-3: stage 0 is layers 4-7"},
        {2, "a,b", "--stages a,b: expected 2 ranges"},
        {9, NULL, "--pp 9: more stages than the model's 8 decoder layers"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = split(&c, bad[i].pp, bad[i].spec, f);
        CHECK(rc == DS_EUSAGE && strstr(ds_errmsg(), bad[i].msg), "refused: %s", ds_errmsg());
    }
}

TAP_MAIN()
