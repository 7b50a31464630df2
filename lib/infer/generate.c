#include "infer/generate.h"

#include "core/err.h"
#include "core/log.h"

#include <stdlib.h>
#include <string.h>

const char *ds_finish_name(ds_finish f) {
    switch (f) {
    case DS_FINISH_LENGTH: return "length";
    case DS_FINISH_EOS: return "eos";
    case DS_FINISH_STOP: return "stop";
    default: return "none";
    }
}

typedef struct {
    int active;
    ds_gen_seq s;
    int32_t *prompt, *tokens;
    float *logprobs;
    int prefilled;   /* prompt positions in the cache */
    int has_draft;   /* MTP draft waiting for verification */
    int32_t draft;
    ds_dist q;       /* the distribution the draft was drawn from */
    ds_gen_seq_opts so; /* this sequence's sampling, stream and budget */
} slot_state;

typedef struct {
    ds_infer *e;
    const ds_gen_opts *o;
    const ds_gen_io *io;
    ds_gen_stats *st;
    const ds_config *cfg;
    int V, D, max_len, n_slots, max_rows, input_done;
    slot_state *slot;
    ds_sampler sampler;
    ds_dist p;
    /* per-step rows */
    int32_t *tok, *sl, *pos, *out_rows, *row_of; /* row_of[k]: first row of the k-th slot in the step */
    float *logits, *hidden, *mtp_logits;
    /* MTP rows */
    int32_t *m_tok, *m_sl, *m_pos, *m_draft_slot, *m_out;
    float *m_h;
} gen;

/* Append token tok (log-probability logp; lg its logits, NULL when they were computed elsewhere) and
 * decide whether the sequence ends. */
static int emit_lp(gen *g, slot_state *s, int32_t tok, double logp, const float *lg) {
    s->s.logits = lg;
    s->tokens[s->s.n] = tok;
    s->logprobs[s->s.n] = (float)logp;
    s->s.n++;
    s->s.tokens = s->tokens;
    s->s.logprobs = s->logprobs;
    if (s->s.n == 1) s->s.t_first = ds_now();
    g->st->new_tokens++;
    int stop = 0;
    DS_TRY(g->io->on_token(g->io->sink, &s->s, &stop));
    s->s.logits = NULL;
    if ((g->o->eos_id >= 0 && tok == g->o->eos_id) || ds_eos_ids_has(&g->o->eos_more, tok)) s->s.finish = DS_FINISH_EOS;
    else if (stop) s->s.finish = DS_FINISH_STOP;
    else if (s->s.n >= s->so.max_new || (g->o->max_length > 0 && s->s.prompt_len + s->s.n >= g->o->max_length))
        s->s.finish = DS_FINISH_LENGTH;
    if (s->s.finish) {
        s->s.t_end = ds_now();
        s->active = 0;
        s->has_draft = 0;
        DS_TRY(g->io->on_done(g->io->sink, &s->s));
    }
    return DS_OK;
}

static int emit(gen *g, slot_state *s, int32_t tok, const float *lg) {
    return emit_lp(g, s, tok, ds_logprob(lg, g->V, tok), lg);
}

/* Decode side of disaggregation: slot k's prompt was prefilled elsewhere; its latents, first token and
 * draft come from io->restore, and the first token is emitted as prefill_step would have. */
static int restore_seq(gen *g, int k, slot_state *s) {
    ds_gen_handoff h = {.slot = k, .q = g->o->mtp ? &s->q : &g->p};
    DS_TRY(g->io->restore(g->io->src, g->e, &h));
    if (g->o->mtp && !h.has_draft)
        return ds_fail(DS_ERR, "prompt %llu: prefilled without MTP state: run the prefill with --mtp",
                       (unsigned long long)s->s.id);
    if (h.token < 0 || h.token >= g->V || (h.has_draft && (h.draft < 0 || h.draft >= g->V)))
        return ds_fail(DS_ERR, "prompt %llu: prefilled token outside the vocabulary of %d", (unsigned long long)s->s.id, g->V);
    s->s.truncated = h.truncated;
    s->prefilled = s->s.prompt_len;
    ds_infer_cache(g->e)->len[k] = s->prefilled;
    DS_TRY(emit_lp(g, s, h.token, h.logprob, NULL));
    if (s->active && g->o->mtp) {
        s->draft = h.draft;
        s->has_draft = 1;
    }
    return DS_OK;
}

