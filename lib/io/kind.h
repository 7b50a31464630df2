/* kind.h — what a file is, told from its first bytes, so a tool given the wrong kind of input says
 * "a token shard, not a checkpoint" instead of a parser's complaint about the bytes.
 *
 * Owns: recognising, without parsing anything whole, a checkpoint directory (config.json inside), a
 * directory of token shards (*.tok), a safetensors file (8-byte header length, then '{'), a
 * safetensors index (weight_map), a token shard (magic DSTOKENS), a tokenizer.json (added_tokens, or a
 * "model" holding "vocab"), a model config.json (model_type, architectures or hidden_size), JSON lines,
 * other JSON, text (valid UTF-8 without NULs) and other binary data. JSON is judged from its first
 * 256 KiB by key names, which is enough to name a file in a message and is never used to accept one:
 * the readers decide what is valid, and call this only to explain a failure or to refuse early.
 */
#ifndef DS_IO_KIND_H
#define DS_IO_KIND_H

typedef enum {
    DS_KIND_UNKNOWN = 0, /* unreadable (missing, no permission): the reader's own error says why */
    DS_KIND_CKPT_DIR,
    DS_KIND_SHARD_DIR,
    DS_KIND_DIR,
    DS_KIND_EMPTY,
    DS_KIND_SAFETENSORS,
    DS_KIND_ST_INDEX,
    DS_KIND_SHARD,
    DS_KIND_TOKENIZER,
    DS_KIND_CONFIG,
    DS_KIND_JSONL,
    DS_KIND_JSON,
    DS_KIND_TEXT,
    DS_KIND_BINARY,
} ds_kind;

ds_kind ds_kind_of(const char *path); /* "-" is not looked at: DS_KIND_UNKNOWN */
/* "a token shard", "a tokenizer.json", "a text file", ... */
const char *ds_kind_name(ds_kind k);

/* After a reader failed (rc) on path: if path is recognisably of a kind the reader does not take,
 * replace its error with "<what>: <kind>, not <want>: <path>" ("checkpoint: a token shard, not a
 * checkpoint: x.tok"), with a hint where one helps; else keep the reader's. Returns rc. `takes` lists
 * the kinds the reader accepts or could half-accept (their errors are the reader's to give), ending
 * with DS_KIND_UNKNOWN. */
int ds_kind_explain(int rc, const char *path, const char *what, const char *want, const ds_kind *takes);

#endif
