/* Pipeline-parallel execution (pipe.h): stage split, the per-rank op list, messages between stages. */
#include "train/pipe.h"

#include "core/err.h"
#include "dist/p2p.h"
#include "ops/device.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- stages ---------------------------------------------------------------------------------------- */

/* Forward cost of decoder layer l per token, in multiply-adds: its activated parameters (routed experts
 * weighted by K/E) and the attention scores over an average causal prefix of seq_len/2 positions. */
static double layer_cost(const ds_param *p, int np, const ds_config *c, int seq_len, int l) {
    double cost = 0;
    for (int i = 0; i < np; i++) {
        if (p[i].layer != l) continue;
        double w = p[i].expert >= 0 ? (double)c->num_experts_per_tok / c->n_routed_experts : 1.0;
        cost += w * (double)p[i].numel;
    }
    double dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    return cost + 0.5 * seq_len * c->num_attention_heads * (dqk + c->v_head_dim);
}

static int parse_stages(const char *spec, int pp, int L, int *first) {
    const char *s = spec;
    int next = 0;
    for (int st = 0; st < pp; st++) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s) goto bad;
        if (*end == '-') {
            s = end + 1;
            b = strtol(s, &end, 10);
            if (end == s) goto bad;
        }
        if (a != next || b < a || b >= L)
            return ds_fail(DS_EUSAGE, "--stages %s: stage %d is layers %ld-%ld; stages must cover layers 0-%d in order, "
                           "each at least one layer", spec, st, a, b, L - 1);
        first[st] = (int)a;
        next = (int)b + 1;
        s = end;
        if (st + 1 < pp && *s++ != ',') goto bad;
    }
    if (*s || next != L) {
        if (*s == ',' || next == L) return ds_fail(DS_EUSAGE, "--stages %s: more stages than --pp %d", spec, pp);
        return ds_fail(DS_EUSAGE, "--stages %s: layers %d-%d are in no stage", spec, next, L - 1);
    }
    first[pp] = L;
    return 0;
bad:
    return ds_fail(DS_EUSAGE, "--stages %s: expected %d ranges like 0-3,4-7 (one per stage)", spec, pp);
}

int ds_pipe_split_layers(const ds_config *c, int pp, int seq_len, const char *spec, int *first) {
    const int L = c->num_hidden_layers;
    if (pp < 1) return ds_fail(DS_EUSAGE, "--pp %d: at least 1", pp);
    if (pp > L) return ds_fail(DS_EUSAGE, "--pp %d: more stages than the model's %d decoder layers", pp, L);
    if (spec) return parse_stages(spec, pp, L, first);
    ds_param *p;
    int np;
    DS_TRY(ds_model_layout(c, &p, &np));
    /* cost[l] for the layers, plus what the last stage runs after them: the head (and for each MTP module
     * its layer, eh_proj and the head again) */
    double *cost = calloc((size_t)L + 1, sizeof *cost), *best = calloc((size_t)(L + 1) * (pp + 1), sizeof *best);
    int *cut = calloc((size_t)(L + 1) * (pp + 1), sizeof *cut);
    if (!cost || !best || !cut) {
        free(p), free(cost), free(best), free(cut);
        return ds_fail(DS_ERR, "out of memory: stage split");
    }
    for (int l = 0; l < L; l++) cost[l] = layer_cost(p, np, c, seq_len, l);
    double tail = (double)c->vocab_size * c->hidden_size;
    for (int j = 0; j < c->num_nextn_predict_layers; j++)
        tail += layer_cost(p, np, c, seq_len, L + j) + (double)c->vocab_size * c->hidden_size;
    free(p);
    /* best[k][l]: the least largest stage cost of layers [0, l) in k stages (contiguous, none empty);
     * O(pp L^2), nothing next to a forward */
#define BEST(k, l) best[(size_t)(k) * (L + 1) + (l)]
#define CUT(k, l) cut[(size_t)(k) * (L + 1) + (l)]
    for (int k = 0; k <= pp; k++)
        for (int l = 0; l <= L; l++) BEST(k, l) = INFINITY;
    BEST(0, 0) = 0;
    for (int k = 1; k <= pp; k++)
        for (int l = k; l <= L; l++) {
            double run = (k == pp && l == L) ? tail : 0;
            for (int j = l - 1; j >= k - 1; j--) {
                run += cost[j];
                double v = fmax(BEST(k - 1, j), run);
                if (v < BEST(k, l)) BEST(k, l) = v, CUT(k, l) = j;
            }
        }
    first[pp] = L;
    for (int k = pp, l = L; k > 0; k--) l = first[k - 1] = CUT(k, l);
#undef BEST
#undef CUT
    free(cost), free(best), free(cut);
    return 0;
}

