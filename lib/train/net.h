/* net.h — the trainer's view of the DeepSeek-V3 network (model/model.h) as a ds_train_net.
 *
 * Owns: the adapter (parameter and gradient buffers, the parameter table, the per-MoE-layer expert
 * bias pointers in the order forward reports loads: main MoE layers, then MTP modules' when MTP is
 * active), the copies between host and device for a model on a GPU (forward outputs and loss
 * coefficients per micro-batch, expert biases when the trainer changes them), and the training FLOPs
 * per token used for MFU. A pipeline stage or an expert-parallel
 * model is another adapter with the same shape.
 */
#ifndef DS_TRAIN_NET_H
#define DS_TRAIN_NET_H

#include "model/model.h"
#include "train/trainer.h"

int ds_train_net_from_model(ds_train_net *n, ds_model *m, int seq_len);
void ds_train_net_release(ds_train_net *n);

#endif
