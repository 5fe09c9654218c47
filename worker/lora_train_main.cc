// lora-train: the LoRA compute engine. Runs alone or under lora-worker; see docs/ENGINE.md.
#include <iostream>

#include "CLI/CLI.hpp"
#include "worker/engine/cli/cli_common.h"
#include "worker/engine/cli/runtime_env.h"

int main(int argc, char** argv) {
  lora::ReexecWithRuntimeEnvironment(argc, argv);
  CLI::App app{
      "lora-train: convert, fine-tune, merge and evaluate LoRA adapters for Llama-family models"};
  app.require_subcommand(1);
  lora::CommandRunner runner;
  lora::AddInitModelCommand(app, &runner);
  lora::AddConvertCommand(app, &runner);
  lora::AddMergeCommand(app, &runner);
  lora::AddEvalCommand(app, &runner);
  lora::AddRunCommand(app, &runner);
  lora::AddVersionCommand(app, &runner);
  auto is_command = [&](const std::string& name) {
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->get_name() == name) return true;
    }
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !is_command(argv[1])) {
    std::cerr << "lora-train: unknown command '" << argv[1] << "'\n" << app.help();
    return lora::kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? lora::kExitOk : lora::kExitUsage;
  }
  try {
    return runner ? runner() : lora::kExitUsage;
  } catch (const std::exception& e) {
    // LibTorch reports misuse by exception; never let one escape as a crash.
    std::cerr << "lora-train: internal error: " << e.what() << std::endl;
    return lora::kExitFailure;
  }
}
