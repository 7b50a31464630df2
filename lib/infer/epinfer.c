#include "infer/epinfer.h"

#include "core/err.h"
#include "core/file.h"
#include "dist/ep.h"
#include "ops/ops.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- loads files --------------------------------------------------------------------------------- */

static int n_layers_of(const ds_config *cfg) { return cfg->num_hidden_layers + cfg->num_nextn_predict_layers; }

int ds_expert_loads_read(const char *path, const ds_config *cfg, ds_expert_loads *out) {
    memset(out, 0, sizeof *out);
    json_error_t je;
    json_t *v = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!v) return ds_fail(DS_ERR, "expert loads: bad JSON at line %d: %s: %s", je.line, je.text, path);
    const int NL = n_layers_of(cfg), E = cfg->n_routed_experts;
    int rc = DS_OK;
    json_t *ne = json_object_get(v, "n_routed_experts"), *layers = json_object_get(v, "layers");
    if (!json_is_integer(ne) || json_integer_value(ne) != E)
        rc = ds_fail(DS_ERR, "expert loads: \"n_routed_experts\" must be the model's %d: %s", E, path);
    else if (!json_is_array(layers))
        rc = ds_fail(DS_ERR, "expert loads: \"layers\" must be an array: %s", path);
    if (!rc) {
        out->n_layers = NL;
        out->E = E;
        out->load = calloc((size_t)NL * (size_t)E, sizeof(double));
        if (!out->load) rc = ds_fail(DS_ERR, "expert loads: out of memory");
    }
    size_t i;
    json_t *L;
    json_array_foreach(layers, i, L) {
        if (rc) break;
        json_t *li = json_object_get(L, "layer"), *ld = json_object_get(L, "loads");
        const long long l = json_is_integer(li) ? json_integer_value(li) : -1;
        if (l < 0 || l >= NL || !ds_cfg_is_moe_layer(cfg, (int)l) || !json_is_array(ld) || json_array_size(ld) != (size_t)E) {
            rc = ds_fail(DS_ERR, "expert loads: layers[%zu]: needs \"layer\" (a MoE layer below %d) and \"loads\" (%d numbers): %s",
                         i, NL, E, path);
            break;
        }
        for (int x = 0; x < E; x++) {
            json_t *n = json_array_get(ld, (size_t)x);
            double d = json_is_number(n) ? json_number_value(n) : -1;
            if (!(d >= 0 && isfinite(d))) {
                rc = ds_fail(DS_ERR, "expert loads: layer %lld: load %d must be a number >= 0: %s", l, x, path);
                break;
            }
            out->load[(size_t)l * E + x] = d;
        }
    }
    json_decref(v);
    if (rc) ds_expert_loads_free(out);
    return rc;
}

int ds_expert_loads_write(const char *path, const ds_config *cfg, const ds_expert_loads *l) {
    json_t *v = json_object(), *layers = json_array();
    json_object_set_new(v, "n_routed_experts", json_integer(l->E));
    for (int k = 0; k < l->n_layers; k++) {
        if (!ds_cfg_is_moe_layer(cfg, k)) continue;
        json_t *o = json_object(), *a = json_array();
        for (int x = 0; x < l->E; x++) json_array_append_new(a, json_integer((json_int_t)l->load[(size_t)k * l->E + x]));
        json_object_set_new(o, "layer", json_integer(k));
        json_object_set_new(o, "loads", a);
        json_array_append_new(layers, o);
    }
    json_object_set_new(v, "layers", layers);
    char *s = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    if (!s) return ds_fail(DS_ERR, "expert loads: out of memory");
    size_t n = strlen(s);
    s[n] = '\n'; /* over the NUL: the file is one line */
    int rc = ds_atomic_write_file(path, s, n + 1);
    free(s);
    return rc;
}

void ds_expert_loads_free(ds_expert_loads *l) {
    free(l->load);
    memset(l, 0, sizeof *l);
}

/* ---- placement ----------------------------------------------------------------------------------- */

