/* ds-quantize — Convert checkpoints between FP8 E4M3 (128x128 block scales), BF16 and FP32. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-quantize");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-quantize",
        .usage = "[OPTIONS]",
        .summary = "Convert checkpoints between FP8 E4M3 (128x128 block scales), BF16 and FP32.",
        .example = "  ds-quantize -m ckpt/sft -o - --to fp8 | ds-generate -m - --prompt '2+2='",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
