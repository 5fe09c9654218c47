// Differentiable communication for model parallelism (autograd Functions over a Group):
//   CopyToGroup:     identity forward, all-reduce of the gradient backward (TP block entry)
//   ReduceFromGroup: all-reduce forward, identity backward (TP block exit)
//   GatherSequence:  the full sequence from every context-parallel rank's chunks forward,
//                    the sum of gradients for this rank's chunks backward
#ifndef LORA_WORKER_ENGINE_DIST_COLLECTIVES_H_
#define LORA_WORKER_ENGINE_DIST_COLLECTIVES_H_

#include <torch/types.h>

#include <vector>

#include "worker/engine/dist/comm.h"

namespace lora::dist {

torch::Tensor CopyToGroup(const torch::Tensor& x, Group* group);
torch::Tensor ReduceFromGroup(const torch::Tensor& x, Group* group);

// Context-parallel layout: the sequence is cut into 2 * cp chunks; rank c holds chunks c and
// 2cp - 1 - c (so every rank gets the same causal work). These map between the layouts along
// dim 1 ([B, T, ...]).
std::vector<int64_t> LocalChunkOrder(int cp, int rank);
torch::Tensor TakeLocalChunks(const torch::Tensor& full, int cp,
                              int rank);  // [B, T] -> [B, T / cp]
// Differentiable: local [B, T/cp, ...] -> full [B, T, ...] in sequence order.
torch::Tensor GatherSequence(const torch::Tensor& local, Group* cp_group);

}  // namespace lora::dist

#endif  // LORA_WORKER_ENGINE_DIST_COLLECTIVES_H_