/* ---- the executor ---------------------------------------------------------------------------------- */

enum { DIR_ACT = 0, DIR_GRAD = 1 };

typedef struct {
    ds_p2p_msg msg;
    int used;
} pool_msg;

struct ds_pipe_net {
    ds_model *m;
    ds_pipe_opts o;
    int rank, pp, D, depth, overlap, lookahead;
    int *first; /* [pp + 1] */
    ds_pipe_schedule sched;
    int sched_n;               /* micro-batches sched was made for (0: none) */
    ds_pipe_op *fwd_ops;       /* forward-only list */
    int cap_fwd;
    int *slot_of;              /* [2 n]: activation slot of (mb, chunk) */
    int *free_slot, n_free, n_slots;
    int cap_mb;
    float *dlogp, *dmtp;       /* [n][ntok], [n][depth][ntok] */
    size_t cap_tok;
    pool_msg *sends, *recvs;
    int n_sends, n_recvs;
    int *recv_of;              /* [ops]: pool entry of the receive op i needs, -1 none, -2 not posted */
    int cap_ops;
    int err;                   /* an error met while polling */
    ds_pipe_stats st;
};

static int stage_of(const ds_pipe_net *p, int chunk) { return chunk ? p->pp - 1 - p->rank : p->rank; }
static int rank_of(const ds_pipe_net *p, int stage, int chunk) { return chunk ? p->pp - 1 - stage : stage; }
static int tag_of(int mb, int chunk, int dir) { return (mb * 2 + chunk) * 2 + dir; }

int ds_pipe_net_chunk_layers(const ds_pipe_net *p, int chunk, int *l0, int *l1) {
    if (chunk < 0 || chunk > (p->o.kind == DS_PIPE_DUALPIPE ? 1 : 0)) return *l0 = *l1 = -1;
    int s = stage_of(p, chunk);
    *l0 = p->first[s], *l1 = p->first[s + 1];
    return 0;
}

/* drive every open message (MPI progresses only inside its calls) */
static void poll_all(void *ctx) {
    ds_pipe_net *p = ctx;
    for (int g = 0; g < 2; g++) {
        pool_msg *pm = g ? p->recvs : p->sends;
        int n = g ? p->n_recvs : p->n_sends;
        for (int i = 0; i < n; i++) {
            int done;
            if (pm[i].msg.active && ds_p2p_test(&pm[i].msg, &done) && !p->err) p->err = DS_ERR;
        }
    }
}

/* a free pool entry with room for bytes */
static int pool_get(pool_msg **pool, int *n, size_t bytes, int sends) {
    for (int i = 0; i < *n; i++) {
        pool_msg *e = &(*pool)[i];
        int done = 1;
        if (e->used) continue;
        if (sends && e->msg.active) DS_TRY(ds_p2p_test(&e->msg, &done));
        if (!done || e->msg.active) continue;
        DS_TRY(ds_p2p_alloc(&e->msg, bytes));
        e->used = 1;
        return i;
    }
    pool_msg *np = realloc(*pool, sizeof *np * (size_t)(*n + 1));
    if (!np) return ds_fail(DS_ERR, "out of memory: pipeline messages");
    *pool = np;
    memset(&np[*n], 0, sizeof np[*n]);
    DS_TRY(ds_p2p_alloc(&np[*n].msg, bytes));
    np[*n].used = 1;
    return (*n)++;
}

