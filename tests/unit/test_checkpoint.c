/* Unit tests for io/checkpoint: directory and stream forms (file, pipe), tensors by pointer and
 * streamed, extra files, atomic replacement and its refusals, abort, stale temporaries, find_latest,
 * and the reader's error messages. The kill -9 test is tests/bats/checkpoint.bats; transformers
 * loading our directory is tests/ref/checkpoint.bats. */
#include "tap.h"

#include "core/dtype.h"
#include "core/err.h"
#include "core/file.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "io/config.h"
#include "model/model.h"

#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static ds_config tiny;
static int tiny_loaded;
static const ds_config *cfg(void) {
    if (!tiny_loaded) {
        char p[4096];
        const char *r = getenv("DS_ROOT");
        snprintf(p, sizeof p, "%s/share/configs/tiny.json", r && *r ? r : ".");
        if (ds_config_load_file(&tiny, p)) {
            printf("# cannot load %s: %s\n", p, ds_errmsg());
            exit(1);
        }
        tiny_loaded = 1;
    }
    return &tiny;
}

static const char TOKENIZER[] = "{\"version\":\"1.0\",\"model\":{\"type\":\"BPE\"}}";
enum { NA = 6, NB = 10 };
static float va[NA] = {1, -2, 3.5f, 1e-3f, 0, 7};
static float vb[NB];
static int32_t vi[3] = {7, -8, 9};
static unsigned char v8[4] = {0x38, 0x40, 0xb8, 0x00};

/* Tensors: a (F32 by pointer), b (BF16 by pointer), s (F8 streamed), i (I32 raw by pointer), c (F32 streamed). */
static int write_ckpt(const char *path, const ds_ckpt_write_opts *o, float marker, int extras) {
    for (int i = 0; i < NB; i++) vb[i] = marker + 0.25f * (float)i;
    ds_ckpt_writer *w;
    DS_TRY(ds_ckpt_writer_begin(&w, path, o));
    int64_t sa[1] = {NA}, sb[2] = {2, 5}, ss[2] = {2, 2}, si[1] = {3}, sc[1] = {3};
    int rc = ds_ckpt_writer_set_config(w, cfg());
    if (!rc) rc = ds_ckpt_writer_set_tokenizer(w, TOKENIZER, strlen(TOKENIZER));
    if (!rc && extras) rc = ds_ckpt_writer_add_file(w, "trainer_state.json", "{\"step\": 12}", 12);
    if (!rc) rc = ds_ckpt_writer_add_f32(w, "model.a", 1, sa, va, DS_F32);
    if (!rc) rc = ds_ckpt_writer_add_f32(w, "model.b", 2, sb, vb, DS_BF16);
    if (!rc) rc = ds_ckpt_writer_declare(w, "model.s", DS_F8_E4M3, 2, ss);
    if (!rc) rc = ds_ckpt_writer_add_raw(w, "model.i", DS_I32, 1, si, vi);
    if (!rc) rc = ds_ckpt_writer_declare(w, "model.c", DS_F32, 1, sc);
    if (!rc) rc = ds_ckpt_writer_data(w, v8, 3); /* in pieces */
    if (!rc) rc = ds_ckpt_writer_data(w, v8 + 3, 1);
    float c3[3] = {marker, marker * 2, marker * 3};
    if (!rc) rc = ds_ckpt_writer_data_f32(w, c3, 3);
    if (!rc && extras && !o->stream && strcmp(path, "-") && !strstr(path, ".safetensors")) {
        char p[4096];
        rc = ds_ckpt_writer_file_path(w, "optimizer.safetensors", p, sizeof p);
        ds_st_tensor m = {.name = "m.model.a", .dtype = DS_F32, .ndim = 1, .shape = {NA}, .numel = NA, .data = va};
        if (!rc) rc = ds_st_save(p, &m, 1, NULL, 0, NULL);
    }
    if (rc) {
        ds_ckpt_writer_abort(w);
        return rc;
    }
    return ds_ckpt_writer_commit(w);
}

