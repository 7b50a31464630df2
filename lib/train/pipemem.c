/* What a pipeline stage's rank holds (pipemem.h). */
#include "train/pipemem.h"

#include "core/err.h"
#include "dist/dp.h"

#include <string.h>

void ds_pipe_hold(ds_pipe_kind kind, int pp, int rank, const int *first, int mtp, ds_model_hold *h) {
    memset(h, 0, sizeof *h);
    h->on = 1;
    const int n_chunks = kind == DS_PIPE_DUALPIPE ? 2 : 1;
    for (int c = 0; c < n_chunks; c++) {
        const int s = c ? pp - 1 - rank : rank;
        h->l0[c] = first[s], h->l1[c] = first[s + 1];
        if (s == 0) h->embed = 1;
        if (s == pp - 1) h->head = 1, h->embed |= mtp > 0;
    }
}

static int tc_f32(void *ctx, float *x, size_t n) { return ds_dp_allreduce_f32(ctx, x, n); }
static int tc_f64(void *ctx, double *x, size_t n) { return ds_dp_allreduce_f64(ctx, x, n); }
static int tc_i64(void *ctx, int64_t *x, size_t n) { return ds_dp_allreduce_i64(ctx, x, n); }
static int tc_rs(void *ctx, float *x, size_t n) { return ds_dp_reduce_scatter_f32(ctx, x, n); }
static int tc_ag(void *ctx, float *x, size_t n) { return ds_dp_allgather_f32(ctx, x, n); }

ds_train_comm ds_train_comm_of(const ds_comm *c) {
    return (ds_train_comm){.rank = c->rank, .size = c->size, .allreduce_f32 = tc_f32, .allreduce_f64 = tc_f64,
                           .allreduce_i64 = tc_i64, .reduce_scatter_f32 = tc_rs, .allgather_f32 = tc_ag,
                           .ctx = (void *)c};
}

int ds_pipe_groups_make(ds_pipe_groups *pg, const ds_layout *L, const ds_comm *world, ds_pipe_kind kind, const ds_model *m,
                        const ds_train_comm *experts, int whole) {
    memset(pg, 0, sizeof *pg);
    const int pp = L->pp, s = L->stage, dual = kind == DS_PIPE_DUALPIPE;
    const int mtp = ds_model_config(m)->num_nextn_predict_layers > 0;
    /* the chunks' holders: the stage's DP ranks, under DualPipe those of stages s and PP-1-s; the
     * embedding's: stage 0's and (1F1B/ZB1P with MTP) stage PP-1's. Both splits are collective over the
     * world, so every rank makes both. */
    const int chunk_color = dual ? (s < pp - 1 - s ? s : pp - 1 - s) : s;
    const int embed_shared = !whole && !dual && mtp && pp > 1, holds_embed = s == 0 || (embed_shared && s == pp - 1);
    DS_TRY(ds_comm_split(world, chunk_color, world->rank, &pg->chunk));
    pg->have_chunk = 1;
    int rc = ds_comm_split(world, holds_embed ? 0 : 1, world->rank, &pg->embed);
    pg->have_embed = !rc;
    if (rc) {
        ds_pipe_groups_free(pg);
        return rc;
    }
    pg->tchunk = ds_train_comm_of(&pg->chunk);
    pg->tembed = ds_train_comm_of(&pg->embed);
    pg->tworld = ds_train_comm_of(world);
    size_t exp_off, exp_n;
    ds_model_expert_range(m, &exp_off, &exp_n, NULL, NULL);
    const size_t n = ds_model_num_params(m);
    if (whole) { /* with --ep the experts meet over the ranks holding the same ones */
        pg->g[pg->n++] = (ds_train_group){.offset = 0, .numel = exp_n && experts ? exp_off : n, .comm = &pg->tworld};
        if (exp_n && experts) pg->g[pg->n++] = (ds_train_group){.offset = exp_off, .numel = exp_n, .comm = experts};
        return 0;
    }
    size_t at = 0;
    int np;
    const ds_param *p = ds_model_params_info(m, &np);
    if (embed_shared && np > 0 && p[0].kind == DS_PARAM_EMBED) { /* the table starts with the embedding */
        pg->g[pg->n++] = (ds_train_group){.offset = 0, .numel = p[0].numel, .comm = &pg->tembed};
        at = p[0].numel;
    }
    if (exp_off > at) pg->g[pg->n++] = (ds_train_group){.offset = at, .numel = exp_off - at, .comm = &pg->tchunk};
    if (exp_n > 0) {
        if (!experts) {
            ds_pipe_groups_free(pg);
            return ds_fail(DS_ERR, "pipeline: routed experts split over ranks without their group");
        }
        pg->g[pg->n++] = (ds_train_group){.offset = exp_off, .numel = exp_n, .comm = experts};
    }
    return 0;
}

void ds_pipe_groups_free(ds_pipe_groups *pg) {
    if (pg->have_chunk) ds_comm_free_split(&pg->chunk);
    if (pg->have_embed) ds_comm_free_split(&pg->embed);
    memset(pg, 0, sizeof *pg);
}
