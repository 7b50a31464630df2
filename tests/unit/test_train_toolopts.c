/* train/toolopts.h: the shared option entries write where they should and keep their ranges, the
 * defaults are the trainer's, the session and trainer options carry every shared value, schedules
 * resolve as ds_sched_parse does, the configuration record's head and tail keep their key order,
 * and the outcome maps to the tools' exit codes. */
#include "tap.h"

#include "core/err.h"
#include "train/toolopts.h"

static const char *const NAMES[] = {"model", "out", "lr", "lr-schedule", "alpha", "weight-decay", "beta1", "beta2", "eps", "clip",
                                    "bf16-moments", "seed", "threads", "tokenizer", "val-frac", "val-batches", "metrics", "plot",
                                    "save-every", "resume", "log-every", "skip-nonfinite", "fp8", "device", "quiet", "verbose"};
enum { N_NAMES = sizeof NAMES / sizeof *NAMES };

/* Parse argv through a table of every shared option (plus --clip-grad when clip_grad is set). */
static int parse(ds_train_toolopts *t, int clip_grad, int argc, char **argv) {
    ds_opt opts[N_NAMES + 2];
    int n = 0;
    for (int i = 0; i < N_NAMES; i++)
        if (!(clip_grad && !strcmp(NAMES[i], "clip"))) opts[n++] = ds_train_toolopt(t, NAMES[i], NULL);
    if (clip_grad) opts[n++] = ds_train_toolopt(t, "clip-grad", NULL);
    opts[n] = (ds_opt){0};
    const ds_cli cli = {.name = "test", .usage = "", .summary = "", .example = "", .opts = opts};
    int first;
    return ds_cli_parse(&cli, argc, argv, &first);
}

TEST(entries_write_every_field) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    char *argv[] = {"test", "-m", "M", "-o", "O", "--lr", "0.5", "--lr-schedule", "cosine", "--alpha", "0.25",
                    "--weight-decay", "0.05", "--beta1", "0.8", "--beta2", "0.9", "--eps", "1e-6", "--clip", "2",
                    "--bf16-moments", "--seed", "7", "--threads", "3", "--tokenizer", "tok.json", "--val-frac", "0.125",
                    "--val-batches", "5", "--metrics", "m.jsonl", "--plot", "p.png", "--save-every", "11", "--resume", "R",
                    "--log-every", "0", "--skip-nonfinite", "--fp8", "--device", "cuda", "-q", "-v"};
    CHECK(parse(&t, 0, sizeof argv / sizeof *argv, argv) == -1, "every shared option parses");
    CHECK(!strcmp(t.model, "M") && !strcmp(t.out, "O") && !strcmp(t.lr_schedule, "cosine") && !strcmp(t.tokenizer, "tok.json"),
          "-m, -o, --lr-schedule, --tokenizer");
    CHECK(!strcmp(t.metrics, "m.jsonl") && !strcmp(t.plot, "p.png") && !strcmp(t.resume, "R") && !strcmp(t.device, "cuda"),
          "--metrics, --plot, --resume, --device");
    CHECK(t.lr == 0.5 && t.alpha == 0.25 && t.weight_decay == 0.05 && t.beta1 == 0.8 && t.beta2 == 0.9 && t.eps == 1e-6 &&
              t.clip == 2 && t.val_frac == 0.125,
          "the numbers");
    CHECK(t.seed == 7 && t.threads == 3 && t.val_batches == 5 && t.save_every == 11 && t.log_every == 0, "the integers");
    CHECK(t.bf16_moments && t.skip_nonfinite && t.fp8 && t.quiet && t.verbose, "the flags");

    ds_train_toolopts u;
    ds_train_toolopts_defaults(&u);
    char *grad[] = {"test", "--clip-grad", "0.5"};
    CHECK(parse(&u, 1, 3, grad) == -1 && u.clip == 0.5, "--clip-grad is --clip under another name: %g", u.clip);
}

