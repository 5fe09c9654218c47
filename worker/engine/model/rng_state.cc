#include "worker/engine/model/rng_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>

namespace lora {

RngState CaptureRng(const torch::Device& device) {
  RngState s;
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  s.cpu = cpu.get_state();
  if (device.is_cuda()) {
    s.cuda_device = device.has_index() ? device.index() : 0;
    at::Generator gpu =
        at::cuda::detail::getDefaultCUDAGenerator(static_cast<c10::DeviceIndex>(s.cuda_device));
    s.cuda = gpu.get_state();
  }
  return s;
}

void RestoreRng(const RngState& s) {
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  cpu.set_state(s.cpu);
  if (s.cuda.defined()) {
    at::Generator gpu =
        at::cuda::detail::getDefaultCUDAGenerator(static_cast<c10::DeviceIndex>(s.cuda_device));
    gpu.set_state(s.cuda);
  }
}

}  // namespace lora
