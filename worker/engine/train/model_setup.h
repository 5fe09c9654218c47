// Builds the model a job spec describes: the base (HF directory or flavor), in the dtype the
// precision settings call for, converted to LoRA (or starting from lora.adapter).
//
//   LORA_ASSIGN_OR_RETURN(PreparedModel m, PrepareModel(spec));
#ifndef LORA_WORKER_ENGINE_TRAIN_MODEL_SETUP_H_
#define LORA_WORKER_ENGINE_TRAIN_MODEL_SETUP_H_

#include <string>

#include "absl/status/statusor.h"
#include "lora/v1/job_spec.pb.h"
#include "worker/engine/lora/converter.h"
#include "worker/engine/model/llama.h"

namespace lora {

struct PreparedModel {
  LlamaForCausalLM model{nullptr};
  LoraConfig lora;
  ConversionReport report;
  std::string base_source;  // absolute directory or flavor name
  torch::Dtype base_dtype = torch::kFloat32;
};

absl::StatusOr<LoraConfig> LoraConfigFromSpec(const lora::v1::LoraSection& section);

// Frozen base weights: model.dtype when set, else bf16 under bf16 mixed precision (frozen
// weights need no fp32 master copy), else fp32. Adapters always train in fp32.
absl::StatusOr<torch::Dtype> BaseDtype(const lora::v1::JobSpec& spec);

absl::StatusOr<PreparedModel> PrepareModel(const lora::v1::JobSpec& spec);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_MODEL_SETUP_H_