void ds_eplb_place(const double *load, int E, int N, int extra, int32_t *phys) {
    const int P = E / N, S = P + extra;
    int copies[4096];
    for (int x = 0; x < E; x++) copies[x] = 1;
    for (int r = 0; r < N; r++)
        for (int j = 0; j < S; j++) phys[r * S + j] = j < P ? r * P + j : -1;
    for (int j = P; j < S; j++)
        for (int round = 0; round < N; round++) {
            /* the expert with the most load per copy that some rank with a free slot does not hold */
            int best_x = -1, best_r = -1;
            double best_share = -1;
            for (int x = 0; x < E; x++) {
                const double share = load[x] / copies[x];
                if (share <= best_share) continue;
                /* the least loaded rank with a free slot j and no copy of x */
                int rr = -1;
                double rl = 0;
                for (int r = 0; r < N; r++) {
                    if (phys[r * S + j] >= 0) continue;
                    int holds = 0;
                    double sum = 0;
                    for (int k = 0; k < S; k++) {
                        const int y = phys[r * S + k];
                        if (y < 0) continue;
                        holds |= y == x;
                        sum += load[y] / copies[y];
                    }
                    if (!holds && (rr < 0 || sum < rl)) rr = r, rl = sum;
                }
                if (rr >= 0) best_x = x, best_r = rr, best_share = share;
            }
            if (best_x < 0) { /* nothing placeable (every rank holds every expert): repeat a primary */
                for (int r = 0; r < N; r++)
                    if (phys[r * S + j] < 0) phys[r * S + j] = r * P;
                break;
            }
            phys[best_r * S + j] = best_x;
            copies[best_x]++;
        }
}

/* ---- the engine's side ----------------------------------------------------------------------------- */

typedef struct {
    ds_ep ep;
    int32_t *phys;           /* [N*S] logical expert of each slot (NULL: dense layer) */
    int32_t **copy_slot;     /* [E] the global slots holding each logical expert */
    int *n_copies;           /* [E] */
    int64_t *rr;             /* [E] round-robin counters */
    float *rep_gate, *rep_up, *rep_down; /* [extra][...] this rank's replica weights */
} ep_layer;

struct ds_infer_ep {
    const ds_comm *c;
    ds_model *m;
    const ds_config *cfg;
    int N, rank, E, K, D, Ie, P, S, extra, NL, max_tokens;
    ep_layer *layer;
    int32_t *pidx;           /* [max_tokens*K] physical slots */
    float *xr, *yr, *xe, *g, *u, *h, *ye, *zero;
    size_t rows_cap;
    int64_t *off;            /* [S+1] */
    int32_t *order;          /* [rows*K] (row*K + k) sorted by slot */
    double rank_pairs;       /* (token, expert) pairs this rank computed */
};

int ds_infer_ep_rank(const ds_infer_ep *ep) { return ep->rank; }

const int32_t *ds_infer_ep_placement(const ds_infer_ep *ep, int l, int *slots_per_rank) {
    *slots_per_rank = ep->S;
    return l >= 0 && l < ep->NL ? ep->layer[l].phys : NULL;
}

void ds_infer_ep_free(ds_infer_ep *ep) {
    if (!ep) return;
    for (int l = 0; ep->layer && l < ep->NL; l++) {
        ep_layer *L = &ep->layer[l];
        if (!L->phys) continue;
        ds_ep_free(&L->ep);
        if (L->copy_slot)
            for (int x = 0; x < ep->E; x++) free(L->copy_slot[x]);
        free(L->copy_slot);
        free(L->n_copies);
        free(L->rr);
        free(L->phys);
        free(L->rep_gate);
    }
    free(ep->layer);
    free(ep->pidx);
    free(ep->xr);
    free(ep->yr);
    free(ep->xe);
    free(ep->g);
    free(ep->u);
    free(ep->h);
    free(ep->ye);
    free(ep->zero);
    free(ep->off);
    free(ep->order);
    free(ep);
}

/* Each replica's weights come from its owner (the rank whose primary block holds it): one all-to-all per
 * layer, blocks in the receiver's replica-slot order per owner. */
