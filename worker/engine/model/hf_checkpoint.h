// Hugging Face checkpoint directories: config.json plus model.safetensors, or shards listed in
// model.safetensors.index.json.
//
//   LORA_ASSIGN_OR_RETURN(LlamaForCausalLM model, LoadHfModel(dir, torch::kBFloat16));
//   LORA_RETURN_IF_ERROR(SaveHfModel(*model, out_dir, {.dtype = torch::kBFloat16}));
#ifndef LORA_WORKER_ENGINE_MODEL_HF_CHECKPOINT_H_
#define LORA_WORKER_ENGINE_MODEL_HF_CHECKPOINT_H_

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/llama_config.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model/llama.h"
#include "worker/engine/model/tensor_io.h"

namespace lora {

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

// All tensors of a checkpoint directory, whichever files hold them.
class CheckpointReader {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& dir);

  struct Entry {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };
  const std::vector<std::string>& names() const { return names_; }
  // nullptr file when absent.
  Entry Find(const std::string& name) const;
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> names_;
  std::map<std::string, Entry> entries_;
  uint64_t total_bytes_ = 0;
};

absl::StatusOr<LlamaConfig> ReadHfConfig(const std::string& dir);

// Copies checkpoint tensors into `module`'s parameters whose names do not contain `lora_`.
// Every missing, unexpected or mis-shaped tensor is listed in one error. Tensors that
// transformers also ignores (rotary inv_freq buffers, a tied lm_head) are skipped.
absl::Status LoadStateDict(torch::nn::Module& module, const CheckpointReader& reader,
                           bool tied_embeddings);

absl::StatusOr<LlamaForCausalLM> LoadHfModel(const std::string& dir, torch::Dtype dtype);

// Base parameters (no adapters) under their HF names.
NamedTensors BaseStateDict(const torch::nn::Module& module);

struct SaveOptions {
  torch::Dtype dtype = torch::kFloat32;
  uint64_t max_shard_bytes = 5'000'000'000;  // transformers' default "5GB"
  // The base checkpoint directory, when there is one: its config.json is kept (only the dtype
  // changes) and its tokenizer and generation files are copied (kCompanionFiles), so that a
  // server can load the written directory alone.
  std::string base_dir;
};

// Files of a model directory that are not weights but belong with them.
inline constexpr const char* kCompanionFiles[] = {"tokenizer.json",     "tokenizer_config.json",
                                                  "tokenizer.model",    "special_tokens_map.json",
                                                  "added_tokens.json",  "vocab.json",
                                                  "merges.txt",         "chat_template.jinja",
                                                  "chat_template.json", "generation_config.json"};

// The id a PEFT adapter or merged model names as its base: config.json's `_name_or_path` when
// it is a hub id, a hub cache snapshot's "org/name", else the directory's own name; a built-in
// flavor's name. Never a worker-local absolute path.
std::string BaseModelId(const std::string& model_path_or_flavor);

// Writes config.json and the weights (sharded past max_shard_bytes) into `dir`, which is
// created if needed. Adapter parameters are not written: merge first to export a merged model.
// Without a base_dir, config.json comes from the model's config and generation_config.json
// from its bos/eos ids.
absl::Status SaveHfModel(const LlamaForCausalLMImpl& model, const std::string& dir,
                         const SaveOptions& options);

// SaveHfModel into a staging directory swapped in whole (StagedDirectory): readers see the old
// checkpoint or the new one, never a mix, and a crash leaves no half-written `dir`.
absl::Status SaveHfModelAtomically(const LlamaForCausalLMImpl& model, const std::string& dir,
                                   const SaveOptions& options);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_HF_CHECKPOINT_H_