static int admit(gen *g) {
    for (int k = 0; k < g->o->batch && !g->input_done; k++) {
        slot_state *s = &g->slot[k];
        if (s->active) continue;
        uint64_t id = 0;
        const int32_t *ids = NULL;
        int n = 0, got = 0;
        DS_TRY(g->io->next(g->io->src, &id, &ids, &n, &got));
        if (got == DS_GEN_WAIT) break;
        if (!got) {
            g->input_done = 1;
            break;
        }
        if (n <= 0)
            return ds_fail(DS_ERR, "prompt %llu: no tokens", (unsigned long long)id);
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= g->V)
                return ds_fail(DS_ERR, "prompt %llu: token %d: id %d outside the vocabulary of %d", (unsigned long long)id,
                               i, ids[i], g->V);
        /* transformers refuses a prompt that leaves max_length no room, rather than emit one token */
        if (g->o->max_length > 0 && n >= g->o->max_length)
            return ds_fail(DS_ERR, "prompt %llu: %d tokens reach the max_length of %d (prompt included): give --max-new",
                           (unsigned long long)id, n, g->o->max_length);
        s->so = (ds_gen_seq_opts){.sampling = g->o->sampling, .stream = id, .max_new = g->o->max_new};
        if (g->io->seq_opts) {
            DS_TRY(g->io->seq_opts(g->io->src, id, &s->so));
            DS_TRY(ds_sampling_check(&s->so.sampling));
            if (s->so.max_new < 1 || s->so.max_new > g->o->max_new)
                return ds_fail(DS_ERR, "prompt %llu: %d new tokens: must be in [1, %d]", (unsigned long long)id,
                               s->so.max_new, g->o->max_new);
        }
        int max_new = g->o->max_length > 0 && g->o->max_length - n < s->so.max_new ? g->o->max_length - n : s->so.max_new;
        int drop = 0;
        if ((int64_t)n + max_new > g->max_len) {
            if (g->io->restore) /* the cache arrives whole: nothing to cut */
                return ds_fail(DS_ERR, "prompt %llu: %d prefilled tokens + %d new exceed the context of %d tokens: give a larger --ctx",
                               (unsigned long long)id, n, max_new, g->max_len);
            if (!g->o->truncate) {
                ds_fail(DS_ERR, "prompt %llu: %d tokens + %d new exceed the context of %d tokens",
                        (unsigned long long)id, n, max_new, g->max_len);
                ds_hint("--truncate keeps the last %d tokens of such prompts; --max-new or --ctx change the budget",
                        g->max_len - max_new);
                return DS_ERR;
            }
            drop = n - (g->max_len - max_new);
        }
        memcpy(s->prompt, ids + drop, sizeof(int32_t) * (size_t)(n - drop));
        memset(&s->s, 0, sizeof s->s);
        s->s.id = id;
        s->s.prompt = s->prompt;
        s->s.prompt_len = n - drop;
        s->s.truncated = drop;
        s->s.tokens = s->tokens;
        s->s.logprobs = s->logprobs;
        s->s.t_admit = ds_now();
        s->prefilled = 0;
        s->has_draft = 0;
        s->active = 1;
        g->st->prompts++;
        g->st->prompt_tokens += n - drop;
        if (g->io->restore) DS_TRY(restore_seq(g, k, s));
    }
    return DS_OK;
}

/* Draft the next token of slot s from MTP logits row `lg`; idx = the generated index it would take. */
static int draft_from(gen *g, slot_state *s, const float *lg) {
    int32_t d;
    DS_TRY(ds_sampler_dist(&g->sampler, lg, &s->so.sampling, &s->q));
    d = s->q.n == 1 ? s->q.ids[0]
                    : ds_dist_draw(&s->q, ds_draw_uniform(s->so.sampling.seed, s->so.stream, (uint64_t)s->s.n, DS_DRAW_DRAFT));
    s->draft = d;
    s->has_draft = 1;
    return DS_OK;
}

/* Run MTP over the collected rows; rows whose m_draft_slot >= 0 produce that slot's next draft (only
 * they get logits: the others just fill the MTP cache). */
static int run_mtp(gen *g, int m) {
    if (!m) return DS_OK;
    int n_out = 0;
    for (int r = 0; r < m; r++)
        if (g->m_draft_slot[r] >= 0) g->m_out[n_out++] = r;
    double t0 = ds_now();
    DS_TRY(ds_infer_mtp(g->e, m, g->m_tok, g->m_h, g->m_sl, g->m_pos, n_out, g->m_out, g->mtp_logits));
    g->st->mtp_s += ds_now() - t0;
    for (int k = 0; k < n_out; k++)
        DS_TRY(draft_from(g, &g->slot[g->m_draft_slot[g->m_out[k]]], g->mtp_logits + (size_t)k * g->V));
    return DS_OK;
}

