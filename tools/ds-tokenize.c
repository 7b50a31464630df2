/* ds-tokenize — Train byte-level BPE tokenizers (Hugging Face tokenizer.json), encode text to zstd token
 * shards or id lines, decode them back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/log.h"
#include "tok/corpus.h"
#include "tok/tokdoc.h"
#include "tok/tokenizer.h"
#include "tok/train.h"

static int threads = 0, quiet = 0, verbose = 0;

static void apply_common(void) {
    ds_tok_set_threads(threads);
    if (quiet) ds_log_set_level(DS_LOG_QUIET);
    if (verbose) ds_log_set_level(DS_LOG_VERBOSE);
}

static void summary(const char *what, const ds_corpus_stats *st) {
    double mb = (double)st->bytes / 1e6;
    ds_info("%s: %llu documents, %.2f MB, %llu tokens, %.3f bytes/token, %.1f MB/s (%.2f s, %d threads)", what,
            (unsigned long long)st->docs, mb, (unsigned long long)st->tokens,
            st->tokens ? (double)st->bytes / (double)st->tokens : 0.0, st->seconds > 0 ? mb / st->seconds : 0.0,
            st->seconds, ds_tok_threads());
}

/* ---- train -------------------------------------------------------------------------------------- */

static int cmd_train(int argc, char **argv) {
    int64_t vocab = 0, min_freq = 0;
    const char *out = NULL;
    int no_defaults = 0;
    ds_strlist specials = {0};
    const ds_opt opts[] = {
        {"vocab-size", 0, DS_OPT_I64, &vocab, "N", "vocabulary size, special tokens and the 256 bytes included (required)", 0, 0, 0},
        {"special", 0, DS_OPT_STRLIST, &specials, "TOKENS", "extra special tokens, comma-separated, after DeepSeek's", 0, 0, 0},
        {"no-default-specials", 0, DS_OPT_FLAG, &no_defaults, NULL, "only the --special tokens, not DeepSeek's (BOS, EOS, pad, FIM, chat roles)", 0, 0, 0},
        {"min-frequency", 0, DS_OPT_I64, &min_freq, "N", "stop when the most frequent pair occurs fewer times", 0, 0, 0},
        {"out", 'o', DS_OPT_STR, &out, "FILE", "tokenizer.json to write ('-' = stdout; required)", 0, 0, 0},
        {"threads", 0, DS_OPT_INT, &threads, "N", "threads for counting (0 = all cores)", 0, 0, 0},
        {"quiet", 'q', DS_OPT_FLAG, &quiet, NULL, "no progress or summary", 0, 0, 0},
        {"verbose", 'v', DS_OPT_FLAG, &verbose, NULL, "more detail on stderr", 0, 0, 0},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-tokenize train",
        .usage = "--vocab-size N [--special TOKENS] -o tokenizer.json [FILE...|-]",
        .summary = "Learn byte-level BPE merges (DeepSeek-V3 pre-tokenizer) from text files or stdin, each file one "
                   "document, and write a Hugging Face tokenizer.json. Ids: special tokens first (BOS 0, EOS 1, ...), "
                   "then the 256 bytes, then one token per merge.",
        .example = "  ds-tokenize train --vocab-size 8192 --special '<tool>,</tool>' -o tok.json corpus/*.txt",
        .opts = opts,
    };
    int first, rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (!out) return ds_usage_error("train: -o tokenizer.json is required");
    if (vocab <= 0 || vocab > (1 << 24)) return ds_usage_error("train: --vocab-size N is required (1..16777216)");
    apply_common();
    /* DeepSeek's specials, then the user's (comma-separated, repeatable) */
    ds_strlist all = {0}, copies = {0};
    for (int i = 0; !no_defaults && i < ds_tok_n_default_specials; i++) ds_strlist_push(&all, ds_tok_default_specials[i]);
    for (int i = 0; i < specials.n; i++) {
        char *s = strdup(specials.v[i]);
        ds_strlist_push(&copies, s);
        for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) ds_strlist_push(&all, tok);
    }
    if (vocab < all.n + 256) {
        int nspecial = all.n;
        ds_strlist_free(&all);
        for (int i = 0; i < copies.n; i++) free((char *)copies.v[i]);
        ds_strlist_free(&copies);
        ds_strlist_free(&specials);
        return ds_usage_error("train: --vocab-size %lld is below %d specials + 256 bytes", (long long)vocab, nspecial);
    }
    ds_tok_trainer *tr;
    ds_tokenizer *t = NULL;
    ds_corpus_opts co = {.doc_mode = DS_DOC_FILE, .progress = ds_log_level() >= DS_LOG_NORMAL};
    ds_corpus_stats st;
    rc = ds_tok_trainer_new(&tr);
    if (!rc) rc = ds_corpus_read(&co, (const char *const *)argv + first, argc - first, (size_t)16 << 20, ds_tok_train_cut,
                                 ds_tok_trainer_feed_many, tr, &st);
    double t1 = ds_now();
    if (!rc) {
        ds_verbose("counted %llu pre-tokens, %llu unique, in %.2f s", (unsigned long long)ds_tok_trainer_pretokens(tr),
                   (unsigned long long)ds_tok_trainer_words(tr), st.seconds);
        ds_tok_train_opts to = {.vocab_size = (uint32_t)vocab, .specials = all.v, .n_specials = all.n,
                                .min_frequency = (uint64_t)min_freq, .progress = co.progress};
        rc = ds_tok_trainer_finish(tr, &to, &t);
    }
    if (!rc) rc = ds_tok_save(t, out);
    if (!rc)
        ds_info("train: %llu documents, %.2f MB, %llu unique pre-tokens, %zu merges, vocabulary %u (count %.2f s, merges %.2f s)",
                (unsigned long long)st.docs, st.bytes / 1e6, (unsigned long long)ds_tok_trainer_words(tr), ds_tok_n_merges(t),
                ds_tok_vocab_size(t), st.seconds, ds_now() - t1);
    ds_tok_trainer_free(tr);
    ds_tok_free(t);
    ds_strlist_free(&all);
    for (int i = 0; i < copies.n; i++) free((char *)copies.v[i]);
    ds_strlist_free(&copies);
    ds_strlist_free(&specials);
    return ds_tool_report(rc);
}

