/* Expert parallelism inside a MoE layer: moe.h's seam filled with lib/dist/ep.h's exchanges.
 *
 * Forward: the router runs here on this rank's own tokens (replicated router, all E scores), the routed
 * tokens (padding stays home) go once to every EP rank holding one of their experts (dispatch), each rank
 * runs its experts on the rows it received from everyone (ds_moe_experts_fwd) and sends one weighted row
 * back per received row (combine), summed per token in rank order. Backward, mirrored: d(out) travels
 * like the dispatch (combine's backward), the experts' backward gives dx per row and d(weight) per (row,
 * slot), dx returns and is summed per token (dispatch's backward) and the weight gradients return to their
 * token's slots for the router's backward. A rank with no micro-batch makes the same exchanges with no
 * rows of its own (ds_model_ep_idle_*), so a step's collective calls match on every rank.
 *
 * The expert loads for the bias update and the balance statistics count this rank's routing over all E
 * experts (the trainer sums them over the data-parallel ranks), as the one-process model does. */
#include "model/internal.h"
#include "model/moe.h"
#include "model/moe_fp8.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

int ds_moe_ep_layers_new(ds_model *m, struct ep_layer **out) {
    const int NL = m->n_layers_total;
    struct ep_layer *epl = *out = calloc((size_t)NL + 1, sizeof *epl);
    if (!epl) return ds_fail(DS_ERR, "out of memory: expert-parallel buffers");
    for (int l = 0; l < NL; l++) {
        if (m->moe_slot[l] < 0) continue;
        struct ep_layer *e = &epl[l];
        DS_TRY(ds_ep_init(&e->ep, m->opts.ep_comm, m->dims.E, m->dims.K, DS_A2A_OURS));
        e->have_ep = 1;
        DS_TRY(ds_ep_set_nodes(&e->ep, m->ep_node, m->ep_two_hop ? DS_EP_TWO_HOP : DS_EP_ONE_HOP));
    }
    return 0;
}

void ds_moe_ep_layers_free(ds_model *m, struct ep_layer *epl) {
    for (int l = 0; epl && l < m->n_layers_total; l++) {
        struct ep_layer *e = &epl[l];
        if (e->have_ep) ds_ep_free(&e->ep);
        free(e->tok);
        free(e->xr);
    }
    free(epl);
}

/* a layer's buffers, at its first forward in a slot (a pipeline stage's slots never run the other stages'
 * layers) */
static int layer_bufs(const ds_model *m, struct ep_layer *e) {
    if (e->xr) return 0;
    e->tok = malloc(sizeof(int32_t) * (size_t)m->n_max);
    e->xr = malloc(sizeof(float) * (size_t)m->n_max * m->ep_n * m->dims.D);
    if (!e->tok || !e->xr) {
        free(e->tok), free(e->xr);
        e->tok = NULL, e->xr = NULL;
        return ds_fail(DS_ERR, "out of memory: expert-parallel buffers");
    }
    return 0;
}

int ds_moe_ep_alloc(ds_model *m) {
    const int K = m->dims.K, D = m->dims.D;
    const size_t n = (size_t)m->n_max, r = n * (size_t)m->ep_n;
    m->ep_node = calloc((size_t)m->ep_n, sizeof(int));
    m->ep_idx = malloc(sizeof(int32_t) * n * K);
    m->ep_w = malloc(sizeof(float) * n * K);
    m->ep_dw = malloc(sizeof(float) * n * K);
    m->ep_x = malloc(sizeof(float) * n * D);
    m->ep_out = malloc(sizeof(float) * n * D);
    m->ep_yr = malloc(sizeof(float) * r * D);
    m->ep_dxr = malloc(sizeof(float) * r * D);
    m->ep_dwr = malloc(sizeof(float) * r * K);
    if (!m->ep_node || !m->ep_idx || !m->ep_w || !m->ep_dw || !m->ep_x || !m->ep_out || !m->ep_yr || !m->ep_dxr ||
        !m->ep_dwr)
        return ds_fail(DS_ERR, "out of memory: expert-parallel buffers");
    if (m->opts.moe_dispatch_fp8) {
        const size_t rb = ds_moe_fp8_row_bytes(D);
        m->ep_wire = malloc(n * rb + 1);
        m->ep_wire_r = malloc(r * rb + 1);
        if (!m->ep_wire || !m->ep_wire_r) return ds_fail(DS_ERR, "out of memory: expert-parallel buffers");
    }
    return ds_moe_ep_layers_new(m, &m->epl);
}