static void mtp_row(gen *g, int *m, const float *h, int32_t next, int slot, int pos, int drafts) {
    memcpy(g->m_h + (size_t)*m * g->D, h, sizeof(float) * (size_t)g->D);
    g->m_tok[*m] = next;
    g->m_sl[*m] = slot;
    g->m_pos[*m] = pos;
    g->m_draft_slot[*m] = drafts ? slot : -1;
    (*m)++;
}

static int prefill_step(gen *g) {
    int rows = 0, n_out = 0, all_fresh = 1;
    int seg_slot[256], seg_r0[256], seg_k[256], nseg = 0;
    for (int k = 0; k < g->o->batch && rows < g->o->prefill_chunk && nseg < 256; k++) {
        slot_state *s = &g->slot[k];
        if (!s->active || s->prefilled >= s->s.prompt_len) continue;
        int take = s->s.prompt_len - s->prefilled;
        if (take > g->o->prefill_chunk - rows) take = g->o->prefill_chunk - rows;
        if (s->prefilled) all_fresh = 0;
        seg_slot[nseg] = k;
        seg_r0[nseg] = rows;
        seg_k[nseg++] = take;
        for (int j = 0; j < take; j++) {
            g->tok[rows] = s->prompt[s->prefilled + j];
            g->sl[rows] = k;
            g->pos[rows] = s->prefilled + j;
            rows++;
        }
        if (s->prefilled + take == s->s.prompt_len) g->out_rows[n_out++] = rows - 1;
    }
    ds_infer_step st = {.n = rows, .tok = g->tok, .slot = g->sl, .pos = g->pos,
                        .form = all_fresh ? g->o->prefill_form : DS_ATTN_ABSORBED,
                        .n_out = n_out, .out_rows = g->out_rows, .logits = g->logits,
                        .hidden = g->o->mtp ? g->hidden : NULL};
    double t0 = ds_now();
    DS_TRY(ds_infer_forward(g->e, &st));
    g->st->prefill_s += ds_now() - t0;
    g->st->prefill_calls++;
    int out = 0, m = 0;
    for (int q = 0; q < nseg; q++) {
        slot_state *s = &g->slot[seg_slot[q]];
        s->prefilled += seg_k[q];
        ds_infer_cache(g->e)->len[seg_slot[q]] = s->prefilled;
        const int complete = s->prefilled == s->s.prompt_len;
        if (complete) {
            const float *lg = g->logits + (size_t)out++ * g->V;
            int32_t tok;
            DS_TRY(ds_sample_next(&g->sampler, lg, &s->so.sampling, s->so.stream, 0, &g->p, &tok));
            if (g->io->on_prefilled) { /* handed off below: whether it ends is the decoding side's call */
                s->tokens[0] = tok;
                s->logprobs[0] = (float)ds_logprob(lg, g->V, tok);
                s->s.n = 1;
                s->s.t_first = ds_now();
                g->st->new_tokens++;
            } else {
                DS_TRY(emit(g, s, tok, lg));
            }
        }
        if (!g->o->mtp) continue;
        /* the MTP cache needs (h_i, token i+1) at every prompt position; the last one pairs with the
         * token just sampled and drafts the one after it */
        for (int j = 0; j < seg_k[q]; j++) {
            const int r = seg_r0[q] + j, p = g->pos[r];
            const float *h = g->hidden + (size_t)r * g->D;
            if (p + 1 < s->s.prompt_len) mtp_row(g, &m, h, s->prompt[p + 1], seg_slot[q], p, 0);
            else if (s->active) mtp_row(g, &m, h, s->tokens[0], seg_slot[q], p, 1);
        }
    }
    DS_TRY(run_mtp(g, m));
    if (!g->io->on_prefilled) return DS_OK;
    for (int q = 0; q < nseg; q++) {
        slot_state *s = &g->slot[seg_slot[q]];
        if (s->prefilled < s->s.prompt_len) continue;
        s->s.tokens = s->tokens;
        s->s.logprobs = s->logprobs;
        ds_gen_handoff h = {.slot = seg_slot[q], .truncated = s->s.truncated, .token = s->tokens[0],
                            .logprob = s->logprobs[0], .has_draft = s->has_draft, .draft = s->draft, .q = &s->q};
        DS_TRY(g->io->on_prefilled(g->io->sink, g->e, &s->s, &s->so, &h));
        s->active = 0;
        s->has_draft = 0;
    }
    return DS_OK;
}