/* ---- encode ------------------------------------------------------------------------------------- */

/* The tokenizer goes into a directory of shards as dir/tokenizer.json, byte for byte: ds-pretrain
 * embeds the tokenizer it finds beside its shards, so the checkpoint can turn ids back into text. */
static int copy_beside(const char *src, const char *dir, const char *name) {
    char p[4200], *data;
    size_t len;
    DS_TRY(ds_path_join(p, sizeof p, dir, name));
    DS_TRY(ds_read_file(src, &data, &len, 1u << 30));
    int rc = ds_atomic_write_file(p, data, len);
    free(data);
    return rc;
}

static int cmd_encode(int argc, char **argv) {
    const char *tok = NULL, *out = NULL, *jsonl = NULL;
    int ids = 0, lines = 0, bos = 0, eos = 0, allow_special = 0, force = 0;
    int64_t shard_tokens = 100000000;
    const ds_opt opts[] = {
        {"tokenizer", 't', DS_OPT_STR, &tok, "FILE", "tokenizer.json (required)", 0, 0, 0},
        {"out", 'o', DS_OPT_STR, &out, "OUT", "token shards: a .tok file, '-' (stdout), or a directory (DIR/ or existing) of numbered shards", 0, 0, 0},
        {"ids", 0, DS_OPT_FLAG, &ids, NULL, "print each document's ids as one line of integers on stdout", 0, 0, 0},
        {"lines", 0, DS_OPT_FLAG, &lines, NULL, "each line is a document (without its newline)", 0, 0, 0},
        {"jsonl", 0, DS_OPT_STR, &jsonl, "KEY", "each JSON line is a document: its string field KEY", 0, 0, 0},
        {"bos", 0, DS_OPT_FLAG, &bos, NULL, "begin every document with BOS", 0, 0, 0},
        {"eos", 0, DS_OPT_FLAG, &eos, NULL, "end every document with EOS (shards always separate documents by EOS)", 0, 0, 0},
        {"allow-special", 0, DS_OPT_FLAG, &allow_special, NULL, "recognise special tokens written in the text", 0, 0, 0},
        {"shard-tokens", 0, DS_OPT_I64, &shard_tokens, "N", "tokens per shard when OUT is a directory", 0, 1, 1e15},
        {"threads", 0, DS_OPT_INT, &threads, "N", "encoding threads (0 = all cores)", 0, 0, 0},
        {"force", 0, DS_OPT_FLAG, &force, NULL, "replace existing shards at -o; write binary shards to a terminal", 0, 0, 0},
        {"quiet", 'q', DS_OPT_FLAG, &quiet, NULL, "no progress or summary", 0, 0, 0},
        {"verbose", 'v', DS_OPT_FLAG, &verbose, NULL, "more detail on stderr", 0, 0, 0},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-tokenize encode",
        .usage = "-t tokenizer.json [-o OUT] [--ids] [--lines | --jsonl KEY] [--bos] [--eos] [FILE...|-]",
        .summary = "Encode text with any byte-level BPE tokenizer.json, on all cores, output in input order. A document "
                   "is a whole file, a line (--lines) or a JSON field (--jsonl KEY). A directory OUT also receives "
                   "the tokenizer as OUT/tokenizer.json (where ds-pretrain finds it). Special tokens in the text are "
                   "plain text unless --allow-special. Prints a summary (documents, bytes, tokens, bytes/token, MB/s).",
        .example = "  ds-tokenize encode -t tok.json -o shards/ corpus/*.txt   # shards/tokenizer.json too\n"
                   "  ds-pretrain --config share/configs/demo.json --data 'shards/*.tok' -o ckpt/base --steps 100\n"
                   "  echo 'Hello world' | ds-tokenize encode -t tok.json --ids --lines",
        .opts = opts,
    };
    int first, rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (!tok) return ds_usage_error("encode: -t tokenizer.json is required");
    if (lines && jsonl) return ds_usage_error("encode: --lines and --jsonl are exclusive");
    if (!out && !ids) return ds_usage_error("encode: nothing to write: give -o OUT or --ids");
    if (out && ids && ds_is_stdio(out)) return ds_usage_error("encode: --ids and %s - both want stdout", ds_cli_opt(&out, "-o"));
    apply_common();
    ds_tokenizer *t;
    if ((rc = ds_tok_load(&t, tok))) return ds_tool_report(rc);
    ds_tokdoc_out w;
    ds_corpus_opts co = {.doc_mode = jsonl ? DS_DOC_JSONL : lines ? DS_DOC_LINES : DS_DOC_FILE, .jsonl_key = jsonl,
                         .flags = allow_special ? DS_TOK_SPECIAL : 0, .bos_id = -1, .eos_id = -1,
                         .progress = ds_log_level() >= DS_LOG_NORMAL};
    int64_t eos_id = -1;
    rc = ds_tokdoc_special_ids(t, bos ? &co.bos_id : NULL, &eos_id);
    if (!rc && eos) co.eos_id = eos_id;
    if (!rc) rc = ds_tokdoc_out_open(&w, t, ids ? "-" : NULL, out, eos_id, (uint64_t)shard_tokens, force);
    ds_corpus_stats st;
    if (!rc) rc = ds_corpus_encode(t, &co, (const char *const *)argv + first, argc - first, ds_tokdoc_out_doc, &w, &st);
    int shard_dir = !rc && w.shard_dir;
    if (!rc) rc = ds_tokdoc_out_close(&w);
    else ds_tokdoc_out_abort(&w);
    if (!rc && shard_dir) rc = copy_beside(tok, out, "tokenizer.json");
    if (!rc) summary("encode", &st);
    ds_tok_free(t);
    return ds_tool_report(rc);
}