int ds_moe_ep_set_transport(ds_model *m, int two_hop) {
    m->ep_two_hop = two_hop; /* for the slots made later */
    for (int i = -1; i < m->n_slots; i++) {
        struct ep_layer *epl = i < 0 ? m->epl : i == m->cur_slot ? NULL : m->slot[i].epl;
        for (int l = 0; epl && l < m->n_layers_total; l++)
            if (epl[l].have_ep)
                DS_TRY(ds_ep_set_nodes(&epl[l].ep, m->ep_node, two_hop ? DS_EP_TWO_HOP : DS_EP_ONE_HOP));
    }
    return 0;
}

void ds_moe_ep_free(ds_model *m) {
    ds_moe_ep_layers_free(m, m->epl);
    free(m->ep_node);
    free(m->ep_idx), free(m->ep_w), free(m->ep_dw), free(m->ep_x), free(m->ep_out);
    free(m->ep_yr), free(m->ep_dxr), free(m->ep_dwr);
    free(m->ep_wire), free(m->ep_wire_r);
    m->epl = NULL;
}

/* rows[i] = src[tok[i]] for the routed tokens (a copy only when some are left out) */
static const float *routed_rows(const ds_model *m, const struct ep_layer *e, const float *src, int n) {
    const int D = m->dims.D;
    if (e->nc == n) return src;
    for (int i = 0; i < e->nc; i++) memcpy(m->ep_x + (size_t)i * D, src + (size_t)e->tok[i] * D, sizeof(float) * D);
    return m->ep_x;
}

/* dst[tok[i]] += rows[i] */
static void add_rows(const ds_model *m, const struct ep_layer *e, float *dst, const float *rows) {
    const int D = m->dims.D;
    for (int i = 0; i < e->nc; i++) {
        float *o = dst + (size_t)e->tok[i] * D;
        const float *r = rows + (size_t)i * D;
        for (int j = 0; j < D; j++) o[j] += r[j];
    }
}

/* the metrics of one forward exchange: nodes per routed token, and the bytes the exchange sent to other
 * ranks and nodes (the transport's counters since *before, so a two-hop relay's forwards count) */
static void count_traffic(ds_model *m, const struct ep_layer *e, const ds_ep_bytes before[2]) {
    ds_moe_ep_stats *st = &m->ep_stats;
    const int K = m->dims.K;
    for (int i = 0; i < e->nc; i++) {
        const int32_t *idx = m->ep_idx + (size_t)i * K;
        int nodes = 0;
        for (int k = 0; k < K; k++) {
            int node = m->ep_node[idx[k] / m->ne], seen = 0;
            for (int k2 = 0; k2 < k; k2++) seen |= m->ep_node[idx[k2] / m->ne] == node;
            nodes += !seen;
        }
        st->nodes_sum += nodes;
        if (nodes > st->nodes_max) st->nodes_max = nodes;
    }
    st->tokens += e->nc;
    st->dispatch_rows += e->ep.n_send - e->ep.send_rows[e->ep.rank];
    const ds_ep_bytes *d = &e->ep.sent_dispatch, *c = &e->ep.sent_combine;
    st->dispatch_bytes += d->intra + d->inter - before[0].intra - before[0].inter;
    st->combine_bytes += c->intra + c->inter - before[1].intra - before[1].inter;
    st->cross_node_bytes += d->inter - before[0].inter + c->inter - before[1].inter;
}

/* rows [e->nc, D] to their expert ranks, into recv [n_recv, D]: float32 rows, or with the FP8 dispatch
 * their E4M3 codes and power-of-two exponents (moe_fp8.h), dequantized on arrival */