TEST(ranges_and_choices_are_kept) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    char *beta[] = {"test", "--beta1", "1.5"};
    CHECK(parse(&t, 0, 3, beta) == 2 && t.beta1 == 0.9, "--beta1 above 1 is a usage error, the default stays");
    char *thr[] = {"test", "--threads", "5000"};
    CHECK(parse(&t, 0, 3, thr) == 2, "--threads above 4096 is a usage error");
    char *vb[] = {"test", "--val-batches", "0"};
    CHECK(parse(&t, 0, 3, vb) == 2, "--val-batches 0 is a usage error");
    char *dev[] = {"test", "--device", "tpu"};
    CHECK(parse(&t, 0, 3, dev) == 2 && !strcmp(t.device, "cpu"), "--device takes cpu|cuda only");
}

TEST(help_wording) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    ds_opt o = ds_train_toolopt(&t, "threads", NULL);
    CHECK(!strcmp(o.help, "CPU threads (0 = all cores)") && !strcmp(o.metavar, "N") && o.dest == &t.threads,
          "the shared wording and destination");
    o = ds_train_toolopt(&t, "resume", "continue the phase saved in DIR");
    CHECK(!strcmp(o.help, "continue the phase saved in DIR") && o.dest == &t.resume, "a tool's own wording");
    o = ds_train_toolopt(&t, "fp8", DS_TRAIN_FP8_HELP "; rollouts stay fp32");
    CHECK(strstr(o.help, "V3's recipe; rollouts stay fp32") != NULL, "added to the shared wording");
    o = ds_train_toolopt(&t, "no-such-option", NULL);
    CHECK(o.name && !strcmp(o.name, "no-such-option") && strstr(o.help, "unknown"), "an unknown name is marked");
    ds_opt opts[] = {o, {0}};
    const ds_cli cli = {.name = "test", .usage = "", .summary = "", .example = "", .opts = opts};
    char *argv[] = {"test", "--no-such-option", "x"};
    int first;
    CHECK(ds_cli_parse(&cli, 3, argv, &first) == 2, "and accepts no value");
}

TEST(groups) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    const ds_opt opts[] = {ds_train_toolopts_group(&t, "beta1 beta2 eps"), ds_train_toolopt(&t, "seed", "mine"),
                           ds_train_toolopts_group(&t, "save-every quiet"), {0}};
    CHECK(opts[0].type == DS_OPT_GROUP && opts[2].type == DS_OPT_GROUP, "a group is one entry");
    const ds_opt *g = opts[0].dest;
    CHECK(g[0].name && !strcmp(g[0].name, "beta1") && !strcmp(g[1].name, "beta2") && !strcmp(g[2].name, "eps") && !g[3].name,
          "in the order named");
    CHECK(!strcmp(g[1].help, "AdamW beta2") && g[1].dest == &t.beta2 && g[1].max == 1, "with the shared wording and range");
    const ds_cli cli = {.name = "test", .usage = "", .opts = opts};
    char *argv[] = {"test", "--eps", "0.001", "--seed", "4", "-q", "--save-every", "9", "--beta2", "0.5"};
    int first;
    CHECK(ds_cli_parse(&cli, 10, argv, &first) == -1 && t.eps == 0.001 && t.seed == 4 && t.quiet && t.save_every == 9 &&
              t.beta2 == 0.5,
          "they parse");
    ds_opt u = ds_train_toolopts_group(&t, "beta1 nonsense");
    const ds_opt *ug = u.dest;
    CHECK(ug[1].name && strstr(ug[1].name, "unknown") && !ug[2].name, "an unknown name is marked");
    int full = 0;
    for (int i = 0; i < 40 && !full; i++) {
        ds_opt x = ds_train_toolopts_group(&t, "beta1 beta2 eps clip");
        for (const ds_opt *o = x.dest; o->name; o++) full |= strstr(o->name, "too many") != NULL;
    }
    CHECK(full && t.n_group_entries <= (int)(sizeof t.group_entries / sizeof *t.group_entries), "the storage never overflows");
}

