// Full activation checkpointing for one decoder layer: the forward keeps only the layer's
// input; the backward recomputes the layer (with the same dropout randomness) and
// backpropagates through the recomputation. LibTorch's C++ API has no checkpoint helper, so
// this is a custom autograd Function.
#ifndef LORA_WORKER_ENGINE_MODEL_ACTIVATION_CHECKPOINT_H_
#define LORA_WORKER_ENGINE_MODEL_ACTIVATION_CHECKPOINT_H_

#include <torch/types.h>

#include "worker/engine/model/llama.h"

namespace lora {

// `hooks` (may be null) run around the forward and around the recomputation in backward.
torch::Tensor CheckpointedLayerForward(LlamaDecoderLayerImpl* layer, const torch::Tensor& x,
                                       const AttentionContext& ctx,
                                       const LayerHooks* hooks = nullptr, int layer_index = 0);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_ACTIVATION_CHECKPOINT_H_
