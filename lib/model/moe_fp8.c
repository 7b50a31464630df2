/* FP8 storage and the FP8 wire format inside a MoE layer (moe_fp8.h). */
#include "model/moe_fp8.h"

#include <string.h>

#include "fp8/linear.h"
#include "fp8/quant.h"

#define TAKE(type, count) DS_TAKE(b, type, count)

static int64_t tiles(int cols) { return ds_fp8_nblocks(cols, DS_FP8_BLOCK); }

static void take_act(ds_bump *b, ds_act_fp8 *a, size_t rows, int cols) {
    a->q = TAKE(uint8_t, rows * (size_t)cols);
    a->s = TAKE(float, rows * (size_t)tiles(cols));
}

void ds_moe_fp8_take(ds_bump *b, const ds_model *m, ds_tape *t, int n) {
    const ds_dims *d = &m->dims;
    const ds_scratch *s = &m->scr;
    size_t rK = (size_t)n * d->K * (size_t)m->ep_n; /* expert rows: a token from each EP rank */
    take_act(b, &t->ge8, rK, d->Ie);
    take_act(b, &t->ue8, rK, d->Ie);
    t->ge = s->ge, t->ue = s->ue;
    if (d->Is > 0) {
        take_act(b, &t->gs8, (size_t)n, d->Is);
        take_act(b, &t->us8, (size_t)n, d->Is);
        t->gs = s->gs, t->us = s->us;
    }
}

void ds_moe_fp8_take_scratch(ds_bump *b, ds_model *m, int n) {
    const ds_dims *d = &m->dims;
    ds_scratch *s = &m->scr;
    if (m->n_moe == 0) return;
    if (m->opts.moe_cache_fp8) {
        size_t rK = (size_t)n * d->K * (size_t)m->ep_n;
        s->ge = TAKE(float, rK * d->Ie);
        s->ue = TAKE(float, rK * d->Ie);
        s->gs = d->Is > 0 ? TAKE(float, (size_t)n * d->Is) : NULL;
        s->us = d->Is > 0 ? TAKE(float, (size_t)n * d->Is) : NULL;
    }
    if (m->opts.moe_dispatch_fp8 && m->ep_n <= 1) {
        s->xq = TAKE(float, (size_t)n * d->D);
        s->dyq = TAKE(float, (size_t)n * d->D);
        s->wire = TAKE(uint8_t, (size_t)n * ds_moe_fp8_row_bytes(d->D));
    }
}

void ds_moe_fp8_put(const ds_model *m, const ds_act_fp8 *a, const float *x, int rows, int cols) {
    if (!m->opts.train || !m->opts.moe_cache_fp8 || rows <= 0) return;
    ds_fp8_quantize(a->q, a->s, x, rows, cols, 1, DS_FP8_BLOCK, ds_fp8_train_get().act_scale_fmt);
}

void ds_moe_fp8_get(const ds_model *m, const ds_act_fp8 *a, float *x, int rows, int cols) {
    if (!m->opts.train || !m->opts.moe_cache_fp8 || rows <= 0) return;
    ds_fp8_dequantize(x, a->q, a->s, rows, cols, 1, DS_FP8_BLOCK);
}

size_t ds_moe_fp8_row_bytes(int D) { return (size_t)D + (size_t)tiles(D); }

void ds_moe_fp8_pack(uint8_t *wire, const float *x, int rows, int D) {
    const size_t rb = ds_moe_fp8_row_bytes(D);
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *q = wire + r * rb, *e = q + D;
        const float *xr = x + r * (int64_t)D;
        for (int c0 = 0, t = 0; c0 < D; c0 += DS_FP8_BLOCK, t++) {
            int w = D - c0 < DS_FP8_BLOCK ? D - c0 : DS_FP8_BLOCK;
            float s;
            uint32_t bits;
            ds_fp8_quantize(q + c0, &s, xr + c0, 1, w, 1, DS_FP8_BLOCK, DS_FP8_SCALE_UE8M0);
            memcpy(&bits, &s, 4);
            e[t] = (uint8_t)(bits >> 23); /* a normal power of two (or Inf: exponent 255, as the scale was) */
        }
    }
}

void ds_moe_fp8_unpack(float *x, const uint8_t *wire, int rows, int D) {
    const size_t rb = ds_moe_fp8_row_bytes(D);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *q = wire + r * rb, *e = q + D;
        float *xr = x + r * (int64_t)D;
        for (int c0 = 0, t = 0; c0 < D; c0 += DS_FP8_BLOCK, t++) {
            int w = D - c0 < DS_FP8_BLOCK ? D - c0 : DS_FP8_BLOCK;
            uint32_t bits = (uint32_t)e[t] << 23;
            float s;
            memcpy(&s, &bits, 4);
            ds_fp8_dequantize(xr + c0, q + c0, &s, 1, w, 1, DS_FP8_BLOCK);
        }
    }
}

const float *ds_moe_fp8_as_dispatched(ds_model *m, const float *x, float *out, int rows) {
    if (!m->opts.moe_dispatch_fp8) return x;
    ds_moe_fp8_pack(m->scr.wire, x, rows, m->dims.D);
    ds_moe_fp8_unpack(out, m->scr.wire, rows, m->dims.D);
    return out;
}