/* the receive op o needs: peer and tag, or -1 */
static int recv_need(const ds_pipe_net *p, const ds_pipe_op *o, int *tag) {
    int s = stage_of(p, o->chunk);
    if (o->kind == DS_PIPE_F && s > 0) {
        *tag = tag_of(o->mb, o->chunk, DIR_ACT);
        return rank_of(p, s - 1, o->chunk);
    }
    if ((o->kind == DS_PIPE_B || o->kind == DS_PIPE_BW) && s < p->pp - 1) {
        *tag = tag_of(o->mb, o->chunk, DIR_GRAD);
        return rank_of(p, s + 1, o->chunk);
    }
    return -1;
}

static int post_recv(ds_pipe_net *p, const ds_pipe_op *ops, int i, size_t bytes) {
    int tag, peer = recv_need(p, &ops[i], &tag);
    if (peer < 0) {
        p->recv_of[i] = -1;
        return 0;
    }
    int k = pool_get(&p->recvs, &p->n_recvs, bytes, 0);
    if (k < 0) return k;
    p->recv_of[i] = k;
    return ds_p2p_irecv(p->o.pp_comm, peer, tag, &p->recvs[k].msg);
}

/* wait for op i's message and copy its payload to dst */
static int take_recv(ds_pipe_net *p, const ds_pipe_op *ops, int i, size_t bytes, float *dst) {
    if (p->recv_of[i] == -2) DS_TRY(post_recv(p, ops, i, bytes));
    pool_msg *e = &p->recvs[p->recv_of[i]];
    DS_TRY(ds_p2p_wait(&e->msg));
    memcpy(dst, ds_p2p_payload(&e->msg), bytes);
    e->used = 0;
    p->st.received++;
    return 0;
}

static int send_to(ds_pipe_net *p, int peer, int tag, const float *src, size_t bytes) {
    int k = pool_get(&p->sends, &p->n_sends, bytes, 1);
    if (k < 0) return k;
    pool_msg *e = &p->sends[k];
    memcpy(ds_p2p_payload(&e->msg), src, bytes);
    DS_TRY(ds_p2p_isend(p->o.pp_comm, peer, tag, &e->msg));
    if (!p->overlap) /* no overlap: the sender computes nothing while its message is on the way (it does
                        not wait for the receiver: blocking sends both ways would deadlock 1F1B) */
        ds_p2p_sleep_until(ds_p2p_now() + ds_p2p_delay());
    e->used = 0; /* reusable once its send completes (pool_get tests it) */
    p->st.sent++;
    return 0;
}

int ds_pipe_net_create(ds_pipe_net **out, ds_model *m, const ds_pipe_opts *o) {
    *out = NULL;
    if (!ds_ops_on_host(ds_model_ops(m)))
        return ds_fail(DS_EUSAGE, "--pp runs on the CPU backend only: activations travel through host memory");
    ds_pipe_net *p = calloc(1, sizeof *p);
    if (!p) return ds_fail(DS_ERR, "out of memory: pipeline");
    p->m = m;
    p->o = *o;
    p->pp = o->pp;
    p->rank = o->pp_comm ? o->pp_comm->rank : 0;
    p->D = ds_model_config(m)->hidden_size;
    p->depth = ds_model_mtp_depth(m);
    const char *ov = getenv("DS_PP_OVERLAP");
    p->overlap = !(ov && !strcmp(ov, "0"));
    p->lookahead = p->overlap ? 2 * o->pp + 4 : 0;
    p->first = calloc((size_t)o->pp + 1, sizeof *p->first);
    int rc = p->first ? 0 : ds_fail(DS_ERR, "out of memory: pipeline");
    if (!rc) rc = ds_pipe_split_layers(ds_model_config(m), o->pp, o->seq_len, o->stages, p->first);
    if (rc) {
        ds_pipe_net_free(p);
        return rc;
    }
    ds_model_set_poll(m, poll_all, p);
    *out = p;
    return 0;
}

