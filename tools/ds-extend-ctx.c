/* ds-extend-ctx — Extend a checkpoint's context with YaRN and continue training at the longer length. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-extend-ctx");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-extend-ctx",
        .usage = "[OPTIONS]",
        .summary = "Extend a checkpoint's context with YaRN and continue training at the longer length.",
        .example = "  ds-extend-ctx -m ckpt/base --data 'shards/*.tok' -o ckpt/long --factor 4 --seq-len 1024 --steps 100",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
