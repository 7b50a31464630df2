/* ds-sft — Supervised fine-tuning on JSONL chat data with loss masking and packing. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-sft");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-sft",
        .usage = "[OPTIONS]",
        .summary = "Supervised fine-tuning on JSONL chat data with loss masking and packing.",
        .example = "  ds-sft -m ckpt/long --data chat.jsonl -o ckpt/sft --epochs 2",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