static int dispatch_rows(ds_model *m, struct ep_layer *e, const float *rows, float *recv) {
    const ds_comm *c = m->opts.ep_comm;
    const int D = m->dims.D;
    if (!m->opts.moe_dispatch_fp8) return ds_ep_dispatch(&e->ep, c, rows, recv, sizeof(float) * D);
    ds_moe_fp8_pack(m->ep_wire, rows, e->nc, D);
    DS_TRY(ds_ep_dispatch(&e->ep, c, m->ep_wire, m->ep_wire_r, ds_moe_fp8_row_bytes(D)));
    ds_moe_fp8_unpack(recv, m->ep_wire_r, (int)e->ep.n_recv, D);
    return 0;
}

/* the rows back, summed per token: float32, or bf16 on the wire with the FP8 dispatch (V3 combines in bf16) */
static int combine_rows(ds_model *m, struct ep_layer *e, const float *y, float *out) {
    const ds_comm *c = m->opts.ep_comm;
    if (m->opts.moe_dispatch_fp8) return ds_ep_combine_bf16(&e->ep, c, y, out, m->dims.D);
    return ds_ep_combine(&e->ep, c, y, out, m->dims.D);
}

/* dispatch x's routed rows (m->ep_idx / ep_w hold their routing), run the local experts, combine into
 * f (NULL when there are no rows) */
static int exchange_fwd(ds_model *m, int l, const float *x, float *f) {
    struct ep_layer *e = &m->epl[l];
    const ds_comm *c = m->opts.ep_comm;
    const int D = m->dims.D;
    const ds_ep_bytes before[2] = {e->ep.sent_dispatch, e->ep.sent_combine};
    DS_TRY(layer_bufs(m, e));
    DS_TRY(ds_ep_plan(&e->ep, c, m->ep_idx, m->ep_w, e->nc));
    const int64_t rows = e->ep.n_recv;
    if (rows > (int64_t)m->n_max * m->ep_n)
        return ds_fail(DS_ERR, "expert parallel: layer %d receives %lld rows, more than %d ranks x %d tokens (do all ranks "
                       "build the model with the same batch size?)", l, (long long)rows, m->ep_n, m->n_max);
    DS_TRY(dispatch_rows(m, e, x, e->xr));
    memset(m->ep_yr, 0, sizeof(float) * (size_t)rows * D);
    DS_TRY(ds_moe_experts_fwd(m, l, 0, m->ne, e->xr, e->ep.recv_expert, e->ep.recv_weight, (int)rows, m->ep_yr, NULL));
    DS_TRY(combine_rows(m, e, m->ep_yr, m->ep_out));
    if (f) add_rows(m, e, f, m->ep_out);
    count_traffic(m, e, before);
    return 0;
}

int ds_moe_ep_fwd(ds_model *m, int l, ds_tape *t, float *f) {
    const ds_dims *d = &m->dims;
    const int n = m->n, K = d->K, E = d->E;
    struct ep_layer *e = &m->epl[l];
    int32_t *load = m->expert_load + (size_t)m->moe_slot[l] * E;
    m->ops->sync(); /* the routing is read on the host */
    DS_TRY(layer_bufs(m, e));
    /* the routed tokens: padding has no experts (idx -1) and stays here */
    int nc = 0;
    for (int i = 0; i < n; i++) {
        const int32_t *idx = t->idx + (size_t)i * K;
        if (idx[0] < 0) continue;
        e->tok[nc] = i;
        memcpy(m->ep_idx + (size_t)nc * K, idx, sizeof(int32_t) * K);
        memcpy(m->ep_w + (size_t)nc * K, t->w + (size_t)i * K, sizeof(float) * K);
        for (int k = 0; k < K; k++) load[idx[k]]++;
        nc++;
    }
    e->nc = nc;
    return exchange_fwd(m, l, routed_rows(m, e, t->hn, n), f);
}

/* combine's backward (dy to the rows' ranks), the experts' backward, dispatch's backward (dx summed per
 * routed token, added into dhn; the weight gradients back to their slots in m->ep_dw). m->ep_idx must hold
 * the plan's routing again. */
