/* weights.h — the network's weights in safetensors files under Hugging Face tensor names (spec 9.2).
 *
 * Owns: the mapping between the parameter buffer and checkpoint tensors (docs/formats.md, "Model tensors"): per-expert names as released
 * (and as transformers 5 writes), transformers' in-memory fused expert layout ("mlp.experts.gate_up_proj"
 * [E, 2*Ie, D], "mlp.experts.down_proj" [E, D, Ie]) on load, FP8 E4M3 weights with their
 * "weight_scale_inv" block scales (dequantised on load), any float dtype, the expert biases, and MTP
 * modules at layer num_hidden_layers + k. A checkpoint without MTP tensors (what transformers writes)
 * loads with MTP disabled and a warning.
 */
#ifndef DS_MODEL_WEIGHTS_H
#define DS_MODEL_WEIGHTS_H

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/model.h"

/* Before a model is built or anything written: do a checkpoint's tensors fit its config? Every tensor
 * the config implies is there with its shape and a float dtype (transformers' fused experts accepted;
 * an F8_E4M3 weight's <name>_scale_inv has the config's block-grid shape), the MTP modules are all
 * there or none, and nothing is left over but the released MTP layers' copies of embedding and head.
 * Errors name the tensor, both shapes, and the size keys config.json left out (their defaults were
 * used); a tensor left over names the layer and expert counts. where: the checkpoint, for messages. */
int ds_model_check_tensors(const ds_config *c, const ds_st_tensor *const *t, int n, const char *where);
int ds_model_check_set(const ds_config *c, const ds_st_set *s, const char *where);

/* Mark the parameters that stay FP8-resident with s as their source (model.h opts.fp8_resident): 2-D
 * Linear weights taken by the Linear GEMMs (not kv_b, eh_proj, the router, embedding or head) stored in s
 * as F8_E4M3 with a <name>_scale_inv. device: for the GPU, which also needs shapes its block-scaled GEMM
 * takes (fp8/resident.h ds_fp8_resident_device_ok) and a layer's routed experts all resident or none.
 * Sets m's resident counts and the bytes they take (device: ds_fp8_resident_device_bytes each). */
void ds_model_mark_resident(ds_model *m, const ds_st_set *s, int device);

/* Fill every parameter and expert bias of m from s (resident ones are registered with fp8/resident.h,
 * their codes borrowed from s). Errors name the tensor and the file. */
int ds_model_load_weights(ds_model *m, const ds_st_set *s);

typedef struct {
    int bf16;                 /* parameters as BF16 (round to nearest even) instead of F32 */
    int mtp_copies;           /* also write model.layers.{L+k}.embed_tokens / shared_head.head (as released) */
    const char *const *meta;  /* __metadata__ key, value pairs (e.g. "config", config.json text) */
    int n_meta;
    ds_st_write_opts st;      /* sharding */
} ds_weights_save_opts;

/* Write the parameters and the expert biases (always F32, as released) to path ("-": stdout), in
 * parameter-table order with each bias after its router. o may be NULL (F32, no copies, no metadata). */
int ds_model_save_weights(ds_model *m, const char *path, const ds_weights_save_opts *o);
/* The same tensors added to a checkpoint being written (config, tokenizer and commit are the caller's).
 * On the CPU the writer reads the parameter buffer at commit: do not change the weights before it. */
int ds_model_add_to_checkpoint(ds_model *m, ds_ckpt_writer *w, const ds_weights_save_opts *o);

#endif
