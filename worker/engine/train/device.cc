#include "worker/engine/train/device.h"

#include <torch/version.h>

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#ifdef LORA_WITH_CUDA
#include <torch/cuda.h>
#endif

namespace lora {
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  int out = 0;
  return v != nullptr && absl::SimpleAtoi(v, &out) ? out : fallback;
}

}  // namespace

EngineCapabilities ProbeEngineCapabilities() {
  EngineCapabilities c;
  c.version = LORA_ENGINE_VERSION;
  c.torch_version = TORCH_VERSION;
#ifdef LORA_WITH_CUDA
  c.built_with_cuda = true;
  c.cuda_devices = static_cast<int>(torch::cuda::device_count());
#endif
  return c;
}

absl::StatusOr<torch::Device> ResolveTrainingDevice(const std::string& requested) {
  if (requested.empty() || requested == "cpu") return torch::Device(torch::kCPU);
  if (requested != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("resources.device: '", requested, "' is not one of cpu, cuda"));
  }
  const EngineCapabilities caps = ProbeEngineCapabilities();
  if (!caps.built_with_cuda) {
    return absl::FailedPreconditionError(absl::StrCat(
        "resources.device: 'cuda' but this lora-train was built without CUDA (LibTorch ",
        caps.torch_version,
        " CPU); build it with -DLORA_WITH_CUDA=ON against a CUDA LibTorch, or set device = "
        "\"cpu\""));
  }
  if (caps.cuda_devices == 0) {
    return absl::FailedPreconditionError(
        "resources.device: 'cuda' but no CUDA device is visible to this process (check the "
        "driver, CUDA_VISIBLE_DEVICES and the pod's nvidia.com/gpu limit)");
  }
  const int local = EnvInt("LOCAL_RANK", EnvInt("RANK", 0) % caps.cuda_devices);
  if (local < 0 || local >= caps.cuda_devices) {
    return absl::FailedPreconditionError(absl::StrCat(
        "LOCAL_RANK ", local, " but only ", caps.cuda_devices, " CUDA devices are visible"));
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local));
}

}  // namespace lora