static int fetch_replicas(ds_infer_ep *ep, int l) {
    ep_layer *L = &ep->layer[l];
    const ds_layer_w *lw = &ds_model_weights(ep->m)->layer[l];
    const size_t per = 3 * (size_t)ep->Ie * ep->D, mat = (size_t)ep->Ie * ep->D;
    const int N = ep->N;
    int64_t *sc = calloc(4 * (size_t)N, sizeof(int64_t)), *sd = sc + N, *rc = sc + 2 * N, *rd = sc + 3 * N;
    size_t ns = 0, nr = 0;
    if (!sc) return ds_fail(DS_ERR, "expert parallel: out of memory");
    for (int p = 0; p < N; p++)
        for (int j = ep->P; j < ep->S; j++) {
            const int x = L->phys[p * ep->S + j];
            if (x / ep->P == ep->rank) sc[p]++, ns++;
            if (p == ep->rank) rc[x / ep->P]++, nr++;
        }
    for (int p = 0; p < N; p++) {
        sd[p] = p ? sd[p - 1] + sc[p - 1] : 0;
        rd[p] = p ? rd[p - 1] + rc[p - 1] : 0;
    }
    float *sb = malloc((ns ? ns : 1) * per * sizeof(float)), *rb = malloc((nr ? nr : 1) * per * sizeof(float));
    int rcode = !sb || !rb ? ds_fail(DS_ERR, "expert parallel: out of memory for replicas") : DS_OK;
    size_t k = 0;
    for (int p = 0; !rcode && p < N; p++)
        for (int j = ep->P; j < ep->S; j++) {
            const int x = L->phys[p * ep->S + j];
            if (x / ep->P != ep->rank) continue;
            const size_t lx = (size_t)(x % ep->P);
            memcpy(sb + k * per, lw->exp_gate + lx * mat, mat * sizeof(float));
            memcpy(sb + k * per + mat, lw->exp_up + lx * mat, mat * sizeof(float));
            memcpy(sb + k * per + 2 * mat, lw->exp_down + lx * mat, mat * sizeof(float));
            k++;
        }
    for (int p = 0; p < N; p++) sc[p] *= (int64_t)(per * sizeof(float)), sd[p] *= (int64_t)(per * sizeof(float)),
                                 rc[p] *= (int64_t)(per * sizeof(float)), rd[p] *= (int64_t)(per * sizeof(float));
    if (!rcode) rcode = ds_comm_alltoallv_bytes(ep->c, sb, sc, sd, rb, rc, rd);
    /* rb: grouped by owner in rank order, each owner's in this rank's slot order */
    int64_t *next = calloc((size_t)N, sizeof(int64_t));
    if (!rcode && !next) rcode = ds_fail(DS_ERR, "expert parallel: out of memory");
    for (int j = ep->P; !rcode && j < ep->S; j++) {
        const int x = L->phys[ep->rank * ep->S + j], q = x / ep->P;
        const float *src = (const float *)((const char *)rb + rd[q]) + (size_t)next[q]++ * per;
        const size_t r = (size_t)(j - ep->P);
        memcpy(L->rep_gate + r * mat, src, mat * sizeof(float));
        memcpy(L->rep_up + r * mat, src + mat, mat * sizeof(float));
        memcpy(L->rep_down + r * mat, src + 2 * mat, mat * sizeof(float));
    }
    free(next);
    free(sb);
    free(rb);
    free(sc);
    return rcode;
}

