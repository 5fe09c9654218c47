#include "worker/engine/model/tensor_io.h"

#include <ATen/ATen.h>

#include <sys/mman.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace lora {

absl::StatusOr<torch::Dtype> TorchDtype(DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return torch::kFloat64;
    case DType::kF32:
      return torch::kFloat32;
    case DType::kF16:
      return torch::kFloat16;
    case DType::kBF16:
      return torch::kBFloat16;
    case DType::kI64:
      return torch::kInt64;
    case DType::kI32:
      return torch::kInt32;
    case DType::kI16:
      return torch::kInt16;
    case DType::kI8:
      return torch::kInt8;
    case DType::kU8:
      return torch::kUInt8;
    case DType::kBool:
      return torch::kBool;
    default:
      return absl::UnimplementedError(
          absl::StrCat("dtype ", DTypeName(dtype), " is not supported by this LibTorch"));
  }
}

absl::StatusOr<DType> SafetensorsDtype(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat64:
      return DType::kF64;
    case torch::kFloat32:
      return DType::kF32;
    case torch::kFloat16:
      return DType::kF16;
    case torch::kBFloat16:
      return DType::kBF16;
    case torch::kInt64:
      return DType::kI64;
    case torch::kInt32:
      return DType::kI32;
    case torch::kInt16:
      return DType::kI16;
    case torch::kInt8:
      return DType::kI8;
    case torch::kUInt8:
      return DType::kU8;
    case torch::kBool:
      return DType::kBool;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor dtype ", c10::toString(dtype), " cannot be stored in safetensors"));
  }
}

absl::StatusOr<torch::Dtype> ParseFloatDtype(const std::string& name) {
  std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "fp32" || n == "f32") return torch::kFloat32;
  if (n == "bfloat16" || n == "bf16") return torch::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "f16" || n == "half") return torch::kFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "'; expected float32, bfloat16 or float16"));
}

std::string FloatDtypeName(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return "float32";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kFloat16:
      return "float16";
    case torch::kFloat64:
      return "float64";
    default:
      return c10::toString(dtype);
  }
}

absl::Status CopyIntoTensor(const SafetensorsFile& file, const TensorInfo& info,
                            torch::Tensor dst) {
  LORA_ASSIGN_OR_RETURN(torch::Dtype src_dtype, TorchDtype(info.dtype));
  if (dst.sizes() != c10::IntArrayRef(info.shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": tensor '", info.name, "' has shape [", absl::StrJoin(info.shape, ", "),
        "], expected [", absl::StrJoin(dst.sizes(), ", "), "]"));
  }
  const uint8_t* data = file.Data(info);
  torch::NoGradGuard no_grad;
  const size_t align = DTypeSize(info.dtype);
  if (reinterpret_cast<uintptr_t>(data) % align == 0) {
    // A view of the mapping; copy_ converts dtype straight into the destination.
    torch::Tensor src = torch::from_blob(const_cast<uint8_t*>(data), info.shape,
                                         torch::TensorOptions().dtype(src_dtype));
    dst.copy_(src);
  } else {
    torch::Tensor src = torch::empty(info.shape, torch::TensorOptions().dtype(src_dtype));
    std::memcpy(src.data_ptr(), data, info.nbytes());
    dst.copy_(src);
  }
  return absl::OkStatus();
}

void AdviseHugePages(const torch::Tensor& t) {
  constexpr uintptr_t kHuge = 2u << 20;
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  if (!t.device().is_cpu() || bytes < 2 * kHuge) return;
  uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + kHuge - 1) & ~(kHuge - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + bytes) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

absl::StatusOr<torch::Tensor> ReadTensor(const SafetensorsFile& file, const TensorInfo& info,
                                         torch::Dtype dtype) {
  torch::Tensor out = torch::empty(info.shape, torch::TensorOptions().dtype(dtype));
  LORA_RETURN_IF_ERROR(CopyIntoTensor(file, info, out));
  return out;
}

uint64_t TensorBytes(const NamedTensors& tensors, torch::Dtype dtype) {
  uint64_t total = 0;
  for (const auto& [name, t] : tensors)
    total += static_cast<uint64_t>(t.numel()) * c10::elementSize(dtype);
  return total;
}

absl::Status WriteTensors(const std::string& path, const NamedTensors& tensors, torch::Dtype dtype,
                          const std::map<std::string, std::string>& metadata) {
  LORA_ASSIGN_OR_RETURN(DType st_dtype, SafetensorsDtype(dtype));
  std::vector<TensorToWrite> layout;
  layout.reserve(tensors.size());
  const size_t item = c10::elementSize(dtype);
  for (const auto& [name, t] : tensors) {
    layout.push_back(
        {name, st_dtype, t.sizes().vec(), nullptr, static_cast<size_t>(t.numel()) * item});
  }
  LORA_ASSIGN_OR_RETURN(std::string header, SerializeSafetensorsHeader(layout, metadata));
  LORA_ASSIGN_OR_RETURN(auto out, AtomicFile::Create(path));
  LORA_RETURN_IF_ERROR(out->Write(header));
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : tensors) {
    torch::Tensor c = t.detach().to(torch::kCPU, dtype).contiguous();
    LORA_RETURN_IF_ERROR(out->Write(c.data_ptr(), static_cast<size_t>(c.numel()) * item));
  }
  return out->Commit();
}

}  // namespace lora
