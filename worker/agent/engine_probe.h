// Asks a lora-train binary what it can compute on (`lora-train version --json`), so a worker
// never advertises a device its engine cannot use.
//
//   LORA_ASSIGN_OR_RETURN(EngineProbe p, ProbeEngine("/usr/bin/lora-train"));
//   if (p.gpus.empty()) ...
#ifndef LORA_WORKER_AGENT_ENGINE_PROBE_H_
#define LORA_WORKER_AGENT_ENGINE_PROBE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lora/worker/v1/worker_service.pb.h"

namespace lora {

struct EngineProbe {
  std::string version;
  std::string torch_version;
  std::string cuda_version;
  std::string nccl_version;
  bool cuda_compiled = false;
  std::vector<lora::worker::v1::GpuInfo> gpus;  // visible to the engine now, as advertised
};

absl::StatusOr<EngineProbe> ProbeEngine(const std::string& lora_train);

// OK when `device` ("cpu" | "cuda") can run on the engine at `lora_train`; otherwise the reason.
// On success for "cuda", the probe (with the GPUs to advertise).
absl::StatusOr<EngineProbe> CheckEngineSupportsDevice(const std::string& lora_train,
                                                      const std::string& device);

}  // namespace lora

#endif  // LORA_WORKER_AGENT_ENGINE_PROBE_H_
