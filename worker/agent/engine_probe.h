// Asks a lora-train binary what it can compute on (`lora-train version --json`), so a worker
// never advertises a device its engine cannot use.
//
//   LORA_ASSIGN_OR_RETURN(EngineProbe p, ProbeEngine("/usr/bin/lora-train"));
//   if (!p.cuda) ...
#ifndef LORA_WORKER_AGENT_ENGINE_PROBE_H_
#define LORA_WORKER_AGENT_ENGINE_PROBE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lora {

struct EngineProbe {
  std::string version;
  std::string torch_version;
  bool cuda = false;
  int cuda_devices = 0;
};

absl::StatusOr<EngineProbe> ProbeEngine(const std::string& lora_train);

// OK when `device` ("cpu" | "cuda") can run on the engine at `lora_train`; otherwise the reason.
absl::Status CheckEngineSupportsDevice(const std::string& lora_train, const std::string& device);

}  // namespace lora

#endif  // LORA_WORKER_AGENT_ENGINE_PROBE_H_
