// Rotary position embeddings, Hugging Face "rotate half" convention, with llama3 frequency
// scaling.
//
//   torch::Tensor inv_freq = RopeInverseFrequencies(config);          // [head_dim / 2], fp32
//   auto [cos, sin] = RopeCosSin(inv_freq, position_ids, x.scalar_type());  // [..., T, head_dim]
//   q = ApplyRope(q, cos, sin);   // q: [B, T, H, head_dim], cos/sin broadcast over H
#ifndef LORA_WORKER_ENGINE_MODEL_ROPE_H_
#define LORA_WORKER_ENGINE_MODEL_ROPE_H_

#include <torch/types.h>

#include <utility>

#include "common/llama_config.h"

namespace lora {

torch::Tensor RopeInverseFrequencies(const LlamaConfig& config);

// `position_ids`: int64 [T] or [B, T]. Returns cos and sin of shape [B or 1, T, 1, head_dim],
// computed in fp32 and cast to `dtype`.
std::pair<torch::Tensor, torch::Tensor> RopeCosSin(const torch::Tensor& inv_freq,
                                                   const torch::Tensor& position_ids,
                                                   torch::Dtype dtype);

torch::Tensor RotateHalf(const torch::Tensor& x);

// x * cos + rotate_half(x) * sin, for x laid out [B, T, heads, head_dim].
torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_ROPE_H_
