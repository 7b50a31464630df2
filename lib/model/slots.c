/* Activation slots: several stored forwards in one model, for pipeline stages that hold micro-batches
 * between their forward and backward (1F1B holds up to PP of them, DualPipe up to PP + 1 per rank).
 *
 * A slot is a whole activation arena laid out by the same ds_act_layout as the model's own, plus the host
 * state of the forward stored in it (batch geometry, expert offsets the grouped GEMMs read back, the
 * balance loss, and under expert parallelism each MoE layer's exchange plan, routed-token list and received
 * rows, which the backward exchanges by). Selecting a slot re-points the model's activation pointers into
 * its arena; nothing is copied. Slot 0 is the arena the model was created with. */
#include "model/internal.h"

#include "core/err.h"

#include <stdlib.h>
#include <string.h>

static void save_state(ds_model *m, ds_act_slot *s) {
    s->act = m->act;
    for (int l = 0; l < m->n_layers_total; l++) s->off_h[l] = m->tape[l].off_h;
    s->B = m->B, s->T = m->T, s->n = m->n, s->T_main = m->T_main;
    s->has_seg = m->has_seg, s->has_pad = m->has_pad, s->have_fwd = m->have_fwd;
    s->bal_loss = m->bal_loss;
    s->epl = m->epl;
}

static void load_state(ds_model *m, const ds_act_slot *s) {
    m->act = s->act;
    m->act.used = 0;
    ds_act_layout(m, &m->act, m->n_max);
    for (int l = 0; l < m->n_layers_total; l++) m->tape[l].off_h = s->off_h[l];
    m->B = s->B, m->T = s->T, m->n = s->n, m->T_main = s->T_main;
    m->has_seg = s->has_seg, m->has_pad = s->has_pad, m->have_fwd = s->have_fwd;
    m->bal_loss = s->bal_loss;
    m->epl = s->epl;
    m->cur_seg = m->has_seg ? m->seg : NULL;
    m->cur_keep = m->has_pad ? m->keep : NULL;
    m->cur_cs = m->cs;
    for (int j = 0; j < m->mtp_depth; j++) m->mtp[j].logp = m->mtp_logp + (size_t)j * m->n;
}

int ds_model_act_slots(ds_model *m, int k) {
    if (!m->opts.train) return ds_fail(DS_ERR, "model: activation slots need a training model");
    if (k < 1) return ds_fail(DS_ERR, "model: %d activation slots", k);
    if (k <= m->n_slots) return 0;
    ds_act_slot *ns = realloc(m->slot, sizeof *ns * (size_t)k);
    if (!ns) return ds_fail(DS_ERR, "out of memory: activation slots");
    m->slot = ns;
    int first = m->n_slots;
    if (first == 0) { /* the model's own arena becomes slot 0 */
        memset(&ns[0], 0, sizeof ns[0]);
        ns[0].off_h = calloc((size_t)m->n_layers_total + 1, sizeof(int64_t *));
        if (!ns[0].off_h) return ds_fail(DS_ERR, "out of memory: activation slots");
        save_state(m, &ns[0]);
        m->n_slots = first = 1;
        m->cur_slot = 0;
    }
    save_state(m, &ns[m->cur_slot]);
    const ds_dims *d = &m->dims;
    for (int i = first; i < k; i++) {
        ds_act_slot *s = &ns[i];
        memset(s, 0, sizeof *s);
        s->off_h = calloc((size_t)m->n_layers_total + 1, sizeof(int64_t *));
        if (!s->off_h) return ds_fail(DS_ERR, "out of memory: activation slots");
        m->n_slots = i + 1; /* freed with the model from here on */
        for (int l = 0; l < m->n_layers_total; l++) {
            s->off_h[l] = calloc((size_t)d->E + 2, sizeof(int64_t));
            if (!s->off_h[l]) return ds_fail(DS_ERR, "out of memory: activation slots");
        }
        if (m->ep_n > 1) DS_TRY(ds_moe_ep_layers_new(m, &s->epl)); /* its own exchange plans */
        s->act.cap = m->act.cap;
        s->act.base = m->ops->alloc(s->act.cap);
        if (!s->act.base) return ds_fail(DS_ERR, "out of memory: %zu bytes for an activation slot", s->act.cap);
        s->B = m->B, s->T = s->T_main = m->T_main, s->n = m->n;
        /* the RoPE frequencies live in the arena: each slot gets its copy */
        load_state(m, s);
        m->ops->copy(m->inv_freq_d, m->rope.inv_freq, sizeof(float) * (size_t)(d->dr / 2), DS_COPY_H2D);
        m->ops->sync();
        load_state(m, &ns[m->cur_slot]);
    }
    return 0;
}

int ds_model_act_select(ds_model *m, int slot) {
    if (slot < 0 || slot >= (m->n_slots ? m->n_slots : 1))
        return ds_fail(DS_ERR, "model: activation slot %d of %d", slot, m->n_slots ? m->n_slots : 1);
    if (!m->n_slots || slot == m->cur_slot) return 0;
    m->ops->sync(); /* queued work of the current slot reads its arena */
    save_state(m, &m->slot[m->cur_slot]);
    load_state(m, &m->slot[slot]);
    m->cur_slot = slot;
    return 0;
}

void ds_slots_free(ds_model *m) {
    if (!m->slot) return;
    if (m->cur_slot != 0) {
        save_state(m, &m->slot[m->cur_slot]);
        load_state(m, &m->slot[0]);
        m->cur_slot = 0;
    }
    for (int i = 1; i < m->n_slots; i++) {
        ds_act_slot *s = &m->slot[i];
        if (s->off_h)
            for (int l = 0; l < m->n_layers_total; l++) free(s->off_h[l]);
        free(s->off_h);
        ds_moe_ep_layers_free(m, s->epl);
        m->ops->free(s->act.base);
    }
    free(m->slot[0].off_h);
    free(m->slot);
    m->slot = NULL;
    m->n_slots = 0;
}
