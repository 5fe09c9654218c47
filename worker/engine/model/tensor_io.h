// Moves tensors between LibTorch and safetensors files without extra full-model copies.
//
//   LORA_RETURN_IF_ERROR(CopyIntoTensor(*file, *info, param));   // dtype converted in place
//   LORA_RETURN_IF_ERROR(WriteTensors(path, {{"w", t}}, torch::kBFloat16, {{"format", "pt"}}));
#ifndef LORA_WORKER_ENGINE_MODEL_TENSOR_IO_H_
#define LORA_WORKER_ENGINE_MODEL_TENSOR_IO_H_

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"

namespace lora {

absl::StatusOr<torch::Dtype> TorchDtype(DType dtype);
absl::StatusOr<DType> SafetensorsDtype(torch::Dtype dtype);

// "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16".
absl::StatusOr<torch::Dtype> ParseFloatDtype(const std::string& name);
// The transformers spelling: "float32", "bfloat16", "float16".
std::string FloatDtypeName(torch::Dtype dtype);

// Copies a stored tensor into `dst` (same shape, any float dtype), converting the dtype.
absl::Status CopyIntoTensor(const SafetensorsFile& file, const TensorInfo& info, torch::Tensor dst);

// Asks the kernel to back a large, not yet touched tensor with transparent huge pages: the
// first write then faults 2 MiB at a time instead of 4 KiB (loading a 1B model: ~4x faster).
void AdviseHugePages(const torch::Tensor& t);

// Reads a stored tensor as a new CPU tensor of `dtype`.
absl::StatusOr<torch::Tensor> ReadTensor(const SafetensorsFile& file, const TensorInfo& info,
                                         torch::Dtype dtype);

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes `tensors` converted to `dtype`, one tensor at a time, so the extra memory is one
// tensor, not the model. Atomic: the file appears complete or not at all.
absl::Status WriteTensors(const std::string& path, const NamedTensors& tensors, torch::Dtype dtype,
                          const std::map<std::string, std::string>& metadata);

// Bytes `tensors` take in `dtype`.
uint64_t TensorBytes(const NamedTensors& tensors, torch::Dtype dtype);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_MODEL_TENSOR_IO_H_
