// `lora-train version [--json]`: what this engine is and can compute on. lora-worker asks it
// before advertising a device to the controller.
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

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
      if (*json) {
        nlohmann::json j = {
            {"version", c.version},
            {"torch_version", c.torch_version},
            {"devices", c.built_with_cuda ? nlohmann::json{"cpu", "cuda"} : nlohmann::json{"cpu"}},
            {"cuda", c.built_with_cuda},
            {"cuda_devices", c.cuda_devices}};
        std::cout << j.dump() << std::endl;
      } else {
        std::cout << "lora-train " << c.version << " (LibTorch " << c.torch_version << ", "
                  << (c.built_with_cuda ? "CUDA, " + std::to_string(c.cuda_devices) + " devices"
                                        : std::string("CPU only"))
                  << ")" << std::endl;
      }
      return kExitOk;
    };
  });
}

}  // namespace lora
