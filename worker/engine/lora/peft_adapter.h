// Hugging Face PEFT LoRA adapter directories: adapter_config.json + adapter_model.safetensors.
//
//   LORA_RETURN_IF_ERROR(ExportPeftAdapter(*model, config, out_dir, {.dtype = torch::kBFloat16}));
//   LORA_ASSIGN_OR_RETURN(ImportedAdapter a, ImportPeftAdapter(*model, adapter_dir));
//
// Import accepts any PEFT LoRA adapter of a Llama-family model (not only ours): the adapted
// modules and their ranks come from the tensors, alpha from lora_alpha / alpha_pattern.
// DoRA adapters (use_dora, lora_magnitude_vector) are read and written as PEFT does. Features
// we cannot represent (LoRA bias, modules_to_save, embedding adapters, initialisations that
// modified the base) are rejected by name rather than silently dropped.
#ifndef LORA_WORKER_ENGINE_LORA_PEFT_ADAPTER_H_
#define LORA_WORKER_ENGINE_LORA_PEFT_ADAPTER_H_

#include <torch/nn/module.h>

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/lora/converter.h"

namespace lora {

inline constexpr char kPeftConfigFile[] = "adapter_config.json";
inline constexpr char kPeftWeightsFile[] = "adapter_model.safetensors";
inline constexpr char kPeftKeyPrefix[] = "base_model.model.";

struct PeftExportOptions {
  torch::Dtype dtype = torch::kFloat32;
  std::string base_model_name_or_path;
};

// One module's adapter, independent of how the live model is laid out (a distributed run
// gathers these from its shards).
struct AdapterRecord {
  std::string module;
  int64_t rank = 0;
  double alpha = 0;
  bool use_rslora = false;
  torch::Tensor a, b;       // [r, in], [out, r]
  torch::Tensor magnitude;  // DoRA: [out]; undefined for plain LoRA
};

// Names of every module (with whether it is a Linear, and the output layer), so PEFT's module
// selection can be checked against the adapted set.
struct ModuleInfo {
  std::string name;
  bool is_linear = false;
  bool is_output = false;
};

std::vector<AdapterRecord> AdapterRecords(const torch::nn::Module& root);
std::vector<ModuleInfo> ListModules(const torch::nn::Module& root);

// The PEFT tensor key of an adapter factor: ("model.layers.0.mlp.up_proj", 'A') ->
// "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight".
std::string PeftTensorKey(const std::string& module_name, char factor);

// adapter_config.json contents for the adapters currently attached under `root`.
absl::StatusOr<nlohmann::json> PeftConfigJson(const torch::nn::Module& root,
                                              const LoraConfig& config,
                                              const std::string& base_model_name_or_path);

// Writes the adapter directory atomically (staged, then renamed into place).
absl::Status ExportPeftAdapter(const torch::nn::Module& root, const LoraConfig& config,
                               const std::string& dir, const PeftExportOptions& options);

// Writes adapter_config.json + adapter_model.safetensors into an existing directory.
absl::Status WritePeftAdapterFiles(const torch::nn::Module& root, const LoraConfig& config,
                                   const std::string& dir, const PeftExportOptions& options);
absl::Status WritePeftAdapterFiles(const std::vector<AdapterRecord>& records,
                                   const std::vector<ModuleInfo>& modules, const LoraConfig& config,
                                   const std::string& dir, const PeftExportOptions& options);
absl::Status ExportPeftAdapter(const std::vector<AdapterRecord>& records,
                               const std::vector<ModuleInfo>& modules, const LoraConfig& config,
                               const std::string& dir, const PeftExportOptions& options);

struct PeftConfig {
  LoraConfig lora;
  std::string base_model_name_or_path;
};

// Parses and checks adapter_config.json; errors name the field.
absl::StatusOr<PeftConfig> ReadPeftConfig(const std::string& dir);

struct ImportedAdapter {
  PeftConfig config;
  ConversionReport report;
};

// Reads an adapter directory as full-size records (fp32), without a model.
absl::StatusOr<std::vector<AdapterRecord>> ReadPeftAdapterRecords(const std::string& dir,
                                                                  PeftConfig* config = nullptr);

// Attaches (or fills already attached) adapters from `dir` to `root` and freezes the base.
absl::StatusOr<ImportedAdapter> ImportPeftAdapter(torch::nn::Module& root, const std::string& dir,
                                                  torch::Dtype adapter_dtype = torch::kFloat32);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_LORA_PEFT_ADAPTER_H_
