/* mla_decode.c — CPU reference of MLA decode attention; see mla_decode.h.
 *
 * Work is split into tasks of (sequence, query token, group of heads). A task walks the visible cache
 * in tiles of TILE tokens with an online softmax, so no score buffer grows with the context; each
 * cached row is converted to fp32 once per task and used by every head of the group: the scores and the
 * weighted sum of a tile are two few-row GEMMs (ops/gemm_small.h) over the group's heads.
 */
#include "ops/mla_decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "ops/gemm_small.h"

#define TILE 64
#define TILE_CONVERTED 16 /* rows per tile when a bf16 cache is converted to fp32 on the stack */
#define HEAD_GROUP 8
#define ROW_MAX 1024 /* kv_rank + rope_dim bound for the on-stack buffers (V3: 576) */

static int type_ok(ds_dtype t) { return t == DS_F32 || t == DS_BF16; }

int ds_mla_decode_check(const ds_mla_decode_args *a) {
    if (!a) return ds_fail(DS_EUSAGE, "mla decode: NULL arguments");
    if (a->batch < 1 || a->q_len < 1 || a->heads < 1 || a->kv_rank < 1 || a->rope_dim < 0)
        return ds_fail(DS_EUSAGE, "mla decode: bad shape batch=%d q_len=%d heads=%d kv_rank=%d rope_dim=%d",
                       a->batch, a->q_len, a->heads, a->kv_rank, a->rope_dim);
    if (a->kv_rank + a->rope_dim > ROW_MAX)
        return ds_fail(DS_EUSAGE, "mla decode: row of %d elements exceeds %d", a->kv_rank + a->rope_dim, ROW_MAX);
    if (!a->q || !a->kv || !a->kv_len || !a->out)
        return ds_fail(DS_EUSAGE, "mla decode: NULL q, kv, kv_len or out");
    if (!type_ok(a->q_type) || !type_ok(a->kv_type) || !type_ok(a->out_type))
        return ds_fail(DS_EUSAGE, "mla decode: types must be F32 or BF16 (q %s, kv %s, out %s)",
                       ds_dtype_name(a->q_type), ds_dtype_name(a->kv_type), ds_dtype_name(a->out_type));
    if (!isfinite(a->scale)) return ds_fail(DS_EUSAGE, "mla decode: scale is not finite");
    if (a->page_size < 1) return ds_fail(DS_EUSAGE, "mla decode: page_size %d", a->page_size);
    if (a->block_table) {
        if (a->max_pages < 1 || a->n_pages < 1)
            return ds_fail(DS_EUSAGE, "mla decode: block table with max_pages=%d n_pages=%d", a->max_pages,
                           a->n_pages);
    } else if (a->n_pages < a->batch) {
        return ds_fail(DS_EUSAGE, "mla decode: %d pages for %d sequences without a block table", a->n_pages,
                       a->batch);
    }
    return DS_OK;
}

static const void *row_ptr(const ds_mla_decode_args *a, int b, int t) {
    int page = a->block_table ? a->block_table[(size_t)b * a->max_pages + t / a->page_size] : b;
    size_t row = (size_t)page * a->page_size + t % a->page_size;
    return (const char *)a->kv + row * (size_t)(a->kv_rank + a->rope_dim) * ds_dtype_size(a->kv_type);
}

/* Host-side data checks: every visible row must lie in the cache. */
static int check_data(const ds_mla_decode_args *a) {
    int cap = a->block_table ? a->page_size * a->max_pages : a->page_size;
    if (a->block_table && (long long)a->page_size * a->max_pages > 0x7fffffff)
        return ds_fail(DS_EUSAGE, "mla decode: page_size * max_pages overflows");
    for (int b = 0; b < a->batch; b++) {
        int len = a->kv_len[b];
        if (len != 0 && (len < a->q_len || len > cap))
            return ds_fail(DS_ERR, "mla decode: kv_len[%d] = %d outside [%d, %d]", b, len, a->q_len, cap);
        if (!a->block_table) continue;
        for (int p = 0; p < (len + a->page_size - 1) / a->page_size; p++) {
            int id = a->block_table[(size_t)b * a->max_pages + p];
            if (id < 0 || id >= a->n_pages)
                return ds_fail(DS_ERR, "mla decode: block_table[%d][%d] = %d outside [0, %d)", b, p, id, a->n_pages);
        }
    }
    return DS_OK;
}

