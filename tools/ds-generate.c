/* ds-generate — Generate text from a checkpoint with the MLA latent KV cache, or score texts. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-generate");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-generate",
        .usage = "[OPTIONS]",
        .summary = "Generate text from a checkpoint with the MLA latent KV cache, or score texts.",
        .example = "  ds-generate -m ckpt/sft --prompt 'Once upon a time' --max-new 64",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