TEST(defaults_are_the_trainers) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    ds_train_opts ref, to;
    ds_train_opts_defaults(&ref);
    ds_train_toolopts_apply(&t, &to);
    CHECK(to.adamw.beta1 == ref.adamw.beta1 && to.adamw.beta2 == ref.adamw.beta2 && to.adamw.eps == ref.adamw.eps &&
              to.adamw.weight_decay == ref.adamw.weight_decay && to.adamw.bf16_moments == ref.adamw.bf16_moments &&
              to.adamw.decay_embed == ref.adamw.decay_embed,
          "AdamW as ds_adamw_defaults");
    CHECK(to.clip_norm == ref.clip_norm && to.val_batches == ref.val_batches && to.log_every == ref.log_every &&
              to.balance_alpha == 0 && to.skip_nonfinite == 0 && to.val_every == 0 && to.save_every == 0,
          "clipping, validation, logging");
    CHECK(!strcmp(t.device, "cpu") && !t.fp8 && !t.threads && !t.seed_note, "on the CPU, all cores");
}

TEST(session_and_trainer_options) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    t.model = "M", t.resume = "R", t.out = "O", t.tokenizer = "T", t.metrics = "m", t.plot = "p", t.device = "cuda";
    t.fp8 = 1, t.alpha = 0.5, t.micro_batch = 3, t.seq_len = 77, t.seed = 9, t.steps = 40, t.batch = 6;
    t.beta1 = 0.7, t.beta2 = 0.8, t.eps = 1e-5, t.weight_decay = 0.01, t.bf16_moments = 1, t.clip = 4, t.skip_nonfinite = 1;
    t.val_every = 13, t.val_batches = 2, t.save_every = 17, t.log_every = 5;
    ds_session_opts so = ds_train_toolopts_session(&t, "ds-x");
    CHECK(!strcmp(so.tool, "ds-x") && so.model_path == t.model && so.resume == t.resume && so.out_dir == t.out &&
              so.tokenizer_path == t.tokenizer && so.metrics_path == t.metrics && so.plot_path == t.plot && so.device == t.device,
          "the session's paths");
    CHECK(so.fp8 == 1 && so.balance_alpha == 0.5 && so.micro_batch == 3 && so.seq_len == 77 && so.seed == 9 && !so.config_path &&
              !so.edit_config && !so.want_entropy && !so.dp,
          "the session's numbers; the rest left to the tool");
    ds_train_opts to;
    ds_train_toolopts_apply(&t, &to);
    CHECK(to.total_steps == 40 && to.seq_len == 77 && to.micro_batch == 3 && to.seed == 9, "steps, shape, seed");
    CHECK(to.adamw.beta1 == 0.7 && to.adamw.beta2 == 0.8 && to.adamw.eps == 1e-5 && to.adamw.weight_decay == 0.01 &&
              to.adamw.bf16_moments == 1 && to.adamw.decay_embed == 1,
          "AdamW");
    CHECK(to.clip_norm == 4 && to.balance_alpha == 0.5 && to.skip_nonfinite == 1 && to.val_every == 13 && to.val_batches == 2 &&
              to.save_every == 17 && to.log_every == 5 && to.peak_flops == 0,
          "clipping, balance, validation, saving, logging");
}

static int same_sched(const ds_sched *a, const char *spec, double peak, int64_t steps) {
    ds_sched b;
    char da[512], db[512];
    if (ds_sched_parse(&b, spec, peak, steps, "x")) return 0;
    ds_sched_describe(a, da, sizeof da);
    ds_sched_describe(&b, db, sizeof db);
    return !strcmp(da, db);
}

