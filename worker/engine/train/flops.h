// Training FLOPs per token of a LoRA model, for MFU.
//
// Convention (torchtitan's, adapted to frozen weights): a frozen linear with N weights costs
// 2N forward + 2N backward (input gradient only; no weight gradient); a trainable one 6N;
// attention scores and mixing 12 * layers * heads * head_dim * seq_len (forward + backward,
// the full square, as plain attention computes it). Embedding lookups are free.
#ifndef LORA_WORKER_ENGINE_TRAIN_FLOPS_H_
#define LORA_WORKER_ENGINE_TRAIN_FLOPS_H_

#include <cstdint>

#include "common/llama_config.h"

namespace lora {

inline double TrainingFlopsPerToken(const LlamaConfig& c, int64_t seq_len, int64_t lora_parameters,
                                    bool full_finetune = false) {
  const double q = static_cast<double>(c.num_attention_heads * c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double d = static_cast<double>(c.hidden_size);
  const double linear_per_layer =
      d * q + 2 * d * kv + q * d + 3 * d * static_cast<double>(c.intermediate_size);
  const double linear = static_cast<double>(c.num_hidden_layers) * linear_per_layer +
                        d * static_cast<double>(c.vocab_size);  // lm_head (tied or not)
  const double attention =
      12.0 * static_cast<double>(c.num_hidden_layers) * q * static_cast<double>(seq_len);
  const double dense = full_finetune ? 6.0 * linear : 4.0 * linear;
  return dense + 6.0 * static_cast<double>(lora_parameters) + attention;
}

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_FLOPS_H_
