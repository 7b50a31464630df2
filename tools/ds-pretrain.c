/* ds-pretrain — Pretrain a DeepSeek-V3-architecture model from token shards. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-pretrain");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-pretrain",
        .usage = "[OPTIONS]",
        .summary = "Pretrain a DeepSeek-V3-architecture model from token shards.",
        .example = "  ds-pretrain --config share/configs/demo.json --data 'shards/*.tok' -o ckpt/base --steps 200 --batch 8 --seq-len 256",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
