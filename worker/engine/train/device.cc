#include "worker/engine/train/device.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <torch/csrc/distributed/c10d/NCCLUtils.hpp>

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lora {
namespace {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  int out = 0;
  return v != nullptr && absl::SimpleAtoi(v, &out) ? out : fallback;
}

std::string GiB(int64_t bytes) { return absl::StrFormat("%.2f GiB", bytes / 1073741824.0); }

}  // namespace

EngineCapabilities ProbeEngineCapabilities() {
  EngineCapabilities c;
  c.version = LORA_ENGINE_VERSION;
  c.torch_version = TORCH_VERSION;
  c.cuda_compiled = true;
  c.cuda_version = absl::StrCat(CUDART_VERSION / 1000, ".", (CUDART_VERSION % 1000) / 10);
  c.nccl_version = c10d::getNcclVersion();
  // device_count() is 0 (not an error) without a driver or a GPU.
  const int n = static_cast<int>(torch::cuda::device_count());
  for (int i = 0; i < n; ++i) {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(i));
    c.cuda_devices.push_back(
        {i, p->name, static_cast<int64_t>(p->totalGlobalMem), p->major, p->minor});
  }
  return c;
}

absl::StatusOr<torch::Device> ResolveTrainingDevice(const std::string& requested) {
  if (requested.empty() || requested == "cpu") return torch::Device(torch::kCPU);
  if (requested != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("resources.device: '", requested, "' is not one of cpu, cuda"));
  }
  const int count = static_cast<int>(torch::cuda::device_count());
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "resources.device: 'cuda' but no CUDA device is visible to this process (LibTorch ",
        TORCH_VERSION,
        " with CUDA; check the driver, CUDA_VISIBLE_DEVICES and the pod's nvidia.com/gpu "
        "limit), or set device = \"cpu\""));
  }
  const int local = EnvInt("LOCAL_RANK", EnvInt("RANK", 0) % count);
  if (local < 0 || local >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("LOCAL_RANK ", local, " but only ", count, " CUDA devices are visible"));
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local));
}

absl::Status StatusFromTorchError(const std::exception& e, const torch::Device& device) {
  std::string what;
  if (const auto* ce = dynamic_cast<const c10::Error*>(&e)) {
    what = absl::StrCat("LibTorch: ", ce->what_without_backtrace());
  } else {
    what = e.what();
  }
  if (const size_t cut = what.find("\nException raised from"); cut != std::string::npos)
    what.resize(cut);
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) == nullptr) {
    return absl::InternalError(what);
  }
  std::string figures;
  if (device.is_cuda()) {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
      using Stat = c10::CachingDeviceAllocator::StatType;
      const auto agg = static_cast<size_t>(Stat::AGGREGATE);
      figures = absl::StrCat("GPU ", device.index(), ": ", GiB(static_cast<int64_t>(total_bytes)),
                             " total, ", GiB(static_cast<int64_t>(free_bytes)),
                             " free; this process: ", GiB(stats.allocated_bytes[agg].current),
                             " allocated (peak ", GiB(stats.allocated_bytes[agg].peak), "), ",
                             GiB(stats.reserved_bytes[agg].current), " reserved. ");
    }
    cudaGetLastError();  // clear the sticky-free error state the failed allocation left
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "out of memory on ", device.str(), ": ", figures,
      "Lower the peak with training.local_batch_size (raise "
      "training.gradient_accumulation_steps to keep the global batch), training.seq_len, "
      "training.activation_checkpoint = \"full\", or shard the frozen base over more GPUs "
      "with parallelism.data_parallel_shard_degree (FSDP). LibTorch said: ",
      what.substr(0, 400)));
}

}  // namespace lora