void ds_pipe_net_free(ds_pipe_net *p) {
    if (!p) return;
    ds_model_set_poll(p->m, NULL, NULL);
    for (int i = 0; i < p->n_sends; i++) {
        if (p->sends[i].msg.active) ds_p2p_wait(&p->sends[i].msg);
        ds_p2p_free(&p->sends[i].msg);
    }
    for (int i = 0; i < p->n_recvs; i++) ds_p2p_free(&p->recvs[i].msg);
    free(p->sends), free(p->recvs), free(p->recv_of);
    ds_pipe_schedule_free(&p->sched);
    free(p->fwd_ops), free(p->slot_of), free(p->free_slot), free(p->dlogp), free(p->dmtp), free(p->first);
    free(p);
}

void ds_pipe_net_stats(const ds_pipe_net *p, ds_pipe_stats *out) { *out = p->st; }
void ds_pipe_net_reset_stats(ds_pipe_net *p) { memset(&p->st, 0, sizeof p->st); }

/* this rank's op list for n micro-batches */
static int op_list(ds_pipe_net *p, int n, int forward_only, const ds_pipe_op **ops, int *n_ops) {
    if (forward_only) { /* each micro-batch through the stages in order, chunk 0 (stage = rank) */
        if (n > p->cap_fwd) {
            ds_pipe_op *f = realloc(p->fwd_ops, sizeof *f * (size_t)n);
            if (!f) return ds_fail(DS_ERR, "out of memory: pipeline ops");
            p->fwd_ops = f, p->cap_fwd = n;
        }
        for (int i = 0; i < n; i++) p->fwd_ops[i] = (ds_pipe_op){.kind = DS_PIPE_F, .mb = i};
        *ops = p->fwd_ops, *n_ops = n;
        return 0;
    }
    if (p->sched_n != n) {
        ds_pipe_schedule_free(&p->sched);
        p->sched_n = 0;
        DS_TRY(ds_pipe_check(p->o.kind, p->pp, n));
        DS_TRY(ds_pipe_schedule_make(&p->sched, p->o.kind, p->pp, n));
        p->sched_n = n;
    }
    *ops = p->sched.ops[p->rank], *n_ops = p->sched.n_ops[p->rank];
    return 0;
}

/* room for n micro-batches of ntok tokens and n_ops ops; activation slots for the peak in flight */
static int reserve(ds_pipe_net *p, int n, size_t ntok, const ds_pipe_op *ops, int n_ops) {
    if (n > p->cap_mb || ntok > p->cap_tok) {
        int cm = n > p->cap_mb ? n : p->cap_mb;
        size_t ct = ntok > p->cap_tok ? ntok : p->cap_tok, d = (size_t)(p->depth > 0 ? p->depth : 1);
        free(p->slot_of), free(p->dlogp), free(p->dmtp);
        p->slot_of = malloc(sizeof(int) * 2 * (size_t)cm);
        p->dlogp = malloc(sizeof(float) * (size_t)cm * ct);
        p->dmtp = malloc(sizeof(float) * (size_t)cm * ct * d);
        p->cap_mb = cm, p->cap_tok = ct;
        if (!p->slot_of || !p->dlogp || !p->dmtp) {
            p->cap_mb = 0, p->cap_tok = 0;
            return ds_fail(DS_ERR, "out of memory: %d micro-batches in the pipeline", n);
        }
    }
    if (n_ops > p->cap_ops) {
        int *r = realloc(p->recv_of, sizeof *r * (size_t)n_ops);
        if (!r) return ds_fail(DS_ERR, "out of memory: pipeline ops");
        p->recv_of = r, p->cap_ops = n_ops;
    }
    int live = 0, peak = 1;
    for (int i = 0; i < n_ops; i++) {
        live += ops[i].kind == DS_PIPE_F ? 1 : ops[i].kind == DS_PIPE_W ? 0 : -1;
        if (live > peak) peak = live;
    }
    if (peak > p->n_slots) {
        DS_TRY(ds_model_act_slots(p->m, peak));
        int *f = realloc(p->free_slot, sizeof *f * (size_t)peak);
        if (!f) return ds_fail(DS_ERR, "out of memory: pipeline slots");
        p->free_slot = f, p->n_slots = peak;
    }
    p->n_free = 0;
    for (int s = p->n_slots - 1; s >= 0; s--) p->free_slot[p->n_free++] = s;
    return 0;
}

