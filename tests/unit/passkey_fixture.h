/* passkey_fixture.h — the tiny passkey task shared by tests/unit/test_passkey.c and
 * bench/passkey_extension.c: a byte-level tokenizer, the compact wording and a small dense MLA model, so the
 * test and the experiment it stands in for run on the same set-up. */
#ifndef DS_TESTS_PASSKEY_FIXTURE_H
#define DS_TESTS_PASSKEY_FIXTURE_H

#include "infer/passkey.h"
#include "io/config.h"
#include "tok/train.h"

/* byte-level tokenizer: DeepSeek's specials and the 256 bytes, no merges */
static ds_tokenizer *byte_tokenizer(void) {
    ds_tok_trainer *tr;
    ds_tokenizer *t = NULL;
    if (ds_tok_trainer_new(&tr)) return NULL;
    ds_tok_trainer_feed(tr, "a", 1);
    ds_tok_train_opts o = {.vocab_size = (uint32_t)ds_tok_n_default_specials + 256, .specials = ds_tok_default_specials,
                           .n_specials = ds_tok_n_default_specials};
    if (ds_tok_trainer_finish(tr, &o, &t)) t = NULL;
    ds_tok_trainer_free(tr);
    return t;
}

/* the compact task the tiny model learns: digits appear only in the needle and the answer */
static const ds_passkey_text tiny_text = {
    .intro = "",
    .filler = "the grass is green and the sky is blue. ",
    .needle = "key @{key}. ",
    .question = "\nwhat key? @",
    .answer = "{key}",
    .digits = 5,
};

static void tiny_config(ds_config *c, int vocab, int max_pos) {
    ds_config_defaults(c);
    c->vocab_size = vocab;
    c->hidden_size = 64;
    c->intermediate_size = 64;
    c->num_hidden_layers = 2;
    c->first_k_dense_replace = 2;
    c->n_routed_experts = 0;
    c->num_attention_heads = 4;
    c->num_key_value_heads = 4;
    c->q_lora_rank = 0;
    c->kv_lora_rank = 32;
    c->qk_nope_head_dim = 16;
    c->qk_rope_head_dim = 16;
    c->v_head_dim = 16;
    c->max_position_embeddings = max_pos;
    c->num_nextn_predict_layers = 0;
    c->ds_init_std = 0.02;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
}

#endif
