#include "train/shards.h"

#include "core/err.h"
#include "core/file.h"
#include "io/kind.h"
#include "io/shard.h"

#include <glob.h>
#include <stdlib.h>
#include <string.h>

static int add_path(char ***v, int *n, int *cap, const char *p) {
    for (int i = 0; i < *n; i++)
        if (!strcmp((*v)[i], p)) return 0;
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 16;
        char **nv = realloc(*v, (size_t)c * sizeof *nv);
        if (!nv) return ds_fail(DS_ERR, "out of memory: shard list");
        *v = nv, *cap = c;
    }
    if (!((*v)[*n] = strdup(p))) return ds_fail(DS_ERR, "out of memory: shard list");
    (*n)++;
    return 0;
}

static int expand(const char *const *patterns, int np, char ***paths, int *n) {
    int cap = 0, rc = 0;
    *paths = NULL, *n = 0;
    for (int i = 0; !rc && i < np; i++) {
        const char *pat = patterns[i];
        if (ds_is_stdio(pat)) {
            if (np > 1) return ds_fail(DS_ERR, "--data -: stdin cannot be mixed with other shards");
            return add_path(paths, n, &cap, pat);
        }
        char dirpat[4200];
        if (ds_path_is_dir(pat)) {
            snprintf(dirpat, sizeof dirpat, "%s/*.tok", pat);
            pat = dirpat;
        }
        glob_t g;
        int gr = glob(pat, 0, NULL, &g);
        if (gr == GLOB_NOMATCH) {
            globfree(&g);
            ds_fail(DS_ERR, "no token shards match: %s", patterns[i]);
            ds_hint("ds-tokenize encode -t tokenizer.json -o shards/ corpus.txt writes shards");
            static const ds_kind takes[] = {DS_KIND_SHARD_DIR, DS_KIND_DIR, DS_KIND_UNKNOWN};
            return ds_kind_explain(DS_ERR, patterns[i], "token shards", "token shards", takes);
        }
        if (gr) {
            globfree(&g);
            return ds_fail(DS_ERR, "cannot expand: %s", patterns[i]);
        }
        for (size_t k = 0; !rc && k < g.gl_pathc; k++)
            if (!ds_path_is_dir(g.gl_pathv[k])) rc = add_path(paths, n, &cap, g.gl_pathv[k]);
        globfree(&g);
    }
    if (!rc && *n == 0) rc = ds_fail(DS_ERR, "no token shards in: %s", patterns[0]);
    return rc;
}

/* Append one shard's tokens to *buf (growing it). */
static int read_shard(ds_shard *s, const char *path, int32_t **buf, uint64_t *len, uint64_t *cap) {
    const ds_shard_info_t *si = ds_shard_info(s);
    enum { CHUNK = 1 << 20 };
    uint32_t *tmp = malloc(CHUNK * sizeof *tmp);
    if (!tmp) return ds_fail(DS_ERR, "out of memory: reading %s", path);
    int rc = 0;
    for (uint64_t off = 0;;) {
        size_t got = 0;
        if (si->streamed)
            rc = ds_shard_next(s, tmp, CHUNK, &got);
        else {
            got = si->n_tokens - off < CHUNK ? (size_t)(si->n_tokens - off) : CHUNK;
            if (got) rc = ds_shard_read(s, off, got, tmp);
        }
        if (rc || got == 0) break;
        if (*len + got > *cap) {
            uint64_t c = *cap ? *cap : CHUNK;
            while (c < *len + got) c *= 2;
            int32_t *nb = realloc(*buf, c * sizeof *nb);
            if (!nb) {
                rc = ds_fail(DS_ERR, "out of memory: %llu tokens of shards", (unsigned long long)(*len + got));
                break;
            }
            *buf = nb, *cap = c;
        }
        for (size_t i = 0; i < got; i++) (*buf)[*len + i] = (int32_t)tmp[i];
        *len += got, off += got;
    }
    free(tmp);
    return rc;
}

int ds_shards_load(ds_token_reader *rd, ds_shards_info *info, const char *const *patterns, int np, int model_vocab) {
    memset(info, 0, sizeof *info);
    memset(rd, 0, sizeof *rd);
    char **paths;
    int n;
    DS_TRY(expand(patterns, np, &paths, &n));
    int32_t *buf = NULL;
    uint64_t len = 0, cap = 0;
    int rc = 0;
    for (int i = 0; !rc && i < n; i++) {
        ds_shard *s;
        if ((rc = ds_shard_open(&s, paths[i]))) break;
        const ds_shard_info_t *si = ds_shard_info(s);
        if (i == 0) {
            info->vocab_size = si->vocab_size, info->eos_id = si->eos_id;
            snprintf(info->first, sizeof info->first, "%s", paths[i]);
            if (model_vocab > 0 && si->vocab_size > (uint32_t)model_vocab) {
                ds_fail(DS_ERR, "vocabulary mismatch: the shards have %u token ids, the model's vocab_size is %d: %s", si->vocab_size,
                        model_vocab, paths[i]);
                ds_hint("train with a config whose vocab_size covers the tokenizer that wrote the shards");
                rc = DS_ERR;
            }
        } else if (si->vocab_size != info->vocab_size || si->eos_id != info->eos_id) {
            rc = ds_fail(DS_ERR, "shards disagree: %s has vocabulary %u and EOS %u, %s has %u and %u", info->first, info->vocab_size,
                         info->eos_id, paths[i], si->vocab_size, si->eos_id);
        }
        if (!rc) rc = read_shard(s, paths[i], &buf, &len, &cap);
        if (!rc) info->n_docs += ds_shard_info(s)->n_docs;
        ds_shard_close(s);
        info->n_shards++;
    }
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    if (!rc) rc = ds_token_reader_memory(rd, buf, (int64_t)len, 1, info->first);
    if (rc) {
        free(buf);
        return rc;
    }
    info->n_tokens = len;
    return 0;
}
