// Turns a module tree into a LoRA model in place, the torchtitan way: every lora::Linear whose
// qualified name matches `target_modules` (and not `exclude_modules`) gets lora_a / lora_b
// children; the whole tree is frozen first and only the adapters train.
//
//   LoraConfig config;                    // rank 8, alpha 16, the 7 Llama projections
//   LORA_ASSIGN_OR_RETURN(ConversionReport report, ConvertToLora(*model, config));
//   std::cout << report.ToText();
#ifndef LORA_WORKER_ENGINE_LORA_CONVERTER_H_
#define LORA_WORKER_ENGINE_LORA_CONVERTER_H_

#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/lora/linear.h"
#include "worker/engine/lora/module_matcher.h"

namespace lora {

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  ModuleSelector target_modules = ModuleSelector::List(
      {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
  ModuleSelector exclude_modules;
  bool use_rslora = false;
  bool use_dora = false;  // DoRA: a trained magnitude per output row (linear.h)
  LoraInit init = LoraInit::kKaiming;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  torch::Dtype adapter_dtype = torch::kFloat32;
  uint64_t seed = 0;
};

// Field-level checks; messages name the field (`lora.rank`, ...).
absl::Status ValidateLoraConfig(const LoraConfig& config);

struct WrappedModule {
  std::string name;
  int64_t in_features = 0;
  int64_t out_features = 0;
  int64_t rank = 0;
  double alpha = 0.0;
  double scale = 0.0;
};

struct ConversionReport {
  std::vector<WrappedModule> modules;
  int64_t trainable_parameters = 0;
  int64_t total_parameters = 0;
  int64_t adapter_parameters = 0;

  uint64_t AdapterBytes(torch::Dtype dtype) const;
  nlohmann::json ToJson(torch::Dtype export_dtype) const;
  std::string ToText(torch::Dtype export_dtype) const;
};

absl::StatusOr<ConversionReport> ConvertToLora(torch::nn::Module& root, const LoraConfig& config);

// Sets requires_grad = false on everything, then true on every adapter parameter.
void FreezeAllButAdapters(torch::nn::Module& root);

// The report for a tree that already carries adapters (after import, say).
ConversionReport DescribeAdapters(const torch::nn::Module& root);

// Every Linear carrying an adapter, by qualified name, in module order.
std::vector<std::pair<std::string, LinearImpl*>> AdaptedLinears(const torch::nn::Module& root);

// Merges (or unmerges) every adapter into its base weight.
void MergeAdapters(torch::nn::Module& root);
void UnmergeAdapters(torch::nn::Module& root);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_LORA_CONVERTER_H_