TEST(schedules) {
    ds_train_opts to;
    ds_train_opts_defaults(&to);
    to.total_steps = 100;
    ds_train_sched_specs sp = {.lr_peak = 0.003, .batch = 12, .lambda = "0.3,0.1@50%", .lambda_peak = 0.3};
    CHECK(ds_train_schedules(&sp, &to) == 0, "constant lr and batch");
    CHECK(same_sched(&to.lr, "0.003", 0.003, 100) && same_sched(&to.batch, "12", 12, 100), "lr and batch constant");
    CHECK(same_sched(&to.gamma, "0", 0, 100) && same_sched(&to.lambda, "0.3,0.1@50%", 0.3, 100), "gamma 0, lambda as given");
    sp = (ds_train_sched_specs){.lr = "v3", .lr_peak = 2e-4, .batch_ramp = "linear:4@0,8@50", .batch = 8, .gamma = "0.001,0@90%",
                                .gamma_peak = 0.001};
    CHECK(ds_train_schedules(&sp, &to) == 0, "given specs");
    CHECK(same_sched(&to.lr, "v3", 2e-4, 100) && same_sched(&to.batch, "linear:4@0,8@50", 8, 100) &&
              same_sched(&to.gamma, "0.001,0@90%", 0.001, 100) && same_sched(&to.lambda, "0", 0, 100),
          "each as ds_sched_parse resolves it");
    sp.batch_ramp = "linear:oops";
    CHECK(ds_train_schedules(&sp, &to) != 0 && !strncmp(ds_errmsg(), "--batch-ramp:", 13), "a bad ramp names --batch-ramp: %s",
          ds_errmsg());
    sp.batch_ramp = NULL, sp.lr = "nonsense";
    CHECK(ds_train_schedules(&sp, &to) != 0 && !strncmp(ds_errmsg(), "--lr-schedule:", 14), "names --lr-schedule: %s", ds_errmsg());
}

static ds_session fake_session(void) {
    ds_session s;
    memset(&s, 0, sizeof s);
    char p[4096];
    const char *r = getenv("DS_ROOT");
    snprintf(p, sizeof p, "%s/share/configs/tiny.json", r && *r ? r : ".");
    if (ds_config_load_file(&s.cfg, p)) {
        printf("# cannot load %s: %s\n", p, ds_errmsg());
        exit(1);
    }
    s.o.tool = "ds-x", s.o.seed = 5, s.o.fp8 = 1, s.resumed_step = -1;
    return s;
}

/* position of "\"key\":" in j, or -1 */
static long key_at(const char *j, const char *key) {
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *p = strstr(j, k);
    return p ? p - j : -1;
}

TEST(record_head_and_tail) {
    ds_session s = fake_session();
    ds_jsonw w;
    ds_train_record_begin(&w, &s, "ckpt/base", NULL);
    ds_jsonw_kint(&w, "mine", 42);
    char *rec = ds_train_record_end(&w, &s);
    CHECK(rec && !strncmp(rec, "{\"config\":{\"tool\":\"ds-x\",\"version\":\"", 35), "opens with tool and version: %.60s", rec ? rec : "(none)");
    static const char *order[] = {"tool", "version", "model", "params_total", "mine", "seed", "threads", "fp8"};
    long prev = -1;
    int ok = 1;
    for (int k = 0; k < 8; k++) {
        long at = key_at(rec, order[k]);
        ok &= at > prev;
        prev = at;
    }
    CHECK(ok, "keys in order: %s", rec);
    CHECK(strstr(rec, "\"model\":\"ckpt/base\"") && strstr(rec, "\"seed\":\"5\"") && strstr(rec, "\"fp8\":true,\"fp8_attn_out\":\"e5m6\"}}") &&
              key_at(rec, "reference") < 0 && key_at(rec, "resumed_from_step") < 0,
          "values; no reference, not resumed");
    free(rec);

    s.resumed_step = 12;
    ds_train_record_begin(&w, &s, "ckpt/base", "ckpt/ref");
    rec = ds_train_record_end(&w, &s);
    CHECK(rec && key_at(rec, "model") < key_at(rec, "reference") && key_at(rec, "reference") < key_at(rec, "params_total") &&
              strstr(rec, "\"reference\":\"ckpt/ref\"") && strstr(rec, "\"fp8\":true,\"fp8_attn_out\":\"e5m6\",\"resumed_from_step\":12}}"),
          "reference after the model, resumed_from_step last: %s", rec);
    free(rec);

    ds_train_opts to;
    ds_train_opts_defaults(&to);
    to.total_steps = 10;
    ds_train_sched_specs sp = {.lr_peak = 0.25, .batch = 4};
    CHECK(ds_train_schedules(&sp, &to) == 0, "schedules");
    ds_train_record_begin(&w, &s, "m", NULL);
    ds_train_record_schedules(&w, &to);
    rec = ds_train_record_end(&w, &s);
    char d[512], want[600];
    ds_sched_describe(&to.lr, d, sizeof d);
    snprintf(want, sizeof want, "\"lr\":\"%s\",\"batch\":", d);
    CHECK(rec && strstr(rec, want) && key_at(rec, "batch") < key_at(rec, "gamma") && key_at(rec, "gamma") < key_at(rec, "lambda") &&
              key_at(rec, "lambda") < key_at(rec, "seed"),
          "lr, batch, gamma, lambda described in order: %s", rec);
    free(rec);
    ds_config_free(&s.cfg);
}