static void check_ckpt(const char *what, const char *path, float marker, int extras) {
    ds_ckpt *c;
    int rc = ds_ckpt_open(&c, path);
    CHECK(rc == 0, "%s: opens: %s", what, ds_errmsg());
    if (rc) return;
    const ds_config *k = ds_ckpt_config(c);
    CHECK(k->hidden_size == cfg()->hidden_size && k->n_routed_experts == cfg()->n_routed_experts &&
              k->vocab_size == cfg()->vocab_size,
          "%s: config", what);
    size_t tl;
    const char *tok = ds_ckpt_tokenizer(c, &tl);
    CHECK(tok && tl == strlen(TOKENIZER) && !strcmp(tok, TOKENIZER), "%s: tokenizer", what);
    CHECK(ds_ckpt_count(c) == 5 && !strcmp(ds_ckpt_tensor_at(c, 2)->name, "model.s"), "%s: 5 tensors in order", what);
    float a[NA], b[NB], cc[3];
    int64_t sa[1] = {NA}, sb[2] = {2, 5}, sc[1] = {3};
    CHECK(ds_ckpt_read_f32(c, "model.a", 1, sa, a) == 0 && !memcmp(a, va, sizeof a), "%s: F32 exact", what);
    int ok = ds_ckpt_read_f32(c, "model.b", 2, sb, b) == 0;
    for (int i = 0; ok && i < NB; i++) ok = b[i] == ds_bf16_to_f32(ds_f32_to_bf16(marker + 0.25f * (float)i));
    CHECK(ok, "%s: BF16 stored and read back", what);
    CHECK(ds_ckpt_read_f32(c, "model.c", 1, sc, cc) == 0 && cc[0] == marker && cc[2] == marker * 3, "%s: streamed F32", what);
    const ds_st_tensor *s = ds_ckpt_find(c, "model.s"), *i = ds_ckpt_find(c, "model.i");
    CHECK(s && s->dtype == DS_F8_E4M3 && !memcmp(s->data, v8, 4) && i && i->dtype == DS_I32 && !memcmp(i->data, vi, 12),
          "%s: raw tensors byte-exact", what);
    char *text = NULL;
    size_t len;
    CHECK(ds_ckpt_has_file(c, "generation_config.json") && ds_ckpt_read_file(c, "generation_config.json", &text, &len) == 0 &&
              strstr(text, "\"eos_token_id\": 1"),
          "%s: default generation_config.json", what);
    free(text);
    if (extras) {
        text = NULL;
        CHECK(ds_ckpt_read_file(c, "trainer_state.json", &text, &len) == 0 && !strcmp(text, "{\"step\": 12}"),
              "%s: extra file", what);
        free(text);
        text = NULL;
    }
    CHECK(!ds_ckpt_has_file(c, "nope.json") && ds_ckpt_read_file(c, "nope.json", &text, &len) == DS_ERR &&
              strstr(ds_errmsg(), "checkpoint: no nope.json: "),
          "%s: absent file: %s", what, ds_errmsg());
    CHECK(ds_ckpt_read_file(c, "../x", &text, &len) == DS_ERR && strstr(ds_errmsg(), "bad file name"), "%s: no escaping", what);
    ds_ckpt_close(c);
}

TEST(directory_form) {
    const char *dir = tap_tmp("ck");
    ds_ckpt_write_opts o = {0};
    int rc = write_ckpt(dir, &o, 1.0f, 1);
    CHECK(rc == 0, "written: %s", ds_errmsg());
    check_ckpt("dir", dir, 1.0f, 1);
    CHECK(ds_ckpt_is_complete(dir), "complete");
    char p[600];
    snprintf(p, sizeof p, "%s/optimizer.safetensors", dir);
    ds_st_file *f;
    CHECK(ds_st_open(&f, p) == 0 && ds_st_count(f) == 1, "a file written through file_path is there");
    ds_st_close(f);
    CHECK(tap_count_entries(tap_tmpdir(), ".tmp-") == 0, "no temporary directory left");

    /* replaced by a new one */
    rc = write_ckpt(dir, &o, 5.0f, 0);
    CHECK(rc == 0, "replaced: %s", ds_errmsg());
    check_ckpt("replaced", dir, 5.0f, 0);
    snprintf(p, sizeof p, "%s/trainer_state.json", dir);
    CHECK(!ds_path_exists(p), "files of the old checkpoint are gone");
    CHECK(tap_count_entries(tap_tmpdir(), ".tmp-") == 0, "the old checkpoint is deleted");

    /* sharded weights */
    o.max_shard_bytes = 30;
    rc = write_ckpt(tap_tmp("sharded"), &o, 2.0f, 0);
    CHECK(rc == 0, "sharded: %s", ds_errmsg());
    check_ckpt("sharded", tap_tmp("sharded"), 2.0f, 0);
    CHECK(tap_count_entries(tap_tmp("sharded"), "model-0000") >= 2, "several shards");
}

