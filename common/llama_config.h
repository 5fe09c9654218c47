// Shape and math settings of a Llama-family model, in Hugging Face `config.json` terms.
//
//   LORA_ASSIGN_OR_RETURN(LlamaConfig c, LlamaConfig::FromFlavor("debugmodel"));
//   LORA_ASSIGN_OR_RETURN(LlamaConfig c, LlamaConfig::FromHfJson(ReadJson("config.json")));
//   nlohmann::json j = c.ToHfJson();
//
// "mistral", "qwen2" and "qwen3" share the shape family: qwen2 adds q/k/v bias (attention_bias
// here), qwen3 an RMSNorm over each head of q and k before RoPE (qk_norm), mistral and
// qwen2/3 with `use_sliding_window` a sliding attention window. Both ways transformers writes
// RoPE settings are read: `rope_theta` + `rope_scaling` (the hub's checkpoints) and
// `rope_parameters` (transformers 5).
#ifndef LORA_COMMON_LLAMA_CONFIG_H_
#define LORA_COMMON_LLAMA_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lora {

struct RopeScaling {
  // Only "llama3" is supported (others are rejected with a clear error when loading).
  std::string rope_type = "llama3";
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  // Far above any released model (Llama 3.1 405B has 126); a bound, so per-layer tables built
  // from a config file stay small whatever the file claims.
  static constexpr int64_t kMaxLayers = 4096;

  std::string model_type = "llama";
  int64_t hidden_size = 256;
  int64_t intermediate_size = 768;
  int64_t num_hidden_layers = 6;
  int64_t num_attention_heads = 16;
  int64_t num_key_value_heads = 16;
  int64_t head_dim = 16;
  int64_t vocab_size = 2048;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  double rope_theta = 500000.0;
  bool has_rope_scaling = false;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for llama) bias
  bool mlp_bias = false;
  // qwen3: RMSNorm(head_dim) on every query and key head, before RoPE.
  bool qk_norm = false;
  // Sliding-window attention: a token attends to itself and the sliding_window - 1 tokens
  // before it (transformers: kv_idx > q_idx - sliding_window), on the layers whose entry in
  // sliding_layers is true. 0 = full attention everywhere.
  int64_t sliding_window = 0;
  std::vector<bool> sliding_layers;
  bool LayerIsSliding(int64_t layer) const {
    return sliding_window > 0 && layer >= 0 &&
           layer < static_cast<int64_t>(sliding_layers.size()) &&
           sliding_layers[static_cast<size_t>(layer)];
  }
  // True when some layer's window is shorter than `seq_len` (so the window changes results).
  bool SlidingWindowBinds(int64_t seq_len) const;
  // qwen2 puts bias on q/k/v but not on o_proj.
  bool o_proj_bias() const { return attention_bias && model_type != "qwen2"; }
  std::string torch_dtype = "float32";
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  double initializer_range = 0.02;

  static absl::StatusOr<LlamaConfig> FromFlavor(const std::string& flavor);
  static std::vector<std::string> FlavorNames();
  static absl::StatusOr<LlamaConfig> FromHfJson(const nlohmann::json& config);
  nlohmann::json ToHfJson() const;

  // Consistency checks (positive sizes, heads divide, head_dim even for RoPE, ...).
  absl::Status Validate() const;

  // Parameters of the base model (embeddings and lm_head counted once when tied).
  int64_t NumParameters() const;
};

}  // namespace lora

#endif  // LORA_COMMON_LLAMA_CONFIG_H_
