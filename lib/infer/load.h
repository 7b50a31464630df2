/* load.h — a checkpoint into a model ready for inference.
 *
 * Owns: reading a checkpoint given as a directory (config.json, model.safetensors or shards with an
 * index, tokenizer.json), a single .safetensors file, or "-" (the stream form: config and tokenizer in
 * __metadata__, tensors in header order) into a ds_model: every parameter by its Hugging Face name
 * (any float dtype converted to fp32), the expert-bias buffers, MTP modules only when the checkpoint
 * has them (a transformers checkpoint has none: the model is then built without), and the tokenizer
 * when there is one. Missing tensors and shape mismatches are one-line errors naming the tensor.
 */
#ifndef DS_INFER_LOAD_H
#define DS_INFER_LOAD_H

#include "model/model.h"
#include "tok/tokenizer.h"

typedef struct {
    ds_model *model;
    ds_tokenizer *tok;   /* NULL when the checkpoint carries no tokenizer */
    int has_mtp;         /* MTP tensors were present */
    char where[512];     /* the path as given, for messages */
} ds_loaded;

/* opts sizes the model's own activations (for --score: one sequence of up to the context length;
 * max_seq 0 = the config's max_position_embeddings). */
int ds_load_checkpoint(const char *path, const ds_model_opts *opts, ds_loaded *out);
void ds_loaded_free(ds_loaded *l);

#endif