int ds_infer_ep_create(ds_infer_ep **out, const ds_comm *comm, ds_model *m, int extra, const ds_expert_loads *loads,
                       int max_tokens) {
    *out = NULL;
    const ds_config *cfg = ds_model_config(m);
    const int N = comm->size, E = cfg->n_routed_experts;
    if (E <= 0) return ds_fail(DS_EUSAGE, "--ep: the model has no routed experts");
    if (E % N) return ds_fail(DS_EUSAGE, "--ep %d: does not divide the %d routed experts", N, E);
    if (E > 4096) return ds_fail(DS_EUSAGE, "--ep: more than 4096 routed experts");
    if (extra < 0 || extra > E - E / N)
        return ds_fail(DS_EUSAGE, "--redundant-experts %d: must be in [0, %d] (the experts a rank does not hold)", extra, E - E / N);
    if (extra && !loads) return ds_fail(DS_EUSAGE, "--redundant-experts needs --expert-loads (where the replicas go)");
    ds_infer_ep *ep = calloc(1, sizeof *ep);
    if (!ep) return ds_fail(DS_ERR, "expert parallel: out of memory");
    ep->c = comm;
    ep->m = m;
    ep->cfg = cfg;
    ep->N = N;
    ep->rank = comm->rank;
    ep->E = E;
    ep->K = cfg->num_experts_per_tok;
    ep->D = cfg->hidden_size;
    ep->Ie = cfg->moe_intermediate_size;
    ep->P = E / N;
    ep->extra = extra;
    ep->S = ep->P + extra;
    ep->NL = n_layers_of(cfg);
    ep->max_tokens = max_tokens;
    ep->layer = calloc((size_t)ep->NL, sizeof *ep->layer);
    ep->pidx = malloc(sizeof(int32_t) * (size_t)max_tokens * ep->K);
    ep->off = calloc((size_t)ep->S + 1, sizeof(int64_t));
    ep->zero = calloc((size_t)ep->D, sizeof(float));
    int rc = !ep->layer || !ep->pidx || !ep->off || !ep->zero
                 ? ds_fail(DS_ERR, "expert parallel: out of memory")
                 : DS_OK;
    const size_t mat = (size_t)ep->Ie * ep->D;
    for (int l = 0; !rc && l < ep->NL; l++) {
        if (!ds_cfg_is_moe_layer(cfg, l) || (l >= cfg->num_hidden_layers && l - cfg->num_hidden_layers >= ds_model_mtp_depth(m)))
            continue;
        ep_layer *L = &ep->layer[l];
        L->phys = malloc(sizeof(int32_t) * (size_t)N * ep->S);
        L->copy_slot = calloc((size_t)E, sizeof *L->copy_slot);
        L->n_copies = calloc((size_t)E, sizeof(int));
        L->rr = calloc((size_t)E, sizeof(int64_t));
        L->rep_gate = extra ? malloc(3 * (size_t)extra * mat * sizeof(float)) : NULL;
        if (!L->phys || !L->copy_slot || !L->n_copies || !L->rr || (extra && !L->rep_gate)) {
            rc = ds_fail(DS_ERR, "expert parallel: out of memory");
            break;
        }
        L->rep_up = L->rep_gate ? L->rep_gate + (size_t)extra * mat : NULL;
        L->rep_down = L->rep_gate ? L->rep_gate + 2 * (size_t)extra * mat : NULL;
        if (extra) ds_eplb_place(loads->load + (size_t)l * E, E, N, extra, L->phys);
        else
            for (int s = 0; s < N * ep->S; s++) L->phys[s] = s;
        for (int s = 0; s < N * ep->S; s++) L->n_copies[L->phys[s]]++;
        for (int x = 0; x < E && !rc; x++) {
            L->copy_slot[x] = malloc(sizeof(int32_t) * (size_t)L->n_copies[x]);
            if (!L->copy_slot[x]) rc = ds_fail(DS_ERR, "expert parallel: out of memory");
            L->n_copies[x] = 0;
        }
        for (int s = 0; !rc && s < N * ep->S; s++) L->copy_slot[L->phys[s]][L->n_copies[L->phys[s]]++] = s;
        if (!rc) rc = ds_ep_init(&L->ep, comm, N * ep->S, ep->K, DS_A2A_OURS);
        if (!rc && extra) rc = fetch_replicas(ep, l);
    }
    if (rc) {
        ds_infer_ep_free(ep);
        return rc;
    }
    *out = ep;
    return DS_OK;
}

