#include "infer/load.h"

#include "core/err.h"
#include "core/log.h"
#include "io/checkpoint.h"
#include "model/weights.h"
#include "ops/device.h"

#ifdef DS_HAVE_CUDA
#include "ops_cuda.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether the backend keeps a bf16 copy of the float parameters: the CUDA backend in its default bf16 GEMM
 * mode (kernels/ops_cuda.h), made at the first product that reads them. */
static int backend_bf16_copy(void) {
#ifdef DS_HAVE_CUDA
    return ds_ops_cuda_gemm() == DS_CUDA_GEMM_BF16;
#else
    return 0;
#endif
}

int ds_load_checkpoint(const char *path, const ds_model_opts *opts, ds_loaded *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->where, sizeof out->where, "%s", path);
    ds_ckpt *c = NULL;
    DS_TRY(ds_ckpt_open(&c, path));
    const ds_config *cfg = ds_ckpt_config(c);
    ds_model_opts o = *opts;
    if (o.max_seq <= 0) o.max_seq = cfg->max_position_embeddings;
    o.fp8_tensors = o.fp8_resident || o.bf16_resident ? ds_ckpt_tensors(c) : NULL;
    size_t tok_len = 0;
    const char *tok = ds_ckpt_tokenizer(c, &tok_len);
    char where[600];
    snprintf(where, sizeof where, "%s: tokenizer.json", ds_ckpt_where(c));
    int rc = ds_model_check_set(cfg, ds_ckpt_tensors(c), ds_ckpt_where(c));
    if (!rc) rc = ds_model_create(&out->model, cfg, &o);
    if (!rc) {
        const int host = ds_ops_on_host(ds_model_ops(out->model));
        ds_weight_bytes wb;
        ds_model_weight_bytes(out->model, !host && backend_bf16_copy(), &wb);
        const double G = 1073741824.0;
        out->fp8_resident = wb.fp8 > 0;
        out->bf16_resident = wb.bf16w > 0;
        out->mapped = (wb.fp8 > 0 && host) || wb.bf16_mapped > 0;
        char fp8[96] = "";
        if (wb.fp8 > 0) snprintf(fp8, sizeof fp8, " + FP8 Linear weights %.3f GiB", wb.fp8 / G);
        if (wb.bf16w > 0) /* what the resident weights take, and the rest (norms, expert biases) in fp32 */
            ds_info("weights: %.3f GiB in memory: bf16 %.3f GiB (%.3f GiB mapped from the checkpoint's BF16 tensors, "
                    "%.3f GiB rounded from its other weights)%s + fp32 %.3f GiB (all in fp32 they would take %.3f GiB)",
                    (wb.bf16w + wb.fp8 + wb.fp32) / G, wb.bf16w / G, wb.bf16_mapped / G, (wb.bf16w - wb.bf16_mapped) / G,
                    fp8, wb.fp32 / G, wb.expanded / G);
        else if (wb.fp8 > 0 && host)
            ds_info("weights: %.3f GiB in memory: FP8 Linear weights %.3f GiB (E4M3 codes mapped from the checkpoint, "
                    "block scales) + fp32 %.3f GiB (expanded they would take %.3f GiB)", (wb.fp32 + wb.fp8) / G,
                    wb.fp8 / G, wb.fp32 / G, wb.expanded / G);
        else if (wb.fp8 > 0) /* the GPU: what this load allocates for the weights, before it starts */
            ds_info("weights: %.3f GiB on the GPU: FP8 Linear weights %.3f GiB (E4M3 codes and block scales, %d tensors) "
                    "+ fp32 %.3f GiB + bf16 copy %.3f GiB (expanded they would take %.3f GiB)",
                    (wb.fp8 + wb.fp32 + wb.bf16) / G, wb.fp8 / G, wb.resident, wb.fp32 / G, wb.bf16 / G, wb.expanded / G);
        else
            ds_verbose("weights: %.3f GiB %s (fp32 %.3f GiB + bf16 copy %.3f GiB)", (wb.fp32 + wb.bf16) / G,
                       host ? "in memory" : "on the GPU", wb.fp32 / G, wb.bf16 / G);
    }
    if (!rc) rc = ds_model_load_weights(out->model, ds_ckpt_tensors(c));
    if (!rc && tok) rc = ds_tok_from_json(&out->tok, tok, tok_len, where);
    if (!rc && ds_ckpt_has_file(c, "tokenizer_config.json"))
        rc = ds_ckpt_read_file(c, "tokenizer_config.json", &out->tokenizer_config, &out->tokenizer_config_len);
    if (!rc && ds_ckpt_has_file(c, "generation_config.json"))
        rc = ds_ckpt_read_file(c, "generation_config.json", &out->generation_config, &out->generation_config_len);
    if (!rc) out->has_mtp = ds_model_mtp_depth(out->model) > 0;
    /* the host's FP8 codes and borrowed bf16 weights stay in the checkpoint's memory; a GPU's were copied and
     * rounded bf16 copies are the model's own: then the mapping (and the file pages it read) can go */
    if (!rc && out->mapped) out->ckpt = c;
    else ds_ckpt_close(c);
    if (rc) ds_loaded_free(out);
    return rc;
}

void ds_loaded_free(ds_loaded *l) {
    ds_model_free(l->model);
    ds_ckpt_close(l->ckpt);
    l->ckpt = NULL;
    ds_tok_free(l->tok);
    free(l->tokenizer_config);
    free(l->generation_config);
    l->generation_config = NULL;
    l->model = NULL;
    l->tok = NULL;
    l->tokenizer_config = NULL;
}