static int decode_step(gen *g) {
    int rows = 0, nslots = 0;
    int which[1024];
    for (int k = 0; k < g->o->batch; k++) {
        slot_state *s = &g->slot[k];
        if (!s->active || s->prefilled < s->s.prompt_len) continue;
        const int p = s->s.prompt_len + s->s.n - 1; /* position of the last token, not yet in the cache */
        which[nslots] = k;
        g->row_of[nslots++] = rows;
        g->tok[rows] = s->tokens[s->s.n - 1];
        g->sl[rows] = k;
        g->pos[rows++] = p;
        if (s->has_draft) {
            g->tok[rows] = s->draft;
            g->sl[rows] = k;
            g->pos[rows++] = p + 1;
        }
    }
    if (!rows) return DS_OK;
    ds_infer_step st = {.n = rows, .tok = g->tok, .slot = g->sl, .pos = g->pos, .form = DS_ATTN_ABSORBED,
                        .n_out = rows, .out_rows = NULL, .logits = g->logits, .hidden = g->o->mtp ? g->hidden : NULL};
    double t0 = ds_now();
    DS_TRY(ds_infer_forward(g->e, &st));
    g->st->decode_s += ds_now() - t0;
    g->st->decode_steps++;
    int m = 0;
    for (int q = 0; q < nslots; q++) {
        slot_state *s = &g->slot[which[q]];
        const int r = g->row_of[q], p = g->pos[r], step = s->s.n, had_draft = s->has_draft;
        const float *lg0 = g->logits + (size_t)r * g->V;
        int32_t tok;
        int accepted = 0;
        if (had_draft) {
            DS_TRY(ds_sampler_dist(&g->sampler, lg0, &s->so.sampling, &g->p));
            accepted = ds_spec_verify(&g->p, &s->q, s->draft, s->so.sampling.seed, s->so.stream, (uint64_t)step, &tok);
            s->s.drafted++;
            s->s.accepted += accepted;
            g->st->drafted++;
            g->st->accepted += accepted;
            s->has_draft = 0;
        } else {
            DS_TRY(ds_sample_next(&g->sampler, lg0, &s->so.sampling, s->so.stream, (uint64_t)step, &g->p, &tok));
        }
        DS_TRY(emit(g, s, tok, lg0));
        ds_infer_cache(g->e)->len[which[q]] = p + 1;
        if (accepted && s->active) { /* the draft was right: the verifier's next row is a free token */
            const float *lg1 = lg0 + g->V;
            int32_t bonus;
            DS_TRY(ds_sample_next(&g->sampler, lg1, &s->so.sampling, s->so.stream, (uint64_t)step + 1, &g->p, &bonus));
            DS_TRY(emit(g, s, bonus, lg1));
            ds_infer_cache(g->e)->len[which[q]] = p + 2;
        }
        if (!g->o->mtp || !s->active) continue;
        const float *h0 = g->hidden + (size_t)r * g->D;
        if (accepted) {
            mtp_row(g, &m, h0, tok, which[q], p, 0);
            mtp_row(g, &m, h0 + g->D, s->tokens[s->s.n - 1], which[q], p + 1, 1);
        } else {
            mtp_row(g, &m, h0, tok, which[q], p, 1);
        }
    }
    return run_mtp(g, m);
}

static void gen_free(gen *g) {
    if (g->slot)
        for (int k = 0; k < g->n_slots; k++) {
            free(g->slot[k].prompt);
            free(g->slot[k].tokens);
            free(g->slot[k].logprobs);
            ds_dist_free(&g->slot[k].q);
        }
    free(g->slot);
    ds_sampler_free(&g->sampler);
    ds_dist_free(&g->p);
    free(g->tok);
    free(g->sl);
    free(g->pos);
    free(g->out_rows);
    free(g->row_of);
    free(g->logits);
    free(g->hidden);
    free(g->mtp_logits);
    free(g->m_tok);
    free(g->m_sl);
    free(g->m_pos);
    free(g->m_draft_slot);
    free(g->m_out);
    free(g->m_h);
}