/* ---- decode ------------------------------------------------------------------------------------- */

static int cmd_decode(int argc, char **argv) {
    const char *tok = NULL, *out = "-";
    int lines = 0;
    const ds_opt opts[] = {
        {"tokenizer", 't', DS_OPT_STR, &tok, "FILE", "tokenizer.json (required)", 0, 0, 0},
        {"out", 'o', DS_OPT_STR, &out, "FILE", "where the text goes", 0, 0, 0},
        {"lines", 0, DS_OPT_FLAG, &lines, NULL, "end every document with a newline (inverse of encode --lines)", 0, 0, 0},
        {"quiet", 'q', DS_OPT_FLAG, &quiet, NULL, "no summary", 0, 0, 0},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-tokenize decode",
        .usage = "-t tokenizer.json [SHARD...|-]",
        .summary = "Turn token shards, or lines of space-separated ids, back into the exact bytes. Documents are "
                   "separated by a newline (--lines: each ends with one); a shard's EOS separators are not printed.",
        .example = "  ds-tokenize encode -t tok.json --ids f.txt | ds-tokenize decode -t tok.json | cmp - f.txt",
        .opts = opts,
    };
    int first, rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (!tok) return ds_usage_error("decode: -t tokenizer.json is required");
    apply_common();
    ds_tokenizer *t;
    if ((rc = ds_tok_load(&t, tok))) return ds_tool_report(rc);
    ds_corpus_stats st;
    rc = ds_tokdoc_decode(t, (const char *const *)argv + first, argc - first, out, lines, &st);
    if (!rc) ds_verbose("decode: %llu documents, %llu tokens, %.2f MB", (unsigned long long)st.docs,
                        (unsigned long long)st.tokens, st.bytes / 1e6);
    ds_tok_free(t);
    return ds_tool_report(rc);
}

int main(int argc, char **argv) {
    ds_tool_init("ds-tokenize");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-tokenize",
        .usage = "train|encode|decode [OPTIONS] [FILE...|-]",
        .summary = "Train byte-level BPE tokenizers (Hugging Face tokenizer.json), encode text to zstd token shards or "
                   "id lines, decode them back. 'ds-tokenize COMMAND --help' describes each command.",
        .example = "  ds-tokenize train --vocab-size 4096 -o tok.json corpus.txt && ds-tokenize encode -t tok.json -o shards/ corpus.txt",
        .opts = opts,
    };
    if (argc >= 2 && !strcmp(argv[1], "train")) return cmd_train(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "encode")) return cmd_encode(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "decode")) return cmd_decode(argc - 1, argv + 1);
    int first, rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (first >= argc) return ds_usage_error("missing command: train, encode or decode");
    return ds_usage_error("unknown command '%s' (train, encode or decode)", argv[first]);
}