static int run_op(ds_pipe_net *p, const ds_train_micro_io *io, const ds_pipe_op *ops, int i, size_t ntok) {
    const ds_pipe_op *o = &ops[i];
    ds_model *m = p->m;
    const int c = o->chunk, mb = o->mb, s = stage_of(p, c), l0 = p->first[s], l1 = p->first[s + 1];
    const int key = mb * 2 + c, last = s == p->pp - 1;
    const size_t bytes = sizeof(float) * ntok * (size_t)p->D;
    float *dlogp = p->dlogp + (size_t)mb * p->cap_tok;
    float *dmtp = p->depth > 0 ? p->dmtp + (size_t)mb * p->cap_tok * (size_t)p->depth : NULL;
    double t0;
    if (o->kind == DS_PIPE_W) {
        t0 = ds_p2p_now();
        DS_TRY(ds_model_wgrad_run(m, key));
        p->st.busy += ds_p2p_now() - t0;
        return 0;
    }
    if (o->kind == DS_PIPE_F) {
        if (p->n_free == 0) return ds_fail(DS_ERR, "pipeline: no free activation slot for micro-batch %d", mb);
        int slot = p->slot_of[key] = p->free_slot[--p->n_free];
        ds_batch b = io->batch(io->ctx, mb);
        DS_TRY(ds_model_act_select(m, slot));
        DS_TRY(ds_model_prepare(m, &b));
        if (s > 0) DS_TRY(take_recv(p, ops, i, bytes, ds_model_hidden(m, l0)));
        t0 = ds_p2p_now();
        if (s == 0) DS_TRY(ds_model_embed_fwd(m));
        DS_TRY(ds_model_layers_fwd(m, l0, l1));
        ds_fwd_out f;
        if (last) DS_TRY(ds_model_head_fwd(m, &f));
        else ds_model_fwd_stats(m, &f);
        p->st.busy += ds_p2p_now() - t0;
        DS_TRY(io->done_fwd(io->ctx, mb, &f, last, io->forward_only ? NULL : dlogp, io->forward_only ? NULL : dmtp));
        if (!last) DS_TRY(send_to(p, rank_of(p, s + 1, c), tag_of(mb, c, DIR_ACT), ds_model_hidden(m, l1), bytes));
        if (io->forward_only) p->free_slot[p->n_free++] = slot;
        return p->err;
    }
    /* B or BW */
    DS_TRY(ds_model_act_select(m, p->slot_of[key]));
    if (!last) DS_TRY(take_recv(p, ops, i, bytes, ds_model_hidden_grad(m)));
    t0 = ds_p2p_now();
    if (o->kind == DS_PIPE_B) DS_TRY(ds_model_wgrad_defer(m, key));
    int rc = last ? ds_model_head_bwd(m, dlogp, dmtp) : 0;
    if (!rc) rc = ds_model_layers_bwd(m, l0, l1);
    if (!rc && s == 0) rc = ds_model_embed_bwd(m);
    ds_model_wgrad_defer(m, -1);
    p->st.busy += ds_p2p_now() - t0;
    DS_TRY(rc);
    if (s > 0) DS_TRY(send_to(p, rank_of(p, s - 1, c), tag_of(mb, c, DIR_GRAD), ds_model_hidden_grad(m), bytes));
    p->free_slot[p->n_free++] = p->slot_of[key];
    return p->err;
}

