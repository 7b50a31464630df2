/* kind.c — see kind.h. */
#include "io/kind.h"

#include "core/err.h"
#include "core/file.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNIFF_BYTES (256u << 10)

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static ds_kind dir_kind(const char *dir) {
    char p[4200];
    if (!ds_path_join(p, sizeof p, dir, "config.json") && ds_path_exists(p)) return DS_KIND_CKPT_DIR;
    DIR *d = opendir(dir);
    if (!d) return DS_KIND_DIR;
    struct dirent *e;
    int shards = 0;
    while (!shards && (e = readdir(d))) shards = ends_with(e->d_name, ".tok");
    closedir(d);
    return shards ? DS_KIND_SHARD_DIR : DS_KIND_DIR;
}

/* Valid UTF-8 without NULs (a sequence cut at the end of the buffer counts as valid). */
static int is_text(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!c || !len) return 0;
        for (size_t k = 1; k < len; k++)
            if (i + k < n && (p[i + k] & 0xc0) != 0x80) return 0;
        i += len;
    }
    return 1;
}

static int has(const char *buf, const char *key) { return strstr(buf, key) != NULL; }

static ds_kind json_kind(const char *buf) {
    if (has(buf, "\"weight_map\"")) return DS_KIND_ST_INDEX;
    if (has(buf, "\"added_tokens\"") || (has(buf, "\"model\"") && has(buf, "\"vocab\""))) return DS_KIND_TOKENIZER;
    if (has(buf, "\"model_type\"") || has(buf, "\"architectures\"") || has(buf, "\"hidden_size\"")) return DS_KIND_CONFIG;
    /* one object per line: a line that closes an object followed by one that opens another */
    const char *nl = strstr(buf, "}\n");
    while (nl && nl[2] && (nl[2] == '\n' || nl[2] == '\r')) nl++;
    if (nl && nl[2] == '{') return DS_KIND_JSONL;
    return DS_KIND_JSON;
}

ds_kind ds_kind_of(const char *path) {
    if (!path || ds_is_stdio(path) || !ds_path_exists(path)) return DS_KIND_UNKNOWN;
    if (ds_path_is_dir(path)) return dir_kind(path);
    FILE *f = fopen(path, "rb");
    if (!f) return DS_KIND_UNKNOWN;
    char *buf = malloc(SNIFF_BYTES + 1);
    size_t n = buf ? fread(buf, 1, SNIFF_BYTES, f) : 0;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    if (!buf) return DS_KIND_UNKNOWN;
    buf[n] = 0;
    ds_kind k;
    const unsigned char *u = (const unsigned char *)buf;
    uint64_t hlen = 0;
    for (int i = 0; i < 8 && (size_t)i < n; i++) hlen |= (uint64_t)u[i] << (8 * i);
    size_t lead = strspn(buf, " \t\r\n");
    if (n == 0) k = DS_KIND_EMPTY;
    else if (n >= 8 && !memcmp(buf, "DSTOKENS", 8)) k = DS_KIND_SHARD;
    else if (n > 8 && hlen > 0 && size >= 0 && hlen <= (uint64_t)size - 8 && buf[8] == '{') k = DS_KIND_SAFETENSORS;
    else if (buf[lead] == '{') k = json_kind(buf); /* bad bytes inside are the JSON reader's to report */
    else if (!is_text(u, n)) k = DS_KIND_BINARY;
    else k = DS_KIND_TEXT;
    free(buf);
    return k;
}

const char *ds_kind_name(ds_kind k) {
    switch (k) {
    case DS_KIND_CKPT_DIR: return "a checkpoint directory";
    case DS_KIND_SHARD_DIR: return "a directory of token shards";
    case DS_KIND_DIR: return "a directory";
    case DS_KIND_EMPTY: return "an empty file";
    case DS_KIND_SAFETENSORS: return "a safetensors file";
    case DS_KIND_ST_INDEX: return "a safetensors index";
    case DS_KIND_SHARD: return "a token shard";
    case DS_KIND_TOKENIZER: return "a tokenizer.json";
    case DS_KIND_CONFIG: return "a model config.json";
    case DS_KIND_JSONL: return "a JSON lines file";
    case DS_KIND_JSON: return "a JSON file";
    case DS_KIND_TEXT: return "a text file";
    case DS_KIND_BINARY: return "a binary file";
    default: return "an unknown file";
    }
}

int ds_kind_explain(int rc, const char *path, const char *what, const char *want, const ds_kind *takes) {
    if (!rc) return rc;
    ds_kind k = ds_kind_of(path);
    if (k == DS_KIND_UNKNOWN) return rc;
    for (const ds_kind *e = takes; *e != DS_KIND_UNKNOWN; e++)
        if (*e == k) return rc;
    ds_fail(rc, "%s: %s, not %s: %s", what, ds_kind_name(k), want, path);
    if (k == DS_KIND_CKPT_DIR && (!strcmp(what, "tokenizer.json") || !strcmp(what, "config")))
        ds_hint("name the file inside the checkpoint: %s/%s", path, what[0] == 't' ? "tokenizer.json" : "config.json");
    else if (!strcmp(what, "token shard") && (k == DS_KIND_TEXT || k == DS_KIND_JSONL || k == DS_KIND_JSON))
        ds_hint("token shards are made from text by ds-tokenize encode");
    return rc;
}