int ds_generate(ds_infer *e, const ds_gen_opts *o, const ds_gen_io *io, ds_gen_stats *stats) {
    memset(stats, 0, sizeof *stats);
    const ds_kvcache *c = ds_infer_cache(e);
    gen g = {.e = e, .o = o, .io = io, .st = stats, .cfg = ds_infer_config(e)};
    g.V = g.cfg->vocab_size;
    g.D = g.cfg->hidden_size;
    g.max_len = c->max_len;
    g.n_slots = o->batch;
    DS_TRY(ds_sampling_check(&o->sampling));
    if (o->max_new < 1) return ds_fail(DS_EUSAGE, "--max-new %d: must be at least 1", o->max_new);
    if (o->max_new >= g.max_len)
        return ds_fail(DS_EUSAGE, "--max-new %d: leaves no room for a prompt in the context of %d tokens", o->max_new,
                       g.max_len);
    if (o->batch < 1 || o->batch > c->slots || o->batch > 1024)
        return ds_fail(DS_EUSAGE, "--batch %d: must be in [1, %d]", o->batch, c->slots < 1024 ? c->slots : 1024);
    if (ds_infer_max_out(e) < 2 * o->batch)
        return ds_fail(DS_ERR, "generate: the engine gives logits for %d rows, %d sequences need %d",
                       ds_infer_max_out(e), o->batch, 2 * o->batch);
    if (o->mtp && c->n_layers <= c->n_main)
        return ds_fail(DS_ERR, "speculative decoding: the engine has no MTP cache layer");
    /* rows per forward: a prefill chunk, or every sequence's last token plus its draft */
    g.max_rows = o->prefill_chunk > 2 * o->batch ? o->prefill_chunk : 2 * o->batch;
    if (o->prefill_chunk < 1) return ds_fail(DS_EUSAGE, "prefill chunk %d: must be positive", o->prefill_chunk);
    const size_t R = (size_t)g.max_rows;
    int rc = DS_OK;
    g.slot = calloc((size_t)g.n_slots, sizeof *g.slot);
    g.tok = malloc(R * sizeof(int32_t));
    g.sl = malloc(R * sizeof(int32_t));
    g.pos = malloc(R * sizeof(int32_t));
    g.out_rows = malloc(R * sizeof(int32_t));
    g.row_of = malloc(R * sizeof(int32_t));
    /* logits: at most every sequence's verified token and draft */
    g.logits = malloc((size_t)2 * o->batch * (size_t)g.V * sizeof(float));
    if (o->mtp) {
        g.hidden = malloc(R * (size_t)g.D * sizeof(float));
        g.mtp_logits = malloc((size_t)o->batch * (size_t)g.V * sizeof(float));
        g.m_out = malloc(R * sizeof(int32_t));
        g.m_tok = malloc(R * sizeof(int32_t));
        g.m_sl = malloc(R * sizeof(int32_t));
        g.m_pos = malloc(R * sizeof(int32_t));
        g.m_draft_slot = malloc(R * sizeof(int32_t));
        g.m_h = malloc(R * (size_t)g.D * sizeof(float));
    }
    int oom = !g.slot || !g.tok || !g.sl || !g.pos || !g.out_rows || !g.row_of || !g.logits ||
              (o->mtp && (!g.hidden || !g.mtp_logits || !g.m_tok || !g.m_sl || !g.m_pos || !g.m_draft_slot || !g.m_h || !g.m_out));
    for (int k = 0; !oom && k < g.n_slots; k++) {
        slot_state *s = &g.slot[k];
        s->prompt = malloc((size_t)g.max_len * sizeof(int32_t));
        s->tokens = malloc((size_t)(o->max_new + 1) * sizeof(int32_t));
        s->logprobs = malloc((size_t)(o->max_new + 1) * sizeof(float));
        oom = !s->prompt || !s->tokens || !s->logprobs;
        if (!oom && o->mtp && ds_dist_init(&s->q, g.V)) oom = 1;
    }
    if (oom || ds_sampler_init(&g.sampler, g.V) || ds_dist_init(&g.p, g.V)) {
        gen_free(&g);
        return ds_fail(DS_ERR, "generate: out of memory for %d sequences", g.n_slots);
    }
    for (;;) {
        if ((rc = admit(&g))) break;
        int any = 0, prefill = 0;
        for (int k = 0; k < g.n_slots; k++) {
            any |= g.slot[k].active;
            prefill |= g.slot[k].active && g.slot[k].prefilled < g.slot[k].s.prompt_len;
        }
        if (!any && g.input_done) break;
        if (!any) continue; /* the source said DS_GEN_WAIT with nothing in flight: ask again */
        if ((rc = prefill ? prefill_step(&g) : decode_step(&g))) break;
    }
    gen_free(&g);
    return rc;
}
