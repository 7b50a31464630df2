/* ds-extend-ctx — Extend a checkpoint's context with YaRN and continue training at the longer length. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cli.h"
#include "core/err.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "model/config.h"
#include "train/extend.h"

static int print_rope(const ds_config *c) {
    char *cfg_json = NULL;
    DS_TRY(ds_config_to_json(c, &cfg_json));
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_key(&w, "config");
    ds_jsonw_raw(&w, cfg_json);
    ds_jsonw_key(&w, "rope");
    int rc = ds_extend_rope_json(c, &w);
    ds_jsonw_obj_end(&w);
    if (!rc) rc = ds_jsonw_emit_line(&w, stdout, "<stdout>");
    ds_jsonw_free(&w);
    free(cfg_json);
    return rc;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-extend-ctx");
    const char *model = NULL, *config = NULL;
    int do_print_rope = 0, quiet = 0, verbose = 0;
    ds_extend_opts eo;
    ds_extend_opts_defaults(&eo);
    const ds_opt opts[] = {
        {"model", 'm', DS_OPT_STR, &model, "CKPT", "checkpoint to extend (directory, .safetensors or '-')", 0, 0, 0},
        {"config", 0, DS_OPT_STR, &config, "FILE", "a config.json instead of a checkpoint (with --print-rope)", 0, 0, 0},
        {"factor", 0, DS_OPT_FLOAT, &eo.factor, "S", "YaRN scale factor s (V3: 40); 0 keeps the checkpoint's", 0, 0, 0},
        {"original-len", 0, DS_OPT_INT, &eo.original, "L0",
         "pre-training context length; 0 keeps rope_scaling's, else max_position_embeddings", 0, 0, 0},
        {"beta-fast", 0, DS_OPT_FLOAT, &eo.beta_fast, "B", "YaRN beta_fast (rotations kept unscaled); 0 keeps / 32", 0, 0, 0},
        {"beta-slow", 0, DS_OPT_FLOAT, &eo.beta_slow, "B", "YaRN beta_slow (rotations fully scaled); 0 keeps / 1", 0, 0, 0},
        {"mscale", 0, DS_OPT_FLOAT, &eo.mscale, "C", "rope_scaling.mscale; <0 keeps / 1.0 (V3)", 0, 0, 0},
        {"mscale-all-dim", 0, DS_OPT_FLOAT, &eo.mscale_all_dim, "C", "rope_scaling.mscale_all_dim; <0 keeps / 1.0 (V3)", 0, 0, 0},
        {"print-rope", 0, DS_OPT_FLAG, &do_print_rope, NULL,
         "print the extended config and its RoPE tables (inv_freq, wavelengths, cos factor, softmax scale) as JSON and exit", 0, 0, 0},
        {"quiet", 'q', DS_OPT_FLAG, &quiet, NULL, "errors only", 0, 0, 0},
        {"verbose", 'v', DS_OPT_FLAG, &verbose, NULL, "more detail on stderr", 0, 0, 0},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-extend-ctx",
        .usage = "-m CKPT --data 'GLOB' -o OUT --factor S --seq-len T --steps N [OPTIONS]",
        .summary = "Extend a checkpoint's context with YaRN and continue training at the longer length.",
        .example = "  ds-extend-ctx --config share/configs/deepseek-v3-671b.json --print-rope",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (quiet) ds_log_set_level(DS_LOG_QUIET);
    if (verbose) ds_log_set_level(DS_LOG_VERBOSE);
    if (!!model + !!config != 1) return ds_usage_error("one of -m CKPT or --config FILE is needed");
    if (config && !do_print_rope) return ds_usage_error("--config is for --print-rope; training needs -m CKPT");
    ds_config c;
    rc = ds_config_load_file(&c, config ? config : model);
    if (!rc) rc = ds_extend_config(&c, &eo);
    if (rc == DS_EUSAGE) {
        ds_config_free(&c);
        return ds_usage_error("%s", ds_errmsg());
    }
    if (!rc && do_print_rope) rc = print_rope(&c);
    else if (!rc) rc = ds_fail(DS_ERR, "training: not implemented yet");
    ds_config_free(&c);
    return ds_tool_report(rc);
}
