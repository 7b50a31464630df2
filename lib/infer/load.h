/* load.h — a checkpoint into a model ready for inference.
 *
 * Owns: putting together what ds-generate needs from a checkpoint (a directory, a single .safetensors
 * file, or "-": io/checkpoint.h finds config, tokenizer and tensors): the ds_model with its weights
 * (model/weights.h: HF names, any float dtype, FP8 with block scales, expert biases; MTP modules only
 * when the checkpoint has them, as a transformers checkpoint does not) and the tokenizer when there is
 * one. Missing tensors and shape mismatches are one-line errors naming the tensor.
 */
#ifndef DS_INFER_LOAD_H
#define DS_INFER_LOAD_H

#include "model/model.h"
#include "tok/tokenizer.h"

typedef struct {
    ds_model *model;
    ds_tokenizer *tok;   /* NULL when the checkpoint carries no tokenizer */
    char *tokenizer_config; /* tokenizer_config.json text (NULL: none): its chat template */
    size_t tokenizer_config_len;
    char *generation_config; /* generation_config.json text (NULL: none): sampling defaults (infer/gencfg.h) */
    size_t generation_config_len;
    int has_mtp;         /* MTP tensors were present */
    int fp8_resident;    /* some Linear weights stayed FP8 (opts.fp8_resident): the model's Linear GEMMs
                            (ds_model_linear_ops) must be the engine's too */
    int bf16_resident;   /* the weights are bf16 (opts.bf16_resident): every GEMM goes through ds_model_ops */
    int mapped;          /* resident weights borrow the checkpoint's memory (kept open in ckpt) */
    struct ds_ckpt *ckpt; /* kept open while resident weights borrow its memory */
    char where[512];     /* the path as given, for messages */
} ds_loaded;

/* opts sizes the model's own activations (for --score: one sequence of up to the context length;
 * max_seq 0 = the config's max_position_embeddings). With opts->fp8_resident, an FP8 checkpoint's Linear
 * weights stay FP8, borrowed from the checkpoint's memory map (model.h); with opts->bf16_resident the other
 * weights are bf16, borrowed where the checkpoint stores BF16, else rounded; the weights' memory is logged
 * before they are read. */
int ds_load_checkpoint(const char *path, const ds_model_opts *opts, ds_loaded *out);
void ds_loaded_free(ds_loaded *l);

#endif
