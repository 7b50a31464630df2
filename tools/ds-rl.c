/* ds-rl — GRPO reinforcement learning with rule-based rewards. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-rl");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-rl",
        .usage = "[OPTIONS]",
        .summary = "GRPO reinforcement learning with rule-based rewards.",
        .example = "  ds-rl -m ckpt/sft --prompts tasks.jsonl -o ckpt/rl --group 8 --steps 50 --reward answer",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
