// `lora-train version [--json]`: what this engine is and can compute on. lora-worker asks it
// before advertising a device to the controller.
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "worker/engine/cli/cli_common.h"
#include "worker/engine/train/device.h"

namespace lora {

void AddVersionCommand(CLI::App& app, CommandRunner* runner) {
  auto json = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("version", "Print the engine's version and devices");
  cmd->add_flag("--json", *json, "One JSON object");
  cmd->callback([json, runner] {
    *runner = [json] {
      const EngineCapabilities c = ProbeEngineCapabilities();
      const bool gpu = !c.cuda_devices.empty();
      if (*json) {
        nlohmann::json devices = nlohmann::json::array();
        for (const CudaDeviceInfo& d : c.cuda_devices) {
          devices.push_back({{"index", d.index},
                             {"name", d.name},
                             {"total_memory_bytes", d.total_memory_bytes},
                             {"compute_capability", absl::StrCat(d.compute_capability_major, ".",
                                                                 d.compute_capability_minor)}});
        }
        nlohmann::json j = {
            {"version", c.version},
            {"torch_version", c.torch_version},
            {"cuda_compiled", c.cuda_compiled},
            {"cuda_version", c.cuda_version},
            {"nccl_version", c.nccl_version},
            {"devices", gpu ? nlohmann::json{"cpu", "cuda"} : nlohmann::json{"cpu"}},
            {"cuda_devices", devices}};
        std::cout << j.dump() << std::endl;
      } else {
        std::cout << "lora-train " << c.version << " (LibTorch " << c.torch_version << ", CUDA "
                  << c.cuda_version << ", NCCL " << c.nccl_version << ")\n";
        if (!gpu) std::cout << "  no CUDA device visible: trains on the CPU\n";
        for (const CudaDeviceInfo& d : c.cuda_devices) {
          std::cout << "  cuda:" << d.index << "  " << d.name << "  "
                    << absl::StrFormat("%.1f GiB", d.total_memory_bytes / 1073741824.0) << "  sm_"
                    << d.compute_capability_major << d.compute_capability_minor << "\n";
        }
        std::cout << std::flush;
      }
      return kExitOk;
    };
  });
}

}  // namespace lora