TEST(stream_form_file_and_pipe) {
    ds_ckpt_write_opts o = {0};
    const char *file = tap_tmp("stream.safetensors");
    int rc = write_ckpt(file, &o, 3.0f, 1);
    CHECK(rc == 0, "stream file written: %s", ds_errmsg());
    check_ckpt("stream file", file, 3.0f, 1);
    ds_st_file *f;
    ds_st_open(&f, file);
    CHECK(ds_st_meta(f, "config") && strstr(ds_st_meta(f, "config"), "\"hidden_size\": 64") &&
              !strcmp(ds_st_meta(f, "tokenizer"), TOKENIZER) && !strcmp(ds_st_meta(f, "file:trainer_state.json"), "{\"step\": 12}") &&
              !strcmp(ds_st_meta(f, "format"), "pt"),
          "metadata: config, tokenizer, file:trainer_state.json, format");
    ds_st_close(f);

    int fds[2];
    if (pipe(fds)) return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        close(fds[1]);
        _exit(write_ckpt("-", &o, 4.0f, 1) ? 1 : 0);
    }
    close(fds[1]);
    int saved = dup(0);
    dup2(fds[0], 0);
    close(fds[0]);
    check_ckpt("pipe", "-", 4.0f, 1);
    dup2(saved, 0);
    close(saved);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer to the pipe succeeded");
}

