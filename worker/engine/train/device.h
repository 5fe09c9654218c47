// Where training computes: `resources.device` resolved against this build and this machine.
//
// The default build links Debian's CPU-only LibTorch 1.13, so "cuda" is refused with the reason
// rather than silently run on the CPU. The CUDA build (-DLORA_WITH_CUDA=ON against a CUDA
// LibTorch) defines LORA_WITH_CUDA and picks the GPU of LOCAL_RANK.
//
//   LORA_ASSIGN_OR_RETURN(torch::Device device, ResolveTrainingDevice(spec.resources().device()));
#ifndef LORA_WORKER_ENGINE_TRAIN_DEVICE_H_
#define LORA_WORKER_ENGINE_TRAIN_DEVICE_H_

#include <torch/types.h>

#include <string>

#include "absl/status/statusor.h"

namespace lora {

// What this lora-train can compute on (`lora-train version` prints it; lora-worker checks it).
struct EngineCapabilities {
  std::string version;        // lora-train
  std::string torch_version;  // the LibTorch it was built against
  bool built_with_cuda = false;
  int cuda_devices = 0;  // visible now (0 without CUDA)
};
EngineCapabilities ProbeEngineCapabilities();

// "cpu" always works. "cuda" needs the CUDA build and a visible device: the one numbered
// LOCAL_RANK (torchrun's per-node rank), else RANK modulo the device count.
absl::StatusOr<torch::Device> ResolveTrainingDevice(const std::string& requested);

}  // namespace lora

#endif  // LORA_WORKER_ENGINE_TRAIN_DEVICE_H_
