/* flops.h — what a training step costs in FLOPs, and the peak it is measured against (MFU).
 *
 * Owns the model-FLOPs formula (docs/METRICS.md "MFU"): per token,
 *   6 * (activated parameters except the input embedding, plus for each MTP module its activated
 *        parameters and the shared output head it applies again)
 * + 6 * (layers + MTP modules) * heads * seq_len * (qk_head_dim + v_head_dim)   (attention scores
 *   and their weighted sum, counted over the full sequence as in PaLM's appendix B),
 * and a measured CPU peak: the best sgemm throughput OpenBLAS reaches on this machine with the
 * run's threads, when no peak is given.
 */
#ifndef DS_TRAIN_FLOPS_H
#define DS_TRAIN_FLOPS_H

#include "io/config.h"

typedef struct {
    double params_main;  /* activated parameters except the embedding table */
    double params_mtp;   /* per-token parameters of all MTP modules, their head application included */
    double attention;    /* attention-score FLOPs per token (forward + backward) */
    double total;        /* training FLOPs per token */
} ds_flops;

void ds_train_flops(const ds_config *c, int seq_len, int mtp_depth, ds_flops *out);
/* Best fp32 GEMM rate (FLOP/s) over about `seconds` of sgemm with the current thread setting. */
double ds_measure_peak_flops(double seconds);

#endif