static int exchange_bwd(ds_model *m, int l, const float *dy, float *dhn) {
    struct ep_layer *e = &m->epl[l];
    const ds_comm *c = m->opts.ep_comm;
    const int D = m->dims.D;
    const int64_t rows = e->ep.n_recv;
    DS_TRY(dispatch_rows(m, e, dy, m->ep_yr)); /* the gradient before the down projection: FP8 as the forward's */
    memset(m->ep_dxr, 0, sizeof(float) * (size_t)rows * D);
    ds_moe_experts_bwd(m, l, 0, m->ne, e->xr, e->ep.recv_expert, e->ep.recv_weight, (int)rows, m->ep_yr, m->ep_dxr,
                       m->ep_dwr);
    DS_TRY(combine_rows(m, e, m->ep_dxr, m->ep_out));
    if (dhn) add_rows(m, e, dhn, m->ep_out);
    return ds_ep_combine_slots(&e->ep, c, m->ep_dwr, m->ep_idx, m->ep_dw);
}

int ds_moe_ep_bwd(ds_model *m, int l, ds_tape *t, const float *df, float *dhn) {
    const int n = m->n, K = m->dims.K;
    struct ep_layer *e = &m->epl[l];
    for (int i = 0; i < e->nc; i++) memcpy(m->ep_idx + (size_t)i * K, t->idx + (size_t)e->tok[i] * K, sizeof(int32_t) * K);
    DS_TRY(exchange_bwd(m, l, routed_rows(m, e, df, n), dhn));
    /* the router's backward reads d(weight) per token and slot: 0 for padding */
    float *dw = m->scr.dw;
    memset(dw, 0, sizeof(float) * (size_t)n * K);
    for (int i = 0; i < e->nc; i++) memcpy(dw + (size_t)e->tok[i] * K, m->ep_dw + (size_t)i * K, sizeof(float) * K);
    return 0;
}

/* ---- a micro-batch without rows ---- */

static int active_mtp(const ds_model *m, int T) {
    int a = 0;
    while (a < m->mtp_depth && T - (a + 1) > 0) a++;
    return a;
}

int ds_model_ep_idle_stage_fwd(ds_model *m, int T, int l0, int l1, int last) {
    if (m->ep_n <= 1) return 0;
    const int L = m->cfg.num_hidden_layers, NL = last ? L + active_mtp(m, T) : l1;
    for (int l = l0; l < NL; l++) /* the forward's order: layers, then the MTP modules */
        if ((l < l1 || l >= L) && m->moe_slot[l] >= 0) {
            m->epl[l].nc = 0;
            DS_TRY(exchange_fwd(m, l, NULL, NULL));
        }
    return 0;
}

int ds_model_ep_idle_stage_bwd(ds_model *m, int T, int l0, int l1, int mtp) {
    if (m->ep_n <= 1) return 0;
    const int L = m->cfg.num_hidden_layers;
    for (int l = mtp ? L + active_mtp(m, T) - 1 : l1 - 1; l >= l0; l--) /* MTP modules last to first, then layers */
        if ((l < l1 || l >= L) && m->moe_slot[l] >= 0) DS_TRY(exchange_bwd(m, l, NULL, NULL));
    return 0;
}

int ds_model_ep_idle_fwd(ds_model *m, int T) { return ds_model_ep_idle_stage_fwd(m, T, 0, m->cfg.num_hidden_layers, 1); }

int ds_model_ep_idle_bwd(ds_model *m, int T, int mtp) {
    return ds_model_ep_idle_stage_bwd(m, T, 0, m->cfg.num_hidden_layers, mtp);
}

void ds_model_expert_range(const ds_model *m, size_t *off, size_t *n, int *e0, int *ne) {
    *off = m->expert_off;
    *n = m->n_floats - m->expert_off;
    if (e0) *e0 = m->e0;
    if (ne) *ne = m->ne;
}

void ds_model_ep_stats(ds_model *m, ds_moe_ep_stats *out, int reset) {
    if (out) *out = m->ep_stats;
    if (reset) memset(&m->ep_stats, 0, sizeof m->ep_stats);
}
