/* ds-tokenize — Train byte-level BPE tokenizers (Hugging Face tokenizer.json), encode text to zstd token shards, decode them back. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-tokenize");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-tokenize",
        .usage = "[OPTIONS]",
        .summary = "Train byte-level BPE tokenizers (Hugging Face tokenizer.json), encode text to zstd token shards, decode them back.",
        .example = "  ds-tokenize train --vocab-size 4096 -o tok.json corpus.txt && ds-tokenize encode -t tok.json -o shards/ corpus.txt",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