static int grow_rows(ds_infer_ep *ep, size_t rows) {
    if (rows <= ep->rows_cap) return DS_OK;
    size_t cap = ep->rows_cap ? ep->rows_cap : 64;
    while (cap < rows) cap *= 2;
    const size_t D = (size_t)ep->D, K = (size_t)ep->K, Ie = (size_t)ep->Ie;
    free(ep->xr), free(ep->yr), free(ep->xe), free(ep->g), free(ep->u), free(ep->h), free(ep->ye), free(ep->order);
    ep->xr = malloc(cap * D * sizeof(float));
    ep->yr = malloc(cap * D * sizeof(float));
    ep->xe = malloc(cap * K * D * sizeof(float));
    ep->g = malloc(cap * K * Ie * sizeof(float));
    ep->u = malloc(cap * K * Ie * sizeof(float));
    ep->h = malloc(cap * K * Ie * sizeof(float));
    ep->ye = malloc(cap * K * D * sizeof(float));
    ep->order = malloc(cap * K * sizeof(int32_t));
    ep->rows_cap = cap;
    if (!ep->xr || !ep->yr || !ep->xe || !ep->g || !ep->u || !ep->h || !ep->ye || !ep->order) {
        ep->rows_cap = 0;
        return ds_fail(DS_ERR, "expert parallel: out of memory for %zu rows", rows);
    }
    return DS_OK;
}

/* The local experts on the received rows: yr[row] = sum over its slots (arrival order) of w * expert(x). */
static int local_experts(ds_infer_ep *ep, int l, int64_t rows) {
    ep_layer *L = &ep->layer[l];
    const ds_layer_w *lw = &ds_model_weights(ep->m)->layer[l];
    const ds_ops *op = ds_model_linear_ops(ep->m) ? ds_model_linear_ops(ep->m) : ds_model_ops(ep->m);
    const int K = ep->K, D = ep->D, Ie = ep->Ie, S = ep->S, P = ep->P;
    const int32_t *rx = L->ep.recv_expert;
    int64_t *off = ep->off;
    memset(off, 0, sizeof(int64_t) * (size_t)(S + 1));
    for (int64_t i = 0; i < rows * K; i++)
        if (rx[i] >= 0) off[rx[i] + 1]++;
    for (int s = 0; s < S; s++) off[s + 1] += off[s];
    const int64_t pairs = off[S];
    ep->rank_pairs += (double)pairs;
    int64_t *fill = calloc((size_t)S, sizeof(int64_t));
    if (!fill) return ds_fail(DS_ERR, "expert parallel: out of memory");
    for (int64_t i = 0; i < rows * K; i++) /* stable: a slot's pairs in row order */
        if (rx[i] >= 0) {
            const int64_t at = off[rx[i]] + fill[rx[i]]++;
            ep->order[at] = (int32_t)i;
            memcpy(ep->xe + (size_t)at * D, ep->xr + (size_t)(i / K) * D, sizeof(float) * D);
        }
    free(fill);
    const size_t mat = (size_t)Ie * D;
    if (off[P] > 0) {
        op->gemm_rows(P, off, 1, Ie, D, 1, ep->xe, D, lw->exp_gate, mat, D, 0, ep->g, Ie);
        op->gemm_rows(P, off, 1, Ie, D, 1, ep->xe, D, lw->exp_up, mat, D, 0, ep->u, Ie);
    }
    if (S > P && off[S] > off[P]) { /* the replicas: their own weights, their rows after the primaries' */
        int64_t roff[4097];
        for (int s = P; s <= S; s++) roff[s - P] = off[s] - off[P];
        const size_t r0 = (size_t)off[P];
        op->gemm_rows(S - P, roff, 1, Ie, D, 1, ep->xe + r0 * D, D, L->rep_gate, mat, D, 0, ep->g + r0 * Ie, Ie);
        op->gemm_rows(S - P, roff, 1, Ie, D, 1, ep->xe + r0 * D, D, L->rep_up, mat, D, 0, ep->u + r0 * Ie, Ie);
        op->swiglu_fwd(ep->h + r0 * Ie, ep->g + r0 * Ie, ep->u + r0 * Ie, (size_t)(off[S] - off[P]) * Ie);
        op->gemm_rows(S - P, roff, 1, D, Ie, 1, ep->h + r0 * Ie, Ie, L->rep_down, mat, Ie, 0, ep->ye + r0 * D, D);
    }
    if (off[P] > 0) {
        op->swiglu_fwd(ep->h, ep->g, ep->u, (size_t)off[P] * Ie);
        op->gemm_rows(P, off, 1, D, Ie, 1, ep->h, Ie, lw->exp_down, mat, Ie, 0, ep->ye, D);
    }
    /* where each (row, k) pair's output went */
    int32_t *at = (int32_t *)ep->g; /* g is free now: [pairs] ints fit in [pairs*Ie] floats */
    for (int64_t a = 0; a < pairs; a++) at[ep->order[a]] = (int32_t)a;
    memset(ep->yr, 0, sizeof(float) * (size_t)rows * D);
    for (int64_t r = 0; r < rows; r++)
        for (int k = 0; k < K; k++) {
            const int64_t i = r * K + k;
            if (rx[i] < 0) continue;
            const float w = L->ep.recv_weight[i], *y = ep->ye + (size_t)at[i] * D;
            float *o = ep->yr + (size_t)r * D;
            for (int d = 0; d < D; d++) o[d] += w * y[d];
        }
    return DS_OK;
}