TEST(bare_safetensors_with_config_beside_it) {
    const char *dir = tap_tmp("bare");
    ds_mkdir_p(dir);
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", dir);
    ds_config_save_file(cfg(), p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    ds_st_tensor t = {.name = "w", .dtype = DS_F32, .ndim = 1, .shape = {NA}, .numel = NA, .data = va};
    ds_st_save(p, &t, 1, NULL, 0, NULL);
    ds_ckpt *c;
    int rc = ds_ckpt_open(&c, p);
    CHECK(rc == 0 && ds_ckpt_config(c)->hidden_size == 64 && ds_ckpt_tokenizer(c, NULL) == NULL && ds_ckpt_count(c) == 1,
          "a plain model.safetensors takes config.json from its directory: %s", ds_errmsg());
    if (!rc) ds_ckpt_close(c);
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    char want[900];
    snprintf(want, sizeof want,
             "checkpoint: no config (neither __metadata__ \"config\" nor a config.json beside it): %s", p);
    CHECK(ds_ckpt_open(&c, p) == DS_ERR && !strcmp(ds_errmsg(), want), "without one: %s", ds_errmsg());
}

TEST(reader_errors) {
    ds_ckpt_write_opts o = {0};
    const char *dir = tap_tmp("rd");
    write_ckpt(dir, &o, 1.0f, 0);
    ds_ckpt *c;
    if (ds_ckpt_open(&c, dir)) return;
    float buf[16];
    int64_t wrong[2] = {5, 2}, right[2] = {2, 5};
    char want[900];
    snprintf(want, sizeof want, "checkpoint: missing tensor model.zz: %s", dir);
    CHECK(ds_ckpt_read_f32(c, "model.zz", 2, right, buf) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    snprintf(want, sizeof want, "checkpoint: model.b has shape [2, 5], expected [5, 2]: %s/model.safetensors", dir);
    CHECK(ds_ckpt_read_f32(c, "model.b", 2, wrong, buf) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    ds_ckpt_close(c);
    CHECK(ds_ckpt_open(&c, tap_tmp("absent")) == DS_ERR && strstr(ds_errmsg(), "checkpoint: not found: "), "%s", ds_errmsg());
    const char *empty = tap_tmp("emptydir");
    ds_mkdir_p(empty);
    snprintf(want, sizeof want, "checkpoint: no config.json: %s", empty);
    CHECK(ds_ckpt_open(&c, empty) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
}

TEST(writer_refusals_and_abort) {
    ds_ckpt_write_opts o = {0};
    const char *dir = tap_tmp("keep");
    write_ckpt(dir, &o, 1.0f, 0);
    ds_ckpt_writer *w;
    /* an aborted write leaves the old checkpoint and no temporary */
    CHECK(ds_ckpt_writer_begin(&w, dir, &o) == 0, "begin over an existing checkpoint");
    ds_ckpt_writer_set_config(w, cfg());
    int64_t s1[1] = {4};
    ds_ckpt_writer_declare(w, "x", DS_F32, 1, s1);
    float x[2] = {1, 2};
    ds_ckpt_writer_data_f32(w, x, 2);
    char want[900];
    snprintf(want, sizeof want, "checkpoint: tensor x got 8 of 16 bytes: %s", dir);
    CHECK(ds_ckpt_writer_commit(w) == DS_ERR && !strcmp(ds_errmsg(), want), "incomplete tensor: %s", ds_errmsg());
    check_ckpt("after a failed replace", dir, 1.0f, 0);
    CHECK(tap_count_entries(tap_tmpdir(), ".tmp-") == 0, "no temporary left after the failure");
    CHECK(ds_ckpt_writer_begin(&w, dir, &o) == 0, "begin again");
    ds_ckpt_writer_abort(w);
    check_ckpt("after abort", dir, 1.0f, 0);
    CHECK(tap_count_entries(tap_tmpdir(), ".tmp-") == 0, "no temporary left after abort");

    /* a directory that is not a checkpoint is never replaced */
    const char *other = tap_tmp("precious");
    ds_mkdir_p(other);
    char p[700];
    snprintf(p, sizeof p, "%s/notes.txt", other);
    FILE *f = fopen(p, "w");
    fputs("mine", f);
    fclose(f);
    snprintf(want, sizeof want, "checkpoint: refusing to replace a directory that is not a checkpoint: %s", other);
    CHECK(ds_ckpt_writer_begin(&w, other, &o) == DS_ERR && !strcmp(ds_errmsg(), want) && ds_path_exists(p), "%s",
          ds_errmsg());
    snprintf(want, sizeof want, "checkpoint: exists and is not a directory: %s", p);
    CHECK(ds_ckpt_writer_begin(&w, p, &o) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());

    /* stream rules */
    const char *sf = tap_tmp("s.safetensors");
    ds_ckpt_writer_begin(&w, sf, &o);
    ds_ckpt_writer_declare(w, "x", DS_F32, 1, s1);
    snprintf(want, sizeof want, "checkpoint: no config set before the tensor data: %s", sf);
    CHECK(ds_ckpt_writer_data_f32(w, x, 2) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    ds_ckpt_writer_abort(w);
    ds_ckpt_writer_begin(&w, sf, &o);
    ds_ckpt_writer_set_config(w, cfg());
    ds_ckpt_writer_declare(w, "x", DS_F32, 1, s1);
    ds_ckpt_writer_data_f32(w, x, 2);
    snprintf(want, sizeof want, "checkpoint: stream metadata set after tensor data was written: %s", sf);
    CHECK(ds_ckpt_writer_set_tokenizer(w, "{}", 2) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    snprintf(want, sizeof want, "checkpoint: tensor y declared after tensor data was written: %s", sf);
    CHECK(ds_ckpt_writer_declare(w, "y", DS_F32, 1, s1) == DS_ERR && !strcmp(ds_errmsg(), want), "%s", ds_errmsg());
    ds_ckpt_writer_abort(w);
    CHECK(!ds_path_exists(sf), "nothing written by aborted stream writers");
    ds_ckpt_writer_begin(&w, tap_tmp("names"), &o);
    CHECK(ds_ckpt_writer_add_file(w, "config.json", "{}", 2) == DS_ERR && strstr(ds_errmsg(), "is written by the checkpoint itself"),
          "reserved names: %s", ds_errmsg());
    CHECK(ds_ckpt_writer_add_file(w, "a/b", "x", 1) == DS_ERR && strstr(ds_errmsg(), "bad file name \"a/b\""), "%s",
          ds_errmsg());
    CHECK(ds_ckpt_writer_add_f32(w, "q", 1, s1, x, DS_I8) == DS_ERR && strstr(ds_errmsg(), "float32 data cannot be stored as I8"),
          "%s", ds_errmsg());
    ds_ckpt_writer_abort(w);
}

TEST(stale_temporaries_are_removed) {
    const char *dir = tap_tmp("stale");
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0); /* a pid that no longer runs */
    char p[700];
    snprintf(p, sizeof p, "%s.tmp-%d", dir, (int)pid);
    ds_mkdir_p(p);
    char f[800];
    snprintf(f, sizeof f, "%s/model.safetensors", p);
    FILE *fp = fopen(f, "w");
    fputs("half", fp);
    fclose(fp);
    ds_ckpt_write_opts o = {0};
    CHECK(write_ckpt(dir, &o, 1.0f, 0) == 0 && !ds_path_exists(p), "a dead writer's temporary is cleaned up");
}

TEST(find_latest) {
    const char *root = tap_tmp("runs");
    ds_mkdir_p(root);
    ds_ckpt_write_opts o = {0};
    char p[700], out[4096];
    CHECK(ds_ckpt_find_latest(root, out, sizeof out) == DS_ERR &&
              !strcmp(ds_errmsg(), strstr(ds_errmsg(), "checkpoint: none found under ")),
          "none yet: %s", ds_errmsg());
    const char *names[] = {"step-000200", "step-000100", "zzz-no-state"};
    const int steps[] = {200, 100, -1};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", root, names[i]);
        write_ckpt(p, &o, 1.0f, 0);
        if (steps[i] >= 0) {
            char f[800], s[64];
            snprintf(f, sizeof f, "%s/trainer_state.json", p);
            int n = snprintf(s, sizeof s, "{\"step\": %d}", steps[i]);
            FILE *fp = fopen(f, "w");
            fwrite(s, 1, (size_t)n, fp);
            fclose(fp);
        }
    }
    /* distractors: an unfinished write with a higher step, a directory without weights */
    snprintf(p, sizeof p, "%s/step-000300.tmp-1", root);
    ds_mkdir_p(p);
    char f[800];
    snprintf(f, sizeof f, "%s/config.json", p);
    ds_config_save_file(cfg(), f);
    snprintf(f, sizeof f, "%s/model.safetensors", p);
    fclose(fopen(f, "w"));
    snprintf(p, sizeof p, "%s/step-000400", root);
    ds_mkdir_p(p);
    snprintf(f, sizeof f, "%s/config.json", p);
    ds_config_save_file(cfg(), f);
    CHECK(ds_ckpt_find_latest(root, out, sizeof out) == 0 && strstr(out, "step-000200"), "highest step wins: %.300s", out);
    snprintf(p, sizeof p, "%s/step-000100", root);
    CHECK(ds_ckpt_find_latest(p, out, sizeof out) == 0 && !strcmp(out, p), "a checkpoint itself: %.300s", out);
}

/* A checkpoint of the tiny model with every parameter (tests/ref/checkpoint.bats loads it with
 * transformers): DS_CKPT_MODEL=OUT_DIR:SEED:DTYPE. */
TEST(reference_model_checkpoint) {
    const char *env = getenv("DS_CKPT_MODEL");
    if (!env) return;
    char out[2048], dt[16];
    unsigned seed;
    if (sscanf(env, "%2047[^:]:%u:%15s", out, &seed, dt) != 3) return;
    ds_model *m;
    ds_model_opts mo = {.max_batch = 1, .max_seq = 8};
    int rc = ds_model_create(&m, cfg(), &mo);
    CHECK(rc == 0, "model: %s", ds_errmsg());
    if (rc) return;
    ds_model_init(m, seed);
    int n;
    const ds_param *info = ds_model_params_info(m, &n);
    float *params = ds_model_params(m);
    ds_ckpt_writer *w;
    ds_ckpt_write_opts o = {0};
    rc = ds_ckpt_writer_begin(&w, out, &o);
    if (!rc) rc = ds_ckpt_writer_set_config(w, cfg());
    ds_dtype store = ds_dtype_from_name(dt);
    for (int i = 0; !rc && i < n; i++) rc = ds_ckpt_writer_add_f32(w, info[i].name, info[i].ndim, info[i].shape, params + info[i].offset, store);
    /* router biases: small nonzero values so the comparison means something */
    float *bias_vals[64] = {0};
    for (int l = 0; !rc && l < cfg()->num_hidden_layers + cfg()->num_nextn_predict_layers && l < 64; l++) {
        float *b = ds_model_expert_bias(m, l);
        if (!b) continue;
        for (int e = 0; e < cfg()->n_routed_experts; e++) b[e] = 0.01f * (float)(e - l);
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
        int64_t s[1] = {cfg()->n_routed_experts};
        rc = ds_ckpt_writer_add_f32(w, name, 1, s, b, DS_F32);
        bias_vals[l] = b;
    }
    (void)bias_vals;
    if (!rc) rc = ds_ckpt_writer_commit(w);
    else ds_ckpt_writer_abort(w);
    CHECK(rc == 0, "checkpoint of %d tensors: %s", n, ds_errmsg());
    ds_model_free(m);
}

/* A large checkpoint written slowly, for the kill -9 test: DS_CKPT_BIG=DIR:MB:MARKER[:PAUSE_FLAG]. With
 * PAUSE_FLAG, after half the tensors it creates that file and sleeps, to be killed mid-write. */
TEST(reference_big_checkpoint) {
    const char *env = getenv("DS_CKPT_BIG");
    if (!env) return;
    char out[2048], flag[2048] = "";
    unsigned mb;
    float marker;
    if (sscanf(env, "%2047[^:]:%u:%f:%2047s", out, &mb, &marker, flag) < 3) return;
    enum { CHUNK = 1 << 20 };
    float *chunk = malloc(CHUNK * 4);
    for (int i = 0; i < CHUNK; i++) chunk[i] = marker;
    ds_ckpt_writer *w;
    ds_ckpt_write_opts o = {.max_shard_bytes = 64u << 20};
    int rc = ds_ckpt_writer_begin(&w, out, &o);
    if (!rc) rc = ds_ckpt_writer_set_config(w, cfg());
    int n = (int)(mb / 4);
    int64_t s[1] = {CHUNK};
    for (int i = 0; !rc && i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "t.%04d", i);
        rc = ds_ckpt_writer_declare(w, name, DS_F32, 1, s);
    }
    for (int i = 0; !rc && i < n; i++) {
        rc = ds_ckpt_writer_data_f32(w, chunk, CHUNK);
        if (flag[0] && i == n / 2) {
            fclose(fopen(flag, "w"));
            sleep(600);
        }
    }
    if (!rc) rc = ds_ckpt_writer_commit(w);
    else ds_ckpt_writer_abort(w);
    CHECK(rc == 0, "big checkpoint: %s", ds_errmsg());
    free(chunk);
}

/* DS_CKPT_CHECK=DIR:MARKER — every tensor of DIR holds MARKER (TAP lines report it). */
TEST(reference_check_marker) {
    const char *env = getenv("DS_CKPT_CHECK");
    if (!env) return;
    char dir[2048];
    float marker;
    if (sscanf(env, "%2047[^:]:%f", dir, &marker) != 2) return;
    ds_ckpt *c;
    int rc = ds_ckpt_open(&c, dir);
    CHECK(rc == 0, "opens: %s", ds_errmsg());
    if (rc) return;
    int ok = ds_ckpt_count(c) > 0;
    float *buf = malloc((1 << 20) * 4);
    for (int i = 0; ok && i < ds_ckpt_count(c); i++) {
        const ds_st_tensor *t = ds_ckpt_tensor_at(c, i);
        ok = t->numel <= (1 << 20) && ds_st_read_f32(t, buf, dir) == 0;
        for (int64_t j = 0; ok && j < t->numel; j++) ok = buf[j] == marker;
    }
    CHECK(ok, "all %d tensors hold %g", ds_ckpt_count(c), marker);
    free(buf);
    ds_ckpt_close(c);
}

/* DS_CKPT_DUMP=PATH:OUT.json — {config: <as we save it>, tokenizer: bool, tensors: {name: [dtype, shape,
 * sum of float32 values]}} for a checkpoint written elsewhere. */
TEST(reference_dump) {
    const char *env = getenv("DS_CKPT_DUMP");
    if (!env) return;
    char in[2048], out[2048];
    if (sscanf(env, "%2047[^:]:%2047s", in, out) != 2) return;
    ds_ckpt *c;
    int rc = ds_ckpt_open(&c, in);
    CHECK(rc == 0, "opens: %s", ds_errmsg());
    if (rc) return;
    char *text = NULL;
    ds_config_to_json(ds_ckpt_config(c), &text);
    json_t *ts = json_object();
    for (int i = 0; i < ds_ckpt_count(c); i++) {
        const ds_st_tensor *t = ds_ckpt_tensor_at(c, i);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        float *f = malloc((size_t)t->numel * 4 + 4);
        double sum = 0;
        if (ds_st_read_f32(t, f, in) == 0)
            for (int64_t j = 0; j < t->numel; j++) sum += f[j];
        free(f);
        json_object_set_new(ts, t->name, json_pack("[s,o,f]", ds_dtype_name(t->dtype), shape, sum));
    }
    json_t *o = json_pack("{s:o,s:b,s:o}", "config", json_loads(text, 0, NULL), "tokenizer",
                          ds_ckpt_tokenizer(c, NULL) != NULL, "tensors", ts);
    CHECK(json_dump_file(o, out, 0) == 0, "dumped");
    json_decref(o);
    free(text);
    ds_ckpt_close(c);
}

int main(int argc, char **argv) {
    const int rc = tap_run(argc, argv);
    if (tiny_loaded) ds_config_free(&tiny);
    return rc;
}
