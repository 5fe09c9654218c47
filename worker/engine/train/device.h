// Where training computes: `resources.device` resolved against this build and this machine.
//
// lora-train is always built against the CUDA build of LibTorch (with NCCL); whether "cuda"
// works is a property of the machine it runs on, found at run time. On a machine without a
// visible GPU, "cuda" is refused with the reason rather than silently run on the CPU.
//
//   LORA_ASSIGN_OR_RETURN(torch::Device device, ResolveTrainingDevice(spec.resources().device()));
//   EngineCapabilities caps = ProbeEngineCapabilities();  // `lora-train version --json`
#ifndef LORA_WORKER_ENGINE_TRAIN_DEVICE_H_
#define LORA_WORKER_ENGINE_TRAIN_DEVICE_H_

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lora {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;  // "NVIDIA H200"
  int64_t total_memory_bytes = 0;
  int compute_capability_major = 0, compute_capability_minor = 0;
};

// What this lora-train can compute on (`lora-train version` prints it; lora-worker checks it
// and advertises the GPUs to the controller).
struct EngineCapabilities {
  std::string version;        // lora-train
  std::string torch_version;  // the LibTorch it was built against
  bool cuda_compiled = false;
  std::string cuda_version;                  // the CUDA runtime LibTorch was built with, "13.0"
  std::string nccl_version;                  // "2.28.9"
  std::vector<CudaDeviceInfo> cuda_devices;  // visible now (empty without a GPU)
};
EngineCapabilities ProbeEngineCapabilities();

// "cpu" always works. "cuda" needs a visible device: the one numbered LOCAL_RANK (torchrun's
// per-node rank), else RANK modulo the device count.
absl::StatusOr<torch::Device> ResolveTrainingDevice(const std::string& requested);

// A LibTorch exception from the training step as a status. CUDA's out-of-memory becomes
// RESOURCE_EXHAUSTED with the device's memory figures and the knobs that lower the peak;
// anything else is INTERNAL with LibTorch's message (without its C++ backtrace).
absl::Status StatusFromTorchError(const std::exception& e, const torch::Device& device);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_DEVICE_H_