int ds_infer_ep_moe(ds_infer_ep *ep, int l, const float *x, const int32_t *idx, const float *w, int n, float *y) {
    ep_layer *L = &ep->layer[l];
    if (!L->phys) return ds_fail(DS_ERR, "expert parallel: layer %d has no routed experts here", l);
    if (n > ep->max_tokens) return ds_fail(DS_ERR, "expert parallel: %d tokens, at most %d", n, ep->max_tokens);
    const int K = ep->K, D = ep->D;
    for (int i = 0; i < n * K; i++) { /* one copy per pair: round-robin over the expert's copies */
        const int xl = idx[i];
        ep->pidx[i] = L->copy_slot[xl][L->rr[xl]++ % L->n_copies[xl]];
    }
    DS_TRY(ds_ep_plan(&L->ep, ep->c, ep->pidx, w, n));
    const int64_t rows = L->ep.n_recv;
    DS_TRY(grow_rows(ep, (size_t)(rows > n ? rows : n) + 1));
    DS_TRY(ds_ep_dispatch(&L->ep, ep->c, n ? x : ep->zero, ep->xr, sizeof(float) * D));
    DS_TRY(local_experts(ep, l, rows));
    /* combine into a scratch (xe is free again), then y += it */
    float *out = ep->xe;
    DS_TRY(ds_ep_combine(&L->ep, ep->c, ep->yr, out, D));
    for (size_t i = 0; i < (size_t)n * D; i++) y[i] += out[i];
    return DS_OK;
}

static int moe_layers_of(ds_infer_ep *ep, int what, int *first, int *end) {
    const int L = ep->cfg->num_hidden_layers;
    if (what == 1) *first = 0, *end = L;
    else if (what == 2) *first = L, *end = L + 1;
    else return ds_fail(DS_ERR, "expert parallel: unknown command %d from rank 0", what);
    return DS_OK;
}

int ds_infer_ep_announce(ds_infer_ep *ep, int what) {
    uint64_t v = (uint64_t)what;
    return ds_comm_bcast_u64(ep->c, &v);
}

int ds_infer_ep_serve(ds_infer_ep *ep) {
    for (;;) {
        uint64_t v = 0;
        DS_TRY(ds_comm_bcast_u64(ep->c, &v));
        if (!v) return DS_OK;
        int l0 = 0, l1 = 0;
        DS_TRY(moe_layers_of(ep, (int)v, &l0, &l1));
        for (int l = l0; l < l1; l++)
            if (ep->layer[l].phys) DS_TRY(ds_infer_ep_moe(ep, l, NULL, NULL, NULL, 0, NULL));
    }
}

int ds_infer_ep_rank_loads(ds_infer_ep *ep, double *per_rank) {
    for (int r = 0; r < ep->N; r++) per_rank[r] = r == ep->rank ? ep->rank_pairs : 0;
    return ds_comm_allreduce_sum_f64(ep->c, per_rank, ep->N);
}