int ds_pipe_net_idle(void *pipe_net, int T, int backward, int mtp) {
    ds_pipe_net *p = pipe_net;
    const int s = stage_of(p, 0);
    if (backward) return ds_model_ep_idle_stage_bwd(p->m, T, p->first[s], p->first[s + 1], mtp && s == p->pp - 1);
    return ds_model_ep_idle_stage_fwd(p->m, T, p->first[s], p->first[s + 1], s == p->pp - 1);
}

/* expert parallelism: the stage's EP ranks (replicas) exchange inside every op, so their op lists, made for
 * their micro-batch counts, must be the same */
static int same_count_over_ep(const ds_pipe_net *p, int n) {
    if (!p->o.ep_comm || p->o.ep_comm->size < 2) return 0;
    double v[2] = {n, -n};
    DS_TRY(ds_comm_allreduce_max_f64(p->o.ep_comm, v, 2));
    if (v[0] != -v[1])
        return ds_fail(DS_EUSAGE, "pipeline stage %d: its expert-parallel ranks have %d to %d micro-batches this step; "
                       "they run one op list: the step's micro-batches must divide over the data-parallel replicas",
                       stage_of(p, 0), (int)-v[1], (int)v[0]);
    return 0;
}

int ds_pipe_net_run(void *pipe_net, const ds_train_micro_io *io) {
    ds_pipe_net *p = pipe_net;
    if (!io->forward_only) DS_TRY(same_count_over_ep(p, io->n));
    if (io->n < 1) return 0;
    const ds_pipe_op *ops = NULL;
    int n_ops = 0;
    DS_TRY(op_list(p, io->n, io->forward_only, &ops, &n_ops));
    ds_batch b0 = io->batch(io->ctx, 0);
    const size_t ntok = (size_t)b0.B * b0.T, bytes = sizeof(float) * ntok * (size_t)p->D;
    DS_TRY(reserve(p, io->n, ntok, ops, n_ops));
    const double t0 = ds_p2p_now();
    const ds_pipe_stats st0 = p->st;
    for (int i = 0; i < n_ops; i++) p->recv_of[i] = -2;
    p->err = 0;
    for (int i = 0; i < n_ops; i++) {
        /* receives go up ahead of the ops that need them, so the data flows while this rank computes */
        for (int j = i; j < n_ops && j <= i + p->lookahead; j++)
            if (p->recv_of[j] == -2) DS_TRY(post_recv(p, ops, j, bytes));
        const double busy_before = p->st.busy;
        int rc = run_op(p, io, ops, i, ntok);
        p->st.op_time[ops[i].kind] += p->st.busy - busy_before;
        p->st.op_count[ops[i].kind]++;
        if (rc) return ds_fail_ctx(rc, "pipeline rank %d, %s of micro-batch %d (chunk %d)", p->rank,
                                   ops[i].kind == DS_PIPE_F ? "forward" : ops[i].kind == DS_PIPE_W ? "weight gradient"
                                                                                                   : "backward",
                                   ops[i].mb, ops[i].chunk);
    }
    for (int i = 0; i < p->n_sends; i++)
        if (p->sends[i].msg.active) DS_TRY(ds_p2p_wait(&p->sends[i].msg));
    if (ds_model_wgrad_pending(p->m, -1))
        return ds_fail(DS_ERR, "pipeline: %d weight gradients left after the step", ds_model_wgrad_pending(p->m, -1));
    if (!io->forward_only) { /* the training steps' numbers: validation passes are left out */
        p->st.wall += ds_p2p_now() - t0;
        p->st.steps++;
    } else {
        p->st = st0;
    }
    return 0;
}