static void to_f32(float *dst, const void *src, ds_dtype t, int n) {
    if (t == DS_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else {
        const uint16_t *s = src;
        for (int i = 0; i < n; i++) dst[i] = ds_bf16_to_f32(s[i]);
    }
}

/* One task: the heads [h0, h0+nh) of query token j of sequence b. Per tile of cached rows (inside one
 * page, so the rows are equally spaced), the scores of all the task's heads against all the tile's rows
 * are one small GEMM and the update of the heads' accumulators another (ops/gemm_small.h: each cached
 * row is read once for every head). */
static void decode_task(const ds_mla_decode_args *a, int b, int j, int h0, int nh) {
    const int R = a->kv_rank, D = a->kv_rank + a->rope_dim;
    const size_t qsz = ds_dtype_size(a->q_type), osz = ds_dtype_size(a->out_type);
    float qf[HEAD_GROUP][ROW_MAX];
    float acc[HEAD_GROUP][ROW_MAX];
    float s[HEAD_GROUP][TILE];
    float m[HEAD_GROUP], l[HEAD_GROUP];
    float tile_buf[TILE_CONVERTED][ROW_MAX];
    int len = a->kv_len[b];
    int visible = len == 0 ? 0 : len - a->q_len + 1 + j;
    for (int h = 0; h < nh; h++) {
        size_t qi = (((size_t)b * a->q_len + j) * a->heads + h0 + h) * D;
        to_f32(qf[h], (const char *)a->q + qi * qsz, a->q_type, D);
        memset(acc[h], 0, (size_t)R * sizeof(float));
        m[h] = -INFINITY;
        l[h] = 0.f;
    }
    for (int t0 = 0, nt; t0 < visible; t0 += nt) {
        nt = visible - t0 < TILE ? visible - t0 : TILE;
        if (nt > a->page_size - t0 % a->page_size) nt = a->page_size - t0 % a->page_size;
        const float *rows;
        int ld;
        if (a->kv_type == DS_F32) {
            rows = row_ptr(a, b, t0);
            ld = D;
        } else {
            if (nt > TILE_CONVERTED) nt = TILE_CONVERTED;
            for (int i = 0; i < nt; i++) to_f32(tile_buf[i], row_ptr(a, b, t0 + i), a->kv_type, D);
            rows = tile_buf[0];
            ld = ROW_MAX;
        }
        ds_gemm_small(1, nh, nt, D, a->scale, qf[0], ROW_MAX, rows, ld, 0.0f, s[0], TILE);
        for (int h = 0; h < nh; h++) {
            float smax = -INFINITY;
            for (int i = 0; i < nt; i++)
                if (s[h][i] > smax) smax = s[h][i];
            float mn = m[h] > smax ? m[h] : smax;
            float corr = m[h] == -INFINITY ? 0.f : expf(m[h] - mn);
            float psum = 0.f;
            for (int i = 0; i < nt; i++) {
                s[h][i] = expf(s[h][i] - mn);
                psum += s[h][i];
            }
            if (corr != 1.0f)
                for (int d = 0; d < R; d++) acc[h][d] *= corr;
            l[h] = l[h] * corr + psum;
            m[h] = mn;
        }
        ds_gemm_small(0, nh, R, nt, 1.0f, s[0], TILE, rows, ld, 1.0f, acc[0], ROW_MAX);
    }
    for (int h = 0; h < nh; h++) {
        size_t oi = (((size_t)b * a->q_len + j) * a->heads + h0 + h);
        float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
        if (a->out_type == DS_F32) {
            float *o = (float *)a->out + oi * R;
            for (int d = 0; d < R; d++) o[d] = acc[h][d] * inv;
        } else {
            uint16_t *o = (uint16_t *)((char *)a->out + oi * R * osz);
            for (int d = 0; d < R; d++) o[d] = ds_f32_to_bf16(acc[h][d] * inv);
        }
        if (a->lse) a->lse[oi] = l[h] > 0.f ? m[h] + logf(l[h]) : -INFINITY;
    }
}

int ds_mla_decode(const ds_mla_decode_args *a) {
    DS_TRY(ds_mla_decode_check(a));
    DS_TRY(check_data(a));
    int groups = (a->heads + HEAD_GROUP - 1) / HEAD_GROUP;
    long long tasks = (long long)a->batch * a->q_len * groups;
#pragma omp parallel for schedule(dynamic, 1)
    for (long long task = 0; task < tasks; task++) {
        int g = (int)(task % groups);
        int j = (int)(task / groups % a->q_len);
        int b = (int)(task / groups / a->q_len);
        int h0 = g * HEAD_GROUP;
        int nh = a->heads - h0 < HEAD_GROUP ? a->heads - h0 : HEAD_GROUP;
        decode_task(a, b, j, h0, nh);
    }
    return DS_OK;
}