TEST(usage_checks_and_exit_codes) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    CHECK(ds_train_tool_check_out(&t) == 2, "no -o");
    t.out = "-";
    CHECK(ds_train_tool_check_out(&t) == 2, "-o -");
    t.out = "dir";
    CHECK(ds_train_tool_check_out(&t) == 0, "-o dir");
    t.batch = 8, t.micro_batch = 0;
    CHECK(ds_train_tool_check_batch(&t) == 0 && t.micro_batch == 8, "micro-batch 0 = --batch");
    t.micro_batch = 3;
    CHECK(ds_train_tool_check_batch(&t) == 2, "8 is not a multiple of 3");
    char *argv[] = {"test", "stray"};
    CHECK(ds_train_tool_start(&t, 2, argv, 1) == 2, "a stray argument is a usage error");
    CHECK(ds_train_tool_start(&t, 2, argv, 2) == -1, "none: go on");
    ds_session s0 = {0}; /* no group: nothing to agree on */
    CHECK(ds_train_tool_exit(&s0, 0, 0) == 0 && ds_train_tool_exit(&s0, 0, 15) == 143 && ds_train_tool_exit(&s0, 0, 2) == 130,
          "done, signals");
    ds_fail(DS_ERR, "x");
    CHECK(ds_train_tool_exit(&s0, DS_ERR, 15) == 1, "an error wins over the signal");
    ds_fail(DS_EDIVERGED, "x");
    CHECK(ds_train_tool_exit(&s0, DS_EDIVERGED, 0) == 3, "diverged");
    ds_fail(DS_EUSAGE, "x");
    CHECK(ds_train_tool_exit(&s0, DS_EUSAGE, 0) == 2, "usage");
}

TEST(seed_given_or_drawn) {
    ds_train_toolopts t;
    ds_train_toolopts_defaults(&t);
    const ds_opt opts[] = {ds_train_toolopt(&t, "seed", NULL), {0}};
    const ds_cli cli = {.name = "t", .usage = "", .opts = opts};
    char *given[] = {"t", "--seed", "18446744073709551615"}, *none[] = {"t"};
    int first;
    CHECK(ds_cli_parse(&cli, 3, given, &first) == -1 && ds_train_tool_start(&t, 3, given, 3) == -1 && t.seed == UINT64_MAX &&
              !t.seed_note,
          "--seed 2^64-1 is kept as given");
    uint64_t drawn[2];
    for (int i = 0; i < 2; i++) {
        t.seed = 0;
        CHECK(ds_cli_parse(&cli, 1, none, &first) == -1 && ds_train_tool_start(&t, 1, none, 1) == -1 && t.seed_note &&
                  !strncmp(t.seed_note, "random", 6),
              "no --seed: a random one");
        drawn[i] = t.seed;
    }
    CHECK(drawn[0] != drawn[1], "drawn afresh each run (%llu, %llu)", (unsigned long long)drawn[0], (unsigned long long)drawn[1]);
}

TAP_MAIN()
